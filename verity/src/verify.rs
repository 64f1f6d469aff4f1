//! Verification: a whole device against its root hash, or one data block on demand.

use std::collections::HashMap;

use crate::algorithm::{Digest64, SaltedHasher};
use crate::error::{Error, Result};
use crate::geometry::TreeGeometry;
use crate::io::ReadAt;
use crate::params::VerityParams;
use crate::tree::{check_data_size, hash_level, BuildOptions};

fn check_inputs(params: &VerityParams, geometry: &TreeGeometry, root: &[u8]) -> Result<()> {
    let expected = TreeGeometry::new(params, geometry.hash_offset(), geometry.has_superblock())?;
    if expected != *geometry {
        return Err(Error::param(
            "geometry",
            "was not laid out for these parameters",
        ));
    }
    let ds = params.algorithm().digest_size();
    if root.len() != ds {
        return Err(Error::param(
            "root hash",
            format!(
                "{} bytes, {} has {ds}-byte digests",
                root.len(),
                params.algorithm()
            ),
        ));
    }
    Ok(())
}

/// The inputs of a whole-device check checked against each other; its hasher, digest size
/// and tree levels.
fn prepare<'g, D: ReadAt + ?Sized>(
    params: &VerityParams,
    geometry: &'g TreeGeometry,
    data: &D,
    root: &[u8],
) -> Result<(SaltedHasher, usize, &'g [crate::geometry::Level])> {
    check_inputs(params, geometry, root)?;
    check_data_size(params, data)?;
    let hasher = SaltedHasher::new(params.algorithm(), params.hash_type(), params.salt());
    Ok((hasher, geometry.digest_size(), geometry.levels()))
}

fn check_hash_size<H: ReadAt + ?Sized>(geometry: &TreeGeometry, hash: &H) -> Result<()> {
    let size = hash
        .size()
        .map_err(|e| Error::io("reading the hash device size", e))?;
    if size < geometry.hash_device_size() {
        return Err(Error::TooSmall {
            what: "hash device",
            needed: geometry.hash_device_size(),
            found: size,
        });
    }
    Ok(())
}

/// The root of a one-block image: the hash of its only data block (there is no tree).
fn single_block_root<D: ReadAt + ?Sized>(
    params: &VerityParams,
    data: &D,
    hasher: &SaltedHasher,
    ds: usize,
) -> Result<crate::algorithm::Digest64> {
    let mut block = vec![0u8; params.data_block_size() as usize];
    data.read_exact_at(&mut block, 0)
        .map_err(|e| Error::io("reading data block 0", e))?;
    Ok(hasher.hash(&block, ds))
}

/// The whole tree, read once; bounded by the hash device's size (checked first) and
/// allocated without aborting.
fn read_tree<H: ReadAt + ?Sized>(geometry: &TreeGeometry, hash: &H) -> Result<Vec<u8>> {
    check_hash_size(geometry, hash)?;
    let mut tree = crate::io::zeroed(geometry.tree_size(), "hash tree")?;
    hash.read_exact_at(&mut tree, geometry.tree_offset())
        .map_err(|e| Error::io("reading the hash tree", e))?;
    Ok(tree)
}

pub(crate) fn root_mismatch(expected: &[u8], found: &[u8]) -> Error {
    Error::RootHashMismatch {
        expected: hex::encode(expected),
        found: hex::encode(found),
    }
}

/// Check that the tree on `hash` gives `root`: its top hash block is read and hashed, and
/// nothing else. What a signer or a table writer checks before vouching for a root (a
/// root the tree does not give can never be mapped). A tree of one data block has no
/// hash blocks; its root is the hash of the data itself, and [`verify`] checks it.
pub fn check_root<H: ReadAt + ?Sized>(
    params: &VerityParams,
    geometry: &TreeGeometry,
    hash: &H,
    root: &[u8],
) -> Result<()> {
    check_inputs(params, geometry, root)?;
    if geometry.levels().is_empty() {
        return Err(Error::param(
            "root hash",
            "a one-block image has no hash tree: its root can only be checked against the data",
        ));
    }
    check_hash_size(geometry, hash)?;
    let hbs = geometry.hash_block_size() as usize;
    let mut top = crate::io::zeroed(hbs as u64, "hash block")?;
    hash.read_exact_at(&mut top, geometry.tree_offset())
        .map_err(|e| Error::io("reading the top hash block", e))?;
    let hasher = SaltedHasher::new(params.algorithm(), params.hash_type(), params.salt());
    let found = hasher.hash(&top, geometry.digest_size());
    if found.as_bytes() != root {
        return Err(root_mismatch(root, found.as_bytes()));
    }
    Ok(())
}

/// Verify the whole data device and the whole tree against `root`, as
/// `veritysetup verify` does.
///
/// The tree is checked from the top down, then every data block is hashed (on all cores)
/// and compared with its leaf digest. The error names the first problem found:
/// [`Error::RootHashMismatch`] when the top of the tree does not give `root`,
/// [`Error::HashBlockCorrupt`] for the highest damaged hash block (or one whose unused
/// bytes are not zero), [`Error::DataBlockCorrupt`] for the first bad data block and the
/// count of bad blocks. Memory: the tree plus one level of it.
pub fn verify<D, H>(
    params: &VerityParams,
    geometry: &TreeGeometry,
    data: &D,
    hash: &H,
    root: &[u8],
    opts: &BuildOptions<'_>,
) -> Result<()>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
{
    let (hasher, ds, levels) = prepare(params, geometry, data, root)?;
    if levels.is_empty() {
        let found = single_block_root(params, data, &hasher, ds)?;
        if found.as_bytes() != root {
            return Err(root_mismatch(root, found.as_bytes()));
        }
        return Ok(());
    }
    let tree = read_tree(geometry, hash)?;
    let hbs = geometry.hash_block_size() as usize;
    let top = hasher.hash(&tree[..hbs], ds);
    if top.as_bytes() != root {
        return Err(root_mismatch(root, top.as_bytes()));
    }
    let level_bytes = |level: usize| {
        let off = geometry.level_offset_in_tree(level);
        &tree[off..off + levels[level].blocks as usize * hbs]
    };
    let mut fresh = Vec::new();
    // Each level, once vouched for by the one above, vouches for the one below.
    for level in (1..levels.len()).rev() {
        let below = levels[level - 1].blocks;
        fresh.clear();
        fresh.resize(levels[level].blocks as usize * hbs, 0);
        hash_level(
            &hasher,
            geometry,
            level_bytes(level - 1),
            hbs,
            below,
            &mut fresh,
            opts,
            false,
        )?;
        let bad = compare_level(geometry, &fresh, level_bytes(level), below);
        if let Some(first) = bad.first_child {
            return Err(Error::HashBlockCorrupt {
                level: level - 1,
                index: first,
                offset: geometry.block_offset(level - 1, first),
                detail: format!(": does not match its digest in level {level}"),
            });
        }
        if let Some(block) = bad.spare_block {
            return Err(spare_error(geometry, level, block));
        }
    }
    fresh.clear();
    fresh.resize(levels[0].blocks as usize * hbs, 0);
    hash_level(
        &hasher,
        geometry,
        data,
        params.data_block_size() as usize,
        params.data_blocks(),
        &mut fresh,
        opts,
        true,
    )?;
    let bad = compare_level(geometry, &fresh, level_bytes(0), params.data_blocks());
    if let Some(first) = bad.first_child {
        return Err(Error::DataBlockCorrupt {
            block: first,
            offset: first * u64::from(params.data_block_size()),
            count: bad.children,
        });
    }
    if let Some(block) = bad.spare_block {
        return Err(spare_error(geometry, 0, block));
    }
    Ok(())
}

fn spare_error(geometry: &TreeGeometry, level: usize, block: u64) -> Error {
    Error::HashBlockCorrupt {
        level,
        index: block,
        offset: geometry.block_offset(level, block),
        detail: ": unused bytes are not zero".to_string(),
    }
}

#[derive(Default)]
struct Mismatch {
    first_child: Option<u64>,
    children: u64,
    spare_block: Option<u64>,
}

/// Compare a freshly computed level with the one on disk: which children's digests differ,
/// and the first block whose padding differs.
fn compare_level(geometry: &TreeGeometry, fresh: &[u8], disk: &[u8], children: u64) -> Mismatch {
    let hbs = geometry.hash_block_size() as usize;
    let per = geometry.digests_per_block();
    let slot = geometry.slot_size();
    let ds = geometry.digest_size();
    let mut m = Mismatch::default();
    for (j, (f, d)) in fresh.chunks(hbs).zip(disk.chunks(hbs)).enumerate() {
        if f == d {
            continue;
        }
        let mut digest_differs = false;
        for s in 0..per {
            let child = j as u64 * per + s;
            if child >= children {
                break;
            }
            let at = s as usize * slot;
            if f[at..at + ds] != d[at..at + ds] {
                digest_differs = true;
                m.children += 1;
                m.first_child.get_or_insert(child);
            }
        }
        if !digest_differs {
            m.spare_block.get_or_insert(j as u64);
        }
    }
    m
}

/// Verifies single data blocks on demand, reading only the hash blocks on each block's
/// path to the root (as the kernel does), for agents that verify lazily.
///
/// Verified hash blocks are kept in a small cache, so neighbouring blocks share the reads
/// of their common ancestors.
#[derive(Debug)]
pub struct BlockVerifier<H> {
    hash: H,
    params: VerityParams,
    geometry: TreeGeometry,
    hasher: SaltedHasher,
    root: Digest64,
    cache: HashMap<(usize, u64), Vec<u8>>,
    cache_limit: usize,
    hash_reads: u64,
}

/// Verified hash blocks a [`BlockVerifier`] keeps by default.
pub const DEFAULT_CACHE_BLOCKS: usize = 256;

impl<H: ReadAt> BlockVerifier<H> {
    /// A verifier for the tree laid out by `geometry` on `hash`, trusting only `root`.
    pub fn new(
        params: &VerityParams,
        geometry: &TreeGeometry,
        hash: H,
        root: &[u8],
    ) -> Result<Self> {
        check_inputs(params, geometry, root)?;
        check_hash_size(geometry, &hash)?;
        let hasher = SaltedHasher::new(params.algorithm(), params.hash_type(), params.salt());
        let root =
            Digest64::from_slice(root).ok_or_else(|| Error::param("root hash", "too long"))?;
        Ok(BlockVerifier {
            hash,
            params: params.clone(),
            geometry: geometry.clone(),
            hasher,
            root,
            cache: HashMap::new(),
            cache_limit: DEFAULT_CACHE_BLOCKS,
            hash_reads: 0,
        })
    }

    /// Keep at most `blocks` verified hash blocks (0 disables the cache).
    pub fn with_cache_limit(mut self, blocks: usize) -> Self {
        self.cache_limit = blocks;
        self.cache.clear();
        self
    }

    /// Hash blocks read from the hash device so far.
    pub fn hash_blocks_read(&self) -> u64 {
        self.hash_reads
    }

    /// Check that `block` is the content of data block `index`.
    pub fn verify_block(&mut self, index: u64, block: &[u8]) -> Result<()> {
        let dbs = self.params.data_block_size() as usize;
        if index >= self.params.data_blocks() {
            return Err(Error::param(
                "data block",
                format!(
                    "{index} is past the last block {}",
                    self.params.data_blocks() - 1
                ),
            ));
        }
        if block.len() != dbs {
            return Err(Error::param(
                "data block",
                format!("{} bytes given, the block size is {dbs}", block.len()),
            ));
        }
        let ds = self.geometry.digest_size();
        let bits = self.geometry.per_block_bits();
        let n_levels = self.geometry.levels().len();
        let mut expected = self.root;
        for level in (0..n_levels).rev() {
            let shift = (level as u32 + 1) * bits;
            let bi = if shift >= 64 { 0 } else { index >> shift };
            let child = index >> (level as u32 * bits);
            let at = self.geometry.entry_offset(child);
            expected = self.child_digest(level, bi, &expected, at)?;
        }
        let found = self.hasher.hash(block, ds);
        if found != expected {
            if n_levels == 0 {
                return Err(root_mismatch(self.root.as_bytes(), found.as_bytes()));
            }
            return Err(Error::DataBlockCorrupt {
                block: index,
                offset: index * dbs as u64,
                count: 1,
            });
        }
        Ok(())
    }

    /// Read data block `index` from `data` into `buf` (one block long) and verify it.
    pub fn read_block<D: ReadAt + ?Sized>(
        &mut self,
        data: &D,
        index: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let dbs = u64::from(self.params.data_block_size());
        let offset = index
            .checked_mul(dbs)
            .ok_or_else(|| Error::param("data block", format!("{index} is out of range")))?;
        if buf.len() as u64 != dbs {
            return Err(Error::param(
                "buffer",
                format!("{} bytes, the block size is {dbs}", buf.len()),
            ));
        }
        data.read_exact_at(buf, offset)
            .map_err(|e| Error::io(format!("reading data block {index}"), e))?;
        self.verify_block(index, buf)
    }

    /// The digest at byte `at` of hash block `index` of `level`, after checking that block
    /// against `expected` (or finding it in the cache of blocks already checked).
    fn child_digest(
        &mut self,
        level: usize,
        index: u64,
        expected: &Digest64,
        at: usize,
    ) -> Result<Digest64> {
        let ds = self.geometry.digest_size();
        let key = (level, index);
        if let Some(b) = self.cache.get(&key) {
            return digest_at(b, at, ds);
        }
        let hbs = self.geometry.hash_block_size() as usize;
        let offset = self.geometry.block_offset(level, index);
        let mut b = vec![0u8; hbs];
        self.hash
            .read_exact_at(&mut b, offset)
            .map_err(|e| Error::io(format!("reading hash block at byte offset {offset}"), e))?;
        self.hash_reads += 1;
        let found = self.hasher.hash(&b, ds);
        if found != *expected {
            if level + 1 == self.geometry.levels().len() {
                return Err(root_mismatch(expected.as_bytes(), found.as_bytes()));
            }
            return Err(Error::HashBlockCorrupt {
                level,
                index,
                offset,
                detail: format!(": does not match its digest in level {}", level + 1),
            });
        }
        let d = digest_at(&b, at, ds)?;
        if self.cache_limit > 0 {
            if self.cache.len() >= self.cache_limit {
                self.cache.clear();
            }
            self.cache.insert(key, b);
        }
        Ok(d)
    }
}

fn digest_at(block: &[u8], at: usize, ds: usize) -> Result<Digest64> {
    block
        .get(at..at + ds)
        .and_then(Digest64::from_slice)
        .ok_or_else(|| Error::param("digest", "entry outside its hash block"))
}

/// Blocks that do not match what the root hash vouches for, found top-down.
#[derive(Debug, Default)]
pub(crate) struct Damage {
    /// Data blocks whose digest differs from the one in a trusted leaf hash block.
    pub bad_data: Vec<u64>,
    /// Hash blocks (numbered on the hash device, in hash blocks) that differ from their
    /// trusted parent's digest; the top block when it does not give the root.
    pub bad_hash: Vec<u64>,
    /// Data blocks below a damaged hash block, as merged runs `start..end`: nothing
    /// vouches for them either way. Runs, not blocks, so a damaged top block over a
    /// large device costs a few bytes rather than some per block.
    pub unknown_data: Vec<std::ops::Range<u64>>,
    /// Hash blocks (on the hash device) below a damaged hash block, as merged runs.
    pub unknown_hash: Vec<std::ops::Range<u64>>,
}

impl Damage {
    /// Blocks in the unknown runs.
    pub(crate) fn unknown_count(&self) -> u64 {
        self.unknown_data
            .iter()
            .chain(&self.unknown_hash)
            .map(|r| r.end - r.start)
            .sum()
    }
}

/// Add block `b` to sorted, merged runs (blocks arrive in increasing order).
fn push_run(runs: &mut Vec<std::ops::Range<u64>>, b: u64) {
    match runs.last_mut() {
        Some(r) if r.end == b => r.end += 1,
        _ => runs.push(b..b + 1),
    }
}

/// Whether `b` lies in one of the sorted runs.
pub(crate) fn in_runs(runs: &[std::ops::Range<u64>], b: u64) -> bool {
    let i = runs.partition_point(|r| r.end <= b);
    runs.get(i).is_some_and(|r| r.contains(&b))
}

/// Every damaged block, not just the first: each level is checked only where the level
/// above it is trusted, so a block reported bad is bad (or its whole subtree is unknown).
pub(crate) fn find_damage<D, H>(
    params: &VerityParams,
    geometry: &TreeGeometry,
    data: &D,
    hash: &H,
    root: &[u8],
    opts: &BuildOptions<'_>,
) -> Result<Damage>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
{
    let (hasher, ds, levels) = prepare(params, geometry, data, root)?;
    let mut damage = Damage::default();
    if levels.is_empty() {
        if single_block_root(params, data, &hasher, ds)?.as_bytes() != root {
            damage.bad_data.push(0);
        }
        return Ok(damage);
    }
    let tree = read_tree(geometry, hash)?;
    let hbs = geometry.hash_block_size() as usize;
    let per = geometry.digests_per_block();
    let top = levels.len() - 1;
    // trusted[b] for the blocks of the level being walked, top first.
    let mut trusted = vec![hasher.hash(&tree[..hbs], ds).as_bytes() == root];
    if !trusted[0] {
        damage.bad_hash.push(levels[top].first_block);
    }
    let mut fresh = Vec::new();
    for level in (0..=top).rev() {
        let off = geometry.level_offset_in_tree(level);
        let parents = &tree[off..off + levels[level].blocks as usize * hbs];
        let (children, is_data) = if level == 0 {
            (params.data_blocks(), true)
        } else {
            (levels[level - 1].blocks, false)
        };
        fresh.clear();
        fresh.resize(levels[level].blocks as usize * hbs, 0);
        if is_data {
            hash_level(
                &hasher,
                geometry,
                data,
                params.data_block_size() as usize,
                children,
                &mut fresh,
                opts,
                false,
            )?;
        } else {
            let coff = geometry.level_offset_in_tree(level - 1);
            let below = &tree[coff..coff + children as usize * hbs];
            hash_level(
                &hasher, geometry, below, hbs, children, &mut fresh, opts, false,
            )?;
        }
        // Which children are trusted matters only for the level below: none for data.
        let mut next = vec![false; if is_data { 0 } else { children as usize }];
        for c in 0..children {
            let parent = (c / per) as usize;
            if !trusted[parent] {
                if is_data {
                    push_run(&mut damage.unknown_data, c);
                } else {
                    push_run(&mut damage.unknown_hash, levels[level - 1].first_block + c);
                }
                continue;
            }
            let at = parent * hbs + geometry.entry_offset(c);
            if fresh[at..at + ds] == parents[at..at + ds] {
                if let Some(t) = next.get_mut(c as usize) {
                    *t = true;
                }
            } else if is_data {
                damage.bad_data.push(c);
            } else {
                damage.bad_hash.push(levels[level - 1].first_block + c);
            }
        }
        trusted = next;
    }
    Ok(damage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{format, FormatOptions};

    #[test]
    fn blocks_under_a_damaged_top_block_are_one_run() {
        // 512-byte blocks: 40,000 data blocks below a top hash block. Listing them one by
        // one cost memory in proportion to the device; as a run it is one entry.
        let params = VerityParams::builder()
            .data_block_size(512)
            .hash_block_size(512)
            .data_blocks(40_000)
            .build()
            .unwrap();
        let data: Vec<u8> = (0..40_000u32 * 512).map(|i| (i * 7 / 5) as u8).collect();
        let mut hash = Vec::new();
        let f = format(&params, &data, &mut hash, &FormatOptions::default()).unwrap();
        let top_block = hash.len() - f.geometry.tree_size() as usize;
        assert_eq!(top_block, 0, "no superblock: the top block is the first");
        hash[10] ^= 1;
        let d = find_damage(
            &params,
            &f.geometry,
            &data,
            &hash,
            &f.root_hash,
            &BuildOptions::default(),
        )
        .unwrap();
        assert_eq!(
            d.bad_hash,
            vec![f.geometry.levels().last().unwrap().first_block]
        );
        assert_eq!(d.unknown_data, vec![0..40_000]);
        assert_eq!(d.unknown_hash.len(), 1, "{:?}", d.unknown_hash);
        assert!(d.unknown_count() > 40_000);
        assert!(in_runs(&d.unknown_data, 0) && in_runs(&d.unknown_data, 39_999));
        assert!(!in_runs(&d.unknown_data, 40_000));
    }
}
