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

/// Blocks `start_block..start_block + blocks` of `img` (past its end, zeros). The holes
/// of a mapped sparse image are zeros unread: a reference reaching into one must not
/// fill it, and the readahead around it, with pages of zeros.
pub(super) fn range(img: &[u8], start_block: u64, blocks: u64) -> Vec<u8> {
    let mut out = vec![0u8; (blocks * BLOCK_SIZE) as usize];
    let start = usize::try_from(start_block.saturating_mul(BLOCK_SIZE))
        .unwrap_or(usize::MAX)
        .min(img.len());
    let part = &img[start..start.saturating_add(out.len()).min(img.len())];
    for d in crate::digest::Holes::of(part).data_in(0..part.len()) {
        out[d.clone()].copy_from_slice(&part[d]);
    }
    out
}

/// The bytes of `e` in `img`: borrowed where they lie in one piece inside the image (a
/// full payload's runs) and in no hole of it, else gathered.
pub(super) fn extents_cow<'a>(img: &'a [u8], e: &[Extent]) -> std::borrow::Cow<'a, [u8]> {
    if let [x] = e {
        let start = x.start.saturating_mul(BLOCK_SIZE);
        let end = x.start.saturating_add(x.blocks).saturating_mul(BLOCK_SIZE);
        if let Some(b) = usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| img.get(s..e))
            .filter(|b| !crate::digest::Holes::of(b).meets(0..b.len()))
        {
            return std::borrow::Cow::Borrowed(b);
        }
    }
    std::borrow::Cow::Owned(extents_bytes(img, e))
}

pub(super) fn extents_bytes(img: &[u8], e: &[Extent]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in e {
        v.extend(range(img, x.start, x.blocks));
    }
    v
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

/// `f` over `items` on `threads` workers, each result handed to `write` in the items'
/// order (their indices, 0 to n - 1), with bounded memory: `items` come in the order they
/// should start (the costliest first, so that workers finish together), but while the
/// results done and not yet written weigh `budget` bytes or more (by `weight`), a worker
/// takes only the item `write` waits for, or waits for the writer. What is held is then
/// at most the budget plus one result per worker. The first error of `write` stops the
/// workers and is returned.
pub(super) fn par_ordered<T: Send, R: Send, E: Send>(
    items: Vec<(usize, T)>,
    threads: usize,
    budget: usize,
    weight: impl Fn(&R) -> usize + Sync,
    f: impl Fn(T) -> R + Sync,
    mut write: impl FnMut(R) -> Result<(), E>,
) -> Result<(), E> {
    use std::collections::VecDeque;
    use std::sync::Condvar;
    struct State<T, R> {
        left: BTreeMap<usize, T>,
        order: VecDeque<usize>,
        done: BTreeMap<usize, R>,
        held: usize,
        /// The index `write` waits for.
        next: usize,
        stop: bool,
    }
    let n = items.len();
    let order = items.iter().map(|(i, _)| *i).collect();
    let state = Mutex::new(State {
        left: items.into_iter().collect(),
        order,
        done: BTreeMap::new(),
        held: 0,
        next: 0,
        stop: false,
    });
    let (ready, room) = (Condvar::new(), Condvar::new());
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let (i, item) = {
                    let mut st = lock();
                    let i = loop {
                        if st.stop || st.left.is_empty() {
                            break None;
                        }
                        if st.held < budget {
                            // The next in cost order (skipping those taken out of it).
                            match st.order.pop_front() {
                                Some(i) if st.left.contains_key(&i) => break Some(i),
                                Some(_) => continue,
                                None => break st.left.keys().next().copied(),
                            }
                        }
                        if st.left.contains_key(&st.next) {
                            break Some(st.next);
                        }
                        st = room.wait(st).unwrap_or_else(|e| e.into_inner());
                    };
                    let Some(item) = i.and_then(|i| st.left.remove(&i).map(|t| (i, t))) else {
                        break;
                    };
                    item
                };
                let r = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(item))) {
                    Ok(r) => r,
                    Err(panic) => {
                        // The writer must not wait for it: stop, then let the scope
                        // carry the panic on.
                        lock().stop = true;
                        ready.notify_all();
                        room.notify_all();
                        std::panic::resume_unwind(panic);
                    }
                };
                let w = weight(&r);
                let mut st = lock();
                st.held += w;
                st.done.insert(i, r);
                ready.notify_one();
            });
        }
        let mut result = Ok(());
        for next in 0..n {
            let r = {
                let mut st = lock();
                st.next = next;
                room.notify_all();
                loop {
                    if let Some(r) = st.done.remove(&next) {
                        st.held -= weight(&r);
                        room.notify_all();
                        break Some(r);
                    }
                    if st.stop {
                        break None;
                    }
                    st = ready.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            };
            let Some(r) = r else { break };
            if let Err(e) = write(r) {
                result = Err(e);
                break;
            }
        }
        let mut st = lock();
        st.stop = true;
        st.done.clear();
        room.notify_all();
        drop(st);
        result
    })
}

#[cfg(test)]
mod ordered_tests {
    use super::par_ordered;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Results reach the writer in the items' order whatever order they start in, and
    /// what waits for the writer stays within the budget plus one per worker.
    #[test]
    fn results_come_in_order_within_the_budget() {
        for (threads, budget) in [(1, 0), (2, 0), (2, 10), (4, 1000), (3, usize::MAX)] {
            // The costliest (largest index here) first, as the generator orders them.
            let items: Vec<(usize, usize)> = (0..200).rev().map(|i| (i, i)).collect();
            let (held, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
            let mut seen = Vec::new();
            par_ordered(
                items,
                threads,
                budget,
                |_: &usize| 1,
                |i| {
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    i
                },
                |i| {
                    held.fetch_sub(1, Ordering::SeqCst);
                    seen.push(i);
                    Ok::<(), ()>(())
                },
            )
            .unwrap();
            assert_eq!(seen, (0..200).collect::<Vec<_>>(), "{threads} {budget}");
            if budget < 200 {
                let most = most.load(Ordering::SeqCst);
                assert!(most <= budget + threads + 1, "{threads} {budget}: {most}");
            }
        }
    }

    /// The writer's first error stops the work and is the result.
    #[test]
    fn a_write_error_stops_the_workers() {
        let done = AtomicUsize::new(0);
        let items: Vec<(usize, usize)> = (0..10_000).map(|i| (i, i)).collect();
        let r = par_ordered(
            items,
            2,
            4,
            |_: &usize| 1,
            |i| {
                done.fetch_add(1, Ordering::SeqCst);
                i
            },
            |i| if i == 5 { Err(i) } else { Ok(()) },
        );
        assert_eq!(r, Err(5));
        assert!(done.load(Ordering::SeqCst) < 100);
    }
}
