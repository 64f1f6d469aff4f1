//! Slot sets: a bundle's images (a usr partition, a kernel and an initramfs as files per
//! slot on the ESP; ChromeOS's kernel and root partition pairs) installed into the
//! inactive slot set, verified, and armed together; refusals before any write; a power
//! cut at every disk write converging; the running slot's files never touched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};

use keel_bootflags::Slot;
use keel_io::testing::PowerCut;
use keel_io::{ReadAt, Region, Shared, WriteAt};
use keel_partition::{create_layout, types, ExtraPartition, GptDisk, Layout};
use keel_payload::{generate_bundle, BundlePart, GenerateOptions};
use keel_testsupport::seeded_bytes;
use keel_trust::SigningKey;
use keel_update::{Agent, Error, Refusal, System};

mod common;
use common::{open_rw, range, Dirs};

const SLOT: u64 = 2 << 20;
const IMAGE: usize = 1 << 20;
const SALT: &str = "5a17";

/// One version of the slot set: the usr image, the kernel and the initramfs.
#[derive(Clone)]
struct Version {
    usr: Vec<u8>,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
}

fn version(n: u64) -> Version {
    let base = seeded_bytes(1, IMAGE);
    let mut usr = base.clone();
    let at = 4096 * (10 + 7 * n as usize);
    usr[at..at + 150_000].copy_from_slice(&seeded_bytes(10 + n, 150_000));
    let mut kernel = seeded_bytes(2, 300_000);
    kernel[1000..40_000].copy_from_slice(&seeded_bytes(20 + n, 39_000));
    let initrd = seeded_bytes(30 + n, 50_000 + 1000 * n as usize);
    Version {
        usr,
        kernel,
        initrd,
    }
}

impl Dirs for Fixture {
    fn base(&self) -> &Path {
        self.dir.path()
    }
}

fn descriptor(image: &[u8]) -> keel_verity::RootDescriptor {
    common::descriptor(image, SALT)
}

/// A Flatcar-style disk (USR-A with version 1, USR-B), a root directory whose `/efi`
/// holds slot A's kernel and initramfs, the description with both files.
struct Fixture {
    dir: tempfile::TempDir,
    key: SigningKey,
    v1: Version,
}

impl Fixture {
    fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
            key: SigningKey::generate().unwrap(),
            v1: version(1),
        };
        f.make_root("1");
        let disk = fs::File::create(f.disk()).unwrap();
        disk.set_len(2 * SLOT + (2 << 20)).unwrap();
        let mut layout = Layout::flatcar(SLOT);
        layout.esp_size = 0;
        create_layout(&mut &disk, &layout).unwrap();
        let (off, len) = range(&fs::read(f.disk()).unwrap(), "USR-A");
        Region::new(&disk, off, len)
            .unwrap()
            .write_all_at(&f.v1.usr, 0)
            .unwrap();
        f.put_files(Slot::A, &f.v1);
        f.boot_from("USR-A");
        f
    }

    /// Slot `slot`'s file of `class` under the root.
    fn file(&self, slot: Slot, name: &str) -> PathBuf {
        self.root().join(format!(
            "efi/keel/{}/{name}",
            slot.letter().to_ascii_lowercase()
        ))
    }

    fn put_files(&self, slot: Slot, v: &Version) {
        fs::create_dir_all(self.file(slot, "x").parent().unwrap()).unwrap();
        fs::write(self.file(slot, "vmlinuz"), &v.kernel).unwrap();
        fs::write(self.file(slot, "initrd.img"), &v.initrd).unwrap();
    }

    fn files_of(&self, slot: Slot) -> (Vec<u8>, Vec<u8>) {
        (
            fs::read(self.file(slot, "vmlinuz")).unwrap(),
            fs::read(self.file(slot, "initrd.img")).unwrap(),
        )
    }

    fn boot_from(&self, label: &str) {
        let g = GptDisk::open(fs::read(self.disk()).unwrap(), None).unwrap();
        let uuid = g.partition_by_label(label).unwrap().guid;
        fs::write(
            self.root().join("proc/cmdline"),
            format!("ro mount.usr=PARTUUID={uuid}\n"),
        )
        .unwrap();
    }

    fn description(&self, files: &str) -> String {
        format!(
            "version = \"1\"\ncompatible = \"acme-os\"\n\n[boot]\nbackend = \"gpt-flatcar\"\ndisk = \"{}\"\n\n\
             [[slot]]\nname = \"usr.a\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-A\"\n\n\
             [[slot]]\nname = \"usr.b\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-B\"\n\n{files}\
             [verity]\nsalt = \"{SALT}\"\n\n[[trust.key]]\nid = \"release\"\ned25519 = \"{}\"\n\n[update]\ntries = 2\n",
            self.disk().display(),
            hex::encode(self.key.public_key().to_bytes())
        )
    }

    fn system(&self) -> System {
        system_of(&self.description(FILES))
    }

    fn agent<'d, D: ReadAt>(&self, disk: &'d D) -> Agent<'d, D>
    where
        &'d D: WriteAt,
    {
        Agent::new(self.system(), disk)
            .root(self.root())
            .state_dir(self.state())
    }

    /// A bundle of `to`: deltas from `from` for the usr image and the kernel, the
    /// initramfs in full; `skip` leaves an image out.
    fn bundle(&self, from: Option<&Version>, to: &Version, v: &str, skip: &str) -> Vec<u8> {
        let usr_root = descriptor(&to.usr);
        let mut parts = vec![
            BundlePart::slot("usr", from.map(|f| &f.usr[..]), &to.usr).verity(&usr_root),
            BundlePart::file("vmlinuz", from.map(|f| &f.kernel[..]), &to.kernel),
            BundlePart::file("initrd", None, &to.initrd),
        ];
        parts.retain(|p| p.name != skip);
        let opts = GenerateOptions::new("acme-os", v).level(1);
        generate_bundle(&parts, &self.key, &opts, None).unwrap()
    }
}

const FILES: &str = "[[file]]\nclass = \"vmlinuz\"\npath = \"/efi/keel/{slot}/vmlinuz\"\n\n\
                     [[file]]\nclass = \"initrd\"\npath = \"/efi/keel/{slot}/initrd.img\"\n\n";

fn system_of(text: &str) -> System {
    let loaded = keel_config::load_sources(&[("system.toml".into(), text.to_string())]);
    let config = loaded
        .config
        .unwrap_or_else(|| panic!("{:?}", loaded.findings));
    System::from_config(&config).unwrap()
}

/// The slot's first `len` bytes.
fn slot_bytes(f: &Fixture, label: &str, len: usize) -> Vec<u8> {
    let disk = fs::read(f.disk()).unwrap();
    let (off, _) = range(&disk, label);
    disk[off as usize..off as usize + len].to_vec()
}

/// Version 2 (usr and kernel as deltas, a new initramfs) goes into slot B's partition and
/// B's files, A's files untouched; then, booted from B, version 3 goes into A's, B's
/// untouched. Each set is armed only once all of it is in place.
#[test]
fn a_bundle_installs_the_usr_partition_and_the_slots_own_kernel_files_together() {
    let f = Fixture::new();
    let v2 = version(2);
    let disk = open_rw(&f.disk());
    let done = f
        .agent(&disk)
        .install(&f.bundle(Some(&f.v1), &v2, "2", "")[..], None)
        .unwrap();
    assert_eq!(done.slot, Slot::B);
    assert_eq!(done.images, ["usr", "vmlinuz", "initrd"]);
    assert!(done.skipped.is_empty());
    assert!(done.root_hash.is_some());
    assert_eq!(slot_bytes(&f, "USR-B", IMAGE), v2.usr);
    assert_eq!(f.files_of(Slot::B), (v2.kernel.clone(), v2.initrd.clone()));
    assert_eq!(
        f.files_of(Slot::A),
        (f.v1.kernel.clone(), f.v1.initrd.clone())
    );
    let st = f.agent(&disk).status().unwrap();
    assert!(st.slots[1].next_boot && st.slots[1].tries == 2, "{st:?}");
    assert_eq!(st.slots[1].version.as_deref(), Some("2"));
    // Nothing temporary is left beside the files.
    let mut names: Vec<String> = fs::read_dir(f.file(Slot::B, "x").parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["initrd.img", "vmlinuz"]);

    // Booted from B: version 3 from version 2 into A.
    f.boot_from("USR-B");
    let v3 = version(3);
    let done = f
        .agent(&disk)
        .install(&f.bundle(Some(&v2), &v3, "3", "")[..], None)
        .unwrap();
    assert_eq!(done.slot, Slot::A);
    assert_eq!(slot_bytes(&f, "USR-A", IMAGE), v3.usr);
    assert_eq!(f.files_of(Slot::A), (v3.kernel, v3.initrd));
    assert_eq!(f.files_of(Slot::B), (v2.kernel, v2.initrd));
    assert_eq!(slot_bytes(&f, "USR-B", IMAGE), v2.usr);
}

/// Whatever is wrong with a bundle against the description is said before anything is
/// written: an image missing, an image with no class, a file image for a partition
/// class, a payload of one unnamed image for a description of several classes, files
/// that do not fit, the inactive slot's file being the running slot's.
#[test]
fn a_bundle_that_does_not_match_the_description_is_refused_before_any_write() {
    let f = Fixture::new();
    let v2 = version(2);
    let disk = open_rw(&f.disk());
    let before = fs::read(f.disk()).unwrap();
    let untouched = |what: &str| {
        assert!(
            fs::read(f.disk()).unwrap() == before,
            "{what}: the disk was written"
        );
        assert_eq!(
            f.files_of(Slot::A),
            (f.v1.kernel.clone(), f.v1.initrd.clone()),
            "{what}"
        );
        assert!(!f.file(Slot::B, "vmlinuz").exists(), "{what}");
    };
    let refused = |payload: &[u8]| -> Refusal {
        match f.agent(&disk).install(payload, None).unwrap_err() {
            Error::Refused(r) => r,
            e => panic!("{e}"),
        }
    };

    match refused(&f.bundle(Some(&f.v1), &v2, "2", "initrd")) {
        Refusal::Images {
            missing, unknown, ..
        } => assert_eq!((missing, unknown), (vec!["initrd".to_string()], vec![])),
        r => panic!("{r}"),
    }
    untouched("missing image");

    // A description without the initramfs: the bundle's is one too many.
    let fewer =
        f.description("[[file]]\nclass = \"vmlinuz\"\npath = \"/efi/keel/{slot}/vmlinuz\"\n\n");
    let e = Agent::new(system_of(&fewer), &disk)
        .root(f.root())
        .state_dir(f.state())
        .install(&f.bundle(Some(&f.v1), &v2, "2", "")[..], None)
        .unwrap_err();
    assert!(
        matches!(&e, Error::Refused(Refusal::Images { unknown, missing, .. })
            if unknown == &["initrd"] && missing.is_empty()),
        "{e}"
    );
    untouched("unknown image");

    // The kernel as a partition image.
    let usr_root = descriptor(&v2.usr);
    let parts = [
        BundlePart::slot("usr", None, &v2.usr).verity(&usr_root),
        BundlePart::slot("vmlinuz", None, &v2.kernel),
        BundlePart::file("initrd", None, &v2.initrd),
    ];
    let opts = GenerateOptions::new("acme-os", "2").level(1);
    let wrong_kind = generate_bundle(&parts, &f.key, &opts, None).unwrap();
    assert!(
        matches!(refused(&wrong_kind), Refusal::ImageKind { ref image, .. } if image == "vmlinuz")
    );
    untouched("a file class's image for a partition");

    // One unnamed image: the kernel files would stay behind.
    let single = keel_payload::generate(
        Some(&f.v1.usr),
        &v2.usr,
        &f.key,
        &GenerateOptions::new("acme-os", "2")
            .level(1)
            .verity(descriptor(&v2.usr)),
    )
    .unwrap();
    match refused(&single) {
        Refusal::Images { missing, .. } => {
            assert_eq!(missing, ["usr", "vmlinuz", "initrd"])
        }
        r => panic!("{r}"),
    }
    untouched("one unnamed image");

    // B's directory is A's (a symlink): writing B's kernel would replace the running one.
    let b_dir = f.file(Slot::B, "x").parent().unwrap().to_path_buf();
    std::os::unix::fs::symlink("a", &b_dir).unwrap();
    let e = f
        .agent(&disk)
        .install(&f.bundle(Some(&f.v1), &v2, "2", "")[..], None)
        .unwrap_err();
    assert!(
        matches!(&e, Error::SameFile { class, .. } if class == "vmlinuz"),
        "{e}"
    );
    fs::remove_file(&b_dir).unwrap();
    untouched("B's files in A's directory");
    // A hard link of A's kernel as B's: B's file is A's by identity.
    fs::create_dir_all(&b_dir).unwrap();
    fs::hard_link(f.file(Slot::A, "vmlinuz"), f.file(Slot::B, "vmlinuz")).unwrap();
    let e = f
        .agent(&disk)
        .install(&f.bundle(Some(&f.v1), &v2, "2", "")[..], None)
        .unwrap_err();
    assert!(matches!(&e, Error::SameFile { .. }), "{e}");
    fs::remove_file(f.file(Slot::B, "vmlinuz")).unwrap();
    assert!(fs::read(f.disk()).unwrap() == before);

    // The installs that failed left the slot as it was, and a good bundle now installs.
    let done = f
        .agent(&disk)
        .install(&f.bundle(Some(&f.v1), &v2, "2", "")[..], None)
        .unwrap();
    assert_eq!(done.slot, Slot::B);
    assert_eq!(
        f.files_of(Slot::A),
        (f.v1.kernel.clone(), f.v1.initrd.clone())
    );
}

/// Files that do not fit on their filesystem (a small tmpfs as the ESP) are refused with
/// the numbers before anything is written; the space slot B's old files take counts as
/// free, since they are replaced.
#[test]
fn files_that_do_not_fit_are_refused_with_the_numbers_before_any_write() {
    use std::os::unix::fs::MetadataExt;
    if fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
        assert!(
            std::env::var_os("KEEL_REQUIRE_INTEROP").is_none(),
            "mounting a tmpfs needs root"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let f = Fixture::new();
    let efi = f.root().join("efi");
    let saved = f.p("saved-efi");
    fs::rename(&efi, &saved).unwrap();
    fs::create_dir_all(&efi).unwrap();
    // 1 MiB: A's files (350 KB) and B's old ones (350 KB) leave about 300 KiB free.
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&efi)
        .status()
        .unwrap();
    assert!(mount.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(efi.clone());
    f.put_files(Slot::A, &f.v1);
    f.put_files(Slot::B, &f.v1);
    let disk = open_rw(&f.disk());
    let before = fs::read(f.disk()).unwrap();

    // A kernel of 700 KB does not fit beside A's files (about 350 KB), even with B's old
    // ones gone.
    let mut big = version(2);
    big.kernel = seeded_bytes(7, 700_000);
    let e = f
        .agent(&disk)
        .install(&f.bundle(None, &big, "2", "")[..], None)
        .unwrap_err();
    match &e {
        Error::Refused(Refusal::FileSpace {
            need, room, slot, ..
        }) => {
            assert_eq!(*slot, Slot::B);
            assert!(*need >= 750_000 && need > room && *room > 600_000, "{e}");
        }
        _ => panic!("{e}"),
    }
    assert!(
        fs::read(f.disk()).unwrap() == before,
        "the disk was written"
    );
    assert_eq!(
        f.files_of(Slot::B),
        (f.v1.kernel.clone(), f.v1.initrd.clone())
    );

    // 400 KB fits only once B's old files are counted as free: it installs.
    let mut fits = version(2);
    fits.kernel = seeded_bytes(8, 400_000);
    let done = f
        .agent(&disk)
        .install(&f.bundle(None, &fits, "2", "")[..], None)
        .unwrap();
    assert_eq!(done.slot, Slot::B);
    assert_eq!(f.files_of(Slot::B), (fits.kernel, fits.initrd));
    assert_eq!(
        f.files_of(Slot::A),
        (f.v1.kernel.clone(), f.v1.initrd.clone())
    );
}

/// A power cut at every write to the disk (the files on their own filesystem as they were
/// left): each next run finishes the set, the images already in place skipped, and gives
/// the same slot B and the same files as an uninterrupted install.
#[test]
fn a_bundle_install_cut_at_every_disk_write_converges() {
    let f = Fixture::new();
    let v2 = version(2);
    let bundle = f.bundle(Some(&f.v1), &v2, "2", "");
    let initial = fs::read(f.disk()).unwrap();
    let run = |disk: &Shared<PowerCut<Vec<u8>>>, state: &Path| {
        Agent::new(f.system(), disk)
            .root(f.root())
            .state_dir(state)
            .install(&bundle[..], None)
    };
    let mut skipped_some = false;
    common::cut_at_every_write(
        &f,
        || f.system(),
        &initial,
        run,
        2,
        || {
            fs::remove_file(f.file(Slot::B, "vmlinuz")).ok();
            fs::remove_file(f.file(Slot::B, "initrd.img")).ok();
        },
        |cut, done| {
            skipped_some |= !done.skipped.is_empty();
            assert_eq!(
                f.files_of(Slot::B),
                (v2.kernel.clone(), v2.initrd.clone()),
                "cut {cut}"
            );
            assert_eq!(
                f.files_of(Slot::A),
                (f.v1.kernel.clone(), f.v1.initrd.clone())
            );
        },
    );
    assert!(
        skipped_some,
        "no rerun found an image in place: the set record was never used"
    );
}

/// ChromeOS's layout: kernel partitions KERN-A/KERN-B carry the boot state, root
/// partitions ROOT-A/ROOT-B the dm-verity root. A bundle of both installs both B
/// partitions and arms KERN-B, as cgpt reads it; the root partitions get no flags.
#[test]
fn a_chromeos_kernel_and_root_pair_switch_together() {
    let Some(cgpt) = keel_testsupport::tool("cgpt", "cgpt") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = SigningKey::generate().unwrap();
    let disk_path = d.join("disk.img");
    let disk = fs::File::create(&disk_path).unwrap();
    disk.set_len(4 * SLOT + (2 << 20)).unwrap();
    let mut layout = Layout::flatcar(SLOT);
    layout.esp_size = 0;
    layout.slot_type = types::chromeos_kernel();
    layout.labels = ("KERN-A".into(), "KERN-B".into());
    layout.a_state = keel_bootflags::SlotState {
        priority: 1,
        tries: 0,
        successful: true,
    };
    for label in ["ROOT-A", "ROOT-B"] {
        layout.extra.push(ExtraPartition {
            label: label.into(),
            type_guid: types::chromeos_rootfs(),
            size: Some(SLOT),
            guid: None,
        });
    }
    create_layout(&mut &disk, &layout).unwrap();
    let v1 = version(1);
    let image = fs::read(&disk_path).unwrap();
    for (label, bytes) in [("KERN-A", &v1.kernel), ("ROOT-A", &v1.usr)] {
        let (off, len) = range(&image, label);
        Region::new(&disk, off, len)
            .unwrap()
            .write_all_at(bytes, 0)
            .unwrap();
    }
    let root = d.join("root");
    fs::create_dir_all(root.join("proc")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/os-release"), "VERSION_ID=1\n").unwrap();
    // ChromeOS's kernel command line names the root partition.
    let g = GptDisk::open(image, None).unwrap();
    let root_a = g.partition_by_label("ROOT-A").unwrap();
    fs::write(
        root.join("proc/cmdline"),
        format!("root=PARTUUID={} ro\n", root_a.guid),
    )
    .unwrap();
    let text = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/configs/gpt-chromeos.toml"
    ))
    .unwrap()
    .replace("/dev/mmcblk0", disk_path.to_str().unwrap())
    .replace(
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        &hex::encode(key.public_key().to_bytes()),
    )
    .replace("salt = \"a5c2b9b3e4f60718\"", &format!("salt = \"{SALT}\""))
    .replace("algorithm = \"sha1\"\nformat = 0", "algorithm = \"sha256\"");
    let system = system_of(&text);
    assert_eq!(system.classes.len(), 2);

    let v2 = version(2);
    let root_root = descriptor(&v2.usr);
    let parts = [
        BundlePart::slot("kernel", None, &v2.kernel),
        BundlePart::slot("root", Some(&v1.usr), &v2.usr).verity(&root_root),
    ];
    let bundle = generate_bundle(
        &parts,
        &key,
        &GenerateOptions::new("acme-book-arm64", "2"),
        None,
    )
    .unwrap();
    let disk = open_rw(&disk_path);
    let agent = Agent::new(system.clone(), &disk)
        .root(&root)
        .state_dir(d.join("state"));
    assert_eq!(agent.booted_slot().unwrap(), Slot::A);
    let done = agent.install(&bundle[..], None).unwrap();
    assert_eq!(done.slot, Slot::B);
    assert!(done.root_hash.is_some());
    let after = fs::read(&disk_path).unwrap();
    let at = |label: &str, len: usize| {
        let (off, _) = range(&after, label);
        after[off as usize..off as usize + len].to_vec()
    };
    assert_eq!(at("KERN-B", v2.kernel.len()), v2.kernel);
    assert_eq!(at("ROOT-B", v2.usr.len()), v2.usr);
    assert_eq!(at("KERN-A", v1.kernel.len()), v1.kernel);
    assert_eq!(at("ROOT-A", v1.usr.len()), v1.usr);
    let g = GptDisk::open(after, None).unwrap();
    let number = |label: &str| g.partition_by_label(label).unwrap().number;
    let cgpt_flags = |label: &str| {
        let show = |flag: &str| -> u8 {
            let out = std::process::Command::new(&cgpt)
                .args(["show", "-i", &number(label).to_string(), flag])
                .arg(&disk_path)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        (show("-P"), show("-T"), show("-S"))
    };
    // KERN-B: above A, six tries, not yet successful; KERN-A as it was.
    let (pb, tb, sb) = cgpt_flags("KERN-B");
    let (pa, _, sa) = cgpt_flags("KERN-A");
    assert!(pb > pa && tb == 6 && sb == 0, "KERN-B {pb} {tb} {sb}");
    assert_eq!(sa, 1);
    assert_eq!(
        cgpt_flags("ROOT-B"),
        (0, 0, 0),
        "the root partitions carry no flags"
    );
    let st = agent.status().unwrap();
    assert!(
        st.slots[1].next_boot && st.slots[1].name == "kernel.b",
        "{st:?}"
    );
}

/// What an outside attack on slot sets found, each now refused or survived: a set record
/// naming images that are not in place (they are checked before they are skipped), another
/// payload's interrupted set, a second install while one runs, B's file reached through a
/// directory that is A's (another class's running file) or the disk's.
#[test]
fn set_records_locks_and_aliases_cannot_arm_a_wrong_set() {
    let f = Fixture::new();
    let v2 = version(2);
    let disk = open_rw(&f.disk());
    let p2 = f.bundle(Some(&f.v1), &v2, "2", "");
    let id2 = *keel_payload::Payload::open(&p2[..], &f.system().keyring)
        .unwrap()
        .id();

    // A record saying B's kernel is in place when it is not: the kernel is written anyway.
    fs::create_dir_all(f.state()).unwrap();
    fs::write(
        f.state().join("set-B.json"),
        format!(
            "{{\"payload\":\"{}\",\"done\":[\"vmlinuz\",\"initrd\"]}}",
            hex::encode(id2)
        ),
    )
    .unwrap();
    fs::create_dir_all(f.file(Slot::B, "x").parent().unwrap()).unwrap();
    fs::write(f.file(Slot::B, "initrd.img"), b"not the initramfs").unwrap();
    let done = f.agent(&disk).install(&p2[..], None).unwrap();
    assert!(done.skipped.is_empty(), "{done:?}");
    assert_eq!(f.files_of(Slot::B), (v2.kernel.clone(), v2.initrd.clone()));
    // A record that is not JSON, or a FIFO where it belongs: the install goes on without it.
    for junk in ["fifo", "text"] {
        let rec = f.state().join("set-B.json");
        let _ = fs::remove_file(&rec);
        if junk == "fifo" {
            nix::unistd::mkfifo(&rec, nix::sys::stat::Mode::S_IRWXU).unwrap();
        } else {
            fs::write(&rec, b"{\0").unwrap();
        }
        f.agent(&disk).install(&p2[..], None).unwrap();
    }

    // Version 2 interrupted when its images were in place (the cut at arming), then
    // version 3 interrupted while writing B's usr: version 2 again writes it all again.
    let v3 = version(3);
    let p3 = f.bundle(Some(&f.v1), &v3, "3", "");
    let state = f.p("state-interleaved");
    let run = |disk: &Shared<PowerCut<Vec<u8>>>, payload: &[u8]| {
        Agent::new(f.system(), disk)
            .root(f.root())
            .state_dir(&state)
            .install(payload, None)
    };
    let initial = fs::read(f.disk()).unwrap();
    let d = Shared::new(PowerCut::new(initial.clone(), 4, 0));
    assert!(run(&d, &p2).is_err());
    let d = Shared::new(PowerCut::new(d.into_inner().inner, 1, 0));
    assert!(run(&d, &p3).is_err());
    let d = Shared::new(PowerCut::new(d.into_inner().inner, usize::MAX, 0));
    let done = run(&d, &p2).unwrap();
    assert!(done.skipped.is_empty(), "{done:?}");
    let end = d.into_inner().inner;
    let (off, _) = range(&end, "USR-B");
    assert!(end[off as usize..off as usize + IMAGE] == v2.usr[..]);

    // One install at a time: while the lock is held, another is refused, not queued.
    let lock = fs::File::create(f.state().join("lock")).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let e = f.agent(&disk).install(&p2[..], None).unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    drop(held);

    // Another class's file of the running slot, reached through a directory link: B's
    // initramfs would be A's kernel.
    let crossed = f.description(
        "[[file]]\nclass = \"vmlinuz\"\npath = \"/efi/keel/{slot}/vmlinuz\"\n\n\
         [[file]]\nclass = \"initrd\"\npath = \"/efi/initrd/{slot}/vmlinuz\"\n\n",
    );
    fs::create_dir_all(f.root().join("efi/initrd")).unwrap();
    std::os::unix::fs::symlink("../keel/b", f.root().join("efi/initrd/a")).unwrap();
    std::os::unix::fs::symlink("../keel/a", f.root().join("efi/initrd/b")).unwrap();
    let before = fs::read(f.file(Slot::A, "vmlinuz")).unwrap();
    let e = Agent::new(system_of(&crossed), &disk)
        .root(f.root())
        .state_dir(f.state())
        .install(&p2[..], None)
        .unwrap_err();
    assert!(matches!(&e, Error::SameFile { .. }), "{e}");
    assert_eq!(fs::read(f.file(Slot::A, "vmlinuz")).unwrap(), before);

    // B's file reached through a link to the disk's directory is the disk.
    let onto_disk = f.description(
        "[[file]]\nclass = \"vmlinuz\"\npath = \"/efi/disk/{slot}/disk.img\"\n\n\
         [[file]]\nclass = \"initrd\"\npath = \"/efi/keel/{slot}/initrd.img\"\n\n",
    );
    fs::create_dir_all(f.root().join("efi/disk/a")).unwrap();
    std::os::unix::fs::symlink(f.dir.path(), f.root().join("efi/disk/b")).unwrap();
    let disk_before = fs::read(f.disk()).unwrap();
    let e = Agent::new(system_of(&onto_disk), &disk)
        .root(f.root())
        .state_dir(f.state())
        .install(&p2[..], None)
        .unwrap_err();
    assert!(matches!(&e, Error::FileTaken { .. }), "{e}");
    assert!(
        fs::read(f.disk()).unwrap() == disk_before,
        "the disk was written"
    );
}
