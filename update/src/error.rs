//! The crate's error type.

use std::io;

/// Everything that can go wrong in keel-update. The crates below keep their typed errors
/// (an agent can still ask a payload error [`needs_full_payload`](keel_payload::Error::needs_full_payload)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting of the description cannot be used; `field` is its TOML path.
    #[error("{field}: {reason}")]
    Config {
        /// The setting, as `slot[1].device`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A valid description asks for what this agent does not do (several slot classes
    /// switching together); `field` is the setting's TOML path. Unlike [`Error::Config`],
    /// keel-config accepts the description: it is the agent that falls short.
    #[error("{field}: {reason}")]
    Unsupported {
        /// The setting, as `slot[2].class`.
        field: String,
        /// What is not supported.
        reason: String,
    },
    /// The description has errors (each finding located in its file).
    #[error("the system description has errors:\n{0}")]
    Description(String),
    /// A slot's device cannot be found or opened.
    #[error("slot {slot}: {reason}")]
    Device {
        /// The slot's name in the description.
        slot: String,
        /// What is wrong.
        reason: String,
    },
    /// Two device references of the description (data, tree, boot state) are one
    /// partition, or partitions whose extents overlap, however they are spelled: an install
    /// into one slot would write the other, which may be the running one. Nothing is
    /// written.
    #[error(
        "{first} and {second} name the same or overlapping partitions (partitions \
         {first_partition} and {second_partition} of the boot disk): an install into one \
         would write the other"
    )]
    SameDevice {
        /// The first setting, as `slot[0].hash-device`.
        first: String,
        /// The second setting.
        second: String,
        /// The partition the first names.
        first_partition: u32,
        /// The partition the second names.
        second_partition: u32,
    },
    /// A file class's file of the slot being written is the running slot's file (by
    /// identity or by where it is, however the path is spelled). Nothing is written.
    #[error("file[{class}]: {} is the running slot's file {}", path.display(), booted.display())]
    SameFile {
        /// The file class.
        class: String,
        /// The inactive slot's file.
        path: std::path::PathBuf,
        /// The running slot's file.
        booted: std::path::PathBuf,
    },
    /// A file class's file of the slot being written is another class's file of that slot,
    /// the disk, a boot-state store or a file of the agent's state directory. Nothing is
    /// written.
    #[error("file[{class}]: {} is {}", path.display(), other.display())]
    FileTaken {
        /// The file class.
        class: String,
        /// The inactive slot's file (or its temporary name).
        path: std::path::PathBuf,
        /// What it is besides.
        other: std::path::PathBuf,
    },
    /// Another install holds the agent's lock in its state directory.
    #[error("{}: another install is running (its lock is held)", path.display())]
    Busy {
        /// The lock file.
        path: std::path::PathBuf,
    },
    /// The boot-state store writes bytes of a slot: it is the disk itself (by identity) at
    /// an offset inside a slot's partition. Nothing is written.
    #[error("{field}: the store at byte {offset} of the boot disk lies in {slot}")]
    StoreOnSlot {
        /// The setting that names the store.
        field: String,
        /// The slot's setting.
        slot: String,
        /// Where the store is.
        offset: u64,
    },
    /// Two copies of the boot-state store share bytes: the redundancy would be lost.
    #[error("{field}: two copies of the store share bytes of {}", path.display())]
    StoreOverlap {
        /// The setting that names the store.
        field: String,
        /// The file or device.
        path: std::path::PathBuf,
    },
    /// A block device the kernel (its /sys under the root) does not describe: it cannot be
    /// told apart from a slot, so it is not written.
    #[error("{field}: {} is a block device /sys does not describe", path.display())]
    UnknownDevice {
        /// The setting that names it.
        field: String,
        /// The device.
        path: std::path::PathBuf,
    },
    /// A device path in the description is a partition of another disk than the one
    /// holding the slots' GPT (or the kernel does not know it as a partition at all).
    #[error("{field}: {device} is {found}, not a partition of the boot disk {boot_disk}")]
    OtherDisk {
        /// The setting, as `slot[1].device`.
        field: String,
        /// The path given.
        device: std::path::PathBuf,
        /// What the kernel says it is (`partition 4 of sdz`, `not a known block device`).
        found: String,
        /// The boot disk's kernel name, or how it was given when it has none (an image).
        boot_disk: String,
    },
    /// The payload a release index names for a version is signed as another version.
    #[error("the release index names this payload for version {index}; its signed manifest says {payload}")]
    ReleaseMismatch {
        /// The version the index names.
        index: String,
        /// The version in the payload's signed manifest.
        payload: String,
    },
    /// The payload at a URL the release index names is not the one it pins (its size, or
    /// the digest of its signed header and manifest): found before any of its data is read.
    #[error("{url}: the release index names {index}; the server's payload is {payload}")]
    PayloadMismatch {
        /// The payload's URL as the index gives it.
        url: String,
        /// What the index says (size and manifest digest).
        index: String,
        /// What the payload says.
        payload: String,
    },
    /// The disk handle the agent was given is not the disk the description names (by
    /// identity, not by spelling): an install would write another disk. Nothing is written.
    #[error("the disk given to the agent is not {} ({field}): an install would write another disk than the description's", path.display())]
    WrongDisk {
        /// Which setting names the disk.
        field: &'static str,
        /// The path it gives.
        path: std::path::PathBuf,
    },
    /// The clock reads earlier than the time floor (the agent's build date, or the
    /// timestamp of the last release index accepted): dates cannot be checked.
    #[error("the clock reads {now} (unix time), before {floor}, which this agent has seen already: set the clock")]
    ClockBehind {
        /// The clock.
        now: u64,
        /// The floor.
        floor: u64,
    },
    /// The booted slot cannot be told from the kernel command line and /sys.
    #[error("cannot tell the booted slot: {0}")]
    BootedSlot(String),
    /// The update is refused before anything is written.
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    /// A release index entry cannot be made from the payloads given.
    #[error(transparent)]
    Publish(#[from] crate::publish::PublishError),
    /// A health check failed after boot; the slot was marked bad.
    #[error("health check {check:?} failed: {reason}")]
    HealthCheck {
        /// The check's name.
        check: String,
        /// Why.
        reason: String,
    },
    /// The payload (with its own typed reasons).
    #[error(transparent)]
    Payload(#[from] keel_payload::Error),
    /// dm-verity.
    #[error(transparent)]
    Verity(#[from] keel_verity::Error),
    /// The partition table.
    #[error(transparent)]
    Partition(#[from] keel_partition::Error),
    /// The boot state.
    #[error(transparent)]
    Boot(#[from] keel_bootflags::Error),
    /// Keys.
    #[error(transparent)]
    Trust(#[from] keel_trust::Error),
    /// The release index (below threshold, rollback, freeze...).
    #[error(transparent)]
    Index(#[from] keel_release::IndexError),
    /// Fetching.
    #[error(transparent)]
    Fetch(#[from] keel_fetch::Error),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What Keel was doing.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Whether running the same install again can succeed (an interrupted or cancelled
    /// install resumes).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Payload(e) => e.is_retryable(),
            Error::Verity(keel_verity::Error::Cancelled) => true,
            Error::Io { .. } => true,
            _ => false,
        }
    }

    /// Whether the agent should fetch the full payload instead of this delta.
    pub fn needs_full_payload(&self) -> bool {
        matches!(self, Error::Payload(e) if e.needs_full_payload())
    }
}

/// Why an install is refused before anything is written, with the values that explain it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The image is larger than the slot.
    #[error("the image is {image} bytes, slot {slot} holds {room}")]
    ImageTooLarge {
        /// The slot.
        slot: keel_bootflags::Slot,
        /// The image's size.
        image: u64,
        /// The slot's size.
        room: u64,
    },
    /// The image, its tree and parity do not fit where the tree goes.
    #[error(
        "slot {slot}'s {place} holds {room} bytes; the image, tree and parity there need {need}"
    )]
    TreeTooLarge {
        /// The slot.
        slot: keel_bootflags::Slot,
        /// `partition` or `hash partition`.
        place: &'static str,
        /// Its size.
        room: u64,
        /// What is needed.
        need: u64,
    },
    /// The booted slot cannot be told, and `protect-booted-slot` forbids guessing.
    #[error("{source}; protect-booted-slot forbids writing a slot that may be the running one")]
    BootedSlotUnknown {
        /// Why the booted slot cannot be told.
        #[source]
        source: Box<Error>,
    },
    /// A delta payload, with no booted slot to read its source from.
    #[error("a delta payload needs the booted slot as its source")]
    DeltaWithoutSource,
    /// The payload is for another system.
    #[error("the payload is for {payload:?}, this system is {system:?}")]
    Incompatible {
        /// The payload's compatible string.
        payload: String,
        /// The description's.
        system: String,
    },
    /// A version that cannot be compared.
    #[error("version {version:?}: {source}")]
    BadVersion {
        /// The version.
        version: String,
        /// Why.
        #[source]
        source: keel_version::VersionError,
    },
    /// The payload's version is below the description's minimum.
    #[error("version {version} is below the minimum version {minimum}")]
    BelowMinimum {
        /// The payload's version.
        version: keel_version::Version,
        /// `trust.minimum-version`.
        minimum: keel_version::Version,
    },
    /// The booted slot's version is unknown, so a downgrade cannot be told.
    #[error("the booted slot's version is unknown (no slot record, no VERSION_ID in /etc/os-release), so a downgrade could not be told; allow-downgrade to install anyway")]
    InstalledVersionUnknown,
    /// The booted slot's version is unknown, so no release of an index can be chosen.
    #[error("the booted slot's version is unknown: no release can be chosen")]
    NoReleaseChoice,
    /// The description requires dm-verity; the payload has no signed root.
    #[error("the system requires dm-verity; the payload carries no signed root")]
    NoSignedRoot,
    /// The payload's dm-verity parameters are not the description's.
    #[error("the payload's verity parameters ({payload}) are not the system's")]
    VerityParameters {
        /// The payload's parameters (`sha256 4096/4096 format 1`).
        payload: String,
    },
    /// The signed root covers another size than the image.
    #[error("the signed root covers {signed} bytes, the image is {image}")]
    RootSize {
        /// What the signed root covers.
        signed: u64,
        /// The image's size.
        image: u64,
    },
    /// The payload's images are not the description's slot and file classes: an image
    /// the description has no class for, or a class the payload has no image for. A slot
    /// set switches whole or not at all, so nothing is written.
    #[error("the payload's images {payload:?} are not the description's classes {system:?} (missing: {missing:?}; unknown: {unknown:?})")]
    Images {
        /// The payload's images, by name (`""`: a payload of one unnamed image).
        payload: Vec<String>,
        /// The description's slot and file classes.
        system: Vec<String>,
        /// Classes with no image.
        missing: Vec<String>,
        /// Images with no class.
        unknown: Vec<String>,
    },
    /// An image for a partition named like a file class, or a file image named like a
    /// slot class.
    #[error(
        "image {image:?} is a {payload} image; the description's {image:?} is a {system} class"
    )]
    ImageKind {
        /// The image.
        image: String,
        /// `partition` or `file`.
        payload: &'static str,
        /// `slot` or `file`.
        system: &'static str,
    },
    /// The inactive slot's files do not fit on their filesystem, counting the space its
    /// old files free.
    #[error("{}: the files of slot {slot} need {need} bytes; {room} are free (with the slot's old files removed)", dir.display())]
    FileSpace {
        /// The slot written.
        slot: keel_bootflags::Slot,
        /// A directory of the filesystem.
        dir: std::path::PathBuf,
        /// What the new files need.
        need: u64,
        /// What is free.
        room: u64,
    },
    /// The index names no digest of the payload's signed manifest (`manifest_sha256`, which
    /// Keel's publisher writes): the payload cannot be pinned before its data is read.
    #[error("{url}: the release index gives no manifest_sha256 for it (publish the index with Keel's publisher)")]
    Unpinned {
        /// The payload's URL.
        url: String,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
