//! The tree and parity of data seen as it is written (`StreamTree`) equal what a build
//! that reads the finished device gives: whatever the order, the sizes and the alignment
//! of the writes, with zeros, blocks written twice or in part, and nothing seen at all (a
//! resumed writer); and it reads back exactly the blocks it did not see whole.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use common::seeded_bytes;
use keel_verity::{
    fec_encode, format, BuildOptions, FecGeometry, FormatOptions, HashTree, StreamTree, Threads,
    VerityParams,
};

fn params(bs: u32, blocks: u64) -> VerityParams {
    VerityParams::builder()
        .data_block_size(bs)
        .hash_block_size(bs)
        .salt(seeded_bytes(5, 32))
        .data_blocks(blocks)
        .build()
        .unwrap()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What a reading build gives: the tree, and the parity `fec_encode` writes over the data
/// and that tree.
fn expected(p: &VerityParams, data: &[u8], roots: u8) -> (HashTree, FecGeometry, Vec<u8>) {
    let tree = HashTree::build(p, data).unwrap();
    let mut hash = Vec::new();
    let f = format(p, data, &mut hash, &FormatOptions::default()).unwrap();
    let g = FecGeometry::separate(p, &f.geometry, roots, hash.len() as u64, 0).unwrap();
    let mut parity = Vec::new();
    fec_encode(&g, data, &hash, &mut parity, &BuildOptions::default()).unwrap();
    (tree, g, parity)
}

/// The data's whole blocks cut into extents of 1 to 300 blocks, in a shuffled order.
fn extents(rng: &mut Rng, blocks: u64) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    let mut b = 0;
    while b < blocks {
        let n = (1 + rng.below(300)).min(blocks - b);
        v.push((b, n));
        b += n;
    }
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

#[test]
fn writes_in_any_order_give_the_tree_and_parity_of_the_device() {
    let mut rng = Rng(0x5eed_0001);
    // One block (no levels), a partial last hash block, several levels with 1 KiB blocks.
    for (case, (bs, blocks, roots)) in [
        (4096u32, 1u64, 2u8),
        (4096, 1000, 2),
        (4096, 3000, 24),
        (1024, 40_000, 3),
    ]
    .into_iter()
    .enumerate()
    {
        let p = params(bs, blocks);
        let mut data = seeded_bytes(100 + case as u64, (blocks * u64::from(bs)) as usize);
        // Some zero runs, written as zeros without bytes.
        // (Not in the single block's case: its parity must come from its bytes.)
        let zero_runs: Vec<(u64, u64)> = (0..if blocks > 1 { 3 } else { 0 })
            .map(|_| {
                let b = rng.below(blocks);
                (b, (1 + rng.below(40)).min(blocks - b))
            })
            .collect();
        for &(b, n) in &zero_runs {
            let at = (b * u64::from(bs)) as usize;
            data[at..at + (n * u64::from(bs)) as usize].fill(0);
        }
        let (tree, g, parity) = expected(&p, &data, roots);
        for threads in [1, 2] {
            let mut s = StreamTree::new(&p)
                .unwrap()
                .threads(Threads::exactly(threads))
                .parity(&g)
                .unwrap();
            for (b, n) in extents(&mut rng, blocks) {
                let (off, len) = (b * u64::from(bs), n * u64::from(bs));
                if zero_runs.iter().any(|&(z, m)| z == b && m == n)
                    || data[off as usize..(off + len) as usize]
                        .iter()
                        .all(|&x| x == 0)
                {
                    s.zeros(off, len);
                } else {
                    s.write(off, &data[off as usize..(off + len) as usize]);
                }
            }
            let out = s.finish(&data[..], &BuildOptions::default()).unwrap();
            assert_eq!(out.read_back, 0, "case {case}: everything was seen whole");
            assert_eq!(out.tree, tree, "case {case}, {threads} threads: tree");
            let mut got = Vec::new();
            out.parity
                .expect("parity within the budget")
                .write_to(&mut got)
                .unwrap();
            assert!(got == parity, "case {case}, {threads} threads: parity");
        }
    }
}

#[test]
fn what_was_not_seen_whole_is_read_back_and_counted() {
    let (bs, blocks, roots) = (4096u32, 2000u64, 2u8);
    let p = params(bs, blocks);
    let data = seeded_bytes(7, (blocks * u64::from(bs)) as usize);
    let (tree, g, parity) = expected(&p, &data, roots);
    let bsu = u64::from(bs);

    // Nothing seen (a writer that resumed after everything was written, or `format_with_fec`):
    // one read of it all, on one thread or two (each its half of the rounds), whatever
    // the block size and count and the roots.
    for (bs, blocks, roots) in [(4096u32, 2000u64, 2u8), (4096, 2001, 24), (512, 777, 3)] {
        let p = params(bs, blocks);
        let data = seeded_bytes(blocks, (blocks * u64::from(bs)) as usize);
        let (tree, g, parity) = expected(&p, &data, roots);
        for threads in [1, 2] {
            let s = StreamTree::new(&p)
                .unwrap()
                .threads(Threads::exactly(threads))
                .parity(&g)
                .unwrap();
            let out = s.finish(&data[..], &BuildOptions::default()).unwrap();
            let what = format!("{bs} x {blocks}, roots {roots}, {threads} threads");
            assert_eq!(out.read_back, blocks * u64::from(bs), "{what}");
            assert_eq!(out.tree, tree, "{what}");
            let mut got = Vec::new();
            out.parity.unwrap().write_to(&mut got).unwrap();
            assert!(got == parity, "{what}: parity");
        }
    }
    // Cancelled on the way: stops with Cancelled, after reporting progress.
    struct StopAfterFirst(std::sync::atomic::AtomicU64);
    impl keel_verity::Progress for StopAfterFirst {
        fn progress(&self, done: u64, _total: u64) {
            self.0.store(done, std::sync::atomic::Ordering::Relaxed);
        }
        fn cancelled(&self) -> bool {
            self.0.load(std::sync::atomic::Ordering::Relaxed) > 0
        }
    }
    let big = params(4096, 4096);
    let data4 = seeded_bytes(9, 4096 * 4096);
    let (_, g4, _) = expected(&big, &data4, 2);
    let stop = StopAfterFirst(Default::default());
    let e = StreamTree::new(&big)
        .unwrap()
        .threads(Threads::exactly(2))
        .parity(&g4)
        .unwrap()
        .finish(&data4[..], &BuildOptions::default().progress(&stop))
        .unwrap_err();
    assert!(matches!(e, keel_verity::Error::Cancelled), "{e}");
    let seen = stop.0.load(std::sync::atomic::Ordering::Relaxed);
    assert!(seen > 0 && seen < 4096 * 4096, "stopped part way: {seen}");

    // Blocks 10 and 11 written in unaligned pieces, the rest whole: only those two are read.
    let mut s = StreamTree::new(&p).unwrap().parity(&g).unwrap();
    let (a, b) = (10 * bsu, 12 * bsu);
    s.write(0, &data[..a as usize]);
    s.write(a, &data[a as usize..(a + 100) as usize]);
    s.write(a + 100, &data[(a + 100) as usize..b as usize - 5]);
    s.write(b - 5, &data[(b - 5) as usize..]);
    let out = s.finish(&data[..], &BuildOptions::default()).unwrap();
    assert_eq!(out.read_back, 2 * bsu);
    assert_eq!(out.tree, tree);
    let mut got = Vec::new();
    out.parity.unwrap().write_to(&mut got).unwrap();
    assert!(got == parity, "blocks read back count once in the parity");

    // A block written whole twice (other bytes first): the tree takes the last write, the
    // parity cannot take the first back and is dropped.
    let mut s = StreamTree::new(&p).unwrap().parity(&g).unwrap();
    s.write(5 * bsu, &vec![0xa5; bs as usize]);
    s.write(0, &data);
    assert!(!s.has_parity());
    let out = s.finish(&data[..], &BuildOptions::default()).unwrap();
    assert_eq!((out.read_back, &out.tree), (0, &tree));
    assert!(out.parity.is_none());

    // A block seen whole, then written in part: read back, parity dropped.
    let mut s = StreamTree::new(&p).unwrap().parity(&g).unwrap();
    s.write(0, &data);
    s.write(
        7 * bsu + 1,
        &data[(7 * bsu + 1) as usize..(7 * bsu + 9) as usize],
    );
    let out = s.finish(&data[..], &BuildOptions::default()).unwrap();
    assert_eq!((out.read_back, &out.tree), (bsu, &tree));
    assert!(out.parity.is_none());

    // Bytes past the data are not the tree's.
    let mut s = StreamTree::new(&p).unwrap();
    let mut longer = data.clone();
    longer.extend_from_slice(&[1u8; 8192]);
    s.write(0, &longer);
    let out = s.finish(&longer[..], &BuildOptions::default()).unwrap();
    assert_eq!((out.read_back, &out.tree), (0, &tree));
}

#[test]
fn parity_of_another_geometry_is_refused_and_a_large_one_left_to_a_second_pass() {
    let p = params(4096, 1000);
    let other = params(4096, 999);
    let mut hash = Vec::new();
    let data = vec![0u8; 999 * 4096];
    let f = format(&other, &data, &mut hash, &FormatOptions::default()).unwrap();
    let g = FecGeometry::separate(&other, &f.geometry, 2, hash.len() as u64, 0).unwrap();
    let err = StreamTree::new(&p).unwrap().parity(&g).unwrap_err();
    assert!(err.to_string().contains("fec"), "{err}");
    // A hash area larger than the tree (what else lies there is not seen here).
    let g = FecGeometry::separate(&other, &f.geometry, 2, hash.len() as u64 + 4096, 0).unwrap();
    assert!(StreamTree::new(&other).unwrap().parity(&g).is_err());

    // 16 GiB of data with 2 roots: about 130 MiB of parity, past the budget.
    let big = params(4096, 4 << 20);
    let tree = keel_verity::TreeGeometry::new(&big, 0, false).unwrap();
    let g = FecGeometry::separate(&big, &tree, 2, tree.tree_size(), 0).unwrap();
    assert!(g.parity_size() > keel_verity::STREAM_PARITY_BUDGET);
    let s = StreamTree::new(&big).unwrap().parity(&g).unwrap();
    assert!(!s.has_parity());
}

/// Parameters far larger than the device: the device is named too small, before the tree
/// (128 GiB here) is asked of memory.
#[test]
fn a_device_smaller_than_its_parameters_is_named() {
    let p = params(4096, 1 << 32);
    let data = seeded_bytes(3, 300 * 4096);
    let mut hash = Vec::new();
    let mut fec = Vec::new();
    let err = keel_verity::format_with_fec(
        &p,
        &data[..],
        &mut hash,
        &mut fec,
        &FormatOptions::default(),
        |t| FecGeometry::separate(&p, t, 2, t.hash_device_size(), 0),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            keel_verity::Error::TooSmall {
                what: "data device",
                ..
            }
        ),
        "{err}"
    );
    assert!(hash.is_empty() && fec.is_empty());
}
