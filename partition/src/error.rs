//! The crate's error type.

use std::io;

/// Everything that can go wrong in keel-partition. Table errors name the copy (primary or
/// backup), the field and its byte offset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What Keel was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A field of a GPT structure holds a value that is not allowed.
    #[error("{what}: field {field} at byte {offset}: {reason}")]
    BadField {
        /// The structure ("primary GPT header", "backup partition entry 3", ...).
        what: String,
        /// The field.
        field: &'static str,
        /// Byte offset on the disk.
        offset: u64,
        /// What was expected and what was found.
        reason: String,
    },
    /// Neither copy of the table is usable.
    #[error("no valid GPT: primary: {primary}; backup: {backup}")]
    NoValidTable {
        /// Why the primary copy was refused.
        primary: Box<Error>,
        /// Why the backup copy was refused.
        backup: Box<Error>,
    },
    /// Slots could not be found or do not exist.
    #[error("slots: {0}")]
    Slots(String),
    /// A request that cannot be satisfied (sizes, numbers, layout).
    #[error("{0}")]
    Invalid(String),
    /// A boot-state operation was refused.
    #[error("boot state: {0}")]
    BootFlags(#[from] keel_bootflags::Error),
    /// The kernel could not re-read the partition table because a partition is in use.
    #[error("the kernel did not re-read the partition table: the device is busy (it or a partition is mounted or open); the new table takes effect at the next boot")]
    Busy,
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
