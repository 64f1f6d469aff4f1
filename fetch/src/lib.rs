//! keel-fetch: payloads streamed over HTTP(S), resumed with range requests.
//!
//! [`HttpReader`] is a `Read + Seek` over a URL. Give it to keel-payload's
//! `Payload::open_seekable` (or keel-update's install) and a dropped connection, a stall or a
//! server error costs a reconnect, not the download: the reader asks for `Range:
//! bytes=N-` from where it stopped, checks the `206` and its `Content-Range`, and sends
//! `If-Range` with the first response's validator (ETag, else Last-Modified), so a payload
//! replaced on the server is an error ([`Error::Changed`]) rather than two files spliced
//! together. After a process restart the applier resumes from its record and seeks over
//! what it applied, so nothing applied is fetched again. Retries back off exponentially
//! with jitter up to a limit of attempts in a row; [`Stats`] counts requests and bytes.
//!
//! Given the size the release index names ([`HttpReader::expect_len`]), the reader
//! refuses a server that says another size before the first byte, and a body that runs
//! past it (endless data). What the bytes are is the consumer's to check: keel-payload
//! checks every byte against its signed manifest, which the index pins by digest, so a
//! download needs no whole-file digest and no state of its own to be resumed.
//!
//! A thread reads the socket ahead of the consumer into a bounded buffer
//! ([`READ_AHEAD`]), with requests for no more than the buffer has room for: what
//! arrived is kept when a connection is reset, and the reconnect asks only for what
//! follows it. Against a server that drips ([TUF]'s slow retrieval attack) a deadline
//! ([`FetchOptions::deadline`], for metadata) and a floor on the average rate
//! ([`FetchOptions::min_bytes_per_sec`]) end the download; against endless data, a body
//! longer than the length the server or the release index gave is cut off or refused.
//!
//! [TUF]: https://theupdateframework.github.io/specification/latest/
//!
//! ```no_run
//! use keel_fetch::{FetchOptions, HttpReader};
//! let mut payload = HttpReader::new("https://updates.example.com/os/2.0.payload", FetchOptions::default())?;
//! let mut bytes = Vec::new();
//! std::io::Read::read_to_end(&mut payload, &mut bytes)?;
//! println!("{} requests", payload.stats().requests);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod options;
mod reader;
mod stream;

pub use error::Error;
pub use options::{FetchOptions, Stats};
pub use reader::{HttpRanges, HttpReader, Meter};

/// The most bytes [`HttpReader`] reads ahead of its consumer by default
/// ([`FetchOptions::read_ahead`]), with what one socket read brings: what a consumer
/// that stops may have cost without using.
pub const READ_AHEAD: usize = stream::BUFFER + stream::READ;

#[cfg(test)]
mod tests {
    use crate::stream::content_range;

    #[test]
    fn content_ranges_are_read_strictly() {
        assert_eq!(content_range(Some("bytes 100-199/1000")), Some((100, 1000)));
        for bad in [
            "bytes 100-99/1000",
            "bytes 0-1000/1000",
            "bytes */1000",
            "100-199/1000",
            "bytes 1-2",
        ] {
            assert_eq!(content_range(Some(bad)), None, "{bad}");
        }
        assert_eq!(content_range(None), None);
    }
}
