//! Disks: image files and block devices, read and written by offset.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

use crate::error::{Error, Result};

/// What the table code needs of a disk. Implemented for image files and block devices,
/// and by tests for devices that fail on purpose.
pub trait Device {
    /// Fill `buf` from `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset`.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make the writes so far durable, in order with later ones.
    fn sync(&mut self) -> io::Result<()>;
    /// Size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// The logical sector size the kernel reports for a block device; `None` for an image.
    fn logical_sector_size(&self) -> Option<u32> {
        None
    }
}

/// An image file or block device.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    block_device: bool,
}

impl FileDevice {
    /// Open read-only or writable.
    pub fn open(path: &Path, writable: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Self::from_file(file).map_err(|e| Error::io(format!("inspecting {}", path.display()), e))
    }

    /// Wrap an open file.
    pub fn from_file(file: File) -> io::Result<Self> {
        let block_device = file.metadata()?.file_type().is_block_device();
        Ok(FileDevice { file, block_device })
    }

    /// Whether this is a block device (not an image file).
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Ask the kernel to re-read the partition table of a block device
    /// ([`Error::Busy`] if a partition is in use). Nothing to do for an image.
    pub fn reread_partitions(&self) -> Result<()> {
        if !self.block_device {
            return Ok(());
        }
        crate::sys::reread_partitions(&self.file)
    }
}

impl Device for FileDevice {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.file, buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        if self.block_device {
            (&self.file).seek(SeekFrom::End(0))
        } else {
            Ok(self.file.metadata()?.len())
        }
    }
    fn logical_sector_size(&self) -> Option<u32> {
        if self.block_device {
            crate::sys::logical_sector_size(&self.file).ok()
        } else {
            None
        }
    }
}

impl<D: Device + ?Sized> Device for &mut D {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_all_at(buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        (**self).sync()
    }
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
    fn logical_sector_size(&self) -> Option<u32> {
        (**self).logical_sector_size()
    }
}

/// A disk image in memory.
impl Device for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..)?.get(..buf.len()))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let o = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        let dst = self
            .get_mut(o..)
            .and_then(|d| d.get_mut(..buf.len()))
            .ok_or_else(|| io::Error::other("write past the end of the disk"))?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}
