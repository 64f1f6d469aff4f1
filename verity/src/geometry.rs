//! Where each level of the tree lives on the hash device (cryptsetup `hash_levels`).

use crate::algorithm::HashType;
use crate::error::{Error, Result};
use crate::params::VerityParams;
use crate::superblock::SUPERBLOCK_SIZE;

/// The most levels veritysetup and the kernel allow.
pub const MAX_LEVELS: usize = 63;

/// One level of the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    /// First hash block of the level, counted from the start of the hash device.
    pub first_block: u64,
    /// Number of hash blocks in the level.
    pub blocks: u64,
}

/// The layout of a tree on its hash device.
///
/// Levels are numbered from the leaves: level 0 holds the digests of the data blocks, the
/// last level is a single block whose digest is the root hash. On disk the top level comes
/// first and the leaves last, all contiguous from [`hash_start_block`](Self::hash_start_block).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeGeometry {
    hash_offset: u64,
    superblock: bool,
    hash_block_size: u64,
    digest_size: usize,
    slot_size: usize,
    per_block_bits: u32,
    data_blocks: u64,
    hash_start_block: u64,
    levels: Vec<Level>,
    tree_blocks: u64,
}

impl TreeGeometry {
    /// Lay out the tree for `params` with the hash area starting at `hash_offset` bytes on
    /// the hash device, with or without a superblock there.
    ///
    /// `hash_offset` must be a multiple of 512 (veritysetup refuses others) and, without a
    /// superblock, a multiple of the hash block size: veritysetup then rounds the offset
    /// down and writes the tree in front of the requested offset, which Keel refuses.
    pub fn new(params: &VerityParams, hash_offset: u64, superblock: bool) -> Result<Self> {
        if !hash_offset.is_multiple_of(512) {
            return Err(Error::param(
                "hash offset",
                format!("{hash_offset} is not a multiple of 512"),
            ));
        }
        let hbs = u64::from(params.hash_block_size());
        let hash_start_block = if superblock {
            hash_offset
                .checked_add(SUPERBLOCK_SIZE as u64 + hbs - 1)
                .map(|end| end / hbs)
                .ok_or_else(|| Error::param("hash offset", "overflows"))?
        } else {
            if !hash_offset.is_multiple_of(hbs) {
                return Err(Error::param(
                    "hash offset",
                    format!(
                        "{hash_offset} is not a multiple of the hash block size {hbs}; without a \
                         superblock the tree starts on a hash block boundary"
                    ),
                ));
            }
            hash_offset / hbs
        };
        let digest_size = params.algorithm().digest_size();
        let slot_size = match params.hash_type() {
            HashType::Normal => digest_size.next_power_of_two(),
            HashType::ChromeOs => digest_size,
        };
        // Digests per hash block, rounded down to a power of two in both formats.
        let per_block_bits = (hbs / digest_size as u64).ilog2();
        let data_blocks = params.data_blocks();

        let mut n_levels = 0usize;
        while (per_block_bits as usize * n_levels) < 64
            && ((data_blocks - 1) >> (per_block_bits as usize * n_levels)) != 0
        {
            n_levels += 1;
        }
        if n_levels > MAX_LEVELS {
            return Err(Error::param(
                "data blocks",
                format!("the tree would need {n_levels} levels, at most {MAX_LEVELS} allowed"),
            ));
        }
        let mut levels = vec![
            Level {
                first_block: 0,
                blocks: 0
            };
            n_levels
        ];
        let mut position = hash_start_block;
        for i in (0..n_levels).rev() {
            let shift = (i as u32 + 1) * per_block_bits;
            let blocks = if shift >= 64 {
                1
            } else {
                // ceil(data_blocks / 2^shift) without overflow.
                (data_blocks >> shift) + u64::from(data_blocks & ((1u64 << shift) - 1) != 0)
            };
            levels[i] = Level {
                first_block: position,
                blocks,
            };
            position = position
                .checked_add(blocks)
                .filter(|p| p.checked_mul(hbs).is_some())
                .ok_or_else(|| Error::param("hash offset", "the hash area overflows 64 bits"))?;
        }
        Ok(TreeGeometry {
            hash_offset,
            superblock,
            hash_block_size: hbs,
            digest_size,
            slot_size,
            per_block_bits,
            data_blocks,
            hash_start_block,
            levels,
            tree_blocks: position - hash_start_block,
        })
    }

    /// Byte offset of the hash area (and of the superblock, if any) on the hash device.
    pub fn hash_offset(&self) -> u64 {
        self.hash_offset
    }
    /// Whether a superblock precedes the tree.
    pub fn has_superblock(&self) -> bool {
        self.superblock
    }
    /// First hash block of the tree: the kernel table's `hash_start_block`.
    pub fn hash_start_block(&self) -> u64 {
        self.hash_start_block
    }
    /// Byte offset of the tree on the hash device.
    pub fn tree_offset(&self) -> u64 {
        self.hash_start_block * self.hash_block_size
    }
    /// Number of hash blocks in the tree (veritysetup's "Hash blocks").
    pub fn tree_blocks(&self) -> u64 {
        self.tree_blocks
    }
    /// Size of the tree in bytes.
    pub fn tree_size(&self) -> u64 {
        self.tree_blocks * self.hash_block_size
    }
    /// Size the hash device must have at least: the end of the tree (veritysetup's
    /// "Hash device size").
    pub fn hash_device_size(&self) -> u64 {
        self.tree_offset() + self.tree_size()
    }
    /// The levels, leaves first.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }
    /// Digest size of the algorithm.
    pub fn digest_size(&self) -> usize {
        self.digest_size
    }
    /// Bytes each digest occupies in a hash block (padded to a power of two in format 1).
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }
    /// Digests per hash block.
    pub fn digests_per_block(&self) -> u64 {
        1 << self.per_block_bits
    }
    pub(crate) fn per_block_bits(&self) -> u32 {
        self.per_block_bits
    }
    /// Hash block size in bytes.
    pub fn hash_block_size(&self) -> u64 {
        self.hash_block_size
    }
    /// Number of data blocks.
    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    /// Byte offset, within the tree, of level `level` (the tree held in memory in disk order).
    pub(crate) fn level_offset_in_tree(&self, level: usize) -> usize {
        ((self.levels[level].first_block - self.hash_start_block) * self.hash_block_size) as usize
    }

    /// Byte offset on the hash device of block `index` of level `level`.
    pub fn block_offset(&self, level: usize, index: u64) -> u64 {
        (self.levels[level].first_block + index) * self.hash_block_size
    }

    /// Byte offset, within its hash block of the level above, of the digest of item
    /// `index` of a level (or of data block `index`).
    pub(crate) fn entry_offset(&self, index: u64) -> usize {
        (index & ((1u64 << self.per_block_bits) - 1)) as usize * self.slot_size
    }
}
