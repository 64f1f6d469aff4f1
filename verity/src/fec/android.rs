//! Android's FEC header block.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::io::ReadAt;
use crate::layout::Fields;

use super::*;

/// Android's FEC header (`system/extras/libfec/include/fec/io.h`), 60 bytes little-endian,
/// stored at the start and at the end of the 4 KiB block that follows the parity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AndroidFecHeader {
    /// Parity bytes per codeword.
    pub roots: u32,
    /// Bytes of parity before the header block.
    pub fec_size: u32,
    /// Bytes covered (data, tree and anything between), a multiple of 4096.
    pub inp_size: u64,
    /// SHA-256 of the parity.
    pub hash: [u8; 32],
}

impl AndroidFecHeader {
    /// The magic, first field.
    pub const MAGIC: u32 = 0xFECF_ECFE;
    /// The only version.
    pub const VERSION: u32 = 0;
    /// Bytes in the header.
    pub const SIZE: usize = 60;
    /// Bytes in the header block.
    pub const BLOCK_SIZE: usize = 4096;

    /// The header for the parity `g` describes, with `parity_hash` the SHA-256 of the
    /// parity bytes ([`android_fec_header`] computes it from the device).
    pub fn for_geometry(g: &FecGeometry, parity_hash: [u8; 32]) -> Result<Self> {
        if g.block_size != Self::BLOCK_SIZE as u64 {
            return Err(Error::param(
                "fec",
                format!("Android FEC needs 4096-byte blocks, not {}", g.block_size),
            ));
        }
        let fec_size = u32::try_from(g.parity_size())
            .map_err(|_| Error::param("fec", "parity over 4 GiB does not fit the header"))?;
        Ok(AndroidFecHeader {
            roots: u32::from(g.roots),
            fec_size,
            inp_size: g.covered_blocks() * g.block_size,
            hash: parity_hash,
        })
    }

    /// The 60 header bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&Self::MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&Self::VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&(Self::SIZE as u32).to_le_bytes());
        b[12..16].copy_from_slice(&self.roots.to_le_bytes());
        b[16..20].copy_from_slice(&self.fec_size.to_le_bytes());
        b[20..28].copy_from_slice(&self.inp_size.to_le_bytes());
        b[28..60].copy_from_slice(&self.hash);
        b
    }

    /// The 4 KiB header block: the header at its start and again at its end.
    pub fn to_block(&self) -> Vec<u8> {
        let mut block = vec![0u8; Self::BLOCK_SIZE];
        let h = self.to_bytes();
        block[..Self::SIZE].copy_from_slice(&h);
        block[Self::BLOCK_SIZE - Self::SIZE..].copy_from_slice(&h);
        block
    }

    /// Parse 60 header bytes, checking every field libfec checks.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let b = bytes.get(..Self::SIZE).ok_or(Error::TooSmall {
            what: "Android FEC header",
            needed: Self::SIZE as u64,
            found: bytes.len() as u64,
        })?;
        let mut f = Fields::new(b, "Android FEC header");
        let magic = f.u32("magic")?;
        if magic != Self::MAGIC {
            return Err(f.bad("magic", 0, format!("{magic:#010x}, not 0xfecfecfe")));
        }
        f.expect_u32("version", Self::VERSION)?;
        f.expect_u32("size", Self::SIZE as u32)?;
        let roots = f.u32("roots")?;
        if !(1..255).contains(&roots) {
            return Err(f.bad("roots", 12, format!("{roots}, not 1 to 254")));
        }
        let fec_size = f.u32("fec_size")?;
        if fec_size == 0
            || !fec_size.is_multiple_of(roots)
            || !(fec_size as usize).is_multiple_of(Self::BLOCK_SIZE)
        {
            return Err(f.bad(
                "fec_size",
                16,
                format!("{fec_size} is not a positive multiple of roots and of 4096"),
            ));
        }
        let inp_size = f.u64("inp_size")?;
        if inp_size == 0 || !inp_size.is_multiple_of(Self::BLOCK_SIZE as u64) {
            return Err(f.bad(
                "inp_size",
                20,
                format!("{inp_size} is not a positive multiple of 4096"),
            ));
        }
        let hash = f.array::<32>("hash")?;
        let rounds = (inp_size / Self::BLOCK_SIZE as u64).div_ceil(255 - u64::from(roots));
        // An input size from the header can make this product overflow: checked, and an
        // overflow is a mismatch like any other.
        let parity = rounds
            .checked_mul(u64::from(roots))
            .and_then(|p| p.checked_mul(Self::BLOCK_SIZE as u64));
        if parity != Some(u64::from(fec_size)) {
            return Err(f.bad(
                "fec_size",
                16,
                format!("{fec_size} does not match {inp_size} input bytes at {roots} roots"),
            ));
        }
        Ok(AndroidFecHeader {
            roots,
            fec_size,
            inp_size,
            hash,
        })
    }

    /// Parse a header block: the copy at its start, or, if that one is damaged, the copy at
    /// its end (as libfec does).
    pub fn parse_block(block: &[u8]) -> Result<Self> {
        if block.len() != Self::BLOCK_SIZE {
            return Err(Error::param(
                "Android FEC header block",
                format!("{} bytes, not 4096", block.len()),
            ));
        }
        Self::parse(block).or_else(|first| {
            Self::parse(&block[Self::BLOCK_SIZE - Self::SIZE..]).map_err(|_| first)
        })
    }
}

/// The Android header for the parity already written for `g` on `fec` (its SHA-256 is
/// computed from the device).
pub fn android_fec_header<F: ReadAt + ?Sized>(
    g: &FecGeometry,
    fec: &F,
) -> Result<AndroidFecHeader> {
    check_fec_size(g, fec)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < g.parity_size() {
        let n = (g.parity_size() - off).min(buf.len() as u64) as usize;
        fec.read_exact_at(&mut buf[..n], g.fec_offset + off)
            .map_err(|e| Error::io("reading the parity", e))?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    AndroidFecHeader::for_geometry(g, h.finalize().into())
}
