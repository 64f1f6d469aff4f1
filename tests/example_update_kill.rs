//! The agent killed at every write: strace stops the `update` example with SIGKILL at the
//! Nth call of each system call that changes a file (each write, truncate, sync, rename,
//! removal), for every N a whole install makes, while it installs a bundle (a usr image
//! into slot B's partition, a kernel and an initramfs as slot B's files). After each kill
//! the running slot A is still what boots, with its files untouched, and the next run
//! finishes the same slot set as an uninterrupted install.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{copy_dir, example, seeded_bytes, tool};
use keel::io::{Region, WriteAt};
use keel::partition::{create_layout, GptDisk, Layout};
use keel::payload::{generate_bundle, BundlePart, GenerateOptions};

const SLOT: u64 = 2 << 20;
const IMAGE: usize = 1 << 20;

/// The system calls through which the agent changes files.
const WRITES: &[&str] = &[
    "write",
    "pwrite64",
    "pwritev",
    "ftruncate",
    "fallocate",
    "fsync",
    "fdatasync",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "mkdir",
    "mkdirat",
];

struct Node {
    dir: PathBuf,
}

impl Node {
    fn p(&self, n: &str) -> PathBuf {
        self.dir.join(n)
    }

    fn args(&self) -> Vec<String> {
        [
            "--config",
            self.p("system.toml").to_str().unwrap(),
            "--root",
            self.p("root").to_str().unwrap(),
            "--state",
            self.p("state").to_str().unwrap(),
            "install",
            self.p("bundle").to_str().unwrap(),
            "--checkpoint-mib",
            "1",
        ]
        .map(str::to_string)
        .to_vec()
    }

    fn file(&self, slot: char, name: &str) -> PathBuf {
        self.p(&format!("root/efi/keel/{slot}/{name}"))
    }

    /// Slot B's partition, B's files and the slots' boot flags.
    fn outcome(&self) -> (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>) {
        let disk = fs::read(self.p("disk.img")).unwrap();
        let g = GptDisk::open(disk.clone(), None).unwrap();
        let b = g.partition_by_label("USR-B").unwrap();
        let off = (b.first_lba * 512) as usize;
        (
            disk[off..off + (b.sectors() * 512) as usize].to_vec(),
            fs::read(self.file('b', "vmlinuz")).ok(),
            fs::read(self.file('b', "initrd.img")).ok(),
        )
    }

    /// Whether slot B is armed: what the boot loader starts next.
    fn b_armed(&self) -> bool {
        let v: serde_json::Value = serde_json::from_str(&self.status()).unwrap();
        let b = &v["slots"][1];
        assert_eq!(b["slot"], "B");
        b["next_boot"] == true && b["booted"] == false
    }

    fn status(&self) -> String {
        let mut a = self.args();
        a.truncate(6);
        a.extend(["status".to_string(), "--json".to_string()]);
        let o = Command::new(example("update")).args(&a).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// The image builder's output: a disk with version 1 in USR-A, slot A's kernel and
/// initramfs on the device root's ESP, the description, the bundle to version 2.
fn build(dir: &Path) -> (Node, [Vec<u8>; 2]) {
    fs::create_dir_all(dir).unwrap();
    let node = Node {
        dir: dir.to_path_buf(),
    };
    let key = keel::trust::SigningKey::generate().unwrap();
    let v1 = seeded_bytes(1, IMAGE);
    let mut v2 = v1.clone();
    v2[200_000..400_000].copy_from_slice(&seeded_bytes(2, 200_000));
    let k1 = seeded_bytes(3, 200_000);
    let mut k2 = k1.clone();
    k2[50_000..70_000].copy_from_slice(&seeded_bytes(4, 20_000));
    let (i1, i2) = (seeded_bytes(5, 40_000), seeded_bytes(6, 45_000));

    let disk = fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(node.p("disk.img"))
        .unwrap();
    disk.set_len(2 * SLOT + (2 << 20)).unwrap();
    let mut layout = Layout::flatcar(SLOT);
    layout.esp_size = 0;
    create_layout(&mut &disk, &layout).unwrap();
    let g = GptDisk::open(&disk, None).unwrap();
    let a = g.partition_by_label("USR-A").unwrap();
    Region::new(&disk, a.first_lba * 512, a.sectors() * 512)
        .unwrap()
        .write_all_at(&v1, 0)
        .unwrap();
    fs::create_dir_all(node.p("root/proc")).unwrap();
    fs::create_dir_all(node.p("root/etc")).unwrap();
    fs::write(node.p("root/etc/os-release"), "VERSION_ID=1\n").unwrap();
    fs::write(
        node.p("root/proc/cmdline"),
        format!("ro mount.usr=PARTUUID={}\n", a.guid),
    )
    .unwrap();
    fs::create_dir_all(node.file('a', "x").parent().unwrap()).unwrap();
    fs::write(node.file('a', "vmlinuz"), &k1).unwrap();
    fs::write(node.file('a', "initrd.img"), &i1).unwrap();
    fs::write(
        node.p("system.toml"),
        format!(
            "version = \"1\"\ncompatible = \"acme-os\"\n\n[boot]\nbackend = \"gpt-flatcar\"\ndisk = \"{}\"\n\n\
             [[slot]]\nname = \"usr.a\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-A\"\n\n\
             [[slot]]\nname = \"usr.b\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-B\"\n\n\
             [[file]]\nclass = \"vmlinuz\"\npath = \"/efi/keel/{{slot}}/vmlinuz\"\n\n\
             [[file]]\nclass = \"initrd\"\npath = \"/efi/keel/{{slot}}/initrd.img\"\n\n\
             [verity]\nsalt = \"5a17\"\n\n[[trust.key]]\nid = \"release\"\ned25519 = \"{}\"\n",
            node.p("disk.img").display(),
            hex::encode(key.public_key().to_bytes())
        ),
    )
    .unwrap();
    let params = keel::verity::VerityParams::builder()
        .salt(vec![0x5a, 0x17])
        .data_blocks(IMAGE as u64 / 4096)
        .build()
        .unwrap();
    let root = keel::verity::HashTree::build(&params, &v2)
        .unwrap()
        .root_hash()
        .to_vec();
    let descriptor = keel::verity::RootDescriptor::new(params, &root).unwrap();
    let parts = [
        BundlePart::slot("usr", Some(&v1), &v2).verity(&descriptor),
        BundlePart::file("vmlinuz", Some(&k1), &k2),
        BundlePart::file("initrd", None, &i2),
    ];
    let bundle = generate_bundle(
        &parts,
        &key,
        &GenerateOptions::new("acme-os", "2").level(1),
        None,
    )
    .unwrap();
    fs::write(node.p("bundle"), bundle).unwrap();
    (node, [k1, i1])
}

/// How often each system call of [`WRITES`] is made by one thread of a whole install, at
/// most (strace counts injections per call and per thread).
fn counts(strace: &Path, node: &Node) -> BTreeMap<String, u32> {
    let log = node.p("strace.log");
    let o = Command::new(strace)
        .args(["-f", "-qq", "-o"])
        .arg(&log)
        .arg("-e")
        .arg(format!("trace={}", WRITES.join(",")))
        .arg(example("update"))
        .args(node.args())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut per: BTreeMap<(String, String), u32> = BTreeMap::new();
    for line in fs::read_to_string(&log).unwrap().lines() {
        let mut words = line.split_whitespace();
        let (Some(pid), Some(call)) = (words.next(), words.next()) else {
            continue;
        };
        let Some(name) = call.split('(').next().filter(|n| WRITES.contains(n)) else {
            continue;
        };
        *per.entry((pid.to_string(), name.to_string())).or_default() += 1;
    }
    let mut most = BTreeMap::new();
    for ((_, name), n) in per {
        let m = most.entry(name).or_insert(0);
        *m = (*m).max(n);
    }
    most
}

#[test]
fn the_agent_killed_at_every_write_of_a_bundle_install_converges() {
    let Some(strace) = tool("strace", "strace") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (template, [k1, i1]) = build(&tmp.path().join("template"));
    // The reference: an install run to its end under strace, which also counts the calls.
    let reference_node = Node {
        dir: tmp.path().join("reference"),
    };
    fs::create_dir_all(&reference_node.dir).unwrap();
    copy_dir(&template.dir, &reference_node.dir);
    let reference_toml = fs::read_to_string(template.p("system.toml"))
        .unwrap()
        .replace(
            template.dir.to_str().unwrap(),
            reference_node.dir.to_str().unwrap(),
        );
    fs::write(reference_node.p("system.toml"), reference_toml).unwrap();
    let calls = counts(&strace, &reference_node);
    let reference = reference_node.outcome();
    assert!(reference.1.is_some() && reference.2.is_some());
    assert!(
        calls.get("pwrite64").copied().unwrap_or(0) + calls.get("write").copied().unwrap_or(0)
            >= 10,
        "{calls:?}"
    );
    assert!(reference_node.b_armed(), "{}", reference_node.status());

    let mut kills = 0;
    for (call, &n) in &calls {
        for when in 1..=n {
            let node = Node {
                dir: tmp.path().join("node"),
            };
            let _ = fs::remove_dir_all(&node.dir);
            fs::create_dir_all(&node.dir).unwrap();
            copy_dir(&template.dir, &node.dir);
            let toml = fs::read_to_string(template.p("system.toml"))
                .unwrap()
                .replace(template.dir.to_str().unwrap(), node.dir.to_str().unwrap());
            fs::write(node.p("system.toml"), toml).unwrap();
            let what = format!("killed at {call} #{when}");
            let o = Command::new(&strace)
                .args(["-f", "-qq", "-o", "/dev/null"])
                .arg("-e")
                .arg(format!("inject={call}:signal=KILL:when={when}"))
                .arg(example("update"))
                .args(node.args())
                .output()
                .unwrap();
            if o.status.success() {
                // This thread made fewer such calls than the one counted: nothing killed.
                continue;
            }
            kills += 1;
            // The running slot is what boots, and its files are as they were.
            assert_eq!(fs::read(node.file('a', "vmlinuz")).unwrap(), k1, "{what}");
            assert_eq!(
                fs::read(node.file('a', "initrd.img")).unwrap(),
                i1,
                "{what}"
            );
            assert!(
                !node.b_armed() || node.outcome() == reference,
                "{what}: B armed before its set was in place: {}",
                node.status()
            );
            // The next run finishes the set.
            let o = Command::new(example("update"))
                .args(node.args())
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{what}: the next run failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(node.outcome() == reference, "{what}: a different slot set");
            assert_eq!(fs::read(node.file('a', "vmlinuz")).unwrap(), k1, "{what}");
            assert!(node.b_armed(), "{what}: {}", node.status());
            assert_eq!(
                common::names_in(node.file('b', "x").parent().unwrap()),
                ["initrd.img", "vmlinuz"],
                "{what}: files left behind"
            );
        }
    }
    assert!(kills >= 20, "only {kills} kills: {calls:?}");
    eprintln!("{kills} kills: {calls:?}");
}
