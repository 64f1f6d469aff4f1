//! A payload with a signed dm-verity root: the apply builds the image's tree (and the FEC
//! parity asked for) from the blocks as it writes them, checks the tree against the signed
//! root without reading the target back, reads after a resume exactly what the earlier
//! run wrote (once, for the resume check and the tree together), and refuses an image whose tree is not the signed one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use keel_payload::{
    generate, ApplyOptions, Error, GenerateOptions, Payload, TargetCheck, VersionCheck,
};
use keel_testsupport::seeded_bytes;
use keel_verity::{
    fec_encode, BuildOptions, FecGeometry, HashTree, Keyring, Progress, ReadAt, RootDescriptor,
    SigningKey, TreeGeometry, VerityParams, WriteAt,
};

const MIB: usize = 1 << 20;

/// A target in memory that counts the bytes read from it.
struct Target {
    disk: Vec<u8>,
    read: AtomicU64,
}

impl Target {
    fn new(size: usize) -> Self {
        Target {
            disk: vec![0u8; size],
            read: AtomicU64::new(0),
        }
    }
    fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

impl ReadAt for Target {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.disk.read_exact_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.disk.len() as u64)
    }
}

impl WriteAt for Target {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.disk.write_all_at(buf, offset)
    }
}

/// Version 1 and version 2 of an image: random blocks, zero runs, and in version 2 some
/// blocks rewritten and a run moved.
fn images() -> (Vec<u8>, Vec<u8>) {
    let mut v1 = seeded_bytes(1, 6 * MIB);
    v1[MIB..MIB + 300 * 4096].fill(0);
    let mut v2 = v1.clone();
    v2[3 * MIB..3 * MIB + 64 * 4096].copy_from_slice(&seeded_bytes(2, 64 * 4096));
    v2.copy_within(4 * MIB..4 * MIB + 40 * 4096, 5 * MIB);
    v2[2 * MIB..2 * MIB + 7 * 4096].fill(0);
    (v1, v2)
}

fn params(image: &[u8]) -> VerityParams {
    VerityParams::builder()
        .salt(seeded_bytes(3, 32))
        .data_blocks(image.len() as u64 / 4096)
        .build()
        .unwrap()
}

fn descriptor(image: &[u8]) -> RootDescriptor {
    let p = params(image);
    let root = HashTree::build(&p, image).unwrap().root_hash().to_vec();
    RootDescriptor::new(p, &root).unwrap()
}

/// The parity after the tree, as the update lays it out, and its bytes as `fec_encode`
/// computes them from the finished image and tree.
fn parity(image: &[u8]) -> (FecGeometry, Vec<u8>) {
    let p = params(image);
    let tree = TreeGeometry::new(&p, 0, false).unwrap();
    let g = FecGeometry::separate(&p, &tree, 2, tree.hash_device_size(), 0).unwrap();
    let hash = HashTree::build(&p, image).unwrap().as_bytes().to_vec();
    let mut out = Vec::new();
    fec_encode(&g, image, &hash, &mut out, &BuildOptions::default()).unwrap();
    (g, out)
}

fn ring(key: &SigningKey) -> Keyring {
    let mut r = Keyring::new();
    r.add(key.public_key().clone()).unwrap();
    r
}

fn payload(key: &SigningKey, source: Option<&[u8]>, target: &[u8], d: RootDescriptor) -> Vec<u8> {
    let opts = GenerateOptions::new("acme-test", "2.0").level(3).verity(d);
    generate(source, target, key, &opts).unwrap()
}

#[test]
fn the_tree_and_parity_come_from_the_writes_and_nothing_is_read_back() {
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    let (v1, v2) = images();
    let (g, expected) = parity(&v2);
    for source in [None, Some(&v1[..])] {
        let p = payload(&key, source, &v2, descriptor(&v2));
        let mut t = Target::new(v2.len());
        let o = ApplyOptions::new(&r, VersionCheck::Unchecked).parity(&g);
        let applied = Payload::open(&p[..], &r)
            .unwrap()
            .apply(source, &mut t, &o)
            .unwrap();
        assert!(t.disk == v2);
        let v = applied.verity.expect("a signed root over the whole image");
        assert_eq!(v.read_back, 0);
        assert_eq!(v.tree, HashTree::build(&params(&v2), &v2[..]).unwrap());
        let mut got = Vec::new();
        v.parity
            .expect("parity asked for")
            .write_to(&mut got)
            .unwrap();
        assert!(got == expected, "parity from the writes");
        if source.is_none() {
            // A full payload reads nothing of the target: no digest pass, no tree pass.
            assert_eq!(t.read(), 0);
        }
    }
}

/// Cancels once `after` bytes are written.
struct StopAfter {
    after: u64,
    done: AtomicU64,
    stop: AtomicBool,
}

impl Progress for StopAfter {
    fn progress(&self, done: u64, _: u64) {
        self.done.store(done, Ordering::Relaxed);
        if done >= self.after {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
    fn cancelled(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

#[test]
fn a_resumed_apply_reads_what_the_first_run_wrote_once() {
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    let (_, v2) = images();
    let (g, expected) = parity(&v2);
    let p = payload(&key, None, &v2, descriptor(&v2));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let stop = StopAfter {
        after: 2 * MIB as u64,
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    };
    let mut t = Target::new(v2.len());
    let o = ApplyOptions::new(&r, VersionCheck::Unchecked)
        .state(&state)
        .checkpoint_bytes(256 << 10)
        .parity(&g);
    let e = Payload::open(&p[..], &r)
        .unwrap()
        .apply(None::<&[u8]>, &mut t, &o.progress(&stop))
        .unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e}");
    let written = stop.done.load(Ordering::Relaxed);
    assert!(written >= 2 * MIB as u64 && written < v2.len() as u64);

    let applied = Payload::open(&p[..], &r)
        .unwrap()
        .apply(None::<&[u8]>, &mut t, &o)
        .unwrap();
    assert!(applied.resumed_at > 0 && t.disk == v2);
    let v = applied.verity.unwrap();
    // The check of the resume point reads what the first run wrote, and the tree is built
    // from those same reads: nothing more is read back.
    assert_eq!(t.read(), written, "the first run's blocks, once");
    assert_eq!(v.read_back, 0);
    let mut got = Vec::new();
    v.parity.unwrap().write_to(&mut got).unwrap();
    assert!(got == expected, "parity after a resume");

    // Cut again, then a byte of what was written changes: the record is discarded and
    // the apply starts over; what the resume check saw is not counted twice.
    let mut t = Target::new(v2.len());
    stop.stop.store(false, Ordering::Relaxed);
    Payload::open(&p[..], &r)
        .unwrap()
        .apply(None::<&[u8]>, &mut t, &o.progress(&stop))
        .unwrap_err();
    t.disk[4096 * 3] ^= 1;
    let applied = Payload::open(&p[..], &r)
        .unwrap()
        .apply(None::<&[u8]>, &mut t, &o)
        .unwrap();
    assert!(applied.discarded.is_some() && applied.resumed_at == 0);
    assert!(t.disk == v2);
    let v = applied.verity.unwrap();
    let mut got = Vec::new();
    v.parity
        .expect("the parity of one write per block")
        .write_to(&mut got)
        .unwrap();
    assert!(got == expected && v.tree.root_hash() == descriptor(&v2).root_hash());
}

#[test]
fn an_image_whose_tree_is_not_the_signed_one_is_refused() {
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    let (v1, v2) = images();
    // Signed: version 1's root, same parameters; the payload builds version 2.
    let p = payload(&key, None, &v2, descriptor(&v1));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut t = Target::new(v2.len());
    let o = ApplyOptions::new(&r, VersionCheck::Unchecked).state(&state);
    let e = Payload::open(&p[..], &r)
        .unwrap()
        .apply(None::<&[u8]>, &mut t, &o)
        .unwrap_err();
    assert!(
        matches!(e, Error::TargetMismatch(TargetCheck::VerityRoot)),
        "{e}"
    );
    assert!(!state.exists(), "no resume point into a wrong image");
}
