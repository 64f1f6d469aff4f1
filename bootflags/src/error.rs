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
    /// An operation that is not valid in the current state.
    #[error("{0}")]
    Invalid(String),
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
