//! A lease kept alive by a background thread while the node works.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::etcd::Etcd;

#[derive(Debug, Default)]
struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    lost: AtomicBool,
}

/// An etcd lease, renewed every third of its TTL by a thread of its own while this value
/// lives. A holding bound to it ends when the lease ends: revoked, or expired because the
/// process died or lost the cluster for longer than the TTL.
///
/// Dropping the value stops the renewals without revoking: a node that reboots while it
/// holds a slot keeps it for up to one TTL, and after the boot [`Lease::resume`] takes it
/// up again by id. So the TTL is the longest a reboot may take before the slot goes to
/// the next node.
#[derive(Debug)]
pub struct Lease {
    etcd: Arc<Etcd>,
    id: i64,
    ttl: i64,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Lease {
    /// A new lease of `ttl` (etcd raises a TTL below its minimum, about 2 s).
    pub fn grant(etcd: &Arc<Etcd>, ttl: Duration) -> Result<Lease> {
        let (id, ttl) = etcd.lease_grant(ttl)?;
        Ok(Lease::keep(etcd, id, ttl))
    }

    /// Take up the lease `id` again (after a restart or a reboot): renewed at once, or
    /// [`Error::LeaseExpired`] when it ended in the meantime.
    pub fn resume(etcd: &Arc<Etcd>, id: i64) -> Result<Lease> {
        let ttl = etcd.lease_keepalive(id)?.ok_or(Error::LeaseExpired(id))?;
        Ok(Lease::keep(etcd, id, ttl))
    }

    fn keep(etcd: &Arc<Etcd>, id: i64, ttl: i64) -> Lease {
        let shared = Arc::new(Shared::default());
        let thread = {
            let (etcd, shared) = (Arc::clone(etcd), Arc::clone(&shared));
            std::thread::spawn(move || renew(&etcd, id, ttl, &shared))
        };
        Lease {
            etcd: Arc::clone(etcd),
            id,
            ttl,
            shared,
            thread: Some(thread),
        }
    }

    /// The lease's id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL etcd granted, in seconds.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// Whether etcd said the lease had ended (then every holding bound to it is gone).
    pub fn is_lost(&self) -> bool {
        self.shared.lost.load(Ordering::Relaxed)
    }

    /// End the lease now; the keys bound to it go at once.
    pub fn revoke(mut self) -> Result<()> {
        self.stop();
        self.etcd.lease_revoke(self.id)
    }

    fn stop(&mut self) {
        if let Ok(mut stop) = self.shared.stop.lock() {
            *stop = true;
        }
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop();
    }
}

fn renew(etcd: &Etcd, id: i64, ttl: i64, shared: &Shared) {
    let period = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
    let mut next = Instant::now() + period;
    loop {
        {
            let Ok(mut stop) = shared.stop.lock() else {
                return;
            };
            while !*stop {
                let now = Instant::now();
                if now >= next {
                    break;
                }
                stop = match shared.wake.wait_timeout(stop, next - now) {
                    Ok((guard, _)) => guard,
                    Err(_) => return,
                };
            }
            if *stop {
                return;
            }
        }
        next = match etcd.lease_keepalive(id) {
            Ok(Some(_)) => Instant::now() + period,
            Ok(None) => {
                shared.lost.store(true, Ordering::Relaxed);
                return;
            }
            // The cluster is electing or out of reach: try again soon, the lease has
            // two more periods to live.
            Err(_) => Instant::now() + Duration::from_millis(500),
        };
    }
}
