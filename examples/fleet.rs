//! `fleet`: rolling reboots on etcd (keel-fleet) as a command.
//!
//! ```text
//! cargo run --example fleet -- --endpoints URLS [--cacert CA --cert CERT --key KEY]
//!     [--group G] [--id ID] COMMAND
//!   lock [--slots N] [--ttl SECS] [--hold SECS] [--wait SECS] [--window W]...
//!                   take a slot of the group (waiting for one), bound to a lease
//!   unlock          free this node's slot
//!   status [--json] the holders, since when, how long their lease has left; the pause
//!   pause --reason TEXT | resume
//!                   stop the roll (no node takes a slot), or let it go on
//!   slots N         set the group's number of slots
//!   roll --config SYSTEM.toml --root DIR --state DIR --payload FILE [--check CMD]...
//!                   one node's rolling update with keel-update: free a slot held from
//!                   before, stage, lock, reboot (simulated by the boot loader's rules),
//!                   commit and free; a failed check falls back and pauses the group
//! ```
//! The group's semaphore is airlock's (`com.coreos.airlock/groups/G/v1/semaphore`), so
//! airlock, Zincati (through the `fleetlock` example) and these nodes can share a group.

#[macro_use]
#[path = "support/cli.rs"]
mod cli;
#[path = "support/etcd.rs"]
mod etcd;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use keel::fleet::{
    Binding, Error as FleetError, Event, Group, Host, Lease, Node, Outcome, Roll, Wait, Windows,
};
use keel::update::{Agent, Commit, HealthCheck, System};

#[derive(Parser)]
#[command(
    name = "fleet",
    about = "Rolling reboots coordinated through etcd (keel-fleet)"
)]
struct Cli {
    #[command(flatten)]
    etcd: etcd::EtcdArgs,
    /// The reboot group.
    #[arg(long, global = true, default_value = "default")]
    group: String,
    /// This node's id (default: /etc/machine-id, else the host name).
    #[arg(long, global = true)]
    id: Option<String>,
    /// Slots of a group this node creates (an existing group keeps its own number).
    #[arg(long, global = true, default_value_t = 1, value_parser = etcd::slot_count)]
    slots: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Take a slot of the group, waiting for one; bound to a lease renewed while this runs.
    Lock {
        /// Lease TTL in seconds: how long the slot outlives this command without `unlock`.
        #[arg(long, default_value = "300", value_parser = etcd::lease_seconds)]
        ttl: Duration,
        /// Keep the slot this many seconds (fractions allowed), renewing the lease, then
        /// free it; without it the slot stays held until `unlock` or the lease's end.
        #[arg(long, value_parser = etcd::seconds)]
        hold: Option<Duration>,
        /// Give up after this many seconds of waiting (default: wait as long as it takes).
        #[arg(long, value_parser = etcd::seconds)]
        wait: Option<Duration>,
        /// Take a slot only inside this reboot window (`Mon-Fri 02:00-04:00`, UTC);
        /// repeatable; none: any time.
        #[arg(long = "window")]
        windows: Vec<String>,
    },
    /// Free this node's slot.
    Unlock,
    /// The group's holders and pause switch.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop the roll: no node takes a slot until `resume`.
    Pause {
        /// Why (shown by `status`).
        #[arg(long)]
        reason: String,
    },
    /// Let the roll go on.
    Resume,
    /// Set the group's number of slots.
    Slots {
        /// How many nodes may reboot at once (1 to 10000).
        #[arg(value_parser = etcd::slot_count)]
        count: u64,
    },
    /// One node's rolling update with keel-update (see the module documentation).
    Roll {
        /// The system description.
        #[arg(long)]
        config: PathBuf,
        /// Read /proc and /etc under this directory (the simulated boot writes its
        /// /proc/cmdline).
        #[arg(long)]
        root: PathBuf,
        /// keel-update's record directory.
        #[arg(long)]
        state: PathBuf,
        /// The update payload.
        #[arg(long)]
        payload: PathBuf,
        /// A health check command (run by sh -c) the new version must pass; repeatable.
        #[arg(long = "check")]
        checks: Vec<String>,
        /// Lease TTL in seconds: the longest a reboot may take before the slot is freed.
        #[arg(long, default_value = "300", value_parser = etcd::reboot_lease_seconds)]
        ttl: Duration,
        /// Give up after this many seconds of waiting for a slot.
        #[arg(long, value_parser = etcd::seconds)]
        wait: Option<Duration>,
        /// Reboot only inside this window (UTC); repeatable.
        #[arg(long = "window")]
        windows: Vec<String>,
    },
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn node_id(id: Option<String>) -> Res<String> {
    if let Some(id) = id {
        return Ok(id);
    }
    let from_file = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    from_file("/etc/machine-id")
        .or_else(|| from_file("/etc/hostname"))
        .ok_or_else(|| {
            "no --id, and neither /etc/machine-id nor /etc/hostname names this node".into()
        })
}

/// The instant `wait` from now; none (wait as long as it takes) for a wait too long for
/// the clock.
fn wait_until(wait: Option<Duration>) -> Option<Instant> {
    wait.and_then(|d| Instant::now().checked_add(d))
}

/// The exit code of a node that lost its slot while holding it (its lease ended: the
/// process was stopped or cut off from etcd for longer than the TTL).
const LOST: u8 = 4;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn run(cli: Cli) -> Res<ExitCode> {
    let etcd = cli.etcd.connect()?;
    let group = Group::new(&etcd, &cli.group, cli.slots)?;
    match cli.cmd {
        Cmd::Lock {
            ttl,
            hold,
            wait,
            windows,
        } => {
            let id = node_id(cli.id)?;
            let node = Node::new(&group, &id, Windows::parse(&windows)?);
            let wait = Wait {
                deadline: wait_until(wait),
                ..Wait::default()
            };
            // Everything is checked before the lease exists: no error leaves it behind.
            let lease = Lease::grant(&etcd, ttl)?;
            let reboot_by = match node.pre_reboot(&lease, &wait) {
                Ok(by) => by,
                Err(e @ (FleetError::Paused { .. } | FleetError::Stopped { .. })) => {
                    let _ = lease.revoke();
                    println!("{id}: no slot: {e}");
                    return Ok(ExitCode::from(3));
                }
                Err(e) => {
                    let _ = lease.revoke();
                    return Err(e.into());
                }
            };
            println!(
                "{id} holds a slot of group {:?} (lease {:x}, TTL {} s, {} ms left to act on it)",
                cli.group,
                lease.id(),
                lease.ttl(),
                reboot_by
                    .saturating_duration_since(Instant::now())
                    .as_millis()
            );
            match hold {
                Some(h) => {
                    std::thread::sleep(h);
                    // Fencing: whoever holds the slot now, this node frees it only if it is
                    // still its own, and says so when it is not.
                    match node.holding(&lease) {
                        Ok(_) => {}
                        Err(e) if e.is_slot_lost() => {
                            let _ = lease.revoke();
                            println!("{id}: {e}; another node may hold it now");
                            eprintln!("fleet: {id} lost its slot while holding it");
                            return Ok(ExitCode::from(LOST));
                        }
                        Err(e) => {
                            let _ = lease.revoke();
                            return Err(e.into());
                        }
                    }
                    group.release(&id)?;
                    lease.revoke()?;
                    println!("{id} freed its slot");
                }
                None => println!(
                    "  held until `fleet unlock --id {id}`, or {} s after this node stops renewing",
                    lease.ttl()
                ),
            }
        }
        Cmd::Unlock => {
            let id = node_id(cli.id)?;
            if group.release(&id)? {
                println!("{id} freed its slot of group {:?}", cli.group);
            } else {
                println!("{id} held no slot of group {:?}", cli.group);
            }
        }
        Cmd::Status { json } => {
            let st = group.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                println!(
                    "group {:?}: {} of {} slots held (etcd revision {})",
                    st.group,
                    st.holders.len(),
                    st.total_slots,
                    st.revision
                );
                if let Some(configured) = st.configured_slots.filter(|&c| c != st.total_slots) {
                    println!(
                        "  slots: the semaphore document says {}, the FleetLock server is \
                         configured with {configured} and gives out {configured}",
                        st.total_slots
                    );
                }
                if let Some(p) = &st.paused {
                    println!(
                        "  PAUSED by {:?} {} s ago: {}",
                        p.by,
                        now_unix().saturating_sub(p.since),
                        p.reason
                    );
                }
                for h in &st.holders {
                    let since = h.acquired.map_or("since ?".into(), |a| {
                        format!("for {} s", now_unix().saturating_sub(a))
                    });
                    let binding = match h.binding {
                        Binding::Lease { id, ttl_left } => {
                            format!("lease {id:x}, {ttl_left} s left")
                        }
                        Binding::Expired => "lease ended: freed by the next client".into(),
                        Binding::Unleased => "no lease (airlock's): held until released".into(),
                    };
                    println!("  {:<24} {since:<12} {binding}", h.id);
                }
            }
        }
        Cmd::Pause { reason } => {
            let by = node_id(cli.id).unwrap_or_else(|_| "operator".into());
            let p = group.pause(&by, &reason)?;
            println!("group {:?} paused by {:?}: {}", cli.group, p.by, p.reason);
        }
        Cmd::Resume => {
            group.resume()?;
            println!("group {:?} resumed", cli.group);
        }
        Cmd::Slots { count } => {
            group.set_slots(count)?;
            println!("group {:?} has {count} slots", cli.group);
        }
        Cmd::Roll {
            config,
            root,
            state,
            payload,
            checks,
            ttl,
            wait,
            windows,
        } => {
            let id = node_id(cli.id)?;
            let node = Node::new(&group, &id, Windows::parse(&windows)?);
            let r = Roll {
                etcd: &etcd,
                node: &node,
                ttl,
                deadline: wait_until(wait),
            };
            return roll(&r, &root, &config, &state, &payload, &checks);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The line a rolling test reads: what happened to this node.
fn summary(id: &str, version: &str, reboots: u32, held: Duration, outcome: &str) {
    println!(
        "summary: {}",
        serde_json::json!({"node": id, "version": version, "reboots": reboots,
            "held_ms": held.as_millis() as u64, "outcome": outcome})
    );
}

/// keel-update's agent as the roll's host, on a disk image, with a simulated reboot: the
/// boot loader's own rules choose the slot (counting a try), and the kernel command line
/// under the root names it, as the real one would.
struct AgentHost<'a> {
    agent: Agent<'a, File>,
    root: &'a Path,
    payload: &'a Path,
    checks: &'a [String],
}

impl Host for AgentHost<'_> {
    type Error = keel::update::Error;

    fn version(&mut self) -> Result<String, Self::Error> {
        let st = self.agent.status()?;
        Ok(st
            .slots
            .iter()
            .find(|s| s.booted)
            .and_then(|s| s.version.clone())
            .unwrap_or_else(|| "?".into()))
    }

    fn stage(&mut self) -> Result<String, Self::Error> {
        // A regular file or a device: a directory is an error naming it.
        let (file, _) =
            keel::io::open_device(self.payload, false).map_err(|e| keel::update::Error::Io {
                context: format!("opening {}", self.payload.display()),
                source: e,
            })?;
        Ok(self
            .agent
            .install(std::io::BufReader::new(file), None)?
            .version)
    }

    fn reboot(&mut self) -> Result<(), Self::Error> {
        let io = |e: std::io::Error| keel::update::Error::Io {
            context: "writing the simulated kernel command line".into(),
            source: e,
        };
        let slot = self.agent.boot_control()?.boot()?.ok_or_else(|| {
            keel::update::Error::BootedSlot("the boot loader found no bootable slot".into())
        })?;
        // By the slot's boot name: the description may list B before A.
        let index = self
            .agent
            .system()
            .slots()
            .iter()
            .position(|s| s.slot == slot)
            .unwrap_or(0);
        let parts = self.agent.partitions()?;
        let guid = parts.get(index).map(|p| p.guid).unwrap_or_default();
        std::fs::create_dir_all(self.root.join("proc")).map_err(io)?;
        std::fs::write(
            self.root.join("proc/cmdline"),
            format!("ro mount.usr=PARTUUID={guid}\n"),
        )
        .map_err(io)
    }

    fn commit(&mut self) -> Result<Option<String>, Self::Error> {
        let checks: Vec<HealthCheck> = self
            .checks
            .iter()
            .map(|c| HealthCheck::Command {
                name: c.clone(),
                argv: vec!["sh".into(), "-c".into(), c.clone()],
                timeout: Duration::from_secs(60),
            })
            .collect();
        Ok(match self.agent.commit(&checks)? {
            Commit::RebootNeeded { check, reason, .. } => Some(format!(
                "check {check:?} failed on the new version: {reason}"
            )),
            _ => None,
        })
    }
}

/// `fleet roll`: keel-fleet's [`Roll`] with keel-update's agent as its host.
fn roll(
    roll: &Roll<'_>,
    root: &Path,
    config: &Path,
    state: &Path,
    payload: &Path,
    checks: &[String],
) -> Res<ExitCode> {
    let id = roll.node.id();
    let loaded = keel::config::load_files(config, &[])?;
    let system = System::from_config(loaded.config.as_ref().ok_or("the description has errors")?)?;
    let disk_path = system
        .disk
        .clone()
        .ok_or("the description names no boot.disk")?;
    let disk = File::options()
        .read(true)
        .write(true)
        .open(&disk_path)
        .map_err(|e| format!("{}: {e}", disk_path.display()))?;
    let mut host = AgentHost {
        agent: Agent::new(system, &disk).root(root).state_dir(state),
        root,
        payload,
        checks,
    };
    let mut say = |e: &Event| match e {
        Event::FreedHeldSlot => println!("{id}: freed the slot held from before the last boot"),
        Event::Staged { version } => println!("{id}: staged version {version}"),
        Event::Rebooting => println!("{id}: holds a slot; rebooting"),
        Event::Booted => println!("{id}: booted"),
        other => println!("{id}: {other:?}"),
    };
    Ok(match roll.run(&mut host, &mut say)? {
        Outcome::Committed {
            version,
            reboots,
            held,
        } => {
            println!("{id}: committed {version}, freed the slot");
            summary(id, &version, reboots, held, "committed");
            ExitCode::SUCCESS
        }
        Outcome::FellBack {
            version,
            reboots,
            held,
            reason,
        } => {
            println!("{id}: fell back to {version} and paused the roll: {reason}");
            summary(id, &version, reboots, held, "fell-back");
            ExitCode::from(2)
        }
        Outcome::NotRebooted { version, reason } => {
            println!("{id}: not rebooting: {reason}; staying on {version}");
            summary(id, &version, 0, Duration::ZERO, "paused");
            ExitCode::from(3)
        }
        Outcome::Lost { version, reason } => {
            println!("{id}: lost its slot: {reason}");
            summary(id, &version, 0, Duration::ZERO, "lost-slot");
            ExitCode::from(LOST)
        }
        other => return Err(format!("{id}: {other:?}").into()),
    })
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fleet: {e}");
            ExitCode::FAILURE
        }
    }
}
