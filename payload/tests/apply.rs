//! Generate and apply: exact targets for random edits and for ext4 images (files paired
//! with their old versions, new files chained), resume after a cut at every write,
//! and refusal of every kind of bad payload.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod support;
use keel_testsupport as tools;

use std::fs;
use std::io;
use std::path::Path;

use keel_payload::{
    apply, apply_files, generate, ApplyOptions, Error, GenerateOptions, OpType, VersionCheck,
};
use keel_verity::{Keyring, ReadAt, SigningKey};
use proptest::prelude::*;
use support::Cut;
use tools::{seeded_bytes, tool};

fn opts() -> GenerateOptions {
    let mut o = GenerateOptions::new("acme-test", "2.0");
    o.level = 3;
    o
}

fn ring(key: &SigningKey) -> Keyring {
    let mut r = Keyring::new();
    r.add(key.public_key().clone()).unwrap();
    r
}

fn apply_vec(
    payload: &[u8],
    source: Option<&[u8]>,
    size: usize,
    ring: &Keyring,
) -> Result<Vec<u8>, Error> {
    let mut t = vec![0u8; size];
    let o = ApplyOptions::new(ring, VersionCheck::Installed("1.0")).compatible("acme-test");
    apply(payload, source, &mut t, &o)?;
    Ok(t)
}

#[derive(Clone, Debug)]
enum Edit {
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Zero(usize, usize),
    Duplicate(usize, usize, usize),
}

fn edited(src: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = src.to_vec();
    for e in edits {
        let n = v.len();
        match e {
            Edit::Insert(at, bytes) => {
                let at = if n == 0 { 0 } else { at % n };
                v.splice(at..at, bytes.iter().copied());
            }
            Edit::Delete(at, len) if n > 0 => {
                let at = at % n;
                let end = (at + len).min(n);
                v.drain(at..end);
            }
            Edit::Zero(at, len) if n > 0 => {
                let at = at % n;
                let end = (at + len).min(n);
                v[at..end].fill(0);
            }
            Edit::Duplicate(from, to, len) if n > 0 => {
                let (from, to) = (from % n, to % n);
                let len = (*len).min(n - from).min(n - to);
                let chunk = v[from..from + len].to_vec();
                v[to..to + len].copy_from_slice(&chunk);
            }
            _ => {}
        }
    }
    v
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..9000))
            .prop_map(|(a, b)| Edit::Insert(a, b)),
        (any::<usize>(), 1usize..20000).prop_map(|(a, l)| Edit::Delete(a, l)),
        (any::<usize>(), 1usize..40000).prop_map(|(a, l)| Edit::Zero(a, l)),
        (any::<usize>(), any::<usize>(), 1usize..30000)
            .prop_map(|(a, b, l)| Edit::Duplicate(a, b, l)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Whatever the edits (shifting inserts and deletes, zeroed ranges, duplicated blocks,
    /// none at all, empty images), applying the generated payload gives the target exactly.
    #[test]
    fn apply_gives_the_target_exactly(len in 0usize..200_000, seed in any::<u64>(), edits in prop::collection::vec(edit(), 0..5)) {
        let src = seeded_bytes(seed, len);
        let tgt = edited(&src, &edits);
        let key = SigningKey::generate().unwrap();
        let p = generate(Some(&src), &tgt, &key, &opts()).unwrap();
        let got = apply_vec(&p, Some(&src), tgt.len(), &ring(&key)).unwrap();
        prop_assert_eq!(got, tgt);
    }
}

/// Unchanged blocks between many small edits are copied by as few operations as their
/// size allows (each costs a digest in the manifest), each with many extents.
#[test]
fn copies_between_edits_share_operations() {
    let src = seeded_bytes(3, 3 << 20);
    let mut tgt = src.clone();
    for at in (20_000..tgt.len()).step_by(60_000) {
        tgt[at..at + 100].copy_from_slice(&seeded_bytes(at as u64, 100));
    }
    let key = SigningKey::generate().unwrap();
    let p = generate(Some(&src), &tgt, &key, &opts()).unwrap();
    let (_, m, _) = keel_payload::read_manifest(&mut &p[..], &ring(&key)).unwrap();
    let copies: Vec<_> = m
        .operations
        .iter()
        .filter(|o| o.op == OpType::Copy)
        .collect();
    assert_eq!(copies.len(), 1, "768 blocks fit one operation");
    assert!(copies[0].target.len() > 40, "{:?}", copies[0].target.len());
    assert_eq!(
        apply_vec(&p, Some(&src), tgt.len(), &ring(&key)).unwrap(),
        tgt
    );
}

#[test]
fn full_payload_and_operation_kinds() {
    let src = seeded_bytes(1, 1 << 20);
    let mut tgt = src.clone();
    tgt[100_000..300_000].fill(0);
    tgt.splice(500_000..500_000, seeded_bytes(2, 70_000));
    let key = SigningKey::generate().unwrap();
    let p = generate(Some(&src), &tgt, &key, &opts()).unwrap();
    let (_, m, _) = keel_payload::read_manifest(&mut &p[..], &ring(&key)).unwrap();
    let kinds: std::collections::HashSet<OpType> = m.operations.iter().map(|o| o.op).collect();
    assert!(
        kinds.contains(&OpType::Zero) && kinds.contains(&OpType::Copy),
        "{kinds:?}"
    );
    assert!(
        p.len() < 120_000,
        "delta of a 70 KB insert is {} bytes",
        p.len()
    );
    assert_eq!(
        apply_vec(&p, Some(&src), tgt.len(), &ring(&key)).unwrap(),
        tgt
    );
    let full = generate(None, &tgt, &key, &opts()).unwrap();
    assert_eq!(apply_vec(&full, None, tgt.len(), &ring(&key)).unwrap(), tgt);
}

/// Cut at every write (up to `samples` of them, evenly spread) and resume.
fn resume_case(src: &[u8], tgt: &[u8], samples: usize) {
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    let p = generate(Some(src), tgt, &key, &opts()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let o = ApplyOptions::new(&r, VersionCheck::Unchecked)
        .state(&state)
        .checkpoint_bytes(8192);
    let mut clean = Cut {
        disk: vec![0u8; tgt.len()],
        writes: 0,
        fail_at: usize::MAX,
    };
    apply(&p[..], Some(src), &mut clean, &o).unwrap();
    let total = clean.writes;
    let step = total.div_ceil(samples).max(1);
    let mut resumed_somewhere = false;
    for k in (1..=total).step_by(step) {
        let _ = std::fs::remove_file(&state);
        let mut t = Cut {
            disk: vec![0xeeu8; tgt.len()],
            writes: 0,
            fail_at: k,
        };
        assert!(
            apply(&p[..], Some(src), &mut t, &o).is_err(),
            "cut at write {k}"
        );
        let mut again = Cut {
            disk: t.disk,
            writes: 0,
            fail_at: usize::MAX,
        };
        let done = apply(&p[..], Some(src), &mut again, &o).unwrap();
        resumed_somewhere |= done.resumed_at > 0;
        assert_eq!(again.disk, tgt, "after a cut at write {k} of {total}");
        assert!(!state.exists(), "the record is removed after success");
    }
    assert!(resumed_somewhere, "no run resumed from its record");
}

#[test]
fn a_cut_at_every_write_resumes_to_the_same_target() {
    let src = seeded_bytes(3, 300_000);
    let mut tgt = src.clone();
    tgt[10_000..40_000].fill(0);
    tgt[150_000..160_000].copy_from_slice(&seeded_bytes(4, 10_000));
    resume_case(&src, &tgt, usize::MAX);
}

#[test]
fn sampled_cuts_in_a_larger_image() {
    let src = seeded_bytes(5, 24 << 20);
    let mut tgt = src.clone();
    for i in 0..40 {
        let at = i * 600_000 + 1000;
        tgt[at..at + 5000].copy_from_slice(&seeded_bytes(100 + i as u64, 5000));
    }
    tgt[8 << 20..10 << 20].fill(0);
    resume_case(&src, &tgt, 25);
}

#[test]
fn a_record_from_another_payload_is_ignored() {
    let src = seeded_bytes(6, 200_000);
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let o = ApplyOptions::new(&r, VersionCheck::Unchecked)
        .state(&state)
        .checkpoint_bytes(4096);
    let t1 = edited(&src, &[Edit::Zero(5000, 50_000)]);
    let p1 = generate(Some(&src), &t1, &key, &opts()).unwrap();
    let mut t = Cut {
        disk: vec![0u8; t1.len()],
        writes: 0,
        fail_at: 5,
    };
    assert!(apply(&p1[..], Some(&src), &mut t, &o).is_err());
    assert!(state.exists());
    let t2 = edited(&src, &[Edit::Insert(7000, vec![9; 3000])]);
    let p2 = generate(Some(&src), &t2, &key, &opts()).unwrap();
    let mut out = vec![0u8; t2.len()];
    let done = apply(&p2[..], Some(&src), &mut out, &o).unwrap();
    assert_eq!(done.resumed_at, 0);
    assert_eq!(out, t2);
    // A damaged record is ignored too.
    let mut t = Cut {
        disk: vec![0u8; t1.len()],
        writes: 0,
        fail_at: 5,
    };
    assert!(apply(&p1[..], Some(&src), &mut t, &o).is_err());
    let mut rec = std::fs::read(&state).unwrap();
    rec[45] ^= 1;
    std::fs::write(&state, rec).unwrap();
    let mut again = Cut {
        disk: t.disk,
        writes: 0,
        fail_at: usize::MAX,
    };
    assert_eq!(
        apply(&p1[..], Some(&src), &mut again, &o)
            .unwrap()
            .resumed_at,
        0
    );
    assert_eq!(again.disk, t1);
}

#[test]
fn every_flipped_byte_is_refused() {
    let src = seeded_bytes(7, 150_000);
    let tgt = edited(
        &src,
        &[
            Edit::Insert(20_000, seeded_bytes(8, 12_000)),
            Edit::Zero(90_000, 20_000),
        ],
    );
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    let p = generate(Some(&src), &tgt, &key, &opts()).unwrap();
    for at in (0..p.len()).step_by(7).chain([p.len() - 1]) {
        let mut bad = p.clone();
        bad[at] ^= 0x40;
        let res = apply_vec(&bad, Some(&src), tgt.len(), &r);
        assert!(
            res.is_err(),
            "flipped byte {at} of {} was accepted",
            p.len()
        );
    }
    // Truncated anywhere.
    for cut in [0, 10, 63, 64, 100, p.len() - 65, p.len() - 1] {
        let e = apply_vec(&p[..cut], Some(&src), tgt.len(), &r).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Truncated { .. } | Error::BadSignature | Error::BadField { .. }
            ),
            "cut {cut}: {e}"
        );
    }
}

#[test]
fn wrong_source_system_version_key_and_target_are_refused() {
    let src = seeded_bytes(9, 100_000);
    let tgt = edited(&src, &[Edit::Zero(1000, 9000)]);
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    let p = generate(Some(&src), &tgt, &key, &opts()).unwrap();
    let mut other = src.clone();
    other[50_000] ^= 1;
    let e = apply_vec(&p, Some(&other), tgt.len(), &r).unwrap_err();
    assert!(matches!(e, Error::SourceModified { op: None }), "{e}");
    assert!(e.needs_full_payload() && !e.is_retryable() && !e.is_corruption());
    let e = apply_vec(&p, None, tgt.len(), &r).unwrap_err();
    assert!(
        matches!(e, Error::MissingSource(_)) && e.needs_full_payload(),
        "{e}"
    );
    let mut t = vec![0u8; tgt.len()];
    let o = ApplyOptions::new(&r, VersionCheck::Unchecked).compatible("other-system");
    assert!(matches!(
        apply(&p[..], Some(&src), &mut t, &o),
        Err(Error::Incompatible { .. })
    ));
    let o = ApplyOptions::new(&r, VersionCheck::Installed("2.1"));
    assert!(matches!(
        apply(&p[..], Some(&src), &mut t, &o),
        Err(Error::Downgrade { .. })
    ));
    let o = ApplyOptions::new(&r, VersionCheck::Installed("2.1")).allow_downgrade(true);
    apply(&p[..], Some(&src), &mut t, &o).unwrap();
    let stranger = ring(&SigningKey::generate().unwrap());
    assert!(matches!(
        apply_vec(&p, Some(&src), tgt.len(), &stranger),
        Err(Error::UntrustedKey { .. })
    ));
    // The running slot as target.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("slot");
    std::fs::write(&f, &src).unwrap();
    let s = std::fs::File::open(&f).unwrap();
    let mut same = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f)
        .unwrap();
    let o = ApplyOptions::new(&r, VersionCheck::Unchecked);
    assert!(matches!(
        apply_files(&p[..], Some(&s), &mut same, &o),
        Err(Error::TargetIsSource)
    ));
}

/// A source that changes under the applier after its identity was checked.
struct Changing {
    data: Vec<u8>,
    reads: std::sync::atomic::AtomicUsize,
}

impl ReadAt for Changing {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let n = self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.data.read_exact_at(buf, offset)?;
        // The first reads hash the whole image; later ones see a modified block.
        if n > 0 && !buf.is_empty() && buf.len() <= 8 << 20 && offset > 0 {
            buf[0] ^= 1;
        }
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.data.len() as u64)
    }
}

#[test]
fn source_blocks_changed_during_apply_are_caught() {
    let src = seeded_bytes(10, 512 * 1024);
    let tgt = edited(&src, &[Edit::Zero(0, 8192)]);
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    let p = generate(Some(&src), &tgt, &key, &opts()).unwrap();
    let changing = Changing {
        data: src.clone(),
        reads: Default::default(),
    };
    let mut t = vec![0u8; tgt.len()];
    let o = ApplyOptions::new(&r, VersionCheck::Unchecked);
    let e = apply(&p[..], Some(&changing), &mut t, &o).unwrap_err();
    assert!(
        matches!(&e, Error::SourceModified { op: Some(_) }) && e.needs_full_payload(),
        "{e}"
    );
}

fn text(seed: u64, len: usize) -> Vec<u8> {
    // Compressible but not trivial: words from a seeded vocabulary.
    let words: Vec<String> = (0..500)
        .map(|i| {
            format!(
                "w{:x}",
                seeded_bytes(seed ^ i, 4)
                    .iter()
                    .map(|&b| b as u32)
                    .sum::<u32>()
                    * 7919
                    + i as u32
            )
        })
        .collect();
    let pick = seeded_bytes(seed, len);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(words[pick[i % pick.len()] as usize % words.len()].as_bytes());
        out.push(b' ');
        i += 1;
    }
    out.truncate(len);
    out
}

fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// Two ext4 images (mkfs.ext4 -d) of a tree whose files change, move on disk, appear and
/// disappear; None (after a skip notice) without mkfs.ext4.
fn ext4_pair() -> Option<(Vec<u8>, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_trees(dir.path());
    let img = |root: &Path, name: &str| tools::mkfs_ext4(root, &dir.path().join(name), "48M");
    Some((img(&a, "a.img")?, img(&b, "b.img")?))
}

/// The same two trees as EROFS images (mkfs.erofs with `extra` options: none for
/// uncompressed ones), padded to whole blocks.
fn erofs_pair(extra: &[&str]) -> Option<(Vec<u8>, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_trees(dir.path());
    let img = |root: &Path, name: &str| tools::mkfs_erofs(root, &dir.path().join(name), extra);
    Some((img(&a, "a.img")?, img(&b, "b.img")?))
}

/// The same two trees as squashfs images (mksquashfs), compressed with `comp`, with
/// `extra` options.
fn squashfs_pair(comp: &str, extra: &[&str]) -> Option<(Vec<u8>, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_trees(dir.path());
    let img =
        |root: &Path, name: &str| tools::mksquashfs(root, &dir.path().join(name), comp, extra);
    Some((img(&a, "a.img")?, img(&b, "b.img")?))
}

/// Whether this build's compressor compresses the target's first compressed data block
/// back to its bytes (the same zstd version, or a zlib that deflates alike, as
/// mksquashfs's).
fn compressor_reproduces(img: &[u8]) -> bool {
    use keel_payload::squashfs;
    let image = squashfs::open(img).unwrap();
    let level = image.level.unwrap();
    let (at, w) = image
        .files
        .iter()
        .flat_map(|f| f.data.each())
        .find(|&(_, w)| w != 0 && w & squashfs::STORED == 0)
        .unwrap();
    let raw = &img[at as usize..at as usize + (w & (squashfs::STORED - 1)) as usize];
    let content = squashfs::decompress(image.codec, raw, image.block_size as usize).unwrap();
    if image.codec == squashfs::Codec::Gzip {
        use std::io::Write;
        let mut e =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(level as u32));
        e.write_all(&content).unwrap();
        return e.finish().unwrap() == raw;
    }
    zstd::bulk::compress(&content, level).unwrap() == raw
}

/// The version of the shared library `lib` that `program` links ("5.4.1"), from ldd and
/// the library's file name.
fn linked_version(program: &str, lib: &str) -> Option<String> {
    let path = tool(program, "squashfs-tools")?;
    let out = std::process::Command::new("ldd").arg(path).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.trim_start().starts_with(lib))?;
    let so = line.split("=>").nth(1)?.split_whitespace().next()?;
    let real = fs::canonicalize(so).ok()?;
    let name = real.file_name()?.to_str()?.to_string();
    Some(name.split(".so.").nth(1)?.to_string())
}

/// Version A and version B of a tree, under `dir`.
fn two_trees(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (a, b) = (dir.join("a"), dir.join("b"));
    // Version A.
    for i in 0..60u64 {
        write(
            &a,
            &format!("usr/lib/mod{i:02}.txt"),
            &text(i, 20_000 + 3000 * i as usize),
        );
    }
    write(&a, "usr/bin/tool", &text(1000, 3 << 20));
    write(&a, "etc/gone", &text(1001, 50_000));
    // Version B: a new file first, so every later file lands elsewhere on disk; most files
    // change a little; the big one changes in the middle; one file goes, one arrives.
    write(&b, "aaa/new-first", &text(2000, 900_000));
    for i in 0..60u64 {
        let mut c = text(i, 20_000 + 3000 * i as usize);
        if i % 3 != 0 {
            let at = c.len() / 2;
            c.splice(at..at, format!("patched in version B, file {i}").bytes());
        }
        write(&b, &format!("usr/lib/mod{i:02}.txt"), &c);
    }
    // An executable whose addresses all move: bsdiff's case.
    let words = |shift: u32| -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i.wrapping_mul(2_654_435_761) % 100_000 + shift).to_le_bytes())
            .collect()
    };
    write(&a, "usr/bin/exe", &words(0));
    let mut exe = words(0x2000);
    exe.splice(5000..5000, *b"new code");
    write(&b, "usr/bin/exe", &exe);
    let mut big = text(1000, 3 << 20);
    big[1 << 20..(1 << 20) + 5000].copy_from_slice(&text(3000, 5000));
    write(&b, "usr/bin/tool", &big);
    write(&b, "etc/arrived", &text(1002, 70_000));
    // Enough new files that they take two groups, the second built on the first.
    for i in 0..4u64 {
        write(
            &b,
            &format!("opt/new/part{i}.txt"),
            &text(4000 + i, 3 << 20),
        );
    }
    (a, b)
}

#[test]
fn ext4_changed_files_are_paired_with_their_old_versions() {
    let Some((src, tgt)) = ext4_pair() else {
        return;
    };
    pairing_case(&src, &tgt);
}

/// On EROFS as on ext4: the files found through the EROFS reader are paired.
#[test]
fn erofs_changed_files_are_paired_with_their_old_versions() {
    let Some((src, tgt)) = erofs_pair(&[]) else {
        return;
    };
    pairing_case(&src, &tgt);
}

/// On squashfs the changed files' and fragments' blocks are re-created from a delta of
/// their content (RECOMPRESS): with stored blocks whatever the zstd version; with zstd and
/// gzip blocks when this build's library compresses as mksquashfs's did (CI links
/// Debian's zstd), and otherwise the generator notices and uses block operations. Every
/// payload applies exactly, and survives cuts.
#[test]
fn squashfs_changed_files_are_recompressed() {
    let Some((src, tgt)) = squashfs_pair("zstd", &["-noD", "-noF", "-b", "65536"]) else {
        return;
    };
    let (recompressed, blocks) = recompress_blocks(&src, &tgt);
    assert!(recompressed > 0, "stored blocks are always re-created");
    // New files' too: zstd compresses what mksquashfs stored.
    assert!(recreated(&tgt, &blocks, "/opt/new/part0.txt", 0));
    resume_case(&src, &tgt, 8);
    recompress_each(&[("zstd", &["-Xcompression-level", "19"]), ("gzip", &[])]);
}

/// The same with xz (with and without BCJ filters and another dictionary size) and lz4
/// (and lz4hc) blocks: liblzma 5.8 and liblz4 1.9.4 are built in; Debian 12's mksquashfs
/// links liblzma 5.4.1, whose encoder makes the same bytes, and liblz4 1.9.4.
#[test]
fn squashfs_xz_and_lz4_blocks_are_recompressed() {
    if tool("mksquashfs", "squashfs-tools").is_none() {
        return;
    }
    recompress_each(&[
        ("xz", &[]),
        ("xz", &["-Xbcj", "x86,arm", "-Xdict-size", "50%"]),
        ("lz4", &[]),
        ("lz4", &["-Xhc"]),
    ]);
}

/// For each (compressor, options) squashfs pair: payloads with and without pairing apply
/// exactly, and where this build's library is mksquashfs's (which KEEL_REQUIRE_RECOMPRESS
/// demands), a quarter of the target at least is re-created.
fn recompress_each(cases: &[(&str, &[&str])]) {
    for &(comp, extra) in cases {
        let (src, tgt) = squashfs_pair(comp, extra).unwrap();
        let (recompressed, blocks) = recompress_blocks(&src, &tgt);
        let same = match comp {
            // liblz4's block compressor is not reachable from here: the same library
            // version as mksquashfs links.
            "lz4" => {
                let have = keel_payload::recompressors();
                linked_version("mksquashfs", "liblz4")
                    .is_some_and(|v| have.contains(&format!("lz4 {v}")))
            }
            // Nor is liblzma's, which is named by what it makes, not by its version: the
            // generator re-creates a block only once it compressed it to the same bytes,
            // so blocks re-created at all show that this build's encoder is mksquashfs's.
            "xz" => recompressed > 0,
            _ => compressor_reproduces(&tgt),
        };
        println!("{comp} {extra:?}: this build reproduces mksquashfs's blocks: {same}");
        if same {
            assert!(
                recompressed > tgt.len() as u64 / 4,
                "{comp}: {recompressed} bytes re-created"
            );
            // A changed file's blocks are re-created from a delta; a new file's only when
            // zstd compresses its content much better than the image's compressor did
            // (not xz, not zstd from level 15).
            assert!(recreated(&tgt, &blocks, "/usr/bin/tool", 1 << 20), "{comp}");
            let strong = comp == "xz" || comp == "zstd";
            assert_eq!(
                recreated(&tgt, &blocks, "/opt/new/part0.txt", 0),
                !strong,
                "{comp}: a new file's blocks"
            );
        }
        if std::env::var_os("KEEL_REQUIRE_RECOMPRESS").is_some() {
            assert!(
                same,
                "KEEL_REQUIRE_RECOMPRESS: this build's {comp} differs from mksquashfs's"
            );
        }
    }
}

/// On EROFS with lz4 pclusters (mkfs.erofs -zlz4hc, -zlz4, legacy cluster maps) the
/// changed files' pclusters are re-created from a delta of their content: the liblz4
/// built here (1.9.4) fills them as mkfs.erofs with Debian's liblz4 1.9.4 did. Every
/// payload applies exactly and survives cuts. A pcluster liblz4 does not reproduce (one
/// rewritten by another lz4 encoder, the content the same) leaves its piece of the file
/// to block operations, and the payload is still exact.
#[test]
fn erofs_lz4_changed_files_are_recompressed() {
    let require = std::env::var_os("KEEL_REQUIRE_RECOMPRESS").is_some();
    let modes: [&[&str]; 3] = [
        &["-zlz4hc,9"],
        &["-zlz4"],
        &["-zlz4hc,12", "-E", "legacy-compress"],
    ];
    let mut first = None;
    for extra in modes {
        let Some((src, tgt)) = erofs_pair(extra) else {
            return;
        };
        let recompressed = recompress_case(&src, &tgt);
        println!("{extra:?}: {recompressed} target bytes re-created");
        if require {
            assert!(
                recompressed > tgt.len() as u64 / 4,
                "{extra:?}: {recompressed} bytes re-created"
            );
        }
        first.get_or_insert((src, tgt, recompressed));
    }
    let (src, mut tgt, before) = first.unwrap();
    resume_case(&src, &tgt, 6);
    // The last pcluster of a changed file (not among the few the level is found from)
    // as lz4_flex compresses it, where that fits the block.
    use keel_payload::erofs;
    let files = erofs::compressed_files(&tgt);
    let (f, content, cl, other) = files
        .iter()
        .filter(|f| f.path.starts_with("/usr/lib/mod") && f.clusters.len() >= 4)
        .find_map(|f| {
            let content = erofs::content(&tgt, f, u64::MAX)?;
            let c = f.clusters.last().filter(|c| !c.raw)?;
            let piece = &content[c.start as usize..(c.start + u64::from(c.len)) as usize];
            let other = lz4_flex::block::compress(piece);
            (other.len() <= 4096).then_some((f, content.clone(), *c, other))
        })
        .expect("a last pcluster lz4_flex packs into a block");
    let at = cl.block as usize * 4096;
    let block = &mut tgt[at..at + 4096];
    assert!(block[4096 - other.len()..] != other[..], "the same bytes");
    block.fill(0);
    block[4096 - other.len()..].copy_from_slice(&other);
    assert!(erofs::content(&tgt, f, u64::MAX).unwrap() == content);
    let after = recompress_case(&src, &tgt);
    println!("rewritten pcluster: {after} target bytes re-created, {before} before");
    if require {
        assert!(after > 0 && after < before, "{after} of {before}");
    }
    // An old version that does not decompress (a damaged source image): the file goes
    // without a reference, the payload is still exact.
    let mut src = src;
    let old = erofs::compressed_files(&src);
    let tool = old.iter().find(|f| f.path == "/usr/bin/tool").unwrap();
    let cl = tool.clusters.iter().find(|c| !c.raw).unwrap();
    src[cl.block as usize * 4096..][..4096].fill(0xff);
    assert!(erofs::content(&src, tool, u64::MAX).is_none());
    let damaged = recompress_case(&src, &tgt);
    if require {
        assert!(damaged > 0);
    }
}

/// Payloads from `src` to `tgt` at level 9 with and without file pairing, and the keyring
/// trusting their key.
fn with_and_without_pairing(src: &[u8], tgt: &[u8]) -> (Keyring, Vec<u8>, Vec<u8>) {
    let key = SigningKey::generate().unwrap();
    let mut o = GenerateOptions::new("acme-test", "2.0");
    o.level = 9;
    let paired = generate(Some(src), tgt, &key, &o).unwrap();
    o.file_pairing = false;
    let unpaired = generate(Some(src), tgt, &key, &o).unwrap();
    (ring(&key), paired, unpaired)
}

/// Generate with and without file pairing, apply both exactly; the RECOMPRESS target
/// bytes of the paired payload (which is the smaller when there are any).
fn recompress_case(src: &[u8], tgt: &[u8]) -> u64 {
    recompress_blocks(src, tgt).0
}

/// [`recompress_case`], and the 4 KiB blocks the paired payload's RECOMPRESS operations
/// write.
fn recompress_blocks(src: &[u8], tgt: &[u8]) -> (u64, Vec<u64>) {
    let (ring, paired, unpaired) = with_and_without_pairing(src, tgt);
    let ao = ApplyOptions::new(&ring, VersionCheck::Unchecked);
    let mut recompressed = 0;
    let mut blocks = Vec::new();
    for p in [&paired, &unpaired] {
        let mut out = vec![0u8; tgt.len()];
        let done = apply(&p[..], Some(src), &mut out, &ao).unwrap();
        assert!(out == tgt, "the target is exact");
        let ops = &done.manifest.operations;
        let bytes: u64 = ops
            .iter()
            .filter(|o| o.op == OpType::Recompress)
            .map(|o| o.target_blocks() * 4096)
            .sum();
        assert_eq!(bytes > 0, done.manifest.recompressor.is_some());
        if std::ptr::eq(p, &paired) {
            recompressed = bytes;
            blocks = ops
                .iter()
                .filter(|o| o.op == OpType::Recompress)
                .flat_map(|o| o.target.iter().flat_map(|e| e.start..e.start + e.blocks))
                .collect();
        } else {
            assert_eq!(bytes, 0, "no pairing, no RECOMPRESS");
        }
    }
    println!(
        "paired {} bytes ({recompressed} target bytes re-created), unpaired {} bytes",
        paired.len(),
        unpaired.len()
    );
    if recompressed > 0 {
        assert!(paired.len() < unpaired.len());
    }
    (recompressed, blocks)
}

/// Whether the RECOMPRESS operations that wrote `blocks` of `img` re-created the data
/// block of file `path` holding byte `at` of it.
fn recreated(img: &[u8], blocks: &[u64], path: &str, at: u64) -> bool {
    let image = keel_payload::squashfs::open(img).unwrap();
    let f = image.files.iter().find(|f| f.path == path).unwrap();
    let (offset, _) = f
        .data
        .each()
        .nth((at / u64::from(image.block_size)) as usize)
        .unwrap();
    blocks.contains(&(offset / 4096))
}

/// File pairing makes groups of files and chains new files, and a smaller payload than
/// block matching alone; both payloads apply exactly.
fn pairing_case(src: &[u8], tgt: &[u8]) {
    let (ring, paired, unpaired) = with_and_without_pairing(src, tgt);
    let ao = ApplyOptions::new(&ring, VersionCheck::Unchecked);
    for p in [&paired, &unpaired] {
        let mut out = vec![0u8; tgt.len()];
        let done = apply(&p[..], Some(src), &mut out, &ao).unwrap();
        assert!(out == tgt, "the target is exact");
        let _ = done;
    }
    let mut out = vec![0u8; tgt.len()];
    let done = apply(&paired[..], Some(src), &mut out, &ao).unwrap();
    // Groups of files: PATCH operations whose target and source are several extents.
    let multi = done
        .manifest
        .operations
        .iter()
        .filter(|op| {
            matches!(op.op, OpType::Patch | OpType::Bsdiff)
                && op.target.len() > 1
                && op.source.len() > 1
        })
        .count();
    assert!(multi > 0, "no file groups in the payload");
    assert!(
        done.manifest
            .operations
            .iter()
            .any(|op| op.op == OpType::Chain),
        "the second group of new files does not build on the first"
    );
    println!(
        "paired {} bytes, unpaired {} bytes",
        paired.len(),
        unpaired.len()
    );
    assert!(
        paired.len() < unpaired.len(),
        "pairing gave {} bytes, without {}",
        paired.len(),
        unpaired.len()
    );
}

#[test]
fn ext4_pairs_and_chains_survive_cuts() {
    let Some((src, tgt)) = ext4_pair() else {
        return;
    };
    resume_case(&src, &tgt, 12);
}

/// Generating reports its progress (increasing, ending at source + 2 x target bytes) and
/// stops when asked; an observed run makes the same payload as an unobserved one.
#[test]
fn generate_reports_progress_and_can_be_cancelled() {
    let key = SigningKey::generate().unwrap();
    let src = seeded_bytes(31, 3 << 20);
    let tgt = edited(&src, &[Edit::Zero(100_000, 500_000)]);
    let seen = std::sync::Mutex::new(Vec::new());
    let observer = |done: u64, total: u64| seen.lock().unwrap().push((done, total));
    let observed =
        keel_payload::generate_observed(Some(&src), &tgt, &key, &opts(), Some(&observer)).unwrap();
    assert_eq!(observed, generate(Some(&src), &tgt, &key, &opts()).unwrap());
    let seen = seen.into_inner().unwrap();
    let total = (src.len() + 2 * tgt.len()) as u64;
    assert!(seen.iter().all(|&(_, t)| t == total), "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "not increasing: {seen:?}"
    );
    assert_eq!(seen.last().map(|s| s.0), Some(total), "{seen:?}");
    let stop = keel_io::Cancel::new();
    stop.cancel();
    let e =
        keel_payload::generate_observed(Some(&src), &tgt, &key, &opts(), Some(&stop)).unwrap_err();
    assert!(matches!(e, keel_payload::Error::Cancelled), "{e}");
}

/// A payload source that can seek: a resumed apply jumps over the applied operations'
/// data instead of reading it, and ends with the same target.
#[test]
fn a_seekable_payload_is_not_read_again_on_resume() {
    struct Counting {
        inner: io::Cursor<Vec<u8>>,
        read: u64,
    }
    impl io::Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }
    impl io::Seek for Counting {
        fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
            self.inner.seek(to)
        }
    }
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    let src = seeded_bytes(41, 8 << 20);
    let tgt = seeded_bytes(42, 8 << 20); // all new: the data is most of the payload
    let p = generate(Some(&src), &tgt, &key, &opts()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let o = ApplyOptions::new(&r, VersionCheck::Unchecked)
        .state(&state)
        .checkpoint_bytes(64 << 10);
    let mut clean = Cut {
        disk: vec![0u8; tgt.len()],
        writes: 0,
        fail_at: usize::MAX,
    };
    apply(
        &p[..],
        Some(&src[..]),
        &mut clean,
        &ApplyOptions::new(&r, VersionCheck::Unchecked),
    )
    .unwrap();
    let _ = std::fs::remove_file(&state);
    let mut t = Cut {
        disk: vec![0u8; tgt.len()],
        writes: 0,
        fail_at: clean.writes * 3 / 4,
    };
    assert!(apply(&p[..], Some(&src[..]), &mut t, &o).is_err());
    let mut again = Cut {
        disk: t.disk,
        writes: 0,
        fail_at: usize::MAX,
    };
    let mut payload = Counting {
        inner: io::Cursor::new(p.clone()),
        read: 0,
    };
    let done = keel_payload::Payload::open_seekable(&mut payload, o.keyring)
        .and_then(|p| p.apply(Some(&src[..]), &mut again, &o))
        .unwrap();
    assert!(done.resumed_at > 0);
    assert_eq!(again.disk, tgt);
    let skipped: u64 = done.manifest.operations[..done.resumed_at]
        .iter()
        .map(|o| o.data_length)
        .sum();
    assert!(skipped > 0);
    assert_eq!(
        payload.read,
        p.len() as u64 - skipped,
        "applied data was read again"
    );
}

/// Content that moved by an amount that is not whole blocks and far from where it was
/// (squashfs and compressed EROFS images after a file is added): no block copies and no
/// neighbouring copy predicts where it came from; the content anchors find it, and the
/// payload carries only what is new.
#[test]
fn content_moved_by_an_odd_amount_is_found_by_its_anchors() {
    let src = seeded_bytes(7, 8 << 20);
    let mut tgt = seeded_bytes(8, (3 << 20) + 1234);
    tgt.extend_from_slice(&src[..(5 << 20) - 1234]);
    let key = SigningKey::generate().unwrap();
    let p = generate(
        Some(&src),
        &tgt,
        &key,
        &GenerateOptions::new("acme-test", "2.0").level(3),
    )
    .unwrap();
    assert!(
        p.len() < (3 << 20) + (300 << 10),
        "{} bytes for 3 MiB of new data",
        p.len()
    );
    let mut ring = Keyring::new();
    ring.add(key.public_key().clone()).unwrap();
    let mut out = vec![0u8; tgt.len()];
    apply(
        &p[..],
        Some(&src),
        &mut out,
        &ApplyOptions::new(&ring, VersionCheck::Unchecked),
    )
    .unwrap();
    assert!(out == tgt);
}
