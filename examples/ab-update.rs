//! `ab-update`: a whole A/B update cycle in a temporary directory, narrated. The main job.
//!
//! ```text
//! cargo run --release --example ab-update [-- --keep DIR] [--policy chromeos|flatcar]
//!     [--interrupt] [--slot-mib N]
//! ```
//! It lays out a GPT disk with an ESP and two slots (keel-partition) and describes the
//! system (keel-config); writes version 1 of a root filesystem to slot A with its dm-verity
//! tree and a signed root hash (keel-verity); builds version 2 and a signed delta payload
//! 1 -> 2 (keel-payload), applies it to slot B from slot A and verifies B against its signed
//! root; arms B and simulates boots (keel-bootflags through keel-partition): B fails until
//! its tries run out and the boot loader falls back to A; re-armed, B comes up, is marked
//! good and stays. Every step is checked; any failed check exits non-zero.

#[macro_use]
#[path = "support/cli.rs"]
mod cli;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use keel::bootflags::{BootControl, PriorityPolicy, Slot};
use keel::io::testing::PowerCut;
use keel::io::Region;
use keel::partition::{create_layout, open_disk, AbDisk, GptDisk, Layout, SlotSelector};
use keel::payload::{apply, generate, ApplyOptions, GenerateOptions, VersionCheck};
use keel::verity::{
    format, verify, BuildOptions, FormatOptions, Keyring, RootDescriptor, SignRoot, SigningKey,
    VerifyRoot, VerityParams, WriteAt,
};

#[derive(Parser)]
#[command(name = "ab-update", about = "A whole A/B update cycle, narrated")]
struct Cli {
    /// Keep the artifacts in DIR instead of a temporary directory.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// The boot loader's rules.
    #[arg(long, value_enum, default_value_t = PolicyArg::Flatcar)]
    policy: PolicyArg,
    /// Cut the apply off half way (a power cut) and resume it.
    #[arg(long)]
    interrupt: bool,
    /// Slot size in MiB.
    #[arg(long, default_value_t = 96)]
    slot_mib: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum PolicyArg {
    Chromeos,
    Flatcar,
}

type Res<T> = Result<T, String>;

fn check(cond: bool, what: &str) -> Res<()> {
    if cond {
        println!("   check: {what}");
        Ok(())
    } else {
        Err(format!("check failed: {what}"))
    }
}

/// Text-like bytes (they compress like real files do) from a seed.
fn seeded(seed: u64, len: usize) -> Vec<u8> {
    keel_testsupport::seeded_bytes(seed, len)
        .into_iter()
        .map(|b| b"abcdefghij klmnop\n"[(b % 18) as usize])
        .collect()
}

/// The root filesystem tree of a version: version 2 changes some files, adds and removes others.
fn make_tree(dir: &Path, version: u32) -> Res<()> {
    let e = |e: io::Error| e.to_string();
    for d in ["usr/bin", "usr/lib", "usr/share/doc", "etc"] {
        fs::create_dir_all(dir.join(d)).map_err(e)?;
    }
    for i in 0..120u64 {
        let changed = version >= 2 && i % 10 == 3;
        let seed = if changed { 10_000 + i } else { i };
        let size = 4096 + (i as usize * 7919) % 150_000;
        fs::write(dir.join(format!("usr/lib/lib{i}.so")), seeded(seed, size)).map_err(e)?;
    }
    for i in 0..40u64 {
        if version >= 2 && i % 8 == 0 {
            continue;
        }
        fs::write(
            dir.join(format!("usr/bin/tool{i}")),
            seeded(500 + i, 20_000 + i as usize * 1000),
        )
        .map_err(e)?;
    }
    if version >= 2 {
        for i in 0..6u64 {
            fs::write(
                dir.join(format!("usr/share/doc/new{i}.txt")),
                seeded(900 + i, 60_000),
            )
            .map_err(e)?;
        }
    }
    fs::write(
        dir.join("etc/os-release"),
        format!("NAME=KeelOS\nVERSION_ID={version}.0\n"),
    )
    .map_err(e)?;
    Ok(())
}

/// An image of `size` bytes: ext4 from the tree when mkfs.ext4 is there, else the tree's
/// files laid end to end.
fn make_image(tree: &Path, out: &Path, size: u64) -> Res<&'static str> {
    let mkfs = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if let Some(mkfs) = mkfs {
        let _ = fs::remove_file(out);
        let st = Command::new(mkfs)
            .args([
                "-q",
                "-F",
                "-b",
                "4096",
                "-L",
                "keel-root",
                "-U",
                "4d1c0e7a-2b3c-4d5e-8f90-a1b2c3d4e5f6",
            ])
            .args(["-E", "hash_seed=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "-d"])
            .arg(tree)
            .arg(out)
            .arg(format!("{}k", size / 1024))
            .env("E2FSPROGS_FAKE_TIME", "1700000000")
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if st.success() {
            return Ok("ext4 (mkfs.ext4 -d)");
        }
    }
    let mut img = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|e| e.to_string())? {
            let p = e.map_err(|e| e.to_string())?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    for f in files {
        img.extend(fs::read(&f).map_err(|e| e.to_string())?);
        img.resize(img.len().div_ceil(4096) * 4096, 0);
    }
    img.resize(size as usize, 0);
    fs::write(out, img).map_err(|e| e.to_string())?;
    Ok("generated content (mkfs.ext4 not installed)")
}

/// The slots' partitions: number and label, A first.
type Partitions = Vec<(u32, String)>;

fn show(boot: &dyn BootControl, parts: &Partitions, title: &str) -> Res<()> {
    println!("   slot table ({title}):");
    let states = boot.status().map_err(|e| e.to_string())?;
    for (i, (st, (number, label))) in states.iter().zip(parts).enumerate() {
        println!(
            "     {}  partition {number}  {label:<6} priority {:>2}  tries {:>2}  successful {}",
            Slot::new(i).map_or('?', Slot::letter),
            st.priority,
            st.tries,
            if st.successful { "yes" } else { "no" }
        );
    }
    let next = boot.next_boot().map_err(|e| e.to_string())?;
    println!(
        "     next boot: {}",
        next.map_or("none".to_string(), |s| s.to_string())
    );
    Ok(())
}

fn run(cli: &Cli, dir: &Path) -> Res<()> {
    let started = Instant::now();
    let policy = match cli.policy {
        PolicyArg::Chromeos => PriorityPolicy::ChromeOs,
        PolicyArg::Flatcar => PriorityPolicy::Flatcar,
    };
    let slot_bytes = cli.slot_mib << 20;
    // The filesystem takes 7/8 of the slot; its dm-verity tree follows it in the slot.
    let image_bytes = (slot_bytes / 8 * 7) / 4096 * 4096;
    let disk = dir.join("disk.img");

    println!(
        "1. Lay out a GPT disk: ESP and two {} MiB slots (keel-partition)",
        cli.slot_mib
    );
    let f = File::create(&disk).map_err(|e| e.to_string())?;
    f.set_len(2 * slot_bytes + (10 << 20))
        .map_err(|e| e.to_string())?;
    let mut layout = Layout::flatcar(slot_bytes);
    layout.esp_size = 8 << 20;
    let disk_f = open_disk(&disk, true).map_err(|e| e.to_string())?;
    create_layout(&mut &disk_f, &layout).map_err(|e| e.to_string())?;
    let ab = AbDisk::new(
        GptDisk::open(&disk_f, None).map_err(|e| e.to_string())?,
        &SlotSelector::Auto,
        policy,
    )
    .map_err(|e| e.to_string())?;
    check(ab.disk().health().is_clean(), "both GPT copies valid")?;
    // Each slot as a device of its own: nothing written through it leaves the partition.
    let range = |slot| ab.slot_range(slot).map_err(|e| e.to_string());
    let ((a_start, a_len), (b_start, b_len)) = (range(Slot::A)?, range(Slot::B)?);
    let region = |start, len| Region::new(&disk_f, start, len).map_err(|e| e.to_string());
    let parts: Partitions = ab
        .slots()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|s| (s.partition.number, s.partition.name))
        .collect();
    // From here on the agent holds one boot-control value, whatever the backend.
    let mut boot: Box<dyn BootControl + '_> = Box::new(ab);
    println!("   boot loader rules: {}", boot.rules());
    show(&*boot, &parts, "new disk")?;

    println!("2. Describe the system (keel-config) and make the release key (keel-verity)");
    let key = SigningKey::generate().map_err(|e| e.to_string())?;
    let mut ring = Keyring::new();
    ring.add(key.public_key().clone())
        .map_err(|e| e.to_string())?;
    let backend = match cli.policy {
        PolicyArg::Chromeos => "gpt-chromeos",
        PolicyArg::Flatcar => "gpt-flatcar",
    };
    let config = format!(
        "version = \"1\"\ncompatible = \"keel-demo\"\n\n[boot]\nbackend = \"{backend}\"\ndisk = \"{}\"\n\n\
         [[slot]]\nname = \"usr.a\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-A\"\n\n\
         [[slot]]\nname = \"usr.b\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-B\"\n\n\
         [verity]\nalgorithm = \"sha256\"\n\n[[trust.key]]\nid = \"release\"\ned25519 = \"{}\"\n\n[update]\ntries = 2\n",
        disk.display(),
        hex::encode(key.public_key().to_bytes())
    );
    fs::write(dir.join("system.toml"), &config).map_err(|e| e.to_string())?;
    let loaded =
        keel::config::load_sources(&[(dir.join("system.toml").display().to_string(), config)]);
    for f in &loaded.findings {
        println!("   {f}");
    }
    let cfg = loaded.config.ok_or("the system description has errors")?;
    check(
        cfg.slots.len() == 2,
        "system description valid: two slots, one class",
    )?;
    let tries = keel::config::effective_tries(&cfg);

    println!("3. Build version 1 and write it to slot A with its dm-verity tree and signed root");
    let t1 = dir.join("rootfs-v1");
    make_tree(&t1, 1)?;
    let kind = make_image(&t1, &dir.join("v1.img"), image_bytes)?;
    println!("   image: {kind}, {} MiB", image_bytes >> 20);
    let v1 = fs::read(dir.join("v1.img")).map_err(|e| e.to_string())?;
    let mut slot_a = region(a_start, a_len)?;
    slot_a.write_all_at(&v1, 0).map_err(|e| e.to_string())?;
    let params = VerityParams::builder()
        .data_blocks_for(image_bytes)
        .build()
        .map_err(|e| e.to_string())?;
    let opts = FormatOptions::default()
        .hash_offset(image_bytes)
        .superblock([7; 16]);
    let data = region(a_start, image_bytes)?;
    let f1 = format(&params, &data, &mut slot_a, &opts).map_err(|e| e.to_string())?;
    let signed1 = key
        .sign_root(&RootDescriptor::new(params.clone(), &f1.root_hash).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    fs::write(dir.join("v1.root.sig"), signed1.to_bytes()).map_err(|e| e.to_string())?;
    println!("   root hash {}", hex::encode(&f1.root_hash));
    let d1 = ring
        .verify_root(&signed1.to_bytes())
        .map_err(|e| e.to_string())?;
    verify(
        d1.descriptor.params(),
        &f1.geometry,
        &data,
        &slot_a,
        d1.descriptor.root_hash(),
        &BuildOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    check(true, "slot A verifies against its signed root hash")?;

    println!("4. Build version 2 and a signed delta payload 1 -> 2 (keel-payload)");
    let t2 = dir.join("rootfs-v2");
    make_tree(&t2, 2)?;
    make_image(&t2, &dir.join("v2.img"), image_bytes)?;
    let v2 = fs::read(dir.join("v2.img")).map_err(|e| e.to_string())?;
    let tree2 = keel::verity::HashTree::build(&params, &v2).map_err(|e| e.to_string())?;
    let f2root = tree2.root_hash().to_vec();
    let desc2 = RootDescriptor::new(params.clone(), &f2root).map_err(|e| e.to_string())?;
    let signed2 = key.sign_root(&desc2).map_err(|e| e.to_string())?;
    fs::write(dir.join("v2.root.sig"), signed2.to_bytes()).map_err(|e| e.to_string())?;
    let gopts = GenerateOptions::new("keel-demo", "2.0")
        .verity(desc2.clone())
        .level(9);
    let t = Instant::now();
    let payload = generate(Some(&v1), &v2, &key, &gopts).map_err(|e| e.to_string())?;
    fs::write(dir.join("update-1-to-2.payload"), &payload).map_err(|e| e.to_string())?;
    println!(
        "   payload: {} bytes for a {} MiB image ({:.2}%), {:.1} s",
        payload.len(),
        image_bytes >> 20,
        100.0 * payload.len() as f64 / image_bytes as f64,
        t.elapsed().as_secs_f64()
    );
    drop(v1);

    println!("5. Apply it to slot B, reading slot A, then write and check B's verity tree");
    boot.mark_bad(Slot::B).map_err(|e| e.to_string())?;
    let source = region(a_start, image_bytes)?;
    let mut slot_b = region(b_start, b_len)?;
    let mut target = region(b_start, image_bytes)?;
    let state = dir.join("apply.state");
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("   [{bar:40}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let observer = |done: u64, total: u64| {
        pb.set_length(total);
        pb.set_position(done);
    };
    let aopts = ApplyOptions::new(&ring, VersionCheck::Installed("1.0"))
        .compatible("keel-demo")
        .state(&state)
        .progress(&observer)
        .checkpoint_bytes(1 << 20);
    if cli.interrupt {
        let ops = keel::payload::read_manifest(&mut &payload[..], &ring)
            .map_err(|e| e.to_string())?
            .1
            .operations
            .len();
        let mut cut = PowerCut::new(&mut target, ops / 2, 0);
        let r = apply(&payload[..], Some(&source), &mut cut, &aopts);
        pb.finish_and_clear();
        check(
            r.is_err(),
            &format!("power cut after {} of {ops} operations", ops / 2),
        )?;
        check(state.exists(), "the resume record survived the cut")?;
    }
    let applied =
        apply(&payload[..], Some(&source), &mut target, &aopts).map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    if cli.interrupt {
        check(
            applied.resumed_at > 0,
            &format!("resumed at operation {}", applied.resumed_at),
        )?;
    }
    check(
        true,
        "slot B holds version 2 (sha256 and dm-verity root checked by the applier)",
    )?;
    let data_b = region(b_start, image_bytes)?;
    // The device computes the tree itself: the payload does not carry it.
    let fb = format(&params, &data_b, &mut slot_b, &opts).map_err(|e| e.to_string())?;
    let signed2 = fs::read(dir.join("v2.root.sig")).map_err(|e| e.to_string())?;
    let d2 = ring.verify_root(&signed2).map_err(|e| e.to_string())?;
    verify(
        d2.descriptor.params(),
        &fb.geometry,
        &data_b,
        &slot_b,
        d2.descriptor.root_hash(),
        &BuildOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    check(
        fb.root_hash == f2root,
        "slot B verifies against the signed root hash of version 2",
    )?;
    show(&*boot, &parts, "after the apply, before arming")?;

    println!("6. Arm B with {tries} tries; B fails to come up healthy every time");
    boot.set_active(Slot::B, Some(tries))
        .map_err(|e| e.to_string())?;
    show(&*boot, &parts, "B armed")?;
    let mut boots_of_b = 0;
    for n in 1..=u32::from(tries) + 2 {
        let chosen = boot
            .boot()
            .map_err(|e| e.to_string())?
            .ok_or("no bootable slot")?;
        println!(
            "   boot {n}: the boot loader chooses {chosen}{}",
            if chosen == Slot::B {
                "; it does not come up healthy"
            } else {
                "; it comes up healthy"
            }
        );
        if chosen == Slot::B {
            boots_of_b += 1;
        } else {
            boot.mark_good(Slot::A).map_err(|e| e.to_string())?;
            break;
        }
    }
    show(&*boot, &parts, "after the failed tries")?;
    check(
        boots_of_b == u32::from(tries),
        &format!("B was tried exactly {tries} times"),
    )?;
    check(
        boot.next_boot().map_err(|e| e.to_string())? == Some(Slot::A),
        "the boot loader fell back to A and stays there",
    )?;

    println!("7. Re-arm B; this time it comes up healthy and is marked good");
    boot.set_active(Slot::B, Some(tries))
        .map_err(|e| e.to_string())?;
    let chosen = boot.boot().map_err(|e| e.to_string())?;
    check(chosen == Some(Slot::B), "the boot loader chooses B")?;
    verify(
        &params,
        &fb.geometry,
        &data_b,
        &slot_b,
        &fb.root_hash,
        &BuildOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    boot.mark_good(Slot::B).map_err(|e| e.to_string())?;
    for n in 1..=3 {
        let c = boot.boot().map_err(|e| e.to_string())?;
        check(c == Some(Slot::B), &format!("boot {n} after mark-good: B"))?;
    }
    show(&*boot, &parts, "B good")?;
    let g = GptDisk::open(open_disk(&disk, false).map_err(|e| e.to_string())?, None)
        .map_err(|e| e.to_string())?;
    check(
        g.health().is_clean(),
        "both GPT copies still valid after every flag update",
    )?;
    println!(
        "Done in {:.1} s: version 2 runs from slot B; slot A keeps version 1 as the fallback.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (dir, temp) = match &cli.keep {
        Some(d) => {
            if let Err(e) = fs::create_dir_all(d) {
                eprintln!("ab-update: {}: {e}", d.display());
                return ExitCode::FAILURE;
            }
            (d.clone(), None)
        }
        None => {
            let d = std::env::temp_dir().join(format!("keel-ab-update-{}", std::process::id()));
            (d.clone(), Some(d))
        }
    };
    let _ = fs::create_dir_all(&dir);
    let r = run(&cli, &dir);
    if let Some(t) = temp {
        let _ = fs::remove_dir_all(t);
    } else {
        println!("artifacts kept in {}", dir.display());
    }
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ab-update: {e}");
            ExitCode::FAILURE
        }
    }
}
