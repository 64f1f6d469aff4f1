//! keel-verity: dm-verity hash trees byte-identical to `veritysetup format`, verification
//! of whole devices or single blocks, and Ed25519-signed root hashes.
//!
//! ```
//! use keel_verity::{format, open_hash_device, verify, BuildOptions, FormatOptions, VerityParams};
//!
//! // A 1 MiB image; the tree goes to a separate (here in-memory) hash device.
//! let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
//! let params = VerityParams::builder()
//!     .salt(vec![0x5a; 32])
//!     .data_blocks_for(data.len() as u64)
//!     .build()?;
//! let uuid = keel_verity::parse_uuid("11111111-2222-3333-4444-555555555555")?;
//! let mut hash_dev = Vec::new();
//! let opts = FormatOptions::default().superblock(uuid);
//! let formatted = format(&params, &data, &mut hash_dev, &opts)?;
//!
//! // Later, as `veritysetup verify`: parameters come from the superblock.
//! let (sb, geometry) = open_hash_device(&hash_dev, 0)?;
//! verify(sb.params(), &geometry, &data, &hash_dev, &formatted.root_hash, &BuildOptions::default())?;
//! # Ok::<(), keel_verity::Error>(())
//! ```
//!
//! Compatibility: trees, superblocks and root hashes are byte-identical to cryptsetup's
//! `veritysetup` (formats 0 and 1, sha1/sha224/sha256/sha384/sha512, block sizes 512 B to
//! 512 KiB, salts up to 256 bytes, hash offsets, `--data-blocks`); CI checks this against
//! veritysetup in both directions.

mod algorithm;
mod avb;
mod error;
mod fec;
mod format;
mod fsverity;
mod geometry;
mod io;
mod layout;
mod params;
mod sha256x16;
mod sha256x2;
pub mod sign;
mod stream;
mod superblock;
mod table;
mod tree;
mod verify;

pub use algorithm::{
    sha256_pieces, BlockHasher, Digest64, HashAlgorithm, HashType, MAX_DIGEST_SIZE,
};
pub use avb::{avb_hashtree, AvbHashtree, AVB_HASHTREE_DESCRIPTOR_SIZE};
pub use error::{Error, Result};
pub use fec::{
    android_fec_header, fec_encode, fec_repair, fec_verify, AndroidFecHeader, FecGeometry,
    FecReport, RepairReport, RepairTarget, FEC_DEFAULT_ROOTS, FEC_MAX_ROOTS, FEC_MIN_ROOTS,
};
pub use format::{
    existing_tree, format, format_with_fec, open_hash_device, write_tree, FormatOptions, Formatted,
};
pub use fsverity::{fsverity_digest, FsVerity, FSVERITY_DESCRIPTOR_SIZE};
pub use geometry::{Level, TreeGeometry, MAX_LEVELS};
pub use io::{Progress, ReadAt, WriteAt};
pub use keel_io::{Cancel, Cancelled, Threads};
pub use keel_trust::{Context, KeyId, Keyring, PublicKey, Signer, SigningKey};
pub use params::{
    check_block_size, VerityParams, VerityParamsBuilder, DEFAULT_SALT_SIZE, MAX_BLOCK_SIZE,
    MAX_SALT_SIZE, MIN_BLOCK_SIZE,
};
pub use sign::{RootDescriptor, SignRoot, SignedRoot, VerifiedRoot, VerifyRoot};
pub use stream::{Parity, StreamTree, Streamed, STREAM_PARITY_BUDGET};
pub use superblock::{
    format_uuid, parse_uuid, random_uuid, Superblock, SUPERBLOCK_MAGIC, SUPERBLOCK_SIZE,
};
pub use table::{dm_mod_create, dm_table, FecTable, TableOptions};
pub use tree::{BuildOptions, HashTree};
pub use verify::{check_root, verify, BlockVerifier, DEFAULT_CACHE_BLOCKS};

/// The README's snippets, compiled and run as doctests so they keep up with the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
