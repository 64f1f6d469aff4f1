//! FEC against cryptsetup's veritysetup: Keel's parity is byte-identical to
//! `veritysetup format --fec-device`, veritysetup's verify counts the same repairable
//! errors in Keel's parity as Keel does, and Keel's repair restores exactly what was there
//! or reports what it cannot, never writing a wrong block.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use common::{run, run_ok, seeded_bytes, tool};
use keel_verity::{
    android_fec_header, fec_encode, fec_repair, fec_verify, format, format_with_fec, verify,
    AndroidFecHeader, BuildOptions, Error, FecGeometry, FormatOptions, ReadAt, RepairTarget,
    TreeGeometry, VerityParams,
};

fn salt() -> Vec<u8> {
    seeded_bytes(77, 32)
}

fn params(bs: u32, blocks: u64) -> VerityParams {
    VerityParams::builder()
        .data_block_size(bs)
        .hash_block_size(bs)
        .salt(salt())
        .data_blocks(blocks)
        .build()
        .unwrap()
}

fn root_of(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|r| r.trim().to_string())
        .expect("root hash line")
}

struct Setup {
    dir: tempfile::TempDir,
    params: VerityParams,
    tree: TreeGeometry,
    fec: FecGeometry,
    root: Vec<u8>,
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Data, hash and separate FEC file made by Keel (superblock or not), with the same layout
/// veritysetup gives.
fn keel_setup(bs: u32, blocks: u64, roots: u8, superblock: bool, seed: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = seeded_bytes(seed, (blocks * u64::from(bs)) as usize);
    fs::write(dir.path().join("data"), &data).unwrap();
    let params = params(bs, blocks);
    let mut hash = Vec::new();
    let opts = FormatOptions::default().superblock(superblock.then_some([7u8; 16]));
    let formatted = format(&params, &data, &mut hash, &opts).unwrap();
    fs::write(dir.path().join("hash"), &hash).unwrap();
    let fec =
        FecGeometry::separate(&params, &formatted.geometry, roots, hash.len() as u64, 0).unwrap();
    let mut parity = Vec::new();
    fec_encode(&fec, &data, &hash, &mut parity, &BuildOptions::default()).unwrap();
    assert_eq!(parity.len() as u64, fec.parity_size());
    // The same bytes from one read of the data (tree and parity in the same pass).
    let counted = Counted(&data, AtomicU64::new(0));
    let (mut hash2, mut parity2) = (Vec::new(), Vec::new());
    let (f2, g2) = format_with_fec(&params, &counted, &mut hash2, &mut parity2, &opts, |t| {
        FecGeometry::separate(&params, t, roots, t.hash_device_size(), 0)
    })
    .unwrap();
    assert_eq!((&f2.root_hash, &g2), (&formatted.root_hash, &fec));
    assert!(
        hash2 == hash,
        "one pass: other tree, {bs} {blocks} {roots} {superblock}"
    );
    assert!(
        parity2 == parity,
        "one pass: other parity, {bs} {blocks} {roots} {superblock}"
    );
    assert_eq!(
        counted.1.into_inner(),
        data.len() as u64,
        "one read of the data"
    );
    fs::write(dir.path().join("fec"), &parity).unwrap();
    Setup {
        dir,
        params,
        tree: formatted.geometry,
        fec,
        root: formatted.root_hash,
    }
}

/// Data that counts the bytes read from it.
struct Counted<'a>(&'a [u8], AtomicU64);

impl ReadAt for Counted<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.1.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.0.read_exact_at(buf, offset)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

fn veritysetup_format(vs: &Path, dir: &Path, bs: u32, roots: u8, extra: &[&str]) -> String {
    let salt = hex::encode(salt());
    let mut args: Vec<String> = vec![
        "format".into(),
        dir.join("data").display().to_string(),
        dir.join("vhash").display().to_string(),
        format!("--data-block-size={bs}"),
        format!("--hash-block-size={bs}"),
        format!("--salt={salt}"),
        format!("--fec-roots={roots}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    root_of(&run_ok(vs, &a))
}

#[test]
fn parity_is_byte_identical_to_veritysetup() {
    let Some(vs) = tool("veritysetup", "cryptsetup-bin") else {
        return;
    };
    // (block size, data blocks, roots): one round, several rounds, a last partial round,
    // every root count at least once across the cases.
    let mut cases = vec![
        (4096u32, 1u64, 2u8),
        (4096, 100, 24),
        (4096, 253, 2),
        (4096, 1000, 2),
        (4096, 1500, 7),
        (512, 3000, 13),
        (1024, 777, 24),
    ];
    for roots in 2..=24u8 {
        cases.push((4096, 300 + u64::from(roots) * 37, roots));
    }
    for (n, &(bs, blocks, roots)) in cases.iter().enumerate() {
        let superblock = n % 2 == 0;
        let s = keel_setup(bs, blocks, roots, superblock, 1000 + n as u64);
        let fec_path = s.path("vfec");
        let mut extra = vec![format!("--fec-device={}", fec_path.display())];
        if superblock {
            extra.push("--uuid=07070707-0707-0707-0707-070707070707".into());
        } else {
            extra.push("--no-superblock".into());
        }
        let e: Vec<&str> = extra.iter().map(String::as_str).collect();
        let root = veritysetup_format(&vs, s.dir.path(), bs, roots, &e);
        assert_eq!(root, hex::encode(&s.root));
        assert!(
            fs::read(s.path("vhash")).unwrap() == fs::read(s.path("hash")).unwrap(),
            "hash device, case {n}"
        );
        let theirs = fs::read(&fec_path).unwrap();
        let ours = fs::read(s.path("fec")).unwrap();
        assert_eq!(
            theirs.len(),
            ours.len(),
            "FEC size, case {n} {bs} {blocks} {roots}"
        );
        assert!(
            theirs == ours,
            "FEC bytes differ: case {n} bs {bs} blocks {blocks} roots {roots}"
        );
        // What veritysetup wrote, Keel reads as clean.
        let hash = fs::read(s.path("vhash")).unwrap();
        let data = fs::read(s.path("data")).unwrap();
        let report = fec_verify(&s.fec, &data, &hash, &theirs, &BuildOptions::default()).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.codewords, s.fec.rounds() * u64::from(bs));
    }
}

#[test]
fn parity_on_the_hash_device_at_an_offset_matches_veritysetup() {
    let Some(vs) = tool("veritysetup", "cryptsetup-bin") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bs = 4096u32;
    let blocks = 2000u64;
    let data = seeded_bytes(5, (blocks * u64::from(bs)) as usize);
    fs::write(dir.path().join("data"), &data).unwrap();
    let params = params(bs, blocks);
    // The tree at byte 0 of the hash file; foreign bytes between the tree and the parity
    // are covered too.
    let fec_offset = 64 * u64::from(bs);
    let mut hash = seeded_bytes(6, fec_offset as usize);
    let formatted = format(&params, &data, &mut hash, &FormatOptions::default()).unwrap();
    let g = FecGeometry::on_hash_device(&params, &formatted.geometry, 4, fec_offset).unwrap();
    assert_eq!(g.hash_blocks(), 64);
    let mut parity_dev = hash.clone();
    fec_encode(&g, &data, &hash, &mut parity_dev, &BuildOptions::default()).unwrap();

    let vhash = dir.path().join("vhash");
    fs::write(&vhash, seeded_bytes(6, fec_offset as usize)).unwrap();
    let fec_dev = format!("--fec-device={}", vhash.display());
    let off = format!("--fec-offset={fec_offset}");
    veritysetup_format(&vs, dir.path(), bs, 4, &["--no-superblock", &fec_dev, &off]);
    let theirs = fs::read(&vhash).unwrap();
    assert!(theirs == parity_dev, "hash device with parity differs");
    assert_eq!(theirs.len() as u64, g.fec_device_size());
}

fn verify_fec_with_veritysetup(vs: &Path, s: &Setup) -> (bool, Option<u64>) {
    let out = run(
        vs,
        &[
            "verify",
            s.path("data").to_str().unwrap(),
            s.path("hash").to_str().unwrap(),
            &hex::encode(&s.root),
            &format!("--fec-device={}", s.path("fec").display()),
            &format!("--fec-roots={}", s.fec.roots()),
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let n = text.lines().find_map(|l| {
        l.strip_prefix("Found ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    });
    let data_ok = !text.contains("Verification failed");
    (data_ok, n)
}

fn flip(path: &Path, offset: u64, xor: u8) {
    let mut b = fs::read(path).unwrap();
    b[offset as usize] ^= xor;
    fs::write(path, b).unwrap();
}

fn repair_files(s: &Setup) -> keel_verity::RepairReport {
    let open = |n: &str| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(s.path(n))
            .unwrap()
    };
    let (mut d, mut h, mut f) = (open("data"), open("hash"), open("fec"));
    let target = RepairTarget {
        params: &s.params,
        tree: &s.tree,
        root: &s.root,
    };
    fec_repair(
        &s.fec,
        &target,
        &mut d,
        &mut h,
        &mut f,
        &BuildOptions::default(),
    )
    .unwrap()
}

fn snapshot(s: &Setup) -> [Vec<u8>; 3] {
    ["data", "hash", "fec"].map(|n| fs::read(s.path(n)).unwrap())
}

#[test]
fn veritysetup_counts_the_errors_keel_can_repair_and_keel_repairs_them() {
    let Some(vs) = tool("veritysetup", "cryptsetup-bin") else {
        return;
    };
    let bs = 4096u32;
    for (case, roots) in [2u8, 6, 24].into_iter().enumerate() {
        let s = keel_setup(bs, 3000, roots, true, 50 + case as u64);
        let clean = snapshot(&s);
        let g = &s.fec;
        // Up to roots/2 bytes in each of several codewords, spread over data, tree and
        // parity: byte b of covered block i * rounds + n is symbol i of codeword (n, b).
        let mut rng = seeded_bytes(900 + case as u64, 1 << 16).into_iter();
        let mut next = || rng.next().unwrap() as u64;
        let mut expected = 0u64;
        let mut codewords = Vec::new();
        while codewords.len() < 40 {
            let n = (next() << 8 | next()) % g.rounds();
            let b = (next() << 8 | next()) % u64::from(bs);
            if codewords.contains(&(n, b)) {
                continue;
            }
            codewords.push((n, b));
            let t = 1 + next() % (u64::from(roots) / 2);
            let mut used = Vec::new();
            while (used.len() as u64) < t {
                let i = next() % (255 - u64::from(roots));
                let block = i * g.rounds() + n;
                if used.contains(&i) || block >= g.covered_blocks() {
                    continue;
                }
                used.push(i);
                let x = 1 + (next() % 255) as u8;
                if block < g.data_blocks() {
                    flip(&s.path("data"), block * u64::from(bs) + b, x);
                } else {
                    let off = g.hash_area_offset() + (block - g.data_blocks()) * u64::from(bs);
                    flip(&s.path("hash"), off + b, x);
                }
                expected += 1;
            }
        }
        let data = fs::read(s.path("data")).unwrap();
        let hash = fs::read(s.path("hash")).unwrap();
        let fec = fs::read(s.path("fec")).unwrap();
        let report = fec_verify(g, &data, &hash, &fec, &BuildOptions::default()).unwrap();
        assert_eq!(report.corrected_symbols, expected, "roots {roots}");
        assert_eq!(report.unrepairable_codewords, 0);
        let (_, found) = verify_fec_with_veritysetup(&vs, &s);
        assert_eq!(found, Some(expected), "veritysetup's count, roots {roots}");

        let r = repair_files(&s);
        assert!(r.is_complete(), "{r:?}");
        assert_eq!(snapshot(&s), clean, "repaired devices equal the originals");
        let (ok, found) = verify_fec_with_veritysetup(&vs, &s);
        assert!(ok && found.is_none(), "veritysetup after repair");
    }
}

#[test]
fn whole_blocks_are_repaired_as_erasures_up_to_roots_per_round() {
    let bs = 4096u32;
    for roots in [2u8, 5, 24] {
        let s = keel_setup(bs, 2500, roots, false, 70 + u64::from(roots));
        let clean = snapshot(&s);
        let g = &s.fec;
        // Destroy `roots` whole data blocks in one round and one tree block in another:
        // far beyond errors-only decoding, within erasure decoding once the tree names them.
        let n = 3 % g.rounds();
        for i in 0..u64::from(roots) {
            let block = (i * 7) * g.rounds() + n;
            assert!(block < g.data_blocks());
            let mut d = fs::read(s.path("data")).unwrap();
            let at = (block * u64::from(bs)) as usize;
            d[at..at + bs as usize].copy_from_slice(&seeded_bytes(block, bs as usize));
            fs::write(s.path("data"), d).unwrap();
        }
        let leaf = s.tree.levels()[0].first_block;
        let mut h = fs::read(s.path("hash")).unwrap();
        let at = (leaf * u64::from(bs)) as usize;
        h[at..at + 100].fill(0xee);
        fs::write(s.path("hash"), h).unwrap();

        let r = repair_files(&s);
        assert!(r.is_complete(), "roots {roots}: {r:?}");
        assert_eq!(r.repaired_data_blocks.len(), roots as usize);
        assert_eq!(r.repaired_hash_blocks, vec![leaf]);
        assert_eq!(snapshot(&s), clean, "roots {roots}");
    }
}

#[test]
fn damage_beyond_the_parity_is_reported_and_never_written_wrong() {
    let bs = 4096u32;
    for (case, roots) in [2u8, 4, 10].into_iter().enumerate() {
        let s = keel_setup(bs, 2000, roots, true, 300 + case as u64);
        let clean = snapshot(&s);
        let g = &s.fec;
        // Random bytes everywhere in round 0's first roots + 3 data blocks (too many
        // erasures), and a couple of bytes in other codewords that are repairable.
        let mut d = fs::read(s.path("data")).unwrap();
        let mut lost = Vec::new();
        for i in 0..u64::from(roots) + 3 {
            let block = i * g.rounds();
            let at = (block * u64::from(bs)) as usize;
            for (j, x) in seeded_bytes(block + 9, 64).into_iter().enumerate() {
                d[at + j * 61] ^= x | 1;
            }
            lost.push(block);
        }
        let fixable = g.rounds() - 1 + 5 * g.rounds();
        d[(fixable * u64::from(bs) + 17) as usize] ^= 0x40;
        fs::write(s.path("data"), &d).unwrap();

        let r = repair_files(&s);
        assert!(!r.is_complete());
        assert_eq!(r.unrepairable_data_blocks, lost, "roots {roots}");
        assert_eq!(r.repaired_data_blocks, vec![fixable]);
        // Every block is now either its original content or left as damaged: never a
        // third value.
        let after = fs::read(s.path("data")).unwrap();
        for (n, (a, (c, dmg))) in after
            .chunks(bs as usize)
            .zip(clean[0].chunks(bs as usize).zip(d.chunks(bs as usize)))
            .enumerate()
        {
            let n = n as u64;
            if lost.contains(&n) {
                assert_eq!(a, dmg, "unrepairable block {n} left untouched");
            } else {
                assert_eq!(a, c, "block {n} restored");
            }
        }
        assert_eq!(fs::read(s.path("hash")).unwrap(), clean[1]);
        assert_eq!(
            fs::read(s.path("fec")).unwrap(),
            clean[2],
            "parity untouched"
        );
        let err = verify(
            &s.params,
            &s.tree,
            &after,
            &clean[1],
            &s.root,
            &BuildOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::DataBlockCorrupt { block: 0, .. }),
            "{err}"
        );
    }
}

#[test]
fn damaged_parity_is_repaired_from_the_data() {
    let s = keel_setup(4096, 600, 8, true, 9);
    let clean = snapshot(&s);
    flip(&s.path("fec"), 1234, 0x11);
    flip(&s.path("fec"), s.fec.parity_size() - 1, 0x80);
    let r = repair_files(&s);
    assert!(r.is_complete());
    assert_eq!(r.scan.parity_bytes, 2);
    assert_eq!(r.repaired_parity_bytes, 2);
    assert_eq!(snapshot(&s), clean);
    // A whole round of parity overwritten: far past what decoding can locate, but with the
    // data and tree whole the parity is simply encoded again.
    let mut p = fs::read(s.path("fec")).unwrap();
    let round = 4096 * 8;
    p[round..2 * round].fill(0x3c);
    fs::write(s.path("fec"), p).unwrap();
    let r = repair_files(&s);
    assert!(r.scan.unrepairable_codewords > 0);
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(snapshot(&s), clean);
}

#[test]
fn geometry_refusals_name_the_field() {
    let p = params(4096, 100);
    let tree = TreeGeometry::new(&p, 0, false).unwrap();
    let size = tree.hash_device_size();
    for (roots, end, off, field) in [
        (1u8, size, 0, "fec-roots"),
        (25, size, 0, "fec-roots"),
        (2, size, 100, "fec-offset"),
        (2, size - 4096, 0, "fec"),
    ] {
        match FecGeometry::new(&p, &tree, roots, end, off) {
            Err(Error::InvalidParameter { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{roots} {end} {off}: {other:?}"),
        }
    }
    let uneven = VerityParams::builder()
        .data_block_size(4096)
        .hash_block_size(1024)
        .data_blocks(10)
        .build()
        .unwrap();
    let t2 = TreeGeometry::new(&uneven, 0, false).unwrap();
    assert!(FecGeometry::new(&uneven, &t2, 2, 1 << 20, 0).is_err());
    // A parity device that is too short is an error, not a partial check.
    let s = keel_setup(4096, 100, 2, false, 1);
    let data = fs::read(s.path("data")).unwrap();
    let hash = fs::read(s.path("hash")).unwrap();
    let mut fec = fs::read(s.path("fec")).unwrap();
    fec.truncate(fec.len() - 1);
    let e = fec_verify(&s.fec, &data, &hash, &fec, &BuildOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooSmall {
                what: "FEC device",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn android_header_round_trips_and_rejects_bad_fields() {
    let s = keel_setup(4096, 1000, 2, false, 3);
    let fec = File::open(s.path("fec")).unwrap();
    let h = android_fec_header(&s.fec, &fec).unwrap();
    assert_eq!(h.roots, 2);
    assert_eq!(u64::from(h.fec_size), s.fec.parity_size());
    assert_eq!(h.inp_size, s.fec.covered_blocks() * 4096);
    let block = h.to_block();
    assert_eq!(&block[..4], &[0xfe, 0xec, 0xcf, 0xfe]);
    assert_eq!(block[..60], block[4096 - 60..]);
    assert_eq!(AndroidFecHeader::parse_block(&block).unwrap(), h);
    // The first copy damaged: the second one is used, as libfec does.
    let mut b2 = block.clone();
    b2[0] ^= 1;
    assert_eq!(AndroidFecHeader::parse_block(&b2).unwrap(), h);
    for (at, field) in [
        (0usize, "magic"),
        (4, "version"),
        (8, "size"),
        (12, "roots"),
        (16, "fec_size"),
        (20, "inp_size"),
    ] {
        let mut bad = h.to_bytes();
        bad[at] ^= 0x02;
        match AndroidFecHeader::parse(&bad) {
            Err(Error::BadField {
                field: f, offset, ..
            }) => {
                assert_eq!((f, offset), (field, at));
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    assert!(AndroidFecHeader::parse(&block[..59]).is_err());
    // Sizes whose parity product overflows u64, and an empty parity: errors, not panics.
    for (fec_size, inp_size) in [
        (4096 * 2u32, u64::MAX - 4095),
        (4096 * 2, (u64::MAX / 4096) / 2 * 4096),
        (0, 4096),
    ] {
        let mut bad = h.to_bytes();
        bad[16..20].copy_from_slice(&fec_size.to_le_bytes());
        bad[20..28].copy_from_slice(&inp_size.to_le_bytes());
        match AndroidFecHeader::parse(&bad) {
            Err(Error::BadField { field, .. }) => assert_eq!(field, "fec_size"),
            other => panic!("{fec_size} {inp_size}: {other:?}"),
        }
    }
}

/// Covered blocks outside the tree (the rest of a larger hash device, the gap before
/// parity on the hash device) cannot be checked by any tree: a repair leaves them as they
/// are and reports them, never writing what the decoder alone suggests.
#[test]
fn repair_never_writes_covered_blocks_the_tree_cannot_check() {
    let bs = 4096u32;
    let blocks = 600u64;
    let data = seeded_bytes(41, (blocks * u64::from(bs)) as usize);
    let params = params(bs, blocks);
    let mut tree_only = Vec::new();
    let formatted = format(&params, &data, &mut tree_only, &FormatOptions::default()).unwrap();
    let extra = seeded_bytes(42, 4 * bs as usize);
    for parity_on_hash_device in [false, true] {
        // The hash device: the tree, then four foreign blocks (then the parity, if there).
        let mut hash = tree_only.clone();
        hash.extend_from_slice(&extra);
        let end = hash.len() as u64;
        let g = if parity_on_hash_device {
            FecGeometry::on_hash_device(&params, &formatted.geometry, 2, end).unwrap()
        } else {
            FecGeometry::separate(&params, &formatted.geometry, 2, end, 0).unwrap()
        };
        // The parity goes at the geometry's offset: after the hash area on the hash device.
        let mut fec = if parity_on_hash_device {
            hash.clone()
        } else {
            Vec::new()
        };
        fec_encode(&g, &data, &hash, &mut fec, &BuildOptions::default()).unwrap();
        // One byte of the first foreign block flipped: within what the parity corrects.
        let foreign = tree_only.len() + 10;
        hash[foreign] ^= 0x5a;
        if parity_on_hash_device {
            fec[foreign] ^= 0x5a;
        }
        let before = (data.clone(), hash.clone(), fec.clone());
        let target = RepairTarget {
            params: &params,
            tree: &formatted.geometry,
            root: &formatted.root_hash,
        };
        let (mut d, mut h) = (data.clone(), hash.clone());
        let r = if parity_on_hash_device {
            // The hash device and the FEC device are one file: two handles on its bytes.
            let (mut hdev, mut fdev) = (fec.clone(), fec.clone());
            let r = fec_repair(
                &g,
                &target,
                &mut d,
                &mut hdev,
                &mut fdev,
                &BuildOptions::default(),
            )
            .unwrap();
            assert_eq!(fdev[..hash.len()], hdev[..hash.len()]);
            h = hdev[..hash.len()].to_vec();
            fec = fdev;
            r
        } else {
            fec_repair(
                &g,
                &target,
                &mut d,
                &mut h,
                &mut fec,
                &BuildOptions::default(),
            )
            .unwrap()
        };
        let label = if parity_on_hash_device {
            "on hash device"
        } else {
            "separate"
        };
        let first_foreign = tree_only.len() as u64 / u64::from(bs);
        assert_eq!(r.unchecked_hash_blocks, vec![first_foreign], "{label}");
        assert!(
            r.repaired_hash_blocks.is_empty() && r.repaired_data_blocks.is_empty(),
            "{label}"
        );
        assert_eq!(
            r.repaired_parity_bytes, 0,
            "{label}: parity re-encoded over unchecked bytes"
        );
        assert_eq!(d, before.0, "{label}");
        assert_eq!(h, before.1, "{label}: the foreign block was written");
        assert_eq!(fec, before.2, "{label}");
    }
}
