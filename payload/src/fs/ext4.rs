//! Just enough ext4 to find where each regular file's data lies in an image: paths and
//! their data extents, in file order.
//!
//! The generator pairs each changed file of the target with the file of the same path in
//! the source and encodes it with the old version as reference, as update_engine does; that
//! context is what a delta over raw blocks misses when files move between versions.
//!
//! Everything read is untrusted: each structure is bounds-checked, trees are walked with a
//! depth limit and a visited set, and totals are capped, so a damaged or hostile image gives
//! fewer files (or none), never a panic or an unbounded allocation. Layout facts: the
//! kernel's `Documentation/filesystems/ext4/` (superblock, group descriptors, inodes,
//! extent tree, linear and hashed directories).

use keel_io::Cursor;
use std::collections::HashSet;

/// One regular file: its path and its data blocks (4 KiB, image-relative) in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    /// Absolute path, `/`-separated (names that are not UTF-8 are converted lossily).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// (first block, count) in file order; holes are absent.
    pub extents: Vec<(u64, u64)>,
    /// EROFS: the image offset of the file's last bytes (`size` modulo 4096 of them),
    /// packed beside its inode rather than in a block of their own.
    pub inline_tail: Option<u64>,
}

const MAX_FILES: usize = 1 << 20;
const MAX_EXTENTS: usize = 1 << 22;
const MAX_DIR_BYTES: u64 = 64 << 20;
const MAX_DEPTH: usize = 64;
/// Extent-tree index blocks read in all, over the whole image: a crafted tree whose index
/// entries all point at the same blocks would otherwise be walked an exponential number
/// of times (340 entries per node, five levels).
const MAX_INDEX_NODES: usize = 1 << 20;
/// Directories waiting to be read.
const MAX_PENDING_DIRS: usize = 1 << 20;

// A best-effort reader: any field out of bounds means "not an ext4 image Keel can read",
// so the cursor's error becomes `None`.
fn le16(b: &[u8], at: usize) -> Option<u64> {
    Cursor::new(b, 0).u16_at(at, "ext4").ok().map(u64::from)
}

fn le32(b: &[u8], at: usize) -> Option<u64> {
    Cursor::new(b, 0).u32_at(at, "ext4").ok().map(u64::from)
}

struct Fs<'a> {
    img: &'a [u8],
    bs: u64,
    inode_size: u64,
    inodes_per_group: u64,
    inodes_count: u64,
    desc_size: u64,
    gdt_offset: u64,
    groups: u64,
    extents_seen: usize,
    index_nodes_seen: usize,
    dirs_queued: usize,
}

impl<'a> Fs<'a> {
    fn open(img: &'a [u8]) -> Option<Self> {
        let sb = img.get(1024..2048)?;
        if le16(sb, 0x38)? != 0xef53 {
            return None;
        }
        let log = le32(sb, 0x18)?;
        if log != 2 {
            // Only 4 KiB blocks line up with the payload's blocks.
            return None;
        }
        let bs = 4096;
        let inodes_count = le32(sb, 0)?;
        let blocks_per_group = le32(sb, 0x20)?;
        let inodes_per_group = le32(sb, 0x28)?;
        let rev = le32(sb, 0x4c)?;
        let inode_size = if rev == 0 { 128 } else { le16(sb, 0x58)? };
        let incompat = le32(sb, 0x60)?;
        let desc_size = if incompat & 0x80 != 0 {
            le16(sb, 0xfe)?.max(32)
        } else {
            32
        };
        if blocks_per_group == 0
            || inodes_per_group == 0
            || !(128..=4096).contains(&inode_size)
            || desc_size > 1024
        {
            return None;
        }
        let mut blocks = le32(sb, 4)?;
        if incompat & 0x80 != 0 {
            blocks |= le32(sb, 0x150)? << 32;
        }
        let first_data_block = le32(sb, 0x14)?;
        let groups = blocks
            .saturating_sub(first_data_block)
            .div_ceil(blocks_per_group);
        Some(Fs {
            img,
            bs,
            inode_size,
            inodes_per_group,
            inodes_count,
            desc_size,
            gdt_offset: (first_data_block + 1) * bs,
            groups,
            extents_seen: 0,
            index_nodes_seen: 0,
            dirs_queued: 0,
        })
    }

    fn block(&self, n: u64) -> Option<&'a [u8]> {
        let start = usize::try_from(n.checked_mul(self.bs)?).ok()?;
        self.img.get(start..start.checked_add(self.bs as usize)?)
    }

    fn inode(&self, ino: u64) -> Option<&'a [u8]> {
        if ino == 0 || ino > self.inodes_count {
            return None;
        }
        let group = (ino - 1) / self.inodes_per_group;
        let index = (ino - 1) % self.inodes_per_group;
        if group >= self.groups {
            return None;
        }
        let d = self
            .gdt_offset
            .checked_add(group.checked_mul(self.desc_size)?)?;
        let desc = self.img.get(usize::try_from(d).ok()?..)?;
        let mut table = le32(desc, 8)?;
        if self.desc_size >= 64 {
            table |= le32(desc, 0x28)? << 32;
        }
        let at = table
            .checked_mul(self.bs)?
            .checked_add(index.checked_mul(self.inode_size)?)?;
        let at = usize::try_from(at).ok()?;
        self.img.get(at..at.checked_add(self.inode_size as usize)?)
    }

    /// The data extents of an inode in file order (extent-mapped inodes only).
    fn extents(&mut self, inode: &[u8]) -> Option<Vec<(u64, u64, u64)>> {
        let flags = le32(inode, 0x20)?;
        if flags & 0x8_0000 == 0 || flags & 0x1000_0000 != 0 {
            // Block-mapped (ext2/3 style) or inline data: not handled, not paired.
            return None;
        }
        let root = inode.get(0x28..0x28 + 60)?;
        let mut out = Vec::new();
        let depth = le16(root, 6)?;
        let mut visited = HashSet::new();
        self.walk(root, depth, &mut visited, &mut out)?;
        out.sort_unstable();
        Some(out)
    }

    /// (logical block, physical block, count) of the extent (sub)tree in `node`, which
    /// must have the depth its parent promised: depths fall by one per level (at most 5
    /// levels, as ext4 allows), and no index block is read twice in one tree.
    fn walk(
        &mut self,
        node: &[u8],
        expected_depth: u64,
        visited: &mut HashSet<u64>,
        out: &mut Vec<(u64, u64, u64)>,
    ) -> Option<()> {
        if le16(node, 0)? != 0xf30a {
            return None;
        }
        let entries = le16(node, 2)? as usize;
        let depth = le16(node, 6)?;
        if depth != expected_depth || depth > 5 {
            return None;
        }
        for e in 0..entries {
            let at = 12 + e * 12;
            let entry = node.get(at..at + 12)?;
            if depth == 0 {
                let logical = le32(entry, 0)?;
                let mut len = le16(entry, 4)?;
                let uninit = len > 32768;
                if uninit {
                    len -= 32768;
                }
                let start = le16(entry, 6)? << 32 | le32(entry, 8)?;
                // Unwritten extents read as zeros: nothing to pair.
                if !uninit && len > 0 {
                    self.extents_seen += 1;
                    if self.extents_seen > MAX_EXTENTS {
                        return None;
                    }
                    out.push((logical, start, len));
                }
            } else {
                let child = le16(entry, 8)? << 32 | le32(entry, 4)?;
                self.index_nodes_seen += 1;
                if self.index_nodes_seen > MAX_INDEX_NODES || !visited.insert(child) {
                    return None;
                }
                let block = self.block(child)?;
                self.walk(block, depth - 1, visited, out)?;
            }
        }
        Some(())
    }

    fn size(inode: &[u8]) -> Option<u64> {
        Some(le32(inode, 4)? | le32(inode, 0x6c)? << 32)
    }
}

/// Regular files of an ext4 image with 4 KiB blocks; empty if `img` is not one (or is
/// damaged where it matters).
pub fn files(img: &[u8]) -> Vec<File> {
    match Fs::open(img) {
        Some(mut fs) => walk_files(&mut fs),
        None => Vec::new(),
    }
}

fn walk_files(fs: &mut Fs<'_>) -> Vec<File> {
    let mut out = Vec::new();
    // A directory is marked when it is queued, so entries naming one directory many
    // times queue it once.
    let mut visited = HashSet::from([2u64]);
    let mut stack = vec![(2u64, String::new(), 0usize)];
    while let Some((dir, path, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            continue;
        }
        let Some(inode) = fs.inode(dir) else { continue };
        let Some(size) = Fs::size(inode) else {
            continue;
        };
        if size > MAX_DIR_BYTES {
            continue;
        }
        let Some(ext) = fs.extents(inode) else {
            continue;
        };
        for (_, start, len) in ext {
            for b in start..start.saturating_add(len) {
                let Some(block) = fs.block(b) else { break };
                let mut at = 0usize;
                while at + 8 <= block.len() {
                    let (Some(ino), Some(rec), Some(name_len), Some(ftype)) = (
                        le32(block, at),
                        le16(block, at + 4),
                        block.get(at + 6).copied(),
                        block.get(at + 7).copied(),
                    ) else {
                        break;
                    };
                    let rec = rec as usize;
                    if rec < 8 {
                        break;
                    }
                    let name = block.get(at + 8..at + 8 + usize::from(name_len));
                    if let (true, Some(name)) = (ino != 0, name) {
                        if name != b"." && name != b".." {
                            let name = String::from_utf8_lossy(name);
                            let child = format!("{path}/{name}");
                            match ftype {
                                2 if stack.len() < MAX_PENDING_DIRS && visited.insert(ino) => {
                                    fs.dirs_queued += 1;
                                    stack.push((ino, child, depth + 1));
                                }
                                1 => {
                                    if out.len() >= MAX_FILES {
                                        return out;
                                    }
                                    if let Some(f) = file(fs, ino, child) {
                                        out.push(f);
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    at += rec;
                }
            }
        }
    }
    out
}

fn file(fs: &mut Fs<'_>, ino: u64, path: String) -> Option<File> {
    let inode = fs.inode(ino)?;
    let size = Fs::size(inode)?;
    let blocks = fs.img.len() as u64 / fs.bs;
    let extents = fs
        .extents(inode)?
        .into_iter()
        .filter(|&(_, s, l)| s.checked_add(l).is_some_and(|e| e <= blocks))
        .map(|(_, s, l)| (s, l))
        .collect();
    Some(File {
        path,
        size,
        extents,
        inline_tail: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use keel_testsupport as tools;

    /// mkfs.ext4 -d on a tree with small, large, sparse and fragmented files and a hashed
    /// directory: every file is found, and its extents read back its content.
    #[test]
    fn finds_every_file_mkfs_wrote() {
        let Some(mkfs) = tools::tool("mkfs.ext4", "e2fsprogs") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let mut expect: HashMap<String, Vec<u8>> = HashMap::new();
        let mut add = |rel: &str, content: Vec<u8>| {
            let p = root.join(rel.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &content).unwrap();
            expect.insert(rel.to_string(), content);
        };
        add("/a", b"hello".to_vec());
        add("/empty", Vec::new());
        add("/usr/lib/big.so", tools::seeded_bytes(1, 3 << 20));
        add("/usr/lib/odd", tools::seeded_bytes(2, 4096 * 7 + 123));
        for i in 0..400 {
            // Enough entries for an htree directory.
            add(
                &format!("/etc/many/file-with-a-long-name-{i:04}"),
                tools::seeded_bytes(i, 100 + i as usize),
            );
        }
        let img = dir.path().join("img");
        tools::run_ok(
            &mkfs,
            &[
                "-q",
                "-F",
                "-b",
                "4096",
                "-E",
                "root_owner=0:0",
                "-d",
                root.to_str().unwrap(),
                img.to_str().unwrap(),
                "64M",
            ],
        );
        let bytes = std::fs::read(&img).unwrap();
        let found = files(&bytes);
        assert_eq!(found.len(), expect.len());
        for f in &found {
            let want = &expect[&f.path];
            assert_eq!(f.size, want.len() as u64, "{}", f.path);
            let mut got = Vec::new();
            for &(s, l) in &f.extents {
                got.extend_from_slice(&bytes[(s * 4096) as usize..((s + l) * 4096) as usize]);
            }
            got.truncate(want.len());
            assert!(got == *want, "{}", f.path);
        }
    }

    /// A 4 KiB-block image of `blocks` blocks: superblock, one group descriptor (inode
    /// table at block 2), 256-byte inodes.
    fn skeleton(blocks: usize) -> Vec<u8> {
        let mut img = vec![0u8; blocks * 4096];
        let sb = 1024;
        img[sb..sb + 4].copy_from_slice(&64u32.to_le_bytes()); // inodes
        img[sb + 4..sb + 8].copy_from_slice(&(blocks as u32).to_le_bytes());
        img[sb + 0x18..sb + 0x1c].copy_from_slice(&2u32.to_le_bytes()); // 4 KiB
        img[sb + 0x20..sb + 0x24].copy_from_slice(&32768u32.to_le_bytes());
        img[sb + 0x28..sb + 0x2c].copy_from_slice(&64u32.to_le_bytes());
        img[sb + 0x38..sb + 0x3a].copy_from_slice(&0xef53u16.to_le_bytes());
        img[sb + 0x4c..sb + 0x50].copy_from_slice(&1u32.to_le_bytes());
        img[sb + 0x58..sb + 0x5a].copy_from_slice(&256u16.to_le_bytes());
        img[4096 + 8..4096 + 12].copy_from_slice(&2u32.to_le_bytes()); // inode table
        img
    }

    fn inode_at(ino: usize) -> usize {
        2 * 4096 + (ino - 1) * 256
    }

    /// An extent node header at `at`: entries, depth.
    fn header(img: &mut [u8], at: usize, entries: u16, depth: u16) {
        img[at..at + 2].copy_from_slice(&0xf30au16.to_le_bytes());
        img[at + 2..at + 4].copy_from_slice(&entries.to_le_bytes());
        img[at + 4..at + 6].copy_from_slice(&entries.to_le_bytes());
        img[at + 6..at + 8].copy_from_slice(&depth.to_le_bytes());
    }

    fn index(img: &mut [u8], at: usize, child: u32) {
        img[at + 4..at + 8].copy_from_slice(&child.to_le_bytes());
    }

    #[test]
    fn an_extent_tree_pointing_at_the_same_blocks_is_read_once() {
        // Five index levels, each node's 340 entries all naming the one node below: read
        // naively, 4 x 340^4 (5e10) leaf visits. Blocks 10..14 hold levels 4..0.
        let mut img = skeleton(32);
        let ino = inode_at(2);
        img[ino + 0x20..ino + 0x24].copy_from_slice(&0x8_0000u32.to_le_bytes());
        header(&mut img, ino + 0x28, 4, 5);
        for e in 0..4 {
            index(&mut img, ino + 0x28 + 12 + e * 12, 10);
        }
        for level in 0..5u16 {
            let at = (10 + level as usize) * 4096;
            let depth = 4 - level;
            header(&mut img, at, 340, depth);
            for e in 0..340 {
                let entry = at + 12 + e * 12;
                if depth == 0 {
                    img[entry + 4..entry + 6].copy_from_slice(&1u16.to_le_bytes());
                    img[entry + 8..entry + 12].copy_from_slice(&20u32.to_le_bytes());
                } else {
                    index(&mut img, entry, 11 + u32::from(level));
                }
            }
        }
        let mut fs = Fs::open(&img).unwrap();
        let inode = fs.inode(2).unwrap();
        assert_eq!(
            fs.extents(inode),
            None,
            "a tree that repeats a block is refused"
        );
        assert!(
            fs.index_nodes_seen <= 6,
            "{} index nodes read",
            fs.index_nodes_seen
        );
        // A child whose depth is not its parent's minus one is refused too.
        let mut img2 = img.clone();
        img2[11 * 4096 + 6] = 7;
        let mut fs = Fs::open(&img2).unwrap();
        let inode = fs.inode(2).unwrap();
        assert_eq!(fs.extents(inode), None);
    }

    #[test]
    fn a_directory_naming_one_subdirectory_many_times_queues_it_once() {
        // Root (inode 2) has one directory block (block 10) of 340 entries, all naming
        // directory inode 3 (an empty directory).
        let mut img = skeleton(16);
        for ino in [2usize, 3] {
            let at = inode_at(ino);
            img[at + 0x20..at + 0x24].copy_from_slice(&0x8_0000u32.to_le_bytes());
            img[at + 4..at + 8].copy_from_slice(&4096u32.to_le_bytes());
            header(&mut img, at + 0x28, 1, 0);
            let leaf = at + 0x28 + 12;
            img[leaf + 4..leaf + 6].copy_from_slice(&1u16.to_le_bytes());
            let block = if ino == 2 { 10u32 } else { 11 };
            img[leaf + 8..leaf + 12].copy_from_slice(&block.to_le_bytes());
        }
        let dir = 10 * 4096;
        for e in 0..340 {
            let at = dir + e * 12;
            img[at..at + 4].copy_from_slice(&3u32.to_le_bytes());
            let rec: u16 = if e == 339 {
                (4096 - 339 * 12) as u16
            } else {
                12
            };
            img[at + 4..at + 6].copy_from_slice(&rec.to_le_bytes());
            img[at + 6] = 1;
            img[at + 7] = 2;
            img[at + 8] = b'd';
        }
        let mut fs = Fs::open(&img).unwrap();
        assert!(walk_files(&mut fs).is_empty());
        assert_eq!(fs.dirs_queued, 1);
    }

    #[test]
    fn garbage_gives_no_files() {
        assert!(files(&[]).is_empty());
        assert!(files(&vec![0u8; 1 << 16]).is_empty());
        let mut img = vec![0xffu8; 1 << 16];
        img[1024 + 0x38] = 0x53;
        img[1024 + 0x39] = 0xef;
        assert!(files(&img).is_empty());
    }
}
