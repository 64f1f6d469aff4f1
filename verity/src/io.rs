//! Positioned I/O comes from keel-io; here only what keel-verity adds to it: a
//! zero-padded view and fallible buffer allocation.

use std::io;

pub use keel_io::{Progress, ReadAt, WriteAt};

/// A zeroed buffer of `len` bytes, or an error naming `what` when it cannot be had
/// (sizes come from devices and headers: an allocation failure must not abort).
pub(crate) fn zeroed(len: u64, what: &'static str) -> crate::Result<Vec<u8>> {
    let too_big = || crate::Error::param(what, format!("{len} bytes do not fit in memory"));
    let n = usize::try_from(len).map_err(|_| too_big())?;
    keel_io::sys::try_zeroed(n).ok_or_else(too_big)
}

/// A device read as if zero-padded from its size up to `padded` bytes (fs-verity and AVB
/// hash the last partial block padded with zeros).
pub(crate) struct ZeroPadded<'a, D: ?Sized> {
    pub inner: &'a D,
    pub size: u64,
    pub padded: u64,
}

impl<D: ReadAt + ?Sized> ReadAt for ZeroPadded<'_, D> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > self.padded {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the padded end",
            ));
        }
        let real = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        self.inner.read_exact_at(&mut buf[..real], offset)?;
        buf[real..].fill(0);
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.padded)
    }
    fn will_need(&self, offset: u64, len: u64) {
        let end = offset.saturating_add(len).min(self.size);
        if offset < end {
            self.inner.will_need(offset, end - offset);
        }
    }
}

/// `n` bytes of a xorshift stream from `seed`: test data that any seed makes varied.
#[cfg(test)]
pub(crate) fn seeded(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
