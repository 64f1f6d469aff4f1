//! The node's identity at first boot, from a real nginx: fetched once from the URL the
//! kernel command line names, kept as a drop-in of the description, never fetched again;
//! the node's name and group and nothing else accepted; every bad answer refused with
//! its reason and nothing kept.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};

use keel_agent::identity::{drop_in, IdentityProblem, DROP_IN, MAX_BYTES};
use keel_agent::{Daemon, Error};

/// A description with an `[agent]` table (no disk is touched here).
fn description(d: &Path) -> PathBuf {
    let key = hex::encode(
        keel_trust::SigningKey::generate()
            .unwrap()
            .public_key()
            .to_bytes(),
    );
    let path = d.join("system.toml");
    fs::write(
        &path,
        format!(
            "version = \"1\"\ncompatible = \"acme-os\"\n\n[boot]\nbackend = \"gpt-flatcar\"\n\n\
             [[slot]]\nname = \"usr.a\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-A\"\n\n\
             [[slot]]\nname = \"usr.b\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-B\"\n\n\
             [[trust.key]]\nid = \"release\"\ned25519 = \"{key}\"\n\n\
             [agent]\nindex = \"https://updates.example/index.json\"\n\
             trust-root = \"/etc/keel/root.json\"\n"
        ),
    )
    .unwrap();
    path
}

struct Site {
    _tmp: tempfile::TempDir,
    d: PathBuf,
    nginx: keel_testsupport::nginx::Nginx,
}

impl Site {
    fn new() -> Option<Site> {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_path_buf();
        fs::create_dir_all(d.join("www/nodes")).unwrap();
        let nginx = keel_testsupport::nginx::serve(&d.join("www"), &d.join("nginx"))?;
        Some(Site {
            _tmp: tmp,
            d,
            nginx,
        })
    }

    /// A node whose kernel command line names `file` on the site.
    fn node(&self, name: &str, file: &str) -> (PathBuf, PathBuf) {
        let root = self.d.join(name).join("root");
        fs::create_dir_all(root.join("proc")).unwrap();
        fs::write(
            root.join("proc/cmdline"),
            format!(
                "console=ttyS0 keel.config-url={}/nodes/{file} quiet\n",
                self.nginx.base
            ),
        )
        .unwrap();
        (root, self.d.join(name).join("state"))
    }
}

#[test]
fn the_identity_is_fetched_once_and_names_the_node_and_its_group() {
    let Some(site) = Site::new() else { return };
    let desc = description(&site.d);
    let text = "[agent]\nnode-id = \"rack3-n1\"\ngroup = \"workers\"\n";
    fs::write(site.d.join("www/nodes/n1.toml"), text).unwrap();
    let (root, state) = site.node("n1", "n1.toml");

    let kept = drop_in(&desc, &root, &state, "keel-agent/test (first boot)")
        .unwrap()
        .unwrap();
    assert_eq!(kept, state.join(DROP_IN));
    assert_eq!(fs::read_to_string(&kept).unwrap(), text);
    let loaded = keel_config::load_files(&desc, std::slice::from_ref(&kept)).unwrap();
    let config = loaded
        .config
        .unwrap_or_else(|| panic!("{:?}", loaded.findings));
    let daemon = Daemon::new(&config, &root, &state).unwrap();
    assert_eq!(daemon.node_id(), "rack3-n1");
    assert_eq!(daemon.settings().group, "workers");
    assert!(
        daemon
            .user_agent()
            .contains("(node=rack3-n1; group=workers)"),
        "{}",
        daemon.user_agent()
    );

    // Every later start reads what was kept, even when the server's answer changed.
    fs::write(
        site.d.join("www/nodes/n1.toml"),
        "[agent]\nnode-id = \"other\"\n",
    )
    .unwrap();
    for _ in 0..3 {
        assert_eq!(
            drop_in(&desc, &root, &state, "x").unwrap(),
            Some(kept.clone())
        );
    }
    assert_eq!(fs::read_to_string(&kept).unwrap(), text);
    let asked = site.nginx.requests_for("/nodes/n1.toml");
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].agent, "keel-agent/test (first boot)");

    // Without the key on the command line: no drop-in, nothing asked.
    let (root, state) = site.node("n2", "n2.toml");
    fs::write(root.join("proc/cmdline"), "console=ttyS0 quiet\n").unwrap();
    assert_eq!(drop_in(&desc, &root, &state, "x").unwrap(), None);
    assert!(!state.exists());
}

#[test]
fn a_bad_identity_is_refused_with_its_reason_and_nothing_is_kept() {
    let Some(site) = Site::new() else { return };
    let desc = description(&site.d);
    let big = format!(
        "[agent]\nnode-id = \"n\"\n#{}\n",
        "x".repeat(MAX_BYTES as usize)
    );
    type Expect = fn(&IdentityProblem) -> bool;
    let cases: [(&str, &[u8], Expect); 9] = [
        // An answer that names nothing (a server caught writing the file) is not kept.
        ("empty", b"", |p| matches!(p, IdentityProblem::Empty)),
        ("bare", b"[agent]\n# soon\n", |p| {
            matches!(p, IdentityProblem::Empty)
        }),
        // What the network must not set: where updates come from, the keys, the checks.
        (
            "index",
            b"[agent]\nnode-id = \"n\"\nindex = \"http://evil/index.json\"\n",
            |p| matches!(p, IdentityProblem::Forbidden { key } if key == "agent.index"),
        ),
        (
            "trust",
            b"[[trust.key]]\nid = \"evil\"\ned25519 = \"00\"\n",
            |p| matches!(p, IdentityProblem::Forbidden { key } if key == "trust"),
        ),
        (
            "top",
            b"node-id = \"n\"\n",
            |p| matches!(p, IdentityProblem::Forbidden { key } if key == "node-id"),
        ),
        (
            "name",
            b"[agent]\nnode-id = \"a b\"\n",
            |p| matches!(p, IdentityProblem::Invalid(f) if f.path == "agent.node-id"),
        ),
        (
            "big",
            big.as_bytes(),
            |p| matches!(p, IdentityProblem::TooLarge { limit } if *limit == MAX_BYTES),
        ),
        ("syntax", b"[agent\nnode-id = 1\n", |p| {
            matches!(p, IdentityProblem::Syntax(_))
        }),
        ("binary", b"\xff\xfe[agent]\n", |p| {
            matches!(p, IdentityProblem::Syntax(_))
        }),
    ];
    for (name, body, expected) in cases {
        fs::write(site.d.join(format!("www/nodes/{name}.toml")), body).unwrap();
        let (root, state) = site.node(name, &format!("{name}.toml"));
        match drop_in(&desc, &root, &state, "x") {
            Err(Error::Identity { url, problem }) => {
                assert!(url.ends_with(&format!("/nodes/{name}.toml")), "{url}");
                assert!(expected(&problem), "{name}: {problem:?}");
                eprintln!("{name}: {}", Error::Identity { url, problem });
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(!state.join(DROP_IN).exists(), "{name}: kept");
    }

    // Not there (404), and no server at all: the transfer's error, after its retries.
    let (root, state) = site.node("missing", "missing.toml");
    assert!(
        matches!(
            drop_in(&desc, &root, &state, "x"),
            Err(Error::Identity {
                problem: IdentityProblem::Fetch(_),
                ..
            })
        ),
        "404"
    );
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    fs::write(
        root.join("proc/cmdline"),
        format!("keel.config-url=http://127.0.0.1:{port}/n.toml\n"),
    )
    .unwrap();
    assert!(matches!(
        drop_in(&desc, &root, &state, "x"),
        Err(Error::Identity {
            problem: IdentityProblem::Fetch(_),
            ..
        })
    ));
    assert!(!state.join(DROP_IN).exists());

    // A kept identity edited to say more than the network may: refused at the next
    // start, not fetched again, nothing of it used.
    let (root, state) = site.node("edited", "edited.toml");
    fs::write(
        site.d.join("www/nodes/edited.toml"),
        "[agent]\nnode-id = \"n7\"\n",
    )
    .unwrap();
    let kept = drop_in(&desc, &root, &state, "x").unwrap().unwrap();
    fs::write(
        &kept,
        "[agent]\nnode-id = \"n7\"\nindex = \"http://evil.example/index.json\"\n",
    )
    .unwrap();
    match drop_in(&desc, &root, &state, "x") {
        Err(Error::KeptIdentity {
            problem: IdentityProblem::Forbidden { key },
            ..
        }) => assert_eq!(key, "agent.index"),
        other => panic!("{other:?}"),
    }
    assert_eq!(site.nginx.requests_for("/nodes/edited.toml").len(), 1);

    // A description with errors is its own failure: nothing is fetched for it.
    let broken = site.d.join("broken.toml");
    fs::write(
        &broken,
        fs::read_to_string(&desc)
            .unwrap()
            .replace("index = \"https://updates.example/index.json\"\n", ""),
    )
    .unwrap();
    let (root, state) = site.node("broken", "broken.toml");
    match drop_in(&broken, &root, &state, "x") {
        Err(Error::Setting { field, reason }) => {
            assert_eq!(field, "description");
            assert!(reason.contains("index"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(site.nginx.requests_for("/nodes/broken.toml").is_empty());

    // A directory where the drop-in belongs: an error naming it, not a fetch.
    fs::create_dir_all(state.join(DROP_IN)).unwrap();
    let e = drop_in(&desc, &root, &state, "x").unwrap_err();
    assert!(e.to_string().contains(DROP_IN), "{e}");
}
