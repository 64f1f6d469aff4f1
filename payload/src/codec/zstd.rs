//! zstd helpers both sides share: the decoders with the window limit every frame a
//! payload carries must keep.

use std::io::{self, Read};

/// zstd window the decoders accept: an operation's reference (at most 8 MiB) plus its
/// output (at most 8 MiB), all any generator needs; a frame asking for more is refused
/// instead of allocating its window.
pub(crate) const MAX_WINDOW_LOG: u32 = 24;

/// A decoder of `blob` (with `reference` as its prefix, if any) that refuses frames with a
/// window beyond [`MAX_WINDOW_LOG`].
pub(crate) fn decoder<'b, R: io::BufRead + 'b>(
    blob: R,
    reference: Option<&'b [u8]>,
) -> io::Result<zstd::stream::read::Decoder<'b, R>> {
    let mut d = match reference {
        Some(r) => zstd::stream::read::Decoder::with_ref_prefix(blob, r)?,
        None => zstd::stream::read::Decoder::with_buffer(blob)?,
    };
    d.window_log_max(MAX_WINDOW_LOG)?;
    Ok(d)
}

/// A zstd frame decoded to exactly `len` bytes (with `prefix` as reference if not empty).
pub(crate) fn unframe(
    frame: &[u8],
    prefix: &[u8],
    len: u64,
    what: &str,
) -> Result<Vec<u8>, String> {
    let fail = |e: std::io::Error| format!("{what}: {e}");
    let mut d = if prefix.is_empty() {
        zstd::stream::read::Decoder::with_buffer(frame).map_err(fail)?
    } else {
        zstd::stream::read::Decoder::with_ref_prefix(frame, prefix).map_err(fail)?
    };
    d.window_log_max(MAX_WINDOW_LOG).map_err(fail)?;
    let mut out = Vec::with_capacity(len as usize);
    d.take(len + 1).read_to_end(&mut out).map_err(fail)?;
    if out.len() as u64 != len {
        return Err(format!("{what}: {} bytes, expected {len}", out.len()));
    }
    Ok(out)
}
