//! The crate's error type.

use std::io;

/// Everything that can go wrong in keel-verity.
///
/// Input errors name the field (and, for on-disk structures, its byte offset); corruption
/// found by verification names the block and its byte offset, so a caller can report it or
/// map it to an exit status (see [`Error::is_corruption`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error, with what was being done.
    #[error(transparent)]
    Io(keel_io::IoError),

    /// A parameter is out of range or inconsistent.
    #[error("invalid {field}: {reason}")]
    InvalidParameter {
        /// The parameter, by veritysetup's option name where there is one.
        field: &'static str,
        /// What was expected and what was found.
        reason: String,
    },

    /// A hash algorithm that Keel does not implement.
    #[error(
        "unsupported hash algorithm {name:?} (supported: sha1, sha224, sha256, sha384, sha512)"
    )]
    UnsupportedAlgorithm {
        /// The name as given or as found on disk.
        name: String,
    },

    /// A field of an on-disk structure holds a value that is not allowed.
    #[error("{structure}: field {field} at byte {offset}: {reason}")]
    BadField {
        /// The structure ("verity superblock", "root descriptor", ...).
        structure: &'static str,
        /// The field name.
        field: &'static str,
        /// Its byte offset within the structure.
        offset: usize,
        /// What was expected and what was found.
        reason: String,
    },

    /// A device or buffer is shorter than the geometry requires.
    #[error("{what} too small: need {needed} bytes, found {found}")]
    TooSmall {
        /// The device ("data device", "hash device", "superblock", ...).
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        found: u64,
    },

    /// The top of the hash tree (or, with a single data block, that block) does not hash to
    /// the expected root: a wrong root hash, wrong parameters, or a damaged top hash block.
    #[error("root hash mismatch: expected {expected}, the hash device gives {found}")]
    RootHashMismatch {
        /// The expected root, hex.
        expected: String,
        /// The root computed from the device, hex.
        found: String,
    },

    /// A hash block does not match the digest its parent holds for it, or its unused
    /// bytes are not zero.
    #[error("hash block corrupted: level {level} block {index} (hash device byte offset {offset}){detail}")]
    HashBlockCorrupt {
        /// Tree level, 0 = leaves (digests of data blocks).
        level: usize,
        /// Block index within the level.
        index: u64,
        /// Byte offset of the block on the hash device.
        offset: u64,
        /// Extra detail, empty or starting with ": ".
        detail: String,
    },

    /// A data block does not match its digest in the tree.
    #[error("data block {block} corrupted (data device byte offset {offset}){}", if *.count > 1 { format!("; {count} corrupted data blocks in all") } else { String::new() })]
    DataBlockCorrupt {
        /// The first corrupted data block.
        block: u64,
        /// Its byte offset on the data device.
        offset: u64,
        /// How many data blocks failed in all (1 for single-block checks).
        count: u64,
    },

    /// A repair found more damage than it holds in memory at once; nothing was written.
    #[error("too much damage to repair at once: {what}; nothing was written")]
    TooMuchDamage {
        /// What went past the limit, with the limit.
        what: String,
    },

    /// The caller stopped the work through its progress observer.
    #[error("cancelled")]
    Cancelled,

    /// A key or signature problem: an untrusted or expired key, a signature that does
    /// not verify, a signer that failed.
    #[error(transparent)]
    Trust(#[from] keel_trust::Error),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io(keel_io::IoError::new(context, source))
    }

    pub(crate) fn param(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidParameter {
            field,
            reason: reason.into(),
        }
    }

    /// True for the outcomes of verification that mean the data or tree is not what the
    /// root hash vouches for (as opposed to bad parameters or I/O failures).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::RootHashMismatch { .. }
                | Error::HashBlockCorrupt { .. }
                | Error::DataBlockCorrupt { .. }
        )
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
