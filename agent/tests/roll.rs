//! keel-agent's loop on three nodes of one group, against a real three-member etcd cluster
//! and nginx serving the signed index: version 2 rolls one node at a time (the others wait
//! for the slot), each commits after its health check and gives the slot back; version 3
//! fails its check on the first node, which falls back, stops the roll for the group and
//! frees its slot, and the other nodes stay on version 2. A reboot is the reboot command
//! (it leaves a mark), then the boot loader's own rules (keel-bootflags' model of
//! Flatcar's GRUB) and a new agent process: each node's state goes through its files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};

use keel_agent::{Daemon, Outcome};
use keel_bootflags::Slot;
use keel_io::{Region, WriteAt};
use keel_partition::{create_layout, GptDisk, Layout};
use keel_testsupport::seeded_bytes;
use keel_trust::SigningKey;

const SLOT: u64 = 2 << 20;
const IMAGE: usize = 1 << 20;

struct Node {
    dir: PathBuf,
    name: String,
}

impl Node {
    fn p(&self, n: &str) -> PathBuf {
        self.dir.join(n)
    }
    fn root(&self) -> PathBuf {
        self.p("root")
    }

    fn daemon(&self) -> Daemon {
        let loaded = keel_config::load_files(&self.p("system.toml"), &[]).unwrap();
        let config = loaded
            .config
            .unwrap_or_else(|| panic!("{:?}", loaded.findings));
        Daemon::new(&config, &self.root(), &self.p("state")).unwrap()
    }

    fn partuuid(&self, label: &str) -> String {
        let g = GptDisk::open(fs::read(self.p("disk.img")).unwrap(), None).unwrap();
        g.partition_by_label(label).unwrap().guid.to_string()
    }

    /// The machine comes up: the boot loader (keel-bootflags' model of Flatcar's GRUB on
    /// the disk's flags) chooses the slot, the kernel is told it, the running version
    /// answers its health check as `healthy`.
    fn power_on(&self, healthy: bool) -> Slot {
        assert!(
            self.p("rebooted").exists(),
            "{}: never asked to reboot",
            self.name
        );
        fs::remove_file(self.p("rebooted")).unwrap();
        let disk = fs::File::options()
            .read(true)
            .write(true)
            .open(self.p("disk.img"))
            .unwrap();
        let slot = {
            let gpt = GptDisk::open(&disk, None).unwrap();
            let sel = keel_partition::SlotSelector::Labels("USR-A".into(), "USR-B".into());
            let mut ab =
                keel_partition::AbDisk::new(gpt, &sel, keel_bootflags::PriorityPolicy::Flatcar)
                    .unwrap();
            keel_bootflags::BootControl::boot(&mut ab).unwrap().unwrap()
        };
        let label = format!("USR-{}", slot.letter());
        fs::write(
            self.root().join("proc/cmdline"),
            format!("ro mount.usr=PARTUUID={}\n", self.partuuid(&label)),
        )
        .unwrap();
        fs::write(
            self.root().join("etc/health"),
            if healthy { "good\n" } else { "bad\n" },
        )
        .unwrap();
        slot
    }
}

/// The publisher: full payloads of each version, an index of them signed under a root.
struct Site {
    www: PathBuf,
    key: SigningKey,
}

impl Site {
    fn image(v: u64) -> Vec<u8> {
        let mut img = seeded_bytes(1, IMAGE);
        img[4096..4096 + 100_000].copy_from_slice(&seeded_bytes(10 + v, 100_000));
        img
    }

    fn publish(&self, versions: &[u64], serial: u64) {
        let mut index = None;
        for &v in versions {
            let name = format!("full-{v}.payload");
            let image = Site::image(v);
            let params = keel_verity::VerityParams::builder()
                .salt(vec![0x5a, 0x17])
                .data_blocks(IMAGE as u64 / 4096)
                .build()
                .unwrap();
            let root = keel_verity::HashTree::build(&params, &image)
                .unwrap()
                .root_hash()
                .to_vec();
            let opts = keel_payload::GenerateOptions::new("acme-os", &format!("{v}.0"))
                .level(1)
                .verity(keel_verity::RootDescriptor::new(params, &root).unwrap());
            let payload = keel_payload::generate(None, &image, &self.key, &opts).unwrap();
            fs::write(self.www.join(&name), payload).unwrap();
            let mut keys = keel_trust::Keyring::new();
            keys.add(self.key.public_key().clone()).unwrap();
            let full = keel_update::publish::describe(&self.www.join(&name), &name, &keys).unwrap();
            let release = keel_update::publish::release(full, Vec::new(), 100).unwrap();
            index = Some(
                keel_update::publish::add_release(index, release, None, u64::MAX / 2).unwrap(),
            );
        }
        let mut index = index.unwrap();
        index.serial = serial;
        let env = index.sign(&[&self.key]).unwrap();
        fs::write(self.www.join("index.json"), env).unwrap();
    }

    fn root_envelope(&self) -> Vec<u8> {
        keel_release::Root::first(&[self.key.public_key()], 1, u64::MAX / 2)
            .sign(&[&self.key])
            .unwrap()
    }
}

/// A node with version 1.0 in slot A, booted from it, its description naming the index
/// and the group in etcd.
fn node(dir: &Path, name: &str, site: &Site, index: &str, endpoints: &str) -> Node {
    let n = Node {
        dir: dir.join(name),
        name: name.into(),
    };
    fs::create_dir_all(n.root().join("proc")).unwrap();
    fs::create_dir_all(n.root().join("etc/keel")).unwrap();
    fs::write(n.root().join("etc/os-release"), "VERSION_ID=1.0\n").unwrap();
    fs::write(n.root().join("etc/machine-id"), format!("{name}\n")).unwrap();
    fs::write(n.root().join("etc/health"), "good\n").unwrap();
    fs::write(n.root().join("etc/keel/root.json"), site.root_envelope()).unwrap();
    let disk = fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(n.p("disk.img"))
        .unwrap();
    disk.set_len(2 * SLOT + (2 << 20)).unwrap();
    let mut layout = Layout::flatcar(SLOT);
    layout.esp_size = 0;
    create_layout(&mut &disk, &layout).unwrap();
    let a = GptDisk::open(&disk, None)
        .unwrap()
        .partition_by_label("USR-A")
        .unwrap();
    Region::new(&disk, a.first_lba * 512, a.sectors() * 512)
        .unwrap()
        .write_all_at(&Site::image(1), 0)
        .unwrap();
    fs::write(
        n.root().join("proc/cmdline"),
        format!("ro mount.usr=PARTUUID={}\n", a.guid),
    )
    .unwrap();
    let key = hex::encode(site.key.public_key().to_bytes());
    fs::write(
        n.p("system.toml"),
        format!(
            "version = \"1\"\ncompatible = \"acme-os\"\n\n[boot]\nbackend = \"gpt-flatcar\"\ndisk = \"{disk}\"\n\n\
             [[slot]]\nname = \"usr.a\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-A\"\n\n\
             [[slot]]\nname = \"usr.b\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-B\"\n\n\
             [verity]\nsalt = \"5a17\"\n\n[[trust.key]]\nid = \"release\"\ned25519 = \"{key}\"\n\n\
             [agent]\nindex = \"{index}\"\ntrust-root = \"/etc/keel/root.json\"\ninterval = 1\n\
             strategy = \"etcd\"\netcd = [\"{endpoints}\"]\ngroup = \"roll\"\nlease-ttl = 30\n\
             reboot-command = [\"touch\", \"{mark}\"]\nsocket = \"{sock}\"\n\n\
             [[agent.check]]\nname = \"health\"\ncommand = [\"grep\", \"-q\", \"good\", \"{health}\"]\ntimeout = 10\n",
            disk = n.p("disk.img").display(),
            mark = n.p("rebooted").display(),
            sock = n.p("agent.sock").display(),
            health = n.root().join("etc/health").display(),
        ),
    )
    .unwrap();
    n
}

#[test]
fn a_group_rolls_one_node_at_a_time_and_a_failed_version_stops_the_roll() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let Some(cluster) = keel_testsupport::etcd::cluster(&d.join("etcd"), 3) else {
        return;
    };
    let Some((site, _server, index)) = site(d) else {
        return;
    };
    let nodes: Vec<Node> = (0..3)
        .map(|i| node(d, &format!("node-{i}"), &site, &index, &cluster.endpoints()))
        .collect();

    // At start every node is steady: booted, committed, holding nothing.
    for n in &nodes {
        assert_eq!(n.daemon().boot().unwrap(), Outcome::Steady, "{}", n.name);
    }
    // Version 2, one node at a time: the first takes the slot and reboots; while it is
    // down the others install, find the slot taken and wait (an interval), staged.
    assert_eq!(
        nodes[0].daemon().check().unwrap(),
        Outcome::Rebooting("2.0".into())
    );
    for n in &nodes[1..] {
        assert_eq!(
            n.daemon().check().unwrap(),
            Outcome::Staged("2.0".into()),
            "{}: rebooted beside node-0",
            n.name
        );
        assert!(!n.p("rebooted").exists());
    }
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            // Its turn: the slot is free again.
            assert_eq!(
                n.daemon().check().unwrap(),
                Outcome::Rebooting("2.0".into())
            );
        }
        assert_eq!(n.power_on(true), Slot::B);
        let daemon = n.daemon();
        assert_eq!(daemon.boot().unwrap(), Outcome::Committed("2.0".into()));
        assert_eq!(daemon.shared().status().version.as_deref(), Some("2.0"));
        // Nothing newer: the next check installs nothing.
        assert_eq!(daemon.check().unwrap(), Outcome::UpToDate);
    }

    // Version 3 fails its health check on the first node: it falls back to 2.0 and the
    // roll stops for the group, naming the node and the check.
    site.publish(&[2, 3], 2);
    assert_eq!(
        nodes[0].daemon().check().unwrap(),
        Outcome::Rebooting("3.0".into())
    );
    assert_eq!(nodes[0].power_on(false), Slot::A);
    assert_eq!(
        nodes[0].daemon().boot().unwrap(),
        Outcome::FallingBack("3.0".into())
    );
    assert_eq!(
        nodes[0].power_on(true),
        Slot::B,
        "the boot loader falls back"
    );
    let daemon = nodes[0].daemon();
    assert_eq!(daemon.boot().unwrap(), Outcome::FellBack("2.0".into()));
    assert!(daemon
        .shared()
        .status()
        .last_error
        .is_some_and(|e| e.contains("3.0") && e.contains("health")));
    for n in &nodes {
        match n.daemon().check().unwrap() {
            Outcome::GroupPaused(why) => {
                assert!(why.contains("node-0") && why.contains("health"), "{why}")
            }
            o => panic!("{}: {o:?}", n.name),
        }
        assert!(!n.p("rebooted").exists(), "{} rebooted", n.name);
    }
}

/// The publisher with 2.0 published, its server, and the index's URL.
fn site(d: &Path) -> Option<(Site, keel_testsupport::nginx::Nginx, String)> {
    let site = Site {
        www: d.join("www"),
        key: SigningKey::generate().unwrap(),
    };
    fs::create_dir_all(&site.www).unwrap();
    let server = keel_testsupport::nginx::serve(&site.www, &d.join("nginx"))?;
    site.publish(&[2], 1);
    let index = format!("{}/index.json", server.base);
    Some((site, server, index))
}

/// A node that reboots as soon as it has installed (no fleet), with 2.0 published on a
/// server of its own: (the node, the server, the directory's guard).
fn lone_node() -> Option<(Node, keel_testsupport::nginx::Nginx, tempfile::TempDir)> {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (site, server, index) = site(d)?;
    let n = node(d, "node", &site, &index, "http://127.0.0.1:1");
    let text = fs::read_to_string(n.p("system.toml"))
        .unwrap()
        .replace("strategy = \"etcd\"\n", "")
        .replace("etcd = [\"http://127.0.0.1:1\"]\n", "")
        .replace("lease-ttl = 30\n", "");
    fs::write(n.p("system.toml"), text).unwrap();
    Some((n, server, tmp))
}

/// The local API: status, pause (the loop then installs nothing, across a restart),
/// resume, metrics; a client that sends nothing is cut off and the others still answered.
#[test]
fn the_local_api_answers_and_pauses_the_loop() {
    let Some((n, server, tmp)) = lone_node() else {
        return;
    };
    let d = tmp.path();
    let daemon = n.daemon();
    let sock = n.p("agent.sock");
    let listener = keel_agent::api::bind(&sock).unwrap();
    let shared = daemon.shared();
    std::thread::spawn(move || keel_agent::api::serve(listener, shared));
    // Idle clients hold nothing: 20 connections that never send.
    let idle: Vec<_> = (0..20)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap())
        .collect();
    let status = keel_agent::api::request(&sock, "status").unwrap();
    assert_eq!(status["state"], "starting");
    drop(idle);
    let paused = keel_agent::api::request(&sock, "pause").unwrap();
    assert_eq!(paused["ok"], true, "{paused}");
    assert_eq!(daemon.check().unwrap(), Outcome::Paused);
    // Kept across a restart.
    assert_eq!(n.daemon().check().unwrap(), Outcome::Paused);
    assert_eq!(
        keel_agent::api::request(&sock, "resume").unwrap()["ok"],
        true
    );
    assert_eq!(daemon.check().unwrap(), Outcome::Rebooting("2.0".into()));
    let metrics = keel_agent::api::request(&sock, "metrics").unwrap();
    let text = metrics["metrics"].as_str().unwrap();
    assert!(text.contains("keel_agent_installs_total 1"), "{text}");
    assert!(
        text.contains("# TYPE keel_agent_installs_total counter"),
        "{text}"
    );
    // The payload's bytes, as nginx sent them.
    let sent: u64 = server
        .requests_for("/full-2.payload")
        .iter()
        .map(|r| r.bytes)
        .sum();
    assert!(sent > 0);
    assert!(
        text.contains(&format!("keel_agent_fetched_bytes_total {sent}\n")),
        "{sent}: {text}"
    );
    let events = keel_agent::api::request(&sock, "events").unwrap();
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["what"].as_str().unwrap().contains("installed 2.0")),
        "{events}"
    );
    let e = keel_agent::api::request(&sock, "reboot-everything").unwrap();
    assert!(e["error"].as_str().unwrap().contains("unknown op"));
    // A second agent does not take over the socket of one that answers on it.
    let e = keel_agent::api::bind(&sock).unwrap_err();
    assert!(e.to_string().contains("another keel-agent"), "{e}");
    // Nor does anyone bind in a directory others can write (they could swap the socket).
    let open = d.join("open");
    fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let e = keel_agent::api::bind(&open.join("agent.sock")).unwrap_err();
    assert!(e.to_string().contains("writable by no one else"), "{e}");
}

/// The `keel-agent` program as systemd runs it: it says READY and STATUS on
/// `NOTIFY_SOCKET` and pings the watchdog, installs the release the index names and runs
/// the reboot command by itself; `keel-agent status` reads it through the socket.
#[test]
fn the_program_runs_the_loop_and_talks_to_systemd() {
    let Some((n, _server, tmp)) = lone_node() else {
        return;
    };
    let d = tmp.path();
    let notify = std::os::unix::net::UnixDatagram::bind(d.join("notify.sock")).unwrap();
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let exe = env!("CARGO_BIN_EXE_keel-agent");
    let args = |more: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "--config",
            n.p("system.toml").to_str().unwrap(),
            "--root",
            n.root().to_str().unwrap(),
            "--state",
            n.p("state").to_str().unwrap(),
        ]
        .map(str::to_string)
        .to_vec();
        a.extend(more.iter().map(|s| s.to_string()));
        a
    };
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _agent = Kill(
        std::process::Command::new(exe)
            .args(args(&["run"]))
            .env("NOTIFY_SOCKET", d.join("notify.sock"))
            .env("WATCHDOG_USEC", "1000000")
            .spawn()
            .unwrap(),
    );
    let mut said = Vec::new();
    let mut buf = [0u8; 512];
    while !(said.iter().any(|m: &String| m == "READY=1")
        && said.iter().any(|m| m == "WATCHDOG=1")
        && n.p("rebooted").exists())
    {
        let len = notify
            .recv(&mut buf)
            .expect("no word from keel-agent in a minute");
        said.push(String::from_utf8_lossy(&buf[..len]).into_owned());
    }
    assert!(said.iter().any(|m| m.starts_with("STATUS=")), "{said:?}");
    let o = std::process::Command::new(exe)
        .args(args(&["status", "--json"]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (st["state"].as_str(), st["staged"].as_str()),
        (Some("rebooting"), Some("2.0")),
        "{st}"
    );
    let o = std::process::Command::new(exe)
        .args(args(&["metrics"]))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("keel_agent_installs_total 1"));
}

/// What an outside attack found, each now survived: a reboot command that fails leaves the
/// release staged (the next turn reboots it without installing it again); a wake-up while
/// the machine goes down installs nothing over the armed slot; a restart in the same boot
/// (the reboot never happened) is not taken for a version that did not boot.
#[test]
fn a_failed_or_missing_reboot_neither_reinstalls_nor_counts_as_a_bad_version() {
    let Some((n, server, _tmp)) = lone_node() else {
        return;
    };
    let text = fs::read_to_string(n.p("system.toml")).unwrap();
    let mark = n.p("rebooted").display().to_string();
    fs::write(
        n.p("system.toml"),
        text.replace(&format!("[\"touch\", \"{mark}\"]"), "[\"false\"]"),
    )
    .unwrap();
    fs::create_dir_all(n.root().join("proc/sys/kernel/random")).unwrap();
    fs::write(n.root().join("proc/sys/kernel/random/boot_id"), "boot-1\n").unwrap();
    let fetched = || server.requests_for("/full-2.payload").len();

    let e = n.daemon().check().unwrap_err();
    assert!(e.to_string().contains("reboot command"), "{e}");
    let once = fetched();
    assert!(once >= 1);
    // The reboot command works again: the staged release reboots, nothing fetched again.
    fs::write(n.p("system.toml"), &text).unwrap();
    let daemon = n.daemon();
    assert_eq!(daemon.check().unwrap(), Outcome::Rebooting("2.0".into()));
    assert_eq!(fetched(), once, "installed again");
    // Woken while going down: nothing installed over the armed slot.
    assert_eq!(daemon.check().unwrap(), Outcome::Rebooting("2.0".into()));
    assert_eq!(fetched(), once, "installed while rebooting");
    // Restarted in the same boot: the reboot did not happen; still staged, no failure.
    assert_eq!(n.daemon().boot().unwrap(), Outcome::Staged("2.0".into()));
    assert_eq!(
        n.daemon().check().unwrap(),
        Outcome::Rebooting("2.0".into())
    );
    assert_eq!(fetched(), once);
    // The machine comes up on 2.0 (another boot id): committed.
    fs::write(n.root().join("proc/sys/kernel/random/boot_id"), "boot-2\n").unwrap();
    assert_eq!(n.power_on(true), Slot::B);
    assert_eq!(n.daemon().boot().unwrap(), Outcome::Committed("2.0".into()));
}

/// An OS builder's own policies in place of the description's: turns from its own
/// service (refused once, then given with a token), its own reboot, and a function among
/// the health checks. The function fails on the new version: the node reports through
/// the builder's turns, reboots through the builder's reboot, comes back and gives the
/// turn back with its token; the builder's pause then stops the next check.
#[test]
fn an_embedder_swaps_the_turns_the_reboot_and_the_health_checks() {
    use keel_agent::policy::{Reboot, Turn, Turns};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let Some((n, _server, _tmp)) = lone_node() else {
        return;
    };
    #[derive(Default)]
    struct Service {
        asks: Mutex<u32>,
        log: Mutex<Vec<String>>,
    }
    impl Turns for Service {
        fn paused(&self) -> keel_agent::Result<Option<String>> {
            let log = self.log.lock().unwrap();
            Ok(log.iter().find(|l| l.starts_with("failure")).cloned())
        }
        fn take(&self, version: &str) -> keel_agent::Result<Turn> {
            let mut asks = self.asks.lock().unwrap();
            *asks += 1;
            self.log.lock().unwrap().push(format!("take {version}"));
            Ok(if *asks == 1 {
                Turn::NotNow("the cluster is draining another node".into())
            } else {
                Turn::Taken(Some(7))
            })
        }
        fn give_back(&self, token: Option<i64>) -> keel_agent::Result<bool> {
            self.log
                .lock()
                .unwrap()
                .push(format!("give back {token:?}"));
            Ok(token.is_some())
        }
        fn report_failure(&self, reason: &str) -> keel_agent::Result<()> {
            self.log.lock().unwrap().push(format!("failure: {reason}"));
            Ok(())
        }
    }
    struct Rebooter(PathBuf, Mutex<Vec<String>>);
    impl Reboot for Rebooter {
        fn reboot(&self, version: &str) -> keel_agent::Result<()> {
            self.1.lock().unwrap().push(version.to_string());
            fs::write(&self.0, version).unwrap();
            Ok(())
        }
    }
    let service = Arc::new(Service::default());
    let rebooter = Arc::new(Rebooter(n.p("rebooted"), Mutex::new(Vec::new())));
    let healthy = Arc::new(AtomicBool::new(true));
    let daemon = || {
        let healthy = healthy.clone();
        n.daemon()
            .turns_with(service.clone())
            .reboot_with(rebooter.clone())
            .health_check(keel_update::HealthCheck::Func {
                name: "probe".into(),
                check: Box::new(move || {
                    if healthy.load(Ordering::SeqCst) {
                        Ok(())
                    } else {
                        Err("the probe found no answer".into())
                    }
                }),
            })
    };

    assert_eq!(daemon().boot().unwrap(), Outcome::Steady);
    assert_eq!(daemon().check().unwrap(), Outcome::Staged("2.0".into()));
    assert!(!n.p("rebooted").exists(), "rebooted without the turn");
    assert_eq!(daemon().check().unwrap(), Outcome::Rebooting("2.0".into()));
    assert_eq!(*rebooter.1.lock().unwrap(), ["2.0"]);

    // 2.0 comes up; the description's check passes, the builder's function fails.
    healthy.store(false, Ordering::SeqCst);
    assert_eq!(n.power_on(true), Slot::B);
    assert_eq!(daemon().boot().unwrap(), Outcome::FallingBack("2.0".into()));
    assert_eq!(*rebooter.1.lock().unwrap(), ["2.0", "2.0"]);
    assert_eq!(n.power_on(true), Slot::A);
    assert_eq!(daemon().boot().unwrap(), Outcome::FellBack("1.0".into()));
    let log = service.log.lock().unwrap().clone();
    // The first boot gives back whatever was held from before, as Zincati's steady state.
    assert_eq!(log.len(), 5, "{log:?}");
    assert_eq!(log[..3], ["give back None", "take 2.0", "take 2.0"]);
    assert!(
        log[3].starts_with("failure: node: 2.0: check \"probe\"")
            && log[3].contains("the probe found no answer"),
        "{log:?}"
    );
    assert_eq!(log[4], "give back Some(7)");
    // The builder's service says the roll is stopped: the next check installs nothing.
    assert!(
        matches!(daemon().check().unwrap(), Outcome::GroupPaused(why) if why.contains("probe"))
    );
}

/// The description's other ways of taking turns: etcd over TLS with a client certificate
/// (the files read under the node's root), and a FleetLock server (keel-fleet's, on that
/// cluster). Either way, of two nodes one reboots and the other waits, staged, until
/// the first commits and gives its turn back.
#[test]
fn nodes_take_turns_through_etcd_over_tls_and_through_fleetlock() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let Some(cluster) = keel_testsupport::etcd::cluster_tls(&d.join("etcd"), 3) else {
        return;
    };
    let pki = cluster.tls.clone().unwrap();
    let Some((site, _server, index)) = site(d) else {
        return;
    };

    // keel-fleet's FleetLock server, on the same cluster.
    let tls = keel_fleet::TlsOptions::default()
        .ca(fs::read(&pki.ca).unwrap())
        .client_cert(
            fs::read(&pki.client_cert).unwrap(),
            fs::read(&pki.client_key).unwrap(),
        );
    let etcd =
        std::sync::Arc::new(keel_fleet::Etcd::with_tls(&[cluster.endpoints()], &tls).unwrap());
    let fleetlock = std::sync::Arc::new(keel_fleet::fleetlock::Server::new(
        etcd,
        [("locked".to_string(), 1u64)].into_iter().collect(),
        std::time::Duration::from_secs(60),
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = keel_io::Cancel::new();
    std::thread::scope(|s| {
        s.spawn(|| fleetlock.serve(&listener, &stop).unwrap());
        for (way, setting) in [
            (
                "etcd over TLS",
                "etcd-ca = \"/etc/keel/ca.pem\"\netcd-cert = \"/etc/keel/client.pem\"\n\
                 etcd-key = \"/etc/keel/client.key\"\n"
                    .to_string(),
            ),
            (
                "FleetLock",
                format!("strategy = \"fleetlock\"\nfleetlock = \"{url}\"\ngroup = \"locked\"\n"),
            ),
        ] {
            let nodes: Vec<Node> = (0..2)
                .map(|i| {
                    let n = node(
                        &d.join(way.replace(' ', "-")),
                        &format!("node-{i}"),
                        &site,
                        &index,
                        &cluster.endpoints(),
                    );
                    for (from, to) in [
                        (&pki.ca, "ca.pem"),
                        (&pki.client_cert, "client.pem"),
                        (&pki.client_key, "client.key"),
                    ] {
                        fs::copy(from, n.root().join("etc/keel").join(to)).unwrap();
                    }
                    let mut text = fs::read_to_string(n.p("system.toml")).unwrap();
                    if way == "FleetLock" {
                        for line in [
                            "strategy = \"etcd\"\n".to_string(),
                            format!("etcd = [\"{}\"]\n", cluster.endpoints()),
                            "group = \"roll\"\n".into(),
                            "lease-ttl = 30\n".into(),
                        ] {
                            text = text.replace(&line, "");
                        }
                    }
                    text = text.replace("[agent]\n", &format!("[agent]\n{setting}"));
                    fs::write(n.p("system.toml"), text).unwrap();
                    n
                })
                .collect();
            for n in &nodes {
                assert_eq!(n.daemon().boot().unwrap(), Outcome::Steady, "{way}");
            }
            assert_eq!(
                nodes[0].daemon().check().unwrap(),
                Outcome::Rebooting("2.0".into()),
                "{way}"
            );
            let waiting = nodes[1].daemon();
            assert_eq!(
                waiting.check().unwrap(),
                Outcome::Staged("2.0".into()),
                "{way}: rebooted beside node-0"
            );
            assert!(
                waiting
                    .shared()
                    .events()
                    .iter()
                    .any(|e| e.what.starts_with("no reboot slot yet")),
                "{way}: {:?}",
                waiting.shared().events()
            );
            assert_eq!(nodes[0].power_on(true), Slot::B);
            assert_eq!(
                nodes[0].daemon().boot().unwrap(),
                Outcome::Committed("2.0".into()),
                "{way}"
            );
            assert_eq!(
                nodes[1].daemon().check().unwrap(),
                Outcome::Rebooting("2.0".into()),
                "{way}: the turn given back"
            );
        }
        stop.cancel();
    });
}
