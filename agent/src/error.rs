//! What the loop's steps fail with. Every failure is a state the status and the logs name;
//! none ends the loop.

/// A failure of one of the agent's steps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The description has no `[agent]`, or a setting of it cannot be used.
    #[error("{field}: {reason}")]
    Setting {
        /// The setting.
        field: String,
        /// Why.
        reason: String,
    },
    /// keel-update: the index, the install, the commit, the boot state.
    #[error(transparent)]
    Update(#[from] keel_update::Error),
    /// keel-fleet: etcd, the group, the lease, FleetLock.
    #[error(transparent)]
    Fleet(#[from] keel_fleet::Error),
    /// The trusted root could not be read or is not valid.
    #[error("the trusted root {path}: {reason}")]
    TrustRoot {
        /// Its path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The reboot command did not start or failed.
    #[error("the reboot command {command:?}: {reason}")]
    Reboot {
        /// The command.
        command: Vec<String>,
        /// Why.
        reason: String,
    },
    /// The node's identity could not be taken from the URL on the kernel command line
    /// (first boot; [`crate::identity`]).
    #[error("the identity at {url}: {problem}")]
    Identity {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        problem: crate::identity::IdentityProblem,
    },
    /// The identity kept in the state directory breaks the rules it was kept under (it
    /// was edited): refused, not fetched again.
    #[error("{path}: {problem}")]
    KeptIdentity {
        /// The file.
        path: String,
        /// Why.
        #[source]
        problem: crate::identity::IdentityProblem,
    },
    /// A file of the agent's state or its API.
    #[error("{context}: {source}")]
    Io {
        /// What the agent was doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
