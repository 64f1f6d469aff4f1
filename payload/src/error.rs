//! The crate's error type: typed, so an update agent can act on it without reading
//! messages ([`Error::needs_full_payload`], [`Error::is_retryable`],
//! [`Error::is_corruption`]).

use std::io;

/// Which part of the payload a stream ended inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Section {
    /// The 64-byte header.
    Header,
    /// The manifest.
    Manifest,
    /// The signature.
    Signature,
    /// An operation's blob.
    Data,
    /// The data before a resume point.
    ResumePoint,
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Section::Header => "header",
            Section::Manifest => "manifest",
            Section::Signature => "signature",
            Section::Data => "operation data",
            Section::ResumePoint => "data before the resume point",
        })
    }
}

/// What of the written target does not match the signed manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TargetCheck {
    /// The image digest: found, then expected.
    Digest {
        /// What the target gives.
        found: [u8; 32],
        /// What the manifest promises.
        expected: [u8; 32],
    },
    /// The dm-verity root of the target differs from the signed descriptor's.
    VerityRoot,
    /// Target blocks that CHAIN operation `op` builds on are not what earlier operations
    /// wrote (changed during the apply).
    ChainReference {
        /// The operation.
        op: usize,
    },
}

impl std::fmt::Display for TargetCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetCheck::Digest { found, expected } => write!(
                f,
                "the written target's digest is {}, expected {}",
                hex::encode(found),
                hex::encode(expected)
            ),
            TargetCheck::VerityRoot => {
                f.write_str("the target's dm-verity root differs from the signed one")
            }
            TargetCheck::ChainReference { op } => {
                write!(f, "operation {op}: the target blocks it builds on changed")
            }
        }
    }
}

/// Everything that can go wrong in keel-payload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error, with what was being done (never reported as a modified source).
    #[error(transparent)]
    Io(keel_io::IoError),
    /// A header or manifest field is not allowed.
    #[error("field {field} at byte {offset} of the payload: {reason}")]
    BadField {
        /// The field.
        field: &'static str,
        /// Byte offset in the payload.
        offset: u64,
        /// What was expected and what was found.
        reason: String,
    },
    /// A block store's header, index or data is not allowed (as [`Error::BadField`], for
    /// a store).
    #[error("field {field} at byte {offset} of the block store: {reason}")]
    StoreField {
        /// The field.
        field: &'static str,
        /// Byte offset in the store.
        offset: u64,
        /// What was expected and what was found.
        reason: String,
    },
    /// The payload ends early.
    #[error("payload truncated: it ends inside the {section} ({got} of {expected} bytes)")]
    Truncated {
        /// Where it ends.
        section: Section,
        /// Bytes of that section present.
        got: u64,
        /// Bytes of that section needed.
        expected: u64,
    },
    /// The payload is signed by a key the keyring does not hold.
    #[error("payload signature: key {} is not trusted", hex::encode(key_id))]
    UntrustedKey {
        /// The signer's key id (sha256 of its public key's DER).
        key_id: [u8; 32],
    },
    /// The signature does not verify under the trusted key.
    #[error("payload signature does not verify: the header or manifest was changed")]
    BadSignature,
    /// A blob does not match its hash.
    #[error("operation {op}: data does not match its sha256")]
    BlobMismatch {
        /// Operation index.
        op: usize,
    },
    /// A blob that matches its hash does not decode to the operation's output.
    #[error("operation {op}: {reason}")]
    Decode {
        /// Operation index.
        op: usize,
        /// What went wrong.
        reason: String,
    },
    /// The source is not the image the payload was made for: apply a full payload.
    #[error("source modified: {} (a full payload is needed)", match op { Some(i) => format!("operation {i}: its source blocks changed"), None => "the source's digest differs from the one the payload was made for".to_string() })]
    SourceModified {
        /// The operation whose source blocks differ; `None` for the whole image.
        op: Option<usize>,
    },
    /// The payload re-creates compressed blocks with a compressor version this build does
    /// not have (another version may compress differently): apply a full payload.
    #[error("the payload re-creates blocks with {needs}, this build has {have} (a full payload is needed)")]
    Recompressor {
        /// What the payload names.
        needs: String,
        /// What this build links.
        have: String,
    },
    /// A delta payload was given no source (or one smaller than its image).
    #[error("a delta payload needs its source image ({0})")]
    MissingSource(String),
    /// The payload is for another system.
    #[error("payload is for {payload:?}, this system is {system:?}")]
    Incompatible {
        /// The payload's compatible string.
        payload: String,
        /// This system's.
        system: String,
    },
    /// A version that cannot be compared.
    #[error("{what}: {reason}")]
    BadVersion {
        /// Which version: "installed version" or "payload version".
        what: &'static str,
        /// The text given.
        version: String,
        /// What is wrong with it (the text, the part and why).
        #[source]
        reason: keel_version::VersionError,
    },
    /// The payload is for the version already installed.
    #[error("version {0} is already installed (reinstalling it was not asked for)")]
    SameVersion(String),
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
    /// The target cannot hold the image.
    #[error("the target holds {have} bytes, the image needs {need}")]
    TargetTooSmall {
        /// The target's size.
        have: u64,
        /// The image's size.
        need: u64,
    },
    /// The written target does not match the manifest.
    #[error("target check failed: {0}")]
    TargetMismatch(TargetCheck),
    /// The caller stopped the apply through its progress observer; the target was synced
    /// and the resume record written first, so running again continues.
    #[error("cancelled (the apply can be resumed)")]
    Cancelled,
    /// A manifest field the generator will not write (too long, empty).
    #[error("{field}: {reason}")]
    ManifestField {
        /// The field (`compatible`, `version`).
        field: &'static str,
        /// What is wrong, with the value.
        reason: String,
    },
    /// A block or file of a file-system image does not decompress as the image's own
    /// metadata says (a damaged or foreign image given to the generator).
    #[error("{image}: {what} does not decompress")]
    Undecodable {
        /// The image's format (`EROFS`, `squashfs`, `gzip file`).
        image: &'static str,
        /// What (a file's path, a pcluster).
        what: String,
    },
    /// The generator found its own plan inconsistent: reported, never a panic.
    #[error("generator: {0}")]
    Internal(String),
    /// The target is not a regular file or a block device.
    #[error("the target is neither a regular file nor a block device")]
    TargetKind,
    /// The target file cannot grow to the image's size.
    #[error("the target file needs {need} more bytes of space (the image's data past the file's end), its file system has {free} bytes free")]
    TargetSpace {
        /// The bytes the file grows by that are not zeros (holes take no space).
        need: u64,
        /// The bytes free.
        free: u64,
    },
    /// A bundle given to a call for one image ([`crate::Payload::apply`]): each of its
    /// images goes to its own target ([`crate::Payload::apply_next`]).
    #[error("a bundle of {images} images: apply each into its own target")]
    Bundle {
        /// How many images it has.
        images: usize,
    },
    /// Every image of the payload was applied or skipped already, or an earlier one
    /// failed part way (the stream is not at an image's start).
    #[error("no image of the payload is left to apply")]
    NoImageLeft,
    /// A bundle's images do not answer the description: an image it needs is missing,
    /// or the bundle has one it does not know.
    #[error("bundle image {image:?}: {reason}")]
    BundleImages {
        /// The image.
        image: String,
        /// Missing, or not in the description.
        reason: &'static str,
    },
    /// A verity error.
    #[error(transparent)]
    Verity(#[from] keel_verity::Error),
    /// A key problem other than an untrusted key or a bad signature: an expired key, a
    /// signer that failed while generating.
    #[error(transparent)]
    Trust(keel_trust::Error),
}

impl From<keel_trust::Error> for Error {
    fn from(e: keel_trust::Error) -> Self {
        match e {
            keel_trust::Error::Untrusted(id) => Error::UntrustedKey { key_id: id.0 },
            keel_trust::Error::BadSignature(_) => Error::BadSignature,
            e => Error::Trust(e),
        }
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        // A reader that was cancelled (keel-fetch's, through its own progress) says so
        // inside the error; it is the caller's cancellation, not an I/O failure.
        if source
            .get_ref()
            .is_some_and(|e| e.is::<keel_io::Cancelled>())
        {
            return Error::Cancelled;
        }
        Error::Io(keel_io::IoError::new(context, source))
    }

    /// The running slot is not the image this delta was made for: fetch and apply the
    /// full payload instead (retrying the delta cannot succeed).
    pub fn needs_full_payload(&self) -> bool {
        matches!(
            self,
            Error::SourceModified { .. } | Error::MissingSource(_) | Error::Recompressor { .. }
        )
    }

    /// Trying again may succeed: the stream ended early, an I/O error of a passing kind,
    /// or the caller cancelled. A resumed apply continues from its record.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Truncated { .. } | Error::Cancelled => true,
            Error::Io(e) => matches!(
                e.source.kind(),
                io::ErrorKind::Interrupted
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }

    /// The payload's bytes are damaged or forged (fetch it again from a trusted place;
    /// applying the same bytes again will fail the same way).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::BadField { .. }
                | Error::StoreField { .. }
                | Error::BadSignature
                | Error::BlobMismatch { .. }
                | Error::Decode { .. }
        )
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
