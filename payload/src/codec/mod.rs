//! Compression: each codec a payload or an image uses, and the only `unsafe` of the
//! crate.
//!
//! - [`xz`]: liblzma 5.8 (built by liblzma-sys): squashfs's xz blocks decoded and
//!   compressed again as mksquashfs does, and the raw LZMA2 streams of REPLACE_XZ,
//!   CHAIN_XZ and PATCH_XZ.
//! - [`lz4`]: liblz4 (built by lz4-sys): squashfs's lz4 blocks and EROFS's pclusters
//!   decoded, and compressed again as mksquashfs and mkfs.erofs do.
//! - [`gzip`]: gzip files' deflate streams taken apart and re-created with preflate-rs.
//! - [`zstd`]: the decoders' window limit and frame helpers.
//! - [`recompress`]: the compressors RECOMPRESS operations use and the names manifests
//!   give them.
//!
//! `xz` and `lz4` call their C libraries through FFI: each `unsafe` block there says why
//! it is sound in a `// SAFETY:` comment; nothing else in the crate is `unsafe`. This
//! module uses nothing of the crate but [`crate::digest`]: the file system readers,
//! the generator and the applier use it, never the reverse.

pub(crate) mod gzip;
pub(crate) mod lz4;
pub(crate) mod recompress;
pub(crate) mod xz;
pub(crate) mod zstd;

use std::io::Read;

/// A squashfs compressor (the superblock's numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// zlib-wrapped deflate.
    Gzip,
    /// Legacy lzma (not read).
    Lzma,
    /// lzo (not read).
    Lzo,
    /// xz.
    Xz,
    /// lz4 blocks.
    Lz4,
    /// zstd frames.
    Zstd,
    /// Not a squashfs compressor: EROFS's lz4 pclusters, as RECOMPRESS blobs name them
    /// (number 0x40; the level field 0 for lz4, 1 to 12 for lz4hc).
    ErofsLz4,
    /// Not a squashfs compressor: the raw deflate stream of a gzip file inside an ext4 or
    /// EROFS image, as RECOMPRESS blobs name it (number 0x41; the level field as gzip's).
    GzipFile,
}

impl Codec {
    /// The compressor a squashfs superblock names with `id`.
    pub(crate) fn from_id(id: u16) -> Option<Codec> {
        Some(match id {
            1 => Codec::Gzip,
            2 => Codec::Lzma,
            3 => Codec::Lzo,
            4 => Codec::Xz,
            5 => Codec::Lz4,
            6 => Codec::Zstd,
            _ => return None,
        })
    }

    /// The compressor a RECOMPRESS blob's first byte names.
    pub(crate) fn from_blob_id(id: u8) -> Option<Codec> {
        match id {
            0x40 => Some(Codec::ErofsLz4),
            0x41 => Some(Codec::GzipFile),
            _ => Codec::from_id(u16::from(id))
                .filter(|c| matches!(c, Codec::Gzip | Codec::Xz | Codec::Lz4 | Codec::Zstd)),
        }
    }

    /// The superblock's number for it.
    pub fn id(self) -> u8 {
        match self {
            Codec::Gzip => 1,
            Codec::Lzma => 2,
            Codec::Lzo => 3,
            Codec::Xz => 4,
            Codec::Lz4 => 5,
            Codec::Zstd => 6,
            Codec::ErofsLz4 => 0x40,
            Codec::GzipFile => 0x41,
        }
    }
}

/// `src` decompressed with `codec`, at most `max` bytes; `None` when it does not
/// decompress or is longer (a damaged block).
pub fn decompress(codec: Codec, src: &[u8], max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let bound = max as u64 + 1;
    match codec {
        Codec::Zstd => {
            let mut d = ::zstd::stream::read::Decoder::with_buffer(src).ok()?;
            // A block is at most 1 MiB: a window beyond that is a hostile frame.
            d.window_log_max(21).ok()?;
            d.take(bound).read_to_end(&mut out).ok()?;
        }
        Codec::Gzip => {
            flate2::read::ZlibDecoder::new(src)
                .take(bound)
                .read_to_end(&mut out)
                .ok()?;
        }
        Codec::GzipFile => {
            flate2::read::DeflateDecoder::new(src)
                .take(bound)
                .read_to_end(&mut out)
                .ok()?;
        }
        Codec::Xz => out = xz::decompress(src, max)?,
        Codec::Lz4 => {
            out = vec![0u8; max];
            let n = lz4::decompress(src, &mut out)?;
            out.truncate(n);
        }
        Codec::Lzma | Codec::Lzo | Codec::ErofsLz4 => return None,
    }
    (out.len() <= max).then_some(out)
}
