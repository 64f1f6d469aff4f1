//! Building a hash tree in memory, on all cores.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::algorithm::{Digest64, SaltedHasher};
use crate::error::{Error, Result};
use crate::geometry::TreeGeometry;
use crate::io::{Progress, ReadAt};
use crate::params::VerityParams;
use keel_io::Threads;

/// Bytes each worker reads at a time: large enough to amortise the system call, small
/// enough to stay in cache.
const READ_BUFFER: usize = 1 << 20;
/// Data handed to a worker per unit of work, so two cores finish close together.
const UNIT_BYTES: u64 = 4 << 20;
/// Below this much input one thread does the whole level: spawning costs more.
const PARALLEL_MIN_BYTES: u64 = 8 << 20;

/// How to run a build or verification.
///
/// ```
/// use keel_verity::{BuildOptions, Threads};
/// let opts = BuildOptions::default().threads(Threads::exactly(2));
/// assert_eq!(opts.threads, Threads::exactly(2));
/// ```
#[derive(Clone, Copy, Default)]
#[non_exhaustive]
pub struct BuildOptions<'a> {
    /// Worker threads (default: every core the process may run on).
    pub threads: Threads,
    /// Receives data bytes hashed so far, and can cancel the work.
    pub progress: Option<&'a dyn Progress>,
}

impl std::fmt::Debug for BuildOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildOptions")
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl<'a> BuildOptions<'a> {
    /// Set [`BuildOptions::threads`].
    pub fn threads(mut self, threads: Threads) -> Self {
        self.threads = threads;
        self
    }

    /// Set [`BuildOptions::progress`].
    pub fn progress(mut self, progress: &'a dyn Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    pub(crate) fn thread_count(&self) -> usize {
        self.threads.count()
    }
}

/// A complete hash tree held in memory in on-disk order (top level first, leaves last),
/// with its root hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashTree {
    params: VerityParams,
    geometry: TreeGeometry,
    tree: Vec<u8>,
    root: Digest64,
}

impl HashTree {
    /// Build the tree of `data` with every core.
    pub fn build<D: ReadAt + ?Sized>(params: &VerityParams, data: &D) -> Result<Self> {
        Self::build_with(params, data, &BuildOptions::default())
    }

    /// Build the tree of `data`. The data device is read once, front to back in units
    /// shared among the workers; memory is the tree plus one read buffer per worker.
    pub fn build_with<D: ReadAt + ?Sized>(
        params: &VerityParams,
        data: &D,
        opts: &BuildOptions<'_>,
    ) -> Result<Self> {
        let geometry = TreeGeometry::new(params, 0, false)?;
        check_data_size(params, data)?;
        let mut tree = crate::io::zeroed(geometry.tree_size(), "hash tree")?;
        let hasher = SaltedHasher::new(params.algorithm(), params.hash_type(), params.salt());
        let digest_size = geometry.digest_size();
        let levels = geometry.levels().len();
        if levels == 0 {
            let mut block = vec![0u8; params.data_block_size() as usize];
            data.read_exact_at(&mut block, 0)
                .map_err(|e| Error::io("reading data block 0", e))?;
            let root = hasher.hash(&block, digest_size);
            report(opts, params.data_size(), params.data_size());
            return Ok(HashTree {
                params: params.clone(),
                geometry,
                tree,
                root,
            });
        }
        let leaf_off = geometry.level_offset_in_tree(0);
        hash_level(
            &hasher,
            &geometry,
            data,
            params.data_block_size() as usize,
            params.data_blocks(),
            &mut tree[leaf_off..],
            opts,
            true,
        )?;
        Self::from_leaves(params, geometry, tree, &hasher, opts)
    }

    /// The tree whose leaf level is already in `tree` (laid out as
    /// [`HashTree::as_bytes`]): the levels above and the root. `geometry` has levels.
    pub(crate) fn from_leaves(
        params: &VerityParams,
        geometry: TreeGeometry,
        mut tree: Vec<u8>,
        hasher: &SaltedHasher,
        opts: &BuildOptions<'_>,
    ) -> Result<Self> {
        let levels = geometry.levels().len();
        for level in 1..levels {
            let (upper, lower) = tree.split_at_mut(geometry.level_offset_in_tree(level - 1));
            let out = &mut upper[geometry.level_offset_in_tree(level)..];
            let below = geometry.levels()[level - 1].blocks;
            hash_level(
                hasher,
                &geometry,
                &*lower,
                geometry.hash_block_size() as usize,
                below,
                out,
                opts,
                false,
            )?;
        }
        let hbs = geometry.hash_block_size() as usize;
        let root = hasher.hash(&tree[..hbs], geometry.digest_size());
        Ok(HashTree {
            params: params.clone(),
            geometry,
            tree,
            root,
        })
    }

    /// A tree of a single data block: no levels, the root is the block's digest.
    pub(crate) fn single(params: &VerityParams, geometry: TreeGeometry, root: Digest64) -> Self {
        HashTree {
            params: params.clone(),
            geometry,
            tree: Vec::new(),
            root,
        }
    }

    /// Bring the tree up to date after the bytes in `changed` (byte ranges of the data
    /// device) were rewritten: only the touched leaves and their ancestors are rehashed,
    /// reading only the touched data blocks. The result equals a full rebuild.
    pub fn update<D: ReadAt + ?Sized>(
        &mut self,
        data: &D,
        changed: &[std::ops::Range<u64>],
    ) -> Result<()> {
        check_data_size(&self.params, data)?;
        let dbs = u64::from(self.params.data_block_size());
        let n = self.params.data_blocks();
        let mut blocks: Vec<u64> = Vec::new();
        for r in changed {
            if r.start >= r.end || r.start >= n * dbs {
                continue;
            }
            let first = r.start / dbs;
            let last = (r.end.min(n * dbs) - 1) / dbs;
            blocks.extend(first..=last);
        }
        blocks.sort_unstable();
        blocks.dedup();
        if blocks.is_empty() {
            return Ok(());
        }
        let hasher = SaltedHasher::new(
            self.params.algorithm(),
            self.params.hash_type(),
            self.params.salt(),
        );
        let ds = self.geometry.digest_size();
        let hbs = self.geometry.hash_block_size() as usize;
        let mut buf = vec![0u8; dbs as usize];
        if self.geometry.levels().is_empty() {
            data.read_exact_at(&mut buf, 0)
                .map_err(|e| Error::io("reading data block 0", e))?;
            self.root = hasher.hash(&buf, ds);
            return Ok(());
        }
        let bits = self.geometry.per_block_bits();
        // Leaves: the digests of the changed data blocks.
        let leaf_off = self.geometry.level_offset_in_tree(0);
        for &b in &blocks {
            data.read_exact_at(&mut buf, b * dbs)
                .map_err(|e| Error::io(format!("reading data block {b}"), e))?;
            let at = leaf_off + (b >> bits) as usize * hbs + self.geometry.entry_offset(b);
            hasher.hash_into(&buf, &mut self.tree[at..at + ds]);
        }
        // Each level up: the blocks whose children changed.
        let mut changed_blocks: Vec<u64> = blocks.iter().map(|b| b >> bits).collect();
        changed_blocks.dedup();
        for level in 1..self.geometry.levels().len() {
            let below = self.geometry.level_offset_in_tree(level - 1);
            let here = self.geometry.level_offset_in_tree(level);
            for &c in &changed_blocks {
                let child = below + c as usize * hbs;
                let d = hasher.hash(&self.tree[child..child + hbs], ds);
                let at = here + (c >> bits) as usize * hbs + self.geometry.entry_offset(c);
                self.tree[at..at + ds].copy_from_slice(d.as_bytes());
            }
            changed_blocks = changed_blocks.iter().map(|c| c >> bits).collect();
            changed_blocks.dedup();
        }
        self.root = hasher.hash(&self.tree[..hbs], ds);
        Ok(())
    }

    /// The tree whose leaf level (the data blocks' digests, laid out in hash blocks as on
    /// the hash device: [`HashTree::leaf_level`]) came from somewhere untrusted (a server),
    /// checked against the trusted `root`: the levels above are hashed again from the
    /// leaves (1/128 of their size with SHA-256 and 4 KiB blocks), so a tree that does not
    /// lead to `root` is an error ([`Error::RootHashMismatch`]) and every leaf of one that does
    /// is the digest of the block the signer hashed.
    pub fn from_leaf_level(params: &VerityParams, leaves: &[u8], root: &[u8]) -> Result<Self> {
        let geometry = TreeGeometry::new(params, 0, false)?;
        let hasher = SaltedHasher::new(params.algorithm(), params.hash_type(), params.salt());
        let ds = geometry.digest_size();
        let tree = if geometry.levels().is_empty() {
            // One data block: its digest is the root, and the "leaf level" is that digest.
            if leaves.len() != ds {
                return Err(Error::param(
                    "leaf level",
                    format!(
                        "{} bytes, expected the one block's {ds}-byte digest",
                        leaves.len()
                    ),
                ));
            }
            let d = Digest64::from_slice(leaves).unwrap_or(Digest64::new(ds));
            HashTree::single(params, geometry, d)
        } else {
            let off = geometry.level_offset_in_tree(0);
            let want = geometry.tree_size() as usize - off;
            if leaves.len() != want {
                return Err(Error::param(
                    "leaf level",
                    format!(
                        "{} bytes, expected {want} for {} data blocks",
                        leaves.len(),
                        params.data_blocks()
                    ),
                ));
            }
            let mut tree = crate::io::zeroed(geometry.tree_size(), "hash tree")?;
            tree[off..].copy_from_slice(leaves);
            HashTree::from_leaves(params, geometry, tree, &hasher, &BuildOptions::default())?
        };
        if tree.root_hash() != root {
            return Err(crate::verify::root_mismatch(root, tree.root_hash()));
        }
        Ok(tree)
    }

    /// The leaf level: every data block's digest, in hash blocks (each holding
    /// [`TreeGeometry::digests_per_block`] slots of [`TreeGeometry::slot_size`] bytes, the
    /// rest zero), the tail of [`HashTree::as_bytes`]; for a single data block, its digest.
    pub fn leaf_level(&self) -> &[u8] {
        if self.geometry.levels().is_empty() {
            return self.root.as_bytes();
        }
        &self.tree[self.geometry.level_offset_in_tree(0)..]
    }

    /// The digest of data block `block`, `None` past the data.
    pub fn leaf(&self, block: u64) -> Option<&[u8]> {
        if block >= self.params.data_blocks() {
            return None;
        }
        let g = &self.geometry;
        let per = g.digests_per_block();
        let at =
            ((block / per) * g.hash_block_size()) as usize + (block % per) as usize * g.slot_size();
        Some(&self.leaf_level()[at..at + g.digest_size()])
    }

    /// The root hash.
    pub fn root_hash(&self) -> &[u8] {
        self.root.as_bytes()
    }

    /// The tree bytes in on-disk order; empty when there is a single data block.
    pub fn as_bytes(&self) -> &[u8] {
        &self.tree
    }

    /// The parameters the tree was built with.
    pub fn params(&self) -> &VerityParams {
        &self.params
    }

    /// The layout of the tree (as if it started at hash block 0 without a superblock).
    pub fn geometry(&self) -> &TreeGeometry {
        &self.geometry
    }
}

pub(crate) fn check_data_size<D: ReadAt + ?Sized>(params: &VerityParams, data: &D) -> Result<()> {
    let size = data
        .size()
        .map_err(|e| Error::io("reading the data device size", e))?;
    if size < params.data_size() {
        return Err(Error::TooSmall {
            what: "data device",
            needed: params.data_size(),
            found: size,
        });
    }
    Ok(())
}

fn report(opts: &BuildOptions<'_>, done: u64, total: u64) {
    if let Some(p) = opts.progress {
        p.progress(done, total);
    }
}

/// Hash `items` consecutive items of `item_size` bytes from `src` into hash blocks laid
/// out contiguously in `out` (one level of the tree). With `count_progress`, the bytes
/// hashed are reported to the observer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn hash_level<S: ReadAt + ?Sized>(
    hasher: &SaltedHasher,
    geometry: &TreeGeometry,
    src: &S,
    item_size: usize,
    items: u64,
    out: &mut [u8],
    opts: &BuildOptions<'_>,
    count_progress: bool,
) -> Result<()> {
    let hbs = geometry.hash_block_size() as usize;
    let per_block = geometry.digests_per_block();
    let total_bytes = items * item_size as u64;
    // A unit is a whole number of output hash blocks, so units write disjoint slices.
    let blocks_per_unit = (UNIT_BYTES / (per_block * item_size as u64)).max(1);
    let unit_items = blocks_per_unit * per_block;
    let out_blocks = items.div_ceil(per_block) as usize;
    let out = &mut out[..out_blocks * hbs];

    let threads = if total_bytes < PARALLEL_MIN_BYTES {
        1
    } else {
        opts.thread_count()
            .min(out_blocks.div_ceil(blocks_per_unit as usize))
    };
    let units = Mutex::new(out.chunks_mut(blocks_per_unit as usize * hbs).enumerate());
    let progress = Mutex::new(0u64);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);

    let worker = || {
        let mut buf = Vec::new();
        loop {
            if failed.load(Ordering::Relaxed) {
                return;
            }
            // The caller may stop long work between units (nothing is written here).
            if opts.progress.is_some_and(|p| p.cancelled()) {
                failed.store(true, Ordering::Relaxed);
                if let Ok(mut slot) = first_error.lock() {
                    slot.get_or_insert(Error::Cancelled);
                }
                return;
            }
            let next = match units.lock() {
                Ok(mut it) => it.next(),
                Err(_) => return,
            };
            let Some((unit, unit_out)) = next else { return };
            let first = unit as u64 * unit_items;
            let count = unit_items.min(items - first);
            if let Err(e) = hash_unit(
                hasher, geometry, src, item_size, first, count, unit_out, &mut buf,
            ) {
                failed.store(true, Ordering::Relaxed);
                if let Ok(mut slot) = first_error.lock() {
                    slot.get_or_insert(e);
                }
                return;
            }
            if count_progress && opts.progress.is_some() {
                if let Ok(mut done) = progress.lock() {
                    *done += count * item_size as u64;
                    report(opts, *done, total_bytes);
                }
            }
        }
    };

    if threads <= 1 {
        worker();
    } else {
        std::thread::scope(|s| {
            for _ in 1..threads {
                s.spawn(worker);
            }
            worker();
        });
    }
    match first_error.into_inner() {
        Ok(Some(e)) => Err(e),
        Ok(None) => Ok(()),
        Err(_) => Err(Error::io(
            "hashing",
            std::io::Error::other("a worker thread panicked"),
        )),
    }
}

/// Hash items `first..first + count` into `out`, which starts at the hash block holding
/// the digest of item `first`.
#[allow(clippy::too_many_arguments)]
fn hash_unit<S: ReadAt + ?Sized>(
    hasher: &SaltedHasher,
    geometry: &TreeGeometry,
    src: &S,
    item_size: usize,
    first: u64,
    count: u64,
    out: &mut [u8],
    buf: &mut Vec<u8>,
) -> Result<()> {
    let hbs = geometry.hash_block_size() as usize;
    let per_block = geometry.digests_per_block() as usize;
    let slot = geometry.slot_size();
    let batch_items = (READ_BUFFER / item_size).max(1);
    let mut done = 0u64;
    while done < count {
        let n = (batch_items as u64).min(count - done) as usize;
        let item = first + done;
        let offset = item * item_size as u64;
        let input: &[u8] = match src.as_slice() {
            Some(all) => all
                .get(offset as usize..offset as usize + n * item_size)
                .ok_or_else(|| Error::TooSmall {
                    what: "hash level",
                    needed: offset + (n * item_size) as u64,
                    found: all.len() as u64,
                })?,
            None => {
                let part = keel_io::page_aligned(buf, n * item_size);
                src.read_exact_at(part, offset).map_err(|e| {
                    Error::io(format!("reading block {item} at byte offset {offset}"), e)
                })?;
                part
            }
        };
        // `out` starts at item 0's hash block, so item `done` sits where a tree's leaf would.
        let at = (done as usize / per_block) * hbs + (done as usize % per_block) * slot;
        hash_leaves(hasher, geometry, item_size, done, input, &mut out[at..]);
        done += n as u64;
    }
    Ok(())
}

/// Hash whole items `first..` (`input`, `item_size` bytes each) into `out`, which starts at
/// item `first`'s digest in a level laid out in hash blocks: runs that share a hash block
/// at a time, in one call each.
pub(crate) fn hash_leaves(
    hasher: &SaltedHasher,
    geometry: &TreeGeometry,
    item_size: usize,
    first: u64,
    input: &[u8],
    out: &mut [u8],
) {
    let per_block = geometry.digests_per_block() as usize;
    let hbs = geometry.hash_block_size() as usize;
    let slot = geometry.slot_size();
    let n = input.len() / item_size;
    let start_in_block = (first % per_block as u64) as usize;
    let mut i = 0usize;
    while i < n {
        let pos = start_in_block + i;
        let in_block = pos % per_block;
        let run = (per_block - in_block).min(n - i);
        // Relative to `out`, which starts at entry `start_in_block` of its hash block.
        let at = (pos / per_block) * hbs + in_block * slot - start_in_block * slot;
        hasher.hash_many(
            &input[i * item_size..(i + run) * item_size],
            item_size,
            &mut out[at..at + run * slot],
            slot,
        );
        i += run;
    }
}
