//! The loop's policies, each a trait an OS builder who embeds [`crate::Daemon`] can
//! replace: how the fleet takes turns to reboot ([`Turns`]: the description's etcd
//! semaphore, FleetLock or none by default; a Kubernetes drain-and-lock or a vendor's
//! rollout service instead), how the node reboots ([`Reboot`]: the description's command
//! by default), and what must hold after a boot (keel-update's [`keel_update::HealthCheck`],
//! commands from the description plus any function, [`crate::Daemon::health_check`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_fleet::{Etcd, Group, Lease, Node, Wait, Windows};

use crate::error::{Error, Result};

/// The answer to a node asking for its turn to reboot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Taken: reboot now. The number (etcd: the lease) is kept across the reboot and
    /// handed back to [`Turns::give_back`].
    Taken(Option<i64>),
    /// Not now, and why (another node's turn, the group paused): asked again at the
    /// next check.
    NotNow(String),
}

/// How a node takes its turn to reboot in its fleet.
pub trait Turns {
    /// Why the group's roll is stopped, if it is (the loop then installs nothing).
    fn paused(&self) -> Result<Option<String>> {
        Ok(None)
    }
    /// Ask for the turn to reboot into `version`.
    fn take(&self, version: &str) -> Result<Turn>;
    /// Give back the turn this node holds (after the commit, or when the reboot did not
    /// happen); `token` is what [`Turn::Taken`] carried. Whether one was held (giving
    /// back what is not held is no error).
    fn give_back(&self, token: Option<i64>) -> Result<bool>;
    /// This node's new version failed (`reason` names the node and the check): stop the
    /// roll for the group, where the policy can.
    fn report_failure(&self, reason: &str) -> Result<()> {
        let _ = reason;
        Ok(())
    }
}

/// No turns: every node reboots once installed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Immediate;

impl Turns for Immediate {
    fn take(&self, _version: &str) -> Result<Turn> {
        Ok(Turn::Taken(None))
    }
    fn give_back(&self, _token: Option<i64>) -> Result<bool> {
        Ok(false)
    }
}

/// The group's semaphore in etcd (airlock's keys), each slot bound to a lease that is
/// not renewed while the machine is down: a node that does not come back frees its slot
/// when the lease ends.
pub struct EtcdTurns {
    etcd: Arc<Etcd>,
    group: Group,
    node: String,
    windows: Windows,
    ttl: Duration,
    wait: Duration,
}

impl std::fmt::Debug for EtcdTurns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTurns")
            .field("group", &self.group.name())
            .field("node", &self.node)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl EtcdTurns {
    /// Node `node` of `group`; a slot is held through a lease of `ttl`; a node waits for
    /// one at most `wait` per ask.
    pub fn new(
        etcd: Arc<Etcd>,
        group: Group,
        node: &str,
        windows: Windows,
        ttl: Duration,
        wait: Duration,
    ) -> EtcdTurns {
        EtcdTurns {
            etcd,
            group,
            node: node.to_string(),
            windows,
            ttl,
            wait,
        }
    }

    fn node(&self) -> Node<'_> {
        Node::new(&self.group, &self.node, self.windows.clone())
    }
}

impl Turns for EtcdTurns {
    fn paused(&self) -> Result<Option<String>> {
        Ok(self
            .group
            .status()?
            .paused
            .map(|p| format!("{} ({})", p.by, p.reason)))
    }

    fn take(&self, _version: &str) -> Result<Turn> {
        let lease = Lease::grant(&self.etcd, self.ttl)?;
        let wait = Wait {
            deadline: Some(Instant::now() + self.wait),
            ..Wait::default()
        };
        match self.node().pre_reboot(&lease, &wait) {
            Ok(by) if Instant::now() < by => {
                // Not renewed while the machine is down.
                let id = lease.id();
                drop(lease);
                Ok(Turn::Taken(Some(id)))
            }
            Ok(_) => {
                let _ = lease.revoke();
                Ok(Turn::NotNow("the lease ran out while waiting".into()))
            }
            Err(e) => {
                let _ = lease.revoke();
                match e {
                    keel_fleet::Error::Paused { .. } | keel_fleet::Error::Stopped { .. } => {
                        Ok(Turn::NotNow(e.to_string()))
                    }
                    e => Err(e.into()),
                }
            }
        }
    }

    fn give_back(&self, token: Option<i64>) -> Result<bool> {
        let held = self.node().steady_state()?;
        if let Some(id) = token {
            // Ended already if the reboot took longer than its TTL.
            if let Ok(l) = Lease::resume(&self.etcd, id) {
                let _ = l.revoke();
            }
        }
        Ok(held)
    }

    fn report_failure(&self, reason: &str) -> Result<()> {
        self.node().report_failure(reason)?;
        Ok(())
    }
}

/// A FleetLock server (Zincati's protocol). It has no pause: the node's own status says
/// why it stopped.
pub struct FleetLockTurns {
    client: keel_fleet::fleetlock::Client,
    group: String,
    node: String,
}

impl std::fmt::Debug for FleetLockTurns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetLockTurns")
            .field("group", &self.group)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl FleetLockTurns {
    /// Node `node` of `group` at the server `url`.
    pub fn new(url: &str, group: &str, node: &str) -> FleetLockTurns {
        FleetLockTurns {
            client: keel_fleet::fleetlock::Client::new(url),
            group: group.to_string(),
            node: node.to_string(),
        }
    }
}

impl Turns for FleetLockTurns {
    fn take(&self, _version: &str) -> Result<Turn> {
        // Refused: asked again at the next check, as Zincati does.
        Ok(match self.client.pre_reboot(&self.group, &self.node) {
            Ok(()) => Turn::Taken(None),
            Err(e) => Turn::NotNow(e.to_string()),
        })
    }
    fn give_back(&self, _token: Option<i64>) -> Result<bool> {
        // FleetLock's release says nothing of what was held.
        self.client.steady_state(&self.group, &self.node)?;
        Ok(false)
    }
}

/// How long the reboot command may run.
pub const REBOOT_COMMAND_TIME: Duration = Duration::from_secs(300);

/// How the node reboots.
pub trait Reboot {
    /// Start the reboot into `version` (already armed); an error leaves the release
    /// staged and the turn given back.
    fn reboot(&self, version: &str) -> Result<()>;
}

/// The description's reboot command, run with `KEEL_VERSION` set; it must exit 0 within
/// [`REBOOT_COMMAND_TIME`] (`systemctl reboot` returns at once; a command that hangs is
/// not a reboot).
#[derive(Clone, Debug)]
pub struct RebootCommand(pub Vec<String>);

impl Reboot for RebootCommand {
    fn reboot(&self, version: &str) -> Result<()> {
        let cmd = &self.0;
        let fail = |reason: String| Error::Reboot {
            command: cmd.clone(),
            reason,
        };
        let (prog, args) = cmd.split_first().ok_or_else(|| fail("empty".into()))?;
        let mut child = std::process::Command::new(prog)
            .args(args)
            .env("KEEL_VERSION", version)
            .spawn()
            .map_err(|e| fail(e.to_string()))?;
        let deadline = Instant::now() + REBOOT_COMMAND_TIME;
        loop {
            match child.try_wait().map_err(|e| fail(e.to_string()))? {
                Some(st) if st.success() => return Ok(()),
                Some(st) => return Err(fail(format!("exited with {st}"))),
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(format!("still running after {REBOOT_COMMAND_TIME:?}")));
                }
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}
