//! Reading the fixed-layout structures (veritysetup's superblock, Keel's root descriptor,
//! Android's FEC header) front to back with keel-io's bounded [`Cursor`]: every field is
//! read in layout order, so a parser reads like the table beside it, and every error
//! names the structure, the field and its byte offset.

use keel_io::Cursor;

use crate::algorithm::{HashAlgorithm, HashType, NameFieldError};
use crate::error::{Error, Result};
use crate::params::{check_block_size, MAX_SALT_SIZE};

/// What to make of a well-formed algorithm name Keel does not implement.
#[derive(Clone, Copy)]
pub(crate) enum UnknownAlgorithm {
    /// [`Error::UnsupportedAlgorithm`]: the structure is fine, Keel lacks the algorithm.
    Unsupported,
    /// A bad field: the structure's writer only ever writes names Keel knows.
    BadField,
}

/// A [`Cursor`] over one structure, whose errors are [`Error::BadField`].
pub(crate) struct Fields<'a> {
    c: Cursor<'a>,
    structure: &'static str,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(bytes: &'a [u8], structure: &'static str) -> Self {
        Fields {
            c: Cursor::new(bytes, 0),
            structure,
        }
    }

    /// The offset of the next field.
    pub(crate) fn offset(&self) -> usize {
        self.c.position()
    }

    /// A bad value in `field` at `offset`.
    pub(crate) fn bad(
        &self,
        field: &'static str,
        offset: usize,
        reason: impl Into<String>,
    ) -> Error {
        Error::BadField {
            structure: self.structure,
            field,
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8]> {
        let at = self.offset();
        self.c
            .take(n, field)
            .map_err(|e| self.bad(field, at, format!("needs {n} bytes, {} left", e.left)))
    }

    pub(crate) fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16> {
        self.array(field).map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32> {
        self.array(field).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64> {
        self.array(field).map(u64::from_le_bytes)
    }

    /// A magic number; `shown` is how the expected value is written in the error.
    pub(crate) fn magic(&mut self, field: &'static str, want: &[u8], shown: &str) -> Result<()> {
        let at = self.offset();
        let got = self.take(want.len(), field)?;
        if got != want {
            return Err(self.bad(
                field,
                at,
                format!("expected {shown}, found {:?}", String::from_utf8_lossy(got)),
            ));
        }
        Ok(())
    }

    /// A little-endian `u32` that must equal `want`.
    pub(crate) fn expect_u32(&mut self, field: &'static str, want: u32) -> Result<()> {
        let at = self.offset();
        let got = self.u32(field)?;
        if got != want {
            return Err(self.bad(field, at, format!("expected {want}, found {got}")));
        }
        Ok(())
    }

    /// veritysetup's `hash_type`: 0 (Chrome OS) or 1 (normal).
    pub(crate) fn hash_type(&mut self) -> Result<HashType> {
        let at = self.offset();
        let v = self.u32("hash_type")?;
        HashType::from_u32(v)
            .ok_or_else(|| self.bad("hash_type", at, format!("expected 0 or 1, found {v}")))
    }

    /// A 32-byte NUL-padded algorithm name.
    pub(crate) fn algorithm(&mut self, unknown: UnknownAlgorithm) -> Result<HashAlgorithm> {
        let at = self.offset();
        let field = self.take(32, "algorithm")?;
        HashAlgorithm::from_name_field(field).map_err(|e| match (e, unknown) {
            (NameFieldError::Malformed(reason), _) => self.bad("algorithm", at, reason),
            (NameFieldError::Unknown(e), UnknownAlgorithm::Unsupported) => e,
            (NameFieldError::Unknown(e), UnknownAlgorithm::BadField) => {
                self.bad("algorithm", at, e.to_string())
            }
        })
    }

    /// A block size: a power of two from 512 B to 512 KiB, as veritysetup requires.
    pub(crate) fn block_size(&mut self, field: &'static str) -> Result<u32> {
        let at = self.offset();
        let v = self.u32(field)?;
        check_block_size(field, v).map_err(|e| self.bad(field, at, e.to_string()))?;
        Ok(v)
    }

    /// A `u16` salt size, at most [`MAX_SALT_SIZE`].
    pub(crate) fn salt_size(&mut self) -> Result<usize> {
        let at = self.offset();
        let n = usize::from(self.u16("salt_size")?);
        if n > MAX_SALT_SIZE {
            return Err(self.bad(
                "salt_size",
                at,
                format!("{n} is over the maximum of {MAX_SALT_SIZE}"),
            ));
        }
        Ok(n)
    }

    /// `n` reserved bytes, which must be zero.
    pub(crate) fn zeros(&mut self, n: usize, field: &'static str) -> Result<()> {
        self.padded(n, 0, field, "reserved bytes are not zero")
            .map(|_| ())
    }

    /// A field of `width` bytes holding `used` bytes of value, zero-padded; returns the
    /// value. `reason` says what nonzero padding means.
    pub(crate) fn padded(
        &mut self,
        width: usize,
        used: usize,
        field: &'static str,
        reason: &str,
    ) -> Result<&'a [u8]> {
        let at = self.offset();
        let all = self.take(width, field)?;
        let (value, pad) = all.split_at(used.min(width));
        // The offset is where the padding starts, as the layout tables give fields.
        if pad.iter().any(|&c| c != 0) {
            return Err(self.bad(field, at + value.len(), reason));
        }
        Ok(value)
    }
}

/// The writing side: fields put front to back into a zeroed buffer of the structure's
/// size, in the order of its layout table.
pub(crate) struct Put<'a> {
    b: &'a mut [u8],
    pos: usize,
}

impl<'a> Put<'a> {
    pub(crate) fn new(b: &'a mut [u8]) -> Self {
        Put { b, pos: 0 }
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.b[self.pos..self.pos + v.len()].copy_from_slice(v);
        self.pos += v.len();
        self
    }

    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// `v`, then zeros up to `width` bytes (the buffer starts zeroed).
    pub(crate) fn padded(&mut self, v: &[u8], width: usize) -> &mut Self {
        self.bytes(v);
        self.pos += width - v.len();
        self
    }

    /// The bytes written so far, for a layout test.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }
}
