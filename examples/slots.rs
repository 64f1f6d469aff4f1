//! `slots`: A/B slots in the GPT of a disk or image, with crash-safe flag updates.
//!
//! ```text
//! cargo run --example slots -- DISK show
//! cargo run --example slots -- DISK create --slot-size BYTES [--esp-size BYTES]
//!         [--labels A_LABEL,B_LABEL] [--type usr|root-x86-64|...|GUID] [--sector-size 512|4096]
//! cargo run --example slots -- DISK set-active SLOT [--tries N]
//! cargo run --example slots -- DISK mark-good SLOT | mark-bad SLOT
//! cargo run --example slots -- DISK boot [--policy chromeos|flatcar]
//! cargo run --example slots -- DISK repair
//! ```
//! SLOT is A, B or a partition number. Slots are found by their labels (USR-A/USR-B,
//! root-a/root-b, ...) or type unless `--slots A_LABEL,B_LABEL` or `--slot-numbers N,M`
//! names them. `create` makes DISK (an image) if it does not exist: give `--disk-size`. It
//! refuses a disk that already holds a GPT or an MBR with partitions unless `--force`.

#[macro_use]
#[path = "support/cli.rs"]
mod cli;
#[path = "support/boot.rs"]
mod boot;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use boot::BootCmd;
use clap::{Parser, Subcommand, ValueEnum};
use keel::bootflags::PriorityPolicy;
use keel::partition::{
    create_layout, existing_table, open_disk, reread_partitions, types, AbDisk, CopyState, GptDisk,
    Layout, SlotSelector,
};

#[derive(Parser)]
#[command(name = "slots", about = "A/B slots in a GPT, crash-safe")]
struct Cli {
    /// Disk image or block device.
    disk: PathBuf,
    /// The slots' labels, `A_LABEL,B_LABEL`, if not a known pair.
    #[arg(long)]
    slots: Option<String>,
    /// The slots' partition numbers, `N,M`.
    #[arg(long)]
    slot_numbers: Option<String>,
    /// Boot loader rules (default: ChromeOS firmware's when the slots have ChromeOS
    /// partition types, else Flatcar GRUB's; the command says which it used).
    #[arg(long, value_enum, global = true)]
    policy: Option<PolicyArg>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum PolicyArg {
    Chromeos,
    Flatcar,
}

#[derive(Subcommand)]
enum Cmd {
    /// The table's health and both slots.
    Show,
    /// Lay out an A/B disk: protective MBR, GPT, ESP, two slots.
    Create {
        /// Each slot's size in bytes (size suffixes: 512M, 2G).
        #[arg(long, value_parser = cli::parse_size)]
        slot_size: u64,
        /// The ESP's size in bytes; 0 for none (size suffixes: 64M).
        #[arg(long, default_value = "64M", value_parser = cli::parse_size)]
        esp_size: u64,
        /// `A_LABEL,B_LABEL`.
        #[arg(long, default_value = "USR-A,USR-B")]
        labels: String,
        /// A type name (usr, root-x86-64, root-aarch64, usr-x86-64, chromeos-kernel,
        /// chromeos-rootfs, linux-data) or a type GUID.
        #[arg(long = "type", default_value = "usr")]
        type_: String,
        /// Logical sector size of an image: 512 or 4096 (a block device's own is used).
        #[arg(long, default_value_t = 512)]
        sector_size: u64,
        /// Create the image file with this size first (DISK must not exist; size suffixes:
        /// 8G).
        #[arg(long, value_parser = cli::parse_size)]
        disk_size: Option<u64>,
        /// Overwrite a partition table that is already there (and let --disk-size resize
        /// an existing image).
        #[arg(long)]
        force: bool,
    },
    #[command(flatten)]
    Change(BootCmd),
    /// Rewrite a damaged or diverged copy of the table from the one in force.
    Repair,
}

fn open(disk: &Path, writable: bool) -> Result<GptDisk<File>, String> {
    let dev = open_disk(disk, writable).map_err(|e| e.to_string())?;
    GptDisk::open(dev, None).map_err(|e| e.to_string())
}

fn show(ab: &AbDisk<File>) -> Result<(), String> {
    let disk = ab.disk();
    let h = disk.health();
    let state = |c: &CopyState| match c {
        CopyState::Good => "good".to_string(),
        CopyState::Bad(why) => format!("DAMAGED ({why})"),
    };
    println!(
        "table: primary {}, backup {}{}",
        state(&h.primary),
        state(&h.backup),
        if h.diverged { ", DIVERGED" } else { "" }
    );
    println!(
        "sector size {} bytes, {} sectors",
        disk.sector_size(),
        disk.disk_sectors()
    );
    println!("slot  part  label             type                                  partuuid                              first LBA   last LBA       size  P  T  S");
    for s in ab.slots().map_err(|e| e.to_string())? {
        let p = &s.partition;
        println!(
            "{:>4}  {:>4}  {:<16}  {}  {}  {:>9}  {:>9}  {:>9}  {:>1}  {:>1}  {}",
            s.slot.letter(),
            p.number,
            p.name,
            p.type_guid,
            p.guid,
            p.first_lba,
            p.last_lba,
            human(s.size_bytes(disk.sector_size())),
            s.state.priority,
            s.state.tries,
            u8::from(s.state.successful)
        );
    }
    match ab.next_boot().map_err(|e| e.to_string())? {
        Some(s) => println!("next boot: {s}"),
        None => println!("next boot: none"),
    }
    Ok(())
}

fn pair(what: &str, s: &str) -> Result<(String, String), String> {
    match s.split_once(',') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(',') => {
            Ok((a.to_string(), b.to_string()))
        }
        _ => Err(format!(
            "{what}: expected two values separated by a comma, found {s:?}"
        )),
    }
}

fn human(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1}G", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{}M", b >> 20)
    }
}

/// The rules to apply: `--policy`, else what the slots' partition type says; printed
/// with the reason, so nobody has to guess which boot loader was simulated.
fn rules(
    given: Option<PolicyArg>,
    parts: &[keel::partition::gpt::Partition],
    selector: &SlotSelector,
) -> PriorityPolicy {
    let (policy, why) = match given {
        Some(PolicyArg::Chromeos) => (PriorityPolicy::ChromeOs, "--policy chromeos"),
        Some(PolicyArg::Flatcar) => (PriorityPolicy::Flatcar, "--policy flatcar"),
        None => {
            let chromeos = keel::partition::find_slots(parts, selector).is_ok_and(|s| {
                s.iter().any(|p| {
                    p.type_guid == types::chromeos_kernel()
                        || p.type_guid == types::chromeos_rootfs()
                })
            });
            if chromeos {
                (
                    PriorityPolicy::ChromeOs,
                    "the slots have ChromeOS partition types",
                )
            } else {
                (
                    PriorityPolicy::Flatcar,
                    "assumed: the slots' type is not ChromeOS's; --policy chromeos to change",
                )
            }
        }
    };
    let name = match policy {
        PriorityPolicy::ChromeOs => "ChromeOS firmware",
        _ => "Flatcar GRUB gptprio",
    };
    println!("rules: {name} ({why})");
    policy
}

fn run(cli: Cli) -> Result<(), String> {
    let selector = match (&cli.slots, &cli.slot_numbers) {
        (Some(l), _) => {
            let (a, b) = pair("--slots", l)?;
            SlotSelector::Labels(a, b)
        }
        (None, Some(n)) => {
            let (a, b) = pair("--slot-numbers", n)?;
            let num = |x: &str| {
                x.parse::<u32>()
                    .map_err(|_| format!("--slot-numbers: {x:?} is not a number"))
            };
            SlotSelector::Numbers(num(&a)?, num(&b)?)
        }
        (None, None) => SlotSelector::Auto,
    };
    if let Cmd::Create {
        slot_size,
        esp_size,
        labels,
        type_,
        sector_size,
        disk_size,
        force,
    } = &cli.cmd
    {
        // Everything given is checked before the disk is touched or created.
        let slot_type = types::parse(type_).map_err(|e| format!("--type {type_:?}: {e}"))?;
        let mut layout = Layout::flatcar(*slot_size);
        layout.esp_size = *esp_size;
        layout.labels = pair("--labels", labels)?;
        layout.slot_type = slot_type;
        layout.sector_size = *sector_size;
        let mut created = cli::Created::default();
        let exists = cli.disk.exists();
        match (exists, disk_size) {
            (false, None) => {
                return Err(format!(
                    "{} does not exist: give --disk-size to create an image",
                    cli.disk.display()
                ))
            }
            (true, Some(_)) if !force => {
                return Err(format!(
                    "{} exists: --disk-size would resize it (--force to do so)",
                    cli.disk.display()
                ))
            }
            _ => {}
        }
        if exists {
            let mut dev = open_disk(&cli.disk, false).map_err(|e| e.to_string())?;
            if let Some(what) = existing_table(&mut dev).map_err(|e| e.to_string())? {
                if !force {
                    return Err(format!(
                        "{} already holds {what}: refusing to replace it (--force to do so)",
                        cli.disk.display()
                    ));
                }
            }
        }
        if let Some(size) = disk_size {
            let f = cli::open_or_create(&cli.disk, 0o644, &mut created)?;
            f.set_len(*size)
                .map_err(|e| format!("{}: {e}", cli.disk.display()))?;
        }
        let mut dev = open_disk(&cli.disk, true).map_err(|e| e.to_string())?;
        create_layout(&mut dev, &layout).map_err(|e| e.to_string())?;
        created.keep();
        let selector = SlotSelector::Labels(layout.labels.0.clone(), layout.labels.1.clone());
        let disk = open(&cli.disk, false)?;
        let policy = rules(cli.policy, &disk.partitions(), &selector);
        let ab = AbDisk::new(disk, &selector, policy).map_err(|e| e.to_string())?;
        return show(&ab);
    }
    let writable = !matches!(cli.cmd, Cmd::Show);
    let disk = open(&cli.disk, writable)?;
    let policy = rules(cli.policy, &disk.partitions(), &selector);
    if let Cmd::Repair = cli.cmd {
        let mut disk = disk;
        let changed = disk.repair().map_err(|e| e.to_string())?;
        println!(
            "{}",
            if changed {
                "repaired: both copies rewritten"
            } else {
                "nothing to repair"
            }
        );
        let ab = AbDisk::new(disk, &selector, policy).map_err(|e| e.to_string())?;
        return show(&ab);
    }
    let mut ab = AbDisk::new(disk, &selector, policy).map_err(|e| e.to_string())?;
    if let Cmd::Change(change) = &cli.cmd {
        change.run(&mut ab, |ab, s| ab.slot_of(s).map_err(|e| e.to_string()))?;
    }
    if writable {
        match reread_partitions(ab.disk().device()) {
            Ok(()) => {}
            Err(keel::partition::Error::Busy) => {
                eprintln!("note: {}", keel::partition::Error::Busy)
            }
            Err(err) => return Err(err.to_string()),
        }
    }
    show(&ab)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slots: {e}");
            ExitCode::FAILURE
        }
    }
}
