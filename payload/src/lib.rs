//! keel-payload: signed delta update payloads that turn the running slot's image into the
//! next one on the other slot: generate, inspect, apply (read once from any reader, memory
//! bounded by one operation, resumable after power loss), verify.
//!
//! ```
//! use keel_payload::{apply, generate, ApplyOptions, GenerateOptions, VersionCheck};
//! use keel_verity::{Keyring, SigningKey};
//!
//! let old: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
//! let mut new = old.clone();
//! new[300_000..300_100].fill(7); // a small change
//! let key = SigningKey::generate()?;
//! let payload = generate(Some(&old), &new, &key, &GenerateOptions::new("acme", "2.0"))?;
//! assert!(payload.len() < 2048);
//!
//! let mut ring = Keyring::new();
//! ring.add(key.public_key().clone())?;
//! let mut slot_b = vec![0u8; new.len()];
//! let opts = ApplyOptions::new(&ring, VersionCheck::Installed("1.0")).compatible("acme");
//! apply(&payload[..], Some(&old), &mut slot_b, &opts)?;
//! assert_eq!(slot_b, new);
//! # Ok::<(), keel_payload::Error>(())
//! ```
//!
//! The format is documented byte by byte in [`format`](mod@format). The applier checks the signature
//! over header and manifest before it parses the manifest, the source image, compatible
//! string and version before it writes, each blob's hash before decoding it and each
//! operation's source blocks before using them ([`Error::SourceModified`] tells the caller to
//! fetch a full payload), and the whole target at the end.

mod apply;
mod bspatch;
mod digest;
pub mod erofs;
mod error;
pub mod ext4;
pub mod format;
mod generate;
mod gzip;
mod intervals;
mod lz4;
mod recompress;
pub mod squashfs;
mod version;
mod xz;

pub use apply::{
    apply, apply_files, apply_seekable, read_manifest, read_manifest_at, same_file, Applied,
    ApplyOptions, RecordDiscarded, VersionCheck, MAX_RESUMES,
};
pub use error::{Error, Result, Section, TargetCheck};
pub use format::{Extent, Manifest, OpType, Operation};
pub use generate::{assemble, generate, generate_observed, GenerateOptions};
pub use keel_io::{Cancel, Cancelled, Progress, Threads};
pub use recompress::{recompressor, recompressors};
