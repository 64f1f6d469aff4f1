//! The payload format, versions 2 (one image) and 3 (a bundle of images). All integers
//! little-endian.
//!
//! ```text
//! header     64 bytes
//!   0   8  magic "KEELPAYL"
//!   8   4  format version: 2 (the manifest below), or 3 (a bundle manifest, further down)
//!   12  4  reserved, 0
//!   16  8  manifest length M (at most 64 MiB)
//!   24  8  data length D (the blobs)
//!   32  32 key id of the signer (keel-verity KeyId)
//! manifest   M bytes: one zstd frame holding the manifest below (at most 64 MiB), which
//!            may be followed by zstd skippable frames (magic 0x184D2A50 to 0x184D2A5F,
//!            u32 length, that many bytes): padding, so that a generator can write the
//!            data first, after room left for the front, and never copy it
//! signature  64 bytes: Ed25519 over header || the M manifest bytes as stored
//! data       D bytes: the blobs, in operation order, back to back
//! ```
//!
//! Manifest:
//!
//! ```text
//! u32 block size (4096)
//! u8  has source; if 1: u64 source size, [32] source digest
//! u64 target size, [32] target digest
//!     (digest: sha256 over the sha256 of each 1 MiB chunk, see [`image_digest`])
//! u16 verity descriptor length (0 or 396), then a keel-verity root descriptor of the target
//! u16 compatible length (1..=256), compatible (UTF-8)
//! u16 version length (1..=64), version (dotted numbers)
//! u32 operation count, then each operation:
//!   u8  type: 0 ZERO, 1 COPY, 2 REPLACE (zstd), 3 PATCH (zstd with the source extents as prefix),
//!       4 CHAIN (zstd with target blocks that earlier operations wrote as prefix),
//!       5 BSDIFF (zstd of a bsdiff patch against the source extents, see [`bspatch`]),
//!       6 RECOMPRESS (compressed file system blocks re-created from decompressed
//!         content, see below),
//!       7 REPLACE_XZ, 8 CHAIN_XZ (REPLACE and CHAIN with LZMA2: u8 filter, 0 none or
//!         1 BCJ x86 before LZMA2; u32 dictionary size, 4 KiB to 32 MiB; a raw LZMA2
//!         stream, for CHAIN_XZ with the reference as its preset dictionary),
//!       9 PATCH_XZ (PATCH with LZMA2: the REPLACE_XZ blob with the source extents as the
//!         preset dictionary),
//!       10 REPLACE_RAW (the target blocks' bytes as they are, exactly target blocks x 4096
//!         of them: data that does not compress, without zstd's 3 bytes per 128 KiB block;
//!         its data digest is sha256 over the sha256 of each 1 MiB piece of the data, the
//!         last one shorter, as the image digest is made; appliers from before it refuse
//!         it as an unknown type)
//!   u32 target extent count, then (u64 first block, u64 blocks) each
//!   u32 source extent count, then extents (in the target image for CHAIN)
//!   u64 data offset (in the data area), u64 data length
//!   [32] sha256 of the data (zero if none)
//!   [32] sha256 of the source extents' bytes (zero if none)
//! only if an operation is RECOMPRESS: u16 length (1..=64), the compressor that must
//!     re-create the blocks, with its version ("zstd 1.5.7"; for deflate, "zlib deflate"
//!     and what the zlib makes of a fixed probe; for EROFS's pclusters, "lz4 1.9.4"):
//!     another version may compress differently, so an applier with another one refuses
//!     the payload before writing
//! ```
//!
//! A RECOMPRESS blob (squashfs data and fragment blocks, EROFS lz4 pclusters, gzip files
//! inside ext4 and EROFS: a delta of the decompressed content, the blocks compressed again
//! on apply) holds, all integers little-endian:
//!
//! ```text
//! u8  compressor (squashfs numbering: 6 zstd, 1 gzip, 4 xz, 5 lz4; 0x40 EROFS lz4; 0x41
//!     a gzip file's raw deflate stream, built by preflate-rs), i32 level (gzip: the level
//!     in the low byte, the window bits in the next; lz4: 0 for lz4, 1 to 12 for lz4hc;
//!     0x41: 0), u32 block size (EROFS: the pcluster, 4096; 0x41: at least each file's
//!     content)
//! u32 skip: bytes of the built stream before the first target block
//! u32 source block count, then (u64 offset in the source extents' bytes, u32 size word:
//!     length, bit 24 set if stored uncompressed; EROFS: the pcluster's block at the
//!     offset, the word its content length; 0x41: the old file's deflate stream at the
//!     offset, the word the stream's bytes there, then a u32: the content bytes it gives,
//!     then a u32 tail length and, if not 0, a u64 offset in the source extents' bytes
//!     where the stream goes on for that many bytes: the end an EROFS file keeps beside
//!     its inode, in an old metadata block the operation reads) each;
//!     decompressed one after another they are the reference S
//! u32 segment count, then (u8 kind, u32 length) each, for kind 1 a u32 compressed
//!     length, for kind 4 a u32 compressed length and a u32 offered length, for kind 5
//!     u32 stream length, u32 correction length, u32 placed length, for kind 6 a u32
//!     stream number:
//!     0 LITERAL (bytes from the literal stream), 1 COMPRESS (content bytes compressed,
//!     exactly the given length), 2 STORED (content bytes as they are), 3 SPARSE (content
//!     bytes, zeros, that take no space; EROFS: content offered to a pcluster and not
//!     taken by it, skipped), 4 FILL (EROFS only: the next `offered` content bytes given
//!     to liblz4's destSize compressor with the block size as room, as mkfs.erofs does;
//!     it must take exactly `length` bytes, by which the content advances, and give
//!     exactly the compressed length), 5 PREFLATE (0x41 only: `length` content bytes and
//!     the next correction-length bytes of the literal stream give a deflate stream of
//!     exactly the stream length through preflate-rs; its first `placed` bytes are output),
//!     6 REST (0x41 only: the next `length` bytes of the stream of the operation's PREFLATE
//!     segment with that number, counted from 0: the end of a stream that EROFS keeps
//!     beside the file's inode, in a metadata block the operation also writes)
//! u64 content length, u32 frame length, a zstd frame with S as prefix: the content (when
//!     bit 31 of the frame length is set, the frame is instead a REPLACE_XZ blob with S as
//!     preset dictionary, its dictionary at most 16 MiB; gzip files' text, from level 10)
//! u64 literal length, u32 frame length, a zstd frame: the literal stream (for 0x41 with
//!     the source extents' bytes as prefix: metadata blocks written beside gzip files'
//!     tails refer to the old ones)
//! ```
//!
//! The segments built one after another, less the first `skip` bytes, are the operation's
//! target blocks exactly.
//!
//! Every count and length is checked against the bytes present before anything is
//! allocated; the operations' data must follow each other from offset 0 and end at D.
//!
//! A bundle (format version 3) carries several images under one signature: a new kernel
//! and a new root switched together. Its manifest (compressed and signed as above) is:
//!
//! ```text
//! u16 image count (1..=16), then each image:
//!   u16 name length (1..=64), name: what the image installs into, named as the system
//!       description names it (`usr`, `kernel`); ASCII letters, digits, `.`, `_`, `-`
//!   u8  kind: 0 a partition of each slot of the class, 1 a file of each slot on a shared
//!       file system (the ESP)
//!   u64 the image's data length
//!   u32 body length, then the body: the image's manifest in the version 2 form above
//!       (its data offsets from the image's first data byte; every image's compatible
//!       string and version the same)
//! ```
//!
//! The images' data follow each other in the data area in image order, each as the
//! version 2 layout; the data lengths add up to the header's. Names are unique. An
//! applier installs the images one after another from the one stream.
//!
//! The manifest is compressed because its extents and counts are mostly small numbers:
//! on a 512 MiB root filesystem pair it shrinks from 186 to 68 KB. The signature covers
//! the compressed bytes, so nothing is decompressed before it is verified, and
//! decompression stops at 64 MiB.

use crate::error::{Error, Result};

/// The magic.
pub const MAGIC: [u8; 8] = *b"KEELPAYL";
/// The format version of a payload of one image, which this crate writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// The format version of a bundle of images.
pub const BUNDLE_VERSION: u32 = 3;
/// Most images in a bundle.
pub const MAX_IMAGES: usize = 16;
/// Header size.
pub const HEADER_SIZE: usize = 64;
/// Signature size.
pub const SIGNATURE_SIZE: usize = 64;
/// Block size of all extents.
pub const BLOCK_SIZE: u64 = 4096;
/// Largest manifest accepted.
pub const MAX_MANIFEST: u64 = 64 << 20;
/// Largest target (or source) range of one operation: bounds the applier's memory.
pub const MAX_OP_BYTES: u64 = 8 << 20;
/// Reference blocks (source blocks, or a CHAIN's target blocks) the operations other than
/// COPY may read together, per target block, beyond [`MAX_REFERENCED_SLACK`]: Keel's
/// generator reads about one for every three on the corpus.
pub const MAX_REFERENCED_PER_BLOCK: u64 = 2;
/// Reference blocks any payload may read beyond [`MAX_REFERENCED_PER_BLOCK`] per target
/// block (64 MiB).
pub const MAX_REFERENCED_SLACK: u64 = 16384;
/// Largest blob of one operation.
pub const MAX_BLOB: u64 = 12 << 20;

/// An operation type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpType {
    /// Write zeros.
    Zero = 0,
    /// Copy source blocks.
    Copy = 1,
    /// zstd-compressed new data.
    Replace = 2,
    /// zstd with the operation's source extents as reference prefix.
    Patch = 3,
    /// zstd with blocks of the target, written by earlier operations, as reference prefix:
    /// new content that resembles new content elsewhere in the image (no old version to
    /// patch from) gets that context without a larger operation.
    Chain = 4,
    /// bsdiff against the source extents (control triples, added differences, extra bytes;
    /// see [`bspatch`]), zstd-compressed: wins on executables, whose code shifts and whose
    /// addresses change by constant amounts.
    Bsdiff = 5,
    /// Compressed blocks re-created: a delta of their decompressed content against the
    /// decompressed source blocks, compressed again on apply with the compressor the
    /// manifest names (squashfs), with the bytes between them given as they are.
    Recompress = 6,
    /// REPLACE with LZMA2 (liblzma) instead of zstd: a filter byte (0, or 1 for BCJ x86
    /// before LZMA2), the dictionary size (u32 LE), a raw LZMA2 stream. New executables
    /// and text come out a tenth smaller than with zstd -19 at the same speed.
    ReplaceXz = 7,
    /// CHAIN with LZMA2: the same blob as REPLACE_XZ, with the reference (target blocks
    /// earlier operations wrote) as the preset dictionary.
    ChainXz = 8,
    /// PATCH with LZMA2: the same blob as REPLACE_XZ, with the source extents as the
    /// preset dictionary. LZMA2's repeated-distance matches and literals coded against the
    /// byte the last match predicted make a delta of a changed file smaller than zstd's.
    PatchXz = 9,
    /// New data stored as it is: the blob is the target blocks' bytes. What a compressor
    /// cannot shrink (random data, blocks a file system compressed) costs nothing over its
    /// own size, where a zstd frame adds 3 bytes per 128 KiB block and time to decode.
    ReplaceRaw = 10,
}

impl OpType {
    /// Every type, in numbering order.
    pub const ALL: [OpType; 11] = [
        OpType::Zero,
        OpType::Copy,
        OpType::Replace,
        OpType::Patch,
        OpType::Chain,
        OpType::Bsdiff,
        OpType::Recompress,
        OpType::ReplaceXz,
        OpType::ChainXz,
        OpType::PatchXz,
        OpType::ReplaceRaw,
    ];

    fn from_u8(v: u8) -> Option<OpType> {
        Some(match v {
            0 => OpType::Zero,
            1 => OpType::Copy,
            2 => OpType::Replace,
            3 => OpType::Patch,
            4 => OpType::Chain,
            5 => OpType::Bsdiff,
            6 => OpType::Recompress,
            7 => OpType::ReplaceXz,
            8 => OpType::ChainXz,
            9 => OpType::PatchXz,
            10 => OpType::ReplaceRaw,
            _ => return None,
        })
    }

    /// Whether its reference is target blocks earlier operations wrote.
    pub fn is_chain(self) -> bool {
        matches!(self, OpType::Chain | OpType::ChainXz)
    }

    /// Name, as `inspect` prints it.
    pub fn name(self) -> &'static str {
        match self {
            OpType::Zero => "ZERO",
            OpType::Copy => "COPY",
            OpType::Replace => "REPLACE",
            OpType::Patch => "PATCH",
            OpType::Chain => "CHAIN",
            OpType::Bsdiff => "BSDIFF",
            OpType::Recompress => "RECOMPRESS",
            OpType::ReplaceXz => "REPLACE_XZ",
            OpType::ChainXz => "CHAIN_XZ",
            OpType::PatchXz => "PATCH_XZ",
            OpType::ReplaceRaw => "REPLACE_RAW",
        }
    }
}

/// A run of blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    /// First block.
    pub start: u64,
    /// Number of blocks.
    pub blocks: u64,
}

impl Extent {
    /// The block numbers it covers, `start..start + blocks` (saturating).
    pub fn range(&self) -> std::ops::Range<u64> {
        self.start..self.start.saturating_add(self.blocks)
    }
}

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// What it does.
    pub op: OpType,
    /// Blocks of the target it writes, in order.
    pub target: Vec<Extent>,
    /// Blocks of the source it reads (COPY, PATCH).
    pub source: Vec<Extent>,
    /// Offset of its blob in the data area.
    pub data_offset: u64,
    /// Length of its blob.
    pub data_length: u64,
    /// sha256 of the blob.
    pub data_sha256: [u8; 32],
    /// sha256 of the source extents' bytes.
    pub source_sha256: [u8; 32],
}

fn blocks(e: &[Extent]) -> u64 {
    e.iter().fold(0u64, |a, x| a.saturating_add(x.blocks))
}

impl Operation {
    /// Target blocks written.
    pub fn target_blocks(&self) -> u64 {
        blocks(&self.target)
    }
    /// Source blocks read.
    pub fn source_blocks(&self) -> u64 {
        blocks(&self.source)
    }
}

/// An image's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageId {
    /// Size in bytes.
    pub size: u64,
    /// Its [`image_digest`].
    pub digest: [u8; 32],
}

/// What the payload turns into what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The source image, `None` for a full payload.
    pub source: Option<ImageId>,
    /// The target image.
    pub target: ImageId,
    /// The target's dm-verity root descriptor bytes, if given.
    pub verity: Option<Vec<u8>>,
    /// The system the payload is for.
    pub compatible: String,
    /// The target's version (dotted numbers).
    pub version: String,
    /// The operations, in order.
    pub operations: Vec<Operation>,
    /// The compressor RECOMPRESS operations need, with its version (`"zstd 1.5.7"`);
    /// present exactly when there are such operations.
    pub recompressor: Option<String>,
}

/// The fixed header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// [`FORMAT_VERSION`], or [`BUNDLE_VERSION`] for a bundle.
    pub version: u32,
    /// Manifest length.
    pub manifest_len: u64,
    /// Data length.
    pub data_len: u64,
    /// The signer's key id.
    pub key_id: [u8; 32],
}

impl Header {
    /// Encode.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[16..24].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.data_len.to_le_bytes());
        b[32..64].copy_from_slice(&self.key_id);
        b
    }

    /// Decode and check.
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Result<Header> {
        let bad = |field: &'static str, offset: u64, reason: String| Error::BadField {
            field,
            offset,
            reason,
        };
        if b[..8] != MAGIC {
            return Err(bad("magic", 0, "expected \"KEELPAYL\"".into()));
        }
        let v = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if v != FORMAT_VERSION && v != BUNDLE_VERSION {
            return Err(bad(
                "format version",
                8,
                format!("expected {FORMAT_VERSION} or {BUNDLE_VERSION}, found {v}"),
            ));
        }
        if b[12..16] != [0; 4] {
            return Err(bad("reserved", 12, "not zero".into()));
        }
        let manifest_len = u64::from_le_bytes(b[16..24].try_into().unwrap_or_default());
        if manifest_len == 0 || manifest_len > MAX_MANIFEST {
            return Err(bad(
                "manifest length",
                16,
                format!("{manifest_len}: expected 1 to {MAX_MANIFEST}"),
            ));
        }
        let data_len = u64::from_le_bytes(b[24..32].try_into().unwrap_or_default());
        let mut key_id = [0u8; 32];
        key_id.copy_from_slice(&b[32..64]);
        Ok(Header {
            version: v,
            manifest_len,
            data_len,
            key_id,
        })
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn extents(&mut self, e: &[Extent]) {
        self.u32(e.len() as u32);
        for x in e {
            self.u64(x.start);
            self.u64(x.blocks);
        }
    }
}

/// The manifest's bytes.
pub fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.u32(BLOCK_SIZE as u32);
    match &m.source {
        Some(s) => {
            w.u8(1);
            w.u64(s.size);
            w.bytes(&s.digest);
        }
        None => w.u8(0),
    }
    w.u64(m.target.size);
    w.bytes(&m.target.digest);
    let v = m.verity.as_deref().unwrap_or_default();
    w.u16(v.len() as u16);
    w.bytes(v);
    w.u16(m.compatible.len() as u16);
    w.bytes(m.compatible.as_bytes());
    w.u16(m.version.len() as u16);
    w.bytes(m.version.as_bytes());
    w.u32(m.operations.len() as u32);
    for op in &m.operations {
        w.u8(op.op as u8);
        w.extents(&op.target);
        w.extents(&op.source);
        w.u64(op.data_offset);
        w.u64(op.data_length);
        w.bytes(&op.data_sha256);
        w.bytes(&op.source_sha256);
    }
    if let Some(r) = &m.recompressor {
        w.u16(r.len() as u16);
        w.bytes(r.as_bytes());
    }
    w.0
}

/// The manifest read through keel-io's bounded cursor; a short read names the field and
/// its payload offset.
struct Reader<'a> {
    c: keel_io::Cursor<'a>,
}

impl From<keel_io::CursorError> for Error {
    fn from(e: keel_io::CursorError) -> Self {
        Error::BadField {
            field: e.field,
            offset: e.offset,
            reason: format!("needs {} bytes, {} left in the manifest", e.needed, e.left),
        }
    }
}

impl<'a> Reader<'a> {
    fn err(&self, field: &'static str, reason: impl Into<String>) -> Error {
        Error::BadField {
            field,
            offset: self.c.offset(),
            reason: reason.into(),
        }
    }
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8]> {
        Ok(self.c.take(n, field)?)
    }
    fn u8(&mut self, f: &'static str) -> Result<u8> {
        Ok(self.c.u8(f)?)
    }
    fn u16(&mut self, f: &'static str) -> Result<u16> {
        Ok(self.c.u16(f)?)
    }
    fn u32(&mut self, f: &'static str) -> Result<u32> {
        Ok(self.c.u32(f)?)
    }
    fn u64(&mut self, f: &'static str) -> Result<u64> {
        Ok(self.c.u64(f)?)
    }
    fn hash(&mut self, f: &'static str) -> Result<[u8; 32]> {
        Ok(self.c.array(f)?)
    }
    fn count(&mut self, f: &'static str, min_each: usize) -> Result<usize> {
        let n = self.u32(f)? as usize;
        let left = self.c.remaining();
        if n.checked_mul(min_each).is_none_or(|need| need > left) {
            return Err(self.err(
                f,
                format!("{n} entries cannot fit in the {left} bytes left"),
            ));
        }
        Ok(n)
    }
    fn extents(&mut self, f: &'static str) -> Result<Vec<Extent>> {
        let n = self.count(f, 16)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let start = self.u64(f)?;
            let blocks = self.u64(f)?;
            if blocks == 0 || start.checked_add(blocks).is_none() {
                return Err(self.err(f, format!("extent {start}+{blocks} is empty or overflows")));
            }
            v.push(Extent { start, blocks });
        }
        Ok(v)
    }
    fn text(&mut self, f: &'static str, max: usize) -> Result<String> {
        let n = self.u16(f)? as usize;
        if n == 0 || n > max {
            return Err(self.err(f, format!("length {n}: expected 1 to {max}")));
        }
        let s = self.take(n, f)?;
        String::from_utf8(s.to_vec()).map_err(|_| self.err(f, "not UTF-8"))
    }
}

/// The manifest as stored: `raw` (from [`encode_manifest`]) in one zstd frame.
pub fn pack_manifest(raw: &[u8]) -> Result<Vec<u8>> {
    // What no applier would take is not made (an image of terabytes in 8 MiB operations).
    if raw.len() as u64 > MAX_MANIFEST {
        return Err(Error::ManifestField {
            field: "manifest",
            reason: format!("{} bytes: at most {MAX_MANIFEST}", raw.len()),
        });
    }
    zstd::bulk::compress(raw, 19).map_err(|e| Error::io("compressing the manifest", e))
}

/// The manifest bytes from their stored form (whose signature has been checked), at most
/// [`MAX_MANIFEST`] of them.
pub fn unpack_manifest(packed: &[u8]) -> Result<Vec<u8>> {
    use std::io::Read;
    let bad = |reason: String| Error::BadField {
        field: "manifest",
        offset: HEADER_SIZE as u64,
        reason,
    };
    // One zstd frame, then nothing but skippable frames (padding): a manifest split over
    // frames, or anything else after it, is not one another reader would take the same.
    if packed.get(..4) != Some(&0xFD2F_B528u32.to_le_bytes()[..]) {
        return Err(bad("does not start with a zstd frame".into()));
    }
    let first = zstd::zstd_safe::find_frame_compressed_size(packed).map_err(|e| {
        bad(format!(
            "not a whole zstd frame: {}",
            zstd::zstd_safe::get_error_name(e)
        ))
    })?;
    let mut rest = &packed[first..];
    while !rest.is_empty() {
        let at = HEADER_SIZE + packed.len() - rest.len();
        let skippable = rest
            .get(..8)
            .and_then(|h| {
                let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
                (magic & !0xF == 0x184D_2A50)
                    .then(|| 8 + u64::from(u32::from_le_bytes([h[4], h[5], h[6], h[7]])))
            })
            .filter(|len| *len <= rest.len() as u64);
        let Some(len) = skippable else {
            return Err(Error::BadField {
                field: "manifest",
                offset: at as u64,
                reason: "bytes after the manifest's frame that are not a zstd skippable frame"
                    .into(),
            });
        };
        rest = &rest[len as usize..];
    }
    let mut out = Vec::new();
    let mut dec = zstd::stream::read::Decoder::new(&packed[..first])
        .map_err(|e| bad(format!("not a zstd frame: {e}")))?;
    dec = dec.single_frame();
    dec.take(MAX_MANIFEST + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("does not decompress: {e}")))?;
    if out.len() as u64 > MAX_MANIFEST {
        return Err(bad(format!(
            "decompresses to more than {MAX_MANIFEST} bytes"
        )));
    }
    Ok(out)
}

/// Parse manifest bytes (whose signature has been checked) against the header's data
/// length: every field, every extent inside its image, every blob inside the data area
/// and in order.
pub fn parse_manifest(b: &[u8], data_len: u64) -> Result<Manifest> {
    parse_manifest_at(b, data_len, HEADER_SIZE as u64)
}

/// [`parse_manifest`] of bytes that start at `base` in the (unpacked) manifest, for the
/// offsets errors name.
fn parse_manifest_at(b: &[u8], data_len: u64, base: u64) -> Result<Manifest> {
    let mut r = Reader {
        c: keel_io::Cursor::new(b, base),
    };
    let bs = r.u32("block size")?;
    if u64::from(bs) != BLOCK_SIZE {
        return Err(r.err("block size", format!("{bs}: expected {BLOCK_SIZE}")));
    }
    let source = match r.u8("has source")? {
        0 => None,
        1 => Some(ImageId {
            size: r.u64("source size")?,
            digest: r.hash("source digest")?,
        }),
        v => return Err(r.err("has source", format!("{v}: expected 0 or 1"))),
    };
    let target = ImageId {
        size: r.u64("target size")?,
        digest: r.hash("target digest")?,
    };
    let vlen = r.u16("verity descriptor length")? as usize;
    let verity = match vlen {
        0 => None,
        keel_verity::sign::DESCRIPTOR_SIZE => Some(r.take(vlen, "verity descriptor")?.to_vec()),
        n => {
            return Err(r.err(
                "verity descriptor length",
                format!("{n}: expected 0 or {}", keel_verity::sign::DESCRIPTOR_SIZE),
            ))
        }
    };
    let compatible = r.text("compatible", 256)?;
    let version = r.text("version", 64)?;
    if let Err(why) = Version::parse(&version) {
        return Err(r.err("version", why.to_string()));
    }
    let n = r.count("operation count", 1 + 4 + 4 + 16 + 64)?;
    let target_blocks = target.size.div_ceil(BLOCK_SIZE);
    let source_blocks = source.map_or(0, |s| s.size.div_ceil(BLOCK_SIZE));
    let mut ops = Vec::with_capacity(n);
    let mut next_data = 0u64;
    let mut written = Written::default();
    let mut referenced = 0u64;
    for i in 0..n {
        let t = r.u8("operation type")?;
        let op = OpType::from_u8(t)
            .ok_or_else(|| r.err("operation type", format!("operation {i}: unknown type {t}")))?;
        let tgt = r.extents("target extents")?;
        let src = r.extents("source extents")?;
        let data_offset = r.u64("data offset")?;
        let data_length = r.u64("data length")?;
        let data_sha256 = r.hash("data sha256")?;
        let source_sha256 = r.hash("source sha256")?;
        let o = Operation {
            op,
            target: tgt,
            source: src,
            data_offset,
            data_length,
            data_sha256,
            source_sha256,
        };
        let bad = |why: String| r.err("operation", format!("operation {i}: {why}"));
        let max_blocks = MAX_OP_BYTES / BLOCK_SIZE;
        if o.target.is_empty() || o.target_blocks() > max_blocks {
            return Err(bad(format!(
                "{} target blocks: expected 1 to {}",
                o.target_blocks(),
                MAX_OP_BYTES / BLOCK_SIZE
            )));
        }
        if o.target.iter().any(|e| e.start + e.blocks > target_blocks) {
            return Err(bad("a target extent lies past the target image".into()));
        }
        // Each target block is written once: a resumed apply checks what earlier
        // operations wrote by reading it back, and a CHAIN's reference stays as it was
        // read, so no operation may overwrite another's blocks (nor its own).
        let mut own = Written::default();
        for e in &o.target {
            if written.overlaps(e.range()) || own.overlaps(e.range()) {
                return Err(bad(format!(
                    "target blocks {}..{} are written twice",
                    e.start,
                    e.start + e.blocks
                )));
            }
            own.insert(e.range());
        }
        if op.is_chain() {
            // Its reference must be complete before it runs, and stay so across a resume.
            if o.source_blocks() > max_blocks || !o.source.iter().all(|e| written.covers(e.range()))
            {
                return Err(bad(
                    "CHAIN refers to target blocks no earlier operation wrote".into(),
                ));
            }
        } else if o.source_blocks() > max_blocks
            || o.source.iter().any(|e| e.start + e.blocks > source_blocks)
        {
            return Err(bad(
                "a source extent lies past the source image or is too large".into(),
            ));
        }
        let (needs_source, needs_data) = match op {
            OpType::Zero => (false, false),
            OpType::Copy => (true, false),
            OpType::Replace | OpType::ReplaceXz | OpType::ReplaceRaw => (false, true),
            OpType::Patch | OpType::PatchXz | OpType::Chain | OpType::ChainXz | OpType::Bsdiff => {
                (true, true)
            }
            // New files have no old version to build on.
            OpType::Recompress => (!o.source.is_empty(), true),
        };
        if needs_source == o.source.is_empty() || (needs_data != (o.data_length > 0)) {
            return Err(bad(format!(
                "{} with {} source extents and {} data bytes",
                op.name(),
                o.source.len(),
                o.data_length
            )));
        }
        if op == OpType::ReplaceRaw
            && Some(o.data_length) != o.target_blocks().checked_mul(BLOCK_SIZE)
        {
            return Err(bad(format!(
                "REPLACE_RAW of {} blocks with {} data bytes",
                o.target_blocks(),
                o.data_length
            )));
        }
        if op == OpType::Copy && o.source_blocks() != o.target_blocks() {
            return Err(bad(
                "COPY reads and writes different numbers of blocks".into()
            ));
        }
        if o.data_length > MAX_BLOB || (o.data_length > 0 && o.data_offset != next_data) {
            return Err(bad(format!(
                "blob at {} (+{}) is not the next one (at {next_data}) or too large",
                o.data_offset, o.data_length
            )));
        }
        next_data = next_data.saturating_add(o.data_length);
        // Each operation's reference is read and hashed whole: many small operations on
        // the same megabytes would make an applier read them again and again.
        if op != OpType::Copy {
            referenced = referenced.saturating_add(o.source_blocks());
            if referenced > MAX_REFERENCED_PER_BLOCK * target_blocks + MAX_REFERENCED_SLACK {
                return Err(bad(format!(
                    "the operations so far read {referenced} reference blocks for a target \
                     of {target_blocks}: at most {MAX_REFERENCED_PER_BLOCK} per block and \
                     {MAX_REFERENCED_SLACK} more"
                )));
            }
        }
        for e in &o.target {
            written.insert(e.range());
        }
        ops.push(o);
    }
    if next_data != data_len {
        return Err(r.err(
            "data length",
            format!("the operations use {next_data} bytes, the header says {data_len}"),
        ));
    }
    let recompressor = if ops.iter().any(|o| o.op == OpType::Recompress) {
        Some(r.text("recompressor", 64)?)
    } else {
        None
    };
    if r.c.remaining() != 0 {
        return Err(r.err("manifest", format!("{} bytes left over", r.c.remaining())));
    }
    Ok(Manifest {
        source,
        target,
        verity,
        compatible,
        version,
        operations: ops,
        recompressor,
    })
}

/// What a bundle's image installs into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ImageKind {
    /// A partition of each slot of a class (`usr`, `root`, ChromeOS's `kernel`).
    Slot,
    /// A file of each slot on a file system the slots share (a kernel, an initrd, a UKI
    /// on the ESP).
    File,
}

impl ImageKind {
    /// Its name in listings.
    pub fn name(self) -> &'static str {
        match self {
            ImageKind::Slot => "slot",
            ImageKind::File => "file",
        }
    }
}

/// One image of a payload: a bundle's, or a version 2 payload's only one (named `""`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleImage {
    /// What it installs into, as the system description names it.
    pub name: String,
    /// A partition per slot, or a file per slot.
    pub kind: ImageKind,
    /// Its bytes in the data area (they follow the earlier images').
    pub data_len: u64,
    /// Its manifest, data offsets from its first data byte.
    pub manifest: Manifest,
}

/// Whether `name` may name a bundle's image.
pub fn valid_image_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Encode a bundle's manifest (before [`pack_manifest`]).
pub fn encode_bundle(images: &[BundleImage]) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.u16(images.len() as u16);
    for i in images {
        w.u16(i.name.len() as u16);
        w.bytes(i.name.as_bytes());
        w.u8(match i.kind {
            ImageKind::Slot => 0,
            ImageKind::File => 1,
        });
        w.u64(i.data_len);
        let body = encode_manifest(&i.manifest);
        w.u32(body.len() as u32);
        w.bytes(&body);
    }
    w.0
}

/// Parse a bundle's manifest bytes (whose signature has been checked) against the
/// header's data length: each image's name, kind and body (checked as a version 2
/// manifest against the image's own data length), the names unique, one compatible
/// string and version, the data lengths adding up.
pub fn parse_bundle(b: &[u8], data_len: u64) -> Result<Vec<BundleImage>> {
    let mut r = Reader {
        c: keel_io::Cursor::new(b, HEADER_SIZE as u64),
    };
    let n = r.u16("image count")? as usize;
    if n == 0 || n > MAX_IMAGES {
        return Err(r.err("image count", format!("{n}: expected 1 to {MAX_IMAGES}")));
    }
    let mut images: Vec<BundleImage> = Vec::with_capacity(n);
    let mut total = 0u64;
    for i in 0..n {
        let name = r.text("image name", 64)?;
        if !valid_image_name(&name) {
            return Err(r.err(
                "image name",
                format!("image {i}: {name:?}: letters, digits, '.', '_' and '-' only"),
            ));
        }
        if images.iter().any(|o| o.name == name) {
            return Err(r.err("image name", format!("image {i}: {name:?} twice")));
        }
        let kind = match r.u8("image kind")? {
            0 => ImageKind::Slot,
            1 => ImageKind::File,
            k => return Err(r.err("image kind", format!("image {i}: {k}: expected 0 or 1"))),
        };
        let len = r.u64("image data length")?;
        total = total
            .checked_add(len)
            .ok_or_else(|| r.err("image data length", "the lengths overflow"))?;
        let body_len = r.u32("image body length")? as usize;
        let base = r.c.offset();
        let body = r.take(body_len, "image body")?;
        let manifest = parse_manifest_at(body, len, base)?;
        if let Some(first) = images.first() {
            let m = &first.manifest;
            if (&manifest.compatible, &manifest.version) != (&m.compatible, &m.version) {
                return Err(Error::BadField {
                    field: "image body",
                    offset: base,
                    reason: format!(
                        "image {i} ({name}) is for {} {}, image 0 for {} {}",
                        manifest.compatible, manifest.version, m.compatible, m.version
                    ),
                });
            }
        }
        images.push(BundleImage {
            name,
            kind,
            data_len: len,
            manifest,
        });
    }
    if total != data_len {
        return Err(r.err(
            "data length",
            format!("the images use {total} bytes, the header says {data_len}"),
        ));
    }
    if r.c.remaining() != 0 {
        return Err(r.err("manifest", format!("{} bytes left over", r.c.remaining())));
    }
    Ok(images)
}

pub use crate::bspatch::bspatch;
pub use crate::digest::{data_digest, image_digest, image_digest_of, sha256, DIGEST_CHUNK};
use crate::intervals::Written;
pub use crate::version::{Version, VersionError, MAX_VERSION_PARTS};

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored manifest is one zstd frame, then only skippable frames: the padding a
    /// generator leaves is passed over, a manifest split over frames or followed by
    /// anything else is refused (an outside review found both taken).
    #[test]
    fn a_manifest_is_one_frame_and_padding() {
        let raw = b"a manifest's bytes".repeat(40);
        let frame = pack_manifest(&raw).unwrap();
        let skip = |n: u32| {
            let mut v = 0x184D_2A53u32.to_le_bytes().to_vec();
            v.extend_from_slice(&n.to_le_bytes());
            v.resize(8 + n as usize, 0);
            v
        };
        let join = |parts: &[&[u8]]| parts.concat();
        assert_eq!(unpack_manifest(&frame).unwrap(), raw);
        assert_eq!(
            unpack_manifest(&join(&[&frame, &skip(0), &skip(100)])).unwrap(),
            raw
        );
        let half = zstd::bulk::compress(&raw[..300], 3).unwrap();
        let other = zstd::bulk::compress(&raw[300..], 3).unwrap();
        let empty = zstd::bulk::compress(b"", 3).unwrap();
        let mut long = skip(100);
        long.truncate(50);
        for (what, bad) in [
            ("padding first", join(&[&skip(4), &frame])),
            ("split over two frames", join(&[&half, &other])),
            ("an empty frame after", join(&[&frame, &empty])),
            ("padding longer than the rest", join(&[&frame, &long])),
            ("garbage after", join(&[&frame, b"xyz"])),
            ("half a frame", frame[..frame.len() / 2].to_vec()),
            ("nothing", Vec::new()),
        ] {
            let e = unpack_manifest(&bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::BadField {
                        field: "manifest",
                        ..
                    }
                ),
                "{what}: {e}"
            );
        }
        // What no applier takes is not packed.
        let huge = vec![0u8; MAX_MANIFEST as usize + 1];
        assert!(matches!(
            pack_manifest(&huge),
            Err(Error::ManifestField {
                field: "manifest",
                ..
            })
        ));
    }
}
