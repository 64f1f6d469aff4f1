//! What can go wrong fetching, and whether trying again may help.

use std::io;
use std::time::Duration;

#[allow(unused_imports)] // named in the docs
use crate::{FetchOptions, HttpReader};

/// What can go wrong fetching.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a status that retrying will not change (404, 403...).
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The payload on the server is not the one the download started with (its ETag or
    /// Last-Modified changed): start over with the new one.
    #[error("{url}: the file changed on the server during the download")]
    Changed {
        /// The URL.
        url: String,
    },
    /// The server does not answer range requests as it must (no 206, a wrong
    /// Content-Range).
    #[error("{url}: {reason}")]
    BadRange {
        /// The URL.
        url: String,
        /// What the server did.
        reason: String,
    },
    /// Every attempt in a row failed; the last error.
    #[error("{url}: gave up after {attempts} attempts in a row: {last}")]
    GaveUp {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// Stopped through [`keel_io::Progress::cancelled`].
    #[error("cancelled")]
    Cancelled,
    /// Not an http or https URL with a host.
    #[error("{url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// Why it cannot be fetched.
        reason: String,
    },
    /// The server's file is not the size expected ([`HttpReader::expect_len`]), or its body
    /// runs past it.
    #[error("{url}: the server has {found} bytes, {expected} expected")]
    Size {
        /// The URL.
        url: String,
        /// The index's size.
        expected: u64,
        /// What the server says (or the bytes there were).
        found: u64,
    },
    /// The download ran past its deadline ([`FetchOptions::deadline`]): a server that
    /// drips the bytes (TUF's slow retrieval attack) cannot hold the reader for good.
    #[error("{url}: not done within {deadline:?} ({received} bytes received)")]
    Deadline {
        /// The URL.
        url: String,
        /// Body bytes received by then.
        received: u64,
        /// The deadline.
        deadline: Duration,
    },
    /// The server sent fewer bytes over `window` than
    /// [`FetchOptions::min_bytes_per_sec`] asks (TUF's slow retrieval attack, or a link
    /// too poor to finish).
    #[error(
        "{url}: {received} bytes in {window:?}, below the floor of {min_bytes_per_sec} bytes/s"
    )]
    TooSlow {
        /// The URL.
        url: String,
        /// Body bytes received over the window.
        received: u64,
        /// The span measured (time spent waiting for the server, not for the consumer).
        window: Duration,
        /// The floor.
        min_bytes_per_sec: u64,
    },
    /// TLS: the server's certificate is not trusted, or the CA given does not parse.
    #[error("{url}: TLS: {reason}")]
    Tls {
        /// The URL (or "CA certificates").
        url: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// Whether the same download may succeed later (another attempt, another mirror,
    /// a better link): a stall, a drip, a cancellation, a file replaced mid-way (fetch
    /// the new index). A wrong size, a refused URL, status or certificate
    /// will not change by trying again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            Error::GaveUp { .. }
            | Error::Cancelled
            | Error::Changed { .. }
            | Error::Deadline { .. }
            | Error::TooSlow { .. } => true,
            Error::BadRange { .. } | Error::Url { .. } | Error::Size { .. } | Error::Tls { .. } => {
                false
            }
        }
    }
}

impl From<Error> for io::Error {
    /// Cancellation becomes keel-io's [`keel_io::Cancelled`] inside an error of kind
    /// `Other`: not `Interrupted`, which `read_exact`, `read_to_end` and `io::copy` retry
    /// at once, forever, on a reader that stays cancelled.
    fn from(e: Error) -> io::Error {
        match e {
            Error::Cancelled => io::Error::other(keel_io::Cancelled),
            Error::Status { status: 404, .. } => io::Error::new(io::ErrorKind::NotFound, e),
            _ => io::Error::other(e),
        }
    }
}
