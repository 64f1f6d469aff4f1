//! `update`: the update agent (keel-update) as a command.
//!
//! ```text
//! cargo run --example update -- --config SYSTEM.toml [--root DIR] [--state DIR] COMMAND
//!   install PAYLOAD|-   check, apply into the slot not running, verify, arm
//!   install --index URL --trust-root ROOT
//!                        the same for the release a signed index names (over HTTP(S))
//!   commit [--check CMD]... [--timeout SECS]
//!                        after a boot: run the checks, then mark the booted slot good
//!                        (or bad, exit status 2: reboot to fall back)
//!   status [--json]      both slots: boot state, version, root hash; the last error
//!   fetch-apply URL ...  stream a payload over HTTP(S) into a target, with range resume
//!   check INDEX_URL ...  verify a signed release index; print the release this machine takes
//!                        (delta, block store or full payload) and, given the installed
//!                        image (--seed) and the key (--pubkey), what a block store costs
//! cargo run --example update -- demo DIR [--slot-mib N]
//!                        an image builder's output to try the others on: DIR/disk.img
//!                        (version 1 in slot A), DIR/system.toml, DIR/update-1-to-2.payload
//!                        and DIR/root, a device root whose kernel booted slot A
//! ```
//! The disk is `--disk`, else the description's `boot.disk` (an image file or a block
//! device), else the disk holding the partition the kernel booted from. `--root`
//! is where /proc, /sys and /etc are read (default `/`), `--state` where the agent keeps
//! its records (default `/var/lib/keel`).

#[macro_use]
#[path = "support/cli.rs"]
mod cli;
#[path = "support/demo.rs"]
mod demo;

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use keel::update::{Agent, Commit, HealthCheck, System};

#[derive(Parser)]
#[command(
    name = "update",
    about = "Install, commit and report A/B updates (keel-update)"
)]
struct Cli {
    /// The system description.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Read /proc, /sys and /etc under this directory.
    #[arg(long, global = true, default_value = "/")]
    root: PathBuf,
    /// Keep the agent's records here.
    #[arg(long, global = true, default_value = "/var/lib/keel")]
    state: PathBuf,
    /// The disk holding the slots (default: `boot.disk`, else the disk the kernel booted
    /// from).
    #[arg(long, global = true)]
    disk: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install PAYLOAD (a file, or - for standard input) into the slot not running; or,
    /// with --index, the release a signed index names for this system, over HTTP(S).
    Install {
        /// The payload file, or - for standard input.
        #[arg(required_unless_present = "index", conflicts_with = "index")]
        payload: Option<String>,
        /// A release index's URL: verify it, choose the release (delta from the booted
        /// image, else full), fetch and install it.
        #[arg(long, requires = "trust_root")]
        index: Option<String>,
        /// The trusted root of the index's keys (an envelope as `publish sign --kind root` writes).
        #[arg(long = "trust-root", requires = "index")]
        trust_root: Option<PathBuf>,
        /// Checkpoint (durable, resumable) every N MiB (1 to 65536).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
        checkpoint_mib: u64,
    },
    /// After a boot: run the health checks; mark the booted slot good, or bad.
    Commit {
        /// A command that must exit 0 (run by sh -c); repeatable.
        #[arg(long = "check")]
        checks: Vec<String>,
        /// Time limit of each check, in seconds (at most a day).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        timeout: u64,
    },
    /// Both slots and the last install error.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build a demonstration disk, description and payload in DIR.
    Demo {
        /// The directory to make (the disk, description and payload go in it).
        dir: PathBuf,
        /// Slot size in MiB (1 to 65536).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
        slot_mib: u64,
    },
    /// Stream a payload from URL into TARGET with range resume (keel-fetch).
    FetchApply {
        /// The payload's http:// or https:// URL.
        url: String,
        #[command(flatten)]
        to: cli::ApplyTo,
        /// Resume record: a rerun after a stop fetches only what was not applied.
        #[arg(long = "record")]
        record: Option<PathBuf>,
        /// Download at most this many bytes per second (`512K`, `2M`; at least 4K; default:
        /// no cap).
        #[arg(long, value_parser = rate)]
        max_rate: Option<u64>,
    },
    /// Fetch and verify a release index, and print the release this machine would take.
    Check {
        /// The index's URL.
        index_url: String,
        /// The trusted root (an envelope as `publish sign --kind root` writes it).
        #[arg(long = "trust-root")]
        trust_root: PathBuf,
        /// This system's compatible string.
        #[arg(long)]
        compatible: String,
        /// The installed version.
        #[arg(long)]
        installed: String,
        /// This machine's id, for staged rollouts (default: /etc/machine-id under --root).
        #[arg(long)]
        machine_id: Option<String>,
        /// Where the last accepted serial is kept (an older index is refused).
        #[arg(long = "serial-file")]
        serial_file: Option<PathBuf>,
        /// The installed image (the booted slot): a delta from it is found by its digest,
        /// and a block store's plan says what would be fetched (with --pubkey).
        #[arg(long)]
        seed: Option<PathBuf>,
        /// The key payloads and stores are signed with (PEM), for a block store's plan.
        #[arg(long = "pubkey", requires = "seed")]
        pubkeys: Vec<PathBuf>,
    },
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn run(cli: Cli) -> Res<ExitCode> {
    match &cli.cmd {
        Cmd::FetchApply { .. } => return fetch_apply(&cli.cmd),
        Cmd::Check { .. } => return check(&cli.cmd, &cli.root),
        _ => {}
    }
    if let Cmd::Demo { dir, slot_mib } = &cli.cmd {
        // Made for this user alone: nobody else can plant files in it while it is written.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let d = demo::build(dir, slot_mib << 20, "gpt-flatcar")?;
        demo::boot_from(&dir.join("root"), &d.slots[0])?;
        println!(
            "made {}: disk.img, system.toml, update-1-to-2.payload, root/",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let config = cli.config.as_deref().ok_or("--config is required")?;
    // The error names the file already.
    let loaded = keel::config::load_files(config, &[])?;
    for f in &loaded.findings {
        eprintln!("{f}");
    }
    let system = System::from_config(loaded.config.as_ref().ok_or("the description has errors")?)?;
    // --disk, else the description's boot.disk, else the disk the kernel booted from.
    let disk_path = match cli.disk.clone().or_else(|| system.disk.clone()) {
        Some(p) => p,
        None => keel::update::boot_disk(&cli.root)?,
    };
    let writable = !matches!(cli.cmd, Cmd::Status { .. });
    let disk = File::options()
        .read(true)
        .write(writable)
        .open(&disk_path)
        .map_err(|e| format!("{}: {e}", disk_path.display()))?;
    let mut agent = Agent::new(system, &disk)
        .root(&cli.root)
        .state_dir(&cli.state);
    // A disk given here is the one whose partitions device paths must name.
    if let Some(d) = &cli.disk {
        agent = agent.disk_path(d);
    }
    match cli.cmd {
        Cmd::Install {
            payload,
            index,
            trust_root,
            checkpoint_mib,
        } => {
            let pb = ProgressBar::new(0).with_style(
                ProgressStyle::with_template("[{bar:40}] {bytes}/{total_bytes}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let observer = |done: u64, total: u64| {
                pb.set_length(total);
                pb.set_position(done);
            };
            let agent = agent.checkpoint_bytes(checkpoint_mib.max(1) << 20);
            let done = match (index, trust_root, payload) {
                (Some(url), Some(root), _) => {
                    let now = agent.trusted_now()?;
                    let bytes = cli::read_small(&root, keel::release::MAX_ENVELOPE as u64)?;
                    let root = keel::release::TrustedRoot::initial(&bytes, now)?;
                    let fetch = keel::fetch::FetchOptions::default();
                    match agent.install_from_index(&url, &root, fetch, Some(&observer)) {
                        Ok(Some(done)) => Ok(done),
                        Ok(None) => {
                            pb.finish_and_clear();
                            println!("the index names nothing newer for this system");
                            return Ok(ExitCode::SUCCESS);
                        }
                        Err(e) => Err(e),
                    }
                }
                (_, _, Some(payload)) => {
                    let input: Box<dyn Read> = match payload.as_str() {
                        "-" => Box::new(std::io::stdin().lock()),
                        // A regular file or a device: a directory is an error naming it.
                        p => Box::new(keel::io::open_device(std::path::Path::new(p), false)?.0),
                    };
                    agent.install(std::io::BufReader::new(input), Some(&observer))
                }
                _ => return Err("give a PAYLOAD, or --index URL with --trust-root ROOT".into()),
            };
            pb.finish_and_clear();
            let done = done?;
            println!(
                "installed version {} into slot {}{}; it boots next",
                done.version,
                done.slot,
                match done.resumed_at {
                    0 => String::new(),
                    n => format!(" (resumed at operation {n})"),
                }
            );
        }
        Cmd::Commit { checks, timeout } => {
            let checks: Vec<HealthCheck> = checks
                .into_iter()
                .map(|c| HealthCheck::Command {
                    name: c.clone(),
                    argv: vec!["sh".into(), "-c".into(), c],
                    timeout: Duration::from_secs(timeout),
                })
                .collect();
            match agent.commit(&checks)? {
                Commit::Committed(s) => println!("slot {s} passed its checks and is marked good"),
                Commit::AlreadyGood(s) => println!("slot {s} was already marked good"),
                Commit::RebootNeeded {
                    slot,
                    check,
                    reason,
                } => {
                    println!("check {check:?} failed: {reason}; slot {slot} is marked bad: reboot to fall back");
                    return Ok(ExitCode::from(2));
                }
                other => println!("{other:?}"),
            }
        }
        Cmd::Status { json } => {
            let st = agent.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                println!("rules: {}", st.rules);
                for s in &st.slots {
                    println!(
                        "{} {:<8} priority {:>2} tries {:>2} {:<10} version {:<8} {}{}",
                        s.slot,
                        s.name,
                        s.priority,
                        s.tries,
                        if s.successful { "good" } else { "not good" },
                        s.version.as_deref().unwrap_or("?"),
                        if s.booted { "booted " } else { "" },
                        if s.next_boot { "next" } else { "" },
                    );
                }
                if let Some(e) = &st.last_error {
                    println!("last install error: {e}");
                }
            }
        }
        Cmd::Demo { .. } | Cmd::FetchApply { .. } | Cmd::Check { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn fetch_apply(cmd: &Cmd) -> Res<ExitCode> {
    let Cmd::FetchApply {
        url,
        to,
        record,
        max_rate,
    } = cmd
    else {
        return Ok(ExitCode::FAILURE);
    };
    let ring = cli::load_keyring(&to.pubkeys)?;
    let pb = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("[{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let observer = |done: u64, total: u64| {
        pb.set_length(total);
        pb.set_position(done);
    };
    let mut opts = keel::payload::ApplyOptions::new(&ring, to.version()).progress(&observer);
    opts.state = record.as_deref();
    let src = to.open_source()?;
    let mut tgt = File::options()
        .read(true)
        .write(true)
        .open(&to.target)
        .map_err(|e| format!("{}: {e}", to.target.display()))?;
    let fetch = keel::fetch::FetchOptions::default().max_bytes_per_sec(max_rate.unwrap_or(0));
    let mut reader = keel::fetch::HttpReader::new(url, fetch)?;
    let done = keel::payload::Payload::open_seekable(&mut reader, &ring)
        .map_err(|e| e.to_string())
        .and_then(|p| to.apply(p, src.as_ref(), &mut tgt, &opts));
    pb.finish_and_clear();
    let done = done?;
    let st = reader.stats();
    // What this run fetched per payload byte: near 1.0 unless cuts, a resume or a seek
    // cost bytes twice.
    let ratio = match reader.len() {
        Some(len) if len > 0 => format!("{:.3}", st.bytes as f64 / len as f64),
        _ => "?".into(),
    };
    println!(
        "applied version {} ({} operations, resumed at {}); {} bytes in {} requests ({:.1} per GiB), {} retries; fetched/payload {ratio}",
        done.manifest.version,
        done.manifest.operations.len(),
        done.resumed_at,
        st.bytes,
        st.requests,
        st.requests_per_gib(),
        st.retries
    );
    Ok(ExitCode::SUCCESS)
}

fn check(cmd: &Cmd, root_dir: &std::path::Path) -> Res<ExitCode> {
    use keel::release::TrustedRoot;
    let Cmd::Check {
        index_url,
        trust_root,
        compatible,
        installed,
        machine_id,
        serial_file,
        seed,
        pubkeys,
    } = cmd
    else {
        return Ok(ExitCode::FAILURE);
    };
    let now = keel::trust::unix_now();
    let root_bytes = cli::read_small(trust_root, keel::release::MAX_ENVELOPE as u64)?;
    let root = TrustedRoot::initial(&root_bytes, now)?;
    let last = match serial_file {
        Some(f) if f.exists() => Some(cli::read_small_text(f, 64)?.trim().parse::<u64>()?),
        _ => None,
    };
    let fetch = keel::fetch::FetchOptions::default();
    let index = keel::update::fetch_index(index_url, &root, fetch, last, now)?;
    if let Some(f) = serial_file {
        keel::io::replace_file(f, format!("{}\n", index.serial).as_bytes())?;
    }
    let machine = match machine_id {
        Some(m) => m.clone(),
        None => cli::read_small_text(&root_dir.join("etc/machine-id"), 4096)
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    let seed_file = match seed {
        Some(p) => Some(std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    // The seed's digest over the size a delta from the installed version starts from.
    let source_size = index
        .releases
        .iter()
        .flat_map(|r| &r.deltas)
        .find(|d| d.from_version == *installed)
        .map(|d| d.source_size);
    let digest = match (&seed_file, source_size) {
        (Some(f), Some(size)) => Some(keel::payload::format::image_digest(f, size)?),
        _ => None,
    };
    let Some(c) = index.choose(compatible, installed, digest.as_ref(), &machine, false) else {
        println!(
            "index serial {}: nothing newer for {compatible} {installed}",
            index.serial
        );
        return Ok(ExitCode::SUCCESS);
    };
    let kind = match (c.delta, &c.store) {
        (true, _) => "delta",
        (false, Some(_)) => "block store",
        (false, None) => "full payload",
    };
    let Some(store) = c.store.as_ref().filter(|_| !c.delta) else {
        println!(
            "index serial {}: take {} {kind}: {} bytes from {}",
            index.serial, c.version, c.artifact.size, c.artifact.url
        );
        return Ok(ExitCode::SUCCESS);
    };
    let (Some(seed), false) = (&seed_file, pubkeys.is_empty()) else {
        println!(
            "index serial {}: take {} {kind}: at most {} bytes from {} (the full payload: {} bytes; \
             --seed and --pubkey say how much)",
            index.serial, c.version, store.size, store.url, c.artifact.size
        );
        return Ok(ExitCode::SUCCESS);
    };
    let ring = cli::load_keyring(pubkeys)?;
    let url = keel::release::resolve(index_url, &store.url);
    let ranges = keel::fetch::HttpRanges::new(
        keel::fetch::HttpReader::new(&url, fetch)?.expect_len(store.size),
    );
    let opts = keel::payload::store::StoreOptions::new(
        keel::payload::ApplyOptions::new(&ring, keel::payload::VersionCheck::Installed(installed))
            .compatible(compatible.as_str()),
    );
    let s = keel::payload::store::StoreSession::open(&ranges, &opts)?;
    let pin = store
        .manifest_digest()
        .ok_or("the index does not pin the store")?;
    if s.id() != pin {
        return Err(format!("{url}: not the store the index names").into());
    }
    let seeds = [keel::payload::store::Seed {
        image: seed,
        tree: None,
    }];
    let p = s.plan(&seeds, &opts)?;
    println!(
        "index serial {}: take {} {kind}: {} bytes in {} requests ({} of the store's {} \
         bytes; the full payload: {} bytes)",
        index.serial,
        c.version,
        p.fetched_so_far + p.fetch_bytes,
        p.requests_so_far + p.ranges.len() as u64,
        p.fetch_bytes,
        store.size,
        c.artifact.size
    );
    println!(
        "blocks: {} zero, {} from the installed image, {} duplicates, {} from its runs, {} fetched",
        p.zero, p.from_seed, p.duplicate, p.from_seed_runs, p.fetched_blocks
    );
    Ok(ExitCode::SUCCESS)
}

/// A download rate cap: at least 4 KiB/s, above keel-fetch's slow-retrieval floor, so a
/// capped download is never taken for a stalled one (nor runs for ever at 1 B/s).
fn rate(s: &str) -> Result<u64, String> {
    match cli::parse_size(s)? {
        n if n < 4096 => Err(format!("{s:?}: at least 4K bytes per second")),
        n => Ok(n),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("update: {e}");
            ExitCode::FAILURE
        }
    }
}
