//! Positioned I/O over files, block devices and memory, and progress reporting.
//!
//! The tree is built by several threads reading different parts of the data device at
//! once, so sources are read by offset (`pread`) through a shared reference.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// A zeroed buffer of `len` bytes, or an error naming `what` when it cannot be had
/// (sizes come from devices and headers: an allocation failure must not abort).
pub(crate) fn zeroed(len: u64, what: &'static str) -> crate::Result<Vec<u8>> {
    let too_big = || crate::Error::param(what, format!("{len} bytes do not fit in memory"));
    let n = usize::try_from(len).map_err(|_| too_big())?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| too_big())?;
    v.resize(n, 0);
    Ok(v)
}

/// A device or buffer read by offset, shareable between threads.
pub trait ReadAt: Sync {
    /// Fill `buf` from `offset`; an error (`UnexpectedEof`) if the source ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// The whole content, when it is already in memory (lets hashing skip the copy).
    fn as_slice(&self) -> Option<&[u8]> {
        None
    }
}

/// A device or buffer written by offset.
pub trait WriteAt {
    /// Write all of `buf` at `offset`, extending the target if needed.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make what was written durable (`fdatasync` for files; nothing for memory).
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Write `len` zero bytes at `offset`. Files and block devices override this to let
    /// the kernel zero the range (`fallocate` with `FALLOC_FL_ZERO_RANGE`) instead of
    /// copying zeros in.
    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        write_zeros_by_copy(self, offset, len)
    }
}

fn write_zeros_by_copy<W: WriteAt + ?Sized>(w: &mut W, offset: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        w.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Zero a range of a file or block device in the kernel; falls back to writing zeros
/// where the file system or device cannot.
fn zero_range(f: &File, offset: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range too large",
        ));
    };
    if n == 0 {
        return Ok(());
    }
    match fallocate(f.as_raw_fd(), FallocateFlags::FALLOC_FL_ZERO_RANGE, off, n) {
        Ok(()) => Ok(()),
        Err(_) => write_zeros_by_copy(&mut &*f, offset, len),
    }
}

fn file_size(f: &File) -> io::Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let meta = f.metadata()?;
    let ft = meta.file_type();
    if meta.is_file() {
        Ok(meta.len())
    } else if !ft.is_block_device() {
        // A directory seeks to i64::MAX and /dev/zero to 0: neither is a size to build on.
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        ))
    } else {
        // Block devices report 0 in metadata; their end is their size.
        let mut handle = f;
        handle.seek(SeekFrom::End(0))
    }
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        file_size(self)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..)?.get(..buf.len()))
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of buffer")
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
    fn as_slice(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
    fn as_slice(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
    fn as_slice(&self) -> Option<&[u8]> {
        (**self).as_slice()
    }
}

impl WriteAt for &File {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(*self, buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        zero_range(self, offset, len)
    }
}

impl WriteAt for File {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        zero_range(self, offset, len)
    }
}

impl WriteAt for Vec<u8> {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let end = start
            .checked_add(buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        if self.len() < end {
            self.resize(end, 0);
        }
        self[start..end].copy_from_slice(buf);
        Ok(())
    }
}

impl<T: WriteAt + ?Sized> WriteAt for &mut T {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_all_at(buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        (**self).sync()
    }
    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        (**self).write_zeros(offset, len)
    }
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
}

/// Receives progress of a long operation: bytes done out of a total. Called from worker
/// threads, in increasing order of `done`.
pub trait Progress: Sync {
    /// `done` of `total` bytes processed.
    fn progress(&self, done: u64, total: u64);
}

impl<F: Fn(u64, u64) + Sync> Progress for F {
    fn progress(&self, done: u64, total: u64) {
        self(done, total)
    }
}
