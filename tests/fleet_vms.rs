//! The seed's scenario on virtual machines: a group of three nodes (qemu, OVMF,
//! systemd-boot with boot counting, Debian's kernel) each running keel-agent as its
//! service. Each node learns its name and group at first boot from a URL on its kernel
//! command line (a drop-in, fetched once). A new version (a new root and a new initramfs,
//! as a bundle) is published on nginx; each node installs it (one download is cut and
//! resumes), takes the group's slot in a real three-member etcd cluster, reboots itself
//! into it, commits after its health check and frees the slot: one node at a time. The
//! first node to reboot is killed and stays down: its slot frees itself when its lease
//! ends and the roll goes on. A version whose health check fails falls back on the first
//! node, which stops the roll for the group; no other node installs it, and every node's
//! `keel-agent status` says why.
//!
//! A boot is one qemu run: the initramfs maps the slot systemd-boot chose through
//! dm-verity and runs keel-agent; the reboot command powers off, and the next run is the
//! reboot. The guest reaches nginx and etcd on this machine's loopback through qemu's user
//! network (10.0.2.2). Asserted from the consoles, etcd's history of the semaphore and
//! nginx's access log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::machine::{descriptor, init_script, slot_image, uefi, Machine, SALT};
use common::*;
use keel::trust::SigningKey;

const ESP_BYTES: u64 = 112 << 20;
const SLOT_BYTES: u64 = 16 << 20;
const IMAGE_BYTES: u64 = 8 << 20;

/// The initramfs, after mapping the slot ([`init_script`]): the network up, what
/// `keel-agent status` says every few seconds on the console, keel-agent run.
const INIT_REST: &str = r#"ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
(while sleep 3; do /bin/keel-agent --config /system.toml status 2>&1 | sed 's/^/KEEL-STATUS /'; done) &
exec /bin/keel-agent --config /system.toml --root / --state /esp/keel-state run --disk /dev/vda
"#;

/// The longest a reboot may take before its slot frees itself.
const LEASE_TTL: u64 = 60;

struct Publisher {
    www: PathBuf,
    key: SigningKey,
}

impl Publisher {
    /// Add the bundle `file` (in www) to the index and sign it, as the publisher does
    /// (keel-update's `describe`, keel-release's `release` and `add_release`).
    fn publish(&self, file: &str) {
        let mut keys = keel::trust::Keyring::new();
        keys.add(self.key.public_key().clone()).unwrap();
        let index_file = self.www.with_file_name("index-doc.json");
        let base = fs::read(&index_file)
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap());
        let full = keel::update::publish::describe(&self.www.join(file), file, &keys).unwrap();
        let release = keel::update::publish::release(full, Vec::new(), 100).unwrap();
        let index = keel::update::publish::add_release(base, release, None, u64::MAX / 2).unwrap();
        fs::write(&index_file, serde_json::to_vec(&index).unwrap()).unwrap();
        let env = index.sign(&[&self.key]).unwrap();
        fs::write(self.www.join("index.json"), env).unwrap();
    }

    fn root(&self) -> Vec<u8> {
        keel::release::Root::first(&[self.key.public_key()], 1, u64::MAX / 2)
            .sign(&[&self.key])
            .unwrap()
    }
}

#[test]
fn a_fleet_of_vms_rolls_a_new_kernel_and_root_one_at_a_time_and_stops_at_a_bad_one() {
    let Some(uefi) = uefi() else { return };
    let Some(k) = keel_testsupport::kernel::kernel() else {
        return;
    };
    let strip = tool("strip", "binutils").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let Some(cluster) = keel_testsupport::etcd::cluster(&d.join("etcd"), 3) else {
        return;
    };
    let publisher = Publisher {
        www: d.join("www"),
        key: SigningKey::generate().unwrap(),
    };
    fs::create_dir_all(publisher.www.join("nodes")).unwrap();
    let Some(server) = keel_testsupport::nginx::serve(&publisher.www, &d.join("nginx")) else {
        return;
    };
    // The guest sees this machine's loopback at 10.0.2.2. The index and the bundles go
    // through a proxy that cuts the first download of version 2 a third of the way in.
    let guest = |url: &str| url.replace("127.0.0.1", "10.0.2.2");
    let endpoints = guest(&cluster.endpoints());
    let description = |index: &str| {
        format!(
            "version = \"1\"\ncompatible = \"keel-fleet-test\"\n\n[boot]\nbackend = \"systemd-boot\"\n\
             entries-dir = \"/esp/loader/entries\"\nattempts = 2\n\n\
             [[slot]]\nname = \"usr.a\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-A\"\n\n\
             [[slot]]\nname = \"usr.b\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-B\"\n\n\
             [[file]]\nclass = \"vmlinuz\"\npath = \"/esp/keel/{{slot}}/vmlinuz\"\n\n\
             [[file]]\nclass = \"initrd\"\npath = \"/esp/keel/{{slot}}/initrd.img\"\n\n\
             [verity]\nsalt = \"{SALT}\"\n\n[[trust.key]]\nid = \"release\"\ned25519 = \"{key}\"\n\n\
             [agent]\nindex = \"{index}\"\ntrust-root = \"/etc/keel/root.json\"\ninterval = 2\n\
             strategy = \"etcd\"\netcd = [\"{endpoints}\"]\nlease-ttl = {LEASE_TTL}\n\
             reboot-command = [\"/bin/sh\", \"-c\", \"echo KEEL-REBOOT; sync; poweroff -f\"]\n\
             socket = \"/run/keel/agent.sock\"\n\n\
             [[agent.check]]\nname = \"marker\"\ncommand = [\"grep\", \"-q\", \"healthy=yes\", \"/mnt/marker\"]\n",
            key = hex::encode(publisher.key.public_key().to_bytes()),
        )
    };

    // The initramfs: busybox, dmsetup, the modules (dm-verity, ext4, vfat, the network
    // card), keel-agent, the description and the trusted root; one per version, saying
    // its version.
    let agent = d.join("keel-agent");
    let built = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("keel-agent");
    assert!(
        built.exists(),
        "{}: build keel-agent first (cargo test --workspace does)",
        built.display()
    );
    run_ok(
        &strip,
        &["-o", agent.to_str().unwrap(), built.to_str().unwrap()],
    );
    let root = d.join("initramfs");
    let extra = [
        "ext4",
        "crc32c_generic",
        "vfat",
        "nls_cp437",
        "nls_ascii",
        "virtio_net",
    ];
    let wanted = [&keel_testsupport::kernel::VERITY_MODULES[..], &extra].concat();
    keel_testsupport::kernel::populate_initramfs(
        &k,
        &root,
        &[(&agent, "bin/keel-agent")],
        &wanted,
        &init_script("KEEL-NODE", INIT_REST),
    );
    fs::create_dir_all(root.join("etc/keel")).unwrap();
    fs::write(root.join("etc/keel/root.json"), publisher.root()).unwrap();
    // The description's index is the cutting proxy's; made once its port is known.
    let initrd = |version: &str, description: &str| -> Vec<u8> {
        fs::write(root.join("system.toml"), description).unwrap();
        fs::write(root.join("initrd-version"), version).unwrap();
        fs::write(
            root.join("etc/os-release"),
            format!("VERSION_ID={version}\n"),
        )
        .unwrap();
        let out = d.join(format!("initrd-{version}"));
        keel_testsupport::kernel::cpio_of(&k.cpio, &root, &out);
        fs::read(out).unwrap()
    };
    let kernel = fs::read(&k.vmlinuz).unwrap();

    // The publisher's bundles: a new root and a new initramfs (the kernel as before).
    let bundle = |version: &str, healthy: bool, description: &str| {
        let image = slot_image(d, version, healthy, IMAGE_BYTES);
        let root = descriptor(&image);
        let initrd = initrd(version, description);
        let parts = [
            keel::payload::BundlePart::slot("usr", None, &image).verity(&root),
            keel::payload::BundlePart::file("vmlinuz", None, &kernel),
            keel::payload::BundlePart::file("initrd", None, &initrd),
        ];
        let opts = keel::payload::GenerateOptions::new("keel-fleet-test", version).level(1);
        let bytes = keel::payload::generate_bundle(&parts, &publisher.key, &opts, None).unwrap();
        let name = format!("os-{version}.bundle");
        fs::write(publisher.www.join(&name), &bytes).unwrap();
        (name, bytes.len() as u64)
    };
    // Version 2's bundle is made first to know where a third of it is; the proxy cuts
    // the first response that carries it there.
    let probe = bundle("2.0", true, &description("http://unused/index.json"));
    let proxy = keel_testsupport::faults::cut_first(server.port, &probe.0, probe.1 / 3);
    let description = description(&guest(&format!("{}/index.json", proxy.base)));
    let (b2, b2_len) = bundle("2.0", true, &description);

    // The image builder: each node's disk with version 1 (and its tree) in slot A, A
    // good, systemd-boot with both slots' entries (the kernel command line names the
    // node's identity URL), slot A's kernel and initramfs. Each node's identity, a
    // drop-in on the web server: its name and its group.
    let v1 = slot_image(d, "1.0", true, IMAGE_BYTES);
    let i1 = initrd("1.0", &description);
    let d1 = descriptor(&v1);
    let machines: Vec<Machine<'_>> = (0..3)
        .map(|i| {
            let dir = d.join(format!("node-{i}"));
            fs::create_dir_all(&dir).unwrap();
            let m = Machine::new(&uefi, &dir, ESP_BYTES, SLOT_BYTES);
            let arg = m.image_slot_a(&v1, &d1);
            let url = guest(&format!("{}/nodes/node-{i}.toml", server.base));
            m.systemd_boot(
                &format!("console=ttyS0 quiet panic=-1 keel.config-url={url}"),
                &arg,
            );
            fs::create_dir_all(m.tree().join("keel/a")).unwrap();
            fs::write(m.tree().join("keel/a/vmlinuz"), &kernel).unwrap();
            fs::write(m.tree().join("keel/a/initrd.img"), &i1).unwrap();
            fs::write(
                publisher.www.join(format!("nodes/node-{i}.toml")),
                format!("[agent]\nnode-id = \"node-{i}\"\ngroup = \"vms\"\n"),
            )
            .unwrap();
            m
        })
        .collect();
    publisher.publish(&b2);

    // The machines run; each restarts whenever it powers off (a reboot), unless it is
    // held down.
    let stop = AtomicBool::new(false);
    let kill: Vec<AtomicBool> = (0..3).map(|_| AtomicBool::new(false)).collect();
    let down: Vec<AtomicBool> = (0..3).map(|_| AtomicBool::new(false)).collect();
    let boots: Vec<Mutex<Vec<String>>> = (0..3).map(|_| Mutex::new(Vec::new())).collect();
    let local = keel::fleet::Etcd::new(&[cluster.endpoints()]).unwrap();
    let local = std::sync::Arc::new(local);
    let group = keel::fleet::Group::new(&local, "vms", 1).unwrap();
    std::thread::scope(|s| {
        for (i, m) in machines.iter().enumerate() {
            let (stop, kill, down, boots) = (&stop, &kill[i], &down[i], &boots[i]);
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if down.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    let text = match m.power_on_until(&["-nic", "user,model=virtio-net-pci"], kill)
                    {
                        Ok(t) | Err(t) => t,
                    };
                    boots.lock().unwrap().push(text);
                }
            });
        }
        // A failed assertion below stops the machines too (else the scope would wait for
        // them for ever).
        struct Halt<'a>(&'a AtomicBool, &'a [AtomicBool]);
        impl Drop for Halt<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
                for k in self.1 {
                    k.store(true, Ordering::SeqCst);
                }
            }
        }
        let _halt = Halt(&stop, &kill);
        // Everything node `i` has printed, boot by boot, the running one last.
        let console = |i: usize| -> Vec<String> {
            let mut all = boots[i].lock().unwrap().clone();
            if !down[i].load(Ordering::SeqCst) {
                all.push(machines[i].console());
            }
            all
        };
        let said = |i: usize, what: &str| console(i).iter().any(|b| b.contains(what));
        let finish = || {
            stop.store(true, Ordering::SeqCst);
            for k in &kill {
                k.store(true, Ordering::SeqCst);
            }
        };
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(900);
            while !done() {
                if Instant::now() > deadline {
                    finish();
                    let all: Vec<String> = (0..3)
                        .map(|i| console(i).join("\n---- reboot ----\n"))
                        .collect();
                    panic!(
                        "waited in vain for {what}:\n{}",
                        all.join("\n==== next node ====\n")
                    );
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            eprintln!("fleet: {what}");
        };
        // Holders whose lease lives (an ended one is dropped by the next node to ask).
        let live_holders = || -> Vec<String> {
            group
                .status()
                .map(|st| {
                    st.holders
                        .into_iter()
                        .filter(|h| !matches!(h.binding, keel::fleet::Binding::Expired))
                        .map(|h| h.id)
                        .collect()
                })
                .unwrap_or_default()
        };

        // The first node to go down into 2.0 is killed and held down: its slot frees
        // itself when its lease ends, and the next node takes it.
        let mut first = None;
        wait_for("a node went down into 2.0 holding the slot", &|| {
            (0..3).any(|i| said(i, "rebooting into 2.0"))
        });
        for i in 0..3 {
            if said(i, "rebooting into 2.0") {
                first = Some(i);
                break;
            }
        }
        let x = first.unwrap();
        down[x].store(true, Ordering::SeqCst);
        kill[x].store(true, Ordering::SeqCst);
        let killed = Instant::now();
        let holder = format!("node-{x}");
        assert_eq!(
            live_holders(),
            std::slice::from_ref(&holder),
            "the slot's holder"
        );
        // Freed: no longer held through a live lease (the next node may take it at once).
        wait_for("the killed node's slot freed itself", &|| {
            !live_holders().contains(&holder)
        });
        let freed = killed.elapsed();
        assert!(
            freed <= Duration::from_secs(LEASE_TTL + 15),
            "the slot of node-{x} freed after {freed:?}, lease {LEASE_TTL} s"
        );
        wait_for("another node rebooted into 2.0", &|| {
            (0..3).any(|i| i != x && said(i, "rebooting into 2.0"))
        });
        // Back up: it boots the version it armed and commits it.
        kill[x].store(false, Ordering::SeqCst);
        down[x].store(false, Ordering::SeqCst);

        // Version 2 rolls through the group one node at a time: each commits it.
        wait_for("every node committed 2.0", &|| {
            (0..3).all(|i| said(i, "committed 2.0"))
        });
        for i in 0..3 {
            let text = console(i).join("\n");
            assert!(
                text.contains("KEEL-NODE slot=B initrd=2.0 version=2.0 healthy=yes"),
                "node-{i} never ran 2.0's kernel and root:\n{text}"
            );
        }

        // Version 3 fails its check on the first node to take it: it falls back to 2.0,
        // the group is paused, and no other node reboots into 3.0.
        let (b3, _) = bundle("3.0", false, &description);
        publisher.publish(&b3);
        wait_for("a node fell back from 3.0 and paused the group", &|| {
            (0..3).any(|i| said(i, "fell back from 3.0"))
                && group.status().is_ok_and(|st| st.paused.is_some())
        });
        let bad = (0..3).find(|&i| said(i, "fell back from 3.0")).unwrap();
        // The others see the pause, and every node's status says so.
        let says_why = |i: usize| {
            let text = console(i).last().cloned().unwrap_or_default();
            text.rsplit("KEEL-STATUS state:")
                .next()
                .is_some_and(|last| {
                    last.contains(&format!("group:      paused by node-{bad} ("))
                        && last.contains("marker")
                })
        };
        wait_for(
            "every node's status names the failed node and check",
            &|| (0..3).all(says_why),
        );
        finish();
        let pause = group.status().unwrap().paused.unwrap();
        assert!(
            pause.reason.contains(&format!("node-{bad}")) && pause.reason.contains("marker"),
            "{pause:?}"
        );
        let text = console(bad).join("\n");
        assert!(
            text.contains("KEEL-NODE slot=A initrd=3.0 version=3.0 healthy=no"),
            "{text}"
        );
        assert!(
            text.rfind("KEEL-NODE slot=B initrd=2.0 version=2.0 healthy=yes")
                > text.rfind("KEEL-NODE slot=A initrd=3.0"),
            "node-{bad} did not come back to 2.0:\n{text}"
        );
        for i in (0..3).filter(|&i| i != bad) {
            assert!(!said(i, "rebooting into 3.0"), "node-{i} rebooted into 3.0");
            assert!(!said(i, "version=3.0"), "node-{i} ran 3.0");
        }
    });

    // etcd's history: no revision of the semaphore ever listed two holders, and every
    // node held it at some revision.
    let key = group.semaphore_key();
    let now = local.range(key.as_bytes(), false, None).unwrap().revision;
    let mut held = std::collections::BTreeSet::new();
    let mut rev = now;
    while rev > 0 {
        let r = local.range(key.as_bytes(), false, Some(rev)).unwrap();
        let Some(kv) = r.kvs.first() else { break };
        let sem: keel::fleet::Semaphore = serde_json::from_slice(&kv.value).unwrap();
        assert!(
            sem.holders.len() <= 1,
            "revision {}: {:?}",
            kv.mod_revision,
            sem.holders
        );
        held.extend(sem.holders);
        rev = kv.mod_revision - 1;
    }
    assert_eq!(held.len(), 3, "holders in the history: {held:?}");

    // nginx's log: each node fetched its identity once over all its boots; each took
    // version 2's bundle whole, in ranges; the one whose download was cut went on from
    // where it stopped (what it fetched beyond the bundle is what nginx had sent into
    // the cut connection, not a second download).
    let log = server.requests();
    let mut over = Vec::new();
    for i in 0..3 {
        let identity: Vec<_> = log
            .iter()
            .filter(|r| r.path == format!("/nodes/node-{i}.toml"))
            .collect();
        assert_eq!(
            identity.len(),
            1,
            "node-{i} fetched its identity {} times: {identity:?}",
            identity.len()
        );
        let mine: Vec<_> = log
            .iter()
            .filter(|r| r.path == format!("/{b2}") && r.agent.contains(&format!("node=node-{i};")))
            .collect();
        let bytes: u64 = mine.iter().map(|r| r.bytes).sum();
        eprintln!(
            "node-{i}: {} requests for {bytes} bytes of a {b2_len}-byte bundle",
            mine.len()
        );
        assert!(
            mine.iter().all(|r| r.status == 206 && r.range != "-"),
            "node-{i}: {mine:?}"
        );
        assert!(
            bytes >= b2_len,
            "node-{i} fetched {bytes} of {b2_len} bytes"
        );
        assert!(
            bytes <= b2_len + (1 << 20),
            "node-{i} fetched {bytes} bytes of a {b2_len}-byte bundle"
        );
        if bytes > b2_len {
            over.push(i);
        }
    }
    assert_eq!(over.len(), 1, "nodes that met the cut: {over:?}");
    assert_eq!(
        proxy.cuts.load(Ordering::SeqCst),
        1,
        "the proxy cut one download"
    );
}
