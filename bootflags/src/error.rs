//! The crate's error type.

use alloc::string::String;

/// Everything that can go wrong in keel-bootflags. Each parse error names what was wrong
/// and where (field, byte offset or variable).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A structure is shorter or longer than its format requires.
    #[error("{what}: expected {expected} bytes, found {found}")]
    Size {
        /// The structure.
        what: &'static str,
        /// Bytes required.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// A field of a binary structure holds a value that is not allowed.
    #[error("{what}: field {field} at byte {offset}: {reason}")]
    BadField {
        /// The structure.
        what: &'static str,
        /// The field.
        field: &'static str,
        /// Its byte offset.
        offset: usize,
        /// What was expected and what was found.
        reason: String,
    },
    /// A checksum does not match.
    #[error("{what}: CRC-32 mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc {
        /// The structure.
        what: &'static str,
        /// The stored value.
        stored: u32,
        /// The value computed over the bytes.
        computed: u32,
    },
    /// A text environment (grubenv, U-Boot env) is malformed.
    #[error("{what}: {reason} at byte {offset}")]
    Syntax {
        /// The structure.
        what: &'static str,
        /// Byte offset of the problem.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A boot-state variable holds a value its boot loader would not understand.
    #[error("variable {name}: {reason}")]
    BadVariable {
        /// The variable.
        name: String,
        /// What was expected and what was found.
        reason: String,
    },
    /// The new content does not fit the fixed-size store; nothing was changed.
    #[error("{what}: {needed} bytes needed, {capacity} available")]
    Overflow {
        /// The store.
        what: &'static str,
        /// Bytes the content needs.
        needed: usize,
        /// Bytes the store holds.
        capacity: usize,
    },
    /// A slot that does not exist in this store.
    #[error("slot {slot} does not exist (this store has {count} slots)")]
    NoSuchSlot {
        /// The slot letter.
        slot: char,
        /// How many slots there are.
        count: usize,
    },
    /// A store of this many slots (the model and every encoding hold 1 to
    /// [`MAX_SLOTS`](crate::MAX_SLOTS)).
    #[error("{count} slots: 1 to {max} supported")]
    SlotCount {
        /// The count asked for.
        count: usize,
        /// The most there may be.
        max: usize,
    },
    /// A number of tries the boot loader's rules do not allow.
    #[error("tries {tries}: {min} to {max} allowed by these rules")]
    Tries {
        /// The tries asked for.
        tries: u8,
        /// The fewest allowed.
        min: u8,
        /// The most allowed.
        max: u8,
    },
    /// RAUC's GRUB script tries a slot exactly once.
    #[error("tries {0}: RAUC's GRUB script gives exactly one try")]
    OneTry(u8),
    /// A slot state out of the model's ranges.
    #[error("slot {slot}: priority {priority} / tries {tries} out of range 0..15")]
    StateRange {
        /// The slot.
        slot: char,
        /// Its priority.
        priority: u8,
        /// Its tries.
        tries: u8,
    },
    /// A menu order that does not name every slot once.
    #[error("the order must name every slot once")]
    Order,
    /// A variable the boot loader's script owns (`ORDER`, `BOOT_A_LEFT`...).
    #[error("{0} is one of RAUC's variables")]
    ReservedVariable(String),
    /// A store that holds no variables besides its boot state (Android misc), or cannot
    /// carry kernel arguments.
    #[error("{store} holds no {what}")]
    NotCarried {
        /// The store.
        store: &'static str,
        /// What it cannot hold (`variables`, `kernel arguments`).
        what: &'static str,
    },
    /// An environment size outside what U-Boot's tools handle.
    #[error("environment size {size}: expected {min} to {max} bytes")]
    EnvSize {
        /// The size given.
        size: usize,
        /// The least.
        min: usize,
        /// The most.
        max: usize,
    },
    /// Neither copy of a redundant environment is valid.
    #[error("no valid environment copy")]
    NoValidCopy,
    /// An entry id that names no entry file, or several.
    #[error("{dir}: entry id {id:?} names {found} entry files, expected one")]
    EntryFiles {
        /// The entries directory.
        dir: String,
        /// The id.
        id: String,
        /// How many files it names.
        found: usize,
    },
    /// A backend kept in the slots' GPT entries, opened without the disk.
    #[error("the {0} backend keeps its state in the GPT: open it on the disk (keel-partition)")]
    NeedsDisk(&'static str),
    /// A path read from a configuration that climbs out of the root (`..`).
    #[error("{0}: a path with `..` could name a file outside the root")]
    PathEscapes(String),
    /// An entries directory that is not `ESP/loader/entries`.
    #[error("{0}: expected ESP/loader/entries")]
    EntriesDir(String),
    /// The store's state and its backend disagree (a bug, reported rather than a panic).
    #[error("internal: {0}")]
    Internal(&'static str),
    /// An I/O error (with the `std` feature), its kind and source kept.
    #[cfg(feature = "std")]
    #[cfg_attr(docsrs, doc(cfg(feature = "std")))]
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An error of a store implemented outside this crate (the GPT slots of
    /// keel-partition), behind [`BootControl`](crate::BootControl).
    #[error("{store}: {source}")]
    Backend {
        /// The kind of store.
        store: &'static str,
        /// Its error.
        #[source]
        source: alloc::boxed::Box<dyn core::error::Error + Send + Sync>,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = core::result::Result<T, E>;
