//! Block stores: an image published once; a device with any older image installs it by
//! fetching only the runs holding blocks it lacks, every block checked against the signed
//! dm-verity leaves; seeds hashed or read from their tree; the target's own blocks kept in
//! place; a changed seed, a tampered store, a cut and a resume.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use keel_payload::store::{publish_store, PublishOptions, Seed, StoreOptions, StoreSession};
use keel_payload::{ApplyOptions, Error, VersionCheck};
use keel_testsupport::seeded_bytes;
use keel_verity::{HashTree, Keyring, Progress, ReadAt, SigningKey, VerityParams};

const BS: usize = 4096;

/// A store in memory that counts range requests and bytes.
struct Counted {
    bytes: Vec<u8>,
    requests: AtomicU64,
    read: AtomicU64,
}

impl Counted {
    fn new(bytes: Vec<u8>) -> Self {
        Counted {
            bytes,
            requests: AtomicU64::new(0),
            read: AtomicU64::new(0),
        }
    }
}

impl ReadAt for Counted {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.bytes.read_exact_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }
}

fn params(size: usize, salt: &[u8]) -> VerityParams {
    VerityParams::builder()
        .data_blocks_for(size as u64)
        .salt(salt.to_vec())
        .build()
        .unwrap()
}

/// An "old" image: seeded blocks, a zero stretch, some repeated blocks.
fn old_image(blocks: usize) -> Vec<u8> {
    let mut img = seeded_bytes(7, blocks * BS);
    img[10 * BS..40 * BS].fill(0);
    let (a, b) = img.split_at_mut(60 * BS);
    b[..BS].copy_from_slice(&a[50 * BS..51 * BS]);
    img
}

/// The next version: blocks changed in two places, a file's blocks moved, zeros written,
/// new data where there were zeros.
fn new_image(old: &[u8], seed: u64) -> Vec<u8> {
    let mut img = old.to_vec();
    let n = old.len() / BS;
    img[100 * BS..108 * BS].copy_from_slice(&seeded_bytes(seed, 8 * BS));
    img[(n - 20) * BS..(n - 19) * BS].copy_from_slice(&seeded_bytes(seed + 1, BS));
    // Blocks 200..230 moved to 300..330 (a rewritten file placed elsewhere).
    let moved = old[200 * BS..230 * BS].to_vec();
    img[300 * BS..330 * BS].copy_from_slice(&moved);
    img[200 * BS..230 * BS].fill(0);
    img[20 * BS..24 * BS].copy_from_slice(&seeded_bytes(seed + 2, 4 * BS));
    img
}

fn publish(image: &[u8], key: &SigningKey, version: &str, salt: &[u8]) -> Vec<u8> {
    let mut out = io::Cursor::new(Vec::new());
    let opts = PublishOptions::new("acme", version, params(image.len(), salt));
    let p = publish_store(image, &mut out, key, &opts).unwrap();
    let bytes = out.into_inner();
    assert_eq!(p.size, bytes.len() as u64);
    bytes
}

fn ring(key: &SigningKey) -> Keyring {
    let mut r = Keyring::new();
    r.add(key.public_key().clone()).unwrap();
    r
}

#[test]
fn an_older_image_fetches_only_the_runs_it_lacks() {
    let key = SigningKey::generate().unwrap();
    let old = old_image(1024);
    let new = new_image(&old, 11);
    let store = Counted::new(publish(&new, &key, "2.0", b"salt"));
    let keys = ring(&key);
    let opts = StoreOptions::new(
        ApplyOptions::new(&keys, VersionCheck::Installed("1.0")).compatible("acme"),
    );
    let s = StoreSession::open(&store, &opts).unwrap();
    assert_eq!(
        store.requests.load(Ordering::Relaxed),
        3,
        "header, index, leaves"
    );
    let seeds = [Seed {
        image: &old,
        tree: None,
    }];
    let plan = s.plan(&seeds, &opts).unwrap();
    // 8 + 1 + 4 changed blocks, in runs of 4 fetched whole (the moved file and the zeros
    // are local, and so are the other blocks of those runs); the two runs of the 8
    // blocks side by side are one range.
    assert_eq!(plan.fetched_blocks, 13, "{plan:?}");
    assert_eq!(plan.ranges.len(), 3, "{plan:?}");
    let mut target = vec![0xa5u8; new.len()];
    let before = store.read.load(Ordering::Relaxed);
    let done = s.install(&seeds, &mut target, &opts).unwrap();
    assert!(target == new, "the installed image differs");
    let fetched = store.read.load(Ordering::Relaxed) - before;
    assert_eq!(fetched, plan.fetch_bytes);
    assert_eq!(done.requests, 6);
    assert_eq!(
        done.tree.root_hash(),
        HashTree::build(&params(new.len(), b"salt"), &new)
            .unwrap()
            .root_hash()
    );
    // Far less than the store: only the changed runs' frames.
    assert!(
        fetched * 20 < store.bytes.len() as u64,
        "{fetched} of {}",
        store.bytes.len()
    );
}

#[test]
fn a_seed_with_its_tree_is_not_read_to_be_indexed() {
    struct Reads<'a>(&'a [u8], AtomicU64);
    impl ReadAt for Reads<'_> {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.1.fetch_add(buf.len() as u64, Ordering::Relaxed);
            self.0.read_exact_at(buf, offset)
        }
        fn size(&self) -> io::Result<u64> {
            Ok(self.0.len() as u64)
        }
    }
    let key = SigningKey::generate().unwrap();
    let old = old_image(512);
    let new = new_image(&old, 5);
    let store = Counted::new(publish(&new, &key, "2.0", b"salt"));
    let keys = ring(&key);
    let opts = StoreOptions::new(ApplyOptions::new(&keys, VersionCheck::Unchecked));
    let s = StoreSession::open(&store, &opts).unwrap();
    let old_tree = HashTree::build(&params(old.len(), b"salt"), &old).unwrap();
    let seed = Reads(&old, AtomicU64::new(0));
    let seeds = [Seed {
        image: &seed,
        tree: Some(&old_tree),
    }];
    let mut target = vec![0u8; new.len()];
    let done = s.install(&seeds, &mut target, &opts).unwrap();
    assert!(target == new);
    // Only the blocks copied were read, each once.
    assert_eq!(
        seed.1.load(Ordering::Relaxed),
        done.plan.from_seed * BS as u64
    );
    // A tree with another salt is no index of this image's leaves: the seed is hashed.
    let other = HashTree::build(&params(old.len(), b"other"), &old).unwrap();
    let seed = Reads(&old, AtomicU64::new(0));
    let seeds = [Seed {
        image: &seed,
        tree: Some(&other),
    }];
    let mut again = vec![0u8; new.len()];
    let d2 = s.install(&seeds, &mut again, &opts).unwrap();
    assert!(again == new);
    assert_eq!(d2.plan.from_seed, done.plan.from_seed);
    assert_eq!(
        seed.1.load(Ordering::Relaxed),
        (old.len() + BS * done.plan.from_seed as usize) as u64
    );
}

#[test]
fn the_targets_own_blocks_stay_in_place_and_duplicates_are_copied() {
    let key = SigningKey::generate().unwrap();
    let v1 = old_image(512);
    let v2 = new_image(&v1, 21);
    let v3 = new_image(&v2, 31);
    let store = Counted::new(publish(&v3, &key, "3.0", b"s"));
    let keys = ring(&key);
    // The booted slot holds v2; the target slot still holds v1 with its tree.
    let v1_tree = HashTree::build(&params(v1.len(), b"s"), &v1).unwrap();
    let opts = StoreOptions::new(ApplyOptions::new(&keys, VersionCheck::Installed("2.0")))
        .target_tree(&v1_tree);
    let s = StoreSession::open(&store, &opts).unwrap();
    let seeds = [Seed {
        image: &v2,
        tree: None,
    }];
    let mut target = v1.clone();
    let done = s.install(&seeds, &mut target, &opts).unwrap();
    assert!(target == v3);
    assert!(done.plan.in_place > 400, "{:?}", done.plan);
    // Written: only what differs from v1.
    let differ = (0..v3.len() / BS)
        .filter(|b| v1[b * BS..(b + 1) * BS] != v3[b * BS..(b + 1) * BS])
        .count() as u64;
    assert_eq!(done.written_blocks, differ, "{:?}", done.plan);
    // Block 60 repeats block 50 in every version: where neither seed has it, it is
    // copied from the target once block 50 is there (a store of an image with repeats).
    let mut img = seeded_bytes(3, 64 * BS);
    let first = img[5 * BS..6 * BS].to_vec();
    img[40 * BS..41 * BS].copy_from_slice(&first);
    let store = Counted::new(publish(&img, &key, "3.0", b"s"));
    let s = StoreSession::open(
        &store,
        &StoreOptions::new(ApplyOptions::new(&keys, VersionCheck::Unchecked)),
    )
    .unwrap();
    let mut t = vec![0u8; img.len()];
    let d = s
        .install(
            &[],
            &mut t,
            &StoreOptions::new(ApplyOptions::new(&keys, VersionCheck::Unchecked)),
        )
        .unwrap();
    assert!(t == img);
    assert_eq!(d.plan.duplicate, 1, "block 40 is block 5 again");
    assert_eq!(d.plan.fetched_blocks, 63);
    // A seed holding everything but blocks 5 and 40 (equal): block 5's run is fetched,
    // block 40 is copied from it on the target.
    let opts = StoreOptions::new(ApplyOptions::new(&keys, VersionCheck::Unchecked));
    let mut seed = img.clone();
    seed[5 * BS..6 * BS].fill(0xee);
    seed[40 * BS..41 * BS].fill(0xdd);
    let mut t = vec![0u8; img.len()];
    let d = s
        .install(
            &[Seed {
                image: &seed,
                tree: None,
            }],
            &mut t,
            &opts,
        )
        .unwrap();
    assert!(t == img);
    assert_eq!(
        (d.plan.from_seed, d.plan.duplicate, d.plan.fetched_blocks),
        (62, 1, 1),
        "{:?}",
        d.plan
    );
}

#[test]
fn a_seed_that_changed_after_the_plan_costs_a_fetch_not_a_wrong_block() {
    struct Flaky<'a>(&'a [u8], AtomicBool);
    impl ReadAt for Flaky<'_> {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.0.read_exact_at(buf, offset)?;
            if self.1.load(Ordering::Relaxed) && offset == 200 * BS as u64 {
                buf[0] ^= 1;
            }
            Ok(())
        }
        fn size(&self) -> io::Result<u64> {
            Ok(self.0.len() as u64)
        }
    }
    let key = SigningKey::generate().unwrap();
    let old = old_image(512);
    let new = new_image(&old, 9);
    let store = Counted::new(publish(&new, &key, "2.0", b"x"));
    let keys = ring(&key);
    let opts = StoreOptions::new(ApplyOptions::new(&keys, VersionCheck::Unchecked));
    let s = StoreSession::open(&store, &opts).unwrap();
    let old_tree = HashTree::build(&params(old.len(), b"x"), &old).unwrap();
    let seed = Flaky(&old, AtomicBool::new(true));
    let seeds = [Seed {
        image: &seed,
        tree: Some(&old_tree),
    }];
    let plan = s.plan(&seeds, &opts).unwrap();
    assert!(
        plan.from_seed >= 30,
        "new blocks 300..330 are the seed's 200..230: {plan:?}"
    );
    let mut target = vec![0u8; new.len()];
    let done = s.install(&seeds, &mut target, &opts).unwrap();
    assert!(target == new);
    assert_eq!(
        done.requests,
        plan.requests_so_far + plan.ranges.len() as u64 + 1,
        "one more range for the run whose seed block changed"
    );
}

#[test]
fn a_tampered_store_is_refused_before_a_wrong_block_is_written() {
    let key = SigningKey::generate().unwrap();
    let new = old_image(256);
    let good = publish(&new, &key, "2.0", b"t");
    let keys = ring(&key);
    let opts = StoreOptions::new(ApplyOptions::new(&keys, VersionCheck::Unchecked));
    let open = |bytes: Vec<u8>| -> Result<(), Error> {
        let store = Counted::new(bytes);
        let s = StoreSession::open(&store, &opts)?;
        let mut t = vec![0u8; new.len()];
        s.install(&[], &mut t, &opts)?;
        assert!(t == new);
        Ok(())
    };
    open(good.clone()).unwrap();
    let index_len = u64::from_le_bytes(good[16..24].try_into().unwrap()) as usize;
    // A byte of the index: the signature fails.
    let mut b = good.clone();
    b[64 + 20] ^= 1;
    assert!(matches!(open(b), Err(Error::BadSignature)));
    // Another key.
    let other = SigningKey::generate().unwrap();
    assert!(matches!(
        open(publish(&new, &other, "2.0", b"t")),
        Err(Error::UntrustedKey { .. })
    ));
    // A byte of the leaves' frame or of a run's frame: refused, named.
    let data = 64 + index_len + 64;
    for at in [data + 10, good.len() - 5] {
        let mut b = good.clone();
        b[at] ^= 0x40;
        let e = open(b).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("leaf level") || msg.contains("run") || msg.contains("root"),
            "{msg}"
        );
    }
    // Truncated anywhere: an error, never a panic.
    for cut in [0, 10, 64, 100, data, good.len() - 1] {
        assert!(open(good[..cut].to_vec()).is_err(), "cut at {cut}");
    }
    // Garbage of every kind in the header: named fields.
    let mut b = good.clone();
    b[..8].copy_from_slice(b"KEELPAYL");
    assert!(open(b)
        .unwrap_err()
        .to_string()
        .contains("field magic at byte 0 of the block store"));
    let mut b = good.clone();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(open(b).unwrap_err().to_string().contains("index length"));
}

#[test]
fn versions_and_systems_are_checked_before_anything_is_fetched_past_the_index() {
    let key = SigningKey::generate().unwrap();
    let img = old_image(128);
    let store = Counted::new(publish(&img, &key, "2.0", b""));
    let keys = ring(&key);
    let down = StoreOptions::new(ApplyOptions::new(&keys, VersionCheck::Installed("3.0")));
    assert!(matches!(
        StoreSession::open(&store, &down),
        Err(Error::Downgrade { .. })
    ));
    let other =
        StoreOptions::new(ApplyOptions::new(&keys, VersionCheck::Unchecked).compatible("other"));
    assert!(matches!(
        StoreSession::open(&store, &other),
        Err(Error::Incompatible { .. })
    ));
    assert_eq!(
        store.requests.load(Ordering::Relaxed),
        4,
        "header and index, twice"
    );
}

#[test]
fn a_cut_install_resumes_where_its_record_says_and_checks_those_blocks() {
    struct CancelAt(u64, AtomicBool);
    impl Progress for CancelAt {
        fn progress(&self, done: u64, _: u64) {
            if done >= self.0 {
                self.1.store(true, Ordering::Relaxed);
            }
        }
        fn cancelled(&self) -> bool {
            self.1.load(Ordering::Relaxed)
        }
    }
    let key = SigningKey::generate().unwrap();
    let img = seeded_bytes(77, 2048 * BS);
    let store = Counted::new(publish(&img, &key, "2.0", b"r"));
    let keys = ring(&key);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("store.resume");
    let cancel = CancelAt(5 << 20, AtomicBool::new(false));
    let opts = StoreOptions::new(
        ApplyOptions::new(&keys, VersionCheck::Unchecked)
            .state(&state)
            .checkpoint_bytes(1 << 20)
            .progress(&cancel),
    );
    let s = StoreSession::open(&store, &opts).unwrap();
    let mut target = vec![0u8; img.len()];
    assert!(matches!(
        s.install(&[], &mut target, &opts),
        Err(Error::Cancelled)
    ));
    assert!(state.exists());
    let opts = StoreOptions::new(ApplyOptions::new(&keys, VersionCheck::Unchecked).state(&state));
    let plan = s.plan(&[], &opts).unwrap();
    assert_eq!(
        plan.in_place, 1280,
        "the record vouches for the first 5 MiB: {plan:?}"
    );
    let done = s.install(&[], &mut target, &opts).unwrap();
    assert!(target == img);
    assert!(
        !state.exists(),
        "the record is removed once the install is done"
    );
    assert_eq!(done.plan.in_place, 1280);
    // A record whose blocks are not on the target any more: they are fetched again.
    let mut damaged = target.clone();
    damaged[100 * BS] ^= 1;
    std::fs::write(&state, b"not a record").unwrap();
    let plan = s.plan(&[], &opts).unwrap();
    assert_eq!(plan.in_place, 0, "a damaged record vouches for nothing");
    let done = s.install(&[], &mut damaged, &opts).unwrap();
    assert!(damaged == img);
    assert_eq!(done.plan.fetched_blocks, 2048);
}

/// An image whose content moved by a few bytes (as squashfs packs files back to back):
/// no block of it is where a block of the old one was, and a store cut by content still
/// finds nearly everything in the old image. A seed whose bytes changed after the plan
/// costs fetches, never a wrong block.
#[test]
fn content_cut_runs_find_bytes_that_moved_off_block_boundaries() {
    use keel_payload::store::Cdc;
    let key = SigningKey::generate().unwrap();
    let old = seeded_bytes(91, 1024 * BS);
    let mut new = Vec::with_capacity(old.len());
    new.extend_from_slice(&seeded_bytes(92, 1234));
    new.extend_from_slice(&old[..600 * BS]);
    new.extend_from_slice(&seeded_bytes(93, 5000));
    new.extend_from_slice(&old[600 * BS..]);
    new.truncate(old.len());
    let publish_with = |chunking: Option<Cdc>| {
        let mut out = io::Cursor::new(Vec::new());
        let opts = PublishOptions::new("acme", "2.0", params(new.len(), b"c")).chunking(chunking);
        publish_store(&new[..], &mut out, &key, &opts).unwrap();
        Counted::new(out.into_inner())
    };
    let keys = ring(&key);
    let opts = StoreOptions::new(ApplyOptions::new(&keys, VersionCheck::Unchecked));
    let seeds = [Seed {
        image: &old,
        tree: None,
    }];
    // Whole blocks: nothing matches, everything is fetched.
    let blocks = publish_with(None);
    let s = StoreSession::open(&blocks, &opts).unwrap();
    let plan = s.plan(&seeds, &opts).unwrap();
    assert!(plan.fetched_blocks >= 1020, "{plan:?}");
    // Cut by content: all but the runs around the two new stretches come from the seed.
    let content = publish_with(Some(Cdc::DEFAULT));
    let s = StoreSession::open(&content, &opts).unwrap();
    assert_eq!(s.index().chunking, Some(Cdc::DEFAULT));
    let plan = s.plan(&seeds, &opts).unwrap();
    assert!(plan.from_seed_runs > 900, "{plan:?}");
    assert!(plan.fetch_bytes < 300_000, "{plan:?}");
    let mut target = vec![0u8; new.len()];
    let done = s.install(&seeds, &mut target, &opts).unwrap();
    assert!(target == new, "the installed image differs");
    assert_eq!(done.plan.from_seed_runs, plan.from_seed_runs);

    // The seed changed after the plan at one spot: those blocks are fetched instead.
    struct Changed<'a>(&'a [u8]);
    impl ReadAt for Changed<'_> {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.0.read_exact_at(buf, offset)?;
            let spot = 300 * BS as u64;
            if offset <= spot && spot < offset + buf.len() as u64 {
                buf[(spot - offset) as usize] ^= 0x55;
            }
            Ok(())
        }
        fn size(&self) -> io::Result<u64> {
            Ok(self.0.len() as u64)
        }
    }
    let changed = Changed(&old);
    let seeds = [Seed {
        image: &changed,
        tree: None,
    }];
    let mut target = vec![0u8; new.len()];
    let again = s.install(&seeds, &mut target, &opts).unwrap();
    assert!(target == new, "the installed image differs");
    assert!(again.requests > done.requests, "{again:?}");
}

#[test]
fn a_squashfs_image_is_cut_by_content_by_default() {
    let key = SigningKey::generate().unwrap();
    let mut img = seeded_bytes(5, 64 * BS);
    img[..4].copy_from_slice(b"hsqs");
    let s = publish(&img, &key, "2.0", b"q");
    let keys = ring(&key);
    let store = Counted::new(s);
    let opts = StoreOptions::new(ApplyOptions::new(&keys, VersionCheck::Unchecked));
    let s = StoreSession::open(&store, &opts).unwrap();
    assert!(s.index().chunking.is_some());
    let mut t = vec![0u8; img.len()];
    s.install(&[], &mut t, &opts).unwrap();
    assert!(t == img);
}

/// `store` with its index changed by `edit` (header, index bytes, data) and signed again
/// with `key`: a hostile or buggy publisher's store.
fn resigned(
    store: &[u8],
    key: &SigningKey,
    edit: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>, &mut Vec<u8>),
) -> Vec<u8> {
    use keel_verity::{Context, Signer};
    let m = u64::from_le_bytes(store[16..24].try_into().unwrap()) as usize;
    let mut header = store[..64].to_vec();
    let mut index = store[64..64 + m].to_vec();
    let mut data = store[64 + m + 64..].to_vec();
    edit(&mut header, &mut index, &mut data);
    header[16..24].copy_from_slice(&(index.len() as u64).to_le_bytes());
    header[24..32].copy_from_slice(&(data.len() as u64).to_le_bytes());
    let mut signed = [header, index].concat();
    let sig = key.sign(Context::Payload, &signed).unwrap();
    signed.extend_from_slice(&sig);
    signed.extend_from_slice(&data);
    signed
}

/// A signed store that lies (a run of data said to be zeros, an image of 8 TiB) is
/// refused, never installed as if it were right; a store by a key not trusted costs one
/// request (its index is not fetched); a resume record's path holding something else is
/// never replaced or removed.
#[test]
fn lies_in_a_signed_store_and_paths_that_are_not_records_are_refused() {
    let key = SigningKey::generate().unwrap();
    let img = seeded_bytes(61, 256 * BS);
    let good = publish(&img, &key, "2.0", b"z");
    let keys = ring(&key);
    let opts = StoreOptions::new(ApplyOptions::new(&keys, VersionCheck::Unchecked));
    // The last run (block runs: 9 bytes at the index's end) said to be ZERO, its data cut.
    let m = u64::from_le_bytes(good[16..24].try_into().unwrap()) as usize;
    let last_len = u32::from_le_bytes(good[64 + m - 9..64 + m - 5].try_into().unwrap()) as usize;
    let last = 256 - last_len / BS;
    assert!(last < 256);
    let lie = resigned(&good, &key, |_, index, data| {
        let n = index.len();
        let stored = u32::from_le_bytes(index[n - 4..].try_into().unwrap()) as usize;
        index[n - 5] = 0;
        index[n - 4..].fill(0);
        data.truncate(data.len() - stored);
    });
    let store = Counted::new(lie);
    let s = StoreSession::open(&store, &opts).unwrap();
    let mut t = vec![0xa5u8; img.len()];
    let e = s.install(&[], &mut t, &opts).unwrap_err();
    assert!(
        e.to_string().contains("does not match its dm-verity leaf"),
        "{e}"
    );
    assert!(
        t[last * BS..].iter().all(|&b| b == 0xa5),
        "a block the leaves refuse was written"
    );
    assert!(t[..last * BS] == img[..last * BS]);
    // An image of 8 TiB: refused by its size, before anything is allocated for it.
    let huge = resigned(&good, &key, |_, index, _| {
        index[4..12].copy_from_slice(&(8u64 << 40).to_le_bytes());
    });
    let e = StoreSession::open(&Counted::new(huge), &opts).unwrap_err();
    assert!(e.to_string().contains("image size"), "{e}");
    // A leaf level's frame said to be far longer than its level could compress to.
    let padded = resigned(&good, &key, |_, index, _| {
        let at = 4 + 8 + 32 + 2 + 396 + 2 + 4 + 2 + 3 + 8;
        index[at..at + 4].copy_from_slice(&(512u32 << 20).to_le_bytes());
    });
    let e = StoreSession::open(&Counted::new(padded), &opts).unwrap_err();
    assert!(e.to_string().contains("leaf level stored length"), "{e}");
    // A content-cut store whose runs are shorter than its chunking's minimum (which would
    // let an index hold millions of one-byte runs): refused by the index.
    let mut out = io::Cursor::new(Vec::new());
    let copts = PublishOptions::new("acme", "2.0", params(img.len(), b"z"))
        .chunking(Some(keel_payload::store::Cdc::DEFAULT));
    publish_store(&img[..], &mut out, &key, &copts).unwrap();
    let content = out.into_inner();
    StoreSession::open(&Counted::new(content.clone()), &opts).unwrap();
    let short = resigned(&content, &key, |_, index, _| {
        let at = 4 + 8 + 32 + 2 + 396 + 2 + 4 + 2 + 3 + 8 + 4;
        assert_eq!(index[at], 1, "content chunking");
        index[at + 1..at + 5].copy_from_slice(&(1u32 << 20).to_le_bytes());
        index[at + 9..at + 13].copy_from_slice(&(4u32 << 20).to_le_bytes());
    });
    let e = StoreSession::open(&Counted::new(short), &opts).unwrap_err();
    assert!(
        e.to_string()
            .contains("shorter than the chunking's minimum"),
        "{e}"
    );
    // Another key's store: refused after its 64-byte header.
    let other = SigningKey::generate().unwrap();
    let store = Counted::new(publish(&img, &other, "2.0", b"z"));
    assert!(matches!(
        StoreSession::open(&store, &opts),
        Err(Error::UntrustedKey { .. })
    ));
    assert_eq!(store.requests.load(Ordering::Relaxed), 1);

    // The resume record's path holds an image: the install refuses to replace it at its
    // first checkpoint and leaves it as it was.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("not-a-record");
    std::fs::write(&state, &img[..BS * 2]).unwrap();
    let opts = StoreOptions::new(
        ApplyOptions::new(&keys, VersionCheck::Unchecked)
            .state(&state)
            .checkpoint_bytes(BS as u64 * 16),
    );
    let store = Counted::new(good);
    let s = StoreSession::open(&store, &opts).unwrap();
    let mut t = vec![0u8; img.len()];
    let e = s.install(&[], &mut t, &opts).unwrap_err();
    assert!(e.to_string().contains("not a store resume record"), "{e}");
    assert!(std::fs::read(&state).unwrap() == img[..BS * 2]);
    // Nor a file of a record's size that is not a record.
    std::fs::write(&state, [7u8; 88]).unwrap();
    let e = s.install(&[], &mut t, &opts).unwrap_err();
    assert!(e.to_string().contains("not a store resume record"), "{e}");
    assert_eq!(std::fs::read(&state).unwrap(), [7u8; 88]);
    // Without it, the checkpoints write the record and the finished install removes it.
    std::fs::remove_file(&state).unwrap();
    s.install(&[], &mut t, &opts).unwrap();
    assert!(t == img);
    assert!(!state.exists());
}

/// The FEC parity asked for is computed from the blocks as they are written or found in
/// place, and is what `fec_encode` gives from the finished image and tree, with the
/// target never read for it (in place blocks are read once, to be checked).
#[test]
fn the_parity_comes_from_the_blocks_as_they_are_written() {
    use keel_verity::{fec_encode, BuildOptions, FecGeometry, TreeGeometry};
    struct Reads(Vec<u8>, AtomicU64);
    impl ReadAt for Reads {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.1.fetch_add(buf.len() as u64, Ordering::Relaxed);
            self.0.read_exact_at(buf, offset)
        }
        fn size(&self) -> io::Result<u64> {
            Ok(self.0.len() as u64)
        }
    }
    impl keel_verity::WriteAt for Reads {
        fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.0.write_all_at(buf, offset)
        }
    }
    let key = SigningKey::generate().unwrap();
    let old = old_image(512);
    let new = new_image(&old, 44);
    let p = params(new.len(), b"f");
    let tree = TreeGeometry::new(&p, 0, false).unwrap();
    let g = FecGeometry::separate(&p, &tree, 2, tree.hash_device_size(), 0).unwrap();
    let hash = HashTree::build(&p, &new).unwrap().as_bytes().to_vec();
    let mut want = Vec::new();
    fec_encode(&g, &new, &hash, &mut want, &BuildOptions::default()).unwrap();
    let store = Counted::new(publish(&new, &key, "2.0", b"f"));
    let keys = ring(&key);
    // The target holds the old version, its tree the hint: most blocks stay in place.
    let old_tree = HashTree::build(&params(old.len(), b"f"), &old).unwrap();
    let opts = StoreOptions::new(ApplyOptions::new(&keys, VersionCheck::Unchecked))
        .target_tree(&old_tree)
        .parity(&g);
    let s = StoreSession::open(&store, &opts).unwrap();
    let seeds = [Seed {
        image: &old,
        tree: None,
    }];
    let mut target = Reads(old.clone(), AtomicU64::new(0));
    let done = s.install(&seeds, &mut target, &opts).unwrap();
    assert!(target.0 == new);
    let mut got = Vec::new();
    done.parity.unwrap().write_to(&mut got).unwrap();
    assert!(got == want, "the parity differs from fec_encode's");
    assert_eq!(
        target.1.load(Ordering::Relaxed),
        done.plan.in_place * BS as u64,
        "the target was read for more than the in-place check: {:?}",
        done.plan
    );
}

/// Words from a seeded vocabulary: compressible, as a file's text is.
fn words(seed: u64, len: usize) -> Vec<u8> {
    let vocab: Vec<Vec<u8>> = (0..400u64)
        .map(|i| seeded_bytes(seed * 1000 + i, 3 + (i % 9) as usize))
        .map(|w| w.iter().map(|b| b'a' + b % 26).collect())
        .collect();
    let pick = seeded_bytes(seed, len);
    let mut out = Vec::with_capacity(len + 16);
    for p in pick.chunks(2) {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(&vocab[(usize::from(p[0]) * 7 + usize::from(p[1])) % vocab.len()]);
        out.push(if p[0] % 13 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// Machine code, as far as a compressor sees it: a few instruction patterns and calls
/// (`e8` and a displacement) to a few functions, whose displacements all differ where
/// their targets repeat (what the x86 branch filter undoes).
fn code(seed: u64, len: usize) -> Vec<u8> {
    let patterns: Vec<Vec<u8>> = (0..24u64)
        .map(|i| seeded_bytes(seed * 100 + i, 2 + (i % 6) as usize))
        .map(|mut p| {
            p[0] = [0x48, 0x89, 0x8b, 0x0f, 0x41, 0xc3][p[0] as usize % 6];
            p
        })
        .collect();
    let targets: Vec<u32> = seeded_bytes(seed + 7, 64)
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()) % (len as u32).max(1))
        .collect();
    let pick = seeded_bytes(seed, len);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        let r = pick[i % pick.len()] as usize;
        i += 1;
        if r.is_multiple_of(4) {
            let at = out.len() as u32 + 5;
            out.push(0xe8);
            out.extend_from_slice(
                &targets[r / 4 % targets.len()]
                    .wrapping_sub(at)
                    .to_le_bytes(),
            );
        } else {
            out.extend_from_slice(&patterns[r % patterns.len()]);
        }
    }
    out.truncate(len);
    out
}

/// A file system image's runs follow its files: each file longer than a run has runs of
/// its own (a changed file is fetched as its runs, whole, with the file's context to
/// compress in), the other blocks are cut as before; runs where LZMA2 beats zstd are XZ,
/// which makes a format version 2 store. A device installs it bit for bit, fetching
/// fewer bytes than from the same image's store cut at fixed runs; a store without XZ
/// stays version 1 (older installers read it); a version 1 header over an XZ run is
/// refused.
#[test]
fn runs_follow_files_and_are_lzma2_where_that_is_smaller() {
    use keel_payload::store::{file_extents, FILE_RUN_BLOCKS};
    let dir = tempfile::tempdir().unwrap();
    let tree = |name: &str, big_seed: u64, small_seed: u64| {
        let root = dir.path().join(name);
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        // Two large files, one of them changed in the new tree; small files around them.
        std::fs::write(root.join("usr/lib/libbig.so"), code(big_seed, 1_500_000)).unwrap();
        std::fs::write(root.join("usr/lib/libsame.so"), words(5, 700_000)).unwrap();
        for i in 0..40u64 {
            let seed = if i == 7 { small_seed } else { 100 + i };
            std::fs::write(root.join(format!("usr/lib/f{i}")), words(seed, 3000)).unwrap();
        }
        root
    };
    let (a, b) = (tree("a", 1, 2), tree("b", 3, 4));
    let mut images = Vec::new();
    let at = |name: &str| dir.path().join(name);
    if let Some(old) = keel_testsupport::mkfs_ext4(&a, &at("a.ext4"), "16M") {
        let new = keel_testsupport::mkfs_ext4(&b, &at("b.ext4"), "16M").unwrap();
        images.push(("ext4", old, new));
    }
    if let Some(old) = keel_testsupport::mkfs_erofs(&a, &at("a.erofs"), &[]) {
        let new = keel_testsupport::mkfs_erofs(&b, &at("b.erofs"), &[]).unwrap();
        images.push(("erofs", old, new));
    }
    let key = SigningKey::generate().unwrap();
    let keys = ring(&key);
    let opts = StoreOptions::new(ApplyOptions::new(&keys, VersionCheck::Unchecked));
    for (fs, old, new) in images {
        let files = file_extents(&new);
        let big = files.iter().filter(|&&(_, n)| n > 100).count();
        assert_eq!(big, 2, "{fs}: the two large files' extents: {files:?}");
        let make = |o: PublishOptions| {
            let mut out = io::Cursor::new(Vec::new());
            publish_store(&new[..], &mut out, &key, &o).unwrap();
            out.into_inner()
        };
        let base = PublishOptions::new("acme", "2.0", params(new.len(), b"f"));
        let following = make(base.clone().files_of(&new));
        let fixed = make(base.clone());
        let zstd_only = make(base.clone().files_of(&new).xz(false));
        assert_eq!(following[8], 2, "{fs}: XZ runs make a version 2 store");
        assert_eq!(zstd_only[8], 1, "{fs}: without XZ runs, version 1");
        let mut fetched = Vec::new();
        for (what, bytes) in [
            ("files", &following),
            ("fixed", &fixed),
            ("zstd", &zstd_only),
        ] {
            let store = Counted::new(bytes.clone());
            let s = StoreSession::open(&store, &opts).unwrap();
            // Every followed file's blocks lie in runs of their own, of at most
            // FILE_RUN_BLOCKS, and no run crosses into or out of one.
            if what != "fixed" {
                for &(start, n) in files.iter().filter(|&&(_, n)| n > 2) {
                    let (s0, e0) = (start * BS as u64, (start + n) * BS as u64);
                    for r in &s.index().runs {
                        let (rs, re) = (r.start, r.start + u64::from(r.len));
                        if re <= s0 || rs >= e0 || r.kind == keel_payload::store::RunKind::Zero {
                            continue;
                        }
                        assert!(
                            rs >= s0 && re <= e0 && u64::from(r.len) <= FILE_RUN_BLOCKS * BS as u64,
                            "{fs} {what}: run {rs}..{re} crosses file blocks {s0}..{e0}"
                        );
                    }
                }
            }
            let xz = s
                .index()
                .runs
                .iter()
                .filter(|r| r.kind == keel_payload::store::RunKind::Xz)
                .count();
            assert_eq!(xz > 0, what == "files", "{fs} {what}: {xz} XZ runs");
            let before = store.read.load(Ordering::Relaxed);
            let mut t = vec![0u8; new.len()];
            let seeds = [Seed {
                image: &old,
                tree: None,
            }];
            s.install(&seeds, &mut t, &opts).unwrap();
            assert!(t == new, "{fs} {what}: the image bit for bit");
            fetched.push(store.read.load(Ordering::Relaxed) - before);
        }
        assert!(
            fetched[0] < fetched[1] && fetched[0] < fetched[2],
            "{fs}: following files with LZMA2 fetches less: {fetched:?} (files, fixed, zstd only)"
        );
        // A version 1 header over the same index: its XZ runs are not read as anything.
        let v1 = resigned(&following, &key, |header, _, _| header[8] = 1);
        let e = StoreSession::open(&Counted::new(v1), &opts).unwrap_err();
        assert!(e.to_string().contains("in format version 1"), "{fs}: {e}");
    }
}
