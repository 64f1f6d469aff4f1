//! What the agent knows of itself: the step it is in across reboots (kept in its state
//! directory), and the status and events the local API shows.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What the agent was doing when it last stopped, kept across reboots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "step")]
pub enum Pending {
    /// `version` is installed and armed; the node waits for its turn to reboot.
    Staged {
        /// The version.
        version: String,
    },
    /// The node rebooted into `version` holding the group's slot (under `lease` with etcd).
    Rebooting {
        /// The version.
        version: String,
        /// The etcd lease the slot is bound to.
        lease: Option<i64>,
        /// The kernel's boot id when the reboot command ran: the same id at the next
        /// start means the machine never went down.
        #[serde(default)]
        boot_id: String,
        /// When the reboot command ran (seconds since the epoch).
        #[serde(default)]
        at: u64,
    },
    /// `version` failed its checks; the node rebooted back to the old slot.
    FallingBack {
        /// The version that failed.
        version: String,
        /// Why.
        reason: String,
        /// The etcd lease the slot is bound to.
        lease: Option<i64>,
    },
}

fn pending_path(dir: &Path) -> PathBuf {
    dir.join("agent.json")
}

/// The step kept in `dir`, if any (a record that cannot be read is no step: the boot
/// state on the disk is the truth, the record only says what to finish).
pub(crate) fn load(dir: &Path) -> Option<Pending> {
    let text = keel_io::read_bounded(&pending_path(dir), 64 << 10).ok()?;
    serde_json::from_slice(&text).ok()
}

pub(crate) fn save(dir: &Path, p: Option<&Pending>) -> Result<()> {
    let path = pending_path(dir);
    match p {
        Some(p) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            let bytes = serde_json::to_vec(p).map_err(|e| Error::io("encoding", e.into()))?;
            keel_io::replace_file(&path, &bytes)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))
        }
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", path.display()), e))
            }
            _ => Ok(()),
        },
    }
}

/// What the agent is doing, as `keel-agent status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// `starting`, `idle`, `checking`, `installing`, `staged`, `waiting-for-slot`,
    /// `rebooting`, `committing`, `paused` (by the API), `group-paused`, `failed`.
    pub state: String,
    /// The version running.
    pub version: Option<String>,
    /// The version installed and waiting for a reboot.
    pub staged: Option<String>,
    /// The install's progress: bytes done and in all.
    pub progress: Option<(u64, u64)>,
    /// When the index was last checked (seconds since the epoch).
    pub last_check: Option<u64>,
    /// The last failure, until a step succeeds.
    pub last_error: Option<String>,
    /// Paused through the API.
    pub paused: bool,
    /// The group's pause, with who and why.
    pub group_paused: Option<String>,
    /// Checks made, installs made, failures met.
    pub checks: u64,
    /// See `checks`.
    pub installs: u64,
    /// See `checks`.
    pub failures: u64,
    /// Seconds the last install took.
    pub install_seconds: Option<u64>,
    /// Bytes received for the installs since the agent started.
    #[serde(default)]
    pub fetched_bytes: u64,
}

/// One thing that happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When (seconds since the epoch).
    pub at: u64,
    /// What.
    pub what: String,
}

/// Events kept for the API.
const EVENTS: usize = 64;

struct Inner {
    status: Status,
    events: VecDeque<Event>,
    wake: bool,
}

/// What the loop and the API share: the status, the events, and the wake-up.
pub struct Shared {
    inner: Mutex<Inner>,
    /// One pause or resume at a time: the file and the status agree.
    pausing: Mutex<()>,
    cond: Condvar,
    paused_file: PathBuf,
    beat: Mutex<std::time::Instant>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Shared {
    pub(crate) fn new(state_dir: &Path) -> Shared {
        let paused_file = state_dir.join("paused");
        let status = Status {
            state: "starting".into(),
            paused: paused_file.exists(),
            ..Status::default()
        };
        Shared {
            pausing: Mutex::new(()),
            inner: Mutex::new(Inner {
                status,
                events: VecDeque::new(),
                wake: false,
            }),
            cond: Condvar::new(),
            paused_file,
            beat: Mutex::new(std::time::Instant::now()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status now.
    pub fn status(&self) -> Status {
        self.lock().status.clone()
    }

    /// The events kept, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.iter().cloned().collect()
    }

    /// Change the status (the loop is alive: its heartbeat).
    pub(crate) fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.lock().status);
        self.beat();
    }

    fn beat(&self) {
        *self.beat.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
    }

    /// How long since the loop last showed it is alive.
    pub fn heartbeat_age(&self) -> Duration {
        self.beat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// Tell an event (also to the log: standard error, for the journal).
    pub(crate) fn event(&self, what: impl Into<String>) {
        let what = what.into();
        // A log reader that went away is no reason to stop.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("keel-agent: {what}\n").as_bytes(),
        );
        let mut g = self.lock();
        if g.events.len() == EVENTS {
            g.events.pop_front();
        }
        g.events.push_back(Event { at: now(), what });
    }

    /// Check now, instead of at the end of the interval.
    pub fn check_now(&self) {
        self.lock().wake = true;
        self.cond.notify_all();
    }

    /// Pause or resume the loop (kept across restarts).
    pub fn set_paused(&self, paused: bool) -> Result<()> {
        let _one = self.pausing.lock().unwrap_or_else(|e| e.into_inner());
        let r = if paused {
            self.paused_file
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| {
                    keel_io::replace_file(&self.paused_file, b"paused through the API\n")
                })
        } else {
            match std::fs::remove_file(&self.paused_file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        };
        r.map_err(|e| Error::io(format!("writing {}", self.paused_file.display()), e))?;
        self.update(|s| s.paused = paused);
        self.event(if paused { "paused" } else { "resumed" });
        self.check_now();
        Ok(())
    }

    /// Whether the loop is paused.
    pub fn paused(&self) -> bool {
        self.lock().status.paused
    }

    /// Wait `d`, or until [`Shared::check_now`] or `stop`. Returns whether woken early.
    pub(crate) fn sleep(&self, d: Duration, stop: &keel_io::Cancel) -> bool {
        let until = std::time::Instant::now() + d;
        let mut g = self.lock();
        loop {
            if g.wake {
                g.wake = false;
                return true;
            }
            if stop.is_cancelled() {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= until {
                return false;
            }
            self.beat();
            // Short waits, so a stop request is seen without a wake-up.
            let step = (until - now).min(Duration::from_millis(200));
            g = match self.cond.wait_timeout(g, step) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}
