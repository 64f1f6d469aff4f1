//! The crate's error type.

use std::io;

/// Everything that can go wrong in keel-payload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What Keel was doing.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A header or manifest field is not allowed.
    #[error("payload: field {field} at byte {offset}: {reason}")]
    BadField {
        /// The field.
        field: &'static str,
        /// Byte offset in the payload.
        offset: u64,
        /// What was expected and what was found.
        reason: String,
    },
    /// The payload ends early.
    #[error("payload truncated: {0}")]
    Truncated(String),
    /// The signature does not verify or the key is not trusted.
    #[error("payload signature: {0}")]
    Signature(String),
    /// A blob does not match its hash.
    #[error("operation {op}: data does not match its sha256")]
    BlobMismatch {
        /// Operation index.
        op: usize,
    },
    /// The source is not the image the payload was made for: apply a full payload.
    #[error("source modified: {0} (a full payload is needed)")]
    SourceModified(String),
    /// The payload is for another system.
    #[error("payload is for {payload:?}, this system is {system:?}")]
    Incompatible {
        /// The payload's compatible string.
        payload: String,
        /// This system's.
        system: String,
    },
    /// A version that cannot be compared.
    #[error("{what} {version:?}: {reason}")]
    BadVersion {
        /// Which version: "installed version" or "payload version".
        what: &'static str,
        /// The text given.
        version: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The payload is for the version already installed.
    #[error("version {0} is already installed (reinstalling it was not asked for)")]
    SameVersion(String),
    /// The target cannot hold the image.
    #[error("the target holds {have} bytes, the image needs {need}")]
    TargetTooSmall {
        /// The target's size.
        have: u64,
        /// The image's size.
        need: u64,
    },
    /// The payload's version is older than the installed one.
    #[error("downgrade from {installed} to {payload} refused")]
    Downgrade {
        /// The installed version.
        installed: String,
        /// The payload's.
        payload: String,
    },
    /// The target would be the source.
    #[error("the target is the source image: refusing to write the running slot")]
    TargetIsSource,
    /// The written target does not match the manifest.
    #[error("target check failed: {0}")]
    TargetMismatch(String),
    /// A request that cannot be satisfied.
    #[error("{0}")]
    Invalid(String),
    /// A verity error.
    #[error(transparent)]
    Verity(#[from] keel_verity::Error),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
