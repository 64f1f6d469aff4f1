//! The encoders the planners' operations are written with: zstd (plain, or with a
//! reference prefix), LZMA2 blobs (liblzma, for new content at high levels), and the
//! RECOMPRESS operation ([`crate::recompress`]'s blob from a [`Recreated`]).

use crate::codec::{xz, Codec};
use crate::error::{Error, Result};
use crate::format::{sha256, Extent, OpType, Operation};
use crate::recompress::{encode_with, Spec, MAX_FRAME_DICT};

use super::blocks::{extents_bytes, BS};

/// What a RECOMPRESS operation builds its target blocks from.
pub(super) struct Recreated<'a> {
    pub(super) spec: &'a Spec,
    /// Decompressed content of the target blocks.
    pub(super) content: &'a [u8],
    /// Decompressed content of the source blocks (the content's reference, if any).
    pub(super) old: &'a [u8],
    pub(super) literal: &'a [u8],
    /// Whether the literal bytes are a delta against the source extents' bytes (gzip
    /// files' operations, which also write EROFS metadata blocks).
    pub(super) literal_patched: bool,
}

/// A RECOMPRESS operation writing `target`, reading `extents` of `source`, and its blob.
pub(super) fn recompress_op(
    source: &[u8],
    extents: Vec<Extent>,
    target: Vec<Extent>,
    r: &Recreated<'_>,
    level: i32,
) -> Result<(Operation, Vec<u8>)> {
    let frame = if r.old.is_empty() {
        zstd_plain(r.content, level)?
    } else {
        zstd_patch(r.content, r.old, level)?
    };
    // gzip files' text gains from LZMA2 as new files do (BCJ only without an old version
    // to match). Not squashfs's or EROFS's blocks: their content is most of the payload,
    // and LZMA2 would double the time taken to make it for a size already well below the
    // peers'.
    let small_dict = xz::dict_size(r.old.len(), r.content.len()) <= MAX_FRAME_DICT;
    let (frame, xz) =
        match (level >= XZ_FROM_LEVEL && small_dict && r.spec.codec == Codec::GzipFile)
            .then(|| xz_blob(r.content, r.old, frame.len(), r.old.is_empty()))
            .flatten()
        {
            Some(blob) => (blob, true),
            None => (frame, false),
        };
    let source_bytes = extents_bytes(source, &extents);
    let lit = if r.literal_patched && !source_bytes.is_empty() {
        zstd_patch(r.literal, &source_bytes, level)?
    } else {
        zstd_plain(r.literal, level)?
    };
    let blob = encode_with(
        r.spec,
        (r.content.len() as u64, &frame, xz),
        r.literal.len() as u64,
        &lit,
    );
    let source_sha256 = if extents.is_empty() {
        [0; 32]
    } else {
        sha256(&source_bytes)
    };
    Ok((
        Operation {
            op: OpType::Recompress,
            target,
            data_offset: 0,
            data_length: blob.len() as u64,
            data_sha256: sha256(&blob),
            source_sha256,
            source: extents,
        },
        blob,
    ))
}

/// Levels from which new content is encoded with LZMA2 rather than zstd.
pub(super) const XZ_FROM_LEVEL: i32 = 10;

/// A REPLACE_XZ / CHAIN_XZ / PATCH_XZ blob for `data` (BCJ x86 first when `code` allows
/// and it holds x86 executables), or `None` when it is not smaller than `probe` bytes
/// (zstd at the probe level: then zstd at the requested level does better) or liblzma
/// fails.
pub(super) fn xz_blob(data: &[u8], reference: &[u8], probe: usize, code: bool) -> Option<Vec<u8>> {
    // New files start at block boundaries; an x86 ELF header at one means code.
    let x86 = code
        && data.chunks(BS).any(|b| {
            b.len() >= 20
                && b[..4] == *b"\x7fELF"
                && matches!(u16::from_le_bytes([b[18], b[19]]), 3 | 62)
        });
    let blob = xz::encode_blob(data, reference, x86).ok()?;
    (blob.len() < probe).then_some(blob)
}

pub(super) fn zstd_plain(data: &[u8], level: i32) -> Result<Vec<u8>> {
    zstd::bulk::compress(data, level).map_err(|e| Error::io("zstd compress", e))
}

pub(super) fn zstd_patch(data: &[u8], reference: &[u8], level: i32) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, reference)
        .map_err(|e| Error::io("zstd patch encoder", e))?;
    let window = (reference.len() + data.len())
        .next_power_of_two()
        .trailing_zeros()
        .clamp(10, 27);
    enc.window_log(window)
        .map_err(|e| Error::io("zstd window", e))?;
    enc.include_contentsize(true)
        .map_err(|e| Error::io("zstd", e))?;
    enc.long_distance_matching(true)
        .map_err(|e| Error::io("zstd", e))?;
    enc.set_pledged_src_size(Some(data.len() as u64))
        .map_err(|e| Error::io("zstd", e))?;
    enc.write_all(data)
        .map_err(|e| Error::io("zstd patch", e))?;
    enc.finish().map_err(|e| Error::io("zstd patch", e))
}
