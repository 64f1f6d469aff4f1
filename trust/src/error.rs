//! The crate's error type.

/// What can go wrong with keys and signatures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key file or key bytes that are not an Ed25519 key of the expected form.
    #[error("key: {0}")]
    Key(String),
    /// A key that is already in the keyring (a configuration mistake).
    #[error("key {0} is already in the keyring")]
    Duplicate(crate::KeyId),
    /// The signer's key is not in the keyring.
    #[error("key {0} is not trusted")]
    Untrusted(crate::KeyId),
    /// The key was trusted until a date that has passed.
    #[error("key {key_id} was trusted until {not_after} (unix time), it is now {now}")]
    Expired {
        /// The key.
        key_id: crate::KeyId,
        /// Its not-after date, seconds since the epoch.
        not_after: u64,
        /// The time of the check.
        now: u64,
    },
    /// The signature does not verify with the key it names.
    #[error("the signature does not verify with key {0}")]
    BadSignature(crate::KeyId),
    /// A not-after date that is not a calendar date `YYYY-MM-DD`.
    #[error("{0:?} is not a date YYYY-MM-DD")]
    Date(String),
    /// A signer (a callback, a process) failed or gave a signature its key does not
    /// verify.
    #[error("signer: {0}")]
    Signer(String),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What Keel was doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
