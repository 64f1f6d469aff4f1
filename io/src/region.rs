//! A window of a device: a slot partition of a disk, itself a device.

use std::io;

use crate::{ReadAt, WriteAt};

/// Bytes `start..start + len` of `inner`, read and written as a device of its own. Reads
/// and writes past its end are errors (`UnexpectedEof`, `WriteZero`): nothing a caller
/// does through a region reaches the rest of the disk.
#[derive(Debug)]
pub struct Region<D> {
    inner: D,
    start: u64,
    len: u64,
}

impl<D> Region<D> {
    /// The window `start..start + len` of `inner`. An error if the range overflows.
    pub fn new(inner: D, start: u64, len: u64) -> io::Result<Self> {
        start
            .checked_add(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "region end overflows"))?;
        Ok(Region { inner, start, len })
    }

    /// Where the window starts on the device.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The window's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Take the device back.
    pub fn into_inner(self) -> D {
        self.inner
    }

    /// The device offset of `len` bytes at `offset` of the window, if they fit in it.
    fn at(&self, offset: u64, len: u64, kind: io::ErrorKind) -> io::Result<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.start + offset),
            _ => Err(io::Error::new(
                kind,
                format!(
                    "{len} bytes at {offset} lie past the end of the region ({} bytes)",
                    self.len
                ),
            )),
        }
    }
}

impl<D: ReadAt> ReadAt for Region<D> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = self.at(offset, buf.len() as u64, io::ErrorKind::UnexpectedEof)?;
        self.inner.read_exact_at(buf, at)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn logical_sector_size(&self) -> Option<u32> {
        self.inner.logical_sector_size()
    }
    fn file_id(&self) -> Option<crate::FileId> {
        self.inner.file_id()
    }
    fn known_zeros(&self, offset: u64, len: u64) -> Vec<std::ops::Range<u64>> {
        // Clipped to the region, and back to its offsets.
        let end = offset.saturating_add(len).min(self.len);
        if offset >= end {
            return Vec::new();
        }
        self.inner
            .known_zeros(self.start + offset, end - offset)
            .into_iter()
            .filter_map(|h| {
                let (a, b) = (
                    h.start.max(self.start + offset),
                    h.end.min(self.start + end),
                );
                (a < b).then(|| a - self.start..b - self.start)
            })
            .collect()
    }
    fn will_need(&self, offset: u64, len: u64) {
        let end = offset.saturating_add(len).min(self.len);
        if offset < end {
            self.inner.will_need(self.start + offset, end - offset);
        }
    }
}

impl<D: WriteAt> WriteAt for Region<D> {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let at = self.at(offset, buf.len() as u64, io::ErrorKind::WriteZero)?;
        self.inner.write_all_at(buf, at)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
    fn start_sync(&mut self) -> io::Result<()> {
        self.inner.start_sync()
    }
    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let at = self.at(offset, len, io::ErrorKind::WriteZero)?;
        self.inner.write_zeros(at, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_reaches_past_the_window() {
        let mut disk = vec![7u8; 100];
        {
            let mut r = Region::new(&mut disk, 10, 20).unwrap();
            r.write_all_at(&[1; 20], 0).unwrap();
            r.write_zeros(5, 5).unwrap();
            assert_eq!(
                r.write_all_at(&[1], 20).unwrap_err().kind(),
                io::ErrorKind::WriteZero
            );
            assert!(r.write_zeros(19, 2).is_err());
            assert!(r.write_all_at(&[1], u64::MAX).is_err());
            let mut b = [0u8; 2];
            assert_eq!(
                r.read_exact_at(&mut b, 19).unwrap_err().kind(),
                io::ErrorKind::UnexpectedEof
            );
            r.read_exact_at(&mut b, 4).unwrap();
            assert_eq!(b, [1, 0]);
            assert_eq!(r.size().unwrap(), 20);
        }
        assert_eq!(&disk[..10], &[7; 10]);
        assert_eq!(&disk[30..], &[7; 70]);
        assert!(Region::new(&disk, u64::MAX, 2).is_err());
    }

    /// A read-ahead hint reaches the device at the region's place, cut to the region.
    #[test]
    fn hints_are_placed_and_cut_to_the_window() {
        struct Hints(std::sync::Mutex<Vec<(u64, u64)>>);
        impl ReadAt for Hints {
            fn read_exact_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
                Ok(())
            }
            fn size(&self) -> io::Result<u64> {
                Ok(1 << 20)
            }
            fn will_need(&self, offset: u64, len: u64) {
                self.0.lock().unwrap().push((offset, len));
            }
        }
        let r = Region::new(Hints(Default::default()), 4096, 8192).unwrap();
        r.will_need(100, 50);
        r.will_need(4096, 1 << 30);
        r.will_need(8192, 1);
        r.will_need(u64::MAX, u64::MAX);
        let got = r.inner.0.lock().unwrap().clone();
        assert_eq!(got, vec![(4196, 50), (8192, 4096)]);
    }
}
