//! The block-device ioctls. The only module of the crate allowed `unsafe`: each call
//! passes a valid descriptor and, where the kernel writes back, a pointer to a live local.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::error::{Error, Result};

nix::ioctl_none!(blkrrpart, 0x12, 95);
nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc_int);

#[allow(non_camel_case_types)]
type libc_int = std::ffi::c_int;

/// `BLKRRPART`: re-read the partition table.
pub(crate) fn reread_partitions(f: &File) -> Result<()> {
    // SAFETY: `f` is an open file for the duration of the call; BLKRRPART takes no argument.
    match unsafe { blkrrpart(f.as_raw_fd()) } {
        Ok(_) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => Err(Error::Busy),
        Err(e) => Err(Error::io(
            "re-reading the partition table (BLKRRPART)",
            e.into(),
        )),
    }
}

/// `BLKSSZGET`: the logical sector size.
pub(crate) fn logical_sector_size(f: &File) -> Result<u32> {
    let mut size: libc_int = 0;
    // SAFETY: `f` is open; the kernel writes one int to `size`, which outlives the call.
    unsafe { blksszget(f.as_raw_fd(), &mut size) }
        .map_err(|e| Error::io("reading the sector size (BLKSSZGET)", e.into()))?;
    u32::try_from(size).map_err(|_| Error::Invalid(format!("sector size {size}")))
}
