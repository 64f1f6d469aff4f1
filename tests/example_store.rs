//! The `store` example on the demo's images: publish a block store, install from it with
//! the old image as the seed (from the file and from nginx through a proxy that cuts
//! connections), the tree it writes checked by veritysetup; the release index names it and
//! `update check` says what a device would fetch; a target that is the seed is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use common::{example, ok, run, stdout};

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

/// The number after `what` in `out` (`fetched:      123 bytes`).
fn number_after(out: &str, what: &str) -> u64 {
    let at = out
        .find(what)
        .unwrap_or_else(|| panic!("no {what:?} in {out}"))
        + what.len();
    out[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn publish_install_check_and_refusals() {
    let (_tmp, dir) = demo();
    let p = |n: &str| dir.join(n).display().to_string();
    let v1 = std::fs::read(dir.join("v1.img")).unwrap();
    let v2 = std::fs::read(dir.join("v2.img")).unwrap();
    let publish = |out: &str| {
        run(
            &example("store"),
            &[
                "publish",
                "--image",
                &p("v2.img"),
                "--key",
                &p("release-key.pem"),
                "--verity-salt",
                "5a17",
                "-o",
                &p(out),
                "--compatible",
                "keel-demo",
                "--version",
                "2.0",
                "--level",
                "3",
            ],
        )
    };
    let o = publish("v2.store");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let root_hash = stdout(&o)
        .lines()
        .find_map(|l| l.strip_prefix("root hash:"))
        .unwrap()
        .trim()
        .to_string();
    // An existing output is not overwritten.
    let before = std::fs::read(dir.join("v2.store")).unwrap();
    let o = publish("v2.store");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("v2.store"),
        "{o:?}"
    );
    assert!(std::fs::read(dir.join("v2.store")).unwrap() == before);

    // From the file, the old image the seed: the new image, and the tree veritysetup
    // checks against the signed root.
    let install = |store: &str, target: &str, extra: &[&str]| {
        run(
            &example("store"),
            &[
                &[
                    "install",
                    "--store",
                    store,
                    "--seed",
                    &p("v1.img"),
                    "--target",
                    &p(target),
                ][..],
                &[
                    "--pubkey",
                    &p("release-key.pub"),
                    "--installed-version",
                    "1.0",
                ],
                extra,
            ]
            .concat(),
        )
    };
    let o = install(&p("v2.store"), "b.img", &["--hash-out", &p("b.hash")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(dir.join("b.img")).unwrap() == v2,
        "the installed image differs"
    );
    let out = stdout(&o);
    assert!(out.contains(&root_hash), "{out}");
    let from_file = number_after(&out, "fetched:");
    assert!(from_file * 4 < before.len() as u64, "{out}");
    if let Some(vs) = common::tool("veritysetup", "cryptsetup-bin") {
        let blocks = (v2.len() / 4096).to_string();
        let v = std::process::Command::new(vs)
            .args([
                "verify",
                "--no-superblock",
                "--hash",
                "sha256",
                "--data-block-size",
                "4096",
            ])
            .args([
                "--hash-block-size",
                "4096",
                "--data-blocks",
                &blocks,
                "--salt",
                "5a17",
            ])
            .args([&p("b.img"), &p("b.hash"), &root_hash])
            .output()
            .unwrap();
        assert!(
            v.status.success(),
            "veritysetup verify: {}",
            String::from_utf8_lossy(&v.stderr)
        );
    }

    // The seed as the target, the tree or the record, the store as the target: each
    // spelled another way, refused before anything is written; the inputs untouched.
    let store_bytes = std::fs::read(dir.join("v2.store")).unwrap();
    for (extra, target, names) in [
        (vec![], "./../demo/v1.img", "same file as --seed"),
        (
            vec!["--hash-out", "./../demo/v1.img"],
            "d.img",
            "same file as --seed",
        ),
        (
            vec!["--state", "./../demo/v1.img"],
            "e.img",
            "same file as --seed",
        ),
        (vec![], "./../demo/v2.store", "same file as --store"),
        (
            vec!["--hash-out", "./../demo/release-key.pub"],
            "f.img",
            "same file as --pubkey",
        ),
    ] {
        let extra: Vec<String> = extra
            .iter()
            .map(|a| {
                if a.starts_with("./") {
                    p(a)
                } else {
                    a.to_string()
                }
            })
            .collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let o = install(&p("v2.store"), target, &extra);
        assert!(!o.status.success(), "{target} {extra:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(names), "{o:?}");
        assert!(
            !dir.join("d.img").exists()
                && !dir.join("e.img").exists()
                && !dir.join("f.img").exists()
        );
    }
    assert!(std::fs::read(dir.join("v1.img")).unwrap() == v1);
    assert!(std::fs::read(dir.join("v2.store")).unwrap() == store_bytes);
    // A FIFO as the seed is refused at once, not waited on.
    let fifo = dir.join("seed.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let o = run(
        &example("store"),
        &[
            "install",
            "--store",
            &p("v2.store"),
            "--seed",
            &p("seed.fifo"),
            "--target",
            &p("i.img"),
            "--pubkey",
            &p("release-key.pub"),
            "--no-version-check",
        ],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("seed.fifo"),
        "{o:?}"
    );
    // --plan writes nothing, not even an empty target.
    let o = install(&p("v2.store"), "g.img", &["--plan"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains("to fetch:"), "{}", stdout(&o));
    assert!(!dir.join("g.img").exists());
    // A longer file as --hash-out ends as the tree alone.
    std::fs::write(dir.join("long.hash"), vec![0xeeu8; 1 << 20]).unwrap();
    let o = install(&p("v2.store"), "h.img", &["--hash-out", &p("long.hash")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(dir.join("long.hash")).unwrap(),
        std::fs::read(dir.join("b.hash")).unwrap()
    );

    // From nginx through a proxy that cuts every few hundred KiB: the same image, the
    // same bytes fetched as from the file.
    let Some(server) = keel_testsupport::nginx::serve(&dir, &dir.join("nginx")) else {
        return;
    };
    let proxy = keel_testsupport::faults::cutting_proxy(server.port, 5, 200 << 10);
    let o = install(&format!("{}/v2.store", proxy.base), "c.img", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(dir.join("c.img")).unwrap() == v2);
    assert_eq!(number_after(&stdout(&o), "fetched:"), from_file);

    // The release names the store; `update check` with the installed image says what it
    // would fetch, which is what the install fetched.
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
            &p("full-2.payload"),
            "--compatible",
            "keel-demo",
            "--version",
            "2.0",
            "--level",
            "1",
        ],
    );
    ok(
        "publish",
        &[
            "index",
            "--full",
            &p("full-2.payload"),
            "--store",
            &p("v2.store"),
            "--pubkey",
            &p("release-key.pub"),
            "-o",
            &p("index-doc.json"),
        ],
    );
    let doc: keel::release::Index =
        serde_json::from_slice(&std::fs::read(dir.join("index-doc.json")).unwrap()).unwrap();
    assert_eq!(doc.releases[0].store.as_ref().unwrap().url, "v2.store");
    // A store cut short is not pinned as it is.
    std::fs::write(
        dir.join("cut.store"),
        &store_bytes[..store_bytes.len() - 100],
    )
    .unwrap();
    let o = run(
        &example("publish"),
        &[
            "index",
            "--full",
            &p("full-2.payload"),
            "--store",
            &p("cut.store"),
            "--pubkey",
            &p("release-key.pub"),
            "-o",
            &p("cut-doc.json"),
        ],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("its header says"),
        "{o:?}"
    );
    // A store where the full payload goes, a payload where the store goes: refused.
    for (full, store, says) in [
        ("v2.store", "v2.store", "a block store, given as a payload"),
        (
            "full-2.payload",
            "full-2.payload",
            "a payload, given as a block store",
        ),
    ] {
        let o = run(
            &example("publish"),
            &[
                "index",
                "--full",
                &p(full),
                "--store",
                &p(store),
                "--pubkey",
                &p("release-key.pub"),
                "-o",
                &p("kind-doc.json"),
            ],
        );
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains(says), "{o:?}");
    }
    let key_hex = {
        let pem = std::fs::read_to_string(dir.join("release-key.pub")).unwrap();
        hex::encode(keel::trust::PublicKey::from_pem(&pem).unwrap().to_bytes())
    };
    std::fs::write(
        dir.join("root-doc.json"),
        format!("{{\"type\":\"keel-root\",\"version\":1,\"expires\":4102444800,\"threshold\":1,\"keys\":[\"{key_hex}\"]}}"),
    )
    .unwrap();
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
    let check = |extra: &[&str]| {
        let url = format!("{}/index.json", server.base);
        let o = run(
            &example("update"),
            &[
                &[
                    "check",
                    &url,
                    "--trust-root",
                    &p("root.json"),
                    "--compatible",
                    "keel-demo",
                ][..],
                &["--installed", "1.0", "--machine-id", "m1"],
                extra,
            ]
            .concat(),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        stdout(&o)
    };
    let out = check(&[]);
    assert!(out.contains("take 2.0 block store: at most"), "{out}");
    let out = check(&["--seed", &p("v1.img"), "--pubkey", &p("release-key.pub")]);
    assert!(out.contains("take 2.0 block store:"), "{out}");
    assert_eq!(number_after(&out, "block store:"), from_file, "{out}");
}

/// A content-cut store of an image padded with zeros (a squashfs made to fill its slot):
/// the block where the data ends and a long zero run begins is built from both runs, and
/// the installer holds no zero run in memory to build it. Under an address-space limit
/// far below the 200 MiB zero run it installs the image bit for bit (it aborted on the
/// allocation before: outside review).
#[test]
fn a_long_zero_run_is_not_held_in_memory() {
    let Some(prlimit) = common::tool("prlimit", "util-linux") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).display().to_string();
    // Data ending where the content chunker cuts it, inside a block, then zeros to
    // 200 MiB: the next chunk, all zeros, starts a zero run in the middle of that block.
    let data = keel_testsupport::seeded_bytes(41, 2_000_000);
    let cdc = keel::payload::store::Cdc::DEFAULT;
    let mut end = 0;
    while end < 1_000_000 || end % 4096 == 0 {
        end += cdc.cut(&data[end..]);
    }
    let mut img = data[..end].to_vec();
    img.resize(200 << 20, 0);
    std::fs::write(tmp.path().join("img"), &img).unwrap();
    let o = run(
        &std::path::PathBuf::from("openssl"),
        &["genpkey", "-algorithm", "ed25519", "-out", &p("k.pem")],
    );
    assert!(o.status.success());
    let o = run(
        &std::path::PathBuf::from("openssl"),
        &["pkey", "-in", &p("k.pem"), "-pubout", "-out", &p("k.pub")],
    );
    assert!(o.status.success());
    let o = run(
        &example("store"),
        &[
            "publish",
            "--image",
            &p("img"),
            "--key",
            &p("k.pem"),
            "--verity-salt",
            "-",
            "-o",
            &p("s"),
            "--runs",
            "content",
            "--level",
            "3",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let store = example("store");
    let o = run(
        &prlimit,
        &[
            "--as=209715200", // 200 MiB of address space: the zero run alone would not fit
            store.to_str().unwrap(),
            "install",
            "--store",
            &p("s"),
            "--target",
            &p("t"),
            "--pubkey",
            &p("k.pub"),
            "--no-version-check",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(tmp.path().join("t")).unwrap() == img);
}
