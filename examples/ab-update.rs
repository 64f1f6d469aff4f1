//! `ab-update`: a whole A/B update cycle in a temporary directory, narrated. The main job.
//!
//! ```text
//! cargo run --release --example ab-update [-- --keep DIR] [--policy chromeos|flatcar]
//!     [--interrupt] [--slot-mib N]
//! ```
//! The image builder's side: a GPT disk with an ESP and two slots (keel-partition), version
//! 1 in slot A with its dm-verity tree and signed root (keel-verity) and slot A's kernel on
//! the ESP, version 2 with a new kernel and a signed bundle 1 -> 2 of both (keel-payload).
//! The device's side is keel-update: from the system description (keel-config) it installs
//! the bundle into slot B's partition and B's kernel file (verified against the signed
//! root, armed only once both are in place; A's kernel untouched), and commits B after it
//! boots. Boots are simulated with the boot
//! loader's own rules: B fails until its tries run out and the boot loader falls back to
//! A; re-armed, B comes up and is committed. Every step is checked; a failed check exits 1.

#[macro_use]
#[path = "support/cli.rs"]
mod cli;
#[path = "support/demo.rs"]
mod demo;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use keel::bootflags::Slot;
use keel::io::testing::PowerCut;
use keel::io::{Region, Shared};
use keel::partition::GptDisk;
use keel::update::{Agent, Commit, HealthCheck, System};
use keel::verity::VerifyRoot;

#[derive(Parser)]
#[command(name = "ab-update", about = "A whole A/B update cycle, narrated")]
struct Cli {
    /// Keep the artifacts in DIR instead of a temporary directory.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// The boot loader's rules.
    #[arg(long, value_enum, default_value_t = PolicyArg::Flatcar)]
    policy: PolicyArg,
    /// Cut the power half way through the install and install again.
    #[arg(long)]
    interrupt: bool,
    /// Slot size in MiB (1 to 65536).
    #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    slot_mib: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum PolicyArg {
    Chromeos,
    Flatcar,
}

use demo::{show, Res};

fn check(cond: bool, what: &str) -> Res<()> {
    if !cond {
        return Err(format!("check failed: {what}").into());
    }
    println!("   check: {what}");
    Ok(())
}

fn run(cli: &Cli, dir: &Path) -> Res<()> {
    println!("1-4. The image builder: disk, description, version 1 in slot A, bundle to 2");
    let backend = ["gpt-chromeos", "gpt-flatcar"][cli.policy as usize];
    let demo = demo::build(dir, cli.slot_mib << 20, backend)?;
    let disk_f = File::options().read(true).write(true).open(&demo.disk)?;
    let gpt = GptDisk::open(&disk_f, None)?;
    check(gpt.health().is_clean(), "both GPT copies valid")?;
    let path = dir.join("system.toml").display().to_string();
    let loaded = keel::config::load_sources(&[(path, demo.description.clone())]);
    loaded.findings.iter().for_each(|f| println!("   {f}"));
    let cfg = loaded.config.ok_or("the system description has errors")?;
    check(
        cfg.slots.len() == 2 && cfg.files.len() == 1,
        "system description valid: two slots of one class, a kernel file per slot",
    )?;
    let system = System::from_config(&cfg)?;
    let d1 = system.keyring.verify_root(&demo.signed1)?;
    let (a, ss) = (&demo.slots[0], gpt.sector_size());
    let image = d1.descriptor.params().data_size();
    let geometry = keel::verity::TreeGeometry::new(d1.descriptor.params(), image, false)?;
    let data = Region::new(&disk_f, a.first_lba * ss, image)?;
    let slot_a = Region::new(&disk_f, a.first_lba * ss, a.sectors() * ss)?;
    let root1 = d1.descriptor.root_hash();
    keel::verity::verify(
        d1.descriptor.params(),
        &geometry,
        &data,
        &slot_a,
        root1,
        &Default::default(),
    )?;
    check(true, "slot A verifies against its signed root hash")?;
    let parts: Vec<(u32, String)> = demo
        .slots
        .iter()
        .map(|p| (p.number, p.name.clone()))
        .collect();
    let payload = &demo.payload;
    let root2 = &demo.root2;

    println!(
        "5. The device installs it (keel-update): running A, it writes B's usr partition and \
         B's kernel, verifies them and arms B"
    );
    // The device's view: the kernel booted /usr from slot A, running version 1.0.
    let root = dir.join("root");
    demo::boot_from(&root, a)?;
    let state = dir.join("state");
    if cli.interrupt {
        // The power goes when half of the image is written.
        let cut = Shared::new(PowerCut::new(&disk_f, usize::MAX, 0));
        let half = |done: u64, total: u64| {
            let mut d = cut.lock();
            if done >= total / 2 && d.allowed == usize::MAX {
                d.allowed = d.writes;
            }
        };
        let agent = Agent::new(system.clone(), &cut)
            .root(&root)
            .state_dir(&state)
            .checkpoint_bytes(1 << 20);
        check(
            agent.install(&payload[..], Some(&half)).is_err(),
            "power cut half way through the install",
        )?;
        check(
            state.join("resume-B").exists(),
            "the resume record survived the cut",
        )?;
    }
    let agent = Agent::new(system, &disk_f)
        .root(&root)
        .state_dir(&state)
        .checkpoint_bytes(1 << 20);
    check(
        agent.booted_slot()? == Slot::A,
        "the agent sees it runs from slot A",
    )?;
    let done = agent.install(&payload[..], None)?;
    if cli.interrupt {
        check(
            done.resumed_at > 0,
            &format!(
                "resumed at operation {}: the last checkpoint before the cut (everything \
                 before it was durable and recorded)",
                done.resumed_at
            ),
        )?;
    }
    check(
        done.slot == Slot::B && done.root_hash.as_deref() == Some(&root2[..]),
        "slot B verifies against the signed root hash of version 2",
    )?;
    check(
        done.images == ["usr", "vmlinuz"],
        "both images of the bundle installed: usr and vmlinuz",
    )?;
    check(
        fs::read(demo::kernel_file(&root, 'B'))? == demo.kernels[1],
        &format!(
            "slot B's kernel ({}) is version 2's",
            demo::KERNEL_PATH.replace("{slot}", "b")
        ),
    )?;
    check(
        fs::read(demo::kernel_file(&root, 'A'))? == demo.kernels[0],
        "slot A's kernel, the running one, is untouched: the fallback boots version 1's kernel",
    )?;
    let mut boot = agent.boot_control()?;
    println!("   the simulated boot loader follows {}", boot.rules());
    show(&*boot, &parts, "B installed and armed")?;

    println!("6. B fails to come up healthy every time it is tried");
    let mut boots_of_b = 0;
    while boots_of_b < 10 && boot.boot()? == Some(Slot::B) {
        boots_of_b += 1;
        println!("   boot {boots_of_b}: the boot loader chooses B; it does not come up healthy");
    }
    println!(
        "   B has no tries left: the boot loader chooses A; it comes up healthy (A is still \
         marked good from before, so nothing about A changes)"
    );
    show(&*boot, &parts, "after the failed tries")?;
    check(boots_of_b == 2, "B was tried exactly 2 times")?;
    check(
        boot.next_boot()? == Some(Slot::A),
        "the boot loader fell back to A and stays there",
    )?;

    println!("7. Re-arm B; it comes up, passes its health check and is committed");
    boot.set_active(Slot::B, Some(2))?;
    check(boot.boot()? == Some(Slot::B), "the boot loader chooses B")?;
    demo::boot_from(&root, &demo.slots[1])?;
    let healthy = HealthCheck::Command {
        name: "os-release".into(),
        argv: vec![
            "test".into(),
            "-s".into(),
            root.join("etc/os-release").display().to_string(),
        ],
        timeout: std::time::Duration::from_secs(10),
    };
    check(
        agent.commit(&[healthy])? == Commit::Committed(Slot::B),
        "B committed",
    )?;
    // The commit went to the disk through the agent; the simulated boot loader reads it.
    let mut boot = agent.boot_control()?;
    for n in 1..=3 {
        check(
            boot.boot()? == Some(Slot::B),
            &format!("boot {n} after mark-good: B"),
        )?;
    }
    show(&*boot, &parts, "B good")?;
    let status = serde_json::to_string(&agent.status()?)?;
    println!("   status: {status}");
    check(
        GptDisk::open(&disk_f, None)?.health().is_clean(),
        "both GPT copies still valid after every flag update",
    )?;
    println!("Done: version 2 runs from slot B; slot A keeps version 1 as the fallback.");
    println!("Try next:");
    println!("   --keep DIR: keep the disk, description, payload, signed roots and release key");
    println!("   --interrupt: cut the power half way through the install; the rerun resumes");
    println!("   --policy chromeos: ChromeOS firmware's rules instead of Flatcar's GRUB");
    println!("   cargo run --example update -- demo DIR: the agent as a command (install, commit,");
    println!("      status --json) on a disk of your own; the verity, payload, slots and");
    println!("      bootstate examples for each piece (README, Examples)");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let temp = std::env::temp_dir().join(format!("keel-ab-update-{}", std::process::id()));
    let dir = cli.keep.clone().unwrap_or_else(|| temp.clone());
    // Made for this user alone: nobody else can plant files in it while it is written.
    let made = std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
        .create(&dir);
    let r = match made {
        Ok(()) => run(&cli, &dir),
        Err(err) => Err(format!("{}: {err}", dir.display()).into()),
    };
    match &cli.keep {
        Some(d) => println!("artifacts kept in {}", d.display()),
        None => drop(fs::remove_dir_all(&temp)),
    }
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ab-update: {err}");
            ExitCode::FAILURE
        }
    }
}
