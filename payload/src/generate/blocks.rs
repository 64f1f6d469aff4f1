//! What every planner of the generator shares: the images' blocks (a short last block
//! reads as zeros), what each target block is ([`Kind`]), extents, the file systems'
//! files, and a parallel map over all cores.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use crate::format::{Extent, BLOCK_SIZE};
use crate::fs::{erofs, ext4};

pub(super) const BS: usize = BLOCK_SIZE as usize;

pub(super) fn block(img: &[u8], i: u64) -> std::borrow::Cow<'_, [u8]> {
    let start = (i * BLOCK_SIZE) as usize;
    let end = (start + BS).min(img.len());
    let b = img.get(start..end).unwrap_or_default();
    if b.len() == BS {
        std::borrow::Cow::Borrowed(b)
    } else {
        let mut v = b.to_vec();
        v.resize(BS, 0);
        std::borrow::Cow::Owned(v)
    }
}

pub(super) fn range(img: &[u8], start_block: u64, blocks: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((blocks * BLOCK_SIZE) as usize);
    for i in start_block..start_block + blocks {
        out.extend_from_slice(&block(img, i));
    }
    out
}

pub(super) fn extents_bytes(img: &[u8], e: &[Extent]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in e {
        v.extend(range(img, x.start, x.blocks));
    }
    v
}

pub(super) fn par_map<T: Send, R: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let n = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let results = Mutex::new((0..n).map(|_| None).collect::<Vec<Option<R>>>());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let next = queue.lock().ok().and_then(|mut q| q.next());
                let Some((i, item)) = next else { break };
                let r = f(item);
                if let Ok(mut res) = results.lock() {
                    res[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

/// Blocks `sb..eb` (within `kinds`) taken by a RECOMPRESS operation: marked
/// [`Kind::InFile`], as one extent.
pub(super) fn claim(kinds: &mut [Kind], sb: u64, eb: u64) -> Extent {
    for k in &mut kinds[sb as usize..eb as usize] {
        *k = Kind::InFile;
    }
    Extent {
        start: sb,
        blocks: eb - sb,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Zero,
    Copy(u64),
    New,
    /// New, and encoded with its file (see the parent module's `plan_files`).
    InFile,
}

/// `x * num / den` without overflow (sizes come from untrusted images), saturating.
pub(super) fn scale(x: u64, num: u64, den: u64) -> u64 {
    let v = u128::from(x) * u128::from(num) / u128::from(den.max(1));
    u64::try_from(v).unwrap_or(u64::MAX)
}

pub(super) fn push_extent(v: &mut Vec<Extent>, start: u64, blocks: u64) {
    match v.last_mut() {
        Some(e) if e.start + e.blocks == start => e.blocks += blocks,
        _ => v.push(Extent { start, blocks }),
    }
}

/// The regular files of an ext4 or (uncompressed) EROFS image, with their blocks.
pub(super) fn fs_files(img: &[u8]) -> Vec<ext4::File> {
    let found = ext4::files(img);
    if found.is_empty() {
        erofs::files(img)
    } else {
        found
    }
}

/// For each EROFS metadata block of `target`, the blocks of `source` holding the inodes
/// (and what is stored beside them) of the same paths.
pub(super) fn meta_refs(source: &[u8], target: &[u8]) -> BTreeMap<u64, BTreeSet<u64>> {
    let mut refs: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let new_meta = erofs::metadata(target);
    if new_meta.is_empty() {
        return refs;
    }
    let old_meta = erofs::metadata(source);
    let old: HashMap<&str, (u64, u64)> = old_meta
        .iter()
        .map(|(p, a, b)| (p.as_str(), (*a, *b)))
        .collect();
    let sblocks = source.len() as u64 / BLOCK_SIZE;
    // An inode and what follows it span at most two blocks (the tail may not cross).
    let blocks = |a: u64, b: u64| (a / BLOCK_SIZE, (b.max(a + 1) - 1) / BLOCK_SIZE);
    for (path, a, b) in &new_meta {
        let Some(&(oa, ob)) = old.get(path.as_str()) else {
            continue;
        };
        let (tf, tl) = blocks(*a, *b);
        let (sf, sl) = blocks(oa, ob);
        if sl >= sblocks {
            continue;
        }
        for t in tf..=tl.min(tf + 1) {
            refs.entry(t).or_default().extend(sf..=sl.min(sf + 1));
        }
    }
    refs
}
