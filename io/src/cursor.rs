//! A bounded reader for on-disk structures: every read is checked against the bytes
//! present, and a short one names the field and its byte offset.

/// A read that ran past the end of the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorError {
    /// The field being read.
    pub field: &'static str,
    /// Its byte offset (in the structure's own coordinates, see [`Cursor::new`]).
    pub offset: u64,
    /// Bytes the field needs.
    pub needed: usize,
    /// Bytes that were left.
    pub left: usize,
}

impl std::fmt::Display for CursorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "field {} at byte {}: needs {} bytes, {} left",
            self.field, self.offset, self.needed, self.left
        )
    }
}

impl std::error::Error for CursorError {}

/// Little-endian (and big-endian where named) fields read front to back from a slice.
#[derive(Clone, Debug)]
pub struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    base: u64,
}

macro_rules! ints {
    ($($le:ident $be:ident $at:ident $t:ty),*) => {$(
        #[doc = concat!("A little-endian `", stringify!($t), "`.")]
        pub fn $le(&mut self, field: &'static str) -> Result<$t, CursorError> {
            Ok(<$t>::from_le_bytes(self.array(field)?))
        }
        #[doc = concat!("A big-endian `", stringify!($t), "`.")]
        pub fn $be(&mut self, field: &'static str) -> Result<$t, CursorError> {
            Ok(<$t>::from_be_bytes(self.array(field)?))
        }
        #[doc = concat!("A little-endian `", stringify!($t), "` at byte `at` of the whole ")]
        #[doc = "slice, without moving: for formats read by offset rather than in order."]
        pub fn $at(&self, at: usize, field: &'static str) -> Result<$t, CursorError> {
            const N: usize = std::mem::size_of::<$t>();
            let b = self.bytes.get(at..).and_then(|r| r.get(..N)).ok_or(CursorError {
                field,
                offset: self.base.saturating_add(at as u64),
                needed: N,
                left: self.bytes.len().saturating_sub(at),
            })?;
            let mut a = [0u8; N];
            a.copy_from_slice(b);
            Ok(<$t>::from_le_bytes(a))
        }
    )*};
}

impl<'a> Cursor<'a> {
    /// A cursor over `bytes`, whose first byte is at offset `base` of whatever holds them
    /// (so errors give offsets a person can find in a hex dump of the device).
    pub fn new(bytes: &'a [u8], base: u64) -> Self {
        Cursor {
            bytes,
            pos: 0,
            base,
        }
    }

    /// The offset of the next byte, in the coordinates given to [`Cursor::new`].
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], CursorError> {
        let s = self
            .bytes
            .get(self.pos..)
            .and_then(|r| r.get(..n))
            .ok_or(CursorError {
                field,
                offset: self.offset(),
                needed: n,
                left: self.remaining(),
            })?;
        self.pos += n;
        Ok(s)
    }

    /// Skip `n` bytes.
    pub fn skip(&mut self, n: usize, field: &'static str) -> Result<(), CursorError> {
        self.take(n, field).map(|_| ())
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CursorError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    /// One byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, CursorError> {
        Ok(self.take(1, field)?[0])
    }

    ints!(u16 u16_be u16_at u16, u32 u32_be u32_at u32, u64 u64_be u64_at u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_names_the_one_that_is_short() {
        let b = [1u8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd];
        let mut c = Cursor::new(&b, 4096);
        assert_eq!(c.u32("a").unwrap(), 1);
        assert_eq!(c.u64("b").unwrap(), 2);
        assert_eq!(c.u16_be("c").unwrap(), 0xabcd);
        assert_eq!(c.remaining(), 0);
        let e = c.u8("d").unwrap_err();
        assert_eq!((e.field, e.offset, e.needed, e.left), ("d", 4110, 1, 0));
        assert_eq!(e.to_string(), "field d at byte 4110: needs 1 bytes, 0 left");
        let mut c = Cursor::new(&b, 0);
        assert!(c.take(usize::MAX, "huge").is_err());
        assert_eq!(c.position(), 0, "a failed read consumes nothing");
        assert_eq!(c.u32_at(4, "b").unwrap(), 2);
        assert_eq!(c.u16_at(12, "c").unwrap(), 0xcdab);
        let e = c.u64_at(8, "d").unwrap_err();
        assert_eq!((e.field, e.offset, e.needed, e.left), ("d", 8, 8, 6));
        assert!(c.u16_at(usize::MAX, "far").is_err());
    }
}
