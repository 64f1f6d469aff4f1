//! The block-device ioctls (with the mapping of images, the only `unsafe` code for I/O
//! in Keel). Each call passes a descriptor that is open for its duration and, where the
//! kernel writes back, a pointer to a live local.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

mod raw {
    nix::ioctl_none!(blkrrpart, 0x12, 95);
    nix::ioctl_read_bad!(
        blksszget,
        nix::request_code_none!(0x12, 104),
        std::ffi::c_int
    );
}
use raw::{blkrrpart, blksszget};

/// `BLKRRPART`: ask the kernel to re-read the partition table. A partition in use gives
/// an error of kind [`io::ErrorKind::ResourceBusy`].
pub fn reread_partitions(f: &File) -> io::Result<()> {
    // SAFETY: `f` is an open file for the duration of the call; BLKRRPART takes no argument.
    match unsafe { blkrrpart(f.as_raw_fd()) } {
        Ok(_) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            "a partition of the device is in use: the kernel keeps the old table until reboot",
        )),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("re-reading the partition table (BLKRRPART): {e}"),
        )),
    }
}

/// `BLKSSZGET`: the logical sector size of a block device.
pub fn logical_sector_size(f: &File) -> io::Result<u32> {
    let mut size: std::ffi::c_int = 0;
    // SAFETY: `f` is open; the kernel writes one int to `size`, which outlives the call.
    unsafe { blksszget(f.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
    u32::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("sector size {size}")))
}

/// Tune glibc's allocator for a program that applies payloads, for it to call first
/// thing: one pool (arena) for all threads, and buffers of 4 MiB or more mapped on their
/// own, so they go back to the system when freed. Keel's appliers decode on every core into
/// buffers of megabytes that one thread allocates and another frees; with an arena per
/// thread, and large buffers kept in the arenas, the process holds the sum of the threads'
/// high-water marks and what fragmentation strands. The delta apply of the corpus's EROFS
/// pair peaks at 47 MiB of heap: 61 to 68 MiB resident with glibc's defaults, 50 to 54
/// MiB with this (and 5 to 10% slower: the large buffers' pages are faulted in again).
/// Does nothing on other C libraries.
pub fn lean_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (param, value) in [
        (nix::libc::M_ARENA_MAX, 1),
        (nix::libc::M_MMAP_THRESHOLD, 4 << 20),
    ] {
        // SAFETY: mallopt only sets a tunable; it is safe to call at any time.
        unsafe { nix::libc::mallopt(param, value) };
    }
}
