//! A node's part in a rolling update, as Zincati plays it: free the slot once booted and
//! steady, stage the update, wait for a reboot window and a slot, reboot, commit, free
//! the slot; a node whose new version fails stops the roll for everyone.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::group::{now_unix, Group, Pause, Wait};
use crate::lease::Lease;
use crate::policy::Windows;

/// One node of a group.
#[derive(Debug, Clone)]
pub struct Node<'g> {
    group: &'g Group,
    id: String,
    windows: Windows,
}

impl<'g> Node<'g> {
    /// The node `id` of `group`, rebooting only inside `windows` (none: any time).
    pub fn new(group: &'g Group, id: &str, windows: Windows) -> Node<'g> {
        Node {
            group,
            id: id.to_string(),
            windows,
        }
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The node's group.
    pub fn group(&self) -> &'g Group {
        self.group
    }

    /// After a boot, once the node is healthy (its slot committed): free a slot it still
    /// holds from before the reboot. Returns whether it held one. Run it at every start,
    /// so a node that crashed between reboot and release gives its slot back.
    pub fn steady_state(&self) -> Result<bool> {
        self.group.release(&self.id)
    }

    /// Before rebooting into a staged update: wait for a reboot window, then for a slot
    /// (bound to `lease`, which must outlive the reboot: see [`Lease`]). Returns the
    /// instant by which the reboot must start: the slot is checked in etcd just before
    /// (the holder record names `lease`, and etcd gives the lease time left), and past
    /// that instant the lease may have ended and the slot gone to another node. Fails
    /// with [`Error::Paused`] when the roll is stopped, [`Error::Stopped`] at the
    /// deadline or on cancellation, [`Error::SlotLost`] (or [`Error::LeaseExpired`])
    /// when the lease ended while waiting or holding.
    pub fn pre_reboot(&self, lease: &Lease, wait: &Wait<'_>) -> Result<Instant> {
        loop {
            let now = now_unix();
            if self.windows.contains(now) {
                break;
            }
            let stopped = |reason: String| Error::Stopped {
                group: self.group.name().to_string(),
                reason,
            };
            let open = self
                .windows
                .next_open(now)
                .ok_or_else(|| stopped("the reboot windows name no day".into()))?;
            if wait.cancel.is_some_and(keel_io::Cancel::is_cancelled) {
                return Err(stopped("cancelled".into()));
            }
            let until_open = Duration::from_secs(open.saturating_sub(now));
            let opens_at = Instant::now().checked_add(until_open);
            if wait
                .deadline
                .is_some_and(|d| opens_at.is_none_or(|at| at > d))
            {
                return Err(stopped(format!(
                    "outside the reboot windows until {open} (Unix time), after the deadline"
                )));
            }
            std::thread::sleep(until_open.min(wait.poll.max(Duration::from_millis(100))));
        }
        self.group.acquire(&self.id, lease, wait)?;
        self.holding(lease)
    }

    /// Check that this node still holds its slot through `lease` (see
    /// [`Group::holding`]): run it again after any pause before acting on the slot.
    /// Returns the instant by which the reboot must start.
    pub fn holding(&self, lease: &Lease) -> Result<Instant> {
        self.group.holding(&self.id, lease)
    }

    /// The new version failed its health check and the node is back on the old one: stop
    /// the roll (the pause names this node and the reason) and free the slot.
    pub fn report_failure(&self, reason: &str) -> Result<Pause> {
        let pause = self.group.pause(&self.id, reason)?;
        self.group.release(&self.id)?;
        Ok(pause)
    }
}

/// What a node's update side does during a roll: keel-update's agent, or any other.
/// [`Roll`] calls it in order: [`Host::version`], [`Host::stage`], then (holding a slot)
/// [`Host::reboot`], [`Host::commit`], and after a failed check [`Host::reboot`] again.
pub trait Host {
    /// What the host's steps fail with.
    type Error: std::error::Error + Send + Sync + 'static;
    /// The version the node runs now.
    fn version(&mut self) -> std::result::Result<String, Self::Error>;
    /// Install the update into the slot not running and arm it; the version staged.
    fn stage(&mut self) -> std::result::Result<String, Self::Error>;
    /// Reboot into whatever the boot loader chooses. A real device does not return from
    /// this: its next start runs [`Roll::after_boot`].
    fn reboot(&mut self) -> std::result::Result<(), Self::Error>;
    /// After a boot: run the health checks and commit the booted slot. `Ok(None)`: it is
    /// committed; `Ok(Some(reason))`: a check failed and the slot is marked bad, so the
    /// next reboot falls back.
    fn commit(&mut self) -> std::result::Result<Option<String>, Self::Error>;
}

/// What happened to a node in a [`Roll`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The new version runs, committed; the slot is free again.
    Committed {
        /// The version now running.
        version: String,
        /// Reboots made.
        reboots: u32,
        /// How long the node held its slot.
        held: Duration,
    },
    /// The new version failed its check: the node is back on the old one and the roll is
    /// paused for the whole group, naming this node and the check.
    FellBack {
        /// The version now running.
        version: String,
        /// Reboots made.
        reboots: u32,
        /// How long the node held its slot.
        held: Duration,
        /// The failure, as the pause records it.
        reason: String,
    },
    /// The roll is paused, the reboot windows or the deadline did not allow a slot: the
    /// node stays on its version (staged or not) and holds nothing.
    NotRebooted {
        /// The version still running.
        version: String,
        /// Why.
        reason: String,
    },
    /// The slot was lost while held (the lease ended: a stopped process, a reboot longer
    /// than the TTL): the node did not act on it.
    Lost {
        /// The version running.
        version: String,
        /// Why.
        reason: String,
    },
}

/// Something the roll tells as it goes (for logs and progress).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A slot held from before the last boot was given back.
    FreedHeldSlot,
    /// The update is staged.
    Staged {
        /// The version staged.
        version: String,
    },
    /// The node holds a slot and reboots now.
    Rebooting,
    /// The node is up again after a reboot.
    Booted,
}

/// A node's whole rolling update, as Zincati plays it with rpm-ostree: free a slot held
/// from before, stop if the group is paused, stage, take a slot inside the reboot windows
/// (bound to a lease of `ttl`), reboot before the lease can end, commit after the boot and
/// free the slot; a failed check falls back and pauses the group for everyone.
#[derive(Debug)]
pub struct Roll<'a> {
    /// The cluster (for the lease).
    pub etcd: &'a std::sync::Arc<crate::etcd::Etcd>,
    /// This node.
    pub node: &'a Node<'a>,
    /// The lease's TTL: the longest a reboot may take.
    pub ttl: Duration,
    /// Give up waiting for a slot at this instant (none: wait on).
    pub deadline: Option<Instant>,
}

/// A failure of the roll: the fleet's, or the host's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RollError<E: std::error::Error + 'static> {
    /// etcd, the group, the lease.
    #[error(transparent)]
    Fleet(#[from] Error),
    /// The host's step (stage, reboot, commit).
    #[error(transparent)]
    Host(E),
}

impl Roll<'_> {
    /// Run the roll for this node, with `host` doing the update's steps and `on` told
    /// each step. The reboot is `host.reboot()` returning; after it the lease is taken up
    /// again by id, as an agent does from its state after a real boot.
    pub fn run<H: Host>(
        &self,
        host: &mut H,
        on: &mut dyn FnMut(&Event),
    ) -> std::result::Result<Outcome, RollError<H::Error>> {
        let node = self.node;
        // Booted and steady: a slot held from before the last boot goes back first.
        if node.steady_state()? {
            on(&Event::FreedHeldSlot);
        }
        let before = host.version().map_err(RollError::Host)?;
        if let Some(p) = node.group().status()?.paused {
            return Ok(Outcome::NotRebooted {
                version: before,
                reason: format!("the roll is paused by {:?} ({})", p.by, p.reason),
            });
        }
        let staged = host.stage().map_err(RollError::Host)?;
        on(&Event::Staged { version: staged });

        let lease = Lease::grant(self.etcd, self.ttl)?;
        let wait = Wait {
            deadline: self.deadline,
            ..Wait::default()
        };
        let reboot_by = match node.pre_reboot(&lease, &wait) {
            Ok(by) => by,
            Err(e) => {
                let _ = lease.revoke();
                return match e {
                    Error::Paused { .. } | Error::Stopped { .. } => Ok(Outcome::NotRebooted {
                        version: before,
                        reason: e.to_string(),
                    }),
                    e if e.is_slot_lost() => Ok(Outcome::Lost {
                        version: before,
                        reason: e.to_string(),
                    }),
                    e => Err(e.into()),
                };
            }
        };
        let locked = Instant::now();
        if locked >= reboot_by {
            let _ = lease.revoke();
            return Ok(Outcome::Lost {
                version: before,
                reason: "the lease ran out before the reboot".into(),
            });
        }
        on(&Event::Rebooting);
        // The lease is not renewed while the machine is down.
        let lease_id = lease.id();
        drop(lease);
        host.reboot().map_err(RollError::Host)?;
        self.after_boot(host, lease_id, locked, on)
    }

    /// The part of [`Roll::run`] after the reboot: take the lease up again, commit, free
    /// the slot (or fall back and pause the group). `locked` is when the slot was taken.
    pub fn after_boot<H: Host>(
        &self,
        host: &mut H,
        lease_id: i64,
        locked: Instant,
        on: &mut dyn FnMut(&Event),
    ) -> std::result::Result<Outcome, RollError<H::Error>> {
        let node = self.node;
        let lease = match Lease::resume(self.etcd, lease_id) {
            Ok(lease) => lease,
            // The reboot took longer than the TTL: the slot may be another node's by now.
            Err(e) if e.is_slot_lost() => {
                return Ok(Outcome::Lost {
                    version: host.version().map_err(RollError::Host)?,
                    reason: e.to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        on(&Event::Booted);
        match host.commit().map_err(RollError::Host)? {
            None => {
                node.steady_state()?;
                lease.revoke()?;
                Ok(Outcome::Committed {
                    version: host.version().map_err(RollError::Host)?,
                    reboots: 1,
                    held: locked.elapsed(),
                })
            }
            Some(why) => {
                // The boot loader falls back; this node then stops the roll for everyone.
                host.reboot().map_err(RollError::Host)?;
                let reason = format!("{}: {why}", node.id());
                node.report_failure(&reason)?;
                lease.revoke()?;
                Ok(Outcome::FellBack {
                    version: host.version().map_err(RollError::Host)?,
                    reboots: 2,
                    held: locked.elapsed(),
                    reason,
                })
            }
        }
    }
}
