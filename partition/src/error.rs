//! The crate's error type.

use std::io;

/// Everything that can go wrong in keel-partition. Table errors name the copy (primary or
/// backup), the field and its byte offset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error, with what was being done.
    #[error(transparent)]
    Io(keel_io::IoError),
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
    /// A sector size other than 512 or 4096.
    #[error("sector size {0}: 512 or 4096 supported")]
    SectorSize(u64),
    /// A disk too small for a GPT (or for the layout's tables).
    #[error("a disk of {bytes} bytes is too small for a GPT")]
    DiskTooSmall {
        /// The disk's size.
        bytes: u64,
    },
    /// No partition entry with this number.
    #[error("partition {0} does not exist")]
    NoSuchPartition(u32),
    /// The entry with this number is unused.
    #[error("partition {0} is not in use")]
    PartitionUnused(u32),
    /// A partition name that does not fit an entry's 36 UTF-16 units.
    #[error("partition name {name:?} is {units} UTF-16 units, at most 36")]
    NameTooLong {
        /// The name.
        name: String,
        /// Its length in UTF-16 units.
        units: usize,
    },
    /// A text that is not a GUID in the form GPT tools print.
    #[error("{0:?} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")]
    BadGuid(String),
    /// A copy of the table would not fit outside the usable area.
    #[error("no room for the {copy} entry array ({sectors} sectors) outside the usable area")]
    NoRoomForEntries {
        /// Which copy.
        copy: crate::gpt::GptCopy,
        /// The array's size in sectors.
        sectors: u64,
    },
    /// Writing both copies where they would overlap each other.
    #[error("the primary table (LBA {}..{}) and the backup table (LBA {}..{}) would overlap", primary.0, primary.1, backup.0, backup.1)]
    CopiesOverlap {
        /// The primary copy's sectors, end exclusive.
        primary: (u64, u64),
        /// The backup copy's sectors, end exclusive.
        backup: (u64, u64),
    },
    /// A layout partition that cannot be placed.
    #[error("partition {label:?}: {problem}")]
    Layout {
        /// The partition's label.
        label: String,
        /// Why.
        problem: LayoutProblem,
    },
    /// A boot-state operation was refused.
    #[error("boot state: {0}")]
    BootFlags(#[from] keel_bootflags::Error),
    /// The kernel could not re-read the partition table because a partition is in use.
    #[error("the kernel did not re-read the partition table: the device is busy (it or a partition is mounted or open); the new table takes effect at the next boot")]
    Busy,
}

/// Why a partition of a [`crate::Layout`] cannot be placed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutProblem {
    /// It takes the rest of the disk but partitions follow it.
    #[error("takes the rest of the disk but is not the last")]
    RestNotLast,
    /// Its size is 0.
    #[error("has size 0")]
    ZeroSize,
    /// It would end past the last usable sector.
    #[error("ends at LBA {last_lba}, beyond the last usable LBA {last_usable} of a {disk_bytes} byte disk")]
    BeyondDisk {
        /// Where it would end.
        last_lba: u64,
        /// The last usable LBA.
        last_usable: u64,
        /// The disk's size.
        disk_bytes: u64,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io(keel_io::IoError::new(context, source))
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
