//! Just enough squashfs (version 4.0) to find each regular file's compressed data and the
//! fragment blocks, and to decompress them: the generator pairs a changed file with its
//! old version on the decompressed content and re-creates the compressed blocks on apply
//! (see [`crate::format`], RECOMPRESS).
//!
//! Read: the superblock and the compressor's options, the inode table (basic and extended
//! files and directories), the directory table, the fragment table; metadata blocks and
//! data blocks compressed with gzip (zlib), xz, lz4 or zstd, or stored. Layout facts: the
//! kernel's `fs/squashfs/squashfs_fs.h`, `inode.c`, `dir.c` and squashfs-tools'
//! compressor wrappers.
//!
//! Everything read is untrusted: each structure is bounds-checked, decompression stops at
//! the size a block may have, and totals are capped, so a damaged or hostile image gives
//! fewer files (or none), never a panic or an unbounded allocation.

use keel_io::Cursor;
use std::collections::{HashMap, HashSet};

pub use crate::codec::{decompress, Codec};

const MAGIC: u32 = 0x7371_7368;
const MAX_FILES: usize = 1 << 20;
/// Data blocks listed in all files together.
const MAX_BLOCKS: usize = 1 << 22;
const MAX_DEPTH: usize = 64;
const MAX_DIR_BYTES: u64 = 64 << 20;
/// Decompressed metadata kept (inode and directory tables).
const MAX_META_BYTES: usize = 256 << 20;
const META_BLOCK: usize = 8192;
const NO_FRAGMENT: u32 = 0xFFFF_FFFF;
/// Bit of a data block's size word: stored uncompressed.
pub const STORED: u32 = 1 << 24;
const COMPRESSOR_OPTIONS: u16 = 0x0400;

/// Compressed blocks lying one after another from `start` (a file's data, or one
/// fragment block).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocks {
    /// Byte offset of the first block in the image.
    pub start: u64,
    /// Each block's size word: its length in the low 24 bits, [`STORED`] if not
    /// compressed; 0 for a block of zeros that takes no space (sparse).
    pub words: Vec<u32>,
}

impl Blocks {
    /// Bytes they take in the image.
    pub fn stored_len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w & (STORED - 1))).sum()
    }

    /// `(image offset, size word)` of each block.
    pub fn each(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let mut at = self.start;
        self.words.iter().map(move |&w| {
            let here = at;
            at += u64::from(w & (STORED - 1));
            (here, w)
        })
    }
}

/// A regular file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    /// Absolute path, `/`-separated (names that are not UTF-8 are converted lossily).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Its full data blocks (the tail may be in a fragment).
    pub data: Blocks,
    /// The fragment holding its tail: (fragment index, offset in the decompressed block).
    pub fragment: Option<(u32, u32)>,
}

/// What the generator needs of an image.
#[derive(Clone, Debug)]
pub struct Image {
    /// Its compressor.
    pub codec: Codec,
    /// The compression level its options record, with squashfs-tools' defaults when there
    /// are none (zstd 15, gzip 9; for xz the dictionary size and BCJ filters, packed as
    /// RECOMPRESS blobs hold them; lz4: 0, or 12 for lz4hc); `None` for other compressors
    /// and for gzip trying
    /// several strategies (which one won is not recorded).
    pub level: Option<i32>,
    /// gzip's window bits (15 unless the options say otherwise).
    pub window_bits: u8,
    /// Data block size.
    pub block_size: u32,
    /// The regular files, in directory order.
    pub files: Vec<File>,
    /// The fragment blocks, by index (each one block, or none when unreadable).
    pub fragments: Vec<Blocks>,
}

impl Image {
    /// The decompressed content of `blocks` (sparse blocks as zeros), each block at most a
    /// block size; `None` if one does not decompress.
    pub fn content(&self, img: &[u8], blocks: &Blocks) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for (at, w) in blocks.each() {
            block_content(self.codec, img, at, w, self.block_size as usize, &mut out)?;
        }
        Some(out)
    }

    /// A file's whole content: its blocks, then its tail from its fragment; `None` when
    /// any part does not read.
    pub fn read_file(&self, img: &[u8], f: &File) -> Option<Vec<u8>> {
        let mut out = self.content(img, &f.data)?;
        if let Some((index, offset)) = f.fragment {
            let frag = self.content(img, self.fragments.get(index as usize)?)?;
            let tail = f.size.checked_sub(out.len() as u64)?;
            let from = offset as usize;
            out.extend_from_slice(frag.get(from..from.checked_add(tail as usize)?)?);
        }
        out.truncate(usize::try_from(f.size).ok()?);
        (out.len() as u64 == f.size).then_some(out)
    }
}

/// The bytes a block with size word `w` takes at `at` in `img`.
pub(crate) fn stored_bytes(img: &[u8], at: u64, w: u32) -> Option<&[u8]> {
    slice(img, at, u64::from(w & (STORED - 1)))
}

/// One block's content (at most `bs` bytes; a sparse block's `bs` zeros) appended to
/// `out`; `None` if it lies outside `img` or does not decompress.
pub(crate) fn block_content(
    codec: Codec,
    img: &[u8],
    at: u64,
    w: u32,
    bs: usize,
    out: &mut Vec<u8>,
) -> Option<()> {
    if codec == Codec::ErofsLz4 {
        let block = slice(img, at, 4096)?;
        return super::erofs::cluster_content(block, w & (STORED - 1), w & STORED != 0, out);
    }
    if w == 0 {
        out.resize(out.len() + bs, 0);
        return Some(());
    }
    let raw = stored_bytes(img, at, w)?;
    if w & STORED != 0 {
        if raw.len() > bs {
            return None;
        }
        out.extend_from_slice(raw);
    } else {
        out.extend(decompress(codec, raw, bs)?);
    }
    Some(())
}

fn slice(img: &[u8], at: u64, len: u64) -> Option<&[u8]> {
    let a = usize::try_from(at).ok()?;
    img.get(a..a.checked_add(usize::try_from(len).ok()?)?)
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Cursor::new(b, 0).u16_at(at, "squashfs").ok()
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Cursor::new(b, 0).u32_at(at, "squashfs").ok()
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Cursor::new(b, 0).u64_at(at, "squashfs").ok()
}

/// One metadata block at `at`: its decompressed bytes and where the next one starts.
fn meta_block(img: &[u8], codec: Codec, at: u64) -> Option<(Vec<u8>, u64)> {
    let head = le16(slice(img, at, 2)?, 0)?;
    let len = u64::from(head & 0x7fff);
    let raw = slice(img, at + 2, len)?;
    let data = if head & 0x8000 != 0 {
        raw.to_vec()
    } else {
        decompress(codec, raw, META_BLOCK)?
    };
    (data.len() <= META_BLOCK).then_some((data, at + 2 + len))
}

/// A metadata table (inodes or directories), its blocks decompressed once each.
struct Table<'a> {
    img: &'a [u8],
    codec: Codec,
    start: u64,
    /// Block offset in the table -> (bytes, offset of the next block in the table).
    blocks: HashMap<u64, (Vec<u8>, u64)>,
    kept: &'a std::cell::Cell<usize>,
}

impl Table<'_> {
    fn block(&mut self, rel: u64) -> Option<&(Vec<u8>, u64)> {
        if !self.blocks.contains_key(&rel) {
            let (data, next) = meta_block(self.img, self.codec, self.start.checked_add(rel)?)?;
            let total = self.kept.get() + data.len();
            if total > MAX_META_BYTES {
                return None;
            }
            self.kept.set(total);
            self.blocks.insert(rel, (data, next - self.start));
        }
        self.blocks.get(&rel)
    }

    /// `len` bytes from (block, offset), across block ends; the position after them.
    fn read(
        &mut self,
        mut block: u64,
        mut offset: usize,
        len: usize,
    ) -> Option<(Vec<u8>, u64, usize)> {
        let mut out = Vec::with_capacity(len.min(1 << 16));
        while out.len() < len {
            let (data, next) = self.block(block)?;
            let next = *next;
            let avail = data.get(offset..)?;
            let n = avail.len().min(len - out.len());
            out.extend_from_slice(&avail[..n]);
            offset += n;
            if offset >= data.len() {
                if data.is_empty() {
                    return None;
                }
                block = next;
                offset = 0;
            }
        }
        Some((out, block, offset))
    }
}

/// Inode types.
const DIR: u16 = 1;
const FILE: u16 = 2;
const LDIR: u16 = 8;
const LFILE: u16 = 9;

enum Inode {
    Dir {
        block: u64,
        offset: usize,
        size: u64,
    },
    File(u64, Blocks, Option<(u32, u32)>),
    Other,
}

struct Fs<'a> {
    img: &'a [u8],
    block_size: u32,
    inodes: Table<'a>,
    dirs: Table<'a>,
    blocks_seen: usize,
}

impl Fs<'_> {
    fn inode(&mut self, reference: u64) -> Option<Inode> {
        let (block, offset) = (reference >> 16, (reference & 0xffff) as usize);
        let (head, b, o) = self.inodes.read(block, offset, 16)?;
        let kind = le16(&head, 0)?;
        let bs = u64::from(self.block_size);
        match kind {
            DIR => {
                let (d, _, _) = self.inodes.read(b, o, 16)?;
                Some(Inode::Dir {
                    block: u64::from(le32(&d, 0)?),
                    size: u64::from(le16(&d, 8)?),
                    offset: usize::from(le16(&d, 10)?),
                })
            }
            LDIR => {
                let (d, _, _) = self.inodes.read(b, o, 24)?;
                Some(Inode::Dir {
                    size: u64::from(le32(&d, 4)?),
                    block: u64::from(le32(&d, 8)?),
                    offset: usize::from(le16(&d, 18)?),
                })
            }
            FILE | LFILE => {
                let (start, size, frag, frag_off, (b, o)) = if kind == FILE {
                    let (d, b, o) = self.inodes.read(b, o, 16)?;
                    let start = u64::from(le32(&d, 0)?);
                    (
                        start,
                        u64::from(le32(&d, 12)?),
                        le32(&d, 4)?,
                        le32(&d, 8)?,
                        (b, o),
                    )
                } else {
                    let (d, b, o) = self.inodes.read(b, o, 40)?;
                    (
                        le64(&d, 0)?,
                        le64(&d, 8)?,
                        le32(&d, 28)?,
                        le32(&d, 32)?,
                        (b, o),
                    )
                };
                let fragment = (frag != NO_FRAGMENT).then_some((frag, frag_off));
                let count = if fragment.is_some() {
                    size / bs
                } else {
                    size.div_ceil(bs)
                };
                let count = usize::try_from(count).ok()?;
                self.blocks_seen = self.blocks_seen.checked_add(count)?;
                if self.blocks_seen > MAX_BLOCKS {
                    return None;
                }
                let (list, _, _) = self.inodes.read(b, o, count.checked_mul(4)?)?;
                let words: Vec<u32> = list
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let data = Blocks { start, words };
                // Every block inside the image and no larger than a block.
                let in_image = data.start.checked_add(data.stored_len())? <= self.img.len() as u64;
                let sane = data.words.iter().all(|w| u64::from(w & (STORED - 1)) <= bs)
                    && data.words.iter().all(|w| w & !(STORED | (STORED - 1)) == 0);
                (in_image && sane).then_some(Inode::File(size, data, fragment))
            }
            _ => Some(Inode::Other),
        }
    }

    /// A directory's entries: (name, inode reference, is a directory or a file).
    fn entries(&mut self, block: u64, offset: usize, size: u64) -> Option<Vec<(String, u64, u16)>> {
        // The size counts "." and "..", which are not stored.
        let len = size.checked_sub(3)?;
        if len == 0 {
            return Some(Vec::new());
        }
        if len > MAX_DIR_BYTES {
            return None;
        }
        let (d, _, _) = self.dirs.read(block, offset, len as usize)?;
        let mut out = Vec::new();
        let mut at = 0usize;
        while at + 12 <= d.len() {
            let count = le32(&d, at)? as usize + 1;
            let start = u64::from(le32(&d, at + 4)?);
            at += 12;
            if count > 256 {
                return None;
            }
            for _ in 0..count {
                let off = u64::from(le16(&d, at)?);
                let kind = le16(&d, at + 4)?;
                let name_len = usize::from(le16(&d, at + 6)?) + 1;
                let name = d.get(at + 8..at + 8 + name_len)?;
                at += 8 + name_len;
                let name = String::from_utf8_lossy(name).into_owned();
                if name.contains('/') || name == "." || name == ".." {
                    return None;
                }
                out.push((name, start << 16 | off, kind));
            }
        }
        Some(out)
    }
}

/// Superblock fields the reader uses.
struct Super {
    codec: Codec,
    block_size: u32,
    flags: u16,
    fragments: u32,
    root: u64,
    bytes_used: u64,
    inode_table: u64,
    dir_table: u64,
    fragment_table: u64,
}

fn superblock(img: &[u8]) -> Option<Super> {
    let sb = img.get(..96)?;
    if le32(sb, 0)? != MAGIC || le16(sb, 28)? != 4 {
        return None;
    }
    let block_size = le32(sb, 12)?;
    // 4 KiB to 1 MiB, a power of two, and the log beside it agreeing.
    if !(4096..=1 << 20).contains(&block_size)
        || !block_size.is_power_of_two()
        || u32::from(le16(sb, 22)?) != block_size.trailing_zeros()
    {
        return None;
    }
    let s = Super {
        codec: Codec::from_id(le16(sb, 20)?)?,
        block_size,
        flags: le16(sb, 24)?,
        fragments: le32(sb, 16)?,
        root: le64(sb, 32)?,
        bytes_used: le64(sb, 40)?,
        inode_table: le64(sb, 64)?,
        dir_table: le64(sb, 72)?,
        fragment_table: le64(sb, 80)?,
    };
    (s.bytes_used <= img.len() as u64).then_some(s)
}

/// Whether `img` starts with a squashfs 4.0 superblock.
pub fn is_squashfs(img: &[u8]) -> bool {
    superblock(img).is_some()
}

/// The compression level and gzip window bits in the compressor options.
fn level(img: &[u8], s: &Super) -> (Option<i32>, u8) {
    let opts =
        (s.flags & COMPRESSOR_OPTIONS != 0).then(|| meta_block(img, s.codec, 96).map(|(o, _)| o));
    match (s.codec, opts) {
        // squashfs-tools' defaults.
        (Codec::Zstd, None) => (Some(15), 15),
        (Codec::Gzip, None) => (Some(9), 15),
        (Codec::Zstd, Some(Some(o))) => (le32(&o, 0).and_then(|l| i32::try_from(l).ok()), 15),
        // mksquashfs 4.5 compresses xz at the default preset: the options hold the
        // dictionary size and the BCJ filters tried.
        (Codec::Xz, None) => (crate::codec::xz::level_field(s.block_size, 0), 15),
        (Codec::Xz, Some(Some(o))) => (
            le32(&o, 0)
                .zip(le32(&o, 4))
                .and_then(|(d, f)| crate::codec::xz::level_field(d, f)),
            15,
        ),
        // lz4 always records its options: the stream version and whether -Xhc was given
        // (lz4hc at its highest level).
        (Codec::Lz4, Some(Some(o))) => match (le32(&o, 0), le32(&o, 4)) {
            (Some(1), Some(0)) => (Some(0), 15),
            (Some(1), Some(1)) => (Some(12), 15),
            _ => (None, 15),
        },
        (Codec::Gzip, Some(Some(o))) => {
            let level = le32(&o, 0).and_then(|l| i32::try_from(l).ok());
            let window = le16(&o, 4).and_then(|w| u8::try_from(w).ok()).unwrap_or(0);
            // Several strategies tried: the smallest won, unrecorded.
            let single = le16(&o, 6).is_some_and(|st| st.count_ones() <= 1);
            let ok = (8..=15).contains(&window) && single;
            (level.filter(|l| (1..=9).contains(l) && ok), window)
        }
        _ => (None, 15),
    }
}

fn fragments(img: &[u8], s: &Super) -> Vec<Blocks> {
    let mut out = Vec::new();
    let count = s.fragments as usize;
    // 16 bytes an entry, 512 to a metadata block, the blocks' offsets in a list.
    let lists = count.div_ceil(512);
    for l in 0..lists {
        let Some(ptr) = slice(img, s.fragment_table + 8 * l as u64, 8).and_then(|b| le64(b, 0))
        else {
            break;
        };
        let Some((entries, _)) = meta_block(img, s.codec, ptr) else {
            break;
        };
        for e in entries.chunks_exact(16) {
            if out.len() == count {
                break;
            }
            let (Some(start), Some(word)) = (le64(e, 0), le32(e, 8)) else {
                break;
            };
            let b = Blocks {
                start,
                words: vec![word],
            };
            let ok = word & !(STORED | (STORED - 1)) == 0
                && u64::from(word & (STORED - 1)) <= u64::from(s.block_size)
                && start
                    .checked_add(b.stored_len())
                    .is_some_and(|e| e <= img.len() as u64);
            // An unreadable entry keeps its index, so later ones stay in place.
            out.push(if ok {
                b
            } else {
                Blocks {
                    start: 0,
                    words: Vec::new(),
                }
            });
        }
    }
    out
}

/// The image's files and fragments; `None` if it is not a squashfs 4.0 image this reader
/// reads. A damaged directory or inode loses what lies under it, nothing more.
pub fn open(img: &[u8]) -> Option<Image> {
    let s = superblock(img)?;
    if matches!(s.codec, Codec::Lzma | Codec::Lzo) {
        return None;
    }
    let kept = std::cell::Cell::new(0usize);
    let mut fs = Fs {
        img,
        block_size: s.block_size,
        inodes: Table {
            img,
            codec: s.codec,
            start: s.inode_table,
            blocks: HashMap::new(),
            kept: &kept,
        },
        dirs: Table {
            img,
            codec: s.codec,
            start: s.dir_table,
            blocks: HashMap::new(),
            kept: &kept,
        },
        blocks_seen: 0,
    };
    let mut files = Vec::new();
    let mut seen_dirs = HashSet::new();
    let mut pending = vec![(String::new(), s.root, 0usize)];
    while let Some((path, reference, depth)) = pending.pop() {
        if depth > MAX_DEPTH || !seen_dirs.insert(reference) {
            continue;
        }
        let Some(Inode::Dir {
            block,
            offset,
            size,
        }) = fs.inode(reference)
        else {
            continue;
        };
        let Some(entries) = fs.entries(block, offset, size) else {
            continue;
        };
        for (name, r, kind) in entries {
            let p = format!("{path}/{name}");
            match kind {
                DIR | LDIR => pending.push((p, r, depth + 1)),
                FILE | LFILE if files.len() < MAX_FILES => {
                    if let Some(Inode::File(size, data, fragment)) = fs.inode(r) {
                        files.push(File {
                            path: p,
                            size,
                            data,
                            fragment,
                        });
                    }
                }
                _ => {}
            }
        }
    }
    let (level, window_bits) = level(img, &s);
    Some(Image {
        codec: s.codec,
        level,
        window_bits,
        block_size: s.block_size,
        fragments: fragments(img, &s),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    use keel_testsupport as tools;

    /// A random tree from `seed`: files of every size class (empty, under a block, a block
    /// and a byte, several blocks), text (compresses) and noise (is stored), a sparse file,
    /// hard links and xattrs (extended inodes), nested directories and one of many
    /// entries (several directory headers and metadata blocks).
    fn tree(root: &Path, seed: u64) -> HashMap<String, Vec<u8>> {
        let mut next = tools::seeded_choice(seed);
        let mut expect = HashMap::new();
        let mut put = |rel: String, content: Vec<u8>| {
            let p = root.join(rel.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &content).unwrap();
            expect.insert(rel, content);
        };
        let sizes = [0, 1, 100, 4095, 4096, 131_073, 262_144, 300_001];
        for i in 0..40u64 {
            let mut rel = String::new();
            for d in 0..next(4) {
                rel.push_str(&format!("/d{}-{}", d, next(3)));
            }
            rel.push_str(&format!("/f{i}"));
            let size = if next(4) == 0 {
                next(600_000)
            } else {
                sizes[next(sizes.len() as u64) as usize]
            } as usize;
            let content = if next(2) == 0 {
                tools::seeded_bytes(seed * 1000 + i, size)
            } else {
                // Compressible: a few seeded words repeated.
                let words = tools::seeded_bytes(seed * 1000 + i, 64);
                (0..size)
                    .map(|k| words[(k * 7 + k / 13) % 64] % 16 + b'a')
                    .collect()
            };
            put(rel, content);
        }
        for i in 0..400 {
            put(
                format!("/many/an-entry-with-a-rather-long-name-{i:04}"),
                tools::seeded_bytes(i, (i % 50) as usize),
            );
        }
        // A sparse file: a hole of whole blocks between data.
        let sparse = root.join("sparse");
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::File::create(&sparse).unwrap();
            f.write_all(&tools::seeded_bytes(seed, 5000)).unwrap();
            f.seek(SeekFrom::Start(3 << 20)).unwrap();
            f.write_all(b"end").unwrap();
        }
        expect.insert("/sparse".into(), std::fs::read(&sparse).unwrap());
        // A hard link and xattrs make extended inodes.
        std::fs::hard_link(
            root.join("many/an-entry-with-a-rather-long-name-0007"),
            root.join("link"),
        )
        .unwrap();
        expect.insert(
            "/link".into(),
            expect["/many/an-entry-with-a-rather-long-name-0007"].clone(),
        );
        if let Some(py) = tools::tool("python3", "python3") {
            let p = root.join("d0-1").display().to_string();
            tools::run_ok(
                &py,
                &["-c", &format!("import os\nos.makedirs({p:?}, exist_ok=True)\nopen({p:?} + '/x', 'wb').write(b'x' * 200000)\nos.setxattr({p:?} + '/x', 'user.keel', b'v')")],
            );
            expect.insert("/d0-1/x".into(), vec![b'x'; 200_000]);
        }
        expect
    }

    /// Random trees built by mksquashfs with every compressor this reader reads, with and
    /// without fragments and compressed metadata, at the smallest and largest block sizes:
    /// every file is found with its size and reads back its content.
    #[test]
    fn reads_every_file_mksquashfs_wrote() {
        let variants: [(&str, &[&str]); 7] = [
            ("zstd", &["-Xcompression-level", "19"]),
            ("zstd", &["-b", "4096", "-no-fragments"]),
            ("gzip", &[]),
            ("xz", &["-b", "1M"]),
            ("lz4", &["-Xhc"]),
            ("zstd", &["-noI", "-noD", "-noF"]),
            ("gzip", &["-always-use-fragments", "-b", "65536"]),
        ];
        for (seed, (comp, extra)) in variants.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            let expect = tree(&root, seed as u64 + 1);
            let Some(bytes) = tools::mksquashfs(&root, &dir.path().join("img"), comp, extra) else {
                return;
            };
            let image = open(&bytes).unwrap_or_else(|| panic!("{comp} {extra:?}: not read"));
            assert_eq!(
                image.codec.id(),
                match *comp {
                    "gzip" => 1,
                    "xz" => 4,
                    "lz4" => 5,
                    _ => 6,
                }
            );
            if *comp == "zstd" && extra.contains(&"19") {
                assert_eq!(image.level, Some(19));
            }
            if *comp == "gzip" {
                assert_eq!((image.level, image.window_bits), (Some(9), 15));
            }
            let found: HashMap<&str, &File> =
                image.files.iter().map(|f| (f.path.as_str(), f)).collect();
            assert_eq!(found.len(), expect.len(), "{comp} {extra:?}: files found");
            for (path, content) in &expect {
                let f = found
                    .get(path.as_str())
                    .unwrap_or_else(|| panic!("{path} missing"));
                assert_eq!(f.size, content.len() as u64, "{path}");
                let got = image
                    .read_file(&bytes, f)
                    .unwrap_or_else(|| panic!("{comp} {extra:?}: {path} unreadable"));
                assert!(got == *content, "{comp} {extra:?}: {path} differs");
            }
        }
    }

    /// Every byte of a small image's superblock and tables damaged in turn: no panic, and
    /// every block reported lies inside the image.
    #[test]
    fn damaged_images_give_fewer_files_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for i in 0..20u64 {
            let p = root.join(format!("d{}/f{i}", i % 3));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, tools::seeded_bytes(i, (i * 9000) as usize)).unwrap();
        }
        let Some(good) = tools::mksquashfs(&root, &dir.path().join("img"), "zstd", &["-b", "4096"])
        else {
            return;
        };
        assert_eq!(open(&good).map(|i| i.files.len()), Some(20));
        let s = superblock(&good).unwrap();
        // The superblock and everything from the inode table on (the tables and their
        // indexes).
        let targets = (0..96).chain(s.inode_table as usize..good.len());
        for at in targets {
            for v in [0u8, 0xff, good[at] ^ 0x5a] {
                let mut bad = good.clone();
                bad[at] = v;
                if let Some(image) = open(&bad) {
                    for f in &image.files {
                        assert!(f.data.start + f.data.stored_len() <= bad.len() as u64);
                        let _ = image.read_file(&bad, f);
                    }
                }
            }
        }
    }
}
