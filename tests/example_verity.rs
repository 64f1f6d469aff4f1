//! The `verity` example as a veritysetup user runs it: same options, same `Root hash:`
//! line, same exit statuses, and devices that veritysetup accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::fs;
use std::path::PathBuf;
use std::process::Output;

mod common;

use common::{run, stdout};
use std::path::Path;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn example() -> PathBuf {
    common::example("verity")
}

fn sign_example() -> PathBuf {
    common::example("verity-sign")
}

fn veritysetup() -> Option<PathBuf> {
    common::tool("veritysetup", "cryptsetup-bin")
}

fn root_of(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    stdout(o)
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|r| r.trim().to_string())
        .expect("Root hash: line")
}

fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect()
}

/// veritysetup, the example, and a temporary directory holding `len` bytes of test data
/// in the file `name`; `None` (a visible skip) without veritysetup.
fn with_data(name: &str, len: usize) -> Option<(PathBuf, PathBuf, tempfile::TempDir, PathBuf)> {
    let vs = veritysetup()?;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join(name);
    fs::write(&d, data(len)).unwrap();
    Some((vs, example(), dir, d))
}

#[test]
fn format_verify_dump_like_veritysetup() {
    let Some((vs, ex, dir, d)) = with_data("data", 4096 * 300 + 77) else {
        return;
    };
    let (ds, h) = (d.to_str().unwrap(), dir.path().join("hash"));
    let hs = h.to_str().unwrap();
    let opts = [
        "--hash",
        "sha512",
        "--data-block-size",
        "1024",
        "--hash-block-size",
        "4096",
        "--salt",
        "00ff",
        "--uuid",
        "4d1c0e7a-2b3c-4d5e-8f90-a1b2c3d4e5f6",
    ];
    let mut args = vec!["format", ds, hs];
    args.extend(opts);
    let root = root_of(&run(&ex, &args));
    // veritysetup reads Keel's device and agrees on the root.
    assert!(run(&vs, &["verify", ds, hs, &root]).status.success());
    let v = dir.path().join("vs-hash");
    let mut vargs = vec!["format".to_string(), ds.into(), v.to_str().unwrap().into()];
    vargs.extend(
        [
            "--hash=sha512",
            "--data-block-size=1024",
            "--hash-block-size=4096",
            "--salt=00ff",
            "--uuid=4d1c0e7a-2b3c-4d5e-8f90-a1b2c3d4e5f6",
        ]
        .map(String::from),
    );
    let vs_root = root_of(&run(
        &vs,
        &vargs.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert_eq!(root, vs_root);
    assert_eq!(fs::read(&h).unwrap(), fs::read(&v).unwrap());

    // Exit statuses as veritysetup's: 0 good, 1 wrong root, 2 corrupted data.
    assert_eq!(
        run(&ex, &["verify", ds, v.to_str().unwrap(), &root])
            .status
            .code(),
        Some(0)
    );
    let mut wrong = root.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    assert_eq!(run(&ex, &["verify", ds, hs, &wrong]).status.code(), Some(1));
    assert_eq!(run(&vs, &["verify", ds, hs, &wrong]).status.code(), Some(1));
    let mut bad = fs::read(&d).unwrap();
    bad[1024 * 77 + 3] ^= 1;
    fs::write(&d, &bad).unwrap();
    let o = run(&ex, &["verify", ds, hs, &root]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("data block 77"));
    assert_eq!(run(&vs, &["verify", ds, hs, &root]).status.code(), Some(2));

    let dump = stdout(&run(&ex, &["dump", hs]));
    for line in [
        "UUID:            \t4d1c0e7a-2b3c-4d5e-8f90-a1b2c3d4e5f6",
        "Hash algorithm:  \tsha512",
        "Data block size: \t1024",
        "Data blocks:     \t1200",
        "Salt:            \t00ff",
    ] {
        assert!(dump.contains(line), "{line:?} missing from\n{dump}");
    }
}

#[test]
fn no_superblock_offset_and_empty_salt() {
    let Some((vs, ex, _dir, d)) = with_data("dev", 4096 * 64) else {
        return;
    };
    let ds = d.to_str().unwrap();
    // The tree on the data device itself, after 60 blocks of data.
    let inline = [
        "--no-superblock",
        "--salt",
        "-",
        "--data-blocks",
        "60",
        "--hash-offset",
        "245760",
    ];
    let root = root_of(&run(&ex, &[&["format", ds, ds][..], &inline].concat()));
    let o = run(
        &vs,
        &[
            "verify",
            ds,
            ds,
            &root,
            "--no-superblock",
            "--salt=-",
            "--data-blocks=60",
            "--hash-offset=245760",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&ex, &[&["verify", ds, ds, &root][..], &inline].concat());
    assert!(o.status.success());
    // An offset inside the data is refused rather than overwriting it.
    let o = run(&ex, &["format", ds, ds, "--hash-offset", "4096"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("overwrite"));
}

#[test]
fn keygen_sign_verify_signature() {
    let ex = sign_example();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    fs::write(p("data"), data(4096 * 40)).unwrap();
    let root = root_of(&run(&example(), &["format", &p("data"), &p("hash")]));
    for k in ["a", "b"] {
        let o = run(
            &ex,
            &[
                "keygen",
                &p(&format!("{k}.pem")),
                "--public",
                &p(&format!("{k}.pub")),
            ],
        );
        assert!(o.status.success());
    }
    // keygen never overwrites a key.
    assert!(!run(&ex, &["keygen", &p("a.pem")]).status.success());
    assert!(run(
        &ex,
        &[
            "sign",
            &p("hash"),
            &root,
            "--key",
            &p("a.pem"),
            "--out",
            &p("root.sig")
        ]
    )
    .status
    .success());
    let ok = run(
        &ex,
        &[
            "verify-signature",
            &p("root.sig"),
            "--pubkey",
            &p("b.pub"),
            "--pubkey",
            &p("a.pub"),
            "--data-device",
            &p("data"),
            "--hash-device",
            &p("hash"),
        ],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout(&ok).contains(&root));
    // Exit status 1: not signed by a trusted key, or not the bytes that were signed.
    let verify_sig = |sig: &str, key: &str| {
        run(&ex, &["verify-signature", &p(sig), "--pubkey", &p(key)])
            .status
            .code()
    };
    assert_eq!(verify_sig("root.sig", "b.pub"), Some(1));
    let mut sig = fs::read(p("root.sig")).unwrap();
    sig[56] ^= 1; // data blocks
    fs::write(p("bad.sig"), &sig).unwrap();
    assert_eq!(verify_sig("bad.sig", "a.pub"), Some(1));
    let mut d = fs::read(p("data")).unwrap();
    d[4096 * 39] ^= 1;
    fs::write(p("data"), &d).unwrap();
    let o = run(
        &ex,
        &[
            "verify-signature",
            &p("root.sig"),
            "--pubkey",
            &p("a.pub"),
            "--data-device",
            &p("data"),
            "--hash-device",
            &p("hash"),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn demo_runs_the_whole_cycle() {
    let o = run(&sign_example(), &["demo", "--size-mib", "64"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = stdout(&o);
    assert!(
        out.contains("Detected: data block 12345 corrupted"),
        "{out}"
    );
    assert!(out.contains("Signature good"), "{out}");
}

#[test]
fn fec_format_verify_repair_and_table() {
    let Some(vs) = veritysetup() else { return };
    let ex = example();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (d, h, f) = (p("data"), p("hash"), p("fec"));
    let original = data(4096 * 3000);
    fs::write(&d, &original).unwrap();
    let common = [
        "--salt",
        "00ff",
        "--uuid",
        "4d1c0e7a-2b3c-4d5e-8f90-a1b2c3d4e5f6",
        "--fec-roots",
        "6",
    ];
    // Roots dm-verity does not take are refused at the command line, the range named;
    // nothing is created.
    for bad in ["1", "25", "256"] {
        let o = run(
            &ex,
            &["format", &d, &h, "--fec-device", &f, "--fec-roots", bad],
        );
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("2..=24"), "{bad}: {}", stderr(&o));
        assert!(!Path::new(&h).exists() && !Path::new(&f).exists());
    }
    let mut args = vec!["format", &d, &h, "--fec-device", &f];
    args.extend(common);
    let out = run(&ex, &args);
    let root = root_of(&out);
    assert!(stdout(&out).contains("FEC device size:"));
    // Byte-identical to veritysetup's parity, and veritysetup accepts it.
    let (vh, vf) = (p("vhash"), p("vfec"));
    let mut vargs = vec!["format", &d, &vh];
    let vfec = format!("--fec-device={vf}");
    vargs.push(&vfec);
    vargs.extend(common);
    let vout = run(&vs, &vargs);
    assert_eq!(root_of(&vout), root);
    assert!(fs::read(&vf).unwrap() == fs::read(&f).unwrap());
    // The parity's lines as veritysetup prints them.
    let fec_lines = |o: &Output| -> Vec<String> {
        stdout(o)
            .lines()
            .filter(|l| l.starts_with("FEC"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(fec_lines(&out).len(), 3, "{}", stdout(&out));
    assert_eq!(fec_lines(&out), fec_lines(&vout));

    // Damage three bytes of two blocks: verify reports them (exit 2), repair into a copy
    // leaves the original alone and restores the copy exactly.
    let mut bad = original.clone();
    bad[4096 * 10 + 1] ^= 0x10;
    bad[4096 * 10 + 2] ^= 0x20;
    bad[4096 * 2000 + 3000] ^= 0x40;
    fs::write(&d, &bad).unwrap();
    let fec_args = ["--fec-device", f.as_str(), "--fec-roots", "6"];
    let mut v = vec!["verify", &d, &h, &root];
    v.extend(fec_args);
    let o = run(&ex, &v);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stdout(&o).contains("Found 3 repairable errors with FEC device."),
        "{}",
        stdout(&o)
    );
    let copies = p("copies");
    let mut r = vec!["repair", &d, &h, &root, "--output-dir", &copies];
    r.extend(fec_args);
    let o = run(&ex, &r);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("Repaired: data blocks [10, 2000]"),
        "{}",
        stdout(&o)
    );
    assert_eq!(fs::read(&d).unwrap(), bad, "the original is left alone");
    assert!(fs::read(dir.path().join("copies/data")).unwrap() == original);
    // In place.
    let mut r = vec!["repair", &d, &h, &root];
    r.extend(fec_args);
    assert_eq!(run(&ex, &r).status.code(), Some(0));
    assert!(fs::read(&d).unwrap() == original);
    assert!(run(&vs, &["verify", &d, &h, &root]).status.success());

    // The parity asked for with other roots (the default 2) disagrees nearly everywhere:
    // verify says so (exit 2), repair refuses (exit 1) and leaves the parity as it was.
    let o = run(&ex, &["verify", &d, &h, &root, "--fec-device", &f]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("other --fec-roots"), "{}", stderr(&o));
    let o = run(&ex, &["repair", &d, &h, &root, "--fec-device", &f]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("nothing was written"), "{}", stderr(&o));
    assert!(fs::read(&f).unwrap() == fs::read(&vf).unwrap());
    // A damaged parity with whole data: verify exits 2, repair rewrites it exactly.
    let mut parity = fs::read(&f).unwrap();
    parity[5000..5044].fill(b'X');
    fs::write(&f, &parity).unwrap();
    let o = run(&ex, &v);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("the parity is damaged"),
        "{}",
        stderr(&o)
    );
    assert_eq!(run(&ex, &r).status.code(), Some(0));
    assert!(fs::read(&f).unwrap() == fs::read(&vf).unwrap());
    assert_eq!(run(&ex, &v).status.code(), Some(0));

    // Tree and parity in one new file, a gap before the parity: the gap counts as zeros,
    // as veritysetup has it when it can read it (here, given a file that long already:
    // from a new one it fails, "Failed to read RS block 0").
    let (one, vone) = (p("one"), p("vone"));
    let mut a = vec![
        "format",
        &d,
        &one,
        "--fec-device",
        &one,
        "--fec-offset",
        "176128",
    ];
    a.extend(common);
    let ours = run(&ex, &a);
    assert_eq!(root_of(&ours), root);
    fs::File::create(&vone).unwrap().set_len(176128).unwrap();
    let mut va = vec!["format", &d, &vone];
    let (vfd, vfo) = (
        format!("--fec-device={vone}"),
        "--fec-offset=176128".to_string(),
    );
    va.extend([vfd.as_str(), vfo.as_str()]);
    va.extend(common);
    let theirs = run(&vs, &va);
    assert_eq!(root_of(&theirs), root);
    assert!(fs::read(&one).unwrap() == fs::read(&vone).unwrap());
    // The sizes as veritysetup prints them: the parity counts in the hash device's.
    let sizes = |o: &Output| -> Vec<String> {
        stdout(o)
            .lines()
            .filter(|l| l.starts_with("FEC") || l.starts_with("Hash device size"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(sizes(&ours).len(), 3, "{}", stdout(&ours));
    assert_eq!(sizes(&ours), sizes(&theirs));
    // A parity device that keeps nothing is refused before any work, and the tree file
    // this run created is gone.
    let nh = p("never");
    let o = run(&ex, &["format", &d, &nh, "--fec-device", "/dev/null"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not a regular file or block device"),
        "{}",
        stderr(&o)
    );
    assert!(!Path::new(&nh).exists());

    // Too much damage in one round: exit 2, nothing written wrong.
    let g_rounds = (3000u64 + 25).div_ceil(255 - 6);
    let mut wrecked = original.clone();
    for i in 0..8u64 {
        let at = ((i * g_rounds) * 4096) as usize;
        wrecked[at..at + 4096].fill(0xa5);
    }
    fs::write(&d, &wrecked).unwrap();
    let o = run(&ex, &r);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stdout(&o).contains("Unrepairable"), "{}", stdout(&o));
    assert!(fs::read(&d).unwrap() == wrecked);

    // Data that shrank: named with the size it needs, by verify and repair alike.
    fs::write(&d, &original[..4096 * 2000]).unwrap();
    for cmd in [&v, &r] {
        let o = run(&ex, cmd);
        assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
        let said = format!("{}{}", stdout(&o), stderr(&o));
        assert!(
            said.contains("data device too small: need 12288000 bytes, found 8192000"),
            "{said}"
        );
    }
    assert_eq!(fs::read(&d).unwrap().len(), 4096 * 2000);
    fs::write(&d, &wrecked).unwrap();

    // The kernel table names the parity.
    let t = run(
        &ex,
        &[
            "table",
            &h,
            &root,
            "--data-device",
            "/dev/vda",
            "--hash-device",
            "/dev/vdb",
            "--fec-device",
            &f,
            "--fec-roots",
            "6",
            "--fec-kernel-device",
            "/dev/vdc",
        ],
    );
    let line = stdout(&t);
    assert!(
        line.contains(" 8 use_fec_from_device /dev/vdc fec_roots 6 fec_blocks 3025 fec_start 0"),
        "{line}"
    );

    // Android's header block after the parity.
    let af = p("android.fec");
    let mut a = vec!["format", &d, &h, "--fec-device", &af, "--android-header"];
    a.extend(common);
    fs::write(&d, &original).unwrap();
    assert!(run(&ex, &a).status.success());
    let bytes = fs::read(&af).unwrap();
    let block = &bytes[bytes.len() - 4096..];
    let header = keel::verity::AndroidFecHeader::parse_block(block).unwrap();
    assert_eq!(header.roots, 6);
    assert_eq!(header.fec_size as usize, bytes.len() - 4096);
}

/// A layout refused after the one file that holds data, tree and parity was lengthened to
/// reach the parity's offset: the file is left as long as it was.
#[test]
fn a_refused_layout_leaves_a_shared_file_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("all");
    let original = data(4096 * 3001);
    fs::write(&d, &original).unwrap();
    let ds = d.to_str().unwrap();
    let (hash_offset, fec_offset) = ((4096 * 3001).to_string(), (4096 * 3010).to_string());
    let o = run(
        &example(),
        &[
            "format",
            ds,
            ds,
            "--hash-offset",
            &hash_offset,
            "--data-blocks",
            "3001",
            "--fec-device",
            ds,
            "--fec-offset",
            &fec_offset,
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("hash area"), "{}", stderr(&o));
    assert!(fs::read(&d).unwrap() == original, "the file changed");
}
