//! The crate's error type.

/// What can go wrong with keys and signatures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key file or key bytes that are not an Ed25519 key of the expected form (or a key
    /// that cannot be encoded).
    #[error("key: {action}: {source}")]
    Key {
        /// What was being done (`reading an Ed25519 public key PEM`).
        action: &'static str,
        /// Why it failed (the PKCS#8, SPKI or Ed25519 library's error).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
    /// A signer's callback (an HSM, a KMS) failed; its error is the source.
    #[error("signer: {0}")]
    Signer(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A signing process (`openssl pkeyutl`) failed, or gave something that is not a
    /// 64-byte signature.
    #[error("signer: {program} {reason}")]
    SignerProcess {
        /// The program.
        program: std::path::PathBuf,
        /// What it did (`failed (exit status: 1): <stderr>`, `gave 12 bytes...`).
        reason: String,
    },
    /// A signer gave a signature that its public key does not verify: the wrong key, or
    /// a broken signer.
    #[error("signer: the signature made does not verify with public key {0}: wrong key or broken signer")]
    SignerKeyMismatch(crate::KeyId),
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
