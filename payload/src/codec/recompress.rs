//! The compressors RECOMPRESS operations re-create blocks with, and the names manifests
//! give them: zstd, zlib's deflate (through flate2), liblzma's xz as mksquashfs calls it,
//! liblz4 (mksquashfs's blocks, mkfs.erofs's pclusters) and preflate-rs for gzip files.
//! Used by the generator (does a block come out the same?) and the applier (make it).

use super::Codec;

/// The zstd RECOMPRESS operations use here, with its version: what the manifest records
/// and what an applier must have.
pub fn recompressor() -> String {
    format!("zstd {}", zstd::zstd_safe::version_string())
}

/// Every compressor this build re-creates blocks with, named as manifests name them: an
/// applier refuses a payload whose RECOMPRESS operations need another.
pub fn recompressors() -> Vec<String> {
    [
        Codec::Zstd,
        Codec::Gzip,
        Codec::Xz,
        Codec::Lz4,
        Codec::GzipFile,
    ]
    .into_iter()
    .map(recompressor_for)
    .collect()
}

/// The deflate RECOMPRESS operations use here (the zlib flate2 links), named by what it
/// makes of a fixed probe at level 9: zlib's version is not reachable through flate2, and
/// the probe tells apart the implementations that compress differently (zlib-ng, a zlib
/// with another match finder) better than a version number would.
fn zlib() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut probe = Vec::with_capacity(64 << 10);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        while probe.len() < 64 << 10 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Words from a small vocabulary, with runs: every deflate path is taken.
            probe.extend_from_slice(format!("w{} ", x % 97).as_bytes());
            if x.is_multiple_of(11) {
                probe.extend(std::iter::repeat_n(b'z', (x % 300) as usize));
            }
        }
        let out = deflate(&probe, 9, 15).unwrap_or_default();
        format!(
            "zlib deflate {}",
            hex::encode(&crate::digest::sha256(&out)[..8])
        )
    })
    .clone()
}

/// What the manifest names for RECOMPRESS operations with `codec`.
pub(crate) fn recompressor_for(codec: Codec) -> String {
    match codec {
        Codec::Gzip => zlib(),
        Codec::GzipFile => format!("preflate-rs {}", super::gzip::PREFLATE_VERSION),
        Codec::ErofsLz4 | Codec::Lz4 => format!("lz4 {}", super::lz4::version()),
        Codec::Xz => super::xz::name(),
        _ => recompressor(),
    }
}

/// The compressor a manifest's name is for.
pub(crate) fn codec_of(needs: &str) -> Codec {
    if needs.starts_with("zlib") {
        Codec::Gzip
    } else if needs.starts_with("preflate") {
        Codec::GzipFile
    } else if needs.starts_with("lz4") {
        Codec::ErofsLz4
    } else if needs.starts_with("xz") {
        Codec::Xz
    } else {
        Codec::Zstd
    }
}

/// `src` as one zlib stream, as squashfs-tools' gzip compressor makes it (deflateInit2
/// with memory level 8 and the default strategy, deflate with Z_FINISH).
fn deflate(src: &[u8], level: u32, window_bits: u8) -> Option<Vec<u8>> {
    let mut c =
        flate2::Compress::new_with_window_bits(flate2::Compression::new(level), true, window_bits);
    let mut out = Vec::with_capacity(src.len() + src.len() / 1000 + 64);
    match c.compress_vec(src, &mut out, flate2::FlushCompress::Finish) {
        Ok(flate2::Status::StreamEnd) => Some(out),
        _ => None,
    }
}

/// One compressor for a run of blocks.
pub(crate) enum Compressor {
    Zstd(zstd::bulk::Compressor<'static>),
    Gzip(flate2::Compress),
    /// EROFS's lz4 with the room of one pcluster.
    Lz4(super::lz4::DestSize, usize),
    /// mksquashfs's xz with the room of one block.
    Xz(super::xz::Xz, usize),
    /// mksquashfs's lz4 (level 0) or lz4hc, with the room of one block.
    Lz4Block(i32, usize),
}

impl Compressor {
    /// For `codec` at `level` (for gzip: the level in the low byte, window bits above; for
    /// xz: [`super::xz::level_field`]), for blocks of `block_size` bytes.
    pub(crate) fn new(codec: Codec, level: i32, block_size: usize) -> Result<Compressor, String> {
        match codec {
            Codec::Zstd => zstd::bulk::Compressor::new(level)
                .map(Compressor::Zstd)
                .map_err(|e| format!("zstd level {level}: {e}")),
            Codec::Gzip => {
                let (l, w) = (level & 0xff, (level >> 8) & 0xff);
                // flate2 takes window bits 9 to 15 (and panics on others).
                if !(1..=9).contains(&l) || !(9..=15).contains(&w) || level >> 16 != 0 {
                    return Err(format!("gzip level {l}, window bits {w}"));
                }
                Ok(Compressor::Gzip(flate2::Compress::new_with_window_bits(
                    flate2::Compression::new(l as u32),
                    true,
                    w as u8,
                )))
            }
            Codec::Lz4 if (0..=12).contains(&level) => Ok(Compressor::Lz4Block(level, block_size)),
            Codec::Xz => super::xz::Xz::new(level)
                .map(|c| Compressor::Xz(c, block_size))
                .ok_or_else(|| {
                    format!(
                        "xz settings {level:#x}: a dictionary of 4 KiB units up to 1 MiB (bits \
                         8 and up), BCJ filter bits below 64 (bits 0 to 7)"
                    )
                }),
            Codec::ErofsLz4 => super::lz4::DestSize::new(level)
                .map(|c| Compressor::Lz4(c, 4096))
                .ok_or_else(|| format!("lz4 level {level}: 0 (lz4) to 12 (lz4hc)")),
            c => Err(format!(
                "compressor {} at {level}: only zstd (6), gzip (1), xz (4), lz4 (5, levels 0 \
                 to 12) and EROFS's lz4 (64) are re-created",
                c.id()
            )),
        }
    }

    /// As much of `src` as fits into one pcluster, as mkfs.erofs compresses it, into
    /// `out` (cleared first): the bytes of `src` taken.
    pub(crate) fn fill(&mut self, src: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
        let Compressor::Lz4(c, room) = self else {
            return Err("only lz4 fills a pcluster".into());
        };
        out.clear();
        out.resize(*room, 0);
        let (taken, written) = c
            .compress(src, out)
            .ok_or_else(|| format!("lz4 could not compress {} bytes", src.len()))?;
        out.truncate(written);
        Ok(taken)
    }

    /// Whether compressing `content` gives `raw` (`scratch` holds the attempt).
    pub(crate) fn reproduces(&mut self, content: &[u8], raw: &[u8], scratch: &mut Vec<u8>) -> bool {
        scratch.reserve(raw.len() + 64);
        self.compress(content, scratch).is_ok() && scratch[..] == *raw
    }

    /// `src` compressed into `out` (cleared first).
    pub(crate) fn compress(&mut self, src: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        out.clear();
        match self {
            Compressor::Zstd(c) => c
                .compress_to_buffer(src, out)
                .map(|_| ())
                .map_err(|e| format!("zstd: {e}")),
            Compressor::Lz4Block(level, room) => {
                out.resize(*room, 0);
                let n = super::lz4::compress_block(*level, src, out)
                    .ok_or_else(|| "a block does not compress within its room".to_string())?;
                out.truncate(n);
                Ok(())
            }
            Compressor::Xz(c, room) => match c.compress(src, *room, out)? {
                true => Ok(()),
                // Larger than the room given: squashfs stores such a block as it is.
                false => Err("a block does not compress within its room".into()),
            },
            Compressor::Lz4(..) => self.fill(src, out).and_then(|taken| {
                (taken == src.len())
                    .then_some(())
                    .ok_or_else(|| "the content does not fit one pcluster".to_string())
            }),
            Compressor::Gzip(c) => {
                c.reset();
                match c.compress_vec(src, out, flate2::FlushCompress::Finish) {
                    Ok(flate2::Status::StreamEnd) => Ok(()),
                    // Larger than the room given: squashfs stores such a block as it is.
                    Ok(_) => Err("a block does not deflate within its room".into()),
                    Err(e) => Err(format!("deflate: {e}")),
                }
            }
        }
    }
}

/// The level field of a blob for `codec`.
pub(crate) fn level_field(codec: Codec, level: i32, window_bits: u8) -> i32 {
    match codec {
        Codec::Gzip => level | i32::from(window_bits) << 8,
        _ => level,
    }
}
