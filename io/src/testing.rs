//! Test fakes for the crates above (feature `testing`): a device that loses power.

use std::io;

use crate::{ReadAt, WriteAt};

/// A device that loses power: the first `allowed` writes land, the next one lands only
/// its first `torn` bytes and fails, and every later write or sync fails.
#[derive(Debug)]
pub struct PowerCut<D> {
    /// The device as power left it.
    pub inner: D,
    /// Writes that land whole.
    pub allowed: usize,
    /// Bytes of the cut write that land.
    pub torn: usize,
    /// Writes attempted so far.
    pub writes: usize,
}

impl<D> PowerCut<D> {
    /// A device whose power goes after `allowed` writes, tearing the next at `torn` bytes.
    pub fn new(inner: D, allowed: usize, torn: usize) -> Self {
        PowerCut {
            inner,
            allowed,
            torn,
            writes: 0,
        }
    }

    /// Whether the power went.
    pub fn is_cut(&self) -> bool {
        self.writes > self.allowed
    }
}

impl<D: ReadAt> ReadAt for PowerCut<D> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn file_id(&self) -> Option<crate::FileId> {
        self.inner.file_id()
    }
}

impl<D: WriteAt> WriteAt for PowerCut<D> {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writes += 1;
        if self.writes > self.allowed {
            if self.writes == self.allowed + 1 {
                let n = self.torn.min(buf.len());
                self.inner.write_all_at(&buf[..n], offset)?;
            }
            return Err(io::Error::other("power cut"));
        }
        self.inner.write_all_at(buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        if self.is_cut() {
            return Err(io::Error::other("power cut"));
        }
        self.inner.sync()
    }
    // Zeroing counts as one write, like the kernel's single fallocate.
    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.writes += 1;
        if self.writes > self.allowed {
            return Err(io::Error::other("power cut"));
        }
        self.inner.write_zeros(offset, len)
    }
}

/// A progress observer that asks the work to stop once half of it is done: an
/// interruption at a point that is neither the start nor the end.
#[derive(Debug, Default)]
pub struct StopHalfWay(std::sync::atomic::AtomicBool);

impl crate::Progress for StopHalfWay {
    fn progress(&self, done: u64, total: u64) {
        if done.saturating_mul(2) >= total {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    fn cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}
