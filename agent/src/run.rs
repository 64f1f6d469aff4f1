//! The loop: at start, finish what the last boot left (commit the new slot after its
//! checks, or fall back and stop the roll; give back the fleet's slot); then, every
//! interval, check the signed index, install what it names, wait for the reboot window
//! and the fleet's slot, and reboot.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_fleet::{Etcd, Group, TlsOptions};
use keel_io::Cancel;
use keel_update::{Agent, Commit, HealthCheck, System};

use crate::error::{Error, Result};
use crate::policy::{EtcdTurns, FleetLockTurns, Immediate, Reboot, RebootCommand, Turn, Turns};
use crate::settings::{Coordination, Settings};
use crate::state::{self, now, Pending, Shared};

/// What a step of the loop ended in.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Nothing newer than what runs.
    UpToDate,
    /// Paused through the API.
    Paused,
    /// The group's roll is paused (by a node whose new version failed, or an operator).
    GroupPaused(String),
    /// Installed and armed; waiting for the reboot window or the fleet's slot.
    Staged(String),
    /// The reboot command was run: the node is going down into `version`.
    Rebooting(String),
    /// After a boot: the new version passed its checks and is committed.
    Committed(String),
    /// After a boot: the new version failed a check; the node reboots back.
    FallingBack(String),
    /// Back on the old version after a failed one; the roll is paused.
    FellBack(String),
    /// Booted and committed already: nothing to finish.
    Steady,
}

/// Hold the agent's lock in `state_dir` while the returned file is open: one agent per
/// state directory (taken before anything is fetched or written there).
pub fn lock(state_dir: &Path) -> Result<keel_io::FileLock> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| Error::io(format!("creating {}", state_dir.display()), e))?;
    let path = state_dir.join("agent.lock");
    keel_io::FileLock::try_exclusive(&path).map_err(|e| {
        let what = match e.kind() {
            std::io::ErrorKind::WouldBlock => "another keel-agent runs on this state",
            _ => "locking",
        };
        Error::io(format!("{}: {what}", path.display()), e)
    })
}

/// The `User-Agent` of a node's requests ([`Daemon::user_agent`]).
pub fn user_agent(node: &str, group: &str) -> String {
    format!(
        "keel-agent/{} (node={node}; group={group})",
        env!("CARGO_PKG_VERSION")
    )
}

/// The install's progress into the status; a pause through the API stops it at the next
/// checkpoint (it resumes there after the pause).
struct Installing<'a>(&'a Shared);

impl keel_io::Progress for Installing<'_> {
    fn progress(&self, done: u64, total: u64) {
        self.0.update(|s| {
            s.state = "installing".into();
            s.progress = Some((done, total));
        });
    }
    fn cancelled(&self) -> bool {
        self.0.paused()
    }
}

/// keel-agent's loop for one node.
pub struct Daemon {
    system: System,
    settings: Settings,
    root: PathBuf,
    state_dir: PathBuf,
    disk_path: Option<PathBuf>,
    node_id: String,
    shared: Arc<Shared>,
    turns: Option<Arc<dyn Turns>>,
    reboot: Arc<dyn Reboot>,
    health: Vec<HealthCheck>,
    not_now: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("node_id", &self.node_id)
            .field("settings", &self.settings)
            .field("state_dir", &self.state_dir)
            .field("own_turns", &self.turns.is_some())
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// The loop for the system `config` describes (it must have `[agent]`), reading the
    /// running system under `root` and keeping its records in `state_dir`.
    pub fn new(config: &keel_config::Config, root: &Path, state_dir: &Path) -> Result<Daemon> {
        let agent = config.agent.as_ref().ok_or_else(|| Error::Setting {
            field: "agent".into(),
            reason: "the description has no [agent] table".into(),
        })?;
        let settings = Settings::from_config(agent)?;
        let settings_reboot = settings.reboot_command.clone();
        let health = settings.checks.iter().map(|c| c.health_check()).collect();
        let system = System::from_config(config)?;
        // The node's name in the fleet: the machine id, as Zincati names nodes.
        let name = |file: &str| -> Option<String> {
            let bytes = keel_io::read_bounded(&root.join(file), 256).ok()?;
            let name: String = String::from_utf8_lossy(&bytes)
                .trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                .collect();
            (!name.is_empty()).then_some(name)
        };
        let node_id = agent
            .node_id
            .clone()
            .or_else(|| name("etc/machine-id"))
            .or_else(|| name("etc/hostname"))
            .unwrap_or_else(|| "node".into());
        Ok(Daemon {
            system,
            settings,
            root: root.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            disk_path: None,
            node_id,
            shared: Arc::new(Shared::new(state_dir)),
            turns: None,
            reboot: Arc::new(RebootCommand(settings_reboot)),
            health,
            not_now: std::sync::Mutex::new(None),
        })
    }

    /// Take turns with the fleet this way instead of the description's strategy.
    pub fn turns_with(mut self, turns: Arc<dyn Turns>) -> Self {
        self.turns = Some(turns);
        self
    }

    /// Reboot this way instead of running the description's reboot command.
    pub fn reboot_with(mut self, reboot: Arc<dyn Reboot>) -> Self {
        self.reboot = reboot;
        self
    }

    /// One more thing that must hold after a boot, after the description's checks (a
    /// function: [`HealthCheck::Func`]).
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.health.push(check);
        self
    }

    /// The disk holding the slots, when neither `boot.disk` nor the booted disk says.
    pub fn disk(mut self, path: impl Into<PathBuf>) -> Self {
        self.disk_path = Some(path.into());
        self
    }

    /// What the loop and the local API share.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// This node's name in the fleet.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// How the agent names itself to the update server: its version, the node and its
    /// group (as update_engine and Zincati tell the server which machine asks), so the
    /// server's log tells one node's downloads from another's.
    pub fn user_agent(&self) -> String {
        user_agent(&self.node_id, &self.settings.group)
    }

    fn disk_file(&self) -> Result<(File, PathBuf)> {
        let path = match self.disk_path.clone().or_else(|| self.system.disk.clone()) {
            Some(p) => p,
            None => keel_update::boot_disk(&self.root)?,
        };
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Ok((file, path))
    }

    fn with_agent<T>(&self, f: impl FnOnce(&Agent<'_, File>) -> Result<T>) -> Result<T> {
        let (disk, path) = self.disk_file()?;
        let agent = Agent::new(self.system.clone(), &disk)
            .root(&self.root)
            .state_dir(&self.state_dir)
            .disk_path(path);
        f(&agent)
    }

    /// The fleet's turns: the embedder's, else the description's strategy, connected.
    fn turns(&self) -> Result<Arc<dyn Turns>> {
        if let Some(t) = &self.turns {
            return Ok(t.clone());
        }
        Ok(match &self.settings.coordination {
            Coordination::Immediate => Arc::new(Immediate),
            Coordination::Etcd {
                endpoints,
                ca,
                cert,
                key,
                slots,
                ttl,
            } => {
                let read = |p: &Option<PathBuf>| -> Result<Option<Vec<u8>>> {
                    p.as_ref()
                        .map(|p| {
                            std::fs::read(keel_bootflags::spec::under_root(&self.root, p))
                                .map_err(|e| Error::io(format!("reading {}", p.display()), e))
                        })
                        .transpose()
                };
                let mut tls = TlsOptions::default();
                if let Some(pem) = read(ca)? {
                    tls = tls.ca(pem);
                }
                if let (Some(chain), Some(key)) = (read(cert)?, read(key)?) {
                    tls = tls.client_cert(chain, key);
                }
                let etcd = Arc::new(Etcd::with_tls(endpoints, &tls)?);
                let group = Group::new(&etcd, &self.settings.group, *slots)?;
                // Waiting for a slot no longer than an interval: the next check waits on.
                Arc::new(EtcdTurns::new(
                    etcd,
                    group,
                    &self.node_id,
                    self.settings.windows.clone(),
                    *ttl,
                    self.settings.interval,
                ))
            }
            Coordination::FleetLock { url } => Arc::new(FleetLockTurns::new(
                url,
                &self.settings.group,
                &self.node_id,
            )),
        })
    }

    /// Give back the fleet's turn this node holds.
    fn release(&self, turns: &Arc<dyn Turns>, token: Option<i64>) -> Result<()> {
        if turns.give_back(token)? {
            self.shared.event("gave back the reboot slot");
        }
        Ok(())
    }

    /// Stop the group's roll, naming this node and `reason`.
    fn report(&self, turns: &Arc<dyn Turns>, reason: &str) -> Result<()> {
        turns.report_failure(&format!("{}: {reason}", self.node_id))
    }

    /// At start, before any check: finish what the last boot left. The booted slot's health
    /// checks run wherever keel-update's commit runs them (a slot not yet committed, and
    /// always where the boot state cannot tell a committed slot from one being tried:
    /// GRUB and U-Boot under RAUC's rules): committed (and the fleet's slot given back),
    /// or marked bad, the roll paused for the group with the reason, and the node rebooted
    /// into the old slot. Back on the old slot after that, or when the new version never
    /// came up, the roll is paused and the slot given back.
    pub fn boot(&self) -> Result<Outcome> {
        self.shared.update(|s| s.state = "committing".into());
        let pending = state::load(&self.state_dir);
        let turns = self.turns()?;
        let (booted, version) = self.with_agent(|a| {
            let booted = a.booted_slot()?;
            let st = a.status()?;
            let version = st
                .slots
                .iter()
                .find(|s| s.booted)
                .and_then(|s| s.version.clone());
            Ok((booted, version))
        })?;
        self.shared.update(|s| s.version = version.clone());
        let version = version.unwrap_or_default();
        if let Some(Pending::Rebooting {
            version: new,
            lease,
            boot_id,
            ..
        }) = &pending
        {
            if !boot_id.is_empty() && *boot_id == self.boot_id() {
                // The reboot command ran but the machine never went down: the new version
                // is still armed; its turn (and the slot) comes again with the next check.
                self.release(&turns, *lease)?;
                state::save(
                    &self.state_dir,
                    Some(&Pending::Staged {
                        version: new.clone(),
                    }),
                )?;
                self.shared.event(format!(
                    "the reboot into {new} did not happen; it is tried again"
                ));
                return Ok(Outcome::Staged(new.clone()));
            }
        }
        match pending {
            Some(Pending::FallingBack {
                version: bad,
                reason,
                lease,
            }) => {
                // Back on the old slot (the boot loader chose it, the bad one marked).
                self.release(&turns, lease)?;
                state::save(&self.state_dir, None)?;
                self.shared.event(format!(
                    "fell back from {bad} to {version} (slot {booted}): {reason}"
                ));
                self.shared.update(|s| {
                    s.last_error = Some(format!("{bad} failed: {reason}"));
                    s.failures += 1;
                });
                return Ok(Outcome::FellBack(version));
            }
            Some(Pending::Rebooting {
                version: new,
                lease,
                ..
            }) if new != version => {
                // The new version never came up (the boot loader spent its tries and went
                // back): as bad as a failed check, the roll stops.
                let reason = format!("{new} did not boot; the boot loader chose {version}");
                self.report(&turns, &reason)?;
                self.shared.event(format!("fell back: {reason}"));
                self.shared.update(|s| {
                    s.last_error = Some(reason.clone());
                    s.failures += 1;
                });
                self.release(&turns, lease)?;
                state::save(&self.state_dir, None)?;
                return Ok(Outcome::FellBack(version));
            }
            _ => {}
        }
        let lease = match &pending {
            Some(Pending::Rebooting { lease, .. }) => *lease,
            _ => None,
        };
        self.shared.update(|s| s.state = "committing".into());
        match self.with_agent(|a| Ok(a.commit(&self.health)?))? {
            Commit::Committed(_) | Commit::AlreadyGood(_) => {
                // A slot held from before (a crash between boot and release) goes back too.
                self.release(&turns, lease)?;
                match pending {
                    Some(Pending::Staged { .. }) => {
                        // Still on the old slot, the new one armed: its turn to reboot
                        // comes with the next check.
                        return Ok(Outcome::Staged(version));
                    }
                    Some(Pending::Rebooting { .. }) => {}
                    _ => return Ok(Outcome::Steady),
                }
                state::save(&self.state_dir, None)?;
                self.shared
                    .event(format!("committed {version} (slot {booted})"));
                self.shared.update(|s| s.last_error = None);
                Ok(Outcome::Committed(version))
            }
            Commit::RebootNeeded { check, reason, .. } => {
                let why = format!("check {check:?}: {reason}");
                self.shared
                    .event(format!("{version} failed {why}: marked bad, falling back"));
                // The roll stops for the whole group, naming this node and the check.
                self.report(&turns, &format!("{version}: {why}"))?;
                state::save(
                    &self.state_dir,
                    Some(&Pending::FallingBack {
                        version: version.clone(),
                        reason: why,
                        lease,
                    }),
                )?;
                self.reboot(&version)?;
                Ok(Outcome::FallingBack(version))
            }
            other => Err(Error::Setting {
                field: "commit".into(),
                reason: format!("{other:?}: not known to this agent"),
            }),
        }
    }

    /// One check: the signed index, the install of what it names (unless a version is
    /// already staged), then the reboot when the window and the fleet allow.
    pub fn check(&self) -> Result<Outcome> {
        if self.shared.paused() {
            self.shared.update(|s| s.state = "paused".into());
            return Ok(Outcome::Paused);
        }
        let turns = self.turns()?;
        if let Some(why) = turns.paused()? {
            self.shared.update(|s| {
                s.state = "group-paused".into();
                s.group_paused = Some(why.clone());
            });
            return Ok(Outcome::GroupPaused(why));
        }
        self.shared.update(|s| s.group_paused = None);
        let staged = match state::load(&self.state_dir) {
            Some(Pending::Staged { version }) => version,
            Some(Pending::Rebooting { version, at, .. }) => {
                // Going down: nothing is installed over the armed slot. A reboot that has
                // not come in ten minutes is asked for again (the slot taken again).
                if now().saturating_sub(at) < 600 {
                    return Ok(Outcome::Rebooting(version));
                }
                version
            }
            Some(Pending::FallingBack { version, .. }) => {
                return Ok(Outcome::FallingBack(version));
            }
            None => match self.install()? {
                Some(v) => v,
                None if self.shared.paused() => {
                    self.shared.update(|s| s.state = "paused".into());
                    return Ok(Outcome::Paused);
                }
                None => return Ok(Outcome::UpToDate),
            },
        };
        if self.shared.paused() {
            // Paused while installing: staged, no reboot.
            self.shared.update(|s| s.state = "paused".into());
            return Ok(Outcome::Paused);
        }
        self.take_turn(&turns, &staged)
    }

    /// Fetch the index and install the release it names, if newer.
    fn install(&self) -> Result<Option<String>> {
        self.shared.update(|s| {
            s.state = "checking".into();
            s.checks += 1;
            s.last_check = Some(now());
        });
        let root_file = keel_bootflags::spec::under_root(&self.root, &self.settings.trust_root);
        let bad_root = |reason: String| Error::TrustRoot {
            path: self.settings.trust_root.display().to_string(),
            reason,
        };
        let bytes = keel_io::read_bounded(&root_file, keel_release::MAX_ENVELOPE as u64)
            .map_err(|e| bad_root(e.to_string()))?;
        let progress = Installing(&self.shared);
        let started = Instant::now();
        let installed = self.with_agent(|a| {
            let root = keel_release::TrustedRoot::initial(&bytes, a.trusted_now()?)
                .map_err(|e| bad_root(e.to_string()))?;
            let user_agent = self.user_agent();
            let fetch = keel_fetch::FetchOptions::default()
                .max_bytes_per_sec(self.settings.max_rate)
                .user_agent(&user_agent);
            match a.install_from_index(&self.settings.index, &root, fetch, Some(&progress)) {
                // Paused: stopped at a checkpoint, resumed after the pause.
                Err(_) if keel_io::Progress::cancelled(&progress) => Ok(None),
                r => Ok(r?),
            }
        })?;
        self.shared.update(|s| s.progress = None);
        let Some(installed) = installed else {
            self.shared.update(|s| {
                s.state = "idle".into();
                s.last_error = None;
            });
            return Ok(None);
        };
        let version = installed.version.clone();
        state::save(
            &self.state_dir,
            Some(&Pending::Staged {
                version: version.clone(),
            }),
        )?;
        self.shared.event(format!(
            "installed {version} into slot {} ({} images, {} bytes fetched)",
            installed.slot,
            installed.images.len(),
            installed.fetched
        ));
        self.shared.update(|s| {
            s.state = "staged".into();
            s.staged = Some(version.clone());
            s.installs += 1;
            s.fetched_bytes += installed.fetched;
            s.install_seconds = Some(started.elapsed().as_secs());
            s.last_error = None;
        });
        Ok(Some(version))
    }

    /// Inside a reboot window, with the fleet's slot: reboot into `version`.
    fn take_turn(&self, turns: &Arc<dyn Turns>, version: &str) -> Result<Outcome> {
        if !self.settings.windows.contains(now()) {
            self.shared.update(|s| s.state = "staged".into());
            return Ok(Outcome::Staged(version.to_string()));
        }
        self.shared.update(|s| s.state = "waiting-for-slot".into());
        let lease = match turns.take(version)? {
            Turn::Taken(token) => token,
            Turn::NotNow(why) => {
                // Said once, not at every check while the wait goes on.
                let mut last = self.not_now.lock().unwrap_or_else(|e| e.into_inner());
                if last.as_deref() != Some(why.as_str()) {
                    self.shared.event(format!("no reboot slot yet: {why}"));
                    *last = Some(why);
                }
                return Ok(Outcome::Staged(version.to_string()));
            }
        };
        if self.shared.paused() {
            self.release(turns, lease)?;
            return Ok(Outcome::Paused);
        }
        state::save(
            &self.state_dir,
            Some(&Pending::Rebooting {
                version: version.to_string(),
                lease,
                boot_id: self.boot_id(),
                at: now(),
            }),
        )?;
        self.shared.event(format!("rebooting into {version}"));
        if let Err(e) = self.reboot(version) {
            // Not going down: still staged, and the slot is another node's turn.
            state::save(
                &self.state_dir,
                Some(&Pending::Staged {
                    version: version.to_string(),
                }),
            )?;
            self.release(turns, lease)?;
            return Err(e);
        }
        Ok(Outcome::Rebooting(version.to_string()))
    }

    /// The kernel's id of this boot (empty where there is none to read).
    fn boot_id(&self) -> String {
        keel_io::read_bounded(&self.root.join("proc/sys/kernel/random/boot_id"), 64)
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default()
    }

    /// Hold the agent's lock in the state directory while the returned file is open: one
    /// agent per state directory.
    pub fn lock(&self) -> Result<keel_io::FileLock> {
        lock(&self.state_dir)
    }

    fn reboot(&self, version: &str) -> Result<()> {
        self.shared.update(|s| s.state = "rebooting".into());
        self.reboot.reboot(version)
    }

    /// Forever (until `stop`): [`Daemon::boot`], then [`Daemon::check`] every interval
    /// (plus up to the jitter), sooner when the API asks. A failed step is the status's
    /// last error and the next interval tries again: the loop never ends on one.
    pub fn run(&self, stop: &Cancel) {
        let mut booted = false;
        while !stop.is_cancelled() {
            let step = if booted { self.check() } else { self.boot() };
            match step {
                Ok(o) => {
                    booted = true;
                    if matches!(
                        o,
                        Outcome::Steady | Outcome::Committed(_) | Outcome::UpToDate
                    ) {
                        self.shared.update(|s| s.state = "idle".into());
                    }
                    crate::notify::status(&format!("{o:?}"));
                    if matches!(o, Outcome::Rebooting(_) | Outcome::FallingBack(_)) {
                        // Going down: nothing more to do but wait for it.
                        self.shared.sleep(Duration::from_secs(3600), stop);
                        continue;
                    }
                }
                Err(e) => {
                    self.shared.event(format!("failed: {e}"));
                    self.shared.update(|s| {
                        s.state = "failed".into();
                        s.last_error = Some(e.to_string());
                        s.failures += 1;
                    });
                    crate::notify::status(&format!("failed: {e}"));
                }
            }
            crate::notify::ready();
            self.shared.sleep(self.wait(), stop);
        }
    }

    /// The interval plus a random part of the jitter.
    fn wait(&self) -> Duration {
        let jitter = self.settings.jitter.as_millis() as u64;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        let extra = if jitter == 0 { 0 } else { seed % (jitter + 1) };
        self.settings.interval + Duration::from_millis(extra)
    }
}
