//! `bootstate`: read and change A/B boot state in a GRUB environment, a U-Boot
//! environment or an Android misc partition, with the boot loaders' own rules.
//!
//! ```text
//! cargo run --example bootstate -- BACKEND FILE COMMAND
//!   BACKEND: grubenv | uboot [--env-size N] [--redundant] | android-misc
//!   COMMAND: init [--slots N] | show | set-active SLOT [--tries N] | mark-good SLOT
//!            | mark-bad SLOT | boot
//! ```
//! `boot` acts as the boot loader: it prints the slot it chooses and stores the counter
//! change it makes. Every change is one crash-safe write.

#[macro_use]
#[path = "support/cli.rs"]
mod cli;
#[path = "support/boot.rs"]
mod boot;

use std::path::PathBuf;
use std::process::ExitCode;

use boot::BootCmd;
use clap::{Parser, Subcommand, ValueEnum};
use keel::bootflags::store::{Backend, FileStore};
use keel::bootflags::Slot;

#[derive(Parser)]
#[command(
    name = "bootstate",
    about = "A/B boot state with the boot loaders' own rules"
)]
struct Cli {
    /// Where the state lives.
    backend: BackendArg,
    /// The environment file, or misc partition / image.
    file: PathBuf,
    /// U-Boot: bytes per environment copy.
    #[arg(long, default_value = "0x4000", value_parser = cli::parse_size_usize)]
    env_size: usize,
    /// U-Boot: two copies, the second right after the first.
    #[arg(long)]
    redundant: bool,
    /// Number of slots.
    #[arg(long, default_value_t = 2)]
    slots: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Grubenv,
    Uboot,
    AndroidMisc,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a fresh store with slot A good and booted.
    Init,
    /// Print every slot's state and the slot that boots next.
    Show,
    #[command(flatten)]
    Change(BootCmd),
}

fn slot(s: &str) -> Result<Slot, String> {
    let mut chars = s.chars();
    match (chars.next().and_then(Slot::from_letter), chars.next()) {
        (Some(slot), None) => Ok(slot),
        _ => Err(format!("{s:?} is not a slot (A, B, C or D)")),
    }
}

/// The size a misc partition usually has (AOSP devices reserve 1 MiB or more).
const MISC_SIZE: u64 = 1 << 20;

fn show(store: &FileStore, backend: BackendArg) {
    use keel::bootflags::BootControl;
    println!("rules: {}", BootControl::rules(store));
    println!("slot  priority  tries  successful");
    for (i, st) in store.status().iter().enumerate() {
        let s = Slot::new(i).map_or('?', |s| s.letter());
        // RAUC's U-Boot script keeps no such flag: a slot is good while it has tries.
        let successful = match backend {
            BackendArg::Uboot => "-",
            _ if st.successful => "yes",
            _ => "no",
        };
        println!("{s:>4}  {:>8}  {:>5}  {successful}", st.priority, st.tries);
    }
    match backend {
        BackendArg::Uboot => println!(
            "(U-Boot with RAUC's script: no successful flag; the good slot has its tries, \
             which the system refills after each good boot)"
        ),
        BackendArg::AndroidMisc => println!(
            "(Android: AOSP's initial block gives every slot priority 7 and 7 tries; the \
             good slot is the one marked successful)"
        ),
        BackendArg::Grubenv => {}
    }
    match store.next_boot() {
        Some(s) => println!("next boot: {s}"),
        None => println!("next boot: none (no bootable slot)"),
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let backend = match cli.backend {
        BackendArg::Grubenv => Backend::GrubEnv,
        BackendArg::Uboot => Backend::Uboot {
            size: cli.env_size,
            redundant: cli.redundant,
        },
        BackendArg::AndroidMisc => Backend::AndroidMisc,
    };
    let e = |e: keel::bootflags::Error| format!("{}: {e}", cli.file.display());
    if let Cmd::Init = cli.cmd {
        // A misc partition is a device that exists; as a file, make one of its usual size
        // (removed again if the init fails).
        let mut created = cli::Created::default();
        if matches!(cli.backend, BackendArg::AndroidMisc) && !cli.file.exists() {
            let f = cli::open_or_create(&cli.file, 0o644, &mut created)?;
            f.set_len(MISC_SIZE)
                .map_err(|err| format!("{}: {err}", cli.file.display()))?;
        }
        let store = FileStore::init(backend, &cli.file, cli.slots, Slot::A).map_err(e)?;
        created.keep();
        show(&store, cli.backend);
        return Ok(());
    }
    let mut store = FileStore::open(backend, &cli.file, cli.slots).map_err(e)?;
    if let Cmd::Change(change) = &cli.cmd {
        change
            .run(&mut store, |_, s| slot(s))
            .map_err(|m| format!("{}: {m}", cli.file.display()))?;
    }
    show(&store, cli.backend);
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bootstate: {e}");
            ExitCode::FAILURE
        }
    }
}
