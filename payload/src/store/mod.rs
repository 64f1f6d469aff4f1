//! Block stores: one published image that any installed version updates from, fetching
//! only the blocks it lacks (adaptive updates).
//!
//! A delta payload serves one source version; a fleet runs many. A block store is the new
//! image's blocks packed in runs, each run compressed on its own, with the image's
//! dm-verity leaf digests and its signed root. A device reads the leaves (checked against
//! the signed root), finds each block it needs among the blocks it already has (its booted
//! slot, by the slot's own tree or one hashing of it; blocks the target slot already
//! holds; blocks written earlier in the same install), and fetches the runs holding the
//! others with range requests, neighbours coalesced. Every block is checked against its
//! leaf before it is written or counted. Nothing is made per source version at publish
//! time. [`publish_store`] makes a store, [`StoreSession`] installs from one.
//!
//! # Format (version 2; integers little-endian)
//!
//! ```text
//! header     64 bytes
//!   0   8  magic "KEELSTOR"
//!   8   4  format version: 1, or 2 when a run is XZ (an installer that knows only 1
//!          refuses what it could not decode, by the version)
//!   12  4  reserved, 0
//!   16  8  index length M (at most 64 MiB)
//!   24  8  data length D
//!   32  32 key id of the signer (keel-verity KeyId)
//! index      M bytes, below
//! signature  64 bytes: Ed25519 in keel-trust's payload context over header || index
//! data       D bytes: the leaf level, then the runs' data, back to back in that order
//! ```
//!
//! Index:
//!
//! ```text
//! u32 block size (4096)
//! u64 image size (a multiple of the block size), [32] image digest (keel-payload's
//!     image digest: sha256 over the sha256 of each 1 MiB)
//! u16 verity descriptor length (396), a keel-verity root descriptor of the image: its
//!     data size is the image size, its data block size the block size
//! u16 compatible length (1..=256), compatible (UTF-8)
//! u16 version length (1..=64), version (dotted numbers)
//! u64 leaf level length L (the tree's level 0 as on the hash device: hash blocks of
//!     digests), u32 stored length: one zstd frame of those L bytes, at data offset 0
//! u8  chunking: 0 BLOCKS (runs of whole blocks, cut at multiples of a run size), or
//!     1 CONTENT (runs cut by content, at any byte: see `Cdc`), then u32 min, u32 bits,
//!     u32 max: the chunker's parameters (min 64 to 1 MiB, bits 6 to 24, max above min
//!     and at most 4 MiB)
//! u32 run count, then each run (the runs cover the image from byte 0, in order):
//!   u32 length in bytes (a ZSTD run 1 to 4 MiB, a ZERO run 1 to 1 GiB; with BLOCKS, a
//!       multiple of the block size)
//!   u8  kind: 0 ZERO (all zero bytes; no data), 1 ZSTD (one zstd frame of the bytes),
//!       2 XZ (version 2: u8 filter, 0 none or 1 BCJ x86, u32 LZMA2 dictionary size, at
//!       most the run's length rounded up to a power of two and 4096 at least, then a raw
//!       LZMA2 stream of the bytes: keel-payload's REPLACE_XZ blob)
//!   u32 stored length (0 for ZERO; 1 to 8 MiB for ZSTD and XZ)
//!   with CONTENT, for a ZSTD run: u64 hint, the first 8 bytes of the sha256 of its
//!       bytes, little-endian: what a device looks up among its own image's chunks
//! ```
//!
//! The runs' data follow the leaf level in run order; their lengths add up to D. The
//! index is not compressed: the publisher writes it in front of data it sizes only at the
//! end, and a run costs 9 bytes of it, 17 with a hint (a 512 MiB root file system, its
//! files followed and the rest in 8 KiB runs: about 100 KB, against 1.3 MB of compressed
//! leaves).
//!
//! Block runs suit images that keep file content on block boundaries (ext4, EROFS): a
//! device finds its blocks by their dm-verity leaves wherever they moved. The publisher
//! may cut them along the image's files (see `PublishOptions::files`): a file that changed
//! is new in nearly every block, so its runs are fetched whole and compress with the
//! file's context (and, as XZ, with the x86 branch filter where that is smaller). Content runs
//! suit images that pack content at any byte (squashfs): a device chunks its own image the
//! same way and finds the runs whose hint it has, shifted by any amount. Either way the
//! leaves decide: a block is written only once its bytes hash to its leaf.
//!
//! The signature covers the index, so nothing in it is parsed before it verifies; the
//! leaves are checked against the root the signed descriptor names before any is used,
//! and every block a device writes is checked against its leaf. A store is as trusted as
//! a payload signed by the same key: the release index pins its signed part by digest.

mod cdc;
mod install;
mod publish;

pub use cdc::Cdc;
pub use install::{Installed, Plan, Seed, StoreOptions, StoreSession, DEFAULT_GAP, MAX_RANGE};
pub use publish::{
    file_extents, publish_store, PublishOptions, Published, DEFAULT_RUN_BLOCKS, FILE_RUN_BLOCKS,
    XZ_MIN_RUN,
};

use crate::error::{Error, Result};
use crate::format::{ImageId, HEADER_SIZE, MAX_MANIFEST, SIGNATURE_SIZE};

/// The store's magic.
pub const STORE_MAGIC: [u8; 8] = *b"KEELSTOR";
/// The newest store format version this crate writes and reads (it writes version 1 when
/// no run is XZ, so that older installers read what they can decode).
pub const STORE_VERSION: u32 = 2;
/// The most blocks in one run of whole blocks.
pub const MAX_RUN_BLOCKS: u32 = 1024;
/// The most bytes in a run with data.
pub const MAX_RUN_LEN: u32 = 4 << 20;
/// The most bytes in a zero run.
pub const MAX_ZERO_RUN: u32 = 1 << 30;
/// The largest image a store holds: 64 GiB, whose leaves (512 MiB with SHA-256) and
/// block index a device holds in memory while it installs.
pub const MAX_STORE_IMAGE: u64 = 64 << 30;
/// The most stored bytes of one run (a run's blocks that do not compress, with room).
pub const MAX_RUN_STORED: u32 = 8 << 20;
/// The most stored bytes of the leaf level's frame.
const MAX_LEAVES_STORED: u64 = 1 << 30;

/// What a run's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// Every block is zero; no data.
    Zero,
    /// One zstd frame of the run's blocks.
    Zstd,
    /// One LZMA2 blob (format version 2): where it is smaller than zstd's frame, as for a
    /// whole file's executable code.
    Xz,
}

/// A run of the image's bytes and where its data lies in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// The image byte it starts at.
    pub start: u64,
    /// Its bytes.
    pub len: u32,
    /// With content-defined runs: the first 8 bytes of its bytes' sha256 (0 otherwise).
    pub hint: u64,
    /// Its data's kind.
    pub kind: RunKind,
    /// Where its data starts, from the start of the store file.
    pub offset: u64,
    /// Its data's length.
    pub stored: u32,
}

/// A store's signed index, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreIndex {
    /// The block size (4096).
    pub block_size: u32,
    /// The image: size and keel-payload image digest.
    pub image: ImageId,
    /// The image's dm-verity root descriptor (keel-verity).
    pub verity: Vec<u8>,
    /// The system it is for.
    pub compatible: String,
    /// The image's version.
    pub version: String,
    /// The leaf level's length.
    pub leaves_len: u64,
    /// Where the leaf level's frame starts in the store file, and its length.
    pub leaves_at: (u64, u32),
    /// How the runs are cut: `None`, whole blocks; else by content, with these parameters.
    pub chunking: Option<Cdc>,
    /// The runs, in image order.
    pub runs: Vec<Run>,
}

impl StoreIndex {
    /// The store file's size: header, index, signature and data.
    pub fn file_size(&self) -> u64 {
        let leaves_end = self.leaves_at.0 + u64::from(self.leaves_at.1);
        self.runs
            .iter()
            .map(|r| r.offset + u64::from(r.stored))
            .fold(leaves_end, u64::max)
    }
}

/// The store's fixed header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoreHeader {
    /// 1, or 2 where a run is XZ.
    pub(crate) version: u32,
    pub(crate) index_len: u64,
    pub(crate) data_len: u64,
    pub(crate) key_id: [u8; 32],
}

fn bad(field: &'static str, offset: u64, reason: impl Into<String>) -> Error {
    Error::StoreField {
        field,
        offset,
        reason: reason.into(),
    }
}

impl StoreHeader {
    pub(crate) fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..8].copy_from_slice(&STORE_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[16..24].copy_from_slice(&self.index_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.data_len.to_le_bytes());
        b[32..64].copy_from_slice(&self.key_id);
        b
    }

    pub(crate) fn parse(b: &[u8; HEADER_SIZE]) -> Result<Self> {
        if b[..8] != STORE_MAGIC {
            return Err(bad(
                "magic",
                0,
                "expected \"KEELSTOR\" (a Keel block store)",
            ));
        }
        let v = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if !(1..=STORE_VERSION).contains(&v) {
            return Err(bad(
                "format version",
                8,
                format!("expected 1 to {STORE_VERSION}, found {v}"),
            ));
        }
        if b[12..16] != [0; 4] {
            return Err(bad("reserved", 12, "not zero"));
        }
        let index_len = u64::from_le_bytes(b[16..24].try_into().unwrap_or_default());
        if index_len == 0 || index_len > MAX_MANIFEST {
            return Err(bad(
                "index length",
                16,
                format!("{index_len}: expected 1 to {MAX_MANIFEST}"),
            ));
        }
        let data_len = u64::from_le_bytes(b[24..32].try_into().unwrap_or_default());
        let mut key_id = [0u8; 32];
        key_id.copy_from_slice(&b[32..64]);
        Ok(StoreHeader {
            version: v,
            index_len,
            data_len,
            key_id,
        })
    }

    /// Where the data starts in the file.
    pub(crate) fn data_start(&self) -> u64 {
        HEADER_SIZE as u64 + self.index_len + SIGNATURE_SIZE as u64
    }
}

/// The index's bytes for `index`, whose run offsets are ignored (they follow from the
/// lengths).
pub(crate) fn encode_index(index: &StoreIndex) -> Vec<u8> {
    let mut w = Vec::with_capacity(512 + index.runs.len() * 9);
    w.extend_from_slice(&index.block_size.to_le_bytes());
    w.extend_from_slice(&index.image.size.to_le_bytes());
    w.extend_from_slice(&index.image.digest);
    w.extend_from_slice(&(index.verity.len() as u16).to_le_bytes());
    w.extend_from_slice(&index.verity);
    for s in [&index.compatible, &index.version] {
        w.extend_from_slice(&(s.len() as u16).to_le_bytes());
        w.extend_from_slice(s.as_bytes());
    }
    w.extend_from_slice(&index.leaves_len.to_le_bytes());
    w.extend_from_slice(&index.leaves_at.1.to_le_bytes());
    match index.chunking {
        None => w.push(0),
        Some(c) => {
            w.push(1);
            for v in [c.min, c.bits, c.max] {
                w.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    w.extend_from_slice(&(index.runs.len() as u32).to_le_bytes());
    for r in &index.runs {
        w.extend_from_slice(&r.len.to_le_bytes());
        w.push(match r.kind {
            RunKind::Zero => 0,
            RunKind::Zstd => 1,
            RunKind::Xz => 2,
        });
        w.extend_from_slice(&r.stored.to_le_bytes());
        if index.chunking.is_some() && r.kind != RunKind::Zero {
            w.extend_from_slice(&r.hint.to_le_bytes());
        }
    }
    w
}

/// Parse index bytes whose signature verified, against the header: every field checked,
/// the runs covering the image exactly, the data lengths adding up to the header's.
pub(crate) fn parse_index(b: &[u8], header: &StoreHeader) -> Result<StoreIndex> {
    let mut c = keel_io::Cursor::new(b, HEADER_SIZE as u64);
    let short = |e: keel_io::CursorError| bad(e.field, e.offset, "the index ends inside it");
    let at = c.offset();
    let block_size = c.u32("block size").map_err(short)?;
    if block_size != 4096 {
        return Err(bad(
            "block size",
            at,
            format!("{block_size}, expected 4096"),
        ));
    }
    let at = c.offset();
    let size = c.u64("image size").map_err(short)?;
    if size == 0 || size % u64::from(block_size) != 0 || size > MAX_STORE_IMAGE {
        return Err(bad(
            "image size",
            at,
            format!(
                "{size}: expected a positive multiple of {block_size}, at most {MAX_STORE_IMAGE}"
            ),
        ));
    }
    let digest: [u8; 32] = c.array("image digest").map_err(short)?;
    let vlen = c.u16("verity descriptor length").map_err(short)? as usize;
    let at = c.offset();
    let verity = c.take(vlen, "verity descriptor").map_err(short)?.to_vec();
    let d = keel_verity::RootDescriptor::parse(&verity)
        .map_err(|e| bad("verity descriptor", at, e.to_string()))?;
    if d.params().data_size() != size || d.params().data_block_size() != block_size {
        return Err(bad(
            "verity descriptor",
            at,
            format!(
                "covers {} bytes in {}-byte blocks, the image is {size} bytes in {block_size}-byte blocks",
                d.params().data_size(),
                d.params().data_block_size()
            ),
        ));
    }
    let mut text = |field: &'static str, max: usize| -> Result<(String, u64)> {
        let at = c.offset();
        let n = c.u16(field).map_err(short)? as usize;
        if n == 0 || n > max {
            return Err(bad(field, at, format!("length {n}: expected 1 to {max}")));
        }
        let s = c.take(n, field).map_err(short)?;
        let s = String::from_utf8(s.to_vec()).map_err(|_| bad(field, at + 2, "not UTF-8"))?;
        Ok((s, at + 2))
    };
    let (compatible, _) = text("compatible", 256)?;
    let (version, vat) = text("version", 64)?;
    crate::version::Version::parse(&version).map_err(|e| bad("version", vat, e.to_string()))?;
    let at = c.offset();
    let leaves_len = c.u64("leaf level length").map_err(short)?;
    let geometry = keel_verity::TreeGeometry::new(d.params(), 0, false)
        .map_err(|e| bad("verity descriptor", HEADER_SIZE as u64, e.to_string()))?;
    let want = match geometry.levels().first() {
        Some(l) => l.blocks * geometry.hash_block_size(),
        None => geometry.digest_size() as u64,
    };
    if leaves_len != want {
        return Err(bad(
            "leaf level length",
            at,
            format!("{leaves_len}, the tree's leaf level is {want} bytes"),
        ));
    }
    let at = c.offset();
    let leaves_stored = c.u32("leaf level stored length").map_err(short)?;
    // No more than zstd's bound for the level's length: a frame padded beyond it would be
    // fetched and held for nothing.
    let bound = (leaves_len + leaves_len / 128 + 1024).min(MAX_LEAVES_STORED);
    if leaves_stored == 0 || u64::from(leaves_stored) > bound {
        return Err(bad(
            "leaf level stored length",
            at,
            format!("{leaves_stored}: expected 1 to {bound} for a {leaves_len}-byte leaf level"),
        ));
    }
    let at = c.offset();
    let chunking = match c.u8("chunking").map_err(short)? {
        0 => None,
        1 => {
            let cdc = Cdc {
                min: c.u32("chunking min").map_err(short)?,
                bits: c.u32("chunking bits").map_err(short)?,
                max: c.u32("chunking max").map_err(short)?,
            };
            cdc.check().map_err(|e| bad("chunking", at + 1, e))?;
            Some(cdc)
        }
        k => {
            return Err(bad(
                "chunking",
                at,
                format!("{k}, expected 0 BLOCKS or 1 CONTENT"),
            ))
        }
    };
    let count_at = c.offset();
    let count = c.u32("run count").map_err(short)? as usize;
    // Each run takes 9 bytes: a count the bytes cannot hold is refused before allocating.
    if count == 0 || count > c.remaining() / 9 {
        return Err(bad(
            "run count",
            count_at,
            format!("{count} runs in {} bytes of index left", c.remaining()),
        ));
    }
    let data_start = header.data_start();
    let mut offset = u64::from(leaves_stored);
    let mut pos = 0u64;
    let mut runs = Vec::with_capacity(count);
    for i in 0..count {
        let at = c.offset();
        let len = c.u32("run length").map_err(short)?;
        let kind = c.u8("run kind").map_err(short)?;
        let stored = c.u32("run stored length").map_err(short)?;
        let what = |reason: String| bad("run", at, format!("run {i}: {reason}"));
        let kind = match (kind, stored) {
            (0, 0) => RunKind::Zero,
            (1, 1..=MAX_RUN_STORED) => RunKind::Zstd,
            (2, 1..=MAX_RUN_STORED) if header.version >= 2 => RunKind::Xz,
            (0..=2, _) if kind < 2 || header.version >= 2 => {
                return Err(what(format!("kind {kind} with {stored} stored bytes")))
            }
            (k, _) => {
                return Err(what(format!(
                    "kind {k}, expected 0 ZERO or 1 ZSTD{}",
                    if header.version >= 2 {
                        " or 2 XZ"
                    } else {
                        " in format version 1"
                    }
                )))
            }
        };
        let max = match kind {
            RunKind::Zero => MAX_ZERO_RUN,
            RunKind::Zstd | RunKind::Xz => MAX_RUN_LEN,
        };
        if len == 0 || len > max {
            return Err(what(format!("{len} bytes, expected 1 to {max}")));
        }
        // A content cut is never shorter than its minimum but at the image's end: more
        // runs than the image holds minimums are not a store this crate makes (and would
        // cost the installer memory for each).
        if let Some(cdc) = chunking.filter(|c| len < c.min && pos + u64::from(len) != size) {
            return Err(what(format!(
                "{len} bytes, shorter than the chunking's minimum {} (only the last run may be)",
                cdc.min
            )));
        }
        if chunking.is_none() && len % block_size != 0 {
            return Err(what(format!(
                "{len} bytes, not whole {block_size}-byte blocks"
            )));
        }
        let hint = match (chunking, kind) {
            (Some(_), RunKind::Zstd | RunKind::Xz) => c.u64("run hint").map_err(short)?,
            _ => 0,
        };
        if pos + u64::from(len) > size {
            return Err(what(format!(
                "bytes {pos}..{} run past the image's {size}",
                pos + u64::from(len)
            )));
        }
        runs.push(Run {
            start: pos,
            len,
            hint,
            kind,
            offset: data_start + offset,
            stored,
        });
        pos += u64::from(len);
        offset += u64::from(stored);
    }
    if pos != size {
        return Err(bad(
            "run count",
            count_at,
            format!("the runs cover {pos} of the image's {size} bytes"),
        ));
    }
    if c.remaining() != 0 {
        return Err(bad(
            "index",
            c.offset(),
            format!("{} bytes after the last run", c.remaining()),
        ));
    }
    if offset != header.data_len {
        return Err(bad(
            "data length",
            24,
            format!("{}: the index's data adds up to {offset}", header.data_len),
        ));
    }
    Ok(StoreIndex {
        block_size,
        image: ImageId { size, digest },
        verity,
        compatible,
        version,
        leaves_len,
        leaves_at: (data_start, leaves_stored),
        chunking,
        runs,
    })
}
