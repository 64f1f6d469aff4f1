//! Test fakes shared by the payload tests.
#![allow(dead_code)]

use std::io;

use keel_verity::{ReadAt, WriteAt};

/// A target that loses power at its `fail_at`-th write (1-based): that write lands half.
pub(crate) struct Cut {
    pub disk: Vec<u8>,
    pub writes: usize,
    pub fail_at: usize,
}

impl ReadAt for Cut {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.disk.read_exact_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.disk.len() as u64)
    }
}

impl WriteAt for Cut {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writes += 1;
        if self.writes == self.fail_at {
            self.disk.write_all_at(&buf[..buf.len() / 2], offset)?;
            return Err(io::Error::other("power cut"));
        }
        if self.writes > self.fail_at {
            return Err(io::Error::other("power cut"));
        }
        self.disk.write_all_at(buf, offset)
    }
}

impl Cut {
    /// A target of `disk` whose write number `fail_at` is cut (`usize::MAX`: never).
    pub(crate) fn new(disk: Vec<u8>, fail_at: usize) -> Self {
        Cut {
            disk,
            writes: 0,
            fail_at,
        }
    }
}
