//! The description's `[agent]` table as the loop uses it: durations, the reboot windows
//! (keel-fleet's own syntax, parsed by keel-fleet), the health checks as keel-update runs
//! them.

use std::path::PathBuf;
use std::time::Duration;

use keel_config::{AgentConfig, Strategy};
use keel_fleet::Windows;
use keel_update::HealthCheck;

use crate::error::{Error, Result};

/// How the fleet takes turns, with what each way needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coordination {
    /// No turns: reboot once installed (inside the windows).
    Immediate,
    /// The group's semaphore in etcd, each slot bound to a lease of `ttl`.
    Etcd {
        /// The cluster's endpoints.
        endpoints: Vec<String>,
        /// TLS files: CA, client certificate, client key.
        ca: Option<PathBuf>,
        /// See `ca`.
        cert: Option<PathBuf>,
        /// See `ca`.
        key: Option<PathBuf>,
        /// Nodes rebooting at once.
        slots: u64,
        /// The longest a reboot may take.
        ttl: Duration,
    },
    /// A FleetLock server.
    FleetLock {
        /// Its base URL.
        url: String,
    },
}

/// One health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// A command that must exit 0 within `timeout`.
    Command {
        /// Shown in reports.
        name: String,
        /// Program and arguments.
        argv: Vec<String>,
        /// Time limit.
        timeout: Duration,
    },
    /// A systemd unit that must be active.
    Unit {
        /// Shown in reports.
        name: String,
        /// The unit.
        unit: String,
        /// Time limit of `systemctl is-active`.
        timeout: Duration,
    },
}

impl Check {
    /// As keel-update's commit runs it (a unit through `systemctl is-active --quiet`).
    pub fn health_check(&self) -> HealthCheck {
        match self {
            Check::Command {
                name,
                argv,
                timeout,
            } => HealthCheck::Command {
                name: name.clone(),
                argv: argv.clone(),
                timeout: *timeout,
            },
            Check::Unit {
                name,
                unit,
                timeout,
            } => HealthCheck::Command {
                name: name.clone(),
                argv: vec![
                    "systemctl".into(),
                    "is-active".into(),
                    "--quiet".into(),
                    "--".into(),
                    unit.clone(),
                ],
                timeout: *timeout,
            },
        }
    }
}

/// keel-agent's settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Settings {
    /// The signed release index.
    pub index: String,
    /// The trusted root of the index's keys (a file on the running system).
    pub trust_root: PathBuf,
    /// Between two checks.
    pub interval: Duration,
    /// The random part added to each wait, at most.
    pub jitter: Duration,
    /// The fleet group.
    pub group: String,
    /// How the fleet takes turns.
    pub coordination: Coordination,
    /// When a reboot may start.
    pub windows: Windows,
    /// The reboot command.
    pub reboot_command: Vec<String>,
    /// The download's cap in bytes per second (0: none).
    pub max_rate: u64,
    /// The local API's socket.
    pub socket: PathBuf,
    /// What must hold after a boot.
    pub checks: Vec<Check>,
}

impl Settings {
    /// From a validated description's `[agent]` (keel-config has checked every other
    /// rule; the reboot windows' syntax is keel-fleet's and checked here, naming the
    /// setting).
    pub fn from_config(a: &AgentConfig) -> Result<Settings> {
        let windows = Windows::parse(&a.windows).map_err(|e| Error::Setting {
            field: "agent.windows".into(),
            reason: e.to_string(),
        })?;
        let path = |p: &Option<String>| p.as_ref().map(PathBuf::from);
        let coordination = match a.strategy {
            Strategy::Immediate => Coordination::Immediate,
            Strategy::Etcd => Coordination::Etcd {
                endpoints: a.etcd.clone(),
                ca: path(&a.etcd_ca),
                cert: path(&a.etcd_cert),
                key: path(&a.etcd_key),
                slots: a.slots,
                ttl: Duration::from_secs(a.lease_ttl),
            },
            Strategy::Fleetlock => Coordination::FleetLock {
                url: a.fleetlock.clone().ok_or_else(|| Error::Setting {
                    field: "agent.fleetlock".into(),
                    reason: "required with strategy = \"fleetlock\"".into(),
                })?,
            },
        };
        let checks = a
            .checks
            .iter()
            .map(|c| {
                let timeout = Duration::from_secs(c.timeout);
                match &c.unit {
                    Some(unit) => Check::Unit {
                        name: c.name.clone(),
                        unit: unit.clone(),
                        timeout,
                    },
                    None => Check::Command {
                        name: c.name.clone(),
                        argv: c.command.clone(),
                        timeout,
                    },
                }
            })
            .collect();
        Ok(Settings {
            index: a.index.clone(),
            trust_root: PathBuf::from(&a.trust_root),
            interval: Duration::from_secs(a.interval),
            jitter: Duration::from_secs(a.jitter),
            group: a.group.clone(),
            coordination,
            windows,
            reboot_command: a.reboot_command.clone(),
            max_rate: a.max_rate,
            socket: PathBuf::from(&a.socket),
            checks,
        })
    }
}
