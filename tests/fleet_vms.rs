//! The seed's scenario on virtual machines: a group of three nodes (qemu, OVMF, GRUB with
//! RAUC's script, Debian's kernel) each running keel-agent by itself at every boot. A new
//! version (a new root and a new initramfs, as a bundle) is published on nginx; each node
//! installs it, takes the group's slot in a real three-member etcd cluster, reboots itself
//! into it, commits after its health check and frees the slot: one node at a time. A
//! version whose health check fails falls back on the first node, which stops the roll for
//! the group; no other node installs it.
//!
//! A boot is one qemu run: the initramfs maps the slot GRUB chose through dm-verity, runs
//! `keel-agent run --once` (finish the last boot's step, then check), and powers off; the
//! reboot command powers off too, and the next run is the reboot. The guest reaches nginx
//! and etcd on this machine's loopback through qemu's user network (10.0.2.2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::machine::{
    descriptor, init_script, slot_image, uefi, Machine, KERNEL_ENTRIES, RAUC_SELECT, SALT,
};
use common::*;
use keel::bootflags::rauc::RaucGrub;
use keel::trust::{Context, Signer, SigningKey};

const ESP_BYTES: u64 = 112 << 20;
const SLOT_BYTES: u64 = 16 << 20;
const IMAGE_BYTES: u64 = 8 << 20;

/// The initramfs, after mapping the slot ([`init_script`]): this node's id from the ESP,
/// the network up, keel-agent run.
const INIT_REST: &str = r#"cp /esp/machine-id /etc/machine-id
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
exec /bin/keel-agent --config /system.toml --root / --state /esp/keel-state run --disk /dev/vda
"#;

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
        let signers: [&dyn Signer; 1] = [&self.key];
        let env = keel::release::sign_envelope(
            &serde_json::to_vec(&index).unwrap(),
            Context::ReleaseIndex,
            &signers,
        )
        .unwrap();
        fs::write(self.www.join("index.json"), env).unwrap();
    }

    fn root(&self) -> Vec<u8> {
        let root = keel::release::Root {
            kind: "keel-root".into(),
            version: 1,
            expires: u64::MAX / 2,
            threshold: 1,
            keys: vec![hex::encode(self.key.public_key().to_bytes())],
        };
        let signers: [&dyn Signer; 1] = [&self.key];
        keel::release::sign_envelope(
            &serde_json::to_vec(&root).unwrap(),
            Context::TrustRoot,
            &signers,
        )
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
    fs::create_dir_all(&publisher.www).unwrap();
    let Some(server) = keel_testsupport::nginx::serve(&publisher.www, &d.join("nginx")) else {
        return;
    };
    // The guest sees this machine's loopback at 10.0.2.2.
    let guest = |url: &str| url.replace("127.0.0.1", "10.0.2.2");
    let endpoints = guest(&cluster.endpoints());
    let description = format!(
        "version = \"1\"\ncompatible = \"keel-fleet-test\"\n\n[boot]\nbackend = \"grubenv\"\n\
         grubenv = \"/esp/EFI/keel/grubenv\"\nattempts = 1\n\n\
         [[slot]]\nname = \"usr.a\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-A\"\n\n\
         [[slot]]\nname = \"usr.b\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-B\"\n\n\
         [[file]]\nclass = \"vmlinuz\"\npath = \"/esp/keel/{{slot}}/vmlinuz\"\n\n\
         [[file]]\nclass = \"initrd\"\npath = \"/esp/keel/{{slot}}/initrd.img\"\n\n\
         [verity]\nsalt = \"{SALT}\"\n\n[[trust.key]]\nid = \"release\"\ned25519 = \"{key}\"\n\n\
         [agent]\nindex = \"{index}\"\ntrust-root = \"/etc/keel/root.json\"\ninterval = 2\n\
         strategy = \"etcd\"\netcd = [\"{endpoints}\"]\ngroup = \"vms\"\nlease-ttl = 300\n\
         reboot-command = [\"/bin/sh\", \"-c\", \"echo KEEL-REBOOT; umount /esp; sync; poweroff -f\"]\n\
         socket = \"/run/keel-agent.sock\"\n\n\
         [[agent.check]]\nname = \"marker\"\ncommand = [\"grep\", \"-q\", \"healthy=yes\", \"/mnt/marker\"]\n",
        key = hex::encode(publisher.key.public_key().to_bytes()),
        index = guest(&format!("{}/index.json", server.base)),
    );

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
    fs::write(root.join("system.toml"), &description).unwrap();
    fs::create_dir_all(root.join("etc/keel")).unwrap();
    fs::write(root.join("etc/keel/root.json"), publisher.root()).unwrap();
    let initrd = |version: &str| -> Vec<u8> {
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

    // The image builder: each node's disk with version 1 (and its tree) in slot A, A good,
    // its kernel argument, GRUB with RAUC's script, slot A's kernel and initramfs.
    let v1 = slot_image(d, "1.0", true, IMAGE_BYTES);
    let i1 = initrd("1.0");
    let d1 = descriptor(&v1);
    let machines: Vec<Machine<'_>> = (0..3)
        .map(|i| {
            let dir = d.join(format!("node-{i}"));
            fs::create_dir_all(&dir).unwrap();
            let m = Machine::new(&uefi, &dir, ESP_BYTES, SLOT_BYTES);
            let arg = m.image_slot_a(&v1, &d1);
            m.grub(
                "EFI/BOOT/BOOTX64.EFI",
                &format!("{RAUC_SELECT}{KERNEL_ENTRIES}"),
            );
            let mut rauc = RaucGrub::init(2, keel::bootflags::Slot::A).unwrap();
            rauc.set_var("KEEL_A_ARGS", &arg).unwrap();
            fs::write(
                m.tree().join("EFI/keel/grubenv"),
                rauc.to_env().unwrap().to_bytes().unwrap(),
            )
            .unwrap();
            fs::create_dir_all(m.tree().join("keel/a")).unwrap();
            fs::write(m.tree().join("keel/a/vmlinuz"), &kernel).unwrap();
            fs::write(m.tree().join("keel/a/initrd.img"), &i1).unwrap();
            fs::write(m.tree().join("machine-id"), format!("node-{i}\n")).unwrap();
            m
        })
        .collect();

    // The publisher: version 2, a new root and a new initramfs (the kernel as before).
    let bundle = |version: &str, healthy: bool| {
        let image = slot_image(d, version, healthy, IMAGE_BYTES);
        let root = descriptor(&image);
        let initrd = initrd(version);
        let parts = [
            keel::payload::BundlePart::slot("usr", None, &image).verity(&root),
            keel::payload::BundlePart::file("vmlinuz", None, &kernel),
            keel::payload::BundlePart::file("initrd", None, &initrd),
        ];
        let opts = keel::payload::GenerateOptions::new("keel-fleet-test", version).level(1);
        let bytes = keel::payload::generate_bundle(&parts, &publisher.key, &opts, None).unwrap();
        let name = format!("os-{version}.bundle");
        fs::write(publisher.www.join(&name), bytes).unwrap();
        name
    };
    let b2 = bundle("2.0", true);
    publisher.publish(&b2);

    // The machines run; each restarts whenever it powers off (a reboot).
    let stop = AtomicBool::new(false);
    let boots: Vec<Mutex<Vec<String>>> = (0..3).map(|_| Mutex::new(Vec::new())).collect();
    let local = keel::fleet::Etcd::new(&[cluster.endpoints()]).unwrap();
    let local = std::sync::Arc::new(local);
    let group = keel::fleet::Group::new(&local, "vms", 1).unwrap();
    std::thread::scope(|s| {
        for (i, m) in machines.iter().enumerate() {
            let (stop, boots) = (&stop, &boots[i]);
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let text = match m.power_on_until(&["-nic", "user,model=virtio-net-pci"], stop)
                    {
                        Ok(t) | Err(t) => t,
                    };
                    boots.lock().unwrap().push(text);
                }
            });
        }
        // Everything node `i` has printed, boot by boot, the running one last.
        let console = |i: usize| -> Vec<String> {
            let mut all = boots[i].lock().unwrap().clone();
            all.push(machines[i].console());
            all
        };
        let said = |i: usize, what: &str| console(i).iter().any(|b| b.contains(what));
        let most = std::cell::Cell::new(0usize);
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(1500);
            while !done() {
                // Never more than the group's one slot held.
                let holders = group.status().map(|st| st.holders.len()).unwrap_or(0);
                most.set(most.get().max(holders));
                assert!(holders <= 1, "{holders} nodes hold the group's one slot");
                if Instant::now() > deadline {
                    stop.store(true, Ordering::SeqCst);
                    let all: Vec<String> = (0..3)
                        .map(|i| console(i).join("\n---- reboot ----\n"))
                        .collect();
                    panic!(
                        "waited in vain for {what}:\n{}",
                        all.join("\n==== next node ====\n")
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            eprintln!("fleet: {what}");
        };

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
        assert_eq!(most.get(), 1, "no node ever held the slot");

        // Version 3 fails its check on the first node to take it: it falls back to 2.0,
        // the group is paused, and no other node reboots into 3.0.
        let b3 = bundle("3.0", false);
        publisher.publish(&b3);
        wait_for("a node fell back from 3.0 and paused the group", &|| {
            (0..3).any(|i| said(i, "fell back from 3.0"))
                && group.status().is_ok_and(|st| st.paused.is_some())
        });
        let bad = (0..3).find(|&i| said(i, "fell back from 3.0")).unwrap();
        // A few intervals more: the others see the pause and stay.
        std::thread::sleep(Duration::from_secs(20));
        stop.store(true, Ordering::SeqCst);
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
}
