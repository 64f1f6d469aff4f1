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
