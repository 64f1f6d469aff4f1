//! A lease kept alive by a background thread while the node works.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::etcd::Etcd;

/// About thirty years: the instant used where a deadline would not fit the clock.
const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `at + d`, or a far instant when that does not fit the clock: a deadline too far to
/// represent is a deadline never reached.
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(FAR))
        .unwrap_or(at)
}

/// A TTL of etcd's in seconds, as a duration (0 for a negative one).
fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

#[derive(Debug)]
struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    lost: AtomicBool,
    /// The end of the lease as of the last keep-alive etcd confirmed: the instant the
    /// request was sent plus the TTL granted. etcd counts the TTL from when it received
    /// the request, never before it was sent, so the lease cannot end any earlier than
    /// this, and a holder must not act past it without a newer confirmation.
    deadline: Mutex<Instant>,
}

/// An etcd lease, renewed every third of its TTL by a thread of its own while this value
/// lives. A holding bound to it ends when the lease ends: revoked, or expired because the
/// process died or lost the cluster for longer than the TTL.
///
/// The lease knows its own end without asking anyone: each confirmed renewal moves its
/// [`Lease::deadline`] to the instant the renewal was sent plus the TTL. Past it the lease
/// counts as lost ([`Lease::is_lost`]) even when etcd could not be reached to say so,
/// as it is after the process was stopped or cut off from the cluster: another node may
/// hold the slot by then, so a holder checks before it acts.
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
        let sent = Instant::now();
        let (id, ttl) = etcd.lease_grant(ttl)?;
        Lease::keep(etcd, id, ttl, sent)
    }

    /// Take up the lease `id` again (after a restart or a reboot): renewed at once, or
    /// [`Error::LeaseExpired`] when it ended in the meantime.
    pub fn resume(etcd: &Arc<Etcd>, id: i64) -> Result<Lease> {
        let sent = Instant::now();
        let ttl = etcd.lease_keepalive(id)?.ok_or(Error::LeaseExpired(id))?;
        Lease::keep(etcd, id, ttl, sent)
    }

    fn keep(etcd: &Arc<Etcd>, id: i64, ttl: i64, sent: Instant) -> Result<Lease> {
        let shared = Arc::new(Shared {
            stop: Mutex::new(false),
            wake: Condvar::new(),
            lost: AtomicBool::new(false),
            deadline: Mutex::new(later(sent, ttl_duration(ttl))),
        });
        let thread = {
            let (etcd2, shared) = (Arc::clone(etcd), Arc::clone(&shared));
            std::thread::Builder::new()
                .name(format!("lease-{id:x}"))
                .spawn(move || renew(&etcd2, id, ttl, &shared))
        };
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                // Without renewals the lease would end under the holder: give it back.
                let _ = etcd.lease_revoke(id);
                return Err(Error::Invalid {
                    what: format!("lease {id:x}"),
                    reason: format!("no thread to renew it: {e}"),
                });
            }
        };
        Ok(Lease {
            etcd: Arc::clone(etcd),
            id,
            ttl,
            shared,
            thread: Some(thread),
        })
    }

    /// The lease's id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL etcd granted, in seconds.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// The instant the lease ends unless a renewal is confirmed before it: the last
    /// confirmed renewal's sending time plus the TTL.
    pub fn deadline(&self) -> Instant {
        match self.shared.deadline.lock() {
            Ok(d) => *d,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// The time left before [`Lease::deadline`] (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.deadline().saturating_duration_since(Instant::now())
    }

    /// Whether the lease has ended, as far as this process can know: etcd said so, or
    /// its deadline passed without a confirmed renewal (then every holding bound to it
    /// may be gone, and another node may hold the slot).
    pub fn is_lost(&self) -> bool {
        if self.shared.lost.load(Ordering::Relaxed) {
            return true;
        }
        // Once seen past its deadline the lease stays lost: a holder that gave up on its
        // slot must not find it held again by a late renewal.
        let past = Instant::now() >= self.deadline();
        if past {
            self.shared.lost.store(true, Ordering::Relaxed);
        }
        past
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
    let period = ttl_duration(ttl.max(1)) / 3;
    let mut next = later(Instant::now(), period);
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
                stop = match shared
                    .wake
                    .wait_timeout(stop, next.saturating_duration_since(now))
                {
                    Ok((guard, _)) => guard,
                    Err(_) => return,
                };
            }
            if *stop {
                return;
            }
        }
        let sent = Instant::now();
        let deadline = match shared.deadline.lock() {
            Ok(d) => *d,
            Err(_) => return,
        };
        if sent >= deadline {
            // Renewing now could bring back a lease that every other node saw end (etcd
            // may not have expired it yet): the holding is over.
            shared.lost.store(true, Ordering::Relaxed);
            return;
        }
        next = match etcd.lease_keepalive(id) {
            Ok(Some(_)) if shared.lost.load(Ordering::Relaxed) => return,
            Ok(Some(granted)) => {
                if let Ok(mut d) = shared.deadline.lock() {
                    *d = later(sent, ttl_duration(granted));
                }
                later(Instant::now(), period)
            }
            Ok(None) => {
                shared.lost.store(true, Ordering::Relaxed);
                return;
            }
            // The cluster is electing or out of reach: try again soon, the lease has
            // two more periods to live.
            Err(_) => later(Instant::now(), Duration::from_millis(500)),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_saturate_instead_of_overflowing() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now + Duration::from_secs(365 * 86_400));
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(ttl_duration(-1), Duration::ZERO);
        assert_eq!(ttl_duration(i64::MAX), Duration::from_secs(i64::MAX as u64));
    }
}
