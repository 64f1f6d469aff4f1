//! Just enough EROFS to find where each regular file's data lies in an image: paths and
//! their data blocks, in file order, as [`crate::fs::ext4`] finds them on ext4, so the
//! generator pairs a changed file with its old version on EROFS too.
//!
//! Read: the superblock (4 KiB blocks only, the payload's block), compact and extended
//! inodes, inline xattrs (skipped by their size), the uncompressed layouts (flat plain,
//! flat inline: the tail packed beside the inode is not a block and is left to the block
//! diff, chunk-based with block maps or chunk indexes: holes and chunks on other devices
//! are absent), and directories of any size in those layouts (their inline tails
//! included). Compressed files ([`compressed_files`]): lz4 (and lz4hc) pclusters of one
//! block each, with their legacy or compacted (2B and 4B) cluster maps and 0PADDING,
//! as mkfs.erofs writes them by default; their content is [`content`]. Big pclusters,
//! tails packed beside the inode, interlaced pclusters and fragments are not read: those
//! files are left to the block diff.
//!
//! Everything read is untrusted: each structure is bounds-checked and totals are capped,
//! so a damaged or hostile image gives fewer files (or none), never a panic or an
//! unbounded allocation. Layout facts: the kernel's `fs/erofs/erofs_fs.h` and its
//! `data.c` (block mapping) and `dir.c`.

use std::collections::HashSet;

use keel_io::Cursor;

use crate::codec::lz4;

#[doc(no_inline)]
pub use super::ext4::File;

const MAGIC: u64 = 0xE0F5_E1E2;
const MAX_FILES: usize = 1 << 20;
const MAX_EXTENTS: usize = 1 << 22;
const MAX_DIR_BYTES: u64 = 64 << 20;
const MAX_DEPTH: usize = 64;
const MAX_PENDING_DIRS: usize = 1 << 20;
const NULL_ADDR: u64 = 0xFFFF_FFFF;

// Data layouts (`i_format` bits 1-3).
const FLAT_PLAIN: u64 = 0;
const FLAT_INLINE: u64 = 2;
const CHUNK_BASED: u64 = 4;
const CHUNK_FORMAT_INDEXES: u64 = 0x20;
const CHUNK_FORMAT_BLKBITS_MASK: u64 = 0x1f;

// Compressed layouts: full (legacy) and compacted cluster maps.
const Z_LEGACY: u64 = 1;
const Z_COMPACT: u64 = 3;
// Superblock `feature_incompat` bits.
const INCOMPAT_0PADDING: u64 = 1;
const INCOMPAT_BIG_PCLUSTER: u64 = 2;
// Map header advice: compacted 2B packs; the rest are layouts this reader leaves (big
// pclusters, a tail pcluster beside the inode, interlaced pclusters, fragments).
const Z_ADVISE_COMPACTED_2B: u64 = 1;
const Z_ADVISE_UNREAD: u64 = 0x2 | 0x4 | 0x8 | 0x10 | 0x20;
// Logical cluster types.
const LC_PLAIN: u64 = 0;
const LC_HEAD: u64 = 1;
const LC_NONHEAD: u64 = 2;
/// Largest content one lz4 pcluster is read to (its size word holds 24 bits).
const MAX_CLUSTER_CONTENT: u64 = (1 << 24) - 1;

// Directory entry types.
const FT_REG_FILE: u8 = 1;
const FT_DIR: u8 = 2;

fn le16(b: &[u8], at: usize) -> Option<u64> {
    Cursor::new(b, 0).u16_at(at, "erofs").ok().map(u64::from)
}

fn le32(b: &[u8], at: usize) -> Option<u64> {
    Cursor::new(b, 0).u32_at(at, "erofs").ok().map(u64::from)
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Cursor::new(b, 0).u64_at(at, "erofs").ok()
}

struct Fs<'a> {
    img: &'a [u8],
    meta_blkaddr: u64,
    extents_seen: usize,
    /// lz4 pclusters padded with zeros at their front, one block each.
    z_readable: bool,
}

/// One inode, as far as mapping its data goes.
struct Inode {
    /// Byte offset of the inode in the image.
    at: u64,
    layout: u64,
    size: u64,
    /// `i_u`: the first block (flat layouts) or the chunk format.
    u: u64,
    /// Bytes of inode and inline xattrs: inline data and chunk maps follow.
    header: u64,
}

impl Inode {
    /// A chunk-based inode's map: (chunk size, bytes per map entry: a chunk index or a
    /// block address, chunks); `None` for chunk sizes beyond reason.
    fn chunk_map(&self) -> Option<(u64, u64, u64)> {
        let format = self.u & 0xffff;
        let chunkbits = 12 + (format & CHUNK_FORMAT_BLKBITS_MASK);
        if chunkbits > 40 {
            return None;
        }
        let chunk = 1u64 << chunkbits;
        let unit = if format & CHUNK_FORMAT_INDEXES != 0 {
            8
        } else {
            4
        };
        Some((chunk, unit, self.size.div_ceil(chunk)))
    }
}

/// Where a run of the file's bytes lies.
enum Piece {
    /// Whole blocks: (first block, count).
    Blocks(u64, u64),
    /// Bytes beside the inode: (image offset, length).
    Inline(u64, u64),
    /// A hole of this many bytes (or data on another device).
    Hole(u64),
}

const BS: u64 = 4096;

impl<'a> Fs<'a> {
    fn open(img: &'a [u8]) -> Option<Self> {
        let sb = img.get(1024..1024 + 128)?;
        if le32(sb, 0)? != MAGIC {
            return None;
        }
        // Only 4 KiB blocks line up with the payload's blocks.
        if sb.get(12).copied()? != 12 {
            return None;
        }
        let incompat = le32(sb, 80)?;
        Some(Fs {
            img,
            meta_blkaddr: le32(sb, 40)?,
            extents_seen: 0,
            z_readable: incompat & INCOMPAT_0PADDING != 0 && incompat & INCOMPAT_BIG_PCLUSTER == 0,
        })
    }

    fn root_nid(&self) -> Option<u64> {
        le16(self.img.get(1024..1024 + 128)?, 14)
    }

    fn bytes(&self, at: u64, len: u64) -> Option<&'a [u8]> {
        let start = usize::try_from(at).ok()?;
        self.img
            .get(start..start.checked_add(usize::try_from(len).ok()?)?)
    }

    fn inode(&self, nid: u64) -> Option<Inode> {
        let at = self
            .meta_blkaddr
            .checked_mul(BS)?
            .checked_add(nid.checked_mul(32)?)?;
        let compact = self.bytes(at, 32)?;
        let format = le16(compact, 0)?;
        let extended = format & 1 == 1;
        let (isize, size) = if extended {
            (64, le64(self.bytes(at, 64)?, 8)?)
        } else {
            (32, le32(compact, 8)?)
        };
        let icount = le16(compact, 2)?;
        let xattrs = if icount == 0 {
            0
        } else {
            12 + 4 * (icount - 1)
        };
        Some(Inode {
            at,
            layout: (format >> 1) & 7,
            size,
            u: le32(compact, 16)?,
            header: isize + xattrs,
        })
    }

    /// The file's bytes in order, as pieces; `None` for layouts not read (compressed).
    fn pieces(&mut self, ino: &Inode) -> Option<Vec<Piece>> {
        let blocks = self.img.len() as u64 / BS;
        let in_image = |start: u64, n: u64| start.checked_add(n).is_some_and(|e| e <= blocks);
        let nblocks = ino.size.div_ceil(BS);
        match ino.layout {
            FLAT_PLAIN | FLAT_INLINE => {
                let tail = ino.layout == FLAT_INLINE && !ino.size.is_multiple_of(BS);
                let full = nblocks - u64::from(tail);
                let mut out = Vec::new();
                if full > 0 {
                    if !in_image(ino.u, full) {
                        return None;
                    }
                    out.push(Piece::Blocks(ino.u, full));
                }
                if tail {
                    let len = ino.size % BS;
                    let at = ino.at.checked_add(ino.header)?;
                    // The kernel refuses a tail that crosses its metadata block.
                    if at % BS + len > BS {
                        return None;
                    }
                    self.bytes(at, len)?;
                    out.push(Piece::Inline(at, len));
                }
                Some(out)
            }
            CHUNK_BASED => {
                let (chunk, unit, chunks) = ino.chunk_map()?;
                let base = ino.at.checked_add(ino.header)?.next_multiple_of(unit);
                let map = self.bytes(base, chunks.checked_mul(unit)?)?;
                let mut out = Vec::new();
                for c in 0..chunks {
                    let len = chunk.min(ino.size - c * chunk);
                    let at = usize::try_from(c * unit).ok()?;
                    let (device, addr) = if unit == 8 {
                        (le16(map, at + 2)?, le32(map, at + 4)?)
                    } else {
                        (0, le32(map, at)?)
                    };
                    let n = len.div_ceil(BS);
                    if addr == NULL_ADDR || device != 0 || !in_image(addr, n) {
                        out.push(Piece::Hole(len));
                    } else {
                        out.push(Piece::Blocks(addr, n));
                    }
                }
                Some(out)
            }
            _ => None,
        }
    }

    /// Logical cluster `lcn` of a compressed inode whose map header is at `hpos`: its type,
    /// its low bits (where a head's content starts in its cluster, a non-head's distance)
    /// and, for a head, its block. The kernel's `zmap.c` reads the maps the same way.
    fn z_entry(&self, ino: &Inode, hpos: u64, advise: u64, lcn: u64) -> Option<(u64, u64, u64)> {
        if ino.layout == Z_LEGACY {
            let e = self.bytes(hpos.checked_add(16)?.checked_add(lcn.checked_mul(8)?)?, 8)?;
            return Some((le16(e, 0)? & 3, le16(e, 2)?, le32(e, 4)?));
        }
        let total = ino.size.div_ceil(BS);
        let ebase = hpos.checked_add(8)?;
        // 4-byte entries up to a 32-byte boundary, then 2-byte ones in packs of 16, then
        // 4-byte ones again.
        let initial = match (32 - ebase % 32) / 4 {
            8 => 0,
            n => n,
        };
        let two = if advise & Z_ADVISE_COMPACTED_2B != 0 && initial < total {
            (total - initial) / 16 * 16
        } else {
            0
        };
        let (shift, pos) = if lcn < initial {
            (2, ebase + lcn * 4)
        } else if lcn - initial < two {
            (1, ebase + initial * 4 + (lcn - initial) * 2)
        } else {
            (2, ebase + initial * 4 + two * 2 + (lcn - initial - two) * 4)
        };
        let vcnt: u64 = if shift == 2 { 2 } else { 16 };
        let pack = vcnt << shift;
        let bits = (pack - 4) * 8 / vcnt;
        let base = pos - pos % pack;
        let p = self.bytes(base, pack)?;
        let decode = |i: u64| -> Option<(u64, u64)> {
            let at = bits * i;
            let v = le32(p, usize::try_from(at / 8).ok()?)? >> (at % 8);
            Some(((v >> 12) & 3, v & 0xfff))
        };
        let i = (pos - base) >> shift;
        let (kind, lo) = decode(i)?;
        if kind == LC_NONHEAD {
            return Some((kind, lo, 0));
        }
        // A head's block: the pack's base address, plus one for itself and one for each
        // head before it in the pack (a non-head's distance skips to its head).
        let mut nblk = 1u64;
        let mut j = i as i64;
        while j > 0 {
            j -= 1;
            let (k, l) = decode(j as u64)?;
            if k == LC_NONHEAD {
                j -= l as i64;
            }
            if j >= 0 {
                nblk += 1;
            }
        }
        Some((kind, lo, le32(p, usize::try_from(pack - 4).ok()?)? + nblk))
    }

    /// A compressed inode's pclusters in file order, or `None` for what this reader
    /// leaves (see the module's notes) or a map that does not add up.
    fn clusters(&mut self, ino: &Inode) -> Option<Vec<Cluster>> {
        if !self.z_readable || !matches!(ino.layout, Z_LEGACY | Z_COMPACT) {
            return None;
        }
        let hpos = ino.at.checked_add(ino.header)?.next_multiple_of(8);
        let h = self.bytes(hpos, 8)?;
        let advise = le16(h, 4)?;
        let (alg, cbits) = (h.get(6).copied()?, h.get(7).copied()?);
        if advise & Z_ADVISE_UNREAD != 0 || alg & 15 != 0 || cbits & 7 != 0 {
            return None;
        }
        let total = ino.size.div_ceil(BS);
        let blocks = self.img.len() as u64 / BS;
        let mut heads: Vec<(u64, bool, u64)> = Vec::new();
        for lcn in 0..total {
            let (kind, lo, block) = self.z_entry(ino, hpos, advise, lcn)?;
            match kind {
                LC_PLAIN | LC_HEAD => {
                    self.extents_seen += 1;
                    if self.extents_seen > MAX_EXTENTS {
                        return None;
                    }
                    heads.push((lcn * BS + lo, kind == LC_PLAIN, block));
                }
                LC_NONHEAD => {}
                _ => return None,
            }
        }
        let mut out: Vec<Cluster> = Vec::with_capacity(heads.len());
        for (k, &(start, raw, block)) in heads.iter().enumerate() {
            let end = heads.get(k + 1).map_or(ino.size, |h| h.0);
            // The last map entry may only mark where the content before it ends.
            if start == ino.size && k + 1 == heads.len() && k > 0 {
                break;
            }
            let len = end.checked_sub(start).filter(|&l| l > 0)?;
            let first = out.first().map_or(block, |c| c.block);
            if (k == 0 && start != 0)
                || block != first + k as u64
                || block >= blocks
                || len > if raw { BS } else { MAX_CLUSTER_CONTENT }
            {
                return None;
            }
            out.push(Cluster {
                block,
                start,
                len: len as u32,
                raw,
            });
        }
        Some(out)
    }

    /// A directory's bytes (whole blocks then its inline tail), at most MAX_DIR_BYTES.
    fn dir_bytes(&mut self, ino: &Inode) -> Option<Vec<u8>> {
        if ino.size > MAX_DIR_BYTES {
            return None;
        }
        let mut out = Vec::new();
        for p in self.pieces(ino)? {
            match p {
                Piece::Blocks(start, n) => out.extend_from_slice(self.bytes(start * BS, n * BS)?),
                Piece::Inline(at, len) => out.extend_from_slice(self.bytes(at, len)?),
                Piece::Hole(len) => out.resize(out.len() + usize::try_from(len).ok()?, 0),
            }
        }
        out.truncate(usize::try_from(ino.size).ok()?);
        Some(out)
    }
}

/// (nid, type, name) of each entry of a directory block.
fn dirents(block: &[u8]) -> Vec<(u64, u8, &[u8])> {
    let mut out = Vec::new();
    let Some(first_nameoff) = le16(block, 8) else {
        return out;
    };
    let count = (first_nameoff / 12) as usize;
    if count == 0 || first_nameoff as usize > block.len() {
        return out;
    }
    for i in 0..count {
        let at = i * 12;
        let (Some(nid), Some(off), Some(ftype)) = (
            le64(block, at),
            le16(block, at + 8),
            block.get(at + 10).copied(),
        ) else {
            break;
        };
        let end = if i + 1 < count {
            match le16(block, at + 12 + 8) {
                Some(e) => e as usize,
                None => break,
            }
        } else {
            block.len()
        };
        let Some(name) = block.get(off as usize..end) else {
            break;
        };
        // The last name of a block runs to the block's end, padded with NULs.
        let name = match name.iter().position(|&b| b == 0) {
            Some(n) => &name[..n],
            None => name,
        };
        out.push((nid, ftype, name));
    }
    out
}

/// Regular files of an uncompressed-layout EROFS image with 4 KiB blocks; empty if `img`
/// is not one (or is damaged where it matters).
pub fn files(img: &[u8]) -> Vec<File> {
    let mut out = Vec::new();
    walk(img, |fs, path, nid, ftype| {
        if ftype == FT_REG_FILE {
            if out.len() >= MAX_FILES {
                return false;
            }
            if let Some(f) = file(fs, nid, path) {
                out.push(f);
            }
        }
        true
    });
    out
}

/// A compressed regular file: its pclusters, in file order on consecutive blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compressed {
    /// Absolute path in the image ("/usr/bin/perl").
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Its pclusters.
    pub clusters: Vec<Cluster>,
}

impl Compressed {
    /// The first block and the number of blocks, if it has any.
    pub fn blocks(&self) -> Option<(u64, u64)> {
        Some((self.clusters.first()?.block, self.clusters.len() as u64))
    }
}

/// One pcluster: a block of the image holding a run of the file's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// Its block.
    pub block: u64,
    /// Where its content starts in the file.
    pub start: u64,
    /// Bytes of content it holds.
    pub len: u32,
    /// Stored as it is (at the block's front); else an lz4 block at the block's end,
    /// zeros before it.
    pub raw: bool,
}

/// The compressed regular files of an EROFS image with 4 KiB blocks whose maps this
/// reader follows (see the module's notes); empty if `img` is not one.
pub fn compressed_files(img: &[u8]) -> Vec<Compressed> {
    let mut out = Vec::new();
    walk(img, |fs, path, nid, ftype| {
        if ftype == FT_REG_FILE {
            if out.len() >= MAX_FILES {
                return false;
            }
            if let Some(ino) = fs.inode(nid) {
                if let Some(clusters) = fs.clusters(&ino) {
                    out.push(Compressed {
                        path,
                        size: ino.size,
                        clusters,
                    });
                }
            }
        }
        true
    });
    out
}

/// The lz4 block of a pcluster's block: 0PADDING puts it at the block's end, zeros before
/// it (no lz4 block starts with a zero byte).
pub fn packed(block: &[u8]) -> &[u8] {
    let from = block.iter().position(|&b| b != 0).unwrap_or(block.len());
    &block[from..]
}

/// A pcluster's content appended to `out`, from its block's bytes; `None` if the block
/// does not hold that much (a damaged image).
pub fn cluster_content(block: &[u8], len: u32, raw: bool, out: &mut Vec<u8>) -> Option<()> {
    let len = len as usize;
    let block = block.get(..BS as usize)?;
    if raw {
        out.extend_from_slice(block.get(..len)?);
        return Some(());
    }
    let lz = packed(block);
    if lz.is_empty() {
        return None;
    }
    let at = out.len();
    out.resize(at + len, 0);
    match lz4::decompress(lz, &mut out[at..]) {
        Some(n) if n == len => Some(()),
        _ => {
            out.truncate(at);
            None
        }
    }
}

/// A compressed file's content, if it is at most `max` bytes and every pcluster
/// decompresses to its length.
pub fn content(img: &[u8], f: &Compressed, max: u64) -> Option<Vec<u8>> {
    if f.size > max {
        return None;
    }
    let mut out = Vec::with_capacity(usize::try_from(f.size).ok()?);
    for c in &f.clusters {
        let at = usize::try_from(c.block.checked_mul(BS)?).ok()?;
        cluster_content(img.get(at..)?, c.len, c.raw, &mut out)?;
    }
    (out.len() as u64 == f.size).then_some(out)
}

/// Where each entry's inode lies, with what is stored beside it (inline xattrs, an inline
/// tail, a directory's inline entries, a chunk map): (path, first byte, end byte) in the
/// image, the root directory as "". EROFS keeps these in its metadata blocks, many entries
/// to a block; the generator gives a changed metadata block the old blocks of the same
/// paths as reference.
pub fn metadata(img: &[u8]) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let Some(fs) = Fs::open(img) else {
        return out;
    };
    if let Some(root) = fs.root_nid().and_then(|n| fs.inode(n)) {
        out.push((
            String::new(),
            root.at,
            root.at + root.header + inline_len(&root),
        ));
    }
    walk(img, |fs, path, nid, _| {
        if out.len() >= MAX_FILES {
            return false;
        }
        if let Some(ino) = fs.inode(nid) {
            out.push((path, ino.at, ino.at + ino.header + inline_len(&ino)));
        }
        true
    });
    out
}

/// Bytes stored after an inode and its xattrs.
fn inline_len(ino: &Inode) -> u64 {
    match ino.layout {
        FLAT_INLINE => ino.size % BS,
        CHUNK_BASED => ino
            .chunk_map()
            .map_or(0, |(_, unit, chunks)| chunks.saturating_mul(unit).min(BS)),
        _ => 0,
    }
}

/// Every directory entry under the root, depth first: `visit(fs, path, nid, type)`
/// returns false to stop.
fn walk(img: &[u8], mut visit: impl FnMut(&mut Fs<'_>, String, u64, u8) -> bool) {
    let Some(mut fs) = Fs::open(img) else {
        return;
    };
    let Some(root) = fs.root_nid() else {
        return;
    };
    let mut visited = HashSet::from([root]);
    let mut stack = vec![(root, String::new(), 0usize)];
    while let Some((nid, path, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            continue;
        }
        let Some(ino) = fs.inode(nid) else { continue };
        let Some(bytes) = fs.dir_bytes(&ino) else {
            continue;
        };
        for block in bytes.chunks(BS as usize) {
            for (child_nid, ftype, name) in dirents(block) {
                if name == b"." || name == b".." || name.is_empty() {
                    continue;
                }
                let child = format!("{path}/{}", String::from_utf8_lossy(name));
                if ftype == FT_DIR {
                    if stack.len() < MAX_PENDING_DIRS && visited.insert(child_nid) {
                        stack.push((child_nid, child.clone(), depth + 1));
                    } else {
                        continue;
                    }
                }
                if !visit(&mut fs, child, child_nid, ftype) {
                    return;
                }
            }
        }
    }
}

fn file(fs: &mut Fs<'_>, nid: u64, path: String) -> Option<File> {
    let ino = fs.inode(nid)?;
    let mut extents = Vec::new();
    let mut inline_tail = None;
    for p in fs.pieces(&ino)? {
        if let Piece::Inline(at, _) = p {
            inline_tail = Some(at);
        }
        if let Piece::Blocks(start, n) = p {
            fs.extents_seen += 1;
            if fs.extents_seen > MAX_EXTENTS {
                return None;
            }
            match extents.last_mut() {
                Some((s, l)) if *s + *l == start => *l += n,
                _ => extents.push((start, n)),
            }
        }
    }
    Some(File {
        path,
        size: ino.size,
        extents,
        inline_tail,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::collections::HashMap;

    use crate::testdata::compressible;
    use keel_testsupport as tools;

    /// A random tree from `seed`: files of every size class (empty, under a block, whole
    /// blocks, a block and a byte, large), nested directories, one directory of many
    /// entries (several directory blocks), user xattrs on some files.
    fn tree(root: &std::path::Path, seed: u64) -> HashMap<String, Vec<u8>> {
        let mut next = tools::seeded_choice(seed);
        let mut expect = HashMap::new();
        let sizes = [0, 1, 100, 4095, 4096, 4097, 8192, 12_345, 65_536, 200_001];
        for i in 0..60u64 {
            let depth = next(4);
            let mut rel = String::new();
            for d in 0..depth {
                rel.push_str(&format!("/d{}-{}", d, next(3)));
            }
            rel.push_str(&format!("/f{i}.bin"));
            let size = if next(5) == 0 {
                next(300_000)
            } else {
                sizes[next(sizes.len() as u64) as usize]
            };
            let content = tools::seeded_bytes(seed * 1000 + i, size as usize);
            let p = root.join(rel.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &content).unwrap();
            expect.insert(rel, content);
        }
        for i in 0..300 {
            let rel = format!("/many/an-entry-with-a-rather-long-name-{i:04}");
            let content = tools::seeded_bytes(i, (i % 50) as usize);
            let p = root.join(rel.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &content).unwrap();
            expect.insert(rel, content);
        }
        // Inline xattrs move the inline data and chunk maps after them.
        let with_xattrs: Vec<String> = expect
            .keys()
            .filter(|k| k.len() % 3 == 0)
            .cloned()
            .collect();
        let script = with_xattrs
            .iter()
            .map(|k| {
                format!(
                    "os.setxattr({:?}, 'user.keel', b'v' * {})",
                    root.join(k.trim_start_matches('/')).display().to_string(),
                    k.len() % 40 + 1
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        if let Some(py) = tools::tool("python3", "python3") {
            tools::run_ok(&py, &["-c", &format!("import os\n{script}")]);
        }
        expect
    }

    /// Random trees built by mkfs.erofs in each uncompressed layout (inline tails, flat
    /// plain, chunk-based with block maps and with chunk indexes, compact and extended
    /// inodes): every file is found with its size, and its blocks read back its content
    /// (all of it, or all but an inline tail).
    #[test]
    fn finds_every_file_mkfs_erofs_wrote() {
        let Some(mkfs) = tools::tool("mkfs.erofs", "erofs-utils") else {
            return;
        };
        let layouts: [&[&str]; 5] = [
            &[],
            &["-E", "noinline_data"],
            &["--chunksize=4096"],
            &["--chunksize=65536", "-E", "force-inode-extended"],
            &["-E", "force-inode-compact"],
        ];
        for (seed, args) in layouts.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            std::fs::create_dir_all(&root).unwrap();
            let expect = tree(&root, seed as u64 + 1);
            let img = dir.path().join("img");
            let mut a: Vec<&str> = vec!["--quiet", "-T0", "--all-root"];
            a.extend_from_slice(args);
            a.extend([img.to_str().unwrap(), root.to_str().unwrap()]);
            tools::run_ok(&mkfs, &a);
            let mut bytes = std::fs::read(&img).unwrap();
            bytes.resize(bytes.len().next_multiple_of(4096), 0);
            let found = files(&bytes);
            assert_eq!(found.len(), expect.len(), "{args:?}");
            let inline = args.is_empty() || args.contains(&"force-inode-compact");
            for f in &found {
                let want = &expect[&f.path];
                assert_eq!(f.size, want.len() as u64, "{args:?} {}", f.path);
                let mut got = Vec::new();
                for &(s, l) in &f.extents {
                    got.extend_from_slice(&bytes[(s * 4096) as usize..((s + l) * 4096) as usize]);
                }
                let covered =
                    if inline && !want.len().is_multiple_of(4096) && got.len() < want.len() {
                        // The tail lives beside the inode.
                        want.len() / 4096 * 4096
                    } else {
                        want.len()
                    };
                assert!(
                    got.len() >= covered,
                    "{args:?} {}: {} of {covered} bytes",
                    f.path,
                    got.len()
                );
                assert!(got[..covered] == want[..covered], "{args:?} {}", f.path);
            }
            // Every entry's inode is found; an inline tail is the last bytes after it.
            let meta = metadata(&bytes);
            assert_eq!(meta.len(), expect.len() + dirs(&root) + 1, "{args:?}");
            for (path, start, end) in &meta {
                assert!(start < end && *end <= bytes.len() as u64, "{path}");
                let Some(want) = expect.get(path) else {
                    continue;
                };
                let tail = want.len() % 4096;
                if covered_inline(&found, path, want.len()) {
                    let have = &bytes[(*end as usize - tail)..*end as usize];
                    assert!(
                        have == &want[want.len() - tail..],
                        "{args:?} {path}: inline tail"
                    );
                }
            }
        }
    }

    /// Random compressible trees built by mkfs.erofs with lz4 and lz4hc, compacted and
    /// legacy cluster maps, small and large files (across mkfs.erofs's 1.8 MiB window):
    /// every compressed file's content read back equals the file, and the files the
    /// reader leaves are exactly those mkfs.erofs did not compress.
    #[test]
    fn reads_back_every_file_mkfs_erofs_compressed() {
        let Some(mkfs) = tools::tool("mkfs.erofs", "erofs-utils") else {
            return;
        };
        let modes: [&[&str]; 4] = [
            &["-zlz4hc,9"],
            &["-zlz4"],
            &["-zlz4hc,12", "-E", "legacy-compress"],
            &["-zlz4hc,3", "-E", "force-inode-extended"],
        ];
        for (seed, args) in modes.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            let mut next = tools::seeded_choice(seed as u64 + 7);
            let mut expect = HashMap::new();
            let sizes = [1, 4095, 4096, 4097, 9000, 65_536, 300_001, 2_500_000];
            for i in 0..40u64 {
                let rel = format!("/d{}/f{i}", next(4));
                let size = sizes[next(sizes.len() as u64) as usize];
                let data = compressible(seed as u64 * 100 + i, size);
                let p = root.join(rel.trim_start_matches('/'));
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, &data).unwrap();
                expect.insert(rel, data);
            }
            let img = dir.path().join("img");
            let mut a: Vec<&str> = vec!["--quiet", "-T0", "--all-root"];
            a.extend_from_slice(args);
            a.extend([img.to_str().unwrap(), root.to_str().unwrap()]);
            tools::run_ok(&mkfs, &a);
            let bytes = std::fs::read(&img).unwrap();
            let found = compressed_files(&bytes);
            let plain: Vec<String> = files(&bytes).into_iter().map(|f| f.path).collect();
            assert!(
                found.len() > 12,
                "{args:?}: {} compressed files",
                found.len()
            );
            assert_eq!(found.len() + plain.len(), expect.len(), "{args:?}");
            let mut lz4 = 0;
            for f in &found {
                let want = &expect[&f.path];
                let got = content(&bytes, f, u64::MAX).unwrap_or_else(|| panic!("{}", f.path));
                assert!(got == *want, "{args:?} {}", f.path);
                lz4 += f.clusters.iter().filter(|c| !c.raw).count();
            }
            assert!(lz4 > 100, "{args:?}: {lz4} lz4 pclusters");
            // A wrong length is refused, not read short.
            let f = found
                .iter()
                .find(|f| f.clusters.iter().any(|c| !c.raw))
                .unwrap();
            let mut bad = f.clone();
            let c = bad.clusters.iter_mut().find(|c| !c.raw).unwrap();
            c.len += 1;
            bad.size += 1;
            assert!(content(&bytes, &bad, u64::MAX).is_none());
            assert!(content(&bytes, f, f.size - 1).is_none());
        }
    }

    /// Whether the file's blocks stop short of its size (its tail is inline).
    fn covered_inline(found: &[File], path: &str, len: usize) -> bool {
        let f = found.iter().find(|f| f.path == path).unwrap();
        (f.extents.iter().map(|e| e.1).sum::<u64>() * 4096) < len as u64
    }

    /// Directories under `root`.
    fn dirs(root: &std::path::Path) -> usize {
        let mut n = 0;
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    n += 1;
                    stack.push(p);
                }
            }
        }
        n
    }

    /// Damaged images: every byte of a small image's first blocks flipped in turn gives
    /// files or none, never a panic; not EROFS, or other block sizes, give none.
    #[test]
    fn damage_gives_fewer_files_never_a_panic() {
        assert!(files(&[]).is_empty());
        assert!(files(&vec![0u8; 1 << 16]).is_empty());
        let Some(mkfs) = tools::tool("mkfs.erofs", "erofs-utils") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), tools::seeded_bytes(1, 10_000)).unwrap();
        std::fs::write(root.join("g"), b"tail").unwrap();
        let img = dir.path().join("img");
        tools::run_ok(
            &mkfs,
            &[
                "--quiet",
                "-T0",
                img.to_str().unwrap(),
                root.to_str().unwrap(),
            ],
        );
        let good = std::fs::read(&img).unwrap();
        assert_eq!(files(&good).len(), 2);
        for i in 1024..good.len().min(3 * 4096) {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            let _ = files(&bad);
        }
        let mut other = good.clone();
        other[1024 + 12] = 9; // 512-byte blocks
        assert!(files(&other).is_empty());
    }
}
