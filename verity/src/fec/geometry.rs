//! Where the parity goes, what it covers, and reading the covered input.

use crate::error::{Error, Result};
use crate::geometry::TreeGeometry;
use crate::io::ReadAt;
use crate::params::VerityParams;

use super::*;

/// Where the parity goes and what it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FecGeometry {
    pub(crate) block_size: u64,
    pub(crate) roots: u8,
    pub(crate) data_blocks: u64,
    pub(crate) hash_area_offset: u64,
    pub(crate) hash_blocks: u64,
    pub(crate) rounds: u64,
    pub(crate) fec_offset: u64,
}

impl FecGeometry {
    /// The geometry veritysetup uses. The hash area runs from the tree's first block to
    /// `hash_area_end` (rounded down to a block): the hash device's size when the parity
    /// has a device of its own, or `fec_offset` when it is on the hash device. The parity
    /// starts at byte `fec_offset` of the FEC device (a multiple of the block size, since
    /// the kernel takes it in blocks).
    pub fn new(
        params: &VerityParams,
        tree: &TreeGeometry,
        roots: u8,
        hash_area_end: u64,
        fec_offset: u64,
    ) -> Result<Self> {
        if params.data_block_size() != params.hash_block_size() {
            return Err(Error::param(
                "fec",
                format!(
                    "data block size {} and hash block size {} differ; FEC needs them equal",
                    params.data_block_size(),
                    params.hash_block_size()
                ),
            ));
        }
        if !(FEC_MIN_ROOTS..=FEC_MAX_ROOTS).contains(&roots) {
            return Err(Error::param(
                "fec-roots",
                format!("{roots}; must be {FEC_MIN_ROOTS} to {FEC_MAX_ROOTS}"),
            ));
        }
        let bs = u64::from(params.data_block_size());
        if !fec_offset.is_multiple_of(bs) {
            return Err(Error::param(
                "fec-offset",
                format!("{fec_offset} is not a multiple of the block size {bs}"),
            ));
        }
        let start = tree.hash_start_block();
        let tree_end = start + tree.tree_blocks();
        let end = hash_area_end / bs;
        if end < tree_end {
            return Err(Error::param(
                "fec",
                format!(
                    "the hash area ends at byte {hash_area_end}, before the end of the tree at \
                     byte {}",
                    tree_end * bs
                ),
            ));
        }
        let hash_blocks = end - start;
        let blocks = params
            .data_blocks()
            .checked_add(hash_blocks)
            .ok_or_else(|| Error::param("fec", "covered area too large"))?;
        let rounds = blocks.div_ceil(u64::from(255 - roots));
        rounds
            .checked_mul(u64::from(roots) * bs)
            .and_then(|p| p.checked_add(fec_offset))
            .ok_or_else(|| Error::param("fec", "parity area too large"))?;
        Ok(FecGeometry {
            block_size: bs,
            roots,
            data_blocks: params.data_blocks(),
            hash_area_offset: start * bs,
            hash_blocks,
            rounds,
            fec_offset,
        })
    }

    /// Parity on a device of its own at `fec_offset`; the hash area runs to the end of the
    /// hash device, `hash_device_size` bytes (veritysetup's `--fec-device=OTHER`).
    pub fn separate(
        params: &VerityParams,
        tree: &TreeGeometry,
        roots: u8,
        hash_device_size: u64,
        fec_offset: u64,
    ) -> Result<Self> {
        Self::new(params, tree, roots, hash_device_size, fec_offset)
    }

    /// Parity on the hash device at `fec_offset`, after the tree (veritysetup's
    /// `--fec-device=HASH --fec-offset=N`); everything between the tree and the parity is
    /// covered too.
    pub fn on_hash_device(
        params: &VerityParams,
        tree: &TreeGeometry,
        roots: u8,
        fec_offset: u64,
    ) -> Result<Self> {
        Self::new(params, tree, roots, fec_offset, fec_offset)
    }

    /// veritysetup's rule for open files: the parity on the hash device itself (same file
    /// or device) at `fec_offset`, with the hash area running to that offset; otherwise
    /// on a device of its own, with the hash area running to the end of the hash device.
    pub fn for_files(
        params: &VerityParams,
        tree: &TreeGeometry,
        roots: u8,
        hash: &std::fs::File,
        fec: &std::fs::File,
        fec_offset: u64,
    ) -> Result<Self> {
        if keel_io::same_file(hash, fec) {
            Self::on_hash_device(params, tree, roots, fec_offset)
        } else {
            let size = hash
                .size()
                .map_err(|e| Error::io("reading the hash device size", e))?;
            Self::separate(params, tree, roots, size, fec_offset)
        }
    }

    /// Parity bytes per codeword.
    pub fn roots(&self) -> u8 {
        self.roots
    }
    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }
    /// Data symbols per codeword, 255 - roots.
    pub fn rs_n(&self) -> u64 {
        255 - u64::from(self.roots)
    }
    /// Data blocks covered.
    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }
    /// Byte offset of the covered hash area on the hash device.
    pub fn hash_area_offset(&self) -> u64 {
        self.hash_area_offset
    }
    /// Hash-device blocks covered.
    pub fn hash_blocks(&self) -> u64 {
        self.hash_blocks
    }
    /// Blocks covered in all: the kernel table's `fec_blocks`.
    pub fn covered_blocks(&self) -> u64 {
        self.data_blocks + self.hash_blocks
    }
    /// Codeword rounds.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }
    /// Bytes of parity.
    pub fn parity_size(&self) -> u64 {
        self.rounds * u64::from(self.roots) * self.block_size
    }
    /// Byte offset of the parity on the FEC device.
    pub fn fec_offset(&self) -> u64 {
        self.fec_offset
    }
    /// The kernel table's `fec_start`, in blocks.
    pub fn fec_start_block(&self) -> u64 {
        self.fec_offset / self.block_size
    }
    /// Size the FEC device must have at least.
    pub fn fec_device_size(&self) -> u64 {
        self.fec_offset + self.parity_size()
    }

    pub(crate) fn k(&self) -> usize {
        255 - self.roots as usize
    }

    /// Rounds per unit of work, so one unit reads about BATCH_INPUT_BYTES.
    pub(crate) fn batch_rounds(&self) -> u64 {
        (BATCH_INPUT_BYTES / (self.k() as u64 * self.block_size)).clamp(1, self.rounds.max(1))
    }

    /// Where covered block `g` lives.
    pub(crate) fn locate(&self, g: u64) -> Place {
        if g < self.data_blocks {
            Place::Data(g)
        } else if g < self.covered_blocks() {
            Place::Hash(self.hash_area_offset / self.block_size + g - self.data_blocks)
        } else {
            Place::Padding
        }
    }
}

/// Where a covered block lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// Data block number.
    Data(u64),
    /// Hash-device block number.
    Hash(u64),
    /// Past the end: zeros that are not stored.
    Padding,
}

/// The covered input: data area, hash area, then zeros.
pub(crate) struct Input<'a, D: ?Sized, H: ?Sized> {
    pub(crate) g: &'a FecGeometry,
    pub(crate) data: &'a D,
    pub(crate) hash: &'a H,
}

impl<D: ReadAt + ?Sized, H: ReadAt + ?Sized> Input<'_, D, H> {
    /// Whether the data and hash devices hold every covered block: a device that shrank
    /// is named with the size it needs before anything is read (a read past its end
    /// would only say that it ended).
    pub(crate) fn check_sizes(&self) -> Result<()> {
        let bs = self.g.block_size;
        let hash_end = self.g.hash_area_offset + self.g.hash_blocks * bs;
        for (what, dev, needed) in [
            ("data device", self.data.size(), self.g.data_blocks * bs),
            ("hash device", self.hash.size(), hash_end),
        ] {
            let found = dev.map_err(|e| Error::io(format!("reading the {what} size"), e))?;
            if found < needed {
                return Err(Error::TooSmall {
                    what,
                    needed,
                    found,
                });
            }
        }
        Ok(())
    }

    /// Fill `buf` (whole blocks) with covered blocks from `first` on.
    pub(crate) fn read(&self, first: u64, buf: &mut [u8]) -> Result<()> {
        let bs = self.g.block_size;
        let mut b = first;
        let mut rest = buf;
        while !rest.is_empty() {
            let want = rest.len() as u64 / bs;
            let (n, res) = match self.g.locate(b) {
                Place::Data(d) => {
                    let n = want.min(self.g.data_blocks - d);
                    let off = d * bs;
                    let r = self
                        .data
                        .read_exact_at(&mut rest[..(n * bs) as usize], off)
                        .map_err(|e| Error::io(format!("reading data device byte {off}"), e));
                    (n, r)
                }
                Place::Hash(h) => {
                    let n = want.min(self.g.covered_blocks() - b);
                    let off = h * bs;
                    let r = self
                        .hash
                        .read_exact_at(&mut rest[..(n * bs) as usize], off)
                        .map_err(|e| Error::io(format!("reading hash device byte {off}"), e));
                    (n, r)
                }
                Place::Padding => {
                    rest.fill(0);
                    (want, Ok(()))
                }
            };
            res?;
            rest = &mut rest[(n * bs) as usize..];
            b += n;
        }
        Ok(())
    }
}

impl FecGeometry {
    /// Offset within the parity area of parity byte `j` of codeword (round, byte b).
    pub(crate) fn parity_offset(&self, round: u64, b: usize, j: usize) -> u64 {
        (round * self.block_size + b as u64) * u64::from(self.roots) + j as u64
    }
}

pub(crate) fn check_fec_size<F: ReadAt + ?Sized>(g: &FecGeometry, fec: &F) -> Result<()> {
    let size = fec
        .size()
        .map_err(|e| Error::io("reading the FEC device size", e))?;
    if size < g.fec_device_size() {
        return Err(Error::TooSmall {
            what: "FEC device",
            needed: g.fec_device_size(),
            found: size,
        });
    }
    Ok(())
}
