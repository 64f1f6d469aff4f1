//! The `payload` example: generate, inspect, apply from a pipe, and a real process killed
//! with SIGKILL mid-apply, then resumed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{example, run, seeded_bytes};

/// Run the payload example; it must succeed.
fn ok(args: &[&str]) -> String {
    common::ok("payload", args)
}

/// A temporary directory holding a new signing key (`key.pem`) and its public key
/// (`pub.pem`).
fn keyed_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let key = keel::verity::SigningKey::generate().unwrap();
    std::fs::write(dir.path().join("key.pem"), key.to_pkcs8_pem().unwrap()).unwrap();
    let public = key.public_key().to_pem().unwrap();
    std::fs::write(dir.path().join("pub.pem"), public).unwrap();
    dir
}

/// `payload generate` of what `what` names into `out` in `dir`, signed with its key, for
/// acme 2.0 at level 3; what it printed.
fn generate(dir: &tempfile::TempDir, out: &str, what: &[&str]) -> String {
    let p = |n: &str| dir.path().join(n).display().to_string();
    let (key, out) = (p("key.pem"), p(out));
    let rest = [
        "--key",
        &key,
        "-o",
        &out,
        "--level",
        "3",
        "--compatible",
        "acme",
        "--version",
        "2.0",
    ];
    ok(&[&["generate"], what, &rest].concat())
}

/// An old image of `size` seeded bytes and a new one with `changed` other (incompressible)
/// data.
fn versions(size: usize, changed: std::ops::Range<usize>) -> (Vec<u8>, Vec<u8>) {
    let old = seeded_bytes(1, size);
    let mut new = old.clone();
    let len = changed.len();
    new[changed].copy_from_slice(&seeded_bytes(2, len));
    (old, new)
}

#[test]
fn generate_inspect_apply_and_resume_after_sigkill() {
    let dir = keyed_dir();
    let p = |n: &str| dir.path().join(n).display().to_string();
    // 24 MiB: half unchanged, a quarter zeroed, a quarter new (incompressible) data.
    let (old, mut new) = versions(24 << 20, 12 << 20..18 << 20);
    new[6 << 20..12 << 20].fill(0);
    std::fs::write(p("old"), &old).unwrap();
    std::fs::write(p("new"), &new).unwrap();
    let out = generate(
        &dir,
        "payload",
        &["--source", &p("old"), "--target", &p("new")],
    );
    assert!(out.contains("bytes for 25165824 bytes of images"), "{out}");
    let shown = ok(&["inspect", &p("payload"), "--pubkey", &p("pub.pem")]);
    assert!(
        shown.contains("compatible:   acme") && shown.contains("COPY") && shown.contains("ZERO"),
        "{shown}"
    );

    // Apply from a pipe that stalls half way; kill the process once it has checkpointed.
    let payload = std::fs::read(p("payload")).unwrap();
    let mut child = Command::new(example("payload"))
        .args(from_old(
            &p,
            "slot-b",
            &[
                "--state",
                &p("state"),
                "--checkpoint-mib",
                "1",
                "--installed-version",
                "1.0",
                "-",
            ],
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&payload[..payload.len() * 3 / 4]).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(&p("state")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        std::path::Path::new(&p("state")).exists(),
        "no checkpoint before the kill"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(stdin);
    assert_ne!(std::fs::read(p("slot-b")).unwrap_or_default(), new);

    // Run again with the same record: it continues and ends with the identical target.
    let out = ok(&strs(&from_old(
        &p,
        "slot-b",
        &[
            "--state",
            &p("state"),
            "--installed-version",
            "1.0",
            &p("payload"),
        ],
    )));
    assert!(out.contains("resumed at operation"), "{out}");
    assert_eq!(std::fs::read(p("slot-b")).unwrap(), new);

    // Refusals: the running slot as target, a downgrade, another system.
    let o = run(
        &example("payload"),
        &strs(&from_old(&p, "old", &["--no-version-check", &p("payload")])),
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("running slot"));
    let o = run(
        &example("payload"),
        &strs(&from_old(
            &p,
            "t2",
            &["--installed-version", "3.0", &p("payload")],
        )),
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("downgrade"));
    let o = run(
        &example("payload"),
        &strs(&from_old(
            &p,
            "t3",
            &[
                "--compatible",
                "other",
                "--installed-version",
                "1.0",
                &p("payload"),
            ],
        )),
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"acme\""));
    // Refused runs leave no target behind.
    for t in ["t2", "t3"] {
        assert!(!dir.path().join(t).exists(), "{t} was left behind");
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `apply --source old --target TARGET --pubkey pub.pem` and then `extra`.
fn from_old(p: &dyn Fn(&str) -> String, target: &str, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "apply".to_string(),
        "--source".into(),
        p("old"),
        "--target".into(),
        p(target),
        "--pubkey".into(),
        p("pub.pem"),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn apply_args<'a>(p: &'a dyn Fn(&str) -> String, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "apply",
        "--target",
        &p("slot-b"),
        "--pubkey",
        &p("pub.pem"),
        "--state",
        &p("st"),
        "--checkpoint-mib",
        "1",
        "--installed-version",
        "1.0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// The repro of a resume that failed forever: a truncated apply leaves a record, the
/// target is damaged behind its back, and the complete payload is applied again with the
/// same record. The applier sees that the target no longer holds what the record promises,
/// says so, starts over in the same run and completes.
#[test]
fn a_resume_over_a_changed_target_starts_over_and_completes() {
    let dir = keyed_dir();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let image = seeded_bytes(7, 16 << 20);
    std::fs::write(p("image"), &image).unwrap();
    ok(&[
        "generate",
        "--full",
        "--target",
        &p("image"),
        "--key",
        &p("key.pem"),
        "-o",
        &p("full"),
        "--level",
        "1",
        "--version",
        "2.0",
    ]);
    let full = std::fs::read(p("full")).unwrap();
    std::fs::write(p("cut"), &full[..full.len() * 3 / 4]).unwrap();
    let o = run(&example("payload"), &strs(&apply_args(&p, &[&p("cut")])));
    assert!(!o.status.success());
    assert!(dir.path().join("st").exists(), "the cut run left no record");
    assert!(
        dir.path().join("slot-b").exists(),
        "the cut run removed the target its record needs"
    );
    // Damage the first MiB the record says was written.
    let mut t = std::fs::read(p("slot-b")).unwrap();
    t[..1 << 20].fill(0xa5);
    std::fs::write(p("slot-b"), &t).unwrap();
    for run_no in 0..3 {
        let out = ok(&strs(&apply_args(&p, &[&p("full")])));
        if run_no == 0 {
            assert!(
                out.contains("started over from the first operation: the target no longer holds"),
                "{out}"
            );
        }
        assert_eq!(std::fs::read(p("slot-b")).unwrap(), image, "run {run_no}");
        assert!(
            !dir.path().join("st").exists(),
            "the record outlived a complete apply"
        );
        // The next run finds no record, and the same version refused as a reinstall.
        std::fs::remove_file(p("slot-b")).unwrap();
    }
}

/// A bundle of a root (a delta) and a kernel file (full) made with `--image` and `--file`,
/// listed image by image, and applied image by image by name; a bundle applied as one
/// image, or an image it does not have, is refused.
#[test]
fn a_bundle_of_a_root_and_a_kernel_is_made_listed_and_applied_by_image() {
    let dir = keyed_dir();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let (old, new) = versions(4 << 20, 1 << 20..2 << 20);
    let kernel = seeded_bytes(3, (1 << 20) + 123);
    std::fs::write(p("old"), &old).unwrap();
    std::fs::write(p("new"), &new).unwrap();
    std::fs::write(p("vmlinuz"), &kernel).unwrap();
    let out = generate(
        &dir,
        "bundle",
        &[
            "--image",
            &format!("usr={}:{}", p("old"), p("new")),
            "--file",
            &format!("kernel={}", p("vmlinuz")),
        ],
    );
    assert!(
        out.contains(&format!(
            "bytes for {} bytes of images",
            new.len() + kernel.len()
        )),
        "{out}"
    );
    let shown = ok(&["inspect", &p("bundle"), "--pubkey", &p("pub.pem")]);
    for line in [
        "bundle:       2 images",
        "image \"usr\" (slot)",
        "image \"kernel\" (file)",
    ] {
        assert!(shown.contains(line), "{line}: {shown}");
    }
    let apply = |target: &str, extra: &[&str]| {
        let mut a = from_old(&p, target, &["--no-version-check"]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(p("bundle"));
        run(&example("payload"), &strs(&a))
    };
    let o = apply("usr.out", &["--bundle-image", "usr"]);
    assert!(o.status.success(), "{o:?}");
    assert!(std::fs::read(p("usr.out")).unwrap() == new);
    let o = apply("kernel.out", &["--bundle-image", "kernel"]);
    assert!(o.status.success(), "{o:?}");
    assert!(std::fs::read(p("kernel.out")).unwrap() == kernel);
    for (extra, says) in [
        (&[][..], "a bundle of 2 images"),
        (&["--bundle-image", "initrd"][..], "no image \"initrd\""),
    ] {
        let o = apply("x.out", extra);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains(says), "{o:?}");
        assert!(
            !std::path::Path::new(&p("x.out")).exists(),
            "{extra:?} left its target"
        );
    }
}

/// `payload generate --full` of `image` into `out` with the directory's key, version 2.0.
fn full<'a>(key: &'a str, image: &'a str, out: &'a str) -> [&'a str; 10] {
    [
        "generate",
        "--full",
        "--target",
        image,
        "--key",
        key,
        "-o",
        out,
        "--version",
        "2.0",
    ]
}

/// The generator's own memory (anonymous pages: the images are mapped, their pages are
/// the kernel's cache) at its peak while `payload generate --full` runs on an image of
/// `mib` MiB of incompressible data, as a squashfs or EROFS image largely is; checks the
/// payload and that nothing is left beside it.
fn full_payload_peak(dir: &tempfile::TempDir, mib: usize) -> u64 {
    let p = |n: &str| dir.path().join(n).display().to_string();
    let image = p(&format!("image-{mib}"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&image).unwrap());
    for i in 0..mib / 8 {
        f.write_all(&seeded_bytes(100 + i as u64, 8 << 20)).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
    let out = p(&format!("payload-{mib}"));
    let key = p("key.pem");
    let mut child = Command::new(example("payload"))
        .args(full(&key, &image, &out))
        .args(["--level", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let finished = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        let anon = std::fs::read_to_string(&status)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .unwrap_or(0);
        peak = peak.max(anon << 10);
        std::thread::sleep(Duration::from_millis(10));
    };
    let o = child.wait_with_output().unwrap();
    assert!(finished.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown = ok(&["inspect", &out, "--pubkey", &p("pub.pem")]);
    assert!(shown.contains("version:      2.0"), "{shown}");
    std::fs::remove_file(&image).unwrap();
    std::fs::remove_file(&out).unwrap();
    let left: Vec<_> = common::names_in(dir.path())
        .into_iter()
        .filter(|n| n.contains("keel-"))
        .collect();
    assert!(left.is_empty(), "left beside the payload: {left:?}");
    peak
}

/// At OS-image scale the payload is written as it is encoded: the generator's own memory
/// for an image ten times larger grows by at most what it may hold for the writer (64 MiB
/// of finished blobs, and one blob per worker: a slow disk fills that), and stays within
/// 256 MiB (it was three times the image when the payload was built in memory).
#[test]
fn the_generators_memory_does_not_grow_with_the_image() {
    let dir = keyed_dir();
    let small = full_payload_peak(&dir, 64);
    let large = full_payload_peak(&dir, 640);
    eprintln!("peak anonymous memory: {small} bytes for 64 MiB, {large} for 640 MiB");
    assert!(large > 0, "the peak was not seen");
    assert!(
        large <= small + (80 << 20) && large <= 256 << 20,
        "{large} bytes for 640 MiB against {small} for 64 MiB"
    );

    // Where the payload cannot go: a directory, a device; a clear error, nothing left.
    let p = |n: &str| dir.path().join(n).display().to_string();
    let key = p("key.pem");
    std::fs::write(p("img"), seeded_bytes(5, 1 << 20)).unwrap();
    std::fs::create_dir(p("adir")).unwrap();
    std::os::unix::fs::symlink(p("img"), p("img-link")).unwrap();
    for out in [
        p("adir"),
        "/dev/null".to_string(),
        p("no/such/dir/x"),
        p("img"),
        p("img-link"),
        p("key.pem"),
    ] {
        let o = run(&example("payload"), &full(&key, &p("img"), &out));
        assert!(!o.status.success(), "{out}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&out), "{out}: {err}");
    }
    assert!(std::fs::read(p("img")).unwrap() == seeded_bytes(5, 1 << 20));
    // A FIFO for the image: refused by name, not waited on.
    assert!(Command::new("mkfifo")
        .arg(p("fifo"))
        .status()
        .unwrap()
        .success());
    let o = run(&example("payload"), &full(&key, &p("fifo"), &p("x")));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("fifo"), "{err}");
    std::fs::remove_file(p("fifo")).unwrap();
    // An output name as long as a name may be: the files beside it have short names.
    let long = p(&"n".repeat(255));
    ok(&full(&key, &p("img"), &long));
    std::fs::remove_file(&long).unwrap();
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(
        left, 5,
        "key.pem, pub.pem, img, img-link, adir and nothing else"
    );

    // Killed half way (SIGKILL: no clean-up runs): the older payload is as it was, and
    // nothing of the new one is left (its files have no names until the end).
    let big = p("big");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
    for i in 0..32 {
        f.write_all(&seeded_bytes(200 + i, 8 << 20)).unwrap();
    }
    drop(f);
    std::fs::write(p("old.p"), b"the older payload").unwrap();
    let mut child = Command::new(example("payload"))
        .args(full(&key, &big, &p("old.p")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once it has written 16 MiB of the payload's data (by the kernel's count of
    // its writes), well before the end.
    let io = format!("/proc/{}/io", child.id());
    loop {
        assert!(child.try_wait().unwrap().is_none(), "done before the kill");
        let written = std::fs::read_to_string(&io)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("wchar: ")?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if written > 16 << 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(std::fs::read(p("old.p")).unwrap(), b"the older payload");
    assert_eq!(
        common::names_in(dir.path()),
        ["adir", "big", "img", "img-link", "key.pem", "old.p", "pub.pem"]
    );
}

/// `generate --verity-salt` binds the new image's dm-verity root; `apply --hash-out
/// --fec-out` writes the tree and parity built from the blocks as they are written: the
/// very bytes of `veritysetup format --no-superblock --fec-device`. Outputs that are inputs
/// or each other, and a payload without a root, are refused before anything is written.
#[test]
fn apply_writes_the_tree_and_parity_veritysetup_writes() {
    let dir = keyed_dir();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let (old, new) = versions(8 << 20, (3 << 20)..(5 << 20));
    std::fs::write(p("old"), &old).unwrap();
    std::fs::write(p("new"), &new).unwrap();
    generate(
        &dir,
        "rooted.p",
        &[
            "--source",
            &p("old"),
            "--target",
            &p("new"),
            "--verity-salt",
            "5a17",
        ],
    );
    let out = ok(&strs(&from_old(
        &p,
        "out",
        &[
            "--no-version-check",
            "--hash-out",
            &p("hash"),
            "--fec-out",
            &p("fec"),
            "--fec-roots",
            "3",
            &p("rooted.p"),
        ],
    )));
    assert!(out.contains("dm-verity root verified"), "{out}");
    assert!(std::fs::read(p("out")).unwrap() == new);
    let root = out
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|r| r.trim().to_string())
        .expect("root hash line");

    if let Some(vs) = keel_testsupport::tool("veritysetup", "cryptsetup-bin") {
        let fec = format!("--fec-device={}", p("vfec"));
        let said = run(
            &vs,
            &[
                "format",
                "--no-superblock",
                "--salt=5a17",
                &fec,
                "--fec-roots=3",
                &p("new"),
                &p("vhash"),
            ],
        );
        assert!(said.status.success());
        assert!(String::from_utf8_lossy(&said.stdout).contains(&root));
        assert!(std::fs::read(p("hash")).unwrap() == std::fs::read(p("vhash")).unwrap());
        assert!(std::fs::read(p("fec")).unwrap() == std::fs::read(p("vfec")).unwrap());
    }

    // Files written over each other or over an input, however spelled and whether or not
    // they exist yet: refused before anything is written, every input as it was.
    let other = keel::verity::SigningKey::generate().unwrap();
    std::fs::write(p("pub2.pem"), other.public_key().to_pem().unwrap()).unwrap();
    std::os::unix::fs::symlink(p("fresh"), p("dangling")).unwrap();
    let inputs = ["old", "out", "pub.pem", "pub2.pem", "rooted.p"];
    let before: Vec<Vec<u8>> = inputs
        .iter()
        .map(|n| std::fs::read(p(n)).unwrap())
        .collect();
    let (out, fresh, dangling, h1, h2) = (p("out"), p("fresh"), p("dangling"), p("h1"), p("h2"));
    let (old_p, rooted, pub2, st) = (p("old"), p("rooted.p"), p("pub2.pem"), p("st"));
    let cases: [(&str, Vec<&str>); 10] = [
        ("out", vec!["--hash-out", &out]),
        ("fresh", vec!["--hash-out", &dangling]),
        ("fresh", vec!["--fec-out", &fresh, "--hash-out", &h1]),
        ("out", vec!["--hash-out", &h2, "--fec-out", &h2]),
        ("out", vec!["--hash-out", &pub2]),
        ("out", vec!["--state", &old_p]),
        ("out", vec!["--state", &rooted]),
        ("out", vec!["--state", &pub2]),
        ("fresh", vec!["--state", &fresh]),
        ("out", vec!["--state", &st, "--hash-out", &st]),
    ];
    for (target, extra) in cases {
        let mut args = vec!["--no-version-check", "--pubkey", &pub2];
        args.extend(extra.iter().copied());
        args.push(&rooted);
        let r = run(&example("payload"), &strs(&from_old(&p, target, &args)));
        assert!(!r.status.success(), "{target} {extra:?}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains("is the same file as"), "{extra:?}: {err}");
        for (n, b) in inputs.iter().zip(&before) {
            assert!(
                std::fs::read(p(n)).unwrap() == *b,
                "{n} changed by {extra:?}"
            );
        }
        for gone in ["fresh", "h1", "h2", "st"] {
            assert!(!dir.path().join(gone).exists(), "{gone} left by {extra:?}");
        }
    }
    // No signed root in the payload: refused, nothing written.
    generate(
        &dir,
        "plain.p",
        &["--source", &p("old"), "--target", &p("new")],
    );
    let r = run(
        &example("payload"),
        &strs(&from_old(
            &p,
            "out2",
            &[
                "--no-version-check",
                "--hash-out",
                &p("hash2"),
                &p("plain.p"),
            ],
        )),
    );
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("no signed dm-verity root"),
        "{r:?}"
    );
    assert!(!dir.path().join("out2").exists() && !dir.path().join("hash2").exists());
}

/// A payload read from standard input that is the target itself is refused before a byte
/// is written (an outside review found it overwritten as it was read), as the same file
/// given by name is.
#[test]
fn a_payload_on_stdin_that_is_the_target_is_refused() {
    let dir = keyed_dir();
    let p = |n: &str| dir.path().join(n).display().to_string();
    std::fs::write(p("new"), seeded_bytes(3, 3 << 20)).unwrap();
    generate(&dir, "payload", &["--full", "--target", &p("new")]);
    let before = std::fs::read(p("payload")).unwrap();
    let out = Command::new(example("payload"))
        .args([
            "apply",
            "--target",
            &p("payload"),
            "--pubkey",
            &p("pub.pem"),
            "--no-version-check",
            "-",
        ])
        .stdin(std::fs::File::open(p("payload")).unwrap())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is the same file as the payload"), "{err}");
    assert!(std::fs::read(p("payload")).unwrap() == before);
    // Bytes after the data are no part of the payload: refused by apply as by inspect.
    let mut longer = before.clone();
    longer.extend_from_slice(b"unsigned");
    std::fs::write(p("longer"), &longer).unwrap();
    for args in [
        vec!["inspect", "--pubkey", &p("pub.pem"), &p("longer")]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>(),
        vec![
            "apply".into(),
            "--target".into(),
            p("image"),
            "--pubkey".into(),
            p("pub.pem"),
            "--no-version-check".into(),
            p("longer"),
        ],
    ] {
        let out = Command::new(example("payload"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains("after"), "{args:?}: {err}");
    }
    assert!(!std::path::Path::new(&p("image")).exists());
}

/// `generate --no-file-pairing`: the images as blocks only. On squashfs no block is
/// compressed again on the device (no RECOMPRESS), the trade a device short of CPU makes
/// for a larger payload; both payloads apply to the exact image.
#[test]
fn no_file_pairing_makes_a_payload_without_recompression() {
    let dir = keyed_dir();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let text = |seed: u64, len: usize| -> Vec<u8> {
        // Compressible: lines of seeded numbers.
        let mut out = Vec::with_capacity(len + 32);
        let mut x = seed;
        while out.len() < len {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.extend_from_slice(format!("line {}\n", (x >> 40) % 5000).as_bytes());
        }
        out.truncate(len);
        out
    };
    for (tree, change) in [("a", false), ("b", true)] {
        for i in 0..6u64 {
            let mut c = text(i, 20_000 + 5000 * i as usize);
            if change && i % 2 == 0 {
                c.splice(1000..1000, *b"changed in version b");
            }
            let f = dir.path().join(tree).join(format!("usr/lib/f{i:02}"));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, c).unwrap();
        }
    }
    // Stored blocks (-noD -noF): re-created by any zstd version.
    let extra = ["-noD", "-noF", "-b", "65536"];
    let mk = |tree: &str, img: &str| {
        keel_testsupport::mksquashfs(
            &dir.path().join(tree),
            &dir.path().join(img),
            "zstd",
            &extra,
        )
    };
    let (Some(_), Some(new)) = (mk("a", "a.img"), mk("b", "b.img")) else {
        return;
    };
    let (a, b) = (p("a.img"), p("b.img"));
    let recompress_ops = |payload: &str| -> u64 {
        let out = ok(&["inspect", "--pubkey", &p("pub.pem"), payload]);
        let line = out
            .lines()
            .find(|l| l.starts_with("RECOMPRESS"))
            .unwrap_or_else(|| panic!("no RECOMPRESS line in {out}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    generate(&dir, "paired.p", &["--source", &a, "--target", &b]);
    generate(
        &dir,
        "blocks.p",
        &["--source", &a, "--target", &b, "--no-file-pairing"],
    );
    assert!(
        recompress_ops(&p("paired.p")) > 0,
        "paired: files re-created"
    );
    assert_eq!(recompress_ops(&p("blocks.p")), 0, "blocks only");
    for payload in ["paired.p", "blocks.p"] {
        let out = p(&format!("{payload}.img"));
        ok(&[
            "apply",
            "--source",
            &a,
            "--target",
            &out,
            "--pubkey",
            &p("pub.pem"),
            "--installed-version",
            "1.0",
            &p(payload),
        ]);
        assert!(
            std::fs::read(&out).unwrap() == new,
            "{payload}: not the image"
        );
    }
}
