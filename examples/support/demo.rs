//! The demonstration's image builder, shared by `ab-update` and `update demo`: seeded
//! root filesystems as ext4 images, a GPT disk with version 1 in slot A (its dm-verity
//! tree after it), a signed delta payload to version 2, the system description, and the
//! slot table as the examples print it. Included with `#[path = "support/demo.rs"] mod demo;`.
#![allow(dead_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use keel::bootflags::{BootControl, Slot};
use keel::io::{Region, WriteAt};
use keel::partition::gpt::Partition;
use keel::partition::{create_layout, GptDisk, Layout};
use keel::payload::{generate_bundle, BundlePart, GenerateOptions};
use keel::verity::{format, FormatOptions, RootDescriptor, SignRoot, SigningKey, VerityParams};

pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Version `v` of a root filesystem as an ext4 image of `size` bytes: version 2 changes
/// some libraries, drops some tools and adds documents.
pub(crate) fn make_image(dir: &Path, v: u64, size: u64) -> Res<Vec<u8>> {
    let tree = dir.join(format!("rootfs-v{v}"));
    let text = |seed, len| -> Vec<u8> {
        let b = keel_testsupport::seeded_bytes(seed, len);
        b.iter()
            .map(|x| b"abcdefghij klmnop\n"[(x % 18) as usize])
            .collect()
    };
    let mut files = vec![(
        "etc/os-release".to_string(),
        format!("VERSION_ID={v}.0\n").into_bytes(),
    )];
    for i in 0..120u64 {
        let seed = if v >= 2 && i % 10 == 3 { 10_000 + i } else { i };
        files.push((
            format!("usr/lib/lib{i}.so"),
            text(seed, 4096 + (i as usize * 7919) % 150_000),
        ));
    }
    for i in (0..40u64).filter(|i| v < 2 || i % 8 != 0) {
        files.push((
            format!("usr/bin/tool{i}"),
            text(500 + i, 20_000 + i as usize * 1000),
        ));
    }
    for i in (0..6u64).filter(|_| v >= 2) {
        files.push((format!("usr/share/doc/new{i}.txt"), text(900 + i, 60_000)));
    }
    for (name, bytes) in files {
        let p = tree.join(name);
        fs::create_dir_all(p.parent().ok_or("no parent")?)?;
        fs::write(p, bytes)?;
    }
    let out = dir.join(format!("v{v}.img"));
    let _ = fs::remove_file(&out);
    let st = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-b",
            "4096",
            "-U",
            "4d1c0e7a-2b3c-4d5e-8f90-a1b2c3d4e5f6",
        ])
        .args(["-E", "hash_seed=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "-d"])
        .arg(&tree)
        .arg(&out)
        .arg(format!("{}k", size / 1024))
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|err| format!("mkfs.ext4 (e2fsprogs, see .ci/packages): {err}"))?;
    if !st.success() {
        // mkfs.ext4 -d fails this way when the files do not fit.
        return Err(format!(
            "version {v}'s root filesystem (about 12 MiB of files) does not fit a {} MiB \
             image: give a larger --slot-mib (the image takes 7/8 of a slot)",
            size >> 20
        )
        .into());
    }
    println!("   version {v}: ext4 image by mkfs.ext4 -d");
    Ok(fs::read(out)?)
}

/// Version `v` of the kernel the slots boot (a stand-in of 3 MiB: the demo boots nothing):
/// version 2 changes a tenth of it, as a kernel update with a few changed drivers does.
pub(crate) fn make_kernel(v: u64) -> Vec<u8> {
    let mut k = keel_testsupport::seeded_bytes(77, 3 << 20);
    if v >= 2 {
        let at = 1 << 20;
        k[at..at + (300 << 10)].copy_from_slice(&keel_testsupport::seeded_bytes(78 + v, 300 << 10));
    }
    k
}

/// Where the description puts each slot's kernel on the running system (the ESP), and
/// where slot `letter`'s is under the device root `root`.
pub(crate) const KERNEL_PATH: &str = "/efi/keel/{slot}/vmlinuz";

pub(crate) fn kernel_file(root: &Path, letter: char) -> PathBuf {
    root.join(
        KERNEL_PATH
            .trim_start_matches('/')
            .replace("{slot}", &letter.to_ascii_lowercase().to_string()),
    )
}

pub(crate) fn show(boot: &dyn BootControl, parts: &[(u32, String)], title: &str) -> Res<()> {
    println!("   slot table ({title}):");
    for (i, (st, (number, label))) in boot.status()?.iter().zip(parts).enumerate() {
        println!(
            "     {}  partition {number}  {label:<6} priority {:>2}  tries {:>2}  successful {}",
            Slot::new(i).map_or('?', Slot::letter),
            st.priority,
            st.tries,
            if st.successful { "yes" } else { "no" }
        );
    }
    let next = boot.next_boot()?;
    println!(
        "     next boot: {}",
        next.map_or("none".into(), |s| s.to_string())
    );
    Ok(())
}

/// What [`build`] made.
pub(crate) struct Demo {
    /// The disk image.
    pub(crate) disk: PathBuf,
    /// The two slots' partitions, A first.
    pub(crate) slots: Vec<Partition>,
    /// The release key.
    pub(crate) key: SigningKey,
    /// The system description (also written to `system.toml`).
    pub(crate) description: String,
    /// The bundle 1 -> 2 (also written to `update-1-to-2.payload`): the usr image and
    /// the kernel, both deltas.
    pub(crate) payload: Vec<u8>,
    /// The kernels of versions 1 and 2 (slot A's is on the device root's ESP).
    pub(crate) kernels: [Vec<u8>; 2],
    /// Version 2's dm-verity root hash.
    pub(crate) root2: Vec<u8>,
    /// Version 1's signed root (also in `v1.root.sig`).
    pub(crate) signed1: Vec<u8>,
}

/// In `dir`: a GPT disk with an ESP and two slots of `slot_bytes` (USR-A, USR-B) with
/// version 1 and its dm-verity tree in A, slot A's kernel on the device root's ESP
/// (`dir/root/efi/keel/a/vmlinuz`), its signed root, version 2's signed root, the signed
/// bundle 1 -> 2 (usr and kernel), and the description for `backend`. Each step narrated.
pub(crate) fn build(dir: &Path, slot_bytes: u64, backend: &str) -> Res<Demo> {
    // A directory others can write to: they could plant a symlink after the check
    // below and have the demo write through it.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .permissions(),
    );
    if mode & 0o022 != 0 {
        return Err(format!(
            "{}: writable by others (mode {:o}); the demo writes into a directory only its user can write",
            dir.display(),
            mode & 0o777
        )
        .into());
    }
    // A fresh directory only: whatever stands there (a file, a symlink planted to
    // another file or directory) would be written through.
    if std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .next()
        .is_some()
    {
        return Err(format!(
            "{}: not empty; the demo writes a disk, a description, keys and a payload into a new or empty directory",
            dir.display()
        )
        .into());
    }
    // The filesystem takes 7/8 of the slot; its dm-verity tree follows it in the slot.
    let image_bytes = (slot_bytes / 8 * 7) / 4096 * 4096;
    // Absolute: the description is read by an agent running from any directory.
    let dir = &std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let disk = dir.join("disk.img");
    let disk_f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&disk)?;
    disk_f.set_len(2 * slot_bytes + (10 << 20))?;
    let mut layout = Layout::flatcar(slot_bytes);
    layout.esp_size = 8 << 20;
    create_layout(&mut &disk_f, &layout)?;
    let gpt = GptDisk::open(&disk_f, None)?;
    let slots: Vec<_> = gpt
        .partitions()
        .into_iter()
        .filter(|p| p.name.starts_with("USR-"))
        .collect();
    println!(
        "   disk: GPT, ESP and two {} MiB slots; both copies valid: {}",
        slot_bytes >> 20,
        gpt.health().is_clean()
    );

    let key = SigningKey::generate()?;
    // Kept with the other artifacts, so that they can be inspected and signed again.
    // A private key: owner-only, and never written through a symlink planted in DIR.
    keel::io::replace_file_private(&dir.join("release-key.pem"), key.to_pkcs8_pem()?.as_bytes())?;
    fs::write(
        dir.join("release-key.pub"),
        key.public_key().to_pem()?.as_bytes(),
    )?;
    let description = format!(
        "version = \"1\"\ncompatible = \"keel-demo\"\n\n[boot]\nbackend = \"{backend}\"\ndisk = \"{}\"\n\n\
         [[slot]]\nname = \"usr.a\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-A\"\n\n\
         [[slot]]\nname = \"usr.b\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-B\"\n\n\
         [[file]]\nclass = \"vmlinuz\"\npath = \"{KERNEL_PATH}\"\n\n\
         [verity]\nalgorithm = \"sha256\"\n\n[[trust.key]]\nid = \"release\"\ned25519 = \"{}\"\n\n[update]\ntries = 2\n",
        disk.display(),
        hex::encode(key.public_key().to_bytes())
    );
    fs::write(dir.join("system.toml"), &description)?;

    // Version 1 in slot A, its tree after it, as the image builder ships the disk.
    let v1 = make_image(dir, 1, image_bytes)?;
    let (a, ss) = (&slots[0], gpt.sector_size());
    let mut slot_a = Region::new(&disk_f, a.first_lba * ss, a.sectors() * ss)?;
    slot_a.write_all_at(&v1, 0)?;
    let params = VerityParams::builder()
        .data_blocks_for(image_bytes)
        .build()?;
    let data = Region::new(&disk_f, a.first_lba * ss, image_bytes)?;
    let f1 = format(
        &params,
        &data,
        &mut slot_a,
        &FormatOptions::default().hash_offset(image_bytes),
    )?;
    let signed1 = key
        .sign_root(&RootDescriptor::new(params.clone(), &f1.root_hash)?)?
        .to_bytes();
    fs::write(dir.join("v1.root.sig"), &signed1)?;
    println!(
        "   slot A: version 1, root hash {}",
        hex::encode(&f1.root_hash)
    );

    // Version 2 and the delta, its signed root inside the signed payload.
    let v2 = make_image(dir, 2, image_bytes)?;
    let root2 = keel::verity::HashTree::build(&params, &v2)?
        .root_hash()
        .to_vec();
    let desc2 = RootDescriptor::new(params, &root2)?;
    fs::write(dir.join("v2.root.sig"), key.sign_root(&desc2)?.to_bytes())?;
    // The kernels: slot A's on the ESP as the image builder ships it.
    let kernels = [make_kernel(1), make_kernel(2)];
    let a_kernel = kernel_file(&dir.join("root"), 'A');
    fs::create_dir_all(a_kernel.parent().ok_or("no parent")?)?;
    fs::write(&a_kernel, &kernels[0])?;
    fs::write(dir.join("vmlinuz-1"), &kernels[0])?;
    fs::write(dir.join("vmlinuz-2"), &kernels[1])?;
    println!(
        "   ESP: slot A's kernel at {}; slot B's goes to {}",
        KERNEL_PATH.replace("{slot}", "a"),
        KERNEL_PATH.replace("{slot}", "b")
    );
    let gopts = GenerateOptions::new("keel-demo", "2.0").level(9);
    let parts = [
        BundlePart::slot("usr", Some(&v1), &v2).verity(&desc2),
        BundlePart::file("vmlinuz", Some(&kernels[0]), &kernels[1]),
    ];
    let payload = generate_bundle(&parts, &key, &gopts, None)?;
    fs::write(dir.join("update-1-to-2.payload"), &payload)?;
    let pct = 100.0 * payload.len() as f64 / (image_bytes as f64 + kernels[1].len() as f64);
    println!(
        "   bundle: usr and vmlinuz, {} bytes for a {} MiB image and a {} MiB kernel ({pct:.2}%)",
        payload.len(),
        image_bytes >> 20,
        kernels[1].len() >> 20
    );
    Ok(Demo {
        disk,
        slots,
        key,
        description,
        payload,
        kernels,
        root2,
        signed1,
    })
}

/// A device's view of itself under `root`: /proc/cmdline saying `/usr` is `slot`'s
/// partition, and /etc/os-release at version 1.0.
pub(crate) fn boot_from(root: &Path, slot: &Partition) -> Res<()> {
    fs::create_dir_all(root.join("proc"))?;
    fs::create_dir_all(root.join("etc"))?;
    if !root.join("etc/os-release").exists() {
        fs::write(root.join("etc/os-release"), "VERSION_ID=1.0\n")?;
    }
    fs::write(
        root.join("proc/cmdline"),
        format!("ro mount.usr=PARTUUID={}\n", slot.guid),
    )?;
    Ok(())
}
