//! One device written through several handles: a slot region, the partition table and the
//! boot flags of one disk, each holding `&Shared<D>`.

use std::io;
use std::sync::{Mutex, MutexGuard};

use crate::{ReadAt, WriteAt};

/// A device behind a lock, so that `&Shared<D>` reads and writes like `&File` does: any
/// number of handles (regions, a GPT) can share it, and each write goes through whole.
/// For a `File` use `&File` directly; this is for devices that need `&mut` to write
/// (a test's power-cut fake, a buffer in memory).
#[derive(Debug, Default)]
pub struct Shared<D>(Mutex<D>);

impl<D> Shared<D> {
    /// Share `device`.
    pub fn new(device: D) -> Self {
        Shared(Mutex::new(device))
    }

    /// The device back.
    pub fn into_inner(self) -> D {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// The device, locked (a panic in another holder does not lose it: the device is
    /// only ever changed by whole writes).
    pub fn lock(&self) -> MutexGuard<'_, D> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<D: ReadAt + Send> ReadAt for Shared<D> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.lock().read_exact_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        self.lock().size()
    }
    fn logical_sector_size(&self) -> Option<u32> {
        self.lock().logical_sector_size()
    }
    fn file_id(&self) -> Option<crate::FileId> {
        self.lock().file_id()
    }
    fn known_zeros(&self, offset: u64, len: u64) -> Vec<std::ops::Range<u64>> {
        self.lock().known_zeros(offset, len)
    }
    fn will_need(&self, offset: u64, len: u64) {
        self.lock().will_need(offset, len)
    }
}

impl<D: WriteAt + Send> WriteAt for &Shared<D> {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.lock().write_all_at(buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.lock().sync()
    }
    fn start_sync(&mut self) -> io::Result<()> {
        self.lock().start_sync()
    }
    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.lock().write_zeros(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Region;

    #[test]
    fn two_regions_of_one_shared_buffer() {
        let disk = Shared::new(vec![0u8; 64]);
        let mut a = Region::new(&disk, 0, 32).unwrap();
        let mut b = Region::new(&disk, 32, 32).unwrap();
        a.write_all_at(b"aa", 0).unwrap();
        b.write_all_at(b"bb", 0).unwrap();
        let mut got = [0u8; 2];
        a.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got, b"aa");
        assert!(b.write_all_at(b"x", 32).is_err());
        let v = disk.into_inner();
        assert_eq!((&v[..2], &v[32..34]), (&b"aa"[..], &b"bb"[..]));
    }
}
