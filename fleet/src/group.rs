//! A reboot semaphore per group, kept in etcd where airlock keeps it, with every holder
//! bound to a lease.
//!
//! Keys, for group `G` (escaped as airlock escapes it, like a URL query value):
//!
//! ```text
//! com.coreos.airlock/groups/G/v1/semaphore         {"total_slots":2,"holders":["a","b"]}   (airlock's)
//! com.coreos.airlock/groups/G/v1/keel/holders/ID   {"id":..,"acquired":UNIX_SECONDS,"lease":"HEX"}
//! com.coreos.airlock/groups/G/v1/keel/alive/ID     bound to the holder's lease
//! com.coreos.airlock/groups/G/v1/keel/paused       {"by":..,"reason":..,"since":UNIX_SECONDS}
//! com.coreos.airlock/groups/G/v1/keel/configured   {"total_slots":2}   (a FleetLock server's)
//! ```
//!
//! The semaphore is airlock's document, unchanged, so airlock and Keel share a group.
//! airlock rewrites that document whole (Go drops fields it does not know), so the lease
//! binding cannot live inside it: it lives beside it. A holder with a `holders/ID` record
//! whose `alive/ID` key is gone has lost its lease: the node died or was deleted, and the
//! next client that reads the group drops it from the semaphore in the same transaction
//! that takes or frees a slot. Holders airlock added have no record and are left alone.
//!
//! Every change is one transaction conditioned on the semaphore's revision (and on the
//! pause key's), so two nodes can never both take the last slot, and a request repeated
//! after a lost answer finds its own holding and does nothing twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_io::Cancel;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::etcd::{Compare, Etcd, Kv, Op};
use crate::lease::Lease;

/// airlock's semaphore document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Semaphore {
    /// How many nodes may hold a slot at once.
    pub total_slots: u64,
    /// The holders' ids, sorted.
    pub holders: Vec<String>,
}

/// Why a group is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Who paused it (an operator, or the id of a node whose update failed).
    pub by: String,
    /// Why.
    pub reason: String,
    /// When, in seconds since the Unix epoch.
    pub since: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    acquired: u64,
    lease: String,
}

/// How a holder's slot is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Binding {
    /// Bound to a live lease with this many seconds left.
    Lease {
        /// The lease's id.
        id: i64,
        /// Seconds left before it expires unless renewed.
        ttl_left: i64,
    },
    /// Its lease has ended; the next client to touch the group drops it.
    Expired,
    /// Added by airlock (or another FleetLock server without leases): held until released.
    Unleased,
}

/// One holder of a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// The node's id.
    pub id: String,
    /// When it took its slot, in seconds since the Unix epoch (unknown for airlock's).
    pub acquired: Option<u64>,
    /// What keeps the slot held.
    pub binding: Binding,
}

/// A group's state as one read saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The group.
    pub group: String,
    /// Slots, as the semaphore document says (0 before the first node set the group up).
    pub total_slots: u64,
    /// Slots as an operator configured them where slots are given out regardless of
    /// the document (a FleetLock server: see [`Group::enforce_slots`]); when it differs
    /// from `total_slots`, that server gives out this many.
    pub configured_slots: Option<u64>,
    /// The holders.
    pub holders: Vec<Holder>,
    /// Set while the roll is stopped.
    pub paused: Option<Pause>,
    /// The etcd revision of the read.
    pub revision: i64,
}

/// What [`Group::try_acquire`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// The slot is held (`already`: it was held by this id before, now bound to this lease).
    Held {
        /// It was held before the call.
        already: bool,
    },
    /// Every slot is taken.
    Full {
        /// Who holds them.
        holders: Vec<String>,
    },
}

/// How long [`Group::acquire`] waits and how often it looks.
#[derive(Debug, Clone, Copy)]
pub struct Wait<'a> {
    /// Give up at this instant (`None`: wait until cancelled).
    pub deadline: Option<Instant>,
    /// Stop waiting when cancelled.
    pub cancel: Option<&'a Cancel>,
    /// Time between looks (jittered by up to a quarter, so waiting nodes spread out).
    pub poll: Duration,
}

impl Default for Wait<'_> {
    fn default() -> Self {
        Wait {
            deadline: None,
            cancel: None,
            poll: Duration::from_millis(500),
        }
    }
}

/// One reboot group.
#[derive(Debug, Clone)]
pub struct Group {
    etcd: Arc<Etcd>,
    name: String,
    base: String,
    slots: u64,
    enforce: bool,
}

/// The slot count a server configured, kept beside the semaphore so `status` can show
/// where it differs from the document.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Configured {
    total_slots: u64,
}

/// Everything under the group's keys, read at one revision.
#[derive(Debug)]
struct State {
    semaphore: Option<(Semaphore, i64)>,
    records: BTreeMap<String, Record>,
    alive: BTreeSet<String>,
    paused: Option<(Pause, i64)>,
    configured: Option<u64>,
    revision: i64,
}

impl State {
    /// The state the keys `kvs` of a read at `revision` make, for the group whose keys
    /// start with `base`. The keys come from etcd, so they are not trusted to start with
    /// `base` or to be UTF-8: a key that does not is skipped.
    fn from_kvs(base: &str, kvs: Vec<Kv>, revision: i64) -> Result<State> {
        let mut st = State {
            semaphore: None,
            records: BTreeMap::new(),
            alive: BTreeSet::new(),
            paused: None,
            configured: None,
            revision,
        };
        for kv in kvs {
            let Some(rest) = kv.key.strip_prefix(base.as_bytes()) else {
                continue;
            };
            let Ok(rest) = std::str::from_utf8(rest) else {
                continue;
            };
            let key = format!("{base}{rest}");
            if rest == "semaphore" {
                let sem: Semaphore = parse(&key, &kv.value)?;
                st.semaphore = Some((sem, kv.mod_revision));
            } else if rest == "keel/paused" {
                st.paused = Some((parse(&key, &kv.value)?, kv.mod_revision));
            } else if rest == "keel/configured" {
                st.configured = Some(parse::<Configured>(&key, &kv.value)?.total_slots);
            } else if rest.starts_with("keel/holders/") {
                let r: Record = parse(&key, &kv.value)?;
                st.records.insert(r.id.clone(), r);
            } else if let Some(id) = rest.strip_prefix("keel/alive/") {
                // The value is the id unescaped; the key holds it escaped.
                let id = String::from_utf8(kv.value).unwrap_or_else(|_| id.to_string());
                st.alive.insert(id);
            }
        }
        Ok(st)
    }

    /// The lease bound to `id`'s holding, when `id` holds a slot through a live lease.
    fn live_lease(&self, id: &str) -> Option<i64> {
        let (sem, _) = self.semaphore.as_ref()?;
        if !sem.holders.iter().any(|h| h == id) || !self.alive.contains(id) {
            return None;
        }
        i64::from_str_radix(&self.records.get(id)?.lease, 16).ok()
    }
}

/// A group name or id as airlock puts it in a key (Go's `url.QueryEscape`).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A JSON document stored under `key`; an error names the key and the field.
fn parse<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T> {
    let mut de = serde_json::Deserializer::from_slice(value);
    serde_path_to_error::deserialize(&mut de).map_err(|e| Error::BadValue {
        key: key.to_string(),
        reason: match e.path().to_string().as_str() {
            "." => e.inner().to_string(),
            path => format!("field {path}: {}", e.inner()),
        },
    })
}

/// Check a node id as every operation does (1 to 253 bytes, no control characters).
pub(crate) fn check_id(id: &str) -> Result<()> {
    check_name("id", id)
}

fn check_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 253 || s.chars().any(char::is_control) {
        return Err(Error::Invalid {
            what: format!("{what} {s:?}"),
            reason: "must be 1 to 253 bytes without control characters".into(),
        });
    }
    Ok(())
}

impl Group {
    /// The group `name`; a node that finds no semaphore creates it with `slots` slots
    /// (an existing group keeps the number it has: [`Group::set_slots`] changes it).
    pub fn new(etcd: &Arc<Etcd>, name: &str, slots: u64) -> Result<Group> {
        check_name("group", name)?;
        if slots == 0 {
            return Err(Error::Invalid {
                what: "slots".into(),
                reason: "a group needs at least one slot".into(),
            });
        }
        Ok(Group {
            etcd: Arc::clone(etcd),
            name: name.to_string(),
            base: format!("com.coreos.airlock/groups/{}/v1/", query_escape(name)),
            slots,
            enforce: false,
        })
    }

    /// Give out the number of slots this value was made with, whatever the semaphore
    /// document says: the operator's configuration wins over a client that changed the
    /// document (`fleet slots`). The count is recorded beside the document, so
    /// [`Group::status`] shows where the two differ. A FleetLock server's groups are
    /// enforced this way.
    pub fn enforce_slots(mut self) -> Group {
        self.enforce = true;
        self
    }

    /// How many nodes may hold a slot at once by what `st` saw: the operator's count where
    /// a FleetLock server recorded one, even for clients that go to etcd directly (a
    /// document raised by `fleet slots` does not let them past it).
    fn limit(&self, st: &State) -> u64 {
        if self.enforce {
            return self.slots;
        }
        let document = st
            .semaphore
            .as_ref()
            .map_or(self.slots, |(sem, _)| sem.total_slots);
        st.configured.map_or(document, |c| document.min(c))
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key of airlock's semaphore document.
    pub fn semaphore_key(&self) -> String {
        format!("{}semaphore", self.base)
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.base).into_bytes()
    }

    fn read(&self) -> Result<State> {
        let range = self.etcd.range(self.base.as_bytes(), true, None)?;
        State::from_kvs(&self.base, range.kvs, range.revision)
    }

    /// The conditions under which what `st` saw still holds.
    fn unchanged(&self, st: &State) -> Vec<Compare> {
        vec![
            match &st.semaphore {
                Some((_, rev)) => Compare::ModRevision(self.key("semaphore"), *rev),
                None => Compare::Version(self.key("semaphore"), 0),
            },
            Compare::ModRevision(
                self.key("keel/paused"),
                st.paused.as_ref().map_or(0, |p| p.1),
            ),
        ]
    }

    /// Holders whose lease ended: dropped from `sem`, their records deleted by `ops`.
    fn reap(&self, st: &State, sem: &mut Semaphore, ops: &mut Vec<Op>) -> bool {
        let before = sem.holders.len();
        sem.holders.retain(|h| {
            let stale = st.records.contains_key(h) && !st.alive.contains(h);
            if stale {
                ops.push(Op::Delete(
                    self.key(&format!("keel/holders/{}", query_escape(h))),
                ));
            }
            !stale
        });
        // Records left behind by a holder released by airlock.
        for id in st.records.keys() {
            if !sem.holders.contains(id) && !st.alive.contains(id) {
                ops.push(Op::Delete(
                    self.key(&format!("keel/holders/{}", query_escape(id))),
                ));
            }
        }
        sem.holders.len() != before
    }

    fn put_semaphore(&self, sem: &Semaphore) -> Result<Op> {
        Ok(Op::Put {
            key: self.key("semaphore"),
            value: serde_json::to_vec(sem).map_err(|e| Error::Invalid {
                what: "semaphore".into(),
                reason: e.to_string(),
            })?,
            lease: 0,
        })
    }

    /// Take a slot for `id`, bound to `lease`, if one is free. A slot `id` already holds
    /// is kept and bound to `lease` (a node that rebooted takes up its own slot). Refused
    /// while the group is paused.
    pub fn try_acquire(&self, id: &str, lease: &Lease) -> Result<Acquire> {
        if lease.is_lost() {
            return Err(Error::LeaseExpired(lease.id()));
        }
        self.try_acquire_bound(id, lease.id())
    }

    /// [`Group::try_acquire`] with a lease known by its id only (a FleetLock server's,
    /// which nobody renews while the node reboots).
    pub(crate) fn try_acquire_bound(&self, id: &str, lease_id: i64) -> Result<Acquire> {
        check_name("id", id)?;
        loop {
            let st = self.read()?;
            if let Some((p, _)) = &st.paused {
                return Err(Error::Paused {
                    group: self.name.clone(),
                    by: p.by.clone(),
                    reason: p.reason.clone(),
                });
            }
            let mut sem = st.semaphore.as_ref().map_or_else(
                || Semaphore {
                    total_slots: self.slots,
                    holders: Vec::new(),
                },
                |s| s.0.clone(),
            );
            let mut ops = Vec::new();
            let reaped = self.reap(&st, &mut sem, &mut ops);
            let already = sem.holders.iter().any(|h| h == id);
            let full = !already && sem.holders.len() as u64 >= self.limit(&st);
            if self.enforce && st.configured != Some(self.slots) {
                ops.push(self.put_configured()?);
            }
            if full {
                // Still write what the reaping found, so `status` shows the truth.
                if reaped || !ops.is_empty() {
                    ops.push(self.put_semaphore(&sem)?);
                    self.etcd.txn(&self.unchanged(&st), &ops)?;
                }
                return Ok(Acquire::Full {
                    holders: sem.holders,
                });
            }
            if !already {
                sem.holders.push(id.to_string());
                sem.holders.sort();
            }
            let acquired = st
                .records
                .get(id)
                .filter(|_| already)
                .map_or_else(now_unix, |r| r.acquired);
            let record = Record {
                id: id.to_string(),
                acquired,
                lease: format!("{lease_id:x}"),
            };
            ops.push(self.put_semaphore(&sem)?);
            ops.push(Op::Put {
                key: self.key(&format!("keel/holders/{}", query_escape(id))),
                value: serde_json::to_vec(&record).map_err(|e| Error::Invalid {
                    what: "holder".into(),
                    reason: e.to_string(),
                })?,
                lease: 0,
            });
            ops.push(Op::Put {
                key: self.key(&format!("keel/alive/{}", query_escape(id))),
                value: id.as_bytes().to_vec(),
                lease: lease_id,
            });
            if self.etcd.txn(&self.unchanged(&st), &ops)?.0 {
                // The holding moved to `lease_id`: a lease it was bound to before (another
                // FleetLock server's, granted for the same node in a race) ends now
                // rather than living out its TTL bound to nothing.
                let previous = st
                    .records
                    .get(id)
                    .filter(|_| already)
                    .and_then(|r| i64::from_str_radix(&r.lease, 16).ok())
                    .filter(|&old| old != lease_id);
                if let Some(old) = previous {
                    let _ = self.etcd.lease_revoke(old);
                }
                return Ok(Acquire::Held { already });
            }
            // Someone else changed the group between the read and the write: look again.
        }
    }

    /// Wait for a slot for `id` (see [`Group::try_acquire`]), looking every
    /// `wait.poll`; a paused group ends the wait with [`Error::Paused`], a deadline or a
    /// cancellation with [`Error::Stopped`]. A cluster that is briefly unavailable (an
    /// election) is waited for too.
    pub fn acquire(&self, id: &str, lease: &Lease, wait: &Wait<'_>) -> Result<()> {
        let mut jitter = (now_unix() ^ (id.len() as u64) << 7 ^ std::process::id() as u64) | 1;
        loop {
            match self.try_acquire(id, lease) {
                Ok(Acquire::Held { .. }) => return Ok(()),
                Ok(Acquire::Full { .. }) | Err(Error::Unavailable { .. }) => {}
                Err(e) => return Err(e),
            }
            if lease.is_lost() {
                return Err(Error::LeaseExpired(lease.id()));
            }
            if wait.cancel.is_some_and(Cancel::is_cancelled) {
                return Err(self.stopped("cancelled"));
            }
            if wait.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(self.stopped("the deadline passed"));
            }
            jitter ^= jitter << 13;
            jitter ^= jitter >> 7;
            jitter ^= jitter << 17;
            let quarter = wait.poll.as_millis() as u64 / 4;
            let sleep = wait
                .poll
                .saturating_add(Duration::from_millis(jitter % (quarter + 1)));
            std::thread::sleep(match wait.deadline {
                Some(d) => sleep.min(d.saturating_duration_since(Instant::now())),
                None => sleep,
            });
        }
    }

    /// Check, in etcd, that `id` still holds its slot through `lease`: the semaphore
    /// lists it, its record names this lease, the lease is alive and has time left.
    /// Returns the instant by which whatever the slot was taken for (a reboot) must
    /// start: the earlier of the lease's own deadline and the end etcd gives it.
    /// Fails with [`Error::SlotLost`] when the slot is no longer this lease's.
    pub fn holding(&self, id: &str, lease: &Lease) -> Result<Instant> {
        check_name("id", id)?;
        let lost = |reason: String| Error::SlotLost {
            group: self.name.clone(),
            id: id.to_string(),
            reason,
        };
        if lease.is_lost() {
            return Err(lost(format!(
                "lease {:x} ended or went unconfirmed past its deadline",
                lease.id()
            )));
        }
        let st = self.read()?;
        match st.live_lease(id) {
            Some(l) if l == lease.id() => {}
            Some(l) => {
                return Err(lost(format!(
                    "the slot is bound to lease {l:x}, not {:x}",
                    lease.id()
                )))
            }
            None => return Err(lost("the group lists no live holding of it".into())),
        }
        let sent = Instant::now();
        let left = self
            .etcd
            .lease_time_to_live(lease.id())?
            .filter(|&t| t > 0)
            .ok_or_else(|| lost(format!("etcd says lease {:x} has ended", lease.id())))?;
        // etcd counts the seconds left down to whole ones, from a moment after `sent`:
        // the lease lives at least that long from `sent`.
        let etcd_end = crate::lease::later(sent, Duration::from_secs(left.unsigned_abs()));
        let deadline = lease.deadline().min(etcd_end);
        if lease.is_lost() || Instant::now() >= deadline {
            return Err(lost(format!("lease {:x} has no time left", lease.id())));
        }
        Ok(deadline)
    }

    /// The lease that binds `id`'s slot, when it holds one through a live lease.
    pub(crate) fn held_lease(&self, id: &str) -> Result<Option<i64>> {
        check_name("id", id)?;
        Ok(self.read()?.live_lease(id))
    }

    fn put_configured(&self) -> Result<Op> {
        Ok(Op::Put {
            key: self.key("keel/configured"),
            value: serde_json::to_vec(&Configured {
                total_slots: self.slots,
            })
            .map_err(|e| Error::Invalid {
                what: "configured slots".into(),
                reason: e.to_string(),
            })?,
            lease: 0,
        })
    }

    fn stopped(&self, reason: &str) -> Error {
        Error::Stopped {
            group: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Free `id`'s slot (and drop holders whose lease ended). Returns whether `id` held
    /// one. Allowed while paused: a node that is back on a good version gives its slot up.
    pub fn release(&self, id: &str) -> Result<bool> {
        self.release_bound(id).map(|(held, _)| held)
    }

    /// [`Group::release`], with the lease the deleted holding was bound to, as read in
    /// the same transaction: a FleetLock server revokes exactly that one (reading it
    /// before the release races with another server rebinding the holding).
    pub(crate) fn release_bound(&self, id: &str) -> Result<(bool, Option<i64>)> {
        check_name("id", id)?;
        loop {
            let st = self.read()?;
            let Some((mut sem, _)) = st.semaphore.clone() else {
                return Ok((false, None));
            };
            let mut ops = Vec::new();
            self.reap(&st, &mut sem, &mut ops);
            let held = sem.holders.iter().any(|h| h == id);
            sem.holders.retain(|h| h != id);
            if !held && ops.is_empty() && !st.records.contains_key(id) {
                return Ok((false, None));
            }
            let lease = st
                .records
                .get(id)
                .and_then(|r| i64::from_str_radix(&r.lease, 16).ok());
            ops.push(self.put_semaphore(&sem)?);
            ops.push(Op::Delete(
                self.key(&format!("keel/holders/{}", query_escape(id))),
            ));
            ops.push(Op::Delete(
                self.key(&format!("keel/alive/{}", query_escape(id))),
            ));
            if self.etcd.txn(&self.unchanged(&st), &ops)?.0 {
                return Ok((held, lease));
            }
        }
    }

    /// The holders, each with how it holds its slot, and the pause switch.
    pub fn status(&self) -> Result<Status> {
        let st = self.read()?;
        let (total_slots, ids) = st
            .semaphore
            .as_ref()
            .map_or((0, Vec::new()), |(s, _)| (s.total_slots, s.holders.clone()));
        let mut holders = Vec::new();
        for id in ids {
            let record = st.records.get(&id);
            let binding = match record {
                None => Binding::Unleased,
                Some(_) if !st.alive.contains(&id) => Binding::Expired,
                Some(r) => {
                    let lease = i64::from_str_radix(&r.lease, 16).map_err(|_| Error::BadValue {
                        key: format!("{}keel/holders/{}", self.base, query_escape(&id)),
                        reason: format!("lease {:?} is not a hexadecimal id", r.lease),
                    })?;
                    match self.etcd.lease_time_to_live(lease)? {
                        Some(ttl_left) => Binding::Lease {
                            id: lease,
                            ttl_left,
                        },
                        None => Binding::Expired,
                    }
                }
            };
            holders.push(Holder {
                acquired: record.map(|r| r.acquired),
                id,
                binding,
            });
        }
        Ok(Status {
            group: self.name.clone(),
            total_slots,
            configured_slots: if self.enforce {
                Some(self.slots)
            } else {
                st.configured
            },
            holders,
            paused: st.paused.map(|p| p.0),
            revision: st.revision,
        })
    }

    /// Set the number of slots (holders are kept; with fewer slots than holders, no new
    /// slot is given until enough are freed).
    pub fn set_slots(&self, slots: u64) -> Result<()> {
        if slots == 0 {
            return Err(Error::Invalid {
                what: "slots".into(),
                reason: "a group needs at least one slot".into(),
            });
        }
        loop {
            let st = self.read()?;
            let mut sem = st.semaphore.as_ref().map_or_else(
                || Semaphore {
                    total_slots: slots,
                    holders: Vec::new(),
                },
                |s| s.0.clone(),
            );
            sem.total_slots = slots;
            if self
                .etcd
                .txn(&self.unchanged(&st), &[self.put_semaphore(&sem)?])?
                .0
            {
                return Ok(());
            }
        }
    }

    /// Stop the roll: no node takes a slot until [`Group::resume`]. The first pause
    /// stands (a second one does not overwrite who paused and why); returns it.
    pub fn pause(&self, by: &str, reason: &str) -> Result<Pause> {
        let pause = Pause {
            by: by.to_string(),
            reason: reason.to_string(),
            since: now_unix(),
        };
        let value = serde_json::to_vec(&pause).map_err(|e| Error::Invalid {
            what: "pause".into(),
            reason: e.to_string(),
        })?;
        let key = self.key("keel/paused");
        let put = Op::Put {
            key: key.clone(),
            value,
            lease: 0,
        };
        if self.etcd.txn(&[Compare::Version(key, 0)], &[put])?.0 {
            return Ok(pause);
        }
        Ok(self.read()?.paused.map_or(pause, |p| p.0))
    }

    /// Let the roll go on.
    pub fn resume(&self) -> Result<()> {
        self.etcd.delete(&self.key("keel/paused")).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_go_query_escape() {
        assert_eq!(query_escape("default"), "default");
        assert_eq!(query_escape("a b/c"), "a+b%2Fc");
        assert_eq!(query_escape("ü"), "%C3%BC");
    }

    #[test]
    fn keys_outside_the_group_or_not_utf8_are_skipped() {
        let base = "com.coreos.airlock/groups/g/v1/";
        let kv = |key: Vec<u8>, value: &[u8]| Kv {
            key,
            value: value.to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: 0,
        };
        // A two-byte character whose first byte sits where the group's prefix ends, and
        // keys etcd should never have returned for this prefix: skipped, not a panic.
        let mut straddling = base.as_bytes()[..base.len() - 1].to_vec();
        straddling.extend_from_slice("é/semaphore".as_bytes());
        let mut bad_utf8 = base.as_bytes().to_vec();
        bad_utf8.extend_from_slice(b"keel/holders/\xff\xfe");
        let kvs = vec![
            kv(straddling, b"{}"),
            kv("ünrelated".as_bytes().to_vec(), b"{}"),
            kv(b"x".to_vec(), b"{}"),
            kv(bad_utf8, b"not json"),
            kv(
                format!("{base}semaphore").into_bytes(),
                br#"{"total_slots":2,"holders":["a"]}"#,
            ),
        ];
        let st = State::from_kvs(base, kvs, 7).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(st.semaphore.map(|s| s.0.holders), Some(vec!["a".into()]));
        assert!(st.records.is_empty());
    }

    #[test]
    fn airlock_document_round_trips() {
        let text = r#"{"total_slots":2,"holders":["a","b"]}"#;
        let sem: Semaphore = serde_json::from_str(text).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(sem.holders, ["a", "b"]);
        assert_eq!(serde_json::to_string(&sem).ok().as_deref(), Some(text));
    }
}
