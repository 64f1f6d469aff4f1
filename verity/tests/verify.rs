//! Verification outcomes, lazy single-block verification, and clear errors on bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use common::seeded_bytes;
use keel_verity::{
    format, open_hash_device, verify, BlockVerifier, BuildOptions, Error, FormatOptions,
    HashAlgorithm, HashTree, HashType, ReadAt, Threads, TreeGeometry, VerityParams,
};
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

fn params(
    blocks: u64,
    dbs: u32,
    hbs: u32,
    alg: HashAlgorithm,
    ht: HashType,
    salt: usize,
) -> VerityParams {
    VerityParams::builder()
        .data_blocks(blocks)
        .data_block_size(dbs)
        .hash_block_size(hbs)
        .algorithm(alg)
        .hash_type(ht)
        .salt(seeded_bytes(99, salt))
        .build()
        .unwrap()
}

/// A formatted device in memory: (params, geometry, data, hash device, root).
fn formatted(
    p: &VerityParams,
    superblock: bool,
    seed: u64,
) -> (TreeGeometry, Vec<u8>, Vec<u8>, Vec<u8>) {
    let data = seeded_bytes(seed, p.data_size() as usize);
    let mut hash = Vec::new();
    let opts = FormatOptions::default().superblock(superblock.then_some([3; 16]));
    let f = format(p, &data, &mut hash, &opts).unwrap();
    (f.geometry, data, hash, f.root_hash)
}

fn opts() -> BuildOptions<'static> {
    BuildOptions::default()
}

/// A formatted device in memory (4 KiB blocks, SHA-256, no superblock) with its FEC
/// parity on a device of its own.
struct WithParity {
    p: VerityParams,
    geometry: TreeGeometry,
    data: Vec<u8>,
    hash: Vec<u8>,
    root: Vec<u8>,
    g: keel_verity::FecGeometry,
    parity: Vec<u8>,
}

fn with_parity(blocks: u64, seed: u64, roots: u8) -> WithParity {
    let p = params(
        blocks,
        4096,
        4096,
        HashAlgorithm::Sha256,
        HashType::Normal,
        32,
    );
    let (geometry, data, hash, root) = formatted(&p, false, seed);
    let g = keel_verity::FecGeometry::separate(&p, &geometry, roots, hash.len() as u64, 0).unwrap();
    let mut parity = Vec::new();
    keel_verity::fec_encode(&g, &data, &hash, &mut parity, &opts()).unwrap();
    WithParity {
        p,
        geometry,
        data,
        hash,
        root,
        g,
        parity,
    }
}

#[test]
fn thread_count_does_not_change_the_tree() {
    // 40 MiB: large enough that the leaf level is split between workers.
    let p = params(
        10240,
        4096,
        4096,
        HashAlgorithm::Sha256,
        HashType::Normal,
        32,
    );
    let data = seeded_bytes(5, p.data_size() as usize);
    let one = HashTree::build_with(
        &p,
        &data,
        &BuildOptions::default().threads(Threads::exactly(1)),
    )
    .unwrap();
    let done = AtomicU64::new(0);
    let calls = AtomicU64::new(0);
    let observer = |d: u64, t: u64| {
        assert_eq!(t, p.data_size());
        assert!(
            d >= done.swap(d, Ordering::SeqCst),
            "progress went backwards"
        );
        calls.fetch_add(1, Ordering::SeqCst);
    };
    let four = HashTree::build_with(
        &p,
        &data,
        &BuildOptions::default()
            .threads(Threads::exactly(4))
            .progress(&observer),
    )
    .unwrap();
    assert_eq!(one.root_hash(), four.root_hash());
    assert_eq!(one.as_bytes(), four.as_bytes());
    assert_eq!(done.load(Ordering::SeqCst), p.data_size());
    assert!(calls.load(Ordering::SeqCst) > 1);
}

#[test]
fn damaged_hash_blocks_are_located() {
    let p = params(20000, 512, 512, HashAlgorithm::Sha256, HashType::Normal, 8);
    let (g, data, hash, root) = formatted(&p, true, 1);
    assert_eq!(g.levels().len(), 4);
    verify(&p, &g, &data, &hash, &root, &opts()).unwrap();
    for level in 0..g.levels().len() - 1 {
        let index = g.levels()[level].blocks / 2;
        let at = g.block_offset(level, index) as usize + 3;
        let mut h = hash.clone();
        h[at] ^= 0x80;
        match verify(&p, &g, &data, &h, &root, &opts()) {
            Err(Error::HashBlockCorrupt {
                level: l,
                index: i,
                offset,
                ..
            }) => {
                assert_eq!((l, i), (level, index));
                assert_eq!(offset, g.block_offset(level, index));
            }
            other => panic!("level {level}: {other:?}"),
        }
    }
    // The top block: nothing above it but the root.
    let top = g.levels().len() - 1;
    let mut h = hash.clone();
    h[g.block_offset(top, 0) as usize] ^= 1;
    assert!(matches!(
        verify(&p, &g, &data, &h, &root, &opts()),
        Err(Error::RootHashMismatch { .. })
    ));
}

/// A tree whose digests are all consistent but whose unused bytes are not zero (as a
/// careless foreign tool might write) is refused, as veritysetup refuses it.
#[test]
fn nonzero_unused_bytes_are_refused() {
    use sha1::Digest;
    // 1000 sha1 leaves, 128 to a block: the last of 8 leaf blocks holds 104 digests.
    let p = params(1000, 4096, 4096, HashAlgorithm::Sha1, HashType::Normal, 0);
    let (g, data, mut hash, _) = formatted(&p, false, 8);
    assert_eq!(g.levels().len(), 2);
    let leaf = g.block_offset(0, 7) as usize;
    hash[leaf + 4095] = 0xee;
    // Re-seal: the top block's digest of leaf 7, then the root.
    let d = sha1::Sha1::digest(&hash[leaf..leaf + 4096]);
    let top = g.block_offset(1, 0) as usize;
    hash[top + 7 * 32..top + 7 * 32 + 20].copy_from_slice(&d);
    let root = sha1::Sha1::digest(&hash[top..top + 4096]).to_vec();
    match verify(&p, &g, &data, &hash, &root, &opts()) {
        Err(Error::HashBlockCorrupt {
            level: 0,
            index: 7,
            detail,
            ..
        }) => assert!(detail.contains("not zero")),
        other => panic!("{other:?}"),
    }
    // The padding of a digest slot (sha1 digests take 20 of 32 bytes) in the top block.
    let (_, _, mut hash, _) = formatted(&p, false, 8);
    hash[top + 25] = 1;
    let root = sha1::Sha1::digest(&hash[top..top + 4096]).to_vec();
    match verify(&p, &g, &data, &hash, &root, &opts()) {
        Err(Error::HashBlockCorrupt {
            level: 1,
            index: 0,
            detail,
            ..
        }) => assert!(detail.contains("not zero")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn all_bad_data_blocks_are_counted() {
    let p = params(1000, 4096, 4096, HashAlgorithm::Sha1, HashType::ChromeOs, 0);
    let (g, mut data, hash, root) = formatted(&p, false, 2);
    for b in [17u64, 500, 999] {
        data[(b * 4096 + 100) as usize] ^= 4;
    }
    let e = verify(&p, &g, &data, &hash, &root, &opts()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DataBlockCorrupt {
                block: 17,
                offset: 69632,
                count: 3
            }
        ),
        "{e}"
    );
    assert!(e.is_corruption());
    assert!(e.to_string().contains("data block 17"));
}

/// Counts the reads a lazy verifier makes of the hash device.
struct Counting<'a> {
    inner: &'a [u8],
    reads: AtomicU64,
}
impl ReadAt for Counting<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_exact_at(buf, offset)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.inner.len() as u64)
    }
}

#[test]
fn lazy_verification_reads_only_the_path() {
    let p = params(
        5000,
        1024,
        1024,
        HashAlgorithm::Sha256,
        HashType::Normal,
        16,
    );
    let (g, data, hash, root) = formatted(&p, true, 3);
    let levels = g.levels().len() as u64;
    assert_eq!(levels, 3);
    let dev = Counting {
        inner: &hash,
        reads: AtomicU64::new(0),
    };
    let mut v = BlockVerifier::new(&p, &g, &dev, &root)
        .unwrap()
        .with_cache_limit(0);
    let mut buf = vec![0u8; 1024];
    for (n, b) in [0u64, 4999, 2500, 31, 32].into_iter().enumerate() {
        v.read_block(&data, b, &mut buf).unwrap();
        assert_eq!(v.hash_blocks_read(), levels * (n as u64 + 1), "block {b}");
    }
    assert_eq!(dev.reads.load(Ordering::SeqCst), levels * 5);
    // With the cache, a neighbour costs only the leaf block it does not share.
    let mut v = BlockVerifier::new(&p, &g, &hash[..], &root).unwrap();
    v.read_block(&data, 100, &mut buf).unwrap();
    v.read_block(&data, 101, &mut buf).unwrap();
    assert_eq!(v.hash_blocks_read(), levels);
    v.read_block(&data, 4000, &mut buf).unwrap();
    assert_eq!(v.hash_blocks_read(), levels + 2);

    // Corruption of the block itself, of a hash block on its path, and a wrong root.
    let mut bad = data.clone();
    bad[2500 * 1024 + 5] ^= 1;
    let mut v = BlockVerifier::new(&p, &g, &hash[..], &root).unwrap();
    assert!(matches!(
        v.read_block(&bad, 2500, &mut buf),
        Err(Error::DataBlockCorrupt {
            block: 2500,
            offset: 2_560_000,
            count: 1
        })
    ));
    v.read_block(&bad, 2499, &mut buf).unwrap();
    let mut h = hash.clone();
    let leaf = 2500 / g.digests_per_block();
    h[g.block_offset(0, leaf) as usize + 9] ^= 1;
    let mut v = BlockVerifier::new(&p, &g, &h[..], &root).unwrap();
    assert!(matches!(
        v.read_block(&data, 2500, &mut buf),
        Err(Error::HashBlockCorrupt { level: 0, index, .. }) if index == leaf
    ));
    let mut wrong = root.clone();
    wrong[5] ^= 1;
    let mut v = BlockVerifier::new(&p, &g, &hash[..], &wrong).unwrap();
    assert!(matches!(
        v.read_block(&data, 0, &mut buf),
        Err(Error::RootHashMismatch { .. })
    ));
    assert!(v.read_block(&data, 5000, &mut buf).is_err());
}

#[test]
fn single_block_device() {
    let p = params(1, 4096, 4096, HashAlgorithm::Sha256, HashType::Normal, 4);
    let (g, data, hash, root) = formatted(&p, true, 4);
    assert_eq!(g.tree_blocks(), 0);
    assert_eq!(hash.len(), 4096);
    verify(&p, &g, &data, &hash, &root, &opts()).unwrap();
    let mut bad = data.clone();
    bad[0] ^= 1;
    assert!(verify(&p, &g, &bad, &hash, &root, &opts())
        .unwrap_err()
        .is_corruption());
    let mut v = BlockVerifier::new(&p, &g, &hash[..], &root).unwrap();
    v.verify_block(0, &data).unwrap();
    assert!(v.verify_block(0, &bad).is_err());
}

fn param_error(r: Result<VerityParams, Error>) -> (&'static str, String) {
    match r {
        Err(Error::InvalidParameter { field, reason }) => (field, reason),
        other => panic!("expected InvalidParameter, got {other:?}"),
    }
}

#[test]
fn bad_parameters_are_refused_with_the_field_named() {
    for bs in [0u32, 256, 1000, 4097, 1 << 20] {
        let (f, _) = param_error(
            VerityParams::builder()
                .data_block_size(bs)
                .data_blocks(1)
                .salt(vec![])
                .build(),
        );
        assert_eq!(f, "data block size");
        let (f, _) = param_error(
            VerityParams::builder()
                .hash_block_size(bs)
                .data_blocks(1)
                .salt(vec![])
                .build(),
        );
        assert_eq!(f, "hash block size");
    }
    let (f, r) = param_error(
        VerityParams::builder()
            .salt(vec![0; 257])
            .data_blocks(1)
            .build(),
    );
    assert_eq!(f, "salt");
    assert!(r.contains("257"));
    let (f, _) = param_error(VerityParams::builder().data_blocks(0).salt(vec![]).build());
    assert_eq!(f, "data blocks");
    let (f, _) = param_error(
        VerityParams::builder()
            .data_blocks(u64::MAX / 2)
            .salt(vec![])
            .build(),
    );
    assert_eq!(f, "data blocks");
    // Data smaller than one block.
    match VerityParams::builder().data_blocks_for(4095).build() {
        Err(Error::TooSmall {
            needed: 4096,
            found: 4095,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // A data device shorter than the blocks it should cover.
    let p = params(10, 4096, 4096, HashAlgorithm::Sha256, HashType::Normal, 0);
    let short = vec![0u8; 4096 * 9 + 100];
    assert!(matches!(
        HashTree::build(&p, &short),
        Err(Error::TooSmall {
            what: "data device",
            needed: 40960,
            ..
        })
    ));
    // Hash offsets.
    for off in [1u64, 100, 511, 4097] {
        let e = TreeGeometry::new(&p, off, true).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidParameter {
                    field: "hash offset",
                    ..
                }
            ),
            "{e}"
        );
    }
    let e = TreeGeometry::new(&p, 512, false).unwrap_err();
    assert!(e.to_string().contains("hash block size"), "{e}");
    TreeGeometry::new(&p, 512, true).unwrap();
    // A root hash of the wrong length.
    let (g, data, hash, _) = formatted(&p, false, 6);
    let e = verify(&p, &g, &data, &hash, &[0u8; 20], &opts()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidParameter {
                field: "root hash",
                ..
            }
        ),
        "{e}"
    );
    // A geometry made for other parameters.
    let other = params(11, 4096, 4096, HashAlgorithm::Sha256, HashType::Normal, 0);
    let g2 = TreeGeometry::new(&other, 0, false).unwrap();
    assert!(verify(&p, &g2, &data, &hash, &[0u8; 32], &opts()).is_err());
}

#[test]
fn bad_hash_devices_are_refused() {
    let p = params(300, 4096, 4096, HashAlgorithm::Sha256, HashType::Normal, 32);
    let (g, data, hash, root) = formatted(&p, true, 7);
    // Truncated: the superblock survives, the tree does not.
    let truncated = &hash[..hash.len() - 1];
    let (sb, g2) = open_hash_device(truncated, 0).unwrap();
    let e = verify(sb.params(), &g2, &data, truncated, &root, &opts()).unwrap_err();
    assert!(
        matches!(e, Error::TooSmall { what: "hash device", needed, found } if needed == hash.len() as u64 && found == needed - 1),
        "{e}"
    );
    assert!(BlockVerifier::new(&p, &g, truncated, &root).is_err());
    // Too short even for the superblock.
    assert!(matches!(
        open_hash_device(&hash[..100], 0),
        Err(Error::TooSmall { .. })
    ));
    assert!(matches!(
        open_hash_device(&hash[..], 4096 * 400),
        Err(Error::TooSmall { .. })
    ));
    // Bad magic, version, salt size, block size, algorithm.
    for (at, val, field) in [
        (0usize, b'V', "signature"),
        (8, 0, "version"),
        (81, 0x02, "salt_size"),
        (81, 0x01, "salt_size"),
        (64, 0x01, "data_block_size"),
        (69, 0x00, "hash_block_size"),
    ] {
        let mut h = hash.clone();
        h[at] = val;
        match open_hash_device(&h[..], 0) {
            Err(Error::BadField {
                field: f, offset, ..
            }) => {
                assert_eq!(f, field, "byte {at}");
                assert!(offset <= at);
            }
            other => panic!("byte {at}: {other:?}"),
        }
    }
    let mut h = hash.clone();
    h[32..38].copy_from_slice(b"md5\0\0\0");
    let e = open_hash_device(&h[..], 0).unwrap_err();
    assert!(
        matches!(e, Error::UnsupportedAlgorithm { ref name } if name == "md5"),
        "{e}"
    );
    // A superblock claiming far more data than exists is refused before allocation.
    let mut h = hash.clone();
    h[72..80].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let (sb, g3) = open_hash_device(&h[..], 0).unwrap();
    let e = verify(sb.params(), &g3, &data, &h[..], &root, &opts()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooSmall {
                what: "data device",
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        BlockVerifier::new(sb.params(), &g3, &h[..], &root),
        Err(Error::TooSmall {
            what: "hash device",
            ..
        })
    ));
}

fn arb_params() -> impl Strategy<Value = VerityParams> {
    (
        1u64..400,
        prop::sample::select(vec![512u32, 1024, 4096]),
        prop::sample::select(vec![512u32, 1024, 4096]),
        prop::sample::select(HashAlgorithm::ALL.to_vec()),
        prop::bool::ANY,
        0usize..80,
    )
        .prop_map(|(blocks, dbs, hbs, alg, t, salt)| {
            let ht = if t {
                HashType::Normal
            } else {
                HashType::ChromeOs
            };
            params(blocks, dbs, hbs, alg, ht, salt)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any single flipped bit in the data or the tree is detected, by full and by lazy
    /// verification.
    #[test]
    fn any_flipped_bit_is_detected(p in arb_params(), seed in any::<u64>(), pick in any::<u64>(), bit in 0u8..8, in_tree in any::<bool>()) {
        let (g, mut data, mut hash, root) = formatted(&p, false, seed);
        let lazy_ok = |data: &[u8], hash: &[u8]| -> bool {
            let Ok(mut v) = BlockVerifier::new(&p, &g, hash, &root) else { return false };
            let dbs = p.data_block_size() as usize;
            (0..p.data_blocks()).all(|b| v.verify_block(b, &data[b as usize * dbs..(b as usize + 1) * dbs]).is_ok())
        };
        prop_assert!(verify(&p, &g, &data, &hash, &root, &opts()).is_ok());
        prop_assert!(lazy_ok(&data, &hash));
        if in_tree && !hash.is_empty() {
            let i = (pick % hash.len() as u64) as usize;
            hash[i] ^= 1 << bit;
            let r = verify(&p, &g, &data, &hash, &root, &opts());
            prop_assert!(r.as_ref().is_err_and(|e| e.is_corruption()), "{:?}", r);
            // Every hash block lies on the path of some data block.
            prop_assert!(!lazy_ok(&data, &hash));
        } else {
            let i = (pick % data.len() as u64) as usize;
            data[i] ^= 1 << bit;
            let r = verify(&p, &g, &data, &hash, &root, &opts());
            prop_assert!(r.as_ref().is_err_and(|e| e.is_corruption()), "{:?}", r);
            prop_assert!(!lazy_ok(&data, &hash));
            if g.levels().is_empty() {
                let is_root_mismatch = matches!(r, Err(Error::RootHashMismatch { .. }));
                prop_assert!(is_root_mismatch);
            } else {
                let block = i as u64 / u64::from(p.data_block_size());
                let expected_block = matches!(r, Err(Error::DataBlockCorrupt { block: b, count: 1, .. }) if b == block);
                prop_assert!(expected_block, "{:?}", r);
            }
        }
    }
}

#[test]
fn building_a_tree_can_be_cancelled() {
    use keel_verity::{BuildOptions, HashTree};
    let params = keel_verity::VerityParams::builder()
        .data_blocks(4096)
        .build()
        .unwrap();
    let data = vec![1u8; 4096 * 4096];
    let cancel = keel_io::Cancel::new();
    cancel.cancel();
    let opts = BuildOptions::default().progress(&cancel);
    assert!(matches!(
        HashTree::build_with(&params, &data[..], &opts),
        Err(keel_verity::Error::Cancelled)
    ));
    let fine = keel_io::Cancel::new();
    let opts = BuildOptions::default().progress(&fine);
    assert!(HashTree::build_with(&params, &data[..], &opts).is_ok());
}

/// FEC encoding, checking and repair stop when asked: `Cancelled`, and a cancelled repair
/// has written nothing (the damage is still there, and a second run repairs it).
#[test]
fn fec_work_can_be_cancelled_and_a_cancelled_repair_writes_nothing() {
    use keel_verity::{fec_encode, fec_repair, fec_verify, FecGeometry, RepairTarget};
    let p = params(600, 4096, 4096, HashAlgorithm::Sha256, HashType::Normal, 32);
    let (geometry, mut data, mut hash, root) = formatted(&p, false, 8);
    let g = FecGeometry::separate(&p, &geometry, 2, hash.len() as u64, 0).unwrap();
    let cancel = keel_io::Cancel::new();
    cancel.cancel();
    let stop = BuildOptions::default().progress(&cancel);
    let mut parity = Vec::new();
    let e = fec_encode(&g, &data, &hash, &mut parity, &stop).unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e}");
    fec_encode(&g, &data, &hash, &mut parity, &BuildOptions::default()).unwrap();
    let e = fec_verify(&g, &data, &hash, &parity, &stop).unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e}");

    data[4096 * 17 + 5] ^= 0xff;
    let damaged = data.clone();
    let target = RepairTarget {
        params: &p,
        tree: &geometry,
        root: &root,
    };
    // Cancelled after the scan, before the first write: nothing changes.
    let late = LateCancel(std::sync::atomic::AtomicU64::new(0));
    let opts = BuildOptions::default().progress(&late);
    let e = fec_repair(&g, &target, &mut data, &mut hash, &mut parity, &opts).unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e}");
    assert!(
        late.0.load(Ordering::SeqCst) > 0,
        "the scan ran before the stop"
    );
    assert_eq!(data, damaged, "a cancelled repair wrote to the data device");
    let r = fec_repair(
        &g,
        &target,
        &mut data,
        &mut hash,
        &mut parity,
        &BuildOptions::default(),
    )
    .unwrap();
    assert_eq!(r.repaired_data_blocks, vec![17]);
    assert!(r.is_complete());
}

/// Lets work run, then asks it to stop once any progress has been reported.
struct LateCancel(std::sync::atomic::AtomicU64);

impl keel_verity::Progress for LateCancel {
    fn progress(&self, done: u64, _total: u64) {
        self.0.store(done, Ordering::SeqCst);
    }
    fn cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

/// Damage in most rounds that the tree confirms block by block is repaired, however many
/// codewords it touches; a parity of another shape over whole data is still refused with
/// nothing written.
#[test]
fn damage_in_most_rounds_is_repaired_and_a_parity_of_other_roots_refused() {
    use keel_verity::{fec_encode, fec_repair, fec_verify, FecGeometry, RepairTarget};
    let WithParity {
        p,
        geometry,
        data: original,
        mut hash,
        root,
        g,
        mut parity,
    } = with_parity(1000, 21, 24);
    let rounds = g.rounds();
    let target = RepairTarget {
        params: &p,
        tree: &geometry,
        root: &root,
    };
    // A run of bad blocks as long as the rounds less one: one bad block in each of those
    // rounds' codewords, within what the parity corrects, in nearly every codeword.
    let mut data = original.clone();
    let run = rounds - 1;
    for b in 100..100 + run {
        let at = (b * 4096) as usize;
        data[at..at + 4096].copy_from_slice(&seeded_bytes(b, 4096));
    }
    let report = fec_verify(&g, &data, &hash, &parity, &opts()).unwrap();
    assert!(report.mostly_damaged(), "{report:?}");
    assert_eq!(report.unrepairable_codewords, 0);
    let r = fec_repair(&g, &target, &mut data, &mut hash, &mut parity, &opts()).unwrap();
    assert_eq!(r.repaired_data_blocks, (100..100 + run).collect::<Vec<_>>());
    assert!(r.is_complete());
    assert!(data == original);

    // The same data with a parity made with 2 roots, read as one of 24: refused.
    let g2 = FecGeometry::separate(&p, &geometry, 2, hash.len() as u64, 0).unwrap();
    let mut other = Vec::new();
    fec_encode(&g2, &original, &hash, &mut other, &opts()).unwrap();
    other.resize(parity.len(), 0);
    let before = other.clone();
    let e = fec_repair(&g, &target, &mut data, &mut hash, &mut other, &opts()).unwrap_err();
    assert!(e.to_string().contains("other roots"), "{e}");
    assert!(
        other == before && data == original,
        "a refused repair wrote"
    );
}

/// A data or hash device shorter than the parity covers is named with the size it needs,
/// before anything is read or written (a read past its end only said that it ended).
#[test]
fn fec_work_on_a_shrunk_device_names_it_and_its_size() {
    use keel_verity::{fec_encode, fec_repair, fec_verify, RepairTarget};
    let WithParity {
        p,
        geometry,
        data,
        mut hash,
        root,
        g,
        mut parity,
    } = with_parity(300, 5, 2);
    let target = RepairTarget {
        params: &p,
        tree: &geometry,
        root: &root,
    };
    let too_small = |e: Error, device: &str, needed: u64, found: u64| match e {
        Error::TooSmall {
            what,
            needed: n,
            found: f,
        } => assert!(
            what == device && n == needed && f == found,
            "{what} {n} {f}"
        ),
        e => panic!("{e}"),
    };
    let need = p.data_size();
    let mut short = data[..data.len() - 4096 - 100].to_vec();
    let found = short.len() as u64;
    let e = fec_verify(&g, &short, &hash, &parity, &opts()).unwrap_err();
    too_small(e, "data device", need, found);
    let before = parity.clone();
    let e = fec_repair(&g, &target, &mut short, &mut hash, &mut parity, &opts()).unwrap_err();
    too_small(e, "data device", need, found);
    assert!(
        parity == before && short.len() as u64 == found,
        "a refused repair wrote"
    );
    let mut fresh = Vec::new();
    let e = fec_encode(&g, &short, &hash, &mut fresh, &opts()).unwrap_err();
    too_small(e, "data device", need, found);
    assert!(fresh.is_empty(), "a refused encode wrote");

    let hash_need = hash.len() as u64;
    let cut = hash[..hash.len() - 1].to_vec();
    let e = fec_verify(&g, &data, &cut, &parity, &opts()).unwrap_err();
    too_small(e, "hash device", hash_need, hash_need - 1);
    fec_verify(&g, &data, &hash, &parity, &opts()).unwrap();
}

/// Two bad bytes in one codeword, past what 3 roots correct without knowing where, but
/// not once the tree names their blocks; a parity byte of another codeword of the same
/// round is bad too. The erasure decoding of that round fails for the other codeword
/// (its error and the two erasures are more than 3 roots hold); it is corrected on its
/// own and the round still repaired (once the whole round was given up).
#[test]
fn a_round_with_a_codeword_past_the_erasures_is_still_repaired() {
    use keel_verity::{fec_repair, RepairTarget};
    let WithParity {
        p,
        geometry,
        data: original,
        mut hash,
        root,
        g,
        mut parity,
    } = with_parity(300, 8, 3);
    let good_parity = parity.clone();
    let rounds = g.rounds();
    let mut data = original.clone();
    let (a, b) = (44 * rounds, 81 * rounds);
    for blk in [a, b] {
        data[(blk * 4096 + 3091) as usize] ^= 0x5a;
    }
    // Codeword 204 of round 0: its second parity byte.
    parity[204 * 3 + 1] ^= 0x33;
    let target = RepairTarget {
        params: &p,
        tree: &geometry,
        root: &root,
    };
    let r = fec_repair(&g, &target, &mut data, &mut hash, &mut parity, &opts()).unwrap();
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(r.repaired_data_blocks, vec![a, b]);
    assert!(data == original);
    assert!(parity == good_parity);
}

/// As many bad blocks in a round as there are roots, damaged in part, and a bad parity
/// byte in a codeword where those blocks are whole: decoding with the stored parity gives
/// the erased bytes of that codeword wrong (nothing is left to find the bad byte), and the
/// tree would reject every block. The scan's errors-only fix of that byte, which with 8
/// roots no other error pattern explains, is what the erasure decoding starts from.
#[test]
fn as_many_bad_blocks_as_roots_and_a_bad_parity_byte_are_repaired() {
    use keel_verity::{fec_repair, RepairTarget};
    let roots = 8u8;
    let WithParity {
        p,
        geometry,
        data: original,
        mut hash,
        root,
        g,
        mut parity,
    } = with_parity(900, 11, roots);
    let good_parity = parity.clone();
    let rounds = g.rounds();
    let mut data = original.clone();
    let bad: Vec<u64> = (0..u64::from(roots))
        .map(|i| (3 + 7 * i) * rounds)
        .collect();
    for &b in &bad {
        let at = (b * 4096) as usize;
        data[at..at + 512].copy_from_slice(&seeded_bytes(b, 512));
    }
    // Round 0, codeword (byte) 3000: its first parity byte.
    parity[3000 * usize::from(roots)] ^= 0x77;
    let target = RepairTarget {
        params: &p,
        tree: &geometry,
        root: &root,
    };
    let r = fec_repair(&g, &target, &mut data, &mut hash, &mut parity, &opts()).unwrap();
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(r.repaired_data_blocks, bad);
    assert!(data == original && parity == good_parity);
}
