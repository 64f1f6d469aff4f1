//! keel-agent: the update loop a node runs by itself, as Zincati (with rpm-ostree) or
//! update_engine with locksmith do: at start, finish what the last boot left (commit the
//! new slot after its health checks, or mark it bad, stop the group's roll and reboot back
//! into the old slot; give back the fleet's reboot slot); then every interval (with
//! jitter) fetch the signed release index, install the release it names for this node in
//! the background (a delta from the booted version where there is one, resumable,
//! bandwidth-capped), wait for a reboot window and the fleet's slot (an etcd semaphore
//! bound to a lease, a FleetLock server, or none), and reboot with the configured command.
//!
//! Its settings are the system description's `[agent]` table (keel-config), with the
//! node's name and group given at first boot by a URL on the kernel command line
//! ([`identity`]); its policies can be replaced by an embedder ([`policy`]: how the fleet
//! takes turns, how the node reboots, functions among the health checks). Its state
//! lives in the state directory (`/var/lib/keel`) beside keel-update's records, so a
//! restart or a reboot goes on where it stopped. [`Daemon`] is the loop, for an OS builder
//! who embeds it; the `keel-agent` program runs it with the local API ([`api`]: status,
//! events, check now, pause and resume, metrics, over a Unix socket) and systemd's
//! notifications (`keel-agent.service`: `Type=notify`, watchdog).
//!
//! Every failure (the network, an index refused, an install error, a lost slot, a failed
//! check) is a state the status and the log name; the loop never ends on one and never
//! busy-waits.

pub mod api;
mod error;
pub mod identity;
mod notify;
pub mod policy;
mod run;
mod settings;
mod state;

pub use error::{Error, Result};
pub use run::{lock, user_agent, Daemon, Outcome};
pub use settings::{Check, Coordination, Settings};
pub use state::{Event, Pending, Shared, Status};

/// Tell systemd the service is up (`READY=1`, where it asked): the program does once its
/// API listens, before the first step, whose health checks may take longer than systemd
/// waits for a start.
pub fn ready() {
    notify::ready();
}

/// Ping systemd's watchdog every half of its interval while the loop is alive (its
/// heartbeat no older than the interval), if systemd asked for one.
pub fn watchdog(shared: std::sync::Arc<Shared>) {
    let Some(every) = notify::watchdog_interval() else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("keel-agent-watchdog".into())
        .spawn(move || loop {
            if shared.heartbeat_age() < every * 2 {
                notify::watchdog();
            }
            std::thread::sleep(every);
        });
}
