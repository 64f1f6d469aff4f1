//! The `update` example: the agent's commands on the demo disk, with the `slots` example
//! as the boot loader.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::path::Path;

use common::{copy_dir, example, ok, run, stdout};
use keel::partition::GptDisk;
use sha2::Digest;

fn update(dir: &Path, args: &[&str]) -> std::process::Output {
    let config = dir.join("system.toml");
    let (root, state) = (dir.join("root"), dir.join("state"));
    let mut a = vec![
        "--config",
        config.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ];
    a.extend_from_slice(args);
    run(&example("update"), &a)
}

/// `update demo` in a temporary directory: (the directory, `DIR/demo`).
fn demo() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    ok(
        "update",
        &["demo", dir.to_str().unwrap(), "--slot-mib", "24"],
    );
    (tmp, dir)
}

fn partuuid(disk: &Path, label: &str) -> String {
    let g = GptDisk::open(std::fs::read(disk).unwrap(), None).unwrap();
    g.partition_by_label(label).unwrap().guid.to_string()
}

#[test]
fn install_boot_commit_and_status_through_the_example() {
    let (tmp, dir) = demo();
    let (disk, payload) = (dir.join("disk.img"), dir.join("update-1-to-2.payload"));

    // A payload for another system: refused, the disk untouched.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let text = std::fs::read_to_string(dir.join("system.toml")).unwrap();
    std::fs::write(
        other.join("system.toml"),
        text.replace("keel-demo", "acme-os"),
    )
    .unwrap();
    std::fs::create_dir_all(other.join("root")).unwrap();
    copy_dir(&dir.join("root"), &other.join("root"));
    let before = std::fs::read(&disk).unwrap();
    let o = update(&other, &["install", payload.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\"keel-demo\""),
        "{o:?}"
    );
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "a refused install wrote the disk"
    );

    // Installed from standard input.
    let o = std::process::Command::new(example("update"))
        .args(["--config", dir.join("system.toml").to_str().unwrap()])
        .args(["--root", dir.join("root").to_str().unwrap()])
        .args(["--state", dir.join("state").to_str().unwrap()])
        .args(["install", "-"])
        .stdin(std::fs::File::open(&payload).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout(&o).contains("installed version 2.0 into slot B"),
        "{}",
        stdout(&o)
    );
    let st: serde_json::Value =
        serde_json::from_str(&stdout(&update(&dir, &["status", "--json"]))).unwrap();
    assert_eq!(st["slots"][1]["next_boot"], true, "{st}");
    assert_eq!(st["slots"][1]["version"], "2.0", "{st}");
    assert_eq!(st["slots"][0]["booted"], true, "{st}");

    // The boot loader (the slots example) boots B; the kernel is told /usr is B.
    let boot = ok(
        "slots",
        &[disk.to_str().unwrap(), "boot", "--policy", "flatcar"],
    );
    assert!(boot.contains("booting slot B"), "{boot}");
    std::fs::write(
        dir.join("root/proc/cmdline"),
        format!("mount.usr=PARTUUID={}\n", partuuid(&disk, "USR-B")),
    )
    .unwrap();
    let o = update(&dir, &["commit", "--check", "true", "--check", "test -d /"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout(&o).contains("slot B passed its checks"),
        "{}",
        stdout(&o)
    );
    let o = update(&dir, &["status"]);
    assert!(stdout(&o).contains("booted"), "{}", stdout(&o));
}

#[test]
fn a_failing_check_exits_2_and_the_boot_loader_falls_back() {
    let (_tmp, dir) = demo();
    let (disk, payload) = (dir.join("disk.img"), dir.join("update-1-to-2.payload"));
    let o = update(&dir, &["install", payload.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(
        "slots",
        &[disk.to_str().unwrap(), "boot", "--policy", "flatcar"],
    );
    std::fs::write(
        dir.join("root/proc/cmdline"),
        format!("mount.usr=PARTUUID={}\n", partuuid(&disk, "USR-B")),
    )
    .unwrap();
    let o = update(&dir, &["commit", "--check", "exit 3"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stdout(&o).contains("reboot to fall back"), "{}", stdout(&o));
    let boot = ok(
        "slots",
        &[disk.to_str().unwrap(), "boot", "--policy", "flatcar"],
    );
    assert!(boot.contains("booting slot A"), "{boot}");
}

/// `update fetch-apply URL` from the demo's v1 image into its slot-b.img.
fn fetch_apply_args(dir: &Path, url: &str) -> Vec<String> {
    let p = |n: &str| dir.join(n).display().to_string();
    [
        "fetch-apply",
        url,
        "--source",
        &p("v1.img"),
        "--target",
        &p("slot-b.img"),
        "--pubkey",
        &p("release-key.pub"),
        "--installed-version",
        "1.0",
        "--bundle-image",
        "usr",
    ]
    .map(str::to_string)
    .to_vec()
}

/// System proxies: with `http_proxy` set, the payload comes through it (tinyproxy,
/// tunnelling with CONNECT) and applies whole; with `no_proxy` naming the server, the
/// proxy sees nothing more.
#[test]
fn fetch_apply_goes_through_the_system_proxy() {
    let (_tmp, dir) = demo();
    let Some(server) = keel_testsupport::nginx::serve(&dir, &dir.join("nginx")) else {
        return;
    };
    let Some(proxy) = keel_testsupport::tinyproxy::start(&dir.join("proxy")) else {
        return;
    };
    let v2 = std::fs::read(dir.join("v2.img")).unwrap();
    let target = dir.join("slot-b.img");
    let url = format!("{}/update-1-to-2.payload", server.base);
    let fetch = |no_proxy: Option<&str>| {
        std::fs::File::create(&target)
            .unwrap()
            .set_len(v2.len() as u64)
            .unwrap();
        let mut cmd = std::process::Command::new(example("update"));
        cmd.args(fetch_apply_args(&dir, &url));
        for v in [
            "ALL_PROXY",
            "all_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "NO_PROXY",
            "no_proxy",
        ] {
            cmd.env_remove(v);
        }
        cmd.env("http_proxy", &proxy.url);
        if let Some(n) = no_proxy {
            cmd.env("no_proxy", n);
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            std::fs::read(&target).unwrap() == v2,
            "the fetched update differs"
        );
    };
    fetch(None);
    let through = proxy.requests();
    let connect = format!("CONNECT 127.0.0.1:{} HTTP/1.1", server.port);
    assert!(through.contains(&connect), "{through:?}");
    fetch(Some("127.0.0.1"));
    assert_eq!(proxy.requests(), through, "no_proxy was not followed");
}

/// The network side through the example: a payload streamed from nginx (through a proxy
/// that cuts connections) into a target; a root and an index signed by the example,
/// served, verified and followed; the same index again is a rollback.
#[test]
fn fetch_apply_sign_and_check_against_nginx() {
    let (_tmp, dir) = demo();
    let Some(server) = keel_testsupport::nginx::serve(&dir, &dir.join("nginx")) else {
        return;
    };
    let proxy = keel_testsupport::faults::cutting_proxy(server.port, 5, 300 << 10);
    let target = dir.join("slot-b.img");
    let v2 = std::fs::read(dir.join("v2.img")).unwrap();
    std::fs::File::create(&target)
        .unwrap()
        .set_len(v2.len() as u64)
        .unwrap();
    let url = format!("{}/update-1-to-2.payload", proxy.base);
    let p = |n: &str| dir.join(n).display().to_string();
    let mut args = fetch_apply_args(&dir, &url);
    args.extend(["--max-rate".to_string(), "64M".to_string()]);
    let out = ok(
        "update",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(out.contains("applied version 2.0"), "{out}");
    assert!(
        std::fs::read(&target).unwrap() == v2,
        "the fetched update differs"
    );

    // A root (threshold 1) and an index, signed with the example.
    let key_hex = {
        let pem = std::fs::read_to_string(dir.join("release-key.pub")).unwrap();
        hex::encode(keel::trust::PublicKey::from_pem(&pem).unwrap().to_bytes())
    };
    std::fs::write(
        dir.join("root-doc.json"),
        format!("{{\"type\":\"keel-root\",\"version\":1,\"expires\":4102444800,\"threshold\":1,\"keys\":[\"{key_hex}\"]}}"),
    )
    .unwrap();
    // The index document made from the payload files by the example: a full payload
    // (made with the payload example) and the demo's delta from 1.0.
    full_payload(&dir, "full-2.payload");
    // The delta given as the full payload is refused, naming it.
    let o = run(
        &example("publish"),
        &[
            "index",
            "--full",
            &p("update-1-to-2.payload"),
            "--pubkey",
            &p("release-key.pub"),
            "-o",
            &p("x.json"),
        ],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("update-1-to-2.payload: a delta payload"),
        "{o:?}"
    );
    assert!(!dir.join("x.json").exists());
    let out = ok(
        "publish",
        &[
            "index",
            "--full",
            &p("full-2.payload"),
            "--delta",
            &format!("1.0={}", p("update-1-to-2.payload")),
            "--pubkey",
            &p("release-key.pub"),
            "--serial",
            "3",
            "-o",
            &p("index-doc.json"),
        ],
    );
    assert!(out.contains("index serial 3 with 1 release"), "{out}");
    let doc: keel::release::Index =
        serde_json::from_slice(&std::fs::read(dir.join("index-doc.json")).unwrap()).unwrap();
    let delta = &doc.releases[0].deltas[0];
    let delta_bytes = std::fs::read(dir.join("update-1-to-2.payload")).unwrap();
    assert_eq!(
        (
            delta.from_version.as_str(),
            delta.artifact.url.as_str(),
            delta.artifact.size
        ),
        ("1.0", "update-1-to-2.payload", delta_bytes.len() as u64)
    );
    assert_eq!(
        delta.artifact.digest().unwrap(),
        <[u8; 32]>::from(sha2::Sha256::digest(&delta_bytes))
    );
    let v1 = std::fs::read(dir.join("v1.img")).unwrap();
    assert_eq!(
        delta.source_digest,
        hex::encode(keel::payload::format::image_digest(&v1[..], v1.len() as u64).unwrap())
    );
    assert_eq!(
        (
            doc.releases[0].version.as_str(),
            doc.releases[0].compatible.as_str()
        ),
        ("2.0", "keel-demo")
    );
    for (kind, doc, out) in [
        ("root", "root-doc.json", "root.json"),
        ("index", "index-doc.json", "index.json"),
    ] {
        ok(
            "publish",
            &[
                "sign",
                "--kind",
                kind,
                &p(doc),
                "--key",
                &p("release-key.pem"),
                "-o",
                &p(out),
            ],
        );
    }
    let check = |serial_file: &str| {
        run(
            &example("update"),
            &[
                "check",
                &format!("{}/index.json", server.base),
                "--trust-root",
                &p("root.json"),
                "--compatible",
                "keel-demo",
                "--installed",
                "1.0",
                "--machine-id",
                "m1",
                "--serial-file",
                &p(serial_file),
            ],
        )
    };
    let o = check("serial");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout(&o).contains("take 2.0 full payload"),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("serial")).unwrap().trim(),
        "3"
    );
    // The same index again is fine; a device that has accepted serial 4 refuses it.
    assert!(check("serial").status.success());
    std::fs::write(dir.join("serial"), "4\n").unwrap();
    let o = check("serial");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("rollback"),
        "{o:?}"
    );

    // The agent's own path, `update install --index`: an index whose release says 3.0
    // but names the payloads signed as 2.0 (a holder of the index key alone pointing a
    // release at another signed payload) is refused before anything is written.
    let disk = dir.join("disk.img");
    let before = std::fs::read(&disk).unwrap();
    let mut forged = doc.clone();
    forged.releases[0].version = "3.0".into();
    // The serial the device has accepted (the same index number again is no rollback).
    forged.serial = 3;
    std::fs::write(
        dir.join("forged-doc.json"),
        serde_json::to_vec(&forged).unwrap(),
    )
    .unwrap();
    ok(
        "publish",
        &[
            "sign",
            "--kind",
            "index",
            &p("forged-doc.json"),
            "--key",
            &p("release-key.pem"),
            "-o",
            &p("forged.json"),
        ],
    );
    let install = |index: &str| {
        update(
            &dir,
            &[
                "install",
                "--index",
                &format!("{}/{index}", server.base),
                "--trust-root",
                &p("root.json"),
            ],
        )
    };
    let o = install("forged.json");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("version 3.0") && err.contains("says 2.0"),
        "{err}"
    );
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "the disk was written"
    );

    // The real index: the delta from the booted 1.0 is fetched from nginx and installed.
    let o = install("index.json");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout(&o).contains("installed version 2.0 into slot B"),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("state/index-serial"))
            .unwrap()
            .trim(),
        "3"
    );
    let status = stdout(&update(&dir, &["status"]));
    assert!(
        status
            .lines()
            .any(|l| l.starts_with('B') && l.contains("2.0") && l.contains("next")),
        "{status}"
    );
}

/// Numbers no one means, given as arguments: a clear refusal, never a panic (exit 101) or
/// a value wrapped into its opposite. The demo's private key is the owner's alone.
#[test]
fn out_of_range_arguments_are_refused_and_the_demo_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_tmp, dir) = demo();
    let mode = std::fs::metadata(dir.join("release-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "release-key.pem is {mode:o}");

    // Sizes that would wrap when turned into bytes.
    for args in [
        &[
            "demo",
            "/nonexistent-demo",
            "--slot-mib",
            "18446744073709551615",
        ][..],
        &[
            "install",
            "x.payload",
            "--checkpoint-mib",
            "18446744073709551615",
        ][..],
    ] {
        let o = update(&dir, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
    }
    // A demo into a directory that holds anything (a symlink planted to another file)
    // writes nothing through it.
    let planted = dir.parent().unwrap().join("planted");
    std::fs::create_dir_all(&planted).unwrap();
    let victim = dir.parent().unwrap().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    std::os::unix::fs::symlink(&victim, planted.join("system.toml")).unwrap();
    let o = run(
        &example("update"),
        &["demo", planted.to_str().unwrap(), "--slot-mib", "24"],
    );
    assert!(!o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not empty"),
        "{o:?}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    // An empty directory others can write to: they could plant links while it is
    // written, so the demo does not write there.
    let open_dir = dir.parent().unwrap().join("open");
    std::fs::create_dir_all(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = run(
        &example("update"),
        &["demo", open_dir.to_str().unwrap(), "--slot-mib", "24"],
    );
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("writable by others"),
        "{o:?}"
    );
    assert_eq!(std::fs::read_dir(&open_dir).unwrap().count(), 0);
    // A rate cap below the slow-retrieval floor would run for ever.
    let o = update(
        &dir,
        &[
            "fetch-apply",
            "http://127.0.0.1:9/x",
            "--target",
            "t",
            "--pubkey",
            "k",
            "--no-version-check",
            "--max-rate",
            "1",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{o:?}");

    let o = update(&dir, &["commit", "--timeout", "18446744073709551615"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--timeout"),
        "{o:?}"
    );

    let p = |n: &str| dir.join(n).display().to_string();
    let index = |extra: &[&str]| {
        let mut args = vec!["index", "--full", "FULL", "--pubkey", "PUB", "-o", "OUT"];
        args.extend_from_slice(extra);
        let (full, key, out) = (p("full.payload"), p("release-key.pub"), p("index-doc.json"));
        let args: Vec<&str> = args
            .iter()
            .map(|a| match *a {
                "FULL" => full.as_str(),
                "PUB" => key.as_str(),
                "OUT" => out.as_str(),
                a => a,
            })
            .collect();
        run(&example("publish"), &args)
    };
    full_payload(&dir, "full.payload");
    let o = index(&["--expires-days", "213503982334601"]);
    assert!(!o.status.success() && o.status.code() != Some(101), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--expires-days"),
        "{o:?}"
    );
    assert!(!dir.join("index-doc.json").exists());
    // An index at the last serial cannot be extended: refused, not wrapped to 0.
    std::fs::write(
        dir.join("base.json"),
        "{\"type\":\"keel-index\",\"serial\":18446744073709551615,\"expires\":1,\"releases\":[]}",
    )
    .unwrap();
    let base = p("base.json");
    let o = index(&["--base", &base]);
    assert!(!o.status.success() && o.status.code() != Some(101), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("last serial"),
        "{o:?}"
    );
    assert!(!dir.join("index-doc.json").exists());
}

/// A full payload of the demo's version 2 (made with the payload example) as DIR/NAME.
fn full_payload(dir: &Path, name: &str) {
    let p = |n: &str| dir.join(n).display().to_string();
    ok(
        "payload",
        &[
            "generate",
            "--full",
            "--target",
            &p("v2.img"),
            "--key",
            &p("release-key.pem"),
            "-o",
            &p(name),
            "--compatible",
            "keel-demo",
            "--version",
            "2.0",
            "--level",
            "1",
        ],
    );
}
