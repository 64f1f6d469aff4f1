//! What can go wrong, in words an agent can act on.

/// An error of keel-fleet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No endpoint answered within the operation's time limit; the cluster may be down or
    /// without a leader. Retrying later is right.
    #[error("etcd did not answer within {seconds} s ({endpoints}): {last}")]
    Unavailable {
        /// The endpoints tried.
        endpoints: String,
        /// The time limit, in seconds.
        seconds: u64,
        /// The last failure seen.
        last: String,
    },
    /// etcd answered with an error that retrying the same request will not fix.
    #[error("etcd refused {request}: {message}")]
    Refused {
        /// The API path.
        request: &'static str,
        /// etcd's message.
        message: String,
    },
    /// etcd's answer did not have the shape of its API.
    #[error("etcd's answer to {request} is malformed: {reason}")]
    Malformed {
        /// The API path.
        request: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The value stored under a key is not what keel-fleet (or airlock) writes there.
    #[error("{key}: not a valid value: {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The lease behind a holding expired (the node was gone longer than its TTL).
    #[error("lease {0:x} has expired")]
    LeaseExpired(i64),
    /// A slot this node held is no longer its own: the lease behind it ended or could
    /// not be confirmed before its deadline (the process was stopped, or cut off from
    /// the cluster, for longer than the TTL), or the holder record names another lease.
    /// Another node may hold the slot now: the node must not reboot on it.
    #[error("{id:?} lost its slot of group {group:?}: {reason}")]
    SlotLost {
        /// The group.
        group: String,
        /// The node's id.
        id: String,
        /// What showed the loss.
        reason: String,
    },
    /// The group is paused; nobody may take a slot until an operator resumes it.
    #[error("group {group:?} is paused by {by:?}: {reason}")]
    Paused {
        /// The group.
        group: String,
        /// Who paused it.
        by: String,
        /// Why.
        reason: String,
    },
    /// Waiting for a slot was cancelled, or its deadline passed.
    #[error("stopped waiting for a slot in group {group:?}: {reason}")]
    Stopped {
        /// The group.
        group: String,
        /// Cancelled, or the deadline.
        reason: String,
    },
    /// A setting is out of range (a group name, an id, a window).
    #[error("{what}: {reason}")]
    Invalid {
        /// The setting.
        what: String,
        /// Why it is refused.
        reason: String,
    },
    /// The FleetLock server answered with an error.
    #[error("FleetLock {kind}: {value}")]
    FleetLock {
        /// The error kind (the protocol's `kind`).
        kind: String,
        /// Its description (the protocol's `value`).
        value: String,
    },
}

impl Error {
    /// Whether trying again later may succeed (the cluster unavailable, the group full or
    /// paused), as opposed to a refusal or bad data.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::Paused { .. } | Error::Stopped { .. }
        )
    }

    /// Whether a slot held (or being taken) was lost with its lease: the node must not
    /// act on it, and asks for a slot again if it still needs one.
    pub fn is_slot_lost(&self) -> bool {
        matches!(self, Error::SlotLost { .. } | Error::LeaseExpired(_))
    }
}

/// keel-fleet's result.
pub type Result<T> = std::result::Result<T, Error>;
