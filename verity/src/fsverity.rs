//! fs-verity file digests and Merkle trees, as `fsverity digest` computes them (Linux
//! `Documentation/filesystems/fsverity.rst`).
//!
//! The tree is a format-1 dm-verity tree over the file with its last partial block
//! zero-padded (not dropped), the salt (if any) zero-padded to the hash's block size (64
//! bytes for sha256, 128 for sha512). The file digest is the hash of a 256-byte descriptor:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version, 1 |
//! | 1 | 1 | hash algorithm: 1 sha256, 2 sha512 |
//! | 2 | 1 | log2 of the block size |
//! | 3 | 1 | salt size (0 to 32) |
//! | 4 | 4 | reserved (signature size), 0 |
//! | 8 | 8 | data size |
//! | 16 | 64 | root hash, zero padded |
//! | 80 | 32 | salt, zero padded |
//! | 112 | 144 | reserved, 0 |

use crate::algorithm::HashAlgorithm;
use crate::error::{Error, Result};
use crate::io::{ReadAt, ZeroPadded};
use crate::params::VerityParams;
use crate::tree::{BuildOptions, HashTree};

/// Size of the fs-verity descriptor.
pub const FSVERITY_DESCRIPTOR_SIZE: usize = 256;

/// An fs-verity digest with the tree and descriptor it came from.
#[derive(Clone, Debug)]
pub struct FsVerity {
    /// The file digest (what `fsverity digest` prints, and `FS_IOC_MEASURE_VERITY` returns).
    pub digest: Vec<u8>,
    /// The Merkle tree root.
    pub root_hash: Vec<u8>,
    /// The descriptor whose hash is the digest.
    pub descriptor: [u8; FSVERITY_DESCRIPTOR_SIZE],
    /// The Merkle tree, top level first (`--out-merkle-tree`); empty for files of at most one block.
    pub tree: Vec<u8>,
}

/// The file zero-padded to whole blocks.
/// Compute the fs-verity digest of `data` with sha256 or sha512, a block size of 1 KiB to
/// 64 KiB, and a salt of at most 32 bytes.
pub fn fsverity_digest<D: ReadAt + ?Sized>(
    data: &D,
    algorithm: HashAlgorithm,
    block_size: u32,
    salt: &[u8],
) -> Result<FsVerity> {
    let alg_id = match algorithm {
        HashAlgorithm::Sha256 => 1u8,
        HashAlgorithm::Sha512 => 2,
        other => {
            return Err(Error::param(
                "fs-verity hash",
                format!("{other}: sha256 or sha512"),
            ))
        }
    };
    if !block_size.is_power_of_two() || !(1024..=65536).contains(&block_size) {
        return Err(Error::param(
            "fs-verity block size",
            format!("{block_size}: a power of two from 1024 to 65536"),
        ));
    }
    if salt.len() > 32 {
        return Err(Error::param(
            "fs-verity salt",
            format!("{} bytes, at most 32", salt.len()),
        ));
    }
    let size = data
        .size()
        .map_err(|e| Error::io("reading the file size", e))?;
    let bs = u64::from(block_size);
    let blocks = size.div_ceil(bs);
    let ds = algorithm.digest_size();
    let (root, tree) = if blocks == 0 {
        (vec![0u8; ds], Vec::new())
    } else {
        // The salt prefix, padded to the hash's internal block size, is exactly a format-1
        // dm-verity salt.
        let mut padded_salt = salt.to_vec();
        if !salt.is_empty() {
            let hbs = if algorithm == HashAlgorithm::Sha512 {
                128
            } else {
                64
            };
            padded_salt.resize(salt.len().div_ceil(hbs) * hbs, 0);
        }
        let params = VerityParams::format1(algorithm, block_size, blocks, padded_salt)?;
        let file = ZeroPadded {
            inner: data,
            size,
            padded: blocks * bs,
        };
        let t = HashTree::build_with(&params, &file, &BuildOptions::default())?;
        (t.root_hash().to_vec(), t.as_bytes().to_vec())
    };
    let mut d = [0u8; FSVERITY_DESCRIPTOR_SIZE];
    d[0] = 1;
    d[1] = alg_id;
    d[2] = block_size.trailing_zeros() as u8;
    d[3] = salt.len() as u8;
    d[8..16].copy_from_slice(&size.to_le_bytes());
    d[16..16 + ds].copy_from_slice(&root);
    d[80..80 + salt.len()].copy_from_slice(salt);
    let digest = algorithm.digest(&d).as_bytes().to_vec();
    Ok(FsVerity {
        digest,
        root_hash: root,
        descriptor: d,
        tree,
    })
}
