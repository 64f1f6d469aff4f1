//! Proof by the real boot loaders under OVMF in qemu, on a disk Keel laid out: GRUB
//! (RAUC's reference script over the grubenv keel-bootflags wrote) and systemd-boot (boot
//! counting over the entries keel-bootflags named and renamed) choose the slot by their
//! own code, count their tries on the ESP, and agree with keel-bootflags' model of them
//! boot after boot, through arming, fallback, commit and marking bad. The boot loader (or
//! the EFI program an entry starts) prints the slot it chose on the serial console and
//! powers the machine off; one qemu run is one boot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::fs;
use std::path::Path;

use common::machine::{
    descriptor, init_script, slot_image, uefi, Machine, KERNEL_ENTRIES, PRINT_ENTRIES, RAUC_SELECT,
    SALT, SYSTEMD_BOOT,
};
use common::*;
use keel::bootflags::blsdir::BlsDir;
use keel::bootflags::rauc::RaucGrub;
use keel::bootflags::BootControl;
use keel::bootflags::{AbControl, Slot};
use keel::io::WriteAt;
use keel::partition::GptDisk;

/// The ESP: room for two slots' kernels and initramfs images (Keel's `update` in them).
const ESP_BYTES: u64 = 112 << 20;
/// Each slot: an 8 MiB ext4 image and its dm-verity tree.
const SLOT_BYTES: u64 = 16 << 20;
const IMAGE_BYTES: u64 = 8 << 20;

/// The boot loader's choice and the state it left agree with keel-bootflags' model.
fn boot_and_compare(m: &Machine<'_>, what: &str) -> Slot {
    let mut model = RaucGrub::from_env(m.grubenv(), 2).unwrap();
    let predicted = model.boot();
    let (slot, args) = m.boot();
    assert_eq!(
        Some(slot),
        predicted,
        "{what}: GRUB chose {slot}, Keel's model {predicted:?}"
    );
    let after = RaucGrub::from_env(m.grubenv(), 2).unwrap();
    for s in [Slot::A, Slot::B] {
        assert_eq!(
            after.state(s).unwrap(),
            model.state(s).unwrap(),
            "{what}: slot {s} after the boot"
        );
    }
    let stored = m
        .grubenv()
        .get(&format!("KEEL_{slot}_ARGS"))
        .unwrap_or("")
        .to_string();
    assert_eq!(args, stored, "{what}: the kernel argument GRUB read");
    slot
}

#[test]
fn grub_follows_keels_environment_and_counts_as_keel_predicts() {
    let Some(uefi) = uefi() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A fresh environment as the image builder writes it: A good and first; each slot's
    // kernel argument, with the quotes and spaces a dm-mod.create= line has.
    let mut rauc = RaucGrub::init(2, Slot::A).unwrap();
    rauc.set_var("KEEL_A_ARGS", r#"dm-mod.create="usr,,,ro,0 8 verity 1 PARTUUID=aa 4096 4096 8 9 sha256 0f salt" mount.usr=/dev/dm-0"#).unwrap();
    rauc.set_var("KEEL_B_ARGS", "mount.usr=/dev/dm-0 verity.usrhash=5a17")
        .unwrap();
    let m = Machine::new(&uefi, dir.path(), ESP_BYTES, SLOT_BYTES);
    m.grub(
        "EFI/BOOT/BOOTX64.EFI",
        &format!("{RAUC_SELECT}{PRINT_ENTRIES}"),
    );
    fs::write(
        m.tree().join("EFI/keel/grubenv"),
        rauc.to_env().unwrap().to_bytes().unwrap(),
    )
    .unwrap();

    assert_eq!(boot_and_compare(&m, "first boot"), Slot::A);
    // Keel arms B; B's one try; it fails its health check and Keel marks it bad: back to A.
    m.keel(|r| r.set_active(Slot::B, None).unwrap());
    assert_eq!(boot_and_compare(&m, "armed B"), Slot::B);
    m.keel(|r| r.mark_bad(Slot::B).unwrap());
    assert_eq!(boot_and_compare(&m, "B marked bad"), Slot::A);
    // Armed again, B boots and is committed: it keeps booting.
    m.keel(|r| r.set_active(Slot::B, None).unwrap());
    assert_eq!(boot_and_compare(&m, "re-armed B"), Slot::B);
    m.keel(|r| r.mark_good(Slot::B).unwrap());
    assert_eq!(boot_and_compare(&m, "B committed"), Slot::B);
    // B hangs before its commit: GRUB falls back to A, and with every try spent it resets
    // the tries and starts from A again, as the model says.
    assert_eq!(boot_and_compare(&m, "B not committed"), Slot::A);
    assert_eq!(boot_and_compare(&m, "both tried"), Slot::A);
}

#[test]
fn systemd_boot_counts_and_falls_back_as_keel_predicts() {
    let Some(uefi) = uefi() else { return };
    let dir = tempfile::tempdir().unwrap();
    let m = Machine::new(&uefi, dir.path(), ESP_BYTES, SLOT_BYTES);
    fs::copy(SYSTEMD_BOOT, m.tree().join("EFI/BOOT/BOOTX64.EFI")).unwrap();
    // Each slot's "kernel" is an EFI program that prints the slot and powers off.
    for s in ["A", "B"] {
        m.grub(
            &format!("EFI/keel/slot-{s}.efi"),
            &format!("echo \"KEEL-BOOT slot={s} args=[]\"\nhalt\n"),
        );
    }
    let entries = m.tree().join("loader/entries");
    fs::create_dir_all(&entries).unwrap();
    fs::write(
        m.tree().join("loader/loader.conf"),
        "timeout 0\ndefault keel-a.conf\n",
    )
    .unwrap();
    for (s, file) in [("A", "keel-a.conf"), ("B", "keel-b+0.conf")] {
        let lower = s.to_ascii_lowercase();
        fs::write(
            entries.join(file),
            format!("title Slot {s}\nefi /EFI/keel/slot-{s}.efi\noptions mount.usr=/dev/dm-0 keel.slot={lower}\n"),
        )
        .unwrap();
    }
    let ids = ["keel-a", "keel-b"];
    let names = |tree: &Path| -> Vec<String> {
        let d = BlsDir::open(tree, &ids).unwrap();
        [Slot::A, Slot::B]
            .iter()
            .map(|&s| d.entry(s).unwrap().file_name())
            .collect()
    };
    // Boot; the choice and the entries systemd-boot renamed match Keel's model, run on a
    // copy of the ESP's tree.
    let boot_and_compare = |what: &str| -> Slot {
        let scratch = dir.path().join("predicted");
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch).unwrap();
        copy_dir(&m.tree(), &scratch);
        let mut model = BlsDir::open(&scratch, &ids).unwrap();
        let predicted = model.boot().unwrap();
        let (slot, _) = m.boot();
        assert_eq!(
            Some(slot),
            predicted,
            "{what}: systemd-boot chose {slot}, Keel's model {predicted:?}"
        );
        assert_eq!(
            names(&m.tree()),
            names(&scratch),
            "{what}: the entries after the boot"
        );
        slot
    };
    let keel = |change: &dyn Fn(&mut BlsDir)| change(&mut BlsDir::open(&m.tree(), &ids).unwrap());

    assert_eq!(boot_and_compare("first boot"), Slot::A);
    // Keel arms B with two tries: systemd-boot counts them down, then falls back to A.
    keel(&|d| d.set_active(Slot::B, Some(2)).unwrap());
    assert_eq!(names(&m.tree()), ["keel-a.conf", "keel-b+2-0.conf"]);
    assert_eq!(boot_and_compare("armed B, first try"), Slot::B);
    assert_eq!(boot_and_compare("armed B, second try"), Slot::B);
    assert_eq!(boot_and_compare("B's tries spent"), Slot::A);
    assert_eq!(names(&m.tree()), ["keel-a.conf", "keel-b+0-2.conf"]);
    // Armed again, B boots and is committed (blessed): it keeps booting.
    keel(&|d| d.set_active(Slot::B, Some(2)).unwrap());
    assert_eq!(boot_and_compare("re-armed B"), Slot::B);
    keel(&|d| d.mark_good(Slot::B).unwrap());
    assert_eq!(names(&m.tree())[1], "keel-b.conf");
    assert_eq!(boot_and_compare("B committed"), Slot::B);
}

/// The initramfs (each version's own, saying its version in `/initrd-version`), after
/// mapping the slot ([`init_script`]): Keel's `update commit` runs the health check and
/// marks the slot on the ESP.
const INIT_REST: &str = r#"/bin/update --config /system.toml --root / --state /esp/keel-state --disk /dev/vda \
    commit --check 'grep -q healthy=yes /mnt/marker' --timeout 30
echo "KEEL-COMMIT rc=$?"
umount /esp
sync
poweroff -f
"#;

/// The kernel's and the initramfs's results of one boot: (slot, what it printed).
fn kernel_result(text: &str) -> (Slot, String) {
    let line = text
        .lines()
        .rev()
        .find_map(|l| l.split("KEEL-RESULT ").nth(1))
        .unwrap_or_else(|| panic!("the initramfs printed no result:\n{text}"))
        .to_string();
    let slot = match line.strip_prefix("slot=").and_then(|r| r.chars().next()) {
        Some('A') => Slot::A,
        Some('B') => Slot::B,
        _ => panic!("{line}"),
    };
    (slot, line)
}

#[test]
fn grub_boots_the_slot_keel_installed_through_dm_verity_and_falls_back() {
    kernel_chain(Loader::Grub);
}

#[test]
fn systemd_boot_boots_the_slot_keel_installed_through_dm_verity_and_falls_back() {
    kernel_chain(Loader::SystemdBoot);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Loader {
    /// RAUC's script over the grubenv: one try per armed slot.
    Grub,
    /// Boot counting over the slots' entries: `TRIES` tries.
    SystemdBoot,
}

/// systemd-boot's tries for a new slot in the kernel test.
const TRIES: usize = 2;

/// The whole chain under `loader`: keel-update installs each version into the slot not
/// running, the boot loader starts the kernel with the argument keel-update stored, the
/// initramfs maps the slot through dm-verity and runs keel-update's commit in the guest.
fn kernel_chain(loader: Loader) {
    let Some(uefi) = uefi() else { return };
    let Some(k) = keel_testsupport::kernel::kernel() else {
        return;
    };
    let strip = tool("strip", "binutils").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = Machine::new(&uefi, d, ESP_BYTES, SLOT_BYTES);
    let key = keel::trust::SigningKey::generate().unwrap();
    let boot_section = match loader {
        Loader::Grub => {
            "backend = \"grubenv\"\ngrubenv = \"/esp/EFI/keel/grubenv\"\nattempts = 1".to_string()
        }
        Loader::SystemdBoot => format!(
            "backend = \"systemd-boot\"\nentries-dir = \"/esp/loader/entries\"\nattempts = {TRIES}"
        ),
    };
    let description = format!(
        "version = \"1\"\ncompatible = \"keel-boot-test\"\n\n[boot]\n{boot_section}\n\n\
         [[slot]]\nname = \"usr.a\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-A\"\n\n\
         [[slot]]\nname = \"usr.b\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-B\"\n\n\
         [[file]]\nclass = \"vmlinuz\"\npath = \"/esp/keel/{{slot}}/vmlinuz\"\n\n\
         [[file]]\nclass = \"initrd\"\npath = \"/esp/keel/{{slot}}/initrd.img\"\n\n\
         [verity]\nsalt = \"{SALT}\"\n\n[[trust.key]]\nid = \"release\"\ned25519 = \"{}\"\n",
        hex::encode(key.public_key().to_bytes())
    );
    // The initramfs: busybox, dmsetup, the modules, Keel's `update` and the description.
    let update = d.join("update");
    run_ok(
        &strip,
        &[
            "-o",
            update.to_str().unwrap(),
            example("update").to_str().unwrap(),
        ],
    );
    let root = d.join("initramfs");
    let extra = ["ext4", "crc32c_generic", "vfat", "nls_cp437", "nls_ascii"];
    let wanted = [&keel_testsupport::kernel::VERITY_MODULES[..], &extra].concat();
    keel_testsupport::kernel::populate_initramfs(
        &k,
        &root,
        &[(&update, "bin/update")],
        &wanted,
        &init_script("KEEL-RESULT", INIT_REST),
    );
    fs::write(root.join("system.toml"), &description).unwrap();
    // Each version's initramfs, told apart from inside the guest by its /initrd-version.
    let initrd = |version: &str| -> Vec<u8> {
        fs::write(root.join("initrd-version"), version).unwrap();
        let out = d.join(format!("initrd-{version}"));
        keel_testsupport::kernel::cpio_of(&k.cpio, &root, &out);
        fs::read(out).unwrap()
    };
    let kernel = fs::read(&k.vmlinuz).unwrap();
    // Slot A's kernel and initramfs on the ESP, as the image builder ships them.
    fs::create_dir_all(m.tree().join("keel/a")).unwrap();
    fs::write(m.tree().join("keel/a/vmlinuz"), &kernel).unwrap();
    fs::write(m.tree().join("keel/a/initrd.img"), initrd("1.0")).unwrap();

    // The image builder: version 1 and its tree in slot A, A good, its kernel argument.
    let disk = m.disk();
    let gpt = GptDisk::open(&disk, None).unwrap();
    let ss = gpt.sector_size();
    let part = |label: &str| gpt.partition_by_label(label).unwrap();
    let a = part("USR-A");
    let v1 = slot_image(d, "1.0", true, IMAGE_BYTES);
    let arg_a = m.image_slot_a(&v1, &descriptor(&v1));
    let entries = m.tree().join("loader/entries");
    match loader {
        Loader::Grub => {
            m.grub(
                "EFI/BOOT/BOOTX64.EFI",
                &format!("{RAUC_SELECT}{KERNEL_ENTRIES}"),
            );
            let mut rauc = RaucGrub::init(2, Slot::A).unwrap();
            rauc.set_var("KEEL_A_ARGS", &arg_a).unwrap();
            fs::write(
                m.tree().join("EFI/keel/grubenv"),
                rauc.to_env().unwrap().to_bytes().unwrap(),
            )
            .unwrap();
        }
        Loader::SystemdBoot => m.systemd_boot("console=ttyS0 quiet panic=-1", &arg_a),
    }
    drop(gpt);
    drop(disk);

    // The host's view of the device for keel-update: the kernel booted `slot`.
    fs::create_dir_all(d.join("proc")).unwrap();
    fs::create_dir_all(d.join("etc")).unwrap();
    fs::write(d.join("etc/os-release"), "VERSION_ID=1.0\n").unwrap();
    // What the kernel was told when it booted `slot`: the argument where the boot loader
    // keeps it.
    let booted = |slot: Slot| {
        let args = match loader {
            Loader::Grub => m
                .grubenv()
                .get(&format!("KEEL_{slot}_ARGS"))
                .unwrap()
                .to_string(),
            Loader::SystemdBoot => {
                let id = format!("usr.{}", slot.letter().to_ascii_lowercase());
                let bls = BlsDir::open(&m.tree(), &["usr.a", "usr.b"]).unwrap();
                let file = bls.entry(slot).unwrap().file_name();
                assert!(file.starts_with(&id));
                let text = fs::read_to_string(entries.join(file)).unwrap();
                text.lines()
                    .find_map(|l| l.strip_prefix("options "))
                    .unwrap()
                    .to_string()
            }
        };
        fs::write(d.join("proc/cmdline"), format!("keel.slot={slot} {args}\n")).unwrap();
    };
    let good = |slot: Slot| -> bool {
        match loader {
            Loader::Grub => {
                RaucGrub::from_env(m.grubenv(), 2)
                    .unwrap()
                    .state(slot)
                    .unwrap()
                    .successful
            }
            Loader::SystemdBoot => {
                BlsDir::open(&m.tree(), &["usr.a", "usr.b"])
                    .unwrap()
                    .status()
                    .unwrap()[slot.index()]
                .successful
            }
        }
    };
    let install = |version: &str, healthy: bool| -> keel::update::Installed {
        // The slot set: the usr image, the kernel (a delta from the running slot's, the
        // same kernel here) and this version's initramfs.
        let image = slot_image(d, version, healthy, IMAGE_BYTES);
        let root = descriptor(&image);
        let initrd = initrd(version);
        let parts = [
            keel::payload::BundlePart::slot("usr", None, &image).verity(&root),
            keel::payload::BundlePart::file("vmlinuz", Some(&kernel), &kernel),
            keel::payload::BundlePart::file("initrd", None, &initrd),
        ];
        let opts = keel::payload::GenerateOptions::new("keel-boot-test", version).level(3);
        let payload = keel::payload::generate_bundle(&parts, &key, &opts, None).unwrap();
        let loaded = keel::config::load_sources(&[("system.toml".into(), description.clone())]);
        let system = keel::update::System::from_config(
            loaded
                .config
                .as_ref()
                .unwrap_or_else(|| panic!("{:?}", loaded.findings)),
        )
        .unwrap();
        let disk = m.disk();
        let agent = keel::update::Agent::new(system, &disk)
            .root(d)
            .state_dir(m.tree().join("keel-state"));
        agent.install(&payload[..], None).unwrap()
    };
    let boot = |what: &str| -> (Slot, String, String) {
        let text = m.power_on();
        let (slot, result) = kernel_result(&text);
        eprintln!("{what}: slot {slot}: {result}");
        if std::env::var_os("KEEL_SHOW_CONSOLE").is_some() {
            eprintln!("{text}");
        }
        (slot, result, text)
    };

    // Version 2 (healthy) into B: GRUB starts B, the kernel maps it through dm-verity
    // with the argument keel-update wrote, and `update commit` marks it good.
    booted(Slot::A);
    assert_eq!(install("2.0", true).slot, Slot::B);
    let (slot, result, text) = boot("v2 armed");
    assert_eq!(
        (slot, result.as_str()),
        (Slot::B, "slot=B initrd=2.0 version=2.0 healthy=yes")
    );
    assert!(text.contains("KEEL-COMMIT rc=0"), "{text}");
    assert!(good(Slot::B), "B is marked good on the ESP");
    let (slot, _, text) = boot("v2 committed");
    assert_eq!(slot, Slot::B, "a committed slot keeps booting");
    assert!(text.contains("KEEL-COMMIT rc=0"), "{text}");

    // Version 3 fails its health check: commit marks A bad, the next boot is B.
    booted(Slot::B);
    let running = |f: &str| fs::read(m.tree().join("keel/b").join(f)).unwrap();
    let (b_kernel, b_initrd) = (running("vmlinuz"), running("initrd.img"));
    assert_eq!(install("3.0", false).slot, Slot::A);
    assert!(
        running("vmlinuz") == b_kernel && running("initrd.img") == b_initrd,
        "the running slot's kernel and initramfs were touched"
    );
    let (slot, result, text) = boot("v3 armed");
    assert_eq!(
        (slot, result.as_str()),
        (Slot::A, "slot=A initrd=3.0 version=3.0 healthy=no")
    );
    assert!(text.contains("KEEL-COMMIT rc=2"), "{text}");
    let (slot, result, _) = boot("after v3 failed");
    assert_eq!(
        (slot, result.as_str()),
        (Slot::B, "slot=B initrd=2.0 version=2.0 healthy=yes")
    );

    // Version 4 is installed, then its data is changed on the disk: the kernel's
    // dm-verity refuses the blocks, nothing mounts, nothing commits; GRUB falls back.
    assert_eq!(install("4.0", true).slot, Slot::A);
    let disk = m.disk();
    let off = a.first_lba * ss + 1024 + 100;
    (&disk).write_all_at(&[0x5a; 16], off).unwrap();
    drop(disk);
    // Each try the boot loader gives it (GRUB: one; systemd-boot: TRIES) fails the same.
    let tries = if loader == Loader::Grub { 1 } else { TRIES };
    for i in 0..tries {
        let (slot, result, text) = boot(&format!("v4 tampered, try {}", i + 1));
        assert_eq!(
            (slot, result.as_str()),
            (Slot::A, "slot=A initrd=4.0 mounted=no")
        );
        assert!(
            text.contains("verity") && text.contains("is corrupted"),
            "the kernel's dm-verity did not report the damage:\n{text}"
        );
    }
    let (slot, result, _) = boot("after v4 failed to mount");
    assert_eq!(
        (slot, result.as_str()),
        (Slot::B, "slot=B initrd=2.0 version=2.0 healthy=yes")
    );
}
