//! keel-payload: signed delta update payloads that turn the running slot's image into the
//! next one on the other slot: generate, inspect, apply (read once from any reader, on
//! every core, memory bounded by one operation and a fixed budget, resumable after power
//! loss), verify.
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
//!
//! # Layout
//!
//! The crate is the format and four rooms; each uses only those listed before it, and no
//! module uses one that uses it back:
//!
//! - [`format`](mod@format) (with the errors, image digests, the version type and the
//!   applier's bounded bspatch): the payload's bytes.
//! - `codec/`: every compression payloads and images use: liblzma (`codec/xz.rs`: squashfs
//!   xz blocks decoded and compressed again as mksquashfs does, the raw LZMA2 streams of
//!   the `_XZ` operations), liblz4 (`codec/lz4.rs`: squashfs lz4 blocks and EROFS
//!   pclusters decoded and compressed again as mksquashfs and mkfs.erofs do), gzip files'
//!   streams re-created with preflate-rs, the zstd decoders' window limit, and the
//!   compressors RECOMPRESS operations use ([`recompressor`], [`recompressors`]).
//! - `fs/`: the read-only readers [`ext4`], [`erofs`] and [`squashfs`] (published at the
//!   crate root), bounds-checked and never trusted; they use `codec/` to decompress.
//! - `recompress.rs`: the RECOMPRESS blob's parameters and writer, which both sides share.
//! - `generate/`: [`generate()`] and [`assemble`], with their file, squashfs, EROFS and gzip
//!   file planners.
//! - `apply/`: [`apply()`] and [`read_manifest`], and the building of RECOMPRESS operations'
//!   blocks.
//! - [`store`](mod@store): block stores for adaptive updates: one published image that
//!   any older image installs from, fetching only the blocks it lacks (its own format, the
//!   verity leaves as the index of what a device has).
//!
//! `unsafe` lives only in `codec/xz.rs` and `codec/lz4.rs`, the FFI to liblzma and liblz4,
//! each block with a `// SAFETY:` comment. The crate links one LZMA (liblzma) and one lz4
//! (liblz4); the pure-Rust lz4_flex is only a dev-dependency, because a test needs a second
//! lz4 encoder whose pclusters liblz4 does not reproduce byte for byte.

mod apply;
mod bspatch;
mod codec;
mod digest;
mod error;
pub mod format;
mod fs;
mod generate;
mod intervals;
mod recompress;
pub mod store;
#[cfg(test)]
mod testdata;
mod version;

pub use apply::{
    apply, apply_files, read_images_at, read_manifest, read_manifest_at, same_file, Applied,
    ApplyOptions, Payload, RecordDiscarded, VersionCheck, APPLY_HELD, APPLY_READ_AHEAD,
    MAX_RESUMES,
};
pub use codec::recompress::{recompressor, recompressors};
pub use error::{Error, Result, Section, TargetCheck};
pub use format::{BundleImage, Extent, ImageKind, Manifest, OpType, Operation};
pub use fs::{erofs, ext4, squashfs};
pub use generate::{
    assemble, generate, generate_bundle, generate_bundle_file, generate_file, generate_observed,
    BundlePart, GenerateOptions,
};
pub use keel_io::{Cancel, Cancelled, Progress, Threads};
