//! The RECOMPRESS blob (layout in [`crate::format`]) as both sides see it: the
//! operation's parameters ([`Spec`], [`Segment`]), its limits, and the writer. The
//! generator (`generate/`) fills and writes it from squashfs, EROFS and gzip files'
//! blocks; the applier (`apply/recompress.rs`) reads it and builds the target blocks back.
//! Neither side is used by this module, so they share it without a cycle.
//!
//! Compressed blocks of a changed file share nothing with the old version's blocks, so a
//! delta over them is as large as the file. On the decompressed content the delta is as
//! small as the change; the applier compresses the content again with the same
//! compressor and level. That reproduces the target's bytes only with the same compressor
//! version, so the generator checks every block before it chooses this operation, the
//! manifest names the version, and an applier with another refuses before writing.

use crate::codec::Codec;

/// Largest decompressed reference and content of one operation (the applier's memory:
/// both, the blob, the source extents and the output stay under 64 MiB).
pub(crate) const MAX_CONTENT: usize = 12 << 20;

/// How a run of the built stream is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Bytes from the literal stream.
    Literal(u32),
    /// Content bytes compressed, giving exactly this many bytes.
    Compress(u32, u32),
    /// Content bytes as they are.
    Stored(u32),
    /// Content bytes (zeros) that take no space.
    Sparse(u32),
    /// (taken, compressed length, offered): the content from here, `offered` bytes,
    /// given to lz4 to fill a pcluster, as mkfs.erofs does; it must take exactly `taken`
    /// bytes and give exactly the compressed length.
    Fill(u32, u32, u32),
    /// (content, stream length, corrections, placed): gzip files only; the content
    /// deflated again by preflate-rs with that many correction bytes from the literal
    /// stream, into a stream of exactly that length, of which the first `placed` bytes
    /// are output (EROFS keeps a file's last bytes beside its inode, not in its blocks).
    Preflate(u32, u32, u32, u32),
    /// (length, stream): gzip files only: the next bytes of the stream of the operation's
    /// PREFLATE segment with that number (from 0), after what it and earlier RESTs
    /// placed (the part of a stream in an EROFS inline tail).
    Rest(u32, u32),
}

/// A RECOMPRESS operation's parameters, without its two frames.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub codec: Codec,
    /// See [`level_field`](crate::codec::recompress::level_field).
    pub level: i32,
    pub block_size: u32,
    pub skip: u32,
    /// (offset in the source extents' bytes, size word) of each reference block.
    pub sources: Vec<(u64, u32)>,
    /// gzip files only: the content bytes each source gives (its stream may be cut
    /// short where an EROFS inline tail holds the rest; the bytes any inflater gives
    /// from that start).
    pub taken: Vec<u32>,
    /// gzip files only: where each source's stream goes on (offset in the source
    /// extents' bytes, length; 0 for none): the end of an old file's stream that EROFS
    /// keeps beside its inode, in an old metadata block among the source extents.
    pub tails: Vec<(u64, u32)>,
    pub segments: Vec<Segment>,
}

/// Bit of a frame length that marks the content frame as an LZMA2 blob (REPLACE_XZ's
/// layout, the reference as its preset dictionary) rather than a zstd frame.
pub(crate) const XZ_FRAME: u32 = 1 << 31;

/// Largest LZMA2 dictionary of a content frame: with the reference S, the content and the
/// source extents it keeps the applier under 64 MiB.
pub(crate) const MAX_FRAME_DICT: u32 = 16 << 20;

/// The blob: `spec`, then the content frame (`content_len` bytes once decoded against the
/// reference) and the literal frame.
#[cfg(test)]
pub(crate) fn encode(
    spec: &Spec,
    content_len: u64,
    content_frame: &[u8],
    literal_len: u64,
    literal_frame: &[u8],
) -> Vec<u8> {
    encode_with(
        spec,
        (content_len, content_frame, false),
        literal_len,
        literal_frame,
    )
}

/// The blob: `spec`, then the content frame, given as (length once decoded against the
/// reference, frame, whether it is an LZMA2 blob), and the literal frame.
pub(crate) fn encode_with(
    spec: &Spec,
    (content_len, content_frame, content_xz): (u64, &[u8], bool),
    literal_len: u64,
    literal_frame: &[u8],
) -> Vec<u8> {
    let mut b = Vec::new();
    b.push(spec.codec.id());
    b.extend_from_slice(&spec.level.to_le_bytes());
    b.extend_from_slice(&spec.block_size.to_le_bytes());
    b.extend_from_slice(&spec.skip.to_le_bytes());
    b.extend_from_slice(&(spec.sources.len() as u32).to_le_bytes());
    for (i, (off, w)) in spec.sources.iter().enumerate() {
        b.extend_from_slice(&off.to_le_bytes());
        b.extend_from_slice(&w.to_le_bytes());
        if spec.codec == Codec::GzipFile {
            let taken = spec.taken.get(i).copied().unwrap_or_default();
            b.extend_from_slice(&taken.to_le_bytes());
            let (at, len) = spec.tails.get(i).copied().unwrap_or_default();
            b.extend_from_slice(&len.to_le_bytes());
            if len > 0 {
                b.extend_from_slice(&at.to_le_bytes());
            }
        }
    }
    b.extend_from_slice(&(spec.segments.len() as u32).to_le_bytes());
    for s in &spec.segments {
        let (kind, len) = match *s {
            Segment::Literal(n) => (0u8, n),
            Segment::Compress(n, _) => (1, n),
            Segment::Stored(n) => (2, n),
            Segment::Sparse(n) => (3, n),
            Segment::Fill(n, ..) => (4, n),
            Segment::Preflate(n, ..) => (5, n),
            Segment::Rest(n, _) => (6, n),
        };
        b.push(kind);
        b.extend_from_slice(&len.to_le_bytes());
        match *s {
            Segment::Compress(_, c) => b.extend_from_slice(&c.to_le_bytes()),
            Segment::Fill(_, c, offered) => {
                b.extend_from_slice(&c.to_le_bytes());
                b.extend_from_slice(&offered.to_le_bytes());
            }
            Segment::Preflate(_, c, k, placed) => {
                for v in [c, k, placed] {
                    b.extend_from_slice(&v.to_le_bytes());
                }
            }
            Segment::Rest(_, stream) => b.extend_from_slice(&stream.to_le_bytes()),
            _ => {}
        }
    }
    for (len, frame, xz) in [
        (content_len, content_frame, content_xz),
        (literal_len, literal_frame, false),
    ] {
        b.extend_from_slice(&len.to_le_bytes());
        let flag = if xz { XZ_FRAME } else { 0 };
        b.extend_from_slice(&(frame.len() as u32 | flag).to_le_bytes());
        b.extend_from_slice(frame);
    }
    b
}
