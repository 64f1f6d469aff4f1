//! Proof by the Linux kernel: Debian's kernel, booted under qemu (software emulation), maps
//! Keel's trees with dm-verity using the table line Keel produces, reads every block, and
//! accepts good trees and refuses damaged ones with its own error messages.
//!
//! One boot runs every case: the images go in as virtio disks, a cached initramfs holds
//! busybox, dmsetup with its libraries and the device-mapper modules, and the cases come
//! as a second cpio archive appended to it. Run alone with
//! `cargo test -p keel-verity --test kernel -- --nocapture`; it needs qemu-system-x86,
//! linux-image-amd64, busybox-static, dmsetup and cpio, and skips without them (fails with
//! `KEEL_REQUIRE_INTEROP=1`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kernel::{cpio_of, kernel, populate_initramfs, Kernel};
use common::seeded_bytes;
use keel_verity::{
    dm_table, fec_encode, format, BuildOptions, FecGeometry, FecTable, FormatOptions,
    HashAlgorithm, HashType, TableOptions, TreeGeometry, VerityParams,
};
use sha2::{Digest, Sha256};

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m || echo "KEEL insmod $m failed"; done
export DM_DISABLE_UDEV=1
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
dmesg -c > /dev/null
. /cases.sh
echo "KEEL done"
poweroff -f
"#;

/// Build (or reuse) the initramfs for this kernel.
fn initramfs(k: &Kernel) -> PathBuf {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("keel-kernel");
    fs::create_dir_all(&cache).unwrap();
    let version = k.modules.file_name().unwrap().to_string_lossy().to_string();
    let out = cache.join(format!("initramfs-{version}.cpio"));
    if out.exists() {
        return out;
    }
    let root = cache.join(format!("root-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let wanted = [
        &keel_testsupport::kernel::VERITY_MODULES[..],
        &["sha512_generic"],
    ]
    .concat();
    populate_initramfs(k, &root, &[], &wanted, INIT);
    let tmp = cache.join(format!("initramfs-{}.tmp", std::process::id()));
    cpio_of(&k.cpio, &root, &tmp);
    fs::rename(&tmp, &out).unwrap();
    let _ = fs::remove_dir_all(&root);
    out
}

/// One mapping to try.
struct Case {
    name: &'static str,
    table: String,
    expect_ok: bool,
    /// SHA-256 the mapped device must read as (FEC cases: the repaired content).
    sha256: Option<String>,
    /// Text the kernel must print for a refused case.
    kernel_says: String,
}

#[derive(Default)]
struct Disks {
    files: Vec<PathBuf>,
}

impl Disks {
    /// Add an image; returns its device name in the guest.
    fn add(&mut self, path: PathBuf) -> String {
        self.files.push(path);
        format!("/dev/vd{}", (b'a' + self.files.len() as u8 - 1) as char)
    }
}

struct Tree {
    params: VerityParams,
    geometry: TreeGeometry,
    root: Vec<u8>,
    data: PathBuf,
    hash: PathBuf,
}

fn make_tree(
    dir: &Path,
    name: &str,
    params: VerityParams,
    superblock: bool,
    hash_offset: u64,
    same_device: bool,
    seed: u64,
) -> Tree {
    let data = dir.join(format!("{name}.data"));
    let bytes = seeded_bytes(seed, params.data_size() as usize);
    fs::write(&data, &bytes).unwrap();
    let hash = if same_device {
        data.clone()
    } else {
        dir.join(format!("{name}.hash"))
    };
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&hash)
        .unwrap();
    let d = fs::File::open(&data).unwrap();
    let opts = FormatOptions::default()
        .hash_offset(hash_offset)
        .superblock(superblock.then_some([9; 16]));
    let out = format(&params, &d, &mut &f, &opts).unwrap();
    // A disk is a whole number of 512-byte sectors.
    let len = f.metadata().unwrap().len();
    f.set_len(len.div_ceil(512) * 512).unwrap();
    Tree {
        params,
        geometry: out.geometry,
        root: out.root_hash,
        data,
        hash,
    }
}

fn params(alg: HashAlgorithm, ht: HashType, dbs: u32, blocks: u64) -> VerityParams {
    VerityParams::builder()
        .algorithm(alg)
        .hash_type(ht)
        .data_block_size(dbs)
        .data_blocks(blocks)
        .salt(seeded_bytes(3, 32))
        .build()
        .unwrap()
}

#[test]
fn the_kernel_maps_keel_trees() {
    let Some(k) = kernel() else { return };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut disks = Disks::default();
    let mut cases = Vec::new();
    let mut add = |name: &'static str,
                   t: &Tree,
                   disks: &mut Disks,
                   root: Option<Vec<u8>>,
                   expect_ok: bool,
                   kernel_says: String| {
        let dd = disks.add(t.data.clone());
        let hd = if t.hash == t.data {
            dd.clone()
        } else {
            disks.add(t.hash.clone())
        };
        let root = root.unwrap_or_else(|| t.root.clone());
        let table = dm_table(
            &t.params,
            &t.geometry,
            &root,
            &dd,
            &hd,
            &TableOptions::default(),
        )
        .unwrap();
        cases.push(Case {
            name,
            table,
            expect_ok,
            sha256: None,
            kernel_says,
        });
    };
    let d = dir.path();

    // Accepted: the default tree, format 0, sha512 with 1 KiB blocks, and no superblock with
    // the tree on the data device after the data.
    for (name, file, algorithm, hash_type, block_size, blocks, seed) in [
        (
            "default",
            "default",
            HashAlgorithm::Sha256,
            HashType::Normal,
            4096,
            2048,
            1,
        ),
        (
            "format0",
            "format0",
            HashAlgorithm::Sha1,
            HashType::ChromeOs,
            4096,
            1500,
            2,
        ),
        (
            "sha512-1k",
            "sha512",
            HashAlgorithm::Sha512,
            HashType::Normal,
            1024,
            5000,
            3,
        ),
    ] {
        let p = params(algorithm, hash_type, block_size, blocks);
        let tree = make_tree(d, file, p, true, 0, false, seed);
        add(name, &tree, &mut disks, None, true, String::new());
    }
    let p = params(HashAlgorithm::Sha256, HashType::Normal, 4096, 1000);
    let offset = p.data_size();
    let inline = make_tree(d, "inline", p, false, offset, true, 4);
    add(
        "no-superblock-same-device",
        &inline,
        &mut disks,
        None,
        true,
        String::new(),
    );

    // Refused: a flipped data byte, a damaged hash block, a wrong root, a short hash device.
    let plain = |file: &str, blocks: u64, seed: u64| {
        let p = params(HashAlgorithm::Sha256, HashType::Normal, 4096, blocks);
        make_tree(d, file, p, true, 0, false, seed)
    };
    let flip = plain("flip", 1024, 5);
    let mut b = fs::read(&flip.data).unwrap();
    b[4096 * 700 + 9] ^= 1;
    fs::write(&flip.data, b).unwrap();
    add(
        "flipped-data-byte",
        &flip,
        &mut disks,
        None,
        false,
        "data block 700 is corrupted".into(),
    );
    let dmg = plain("hashdmg", 1024, 6);
    let mut h = fs::read(&dmg.hash).unwrap();
    let leaf = dmg.geometry.block_offset(0, 3) as usize;
    h[leaf + 40] ^= 1;
    fs::write(&dmg.hash, h).unwrap();
    // The kernel names the hash block by its number on the hash device.
    let bad_block = dmg.geometry.levels()[0].first_block + 3;
    add(
        "damaged-hash-block",
        &dmg,
        &mut disks,
        None,
        false,
        format!("metadata block {bad_block} is corrupted"),
    );
    let wrong = plain("wrongroot", 1024, 7);
    let mut r = wrong.root.clone();
    r[0] ^= 1;
    let top = wrong.geometry.levels().last().unwrap().first_block;
    add(
        "wrong-root",
        &wrong,
        &mut disks,
        Some(r),
        false,
        format!("metadata block {top} is corrupted"),
    );
    let short = plain("short", 4096, 8);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&short.hash)
        .unwrap();
    f.set_len(8192).unwrap();
    add(
        "short-hash-device",
        &short,
        &mut disks,
        None,
        false,
        "Hash device is too small".into(),
    );

    // FEC: the kernel corrects what Keel's parity covers, in data and in hash blocks, and
    // refuses what exceeds it.
    let fec_case = |name: &'static str,
                    seed: u64,
                    on_hash_device: bool,
                    damage: &dyn Fn(&Tree, &FecGeometry),
                    disks: &mut Disks|
     -> Case {
        let t = make_tree(
            d,
            name,
            params(HashAlgorithm::Sha256, HashType::Normal, 4096, 3000),
            true,
            0,
            false,
            seed,
        );
        let original = hex::encode(Sha256::digest(fs::read(&t.data).unwrap()));
        let hash_len = fs::metadata(&t.hash).unwrap().len();
        let (g, fec_path) = if on_hash_device {
            let off = hash_len.div_ceil(4096) * 4096 + 8192;
            let g = FecGeometry::on_hash_device(&t.params, &t.geometry, 4, off).unwrap();
            (g, t.hash.clone())
        } else {
            let g = FecGeometry::separate(&t.params, &t.geometry, 2, hash_len, 0).unwrap();
            (g, d.join(format!("{name}.fec")))
        };
        let (data_f, hash_f) = (
            fs::File::open(&t.data).unwrap(),
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&t.hash)
                .unwrap(),
        );
        if on_hash_device {
            hash_f.set_len(g.fec_offset()).unwrap();
        }
        let fec_f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&fec_path)
            .unwrap();
        fec_encode(&g, &data_f, &hash_f, &mut &fec_f, &BuildOptions::default()).unwrap();
        let len = fec_f.metadata().unwrap().len();
        fec_f.set_len(len.div_ceil(512) * 512).unwrap();
        damage(&t, &g);
        let dd = disks.add(t.data.clone());
        let hd = disks.add(t.hash.clone());
        let fd = if on_hash_device {
            hd.clone()
        } else {
            disks.add(fec_path)
        };
        let opts = TableOptions::default().fec(FecTable {
            device: fd,
            geometry: g,
        });
        Case {
            name,
            table: dm_table(&t.params, &t.geometry, &t.root, &dd, &hd, &opts).unwrap(),
            expect_ok: true,
            sha256: Some(original),
            kernel_says: "corrected".into(),
        }
    };
    let xor_at = |path: &Path, at: u64, x: u8| {
        let mut b = fs::read(path).unwrap();
        b[at as usize] ^= x;
        fs::write(path, b).unwrap();
    };
    // One byte in each of two data blocks of different codewords.
    cases.push(fec_case(
        "fec-data",
        11,
        false,
        &|t, _| {
            xor_at(&t.data, 4096 * 5 + 100, 0x5a);
            xor_at(&t.data, 4096 * 2900 + 7, 0x01);
        },
        &mut disks,
    ));
    // Parity on the hash device; two bytes of a leaf hash block and two bytes of one
    // data block (roots 4 corrects two per codeword).
    cases.push(fec_case(
        "fec-hash-device",
        12,
        true,
        &|t, _| {
            let leaf = t.geometry.block_offset(0, 1);
            xor_at(&t.hash, leaf + 10, 0xff);
            xor_at(&t.hash, leaf + 11, 0xff);
            xor_at(&t.data, 4096 * 77 + 5, 0x10);
            xor_at(&t.data, 4096 * 77 + 4000, 0x20);
        },
        &mut disks,
    ));
    // Three data blocks of one round at roots 2: more than even erasure decoding (which the
    // kernel does with the blocks that fail their own hash) can restore.
    let mut beyond = fec_case(
        "fec-beyond",
        13,
        false,
        &|t, g| {
            for i in [3u64, 4, 5] {
                xor_at(&t.data, (i * g.rounds() + 1) * 4096 + 50, 0x77);
            }
        },
        &mut disks,
    );
    beyond.expect_ok = false;
    beyond.sha256 = None;
    beyond.kernel_says = "failed to correct".into();
    cases.push(beyond);

    // The cases, as a second archive appended to the cached one.
    let mut script = String::new();
    for c in &cases {
        writeln!(
            script,
            "echo 'KEEL case {n}'\n\
             if dmsetup create --noudevsync --readonly kv --table '{t}'; then\n\
               if dd if=/dev/mapper/kv of=/dev/null bs=65536 2>/dev/null; then echo 'KEEL result {n} read-ok'; echo \"KEEL sha256 {n} $(sha256sum /dev/mapper/kv)\"; else echo 'KEEL result {n} read-error'; fi\n\
               dmsetup remove --noudevsync kv\n\
             else echo 'KEEL result {n} create-refused'; fi\n\
             dmesg -c | sed 's/^/KEEL kernel {n}: /'",
            n = c.name,
            t = c.table
        )
        .unwrap();
    }
    let base = initramfs(&k);
    let extra = d.join("cases");
    fs::create_dir_all(&extra).unwrap();
    fs::write(extra.join("cases.sh"), script).unwrap();
    let extra_cpio = d.join("cases.cpio");
    cpio_of(&k.cpio, &extra, &extra_cpio);
    let initrd = d.join("initrd.cpio");
    let mut all = fs::read(&base).unwrap();
    all.extend(fs::read(&extra_cpio).unwrap());
    fs::write(&initrd, all).unwrap();

    let mut cmd = Command::new(&k.qemu);
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "512",
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(&k.vmlinuz)
    .arg("-initrd")
    .arg(&initrd)
    .args(["-append", "console=ttyS0 panic=-1 loglevel=4"]);
    for f in &disks.files {
        cmd.arg("-drive").arg(format!(
            "file={},format=raw,if=virtio,readonly=on",
            f.display()
        ));
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    out.push_str(&reader.join().unwrap());
    let lines: Vec<&str> = out
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with("KEEL"))
        .collect();
    println!("{}", lines.join("\n"));
    assert!(
        lines.contains(&"KEEL done"),
        "the guest did not finish:\n{out}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("insmod")),
        "a module failed to load:\n{}",
        lines.join("\n")
    );
    for c in &cases {
        let result = lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("KEEL result {} ", c.name)))
            .unwrap_or_else(|| panic!("no result for {}:\n{}", c.name, lines.join("\n")));
        let kernel_lines: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("KEEL kernel {}: ", c.name)))
            .collect();
        let kernel_said = |c: &Case| {
            assert!(
                kernel_lines.iter().any(|l| l.contains(&c.kernel_says)),
                "{}: expected the kernel to say {:?}, it said:\n{}",
                c.name,
                c.kernel_says,
                kernel_lines.join("\n")
            );
        };
        if let Some(want) = &c.sha256 {
            assert_eq!(result, "read-ok", "{}: {}", c.name, kernel_lines.join("\n"));
            let got = lines
                .iter()
                .find_map(|l| l.strip_prefix(&format!("KEEL sha256 {} ", c.name)))
                .unwrap_or_default();
            assert!(
                got.starts_with(want.as_str()),
                "{}: the kernel read {got}, the original is {want}",
                c.name
            );
            kernel_said(c);
        } else if c.expect_ok {
            assert_eq!(result, "read-ok", "{}: {}", c.name, kernel_lines.join("\n"));
            assert!(
                !kernel_lines.iter().any(|l| l.contains("corrupted")),
                "{}: {:?}",
                c.name,
                kernel_lines
            );
        } else {
            assert_ne!(result, "read-ok", "{} was accepted", c.name);
            kernel_said(c);
        }
    }
    println!(
        "kernel suite: {} cases in {:.1} s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
}
