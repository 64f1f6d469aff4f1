//! Tree parameters: what veritysetup takes as options and stores in its superblock.

use crate::algorithm::{HashAlgorithm, HashType};
use crate::error::{Error, Result};

/// Smallest block size veritysetup accepts.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size veritysetup accepts.
pub const MAX_BLOCK_SIZE: u32 = 512 * 1024;
/// Largest salt veritysetup accepts.
pub const MAX_SALT_SIZE: usize = 256;
/// veritysetup's default salt length when it chooses a random salt.
pub const DEFAULT_SALT_SIZE: usize = 32;

/// Check a block size the way veritysetup does: a power of two from 512 B to 512 KiB.
pub fn check_block_size(field: &'static str, size: u32) -> Result<()> {
    if !size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) {
        return Err(Error::param(
            field,
            format!("{size} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"),
        ));
    }
    Ok(())
}

/// The parameters that determine a hash tree and its root hash.
///
/// Build one with [`VerityParams::builder`] (veritysetup's defaults) or take it from a
/// superblock ([`crate::Superblock::params`]). A value of this type is always valid: the
/// block sizes are in range, the salt is at most 256 bytes, and there is at least one
/// data block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityParams {
    hash_type: HashType,
    algorithm: HashAlgorithm,
    data_block_size: u32,
    hash_block_size: u32,
    data_blocks: u64,
    salt: Vec<u8>,
}

impl VerityParams {
    /// A builder with veritysetup's defaults: format 1, sha256, 4096-byte blocks and a
    /// random 32-byte salt. The number of data blocks must be given.
    pub fn builder() -> VerityParamsBuilder {
        VerityParamsBuilder::default()
    }

    /// Format 1 with one block size for data and tree: the trees AVB and fs-verity build.
    pub(crate) fn format1(
        algorithm: HashAlgorithm,
        block_size: u32,
        data_blocks: u64,
        salt: Vec<u8>,
    ) -> Result<Self> {
        Self::new(
            HashType::Normal,
            algorithm,
            block_size,
            block_size,
            data_blocks,
            salt,
        )
    }

    /// Create and validate parameters from every field.
    pub fn new(
        hash_type: HashType,
        algorithm: HashAlgorithm,
        data_block_size: u32,
        hash_block_size: u32,
        data_blocks: u64,
        salt: Vec<u8>,
    ) -> Result<Self> {
        check_block_size("data block size", data_block_size)?;
        check_block_size("hash block size", hash_block_size)?;
        if salt.len() > MAX_SALT_SIZE {
            return Err(Error::param(
                "salt",
                format!("{} bytes, at most {MAX_SALT_SIZE} allowed", salt.len()),
            ));
        }
        if data_blocks == 0 {
            return Err(Error::param("data blocks", "must be at least 1"));
        }
        if data_blocks
            .checked_mul(u64::from(data_block_size))
            .is_none()
            || data_blocks > i64::MAX as u64 / u64::from(data_block_size)
        {
            return Err(Error::param(
                "data blocks",
                format!("{data_blocks} blocks of {data_block_size} bytes overflow a 63-bit size"),
            ));
        }
        Ok(VerityParams {
            hash_type,
            algorithm,
            data_block_size,
            hash_block_size,
            data_blocks,
            salt,
        })
    }

    /// Format 0 (Chrome OS) or 1.
    pub fn hash_type(&self) -> HashType {
        self.hash_type
    }
    /// The digest algorithm.
    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }
    /// Data block size in bytes.
    pub fn data_block_size(&self) -> u32 {
        self.data_block_size
    }
    /// Hash block size in bytes.
    pub fn hash_block_size(&self) -> u32 {
        self.hash_block_size
    }
    /// Number of data blocks covered by the tree.
    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }
    /// The salt (0 to 256 bytes).
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }
    /// Bytes of the data device covered: `data_blocks * data_block_size`.
    pub fn data_size(&self) -> u64 {
        // Cannot overflow: checked in `new`.
        self.data_blocks * u64::from(self.data_block_size)
    }
}

/// Builder for [`VerityParams`] with veritysetup's defaults.
#[derive(Clone, Debug)]
pub struct VerityParamsBuilder {
    hash_type: HashType,
    algorithm: HashAlgorithm,
    data_block_size: u32,
    hash_block_size: u32,
    data_blocks: Option<u64>,
    data_size: Option<u64>,
    salt: Option<Vec<u8>>,
}

impl Default for VerityParamsBuilder {
    fn default() -> Self {
        VerityParamsBuilder {
            hash_type: HashType::Normal,
            algorithm: HashAlgorithm::Sha256,
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: None,
            data_size: None,
            salt: None,
        }
    }
}

impl VerityParamsBuilder {
    /// `--format`.
    pub fn hash_type(mut self, t: HashType) -> Self {
        self.hash_type = t;
        self
    }
    /// `--hash`.
    pub fn algorithm(mut self, a: HashAlgorithm) -> Self {
        self.algorithm = a;
        self
    }
    /// `--data-block-size`.
    pub fn data_block_size(mut self, s: u32) -> Self {
        self.data_block_size = s;
        self
    }
    /// `--hash-block-size`.
    pub fn hash_block_size(mut self, s: u32) -> Self {
        self.hash_block_size = s;
        self
    }
    /// `--data-blocks`: an explicit block count.
    pub fn data_blocks(mut self, n: u64) -> Self {
        self.data_blocks = Some(n);
        self
    }
    /// Derive the block count from the data device size as veritysetup does: whole
    /// blocks only, a trailing partial block is not covered. Ignored when
    /// [`data_blocks`](Self::data_blocks) is set.
    pub fn data_blocks_for(mut self, data_size: u64) -> Self {
        self.data_size = Some(data_size);
        self
    }
    /// `--salt`: an explicit salt, empty for veritysetup's `--salt=-`.
    pub fn salt(mut self, salt: Vec<u8>) -> Self {
        self.salt = Some(salt);
        self
    }

    /// Validate and build. Without an explicit salt, a random 32-byte salt is drawn from
    /// the operating system.
    pub fn build(self) -> Result<VerityParams> {
        let data_blocks = match (self.data_blocks, self.data_size) {
            (Some(n), _) => n,
            (None, Some(size)) => {
                check_block_size("data block size", self.data_block_size)?;
                let n = size / u64::from(self.data_block_size);
                if n == 0 {
                    return Err(Error::TooSmall {
                        what: "data device (one data block at least)",
                        needed: u64::from(self.data_block_size),
                        found: size,
                    });
                }
                n
            }
            (None, None) => {
                return Err(Error::param(
                    "data blocks",
                    "not given: set data_blocks or data_blocks_for(size)",
                ))
            }
        };
        let salt = match self.salt {
            Some(s) => s,
            None => random_bytes::<DEFAULT_SALT_SIZE>()?.to_vec(),
        };
        VerityParams::new(
            self.hash_type,
            self.algorithm,
            self.data_block_size,
            self.hash_block_size,
            data_blocks,
            salt,
        )
    }
}

/// `N` bytes from the operating system's random source.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b)
        .map_err(|e| Error::io("reading the system random source", e.into()))?;
    Ok(b)
}
