//! Disks as files: opening an image or block device, and asking the kernel to re-read a
//! block device's table.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// Open a disk image or block device for [`GptDisk`](crate::GptDisk); anything else (a
/// directory, a character device) is refused with an error naming `path`.
pub fn open_disk(path: &Path, writable: bool) -> Result<File> {
    keel_io::open_device(path, writable)
        .map(|(f, _)| f)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))
}

/// Ask the kernel to re-read the partition table of a block device ([`Error::Busy`] if a
/// partition is in use); nothing to do for an image file.
pub fn reread_partitions(f: &File) -> Result<()> {
    let block = f
        .metadata()
        .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        .map_err(|e| Error::io("inspecting the disk", e))?;
    if !block {
        return Ok(());
    }
    keel_io::sys::reread_partitions(f).map_err(|e| match e.kind() {
        std::io::ErrorKind::ResourceBusy => Error::Busy,
        _ => Error::io("re-reading the partition table", e),
    })
}
