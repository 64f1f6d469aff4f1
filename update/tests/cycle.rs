//! keel-update's whole cycle on a GPT disk (an image file, a shared buffer with power
//! cuts, real loop devices): install from a description, boot, commit; refusals before
//! any write; every kernel argument form of the booted slot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_bootflags::Slot;
use keel_io::testing::PowerCut;
use keel_io::{ReadAt, Region, Shared, WriteAt};
use keel_partition::{create_layout, GptDisk, Layout};
use keel_payload::{generate, GenerateOptions};
use keel_testsupport::seeded_bytes;
use keel_trust::SigningKey;
use keel_update::{Agent, Commit, Error, HealthCheck, System};
use keel_verity::{HashTree, RootDescriptor, VerityParams};

mod common;
use common::{open_rw, Dirs};

const SLOT: u64 = 4 << 20;
const IMAGE: usize = 3 << 20;
const SALT: &str = "5a17";

/// A disk with an ESP and slots USR-A (version 1.0 in it) and USR-B, a release key, a
/// fake root directory, a state directory.
struct Fixture {
    dir: tempfile::TempDir,
    key: SigningKey,
    v1: Vec<u8>,
    v2: Vec<u8>,
}

impl Dirs for Fixture {
    fn base(&self) -> &Path {
        self.dir.path()
    }
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let v1 = seeded_bytes(1, IMAGE);
        let mut v2 = v1.clone();
        v2[100_000..300_000].copy_from_slice(&seeded_bytes(2, 200_000));
        let f = Fixture {
            dir,
            key: SigningKey::generate().unwrap(),
            v1,
            v2,
        };
        f.make_root("1.0");
        f.lay_out(512);
        f
    }

    /// A new disk with `sector_size`-byte sectors, version 1 in slot A, booted from A.
    fn lay_out(&self, sector_size: u64) {
        let disk = fs::File::create(self.disk()).unwrap();
        disk.set_len(2 * SLOT + (8 << 20)).unwrap();
        let mut layout = Layout::flatcar(SLOT);
        layout.esp_size = 1 << 20;
        layout.sector_size = sector_size;
        create_layout(&mut &disk, &layout).unwrap();
        let a = self.slot_range(fs::read(self.disk()).unwrap(), "USR-A");
        Region::new(&disk, a.0, a.1)
            .unwrap()
            .write_all_at(&self.v1, 0)
            .unwrap();
        self.boot_from("USR-A");
    }

    /// (offset, length) of the partition labelled `label` on a disk read into memory.
    fn slot_range(&self, disk: Vec<u8>, label: &str) -> (u64, u64) {
        let g = GptDisk::open(disk, None).unwrap();
        let ss = g.sector_size();
        let p = g.partition_by_label(label).unwrap();
        (p.first_lba * ss, p.sectors() * ss)
    }

    fn partuuid(&self, label: &str) -> String {
        let g = GptDisk::open(fs::read(self.disk()).unwrap(), None).unwrap();
        g.partition_by_label(label).unwrap().guid.to_string()
    }

    /// The kernel was told to mount `/usr` from the partition labelled `label`.
    fn boot_from(&self, label: &str) {
        self.cmdline(&format!(
            "BOOT_IMAGE=/vmlinuz ro mount.usr=PARTUUID={} quiet",
            self.partuuid(label)
        ));
    }

    fn cmdline(&self, text: &str) {
        fs::write(self.root().join("proc/cmdline"), format!("{text}\n")).unwrap();
    }

    /// The description, with `extra` appended (more settings of the tables at its end).
    fn description(&self, disk: &Path, update: &str, trust: &str) -> String {
        let boot = format!("backend = \"gpt-flatcar\"\ndisk = \"{}\"", disk.display());
        self.description_for(&boot, update, trust)
    }

    /// The description with `boot` as the body of its `[boot]` table.
    fn description_for(&self, boot: &str, update: &str, trust: &str) -> String {
        format!(
            "version = \"1\"\ncompatible = \"acme-os\"\n\n[boot]\n{boot}\n\n[[slot]]\nname = \"usr.a\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-A\"\n\
             partition-type = \"usr\"\n\n[[slot]]\nname = \"usr.b\"\nclass = \"usr\"\n\
             device = \"PARTUUID={}\"\n\n[verity]\nsalt = \"{SALT}\"\n\n[trust]\n{trust}\n\
             [[trust.key]]\nid = \"release\"\ned25519 = \"{}\"\n\n[update]\ntries = 2\n{update}",
            self.partuuid("USR-B"),
            hex::encode(self.key.public_key().to_bytes())
        )
    }

    fn system_with(&self, update: &str, trust: &str) -> System {
        let text = self.description(&self.disk(), update, trust);
        let loaded = keel_config::load_sources(&[("system.toml".into(), text)]);
        let config = loaded
            .config
            .unwrap_or_else(|| panic!("{:?}", loaded.findings));
        System::from_config(&config).unwrap()
    }

    fn system(&self) -> System {
        self.system_with("", "")
    }

    fn descriptor(&self, image: &[u8]) -> RootDescriptor {
        common::descriptor(image, SALT)
    }

    /// A signed payload to `target` at `version`, a delta from v1 when `delta`.
    fn payload(&self, delta: bool, target: &[u8], version: &str, compatible: &str) -> Vec<u8> {
        let opts = GenerateOptions::new(compatible, version)
            .level(3)
            .verity(self.descriptor(target));
        let source = delta.then_some(&self.v1[..]);
        generate(source, target, &self.key, &opts).unwrap()
    }
}

fn agent<'d, D: ReadAt>(f: &Fixture, system: System, disk: &'d D) -> Agent<'d, D>
where
    &'d D: WriteAt,
{
    Agent::new(system, disk).root(f.root()).state_dir(f.state())
}

#[test]
fn install_boot_commit_on_an_image() {
    let f = Fixture::new();
    let disk = open_rw(&f.disk());
    let a = agent(&f, f.system(), &disk);
    assert_eq!(a.booted_slot().unwrap(), Slot::A);
    let payload = f.payload(true, &f.v2, "2.0", "acme-os");
    let done = a.install(&payload[..], None).unwrap();
    assert_eq!(
        (done.slot, done.version.as_str(), done.resumed_at),
        (Slot::B, "2.0", 0)
    );
    let desc = f.descriptor(&f.v2);
    assert_eq!(done.root_hash.as_deref(), Some(desc.root_hash()));

    // Slot B holds version 2 with its tree after it, and verifies against the signed root.
    let (b_off, b_len) = f.slot_range(fs::read(f.disk()).unwrap(), "USR-B");
    let b = Region::new(&disk, b_off, b_len).unwrap();
    let mut data = vec![0u8; IMAGE];
    b.read_exact_at(&mut data, 0).unwrap();
    assert!(data == f.v2, "slot B does not hold version 2");
    let params = desc.params();
    let geometry = keel_verity::TreeGeometry::new(params, params.data_size(), false).unwrap();
    let data_dev = Region::new(&disk, b_off, IMAGE as u64).unwrap();
    keel_verity::verify(
        params,
        &geometry,
        &data_dev,
        &b,
        desc.root_hash(),
        &Default::default(),
    )
    .unwrap();

    // Armed with the description's two tries; the record says how the kernel maps it.
    let status = a.status().unwrap();
    let sb = &status.slots[1];
    assert!(
        sb.next_boot && !sb.booted && !sb.successful && sb.tries == 2,
        "{status:?}"
    );
    assert_eq!(sb.version.as_deref(), Some("2.0"));
    assert_eq!(
        status.slots[0].version.as_deref(),
        Some("1.0"),
        "from os-release"
    );
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state().join("slot-B.json")).unwrap()).unwrap();
    let arg = record["kernel_argument"].as_str().unwrap();
    assert!(
        arg.contains(&format!("PARTUUID={}", f.partuuid("USR-B")))
            && arg.contains(&hex::encode(desc.root_hash()))
            && arg.contains(" verity 1 "),
        "{arg}"
    );
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["slots"][1]["next_boot"], true);

    // The boot loader boots B; the kernel is told B's root hash (verity.usrhash=).
    assert_eq!(a.boot_control().unwrap().boot().unwrap(), Some(Slot::B));
    f.cmdline(&format!(
        "mount.usr=/dev/mapper/usr verity.usrhash={}",
        hex::encode(desc.root_hash())
    ));
    assert_eq!(a.booted_slot().unwrap(), Slot::B);
    let ok = HealthCheck::Func {
        name: "always".into(),
        check: Box::new(|| Ok(())),
    };
    assert_eq!(a.commit(&[ok]).unwrap(), Commit::Committed(Slot::B));
    assert_eq!(a.commit(&[]).unwrap(), Commit::AlreadyGood(Slot::B));
    let status = a.status().unwrap();
    assert!(
        status.slots[1].successful && status.slots[1].booted,
        "{status:?}"
    );
    assert_eq!(status.last_error, None);

    // The same delta again, now running B: its source (version 1) is not the booted slot.
    let e = a.install(&payload[..], None).unwrap_err();
    assert!(e.needs_full_payload(), "{e}");
    assert!(
        a.status().unwrap().last_error.is_some(),
        "the failure is reported"
    );
}

#[test]
fn a_failed_health_check_marks_the_new_slot_bad_and_the_old_one_boots() {
    let f = Fixture::new();
    let disk = open_rw(&f.disk());
    let a = agent(&f, f.system(), &disk);
    a.install(&f.payload(false, &f.v2, "2.0", "acme-os")[..], None)
        .unwrap();
    assert_eq!(a.boot_control().unwrap().boot().unwrap(), Some(Slot::B));
    f.boot_from("USR-B");
    let slow = HealthCheck::Command {
        name: "slow".into(),
        argv: vec!["sleep".into(), "5".into()],
        timeout: Duration::from_millis(200),
    };
    let t = std::time::Instant::now();
    match a.commit(&[slow]).unwrap() {
        Commit::RebootNeeded {
            slot,
            check,
            reason,
        } => {
            assert_eq!((slot, check.as_str()), (Slot::B, "slow"));
            assert!(reason.contains("limit"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "the slow check was not stopped"
    );
    let mut boot = a.boot_control().unwrap();
    assert_eq!(boot.next_boot().unwrap(), Some(Slot::A), "falls back to A");

    // A failing command is a failed check too.
    let f2 = Fixture::new();
    let disk2 = open_rw(&f2.disk());
    let a2 = agent(&f2, f2.system(), &disk2);
    a2.install(&f2.payload(false, &f2.v2, "2.0", "acme-os")[..], None)
        .unwrap();
    a2.boot_control().unwrap().boot().unwrap();
    f2.boot_from("USR-B");
    let fails = HealthCheck::Command {
        name: "false".into(),
        argv: vec!["false".into()],
        timeout: Duration::from_secs(10),
    };
    assert!(matches!(
        a2.commit(&[fails]).unwrap(),
        Commit::RebootNeeded { .. }
    ));
    assert_eq!(
        a2.boot_control().unwrap().next_boot().unwrap(),
        Some(Slot::A)
    );
    drop(boot.boot());
}

/// Refused installs leave the disk exactly as it was.
#[test]
fn refusals_come_before_any_write() {
    let f = Fixture::new();
    let before = fs::read(f.disk()).unwrap();
    let disk = open_rw(&f.disk());
    let full = |version: &str, compatible: &str| f.payload(false, &f.v2, version, compatible);
    let cases: Vec<(System, Vec<u8>, &str)> = vec![
        (f.system(), full("2.0", "other-os"), "\"other-os\""),
        (
            f.system_with("", "minimum-version = \"3.0\"\n"),
            full("2.5", "acme-os"),
            "minimum version 3.0",
        ),
        (f.system(), full("0.9", "acme-os"), "downgrade"),
        (
            f.system(),
            {
                let opts = GenerateOptions::new("acme-os", "2.0").level(3);
                generate(None, &f.v2, &f.key, &opts).unwrap()
            },
            "no signed root",
        ),
        (
            f.system(),
            {
                let stranger = SigningKey::generate().unwrap();
                let opts = GenerateOptions::new("acme-os", "2.0")
                    .level(3)
                    .verity(f.descriptor(&f.v2));
                generate(None, &f.v2, &stranger, &opts).unwrap()
            },
            "not trusted",
        ),
        (
            // An image filling the slot: its tree does not fit after it.
            f.system(),
            {
                let big = seeded_bytes(9, SLOT as usize);
                let opts = GenerateOptions::new("acme-os", "2.0")
                    .level(3)
                    .verity(f.descriptor(&big));
                generate(None, &big, &f.key, &opts).unwrap()
            },
            "tree and parity there need",
        ),
    ];
    for (system, payload, says) in cases {
        let e = agent(&f, system, &disk)
            .install(&payload[..], None)
            .unwrap_err();
        assert!(e.to_string().contains(says), "{says:?} not in {e}");
        assert!(
            fs::read(f.disk()).unwrap() == before,
            "{says}: the disk was written"
        );
    }
    // A key past its not-after date.
    let text = f
        .description(&f.disk(), "", "")
        .replace("ed25519 = ", "not-after = \"2001-01-01\"\ned25519 = ");
    let config = keel_config::load_sources(&[("s.toml".into(), text)])
        .config
        .unwrap();
    let e = agent(&f, System::from_config(&config).unwrap(), &disk)
        .install(&full("2.0", "acme-os")[..], None)
        .unwrap_err();
    assert!(e.to_string().contains("trusted until"), "{e}");
    // A booted slot that cannot be told, with the booted slot protected.
    f.cmdline("quiet");
    let e = agent(&f, f.system(), &disk)
        .install(&full("2.0", "acme-os")[..], None)
        .unwrap_err();
    assert!(
        matches!(e, Error::Refused(_)) && e.to_string().contains("protect-booted-slot"),
        "{e}"
    );
    assert!(
        fs::read(f.disk()).unwrap() == before,
        "the disk was written"
    );
}

#[test]
fn description_settings_take_effect() {
    let f = Fixture::new();
    let s = f.system_with(
        "max-resumes = 3\nallow-downgrade = true\nprotect-booted-slot = false\n",
        "minimum-version = \"0.5\"\n",
    );
    assert_eq!((s.tries, s.max_resumes, s.allow_downgrade), (2, 3, true));
    assert!(!s.protect_booted_slot);
    assert_eq!(
        s.minimum_version.as_ref().map(|v| v.to_string()).as_deref(),
        Some("0.5")
    );
    assert_eq!(s.compatible, "acme-os");
    let v = s.verity.clone().unwrap();
    assert_eq!((v.salt, v.data_block_size), (Some(vec![0x5a, 0x17]), 4096));
    let disk = open_rw(&f.disk());
    // allow-downgrade: 0.9 over 1.0 installs. protect-booted-slot off: with the booted
    // slot unknown, the slot the boot loader would not choose (B) is written.
    f.cmdline("quiet");
    let done = agent(&f, s, &disk)
        .install(&f.payload(false, &f.v2, "0.9", "acme-os")[..], None)
        .unwrap();
    assert_eq!((done.slot, done.version.as_str()), (Slot::B, "0.9"));
    // The description's tries (1 here) arm the slot.
    let s1 = f.system_with("", "").clone();
    let text = f
        .description(&f.disk(), "", "")
        .replace("tries = 2", "tries = 1");
    let c = keel_config::load_sources(&[("s.toml".into(), text)])
        .config
        .unwrap();
    let one = System::from_config(&c).unwrap();
    assert_eq!((s1.tries, one.tries), (2, 1));
    f.boot_from("USR-A");
    agent(&f, one, &disk)
        .install(&f.payload(false, &f.v2, "2.0", "acme-os")[..], None)
        .unwrap();
    let st = agent(&f, f.system(), &disk).status().unwrap();
    assert_eq!(st.slots[1].tries, 1, "{st:?}");
}

/// Each form the kernel is told its root in, on a fake /proc and /sys.
#[test]
fn the_booted_slot_from_every_kernel_argument_form() {
    let f = Fixture::new();
    let disk = fs::File::open(f.disk()).unwrap();
    let a = agent(&f, f.system(), &disk);
    let [pa, pb] = a.partitions().unwrap();
    let sys = |rel: &str, text: &str| {
        let p = f.root().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    sys(
        "sys/class/block/vda2/partition",
        &format!("{}\n", pa.number),
    );
    sys(
        "sys/class/block/vda3/partition",
        &format!("{}\n", pb.number),
    );
    sys("sys/dev/block/254:3/partition", &format!("{}\n", pb.number));
    sys("sys/block/dm-0/dm/name", "usr\n");
    sys("sys/block/dm-0/slaves/vda3", "");
    let desc = f.descriptor(&f.v2);
    fs::create_dir_all(f.state()).unwrap();
    fs::write(
        f.state().join("slot-B.json"),
        format!(
            "{{\"version\":\"2.0\",\"root_hash\":\"{}\"}}",
            hex::encode(desc.root_hash())
        ),
    )
    .unwrap();
    let table = format!(
        "0 {} verity 1 PARTUUID={} PARTUUID={} 4096 4096 {} {} sha256 {} {SALT}",
        IMAGE / 512,
        pb.guid,
        pb.guid,
        IMAGE / 4096,
        IMAGE / 4096,
        hex::encode(desc.root_hash())
    );
    for (cmdline, want) in [
        (format!("root=PARTUUID={}", pa.guid), Slot::A),
        (format!("usr=PARTUUID={} ro", pb.guid), Slot::B),
        ("root=PARTLABEL=USR-B".to_string(), Slot::B),
        ("root=/dev/disk/by-partlabel/USR-A".to_string(), Slot::A),
        ("root=/dev/vda2 rw".to_string(), Slot::A),
        ("mount.usr=/dev/mapper/usr".to_string(), Slot::B),
        ("usr=/dev/dm-0".to_string(), Slot::B),
        ("root=254:3".to_string(), Slot::B),
        (
            format!("roothash={}", hex::encode(desc.root_hash())),
            Slot::B,
        ),
        (
            format!("dm-mod.create=\"usr,,,ro,{table}\" mount.usr=/dev/dm-0"),
            Slot::B,
        ),
    ] {
        f.cmdline(&cmdline);
        assert_eq!(a.booted_slot().unwrap(), want, "{cmdline}");
    }
    for (cmdline, says) in [
        ("quiet splash", "names no root"),
        ("root=PARTLABEL=ESP", "neither slot"),
        ("root=PARTLABEL=USR-A usr=PARTLABEL=USR-B", "both slots"),
    ] {
        f.cmdline(cmdline);
        let e = a.booted_slot().unwrap_err();
        assert!(e.to_string().contains(says), "{cmdline}: {e}");
    }
}

/// A power cut at every write of an install, then the same install again on what the cut
/// left: it always ends with the same armed slot as an uninterrupted install.
#[test]
fn an_install_cut_at_every_write_converges_when_run_again() {
    let f = Fixture::new();
    let initial = fs::read(f.disk()).unwrap();
    let payload = f.payload(true, &f.v2, "2.0", "acme-os");
    let run = |disk: &Shared<PowerCut<Vec<u8>>>, state: &Path| {
        Agent::new(f.system(), disk)
            .root(f.root())
            .state_dir(state)
            .install(&payload[..], None)
    };
    let writes = common::cut_at_every_write(&f, || f.system(), &initial, run, 2, || {}, |_, _| {});
    assert!(writes >= 6, "{writes} writes");
}

/// The whole cycle on real block devices with 512 and 4096-byte sectors.
#[test]
fn install_and_commit_on_loop_devices() {
    for sector in [512u32, 4096] {
        let f = Fixture::new();
        f.lay_out(u64::from(sector));
        let Some(lo) = keel_testsupport::loopdev::attach(&f.disk(), sector) else {
            return;
        };
        let dev = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&lo.dev)
            .unwrap();
        let text = f.description(Path::new(&lo.dev), "", "");
        let config = keel_config::load_sources(&[("s.toml".into(), text)])
            .config
            .unwrap();
        let a = Agent::new(System::from_config(&config).unwrap(), &dev)
            .root(f.root())
            .state_dir(f.state());
        let done = a
            .install(&f.payload(true, &f.v2, "2.0", "acme-os")[..], None)
            .unwrap();
        assert_eq!(done.slot, Slot::B, "{sector}-byte sectors");
        assert_eq!(a.boot_control().unwrap().boot().unwrap(), Some(Slot::B));
        f.boot_from("USR-B");
        assert_eq!(a.commit(&[]).unwrap(), Commit::Committed(Slot::B));
        // Slot B, read back through the block device at the partition's place (this
        // VM's kernel does not scan partitions on loop devices, so no /dev/loopNpM).
        let number = a.partitions().unwrap()[1].number;
        drop(a);
        let g = GptDisk::open(&dev, None).unwrap();
        assert_eq!(g.sector_size(), u64::from(sector));
        let p = g.partition(number).unwrap();
        let mut got = vec![0u8; IMAGE];
        dev.read_exact_at(&mut got, p.first_lba * u64::from(sector))
            .unwrap();
        let name = format!("{} partition {number}", lo.dev);
        assert!(got == f.v2, "{sector}: {name} does not hold version 2");
    }
}

fn system_from(text: String) -> System {
    let loaded = keel_config::load_sources(&[("system.toml".into(), text)]);
    let config = loaded
        .config
        .unwrap_or_else(|| panic!("{:?}", loaded.findings));
    System::from_config(&config).unwrap()
}

/// With a GRUB environment as the boot state: the armed slot's kernel argument lands in
/// `KEEL_B_ARGS`, which grub-editenv reads back, next to RAUC's variables.
#[test]
fn grubenv_systems_get_the_kernel_argument_in_the_environment() {
    let Some(ge) = keel_testsupport::tool("grub-editenv", "grub-common") else {
        return;
    };
    let f = Fixture::new();
    let env = f.root().join("boot/grub/grubenv");
    fs::create_dir_all(env.parent().unwrap()).unwrap();
    let store = keel_bootflags::store::FileStore::init(
        keel_bootflags::store::Backend::GrubEnv,
        &env,
        2,
        Slot::A,
    );
    drop(store.unwrap());
    // RAUC's GRUB script tries a slot once.
    let text = f.description_for(
        "backend = \"grubenv\"\ngrubenv = \"/boot/grub/grubenv\"",
        "",
        "",
    );
    let system = system_from(text.replace("tries = 2", "tries = 1"));
    let disk = open_rw(&f.disk());
    install_boot_and_commit_b(&f, system, &disk, "ORDER=B A", &|| {
        keel_testsupport::run_ok(&ge, &[env.to_str().unwrap(), "list"])
    });
    let listed = keel_testsupport::run_ok(&ge, &[env.to_str().unwrap(), "list"]);
    assert!(
        listed.contains("B_OK=1") && listed.contains("KEEL_B_ARGS="),
        "{listed}"
    );
}

/// With systemd-boot: the slot's entry gets the argument on its `options` line (the old
/// one replaced, the rest kept), and boot counting runs through the entry names.
#[test]
fn systemd_boot_entries_get_the_kernel_argument_on_their_options_line() {
    let f = Fixture::new();
    let entries = f.root().join("efi/loader/entries");
    fs::create_dir_all(&entries).unwrap();
    for id in ["usr.a", "usr.b"] {
        fs::write(
            entries.join(format!("{id}.conf")),
            format!("title Keel {id}\nlinux /vmlinuz\noptions quiet roothash=00ff rw\n"),
        )
        .unwrap();
    }
    let system = system_from(f.description_for(
        "backend = \"systemd-boot\"\nentries-dir = \"/efi/loader/entries\"",
        "",
        "",
    ));
    let disk = open_rw(&f.disk());
    let a = agent(&f, system, &disk);
    a.install(&f.payload(true, &f.v2, "2.0", "acme-os")[..], None)
        .unwrap();
    let b: Vec<_> = fs::read_dir(&entries)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("usr.b"))
        .collect();
    assert_eq!(
        b,
        vec!["usr.b+2-0.conf".to_string()],
        "armed with two tries"
    );
    let text = fs::read_to_string(entries.join(&b[0])).unwrap();
    let root = hex::encode(f.descriptor(&f.v2).root_hash());
    let options = text.lines().find(|l| l.starts_with("options ")).unwrap();
    assert!(
        options.starts_with("options quiet rw dm-mod.create=\"keel-b,"),
        "{text}"
    );
    assert!(
        options.contains(&root) && !options.contains("roothash=00ff"),
        "{text}"
    );
    assert!(
        text.starts_with("title Keel usr.b\nlinux /vmlinuz\n"),
        "{text}"
    );
    let a_text = fs::read_to_string(entries.join("usr.a.conf")).unwrap();
    assert!(
        a_text.contains("roothash=00ff"),
        "slot A's entry was changed: {a_text}"
    );
    assert_eq!(a.boot_control().unwrap().boot().unwrap(), Some(Slot::B));
    f.boot_from("USR-B");
    assert_eq!(a.commit(&[]).unwrap(), Commit::Committed(Slot::B));
    assert!(
        entries.join("usr.b.conf").exists(),
        "a good entry has no counter"
    );
}

/// A cancelled install stops with a retryable error and leaves nothing armed; the same
/// install again completes.
#[test]
fn a_cancelled_install_is_retryable_and_completes_when_run_again() {
    let f = Fixture::new();
    let disk = open_rw(&f.disk());
    let a = agent(&f, f.system(), &disk).checkpoint_bytes(64 << 10);
    let payload = f.payload(true, &f.v2, "2.0", "acme-os");
    let stop = keel_io::Cancel::new();
    stop.cancel();
    let e = a.install(&payload[..], Some(&stop)).unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let st = a.status().unwrap();
    assert!(!st.slots[1].next_boot && st.last_error.is_some(), "{st:?}");
    let done = a.install(&payload[..], None).unwrap();
    assert_eq!(done.slot, Slot::B);
    assert!(a.status().unwrap().slots[1].next_boot);
}

/// `fec-roots`: parity is written after the tree and the kernel argument tells the
/// kernel to correct from it; a payload whose signed root has another salt than the
/// description's is refused.
#[test]
fn fec_roots_and_salt_take_effect() {
    let f = Fixture::new();
    let text = f
        .description(&f.disk(), "", "")
        .replace("salt = \"5a17\"", "salt = \"5a17\"\nfec-roots = 2");
    let system = system_from(text);
    assert_eq!(system.verity.as_ref().unwrap().fec_roots, Some(2));
    let disk = open_rw(&f.disk());
    let a = agent(&f, system, &disk);
    a.install(&f.payload(true, &f.v2, "2.0", "acme-os")[..], None)
        .unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state().join("slot-B.json")).unwrap()).unwrap();
    let arg = record["kernel_argument"].as_str().unwrap();
    assert!(
        arg.contains("use_fec_from_device") && arg.contains("fec_roots 2"),
        "{arg}"
    );
    // The parity after the tree is what veritysetup's parity for this data and tree is:
    // it repairs a damaged data block of slot B.
    let params = f.descriptor(&f.v2).params().clone();
    let geometry = keel_verity::TreeGeometry::new(&params, params.data_size(), false).unwrap();
    let end = geometry.tree_offset() + geometry.tree_size();
    let g = keel_verity::FecGeometry::on_hash_device(&params, &geometry, 2, end).unwrap();
    let (b_off, b_len) = f.slot_range(fs::read(f.disk()).unwrap(), "USR-B");
    let mut slot = vec![0u8; b_len as usize];
    disk.read_exact_at(&mut slot, b_off).unwrap();
    slot[4096 * 7 + 3] ^= 0xff;
    let mut data = slot[..IMAGE].to_vec();
    let (mut hash, mut fec) = (slot.clone(), slot.clone());
    let desc = f.descriptor(&f.v2);
    let target = keel_verity::RepairTarget {
        params: &params,
        tree: &geometry,
        root: desc.root_hash(),
    };
    let r = keel_verity::fec_repair(
        &g,
        &target,
        &mut data,
        &mut hash,
        &mut fec,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(r.repaired_data_blocks, vec![7]);
    assert!(data == f.v2);

    // Another salt than the description's: refused before writing.
    let other = VerityParams::builder()
        .salt(vec![1, 2, 3])
        .data_blocks(IMAGE as u64 / 4096)
        .build()
        .unwrap();
    let root = HashTree::build(&other, &f.v2[..])
        .unwrap()
        .root_hash()
        .to_vec();
    let opts = GenerateOptions::new("acme-os", "3.0")
        .level(3)
        .verity(RootDescriptor::new(other, &root).unwrap());
    let p = generate(None, &f.v2, &f.key, &opts).unwrap();
    let e = agent(&f, f.system(), &disk)
        .install(&p[..], None)
        .unwrap_err();
    assert!(e.to_string().contains("verity parameters"), "{e}");
}

/// A disk file that records every byte range read from it.
struct Reads {
    file: fs::File,
    ranges: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl Reads {
    /// Bytes read within `from..to`.
    fn within(&self, from: u64, to: u64) -> u64 {
        let ranges = self.ranges.lock().unwrap();
        ranges
            .iter()
            .map(|&(o, n)| (o + n).min(to).saturating_sub(o.max(from)))
            .sum()
    }
}

impl ReadAt for Reads {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.ranges.lock().unwrap().push((offset, buf.len() as u64));
        self.file.read_exact_at(buf, offset)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.file.size()
    }
    fn file_id(&self) -> Option<keel_io::FileId> {
        self.file.file_id()
    }
}

impl WriteAt for &Reads {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        (&self.file).write_all_at(buf, offset)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        (&self.file).sync()
    }
}

/// The install writes slot B's data, tree and parity in one pass: nothing of the data is
/// read back (the tree and parity come from the blocks as they were written), the tree is
/// read back once, and the result verifies as veritysetup's layout would (tree against the
/// signed root, parity clean).
#[test]
fn an_install_reads_nothing_of_the_new_data_back() {
    let f = Fixture::new();
    let text = f
        .description(&f.disk(), "", "")
        .replace("salt = \"5a17\"", "salt = \"5a17\"\nfec-roots = 2");
    let disk = Reads {
        file: open_rw(&f.disk()),
        ranges: Default::default(),
    };
    let a = agent(&f, system_from(text), &disk);
    // Full (nothing read from slot A either) and, after it, a delta onto the same slot.
    a.install(&f.payload(false, &f.v2, "2.0", "acme-os")[..], None)
        .unwrap();
    let (b_off, b_len) = f.slot_range(fs::read(f.disk()).unwrap(), "USR-B");
    let params = f.descriptor(&f.v2).params().clone();
    let geometry = keel_verity::TreeGeometry::new(&params, params.data_size(), false).unwrap();
    let image_end = b_off + IMAGE as u64;
    assert_eq!(disk.within(b_off, image_end), 0, "slot B's data read back");
    assert_eq!(
        disk.within(image_end, b_off + b_len),
        geometry.tree_size(),
        "the tree read back once, the parity not at all"
    );
    let mut slot = vec![0u8; b_len as usize];
    disk.file.read_exact_at(&mut slot, b_off).unwrap();
    assert!(slot[..IMAGE] == f.v2[..]);
    let desc = f.descriptor(&f.v2);
    keel_verity::verify(
        &params,
        &geometry,
        &slot[..IMAGE],
        &slot[..],
        desc.root_hash(),
        &Default::default(),
    )
    .unwrap();
    let end = geometry.tree_offset() + geometry.tree_size();
    let g = keel_verity::FecGeometry::on_hash_device(&params, &geometry, 2, end).unwrap();
    let report = keel_verity::fec_verify(
        &g,
        &slot[..IMAGE],
        &slot[..],
        &slot[..],
        &Default::default(),
    )
    .unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// `hash-tree = "separate"`: each slot's tree (and parity) on its own hash partition.
/// An install writes the target's hash partition only (the running slot's tree is not
/// touched, nor the target slot past its image); the kernel argument names the hash
/// partition; veritysetup verifies the slot's data against the tree there; a hash
/// partition the disk does not have is refused before anything is written.
#[test]
fn separate_hash_partitions_take_effect() {
    use keel_partition::ExtraPartition;
    let f = Fixture::new();
    // The same disk with two 1 MiB hash partitions after the slots.
    let disk_file = fs::File::create(f.disk()).unwrap();
    disk_file.set_len(2 * SLOT + (12 << 20)).unwrap();
    let mut layout = Layout::flatcar(SLOT);
    layout.esp_size = 1 << 20;
    layout.extra = ["USR-A-VERITY", "USR-B-VERITY"]
        .map(|label| ExtraPartition {
            label: label.into(),
            type_guid: keel_partition::types::linux_data(),
            size: Some(1 << 20),
            guid: None,
        })
        .to_vec();
    create_layout(&mut &disk_file, &layout).unwrap();
    let (a_off, a_len) = f.slot_range(fs::read(f.disk()).unwrap(), "USR-A");
    Region::new(&disk_file, a_off, a_len)
        .unwrap()
        .write_all_at(&f.v1, 0)
        .unwrap();
    // Slot A's tree, as the image builder wrote it: it must stay as it is.
    let (ah_off, ah_len) = f.slot_range(fs::read(f.disk()).unwrap(), "USR-A-VERITY");
    let a_tree = seeded_bytes(4, ah_len as usize);
    (&disk_file).write_all_at(&a_tree, ah_off).unwrap();
    drop(disk_file);
    f.boot_from("USR-A");

    let text = |b_hash: &str| {
        f.description(&f.disk(), "", "")
            .replace(
                "salt = \"5a17\"",
                "salt = \"5a17\"\nhash-tree = \"separate\"\nfec-roots = 2",
            )
            .replace(
                "device = \"PARTLABEL=USR-A\"",
                "device = \"PARTLABEL=USR-A\"\nhash-device = \"PARTLABEL=USR-A-VERITY\"",
            )
            .replace(
                "name = \"usr.b\"",
                &format!("name = \"usr.b\"\nhash-device = \"{b_hash}\""),
            )
    };
    let disk = open_rw(&f.disk());
    // A hash partition the disk does not have: refused, nothing written.
    let before = fs::read(f.disk()).unwrap();
    let e = agent(&f, system_from(text("PARTLABEL=NOPE")), &disk)
        .install(&f.payload(true, &f.v2, "2.0", "acme-os")[..], None)
        .unwrap_err();
    assert!(e.to_string().contains("NOPE"), "{e}");
    assert!(
        fs::read(f.disk()).unwrap() == before,
        "the disk was written"
    );

    let b_guid = f.partuuid("USR-B-VERITY");
    let system = system_from(text(&format!("PARTUUID={b_guid}")));
    assert!(!system.verity.as_ref().unwrap().after_data);
    agent(&f, system, &disk)
        .install(&f.payload(true, &f.v2, "2.0", "acme-os")[..], None)
        .unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state().join("slot-B.json")).unwrap()).unwrap();
    let arg = record["kernel_argument"].as_str().unwrap();
    let data_dev = format!("PARTUUID={}", f.partuuid("USR-B"));
    let hash_dev = format!("PARTUUID={b_guid}");
    assert!(
        arg.contains(&format!(" {data_dev} {hash_dev} "))
            && arg.contains(&format!("use_fec_from_device {hash_dev}")),
        "{arg}"
    );

    let image = fs::read(f.disk()).unwrap();
    assert!(
        image[ah_off as usize..(ah_off + ah_len) as usize] == a_tree[..],
        "slot A's tree was written"
    );
    let (b_off, b_len) = f.slot_range(image.clone(), "USR-B");
    let slot_b = &image[b_off as usize..(b_off + b_len) as usize];
    assert!(slot_b[..IMAGE] == f.v2[..]);
    assert!(
        slot_b[IMAGE..].iter().all(|&b| b == 0),
        "the tree went into the slot"
    );
    let (bh_off, bh_len) = f.slot_range(image.clone(), "USR-B-VERITY");
    let hash_b = &image[bh_off as usize..(bh_off + bh_len) as usize];

    // veritysetup reads the data from the slot and the tree from its hash partition.
    let Some(veritysetup) = keel_testsupport::tool("veritysetup", "cryptsetup-bin") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (data_f, hash_f) = (work.path().join("data"), work.path().join("hash"));
    fs::write(&data_f, &slot_b[..IMAGE]).unwrap();
    fs::write(&hash_f, hash_b).unwrap();
    let root = hex::encode(f.descriptor(&f.v2).root_hash());
    let verify = |root: &str| {
        std::process::Command::new(&veritysetup)
            .args(["verify", "--no-superblock", "--salt", SALT, "--data-blocks"])
            .arg((IMAGE / 4096).to_string())
            .args([&data_f, &hash_f])
            .arg(root)
            .output()
            .unwrap()
    };
    let o = verify(&root);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut wrong = f.descriptor(&f.v2).root_hash().to_vec();
    wrong[0] ^= 1;
    assert!(!verify(&hex::encode(wrong)).status.success());
}

/// Without `boot.disk`, the disk is the one holding the partition the kernel booted:
/// found through /dev/disk/by-partuuid and /sys, then used like any other.
#[test]
fn the_boot_disk_is_found_from_the_kernel_command_line() {
    use std::os::unix::fs::symlink;
    let f = Fixture::new();
    let r = f.root();
    let mk = |p: &str| fs::create_dir_all(r.join(p)).unwrap();
    mk("dev/disk/by-partuuid");
    mk("dev/disk/by-partlabel");
    mk("sys/devices/virtual/block/vda/vda2");
    mk("sys/devices/virtual/block/vda/vda3");
    mk("sys/class/block");
    mk("sys/block/dm-0/dm");
    mk("sys/block/dm-0/slaves");
    fs::write(r.join("sys/devices/virtual/block/vda/dev"), "254:0\n").unwrap();
    for (part, n, label) in [("vda2", 2, "USR-A"), ("vda3", 3, "USR-B")] {
        let dir = format!("sys/devices/virtual/block/vda/{part}");
        fs::write(r.join(&dir).join("partition"), format!("{n}\n")).unwrap();
        fs::write(r.join(&dir).join("dev"), format!("254:{n}\n")).unwrap();
        symlink(
            format!("../../devices/virtual/block/vda/{part}"),
            r.join("sys/class/block").join(part),
        )
        .unwrap();
        symlink(
            format!("../../{part}"),
            r.join("dev/disk/by-partuuid").join(f.partuuid(label)),
        )
        .unwrap();
        symlink(
            format!("../../{part}"),
            r.join("dev/disk/by-partlabel").join(label),
        )
        .unwrap();
    }
    fs::write(r.join("sys/block/dm-0/dm/name"), "usr\n").unwrap();
    fs::write(r.join("sys/block/dm-0/slaves/vda3"), "").unwrap();
    // /dev/vda of this fake system is the test's disk image.
    symlink(f.disk(), r.join("dev/vda")).unwrap();
    for cmdline in [
        format!("mount.usr=PARTUUID={}", f.partuuid("USR-A").to_uppercase()),
        "root=PARTLABEL=USR-B".to_string(),
        "root=/dev/vda2".to_string(),
        "mount.usr=/dev/mapper/usr".to_string(),
    ] {
        f.cmdline(&cmdline);
        assert_eq!(
            keel_update::boot_disk(&r).unwrap(),
            r.join("dev/vda"),
            "{cmdline}"
        );
    }
    // The description without boot.disk; the agent on the disk found.
    let system = system_from(f.description_for("backend = \"gpt-flatcar\"", "", ""));
    assert_eq!(system.disk, None);
    let disk = open_rw(&keel_update::boot_disk(&r).unwrap());
    assert_eq!(agent(&f, system, &disk).booted_slot().unwrap(), Slot::B);
    f.cmdline("quiet");
    let e = keel_update::boot_disk(&r).unwrap_err();
    assert!(e.to_string().contains("set boot.disk"), "{e}");
    // A command line that is /dev/zero or a FIFO: an error naming it, never an endless
    // read or a wait.
    let cmdline = r.join("proc/cmdline");
    std::fs::remove_file(&cmdline).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &cmdline).unwrap();
    let e = keel_update::boot_disk(&r).unwrap_err();
    assert!(e.to_string().contains("proc/cmdline"), "{e}");
    assert!(keel_update::clues(&r).is_err());
    std::fs::remove_file(&cmdline).unwrap();
    nix::unistd::mkfifo(&cmdline, nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert!(keel_update::boot_disk(&r).is_err());
}

/// Publish in `www` a full payload and a delta of `f.v2` (the delta's bytes given), an
/// index listing them under `serial` (the delta claiming to start from `f.v1`), and a trust
/// root of `f`'s key. Returns the root. `wrong_digest`: the index pins another manifest
/// digest for every payload (a server's file the publisher did not list).
fn publish_index(
    f: &Fixture,
    www: &Path,
    delta: &[u8],
    serial: u64,
    wrong_digest: bool,
) -> keel_release::TrustedRoot {
    publish_index_at(
        f,
        www,
        delta,
        serial,
        wrong_digest,
        keel_trust::unix_now() - 60,
    )
}

/// [`publish_index`] with the index's signed timestamp.
fn publish_index_at(
    f: &Fixture,
    www: &Path,
    delta: &[u8],
    serial: u64,
    wrong_digest: bool,
    timestamp: u64,
) -> keel_release::TrustedRoot {
    use keel_release::{Artifact, Delta, Index, Release, Root, TrustedRoot};
    fs::write(
        www.join("full.payload"),
        f.payload(false, &f.v2, "2.0", "acme-os"),
    )
    .unwrap();
    fs::write(www.join("delta.payload"), delta).unwrap();
    let art = |name: &str| {
        use sha2::Digest;
        let bytes = fs::read(www.join(name)).unwrap();
        let header: &[u8; 64] = bytes[..64].try_into().unwrap();
        let signed = 64
            + keel_payload::format::Header::parse(header)
                .unwrap()
                .manifest_len;
        let mut pin: [u8; 32] = sha2::Sha256::digest(&bytes[..signed as usize]).into();
        pin[0] ^= u8::from(wrong_digest);
        Artifact {
            url: name.into(),
            size: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            manifest_sha256: Some(hex::encode(pin)),
        }
    };
    let v1_digest = keel_payload::format::image_digest(&f.v1[..], IMAGE as u64).unwrap();
    let index = Index {
        kind: "keel-index".into(),
        serial,
        expires: u64::MAX / 2,
        timestamp: Some(timestamp),
        releases: vec![Release {
            version: "2.0".into(),
            compatible: "acme-os".into(),
            full: art("full.payload"),
            deltas: vec![Delta {
                from_version: "1.0".into(),
                source_digest: hex::encode(v1_digest),
                source_size: IMAGE as u64,
                artifact: art("delta.payload"),
            }],
            store: None,
            rollout_percent: 100,
        }],
    };
    fs::write(www.join("index.json"), index.sign(&[&f.key]).unwrap()).unwrap();
    let env = Root::first(&[f.key.public_key()], 1, u64::MAX / 2)
        .sign(&[&f.key])
        .unwrap();
    TrustedRoot::initial(&env, keel_trust::unix_now()).unwrap()
}

/// A new fixture's delta from v1 to v2, published in `www` with its full payload and an
/// index ([`publish_index`]; `wrong`: pinning other manifests).
fn published_delta(www: &Path, wrong: bool) -> (Fixture, Vec<u8>, keel_release::TrustedRoot) {
    let f = Fixture::new();
    let delta = f.payload(true, &f.v2, "2.0", "acme-os");
    let root = publish_index(&f, www, &delta, 1, wrong);
    (f, delta, root)
}

/// An nginx serving `www`, where the tests publish, and the index's URL on it.
struct Site {
    _dir: tempfile::TempDir,
    www: PathBuf,
    server: keel_testsupport::nginx::Nginx,
    url: String,
}

fn site() -> Option<Site> {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    fs::create_dir_all(&www).unwrap();
    let server = keel_testsupport::nginx::serve(&www, &dir.path().join("nginx"))?;
    let url = format!("{}/index.json", server.base);
    Some(Site {
        _dir: dir,
        www,
        server,
        url,
    })
}

/// The agent checks a signed index served by nginx and installs what it chooses: the
/// delta from the booted image; when a delta does not fit the booted image after all, the
/// full payload; an index it has seen is not taken again (rollback).
#[test]
fn install_from_a_signed_index_over_http() {
    let Some(site) = site() else {
        return;
    };
    let (www, url) = (&site.www, &site.url);
    let fetch = keel_fetch::FetchOptions::default();

    // The files on the server are not the ones the index names: the signed header and
    // manifest are checked against the index's pin before any data is read or anything
    // written, and the slot is not armed.
    let (f, delta, root) = published_delta(www, true);
    let disk = open_rw(&f.disk());
    let a = agent(&f, f.system(), &disk);
    let before = fs::read(f.disk()).unwrap();
    let e = a.install_from_index(url, &root, fetch, None).unwrap_err();
    assert!(matches!(e, Error::PayloadMismatch { .. }), "{e}");
    assert!(
        fs::read(f.disk()).unwrap() == before,
        "the disk was written"
    );
    let st = a.status().unwrap();
    let next: Vec<&str> = st
        .slots
        .iter()
        .filter(|s| s.next_boot)
        .map(|s| s.slot.as_str())
        .collect();
    assert_eq!(next, ["A"], "{st:?}");
    assert!(st.last_error.unwrap().contains("the release index names"));

    // The delta fits: it is what is fetched and installed.
    let root = publish_index(&f, www, &delta, 1, false);
    let done = a
        .install_from_index(url, &root, fetch, None)
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.slot, done.version.as_str(), done.resumed_at),
        (Slot::B, "2.0", 0)
    );
    assert_eq!(
        fs::read_to_string(f.state().join("index-serial"))
            .unwrap()
            .trim(),
        "1"
    );
    // The index's signed timestamp is the device's clock floor from now on.
    let floor: u64 = fs::read_to_string(f.state().join("time-floor"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(floor > keel_update::BUILD_TIME_FLOOR && floor <= keel_trust::unix_now());
    // An index stamped a century ahead (a publisher's wrong clock) raises the floor to
    // the clock at most: the next install still runs.
    fs::write(f.state().join("index-serial"), "0\n").unwrap();
    let century = keel_trust::unix_now() + 100 * 365 * 86_400;
    let root = publish_index_at(&f, www, &delta, 1, false, century);
    a.install_from_index(url, &root, fetch, None).unwrap();
    let floor: u64 = fs::read_to_string(f.state().join("time-floor"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(floor <= keel_trust::unix_now(), "the floor went to {floor}");
    assert!(a.trusted_now().is_ok());
    // An older index than the one accepted: refused as a rollback.
    fs::write(f.state().join("index-serial"), "2\n").unwrap();
    let e = a.install_from_index(url, &root, fetch, None).unwrap_err();
    assert!(
        matches!(e, Error::Index(_)) && e.to_string().contains("rollback"),
        "{e}"
    );
    // An index refused is the last error too, not the previous install's outcome.
    assert!(a.status().unwrap().last_error.unwrap().contains("rollback"));

    // A delta made from another image, listed as if it started from the booted one: the
    // applier says it does not fit, and the full payload is installed instead.
    let g = Fixture::new();
    let mut other = g.v1.clone();
    other[..4096].fill(0x77);
    let opts = GenerateOptions::new("acme-os", "2.0")
        .level(3)
        .verity(g.descriptor(&g.v2));
    let wrong = generate(Some(&other), &g.v2, &g.key, &opts).unwrap();
    let root = publish_index(&g, www, &wrong, 1, false);
    let disk = open_rw(&g.disk());
    let done = agent(&g, g.system(), &disk)
        .install_from_index(url, &root, fetch, None)
        .unwrap()
        .unwrap();
    assert_eq!(done.slot, Slot::B);
    let (b_off, _) = g.slot_range(fs::read(g.disk()).unwrap(), "USR-B");
    let mut got = vec![0u8; IMAGE];
    disk.read_exact_at(&mut got, b_off).unwrap();
    assert!(got == g.v2, "the full payload was not installed");
}

/// What nginx logged for `path` once the requests in flight ended (a request is logged
/// when its connection is done with it).
fn settled(
    server: &keel_testsupport::nginx::Nginx,
    path: &str,
) -> Vec<keel_testsupport::nginx::Logged> {
    let mut last = server.requests_for(path);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = server.requests_for(path);
        if now == last && !now.is_empty() {
            return now;
        }
        last = now;
    }
    last
}

/// The first byte of a logged range request (0 without a Range header).
fn range_start(r: &keel_testsupport::nginx::Logged) -> u64 {
    r.range
        .strip_prefix("bytes=")
        .and_then(|v| v.split('-').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or(0)
}

/// The data path from an HTTP URL to an armed slot reads each payload byte once, counted by
/// nginx: the signed header and manifest are read, checked against the index's pin and
/// judged, and the apply goes on from there (no return to the start, no whole-file digest
/// to finish). A resumed install fetches what it had not applied, and at most a checkpoint
/// interval and the read-ahead again.
#[test]
fn an_install_over_http_fetches_each_payload_byte_once() {
    let Some(site) = site() else {
        return;
    };
    let (www, url) = (&site.www, &site.url);
    let fetch = keel_fetch::FetchOptions::default();

    // The common case: every byte once, in order.
    let (f, delta, root) = published_delta(www, false);
    let disk = open_rw(&f.disk());
    let done = agent(&f, f.system(), &disk)
        .install_from_index(url, &root, fetch, None)
        .unwrap()
        .unwrap();
    assert_eq!((done.slot, done.resumed_at), (Slot::B, 0));
    let got = settled(&site.server, "/delta.payload");
    let mut next = 0;
    for r in &got {
        assert_eq!(
            range_start(r),
            next,
            "a byte fetched twice or skipped: {got:?}"
        );
        next += r.bytes;
    }
    assert_eq!(next, delta.len() as u64, "{got:?}");
    assert!(site.server.requests_for("/full.payload").is_empty());

    // Stopped half way, then resumed: the second run reads the header and manifest, then
    // moves on to the resume point with a range request.
    let g = Fixture::new();
    let full = g.payload(false, &g.v2, "2.0", "acme-os");
    fs::remove_file(www.join("delta.payload")).unwrap();
    let root = publish_index(&g, www, &full, 2, false);
    let disk = open_rw(&g.disk());
    let checkpoint = 256 << 10;
    let a = agent(&g, g.system(), &disk).checkpoint_bytes(checkpoint);
    let before = site.server.requests_for("/delta.payload").len();
    let half = keel_io::testing::StopHalfWay::default();
    let e = a
        .install_from_index(url, &root, fetch, Some(&half))
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let first: u64 = settled(&site.server, "/delta.payload")[before..]
        .iter()
        .map(|r| r.bytes)
        .sum();
    let before = site.server.requests_for("/delta.payload").len();
    let done = a
        .install_from_index(url, &root, fetch, None)
        .unwrap()
        .unwrap();
    assert!(done.resumed_at > 0, "{done:?}");
    let second = settled(&site.server, "/delta.payload")[before..].to_vec();
    let mut keys = keel_trust::Keyring::new();
    keys.add(g.key.public_key().clone()).unwrap();
    let payload = keel_payload::Payload::open(&full[..], &keys).unwrap();
    let ops = &payload.manifest().operations;
    let skipped: u64 = ops[..done.resumed_at].iter().map(|o| o.data_length).sum();
    let data: u64 = ops.iter().map(|o| o.data_length).sum();
    let head = full.len() as u64 - data;
    let ahead = keel_fetch::READ_AHEAD as u64;
    let second_bytes: u64 = second.iter().map(|r| r.bytes).sum();
    eprintln!(
        "payload {} bytes: first run {first}, second {second_bytes} in {} requests, resumed at op {} ({skipped} data bytes skipped)",
        full.len(),
        second.len(),
        done.resumed_at
    );
    // The second run: the head (and what was read ahead of it), then from the resume
    // point on, each byte once.
    assert!(
        second.iter().any(|r| range_start(r) == head + skipped),
        "{second:?}"
    );
    assert!(
        second_bytes <= full.len() as u64 - skipped + ahead,
        "{second_bytes} bytes, {second:?}"
    );
    assert!(
        first + second_bytes <= full.len() as u64 + checkpoint + 2 * ahead,
        "{first} + {second_bytes} bytes for a {} byte payload",
        full.len()
    );
}

/// `install_seekable`: an install resumed after a stop does not read again the data it
/// already applied (a payload over HTTP is not downloaded twice).
#[test]
fn a_resumed_seekable_install_skips_what_it_applied() {
    struct Counting {
        inner: std::io::Cursor<Vec<u8>>,
        read: u64,
    }
    impl std::io::Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }
    impl std::io::Seek for Counting {
        fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
            self.inner.seek(to)
        }
    }
    let f = Fixture::new();
    let disk = open_rw(&f.disk());
    let a = agent(&f, f.system(), &disk).checkpoint_bytes(64 << 10);
    // A full payload: several operations of new data, stopped between two of them.
    let payload = f.payload(false, &f.v2, "2.0", "acme-os");
    let half = keel_io::testing::StopHalfWay::default();
    assert!(a
        .install(&payload[..], Some(&half))
        .unwrap_err()
        .is_retryable());
    let mut counted = Counting {
        inner: std::io::Cursor::new(payload.clone()),
        read: 0,
    };
    let done = a.install_seekable(&mut counted, None).unwrap();
    assert!(done.resumed_at > 0, "{done:?}");
    assert!(
        counted.read < payload.len() as u64,
        "read {} of {} bytes",
        counted.read,
        payload.len()
    );
}

/// One partition under two spellings: slot A's tree on B's data partition (by its label,
/// B's device being given by GUID) and slot B's tree on A's (by GUID, A's device by label),
/// which keel-config cannot tell from the strings. Every reference is resolved to its partition first: refused, nothing written.
#[test]
fn a_partition_named_twice_under_two_spellings_is_refused_before_any_write() {
    let f = Fixture::new();
    let text = f
        .description(&f.disk(), "", "")
        .replace(
            "salt = \"5a17\"",
            "salt = \"5a17\"\nhash-tree = \"separate\"",
        )
        .replace(
            "device = \"PARTLABEL=USR-A\"",
            "device = \"PARTLABEL=USR-A\"\nhash-device = \"PARTLABEL=USR-B\"",
        )
        .replace(
            "name = \"usr.b\"",
            &format!(
                "name = \"usr.b\"\nhash-device = \"PARTUUID={}\"",
                f.partuuid("USR-A")
            ),
        );
    // Valid as text: the description names four different strings.
    let loaded = keel_config::load_sources(&[("s.toml".into(), text)]);
    assert!(
        !loaded
            .findings
            .iter()
            .any(|f| f.message.contains("already")),
        "{:?}",
        loaded.findings
    );
    let system = System::from_config(&loaded.config.unwrap()).unwrap();
    let disk = open_rw(&f.disk());
    let before = fs::read(f.disk()).unwrap();
    let a = agent(&f, system, &disk);
    let e = a
        .install(&f.payload(true, &f.v2, "2.0", "acme-os")[..], None)
        .unwrap_err();
    assert!(matches!(e, Error::SameDevice { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("slot A (usr.a).device") && msg.contains("slot B (usr.b).hash-device"),
        "{msg}"
    );
    assert!(
        fs::read(f.disk()).unwrap() == before,
        "the disk was written"
    );
    // Nor does status call the slots good as if nothing were wrong.
    assert!(matches!(a.status(), Err(Error::SameDevice { .. })));
}

/// A fake /sys with the boot disk `vda` (the test's image, partitions 1-3) and another
/// disk `sdz` with its own partition 3; the kernel booted /dev/vda2 (slot A).
fn two_disks(f: &Fixture) {
    use std::os::unix::fs::symlink;
    let r = f.root();
    for (disk, parts) in [("vda", &[1u32, 2, 3][..]), ("sdz", &[3u32][..])] {
        let dir = r.join("sys/devices/virtual/block").join(disk);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("dev"), "254:0\n").unwrap();
        fs::create_dir_all(r.join("sys/class/block")).unwrap();
        symlink(
            format!("../../devices/virtual/block/{disk}"),
            r.join("sys/class/block").join(disk),
        )
        .unwrap();
        for n in parts {
            let part = format!("{disk}{n}");
            fs::create_dir_all(dir.join(&part)).unwrap();
            fs::write(dir.join(&part).join("partition"), format!("{n}\n")).unwrap();
            fs::write(dir.join(&part).join("dev"), format!("254:{n}\n")).unwrap();
            symlink(
                format!("../../devices/virtual/block/{disk}/{part}"),
                r.join("sys/class/block").join(&part),
            )
            .unwrap();
        }
    }
    f.cmdline("root=/dev/vda2 ro");
}

/// The agent given a handle on another disk than the description's `boot.disk` (a copy
/// of it: the same partitions, the same labels) refuses before anything is written, naming
/// the setting; the right handle installs.
#[test]
fn a_handle_on_another_disk_than_the_descriptions_is_refused() {
    let f = Fixture::new();
    let copy = f.dir.path().join("copy.img");
    fs::copy(f.disk(), &copy).unwrap();
    let before = fs::read(&copy).unwrap();
    let other = open_rw(&copy);
    let payload = f.payload(true, &f.v2, "2.0", "acme-os");
    // Given alone, or named as the disk path it was opened from: it is not `boot.disk`.
    for named in [None, Some(&copy)] {
        let mut a = agent(&f, f.system(), &other);
        if let Some(p) = named {
            a = a.disk_path(p);
        }
        let e = a.install(&payload[..], None).unwrap_err();
        let wrong = matches!(
            e,
            Error::WrongDisk {
                field: "boot.disk",
                ..
            }
        );
        assert!(wrong, "{e}");
        assert!(
            fs::read(&copy).unwrap() == before,
            "the other disk was written"
        );
    }
    let disk = open_rw(&f.disk());
    agent(&f, f.system(), &disk)
        .install(&payload[..], None)
        .unwrap();
}

/// A slot named by the path of another disk's partition 3 is refused by name, not taken
/// as partition 3 of the boot disk; the boot disk's own partition 3 works.
#[test]
fn a_device_path_on_another_disk_is_refused_by_name() {
    let f = Fixture::new();
    two_disks(&f);
    let b = GptDisk::open(fs::read(f.disk()).unwrap(), None)
        .unwrap()
        .partition_by_label("USR-B")
        .unwrap()
        .number;
    assert_eq!(b, 3, "the layout changed: USR-B is partition {b}");
    let text = |dev: &str| {
        f.description_for("backend = \"gpt-flatcar\"", "", "")
            .replace(
                &format!("device = \"PARTUUID={}\"", f.partuuid("USR-B")),
                &format!("device = \"{dev}\""),
            )
    };
    let disk = open_rw(&f.disk());
    let before = fs::read(f.disk()).unwrap();
    let e = agent(&f, system_from(text("/dev/sdz3")), &disk)
        .install(&f.payload(true, &f.v2, "2.0", "acme-os")[..], None)
        .unwrap_err();
    assert!(matches!(e, Error::OtherDisk { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("/dev/sdz3") && msg.contains("partition 3 of sdz") && msg.contains("vda"),
        "{msg}"
    );
    assert!(
        fs::read(f.disk()).unwrap() == before,
        "the disk was written"
    );
    // A path the kernel does not know at all, and a whole disk: refused too.
    for (dev, says) in [
        ("/dev/nope9", "not a block device"),
        ("/dev/sdz", "whole disk"),
    ] {
        let e = agent(&f, system_from(text(dev)), &disk)
            .install(&f.payload(true, &f.v2, "2.0", "acme-os")[..], None)
            .unwrap_err();
        assert!(e.to_string().contains(says), "{dev}: {e}");
    }
    // The boot disk's own partition by path: installed.
    let a = agent(&f, system_from(text("/dev/vda3")), &disk);
    assert_eq!(a.booted_slot().unwrap(), Slot::A);
    let done = a
        .install(&f.payload(true, &f.v2, "2.0", "acme-os")[..], None)
        .unwrap();
    assert_eq!(done.slot, Slot::B);
    // The booted partition is recognised on its own disk only: /dev/sdz3 is not slot B.
    f.cmdline("root=/dev/sdz3 ro");
    assert!(a.booted_slot().is_err());
    // Nor is it when the description's boot.disk is an image file: a partition of a disk
    // the kernel names proves nothing about an image's partition of the same number.
    let on_image = agent(&f, f.system(), &disk);
    assert!(on_image.booted_slot().is_err());

    // A boot-state store on a slot's partition (the misc partition named as slot A's
    // device by path): refused as the same device, nothing written.
    f.cmdline("root=/dev/vda2 ro");
    let before = fs::read(f.disk()).unwrap();
    let misc = text("/dev/vda3").replace(
        "backend = \"gpt-flatcar\"",
        "backend = \"android-misc\"\nmisc-device = \"/dev/vda2\"",
    );
    let e = agent(&f, system_from(misc), &disk)
        .install(&f.payload(true, &f.v2, "2.0", "acme-os")[..], None)
        .unwrap_err();
    assert!(
        matches!(e, Error::SameDevice { ref first, .. } if first == "boot.misc-device"),
        "{e}"
    );
    assert!(fs::read(f.disk()).unwrap() == before);
}

/// Bootnames the boot-state stores cannot hold (keel-update opens them with slots A and
/// B) are refused by name, not armed where the boot loader never looks.
#[test]
fn a_pair_not_named_a_and_b_is_refused() {
    let f = Fixture::new();
    let text = f
        .description_for("backend = \"grubenv\"\ngrubenv = \"/grubenv\"", "", "")
        .replace("name = \"usr.a\"", "name = \"usr.a\"\nbootname = \"A\"")
        .replace("name = \"usr.b\"", "name = \"usr.b\"\nbootname = \"C\"")
        .replace("tries = 2", "tries = 1");
    let loaded = keel_config::load_sources(&[("s.toml".into(), text)]);
    let config = loaded
        .config
        .unwrap_or_else(|| panic!("{:?}", loaded.findings));
    let e = System::from_config(&config).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("slot[1].bootname"), "{e}");
}

/// A clock set back before the time floor (the build date, or the newest release index
/// accepted) is refused before anything is read or written: expiry dates would mean
/// nothing on it.
#[test]
fn a_clock_behind_the_time_floor_is_refused() {
    let f = Fixture::new();
    let disk = open_rw(&f.disk());
    let a = agent(&f, f.system(), &disk);
    // A floor a day ahead of the clock: as if the last index accepted were from then.
    fs::create_dir_all(f.state()).unwrap();
    let ahead = keel_trust::unix_now() + 86_400;
    fs::write(f.state().join("time-floor"), format!("{ahead}\n")).unwrap();
    let before = fs::read(f.disk()).unwrap();
    let e = a
        .install(&f.payload(true, &f.v2, "2.0", "acme-os")[..], None)
        .unwrap_err();
    assert!(
        matches!(e, Error::ClockBehind { floor, .. } if floor == ahead),
        "{e}"
    );
    assert!(fs::read(f.disk()).unwrap() == before);
    // The build date is a floor of its own: no clock before it is trusted.
    assert!(keel_update::BUILD_TIME_FLOOR <= keel_trust::unix_now());
    fs::remove_file(f.state().join("time-floor")).unwrap();
    assert!(a.trusted_now().unwrap() >= keel_update::BUILD_TIME_FLOOR);
}

/// U-Boot through fw_env.config (the `fw-env` backend: libubootenv's and u-boot-tools'
/// configuration names the two copies): the install arms B and puts the kernel argument
/// in the environment, and the real fw_printenv, given the same copies, reads both.
#[test]
fn fw_env_systems_are_reached_from_the_description() {
    let Some(printenv) = keel_testsupport::tool("fw_printenv", "libubootenv-tool") else {
        return;
    };
    let f = Fixture::new();
    let env = f.root().join("env.bin");
    fs::create_dir_all(f.root().join("etc")).unwrap();
    // The agent reads the configuration under its root; fw_printenv, the host's paths.
    fs::write(
        f.root().join("etc/fw_env.config"),
        "# two copies of 16 KiB\n/env.bin 0x0 0x4000\n/env.bin 0x4000 0x4000\n",
    )
    .unwrap();
    let host_config = f.p("fw_env.config");
    fs::write(
        &host_config,
        format!("{0} 0x0 0x4000\n{0} 0x4000 0x4000\n", env.display()),
    )
    .unwrap();
    // An fw_env.config names copies on a device (or file) that exists already.
    fs::File::create(&env).unwrap().set_len(0x8000).unwrap();
    let layout = keel_bootflags::store::FwEnvConfig {
        copies: vec![(env.clone(), 0), (env.clone(), 0x4000)],
        size: 0x4000,
    };
    keel_bootflags::store::FileStore::init(
        keel_bootflags::store::Backend::FwEnv(layout),
        &env,
        2,
        Slot::A,
    )
    .unwrap();
    let text = f.description_for(
        "backend = \"fw-env\"\nfw-env-config = \"/etc/fw_env.config\"",
        "",
        "",
    );
    let system = system_from(text);
    assert!(matches!(system.backend, keel_update::BackendSpec::FwEnv(_)));
    let disk = open_rw(&f.disk());
    install_boot_and_commit_b(&f, system, &disk, "BOOT_ORDER=B A", &|| {
        keel_testsupport::run_ok(&printenv, &["-c", host_config.to_str().unwrap()])
    });
}

/// Install version 2 into B with `system` (a RAUC-style environment), check with the
/// real tool's listing (`list`) that B is first (`order`) and carries the kernel argument
/// that maps v2's root, then boot B and commit it.
fn install_boot_and_commit_b(
    f: &Fixture,
    system: System,
    disk: &fs::File,
    order: &str,
    list: &dyn Fn() -> String,
) {
    let a = agent(f, system, disk);
    a.install(&f.payload(true, &f.v2, "2.0", "acme-os")[..], None)
        .unwrap();
    let listed = list();
    let root = hex::encode(f.descriptor(&f.v2).root_hash());
    assert!(listed.lines().any(|l| l == order), "{listed}");
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("KEEL_B_ARGS=dm-mod.create=") && l.contains(&root)),
        "{listed}"
    );
    assert_eq!(a.boot_control().unwrap().boot().unwrap(), Some(Slot::B));
    f.boot_from("USR-B");
    assert_eq!(a.commit(&[]).unwrap(), Commit::Committed(Slot::B));
}

/// An fw_env.config whose copies are the boot disk itself (a hard link to the image under
/// the root), at an offset inside slot A or B, is refused before anything is written; so
/// are copies that share bytes, a path climbing out of the root, and a block device /sys
/// does not describe.
#[test]
fn a_boot_state_store_on_a_slot_is_refused_before_any_write() {
    let f = Fixture::new();
    fs::create_dir_all(f.root().join("etc")).unwrap();
    // The image, seen from the root by another name.
    fs::hard_link(f.disk(), f.root().join("disk.img")).unwrap();
    let (a_off, _) = f.slot_range(fs::read(f.disk()).unwrap(), "USR-A");
    let (b_off, _) = f.slot_range(fs::read(f.disk()).unwrap(), "USR-B");
    let env = f.root().join("env.bin");
    fs::File::create(&env).unwrap().set_len(0x8000).unwrap();
    let system = || {
        system_from(f.description_for(
            "backend = \"fw-env\"\nfw-env-config = \"/etc/fw_env.config\"",
            "",
            "",
        ))
    };
    let disk = open_rw(&f.disk());
    let before = fs::read(f.disk()).unwrap();
    let try_config = |config: &str| -> Error {
        fs::write(f.root().join("etc/fw_env.config"), config).unwrap();
        agent(&f, system(), &disk)
            .disk_path(f.disk())
            .install(&f.payload(true, &f.v2, "2.0", "acme-os")[..], None)
            .unwrap_err()
    };
    for off in [a_off + 0x10000, b_off] {
        let e = try_config(&format!(
            "/disk.img {off:#x} 0x4000\n/disk.img {:#x} 0x4000\n",
            off + 0x4000
        ));
        assert!(matches!(e, Error::StoreOnSlot { .. }), "{off:#x}: {e}");
    }
    // Two copies sharing bytes: in one file by its name, and by two names of one file.
    let e = try_config("/env.bin 0x0 0x4000\n/env.bin 0x2000 0x4000\n");
    assert!(e.to_string().contains("overlap"), "{e}");
    fs::hard_link(&env, f.root().join("env2.bin")).unwrap();
    let e = try_config("/env.bin 0x0 0x4000\n/env2.bin 0x0 0x4000\n");
    assert!(matches!(e, Error::StoreOverlap { .. }), "{e}");
    // A path that climbs out of the root.
    let e = try_config("/../../env.bin 0x0 0x4000\n/env.bin 0x4000 0x4000\n");
    assert!(e.to_string().contains(".."), "{e}");
    // A block device this root's /sys does not describe cannot be told from a slot.
    if std::path::Path::new("/dev/loop0").exists() {
        fs::create_dir_all(f.root().join("dev")).unwrap();
        std::os::unix::fs::symlink("/dev/loop0", f.root().join("dev/env")).unwrap();
        let e = try_config("/dev/env 0x0 0x4000\n/dev/env 0x4000 0x4000\n");
        assert!(matches!(e, Error::UnknownDevice { .. }), "{e}");
    }
    assert!(
        fs::read(f.disk()).unwrap() == before,
        "the disk was written"
    );
}

/// A release with no delta for the booted image but a block store: the agent installs from
/// the store, fetching from it only the runs the booted slot lacks (nginx's log: ranges of
/// the store, nothing of the full payload), and the slot boots with the signed tree. The
/// next version then indexes the booted slot by its own tree, read back from the slot.
#[test]
fn an_install_from_a_block_store_fetches_only_what_the_booted_slot_lacks() {
    use keel_payload::store::{publish_store, PublishOptions};
    use keel_release::{Artifact, Index, Release, Root, TrustedRoot};
    use sha2::Digest;
    let Some(site) = site() else {
        return;
    };
    let (www, url) = (&site.www, &site.url);
    let f = Fixture::new();
    let store_of = |image: &[u8], version: &str, name: &str| -> Artifact {
        let params = f.descriptor(image).params().clone();
        let mut out = std::io::Cursor::new(Vec::new());
        let p = publish_store(
            image,
            &mut out,
            &f.key,
            &PublishOptions::new("acme-os", version, params),
        )
        .unwrap();
        let bytes = out.into_inner();
        fs::write(www.join(name), &bytes).unwrap();
        Artifact {
            url: name.into(),
            size: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            manifest_sha256: Some(hex::encode(p.index_sha256)),
        }
    };
    let full = |image: &[u8], version: &str, name: &str| -> Artifact {
        let bytes = f.payload(false, image, version, "acme-os");
        fs::write(www.join(name), &bytes).unwrap();
        Artifact {
            url: name.into(),
            size: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            manifest_sha256: Some(hex::encode(
                keel_payload::Payload::open(&bytes[..], &{
                    let mut r = keel_trust::Keyring::new();
                    r.add(f.key.public_key().clone()).unwrap();
                    r
                })
                .unwrap()
                .id(),
            )),
        }
    };
    let publish = |release: Release, serial: u64| {
        let index = Index {
            kind: "keel-index".into(),
            serial,
            expires: u64::MAX / 2,
            timestamp: Some(keel_trust::unix_now() - 60),
            releases: vec![release],
        };
        fs::write(www.join("index.json"), index.sign(&[&f.key]).unwrap()).unwrap();
    };
    let env = Root::first(&[f.key.public_key()], 1, u64::MAX / 2)
        .sign(&[&f.key])
        .unwrap();
    let root = TrustedRoot::initial(&env, keel_trust::unix_now()).unwrap();
    publish(
        Release {
            version: "2.0".into(),
            compatible: "acme-os".into(),
            full: full(&f.v2, "2.0", "2.0.full"),
            deltas: vec![],
            store: Some(store_of(&f.v2, "2.0", "2.0.store")),
            rollout_percent: 100,
        },
        1,
    );
    let disk = open_rw(&f.disk());
    let a = agent(&f, f.system(), &disk);
    let fetch = keel_fetch::FetchOptions::default();
    // Slot A came from the factory: no record says what its tree covers, it is hashed.
    let plan = a
        .plan_store(&fs::File::open(www.join("2.0.store")).unwrap())
        .unwrap();
    assert_eq!(plan.seed_bytes_hashed, SLOT, "{plan:?}");
    let done = a
        .install_from_index(url, &root, fetch, None)
        .unwrap()
        .unwrap();
    assert_eq!((done.slot, done.version.as_str()), (Slot::B, "2.0"));
    let (b_off, _) = f.slot_range(fs::read(f.disk()).unwrap(), "USR-B");
    let mut got = vec![0u8; IMAGE];
    disk.read_exact_at(&mut got, b_off).unwrap();
    assert!(got == f.v2, "slot B does not hold 2.0");
    assert!(
        site.server.requests_for("/2.0.full").is_empty(),
        "the full payload was fetched"
    );
    let ranges = settled(&site.server, "/2.0.store");
    let bytes: u64 = ranges.iter().map(|r| r.bytes).sum();
    assert_eq!(bytes, done.fetched);
    let store_size = fs::metadata(www.join("2.0.store")).unwrap().len();
    // 200 KB changed of 3 MiB: the runs holding them, the index and leaves.
    assert!(
        done.fetched < store_size / 4,
        "{} of {store_size}",
        done.fetched
    );
    assert!(ranges.iter().all(|r| r.status == 206), "{ranges:?}");
    // The slot's tree was written and checks against the signed root.
    let st = a.status().unwrap();
    let b = st.slots.iter().find(|s| s.slot == "B").unwrap();
    assert!(b.next_boot, "{st:?}");
    let d = f.descriptor(&f.v2);
    assert_eq!(done.root_hash.as_deref(), Some(d.root_hash()));

    // 3.0 from 2.0, booted from B: the booted slot's own tree is its index (the record
    // says what it covers), and the plan takes most blocks from it.
    let mut v3 = f.v2.clone();
    v3[2_000_000..2_100_000].copy_from_slice(&seeded_bytes(9, 100_000));
    f.boot_from("USR-B");
    // This time with FEC parity (2 roots), computed from the blocks on the way.
    let text = f
        .description(&f.disk(), "", "")
        .replace("salt = \"5a17\"", "salt = \"5a17\"\nfec-roots = 2");
    // Checkpoints every 256 KiB: the resume record is written on the way.
    let a = agent(&f, system_from(text), &disk).checkpoint_bytes(256 << 10);
    a.commit(&[]).unwrap();
    publish(
        Release {
            version: "3.0".into(),
            compatible: "acme-os".into(),
            full: full(&v3, "3.0", "3.0.full"),
            deltas: vec![],
            store: Some(store_of(&v3, "3.0", "3.0.store")),
            rollout_percent: 100,
        },
        2,
    );
    let plan = a
        .plan_store(&fs::File::open(www.join("3.0.store")).unwrap())
        .unwrap();
    assert!(plan.from_seed > 600, "{plan:?}");
    assert_eq!(
        plan.seed_bytes_hashed, 0,
        "the booted slot was hashed: {plan:?}"
    );
    // A payload install's record left for slot A does not stand in a store install's way.
    fs::write(
        f.state().join("resume-A"),
        b"KEELRSM2 from an earlier payload",
    )
    .unwrap();
    let done = a
        .install_from_index(url, &root, fetch, None)
        .unwrap()
        .unwrap();
    assert_eq!((done.slot, done.version.as_str()), (Slot::A, "3.0"));
    let (a_off, _) = f.slot_range(fs::read(f.disk()).unwrap(), "USR-A");
    disk.read_exact_at(&mut got, a_off).unwrap();
    assert!(got == v3, "slot A does not hold 3.0");
    assert!(done.fetched < 400_000, "{}", done.fetched);
    // The parity after the tree is fec_encode's of the data and tree as they are now.
    let params = f.descriptor(&v3).params().clone();
    let geometry = keel_verity::TreeGeometry::new(&params, params.data_size(), false).unwrap();
    let end = geometry.tree_offset() + geometry.tree_size();
    let g = keel_verity::FecGeometry::on_hash_device(&params, &geometry, 2, end).unwrap();
    let (_, a_len) = f.slot_range(fs::read(f.disk()).unwrap(), "USR-A");
    let mut slot = vec![0u8; a_len as usize];
    disk.read_exact_at(&mut slot, a_off).unwrap();
    let mut want = Vec::new();
    keel_verity::fec_encode(&g, &slot[..IMAGE], &slot, &mut want, &Default::default()).unwrap();
    let n = g.parity_size() as usize;
    assert!(
        want[end as usize..] == slot[end as usize..end as usize + n],
        "the parity differs"
    );
}
