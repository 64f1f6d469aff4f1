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

/// Whether the page holding byte `offset` of `f` is in the page cache: a one-byte read
/// that may not wait for the disk (`preadv2` with `RWF_NOWAIT`). False where the kernel or
/// the file system cannot tell (it then reads as it would have).
pub fn is_cached(f: &File, offset: u64) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Ok(at) = nix::libc::off_t::try_from(offset) else {
            return false;
        };
        let mut byte = 0u8;
        let iov = nix::libc::iovec {
            iov_base: std::ptr::addr_of_mut!(byte).cast(),
            iov_len: 1,
        };
        // SAFETY: `f` is open for the call; the one iovec points to a live local byte.
        let n = unsafe { nix::libc::preadv2(f.as_raw_fd(), &iov, 1, at, nix::libc::RWF_NOWAIT) };
        n == 1
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (f, offset);
        false
    }
}

/// Start writing `f`'s dirty pages back without waiting for them (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`; nothing where there is no such call): what the caller reads
/// meanwhile overlaps the disk's work, and the `fdatasync` after waits for less. Not a
/// durability point.
pub fn start_writeback(f: &File) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `f` is open for the call; the call takes integers only.
        let r = unsafe {
            nix::libc::sync_file_range(f.as_raw_fd(), 0, 0, nix::libc::SYNC_FILE_RANGE_WRITE)
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = f;
    Ok(())
}

/// `len` zero bytes, or `None` when the allocator cannot give them (sizes that come from
/// devices and headers must not abort the process). The pages are the allocator's zeroed
/// ones, not written here: a large buffer's pages are then faulted in by whichever thread
/// first writes each, instead of all by the caller before any work starts (8 MiB, the
/// dm-verity tree of 1 GiB, took 5 to 10 ms that way).
pub fn try_zeroed(len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(len).ok()?;
    // SAFETY: the layout's size is not zero (checked above).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of `len` bytes
    // of align 1 (a Vec<u8>'s of capacity `len`), and all `len` bytes are initialized (to
    // zero).
    Some(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_buffers_are_zero_and_absurd_sizes_are_refused() {
        for len in [0usize, 1, 4095, 1 << 20] {
            let v = try_zeroed(len).unwrap();
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&b| b == 0));
        }
        // More than the address space (a size off a corrupt header): refused, no abort.
        assert!(try_zeroed(usize::MAX / 2).is_none());
        assert!(try_zeroed(usize::MAX).is_none());
    }
    use std::io::Write;

    /// What a read brought in is cached; what was dropped from the cache is not.
    #[test]
    fn the_page_cache_is_told_apart_from_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(&[7u8; 16384]).unwrap();
        f.sync_all().unwrap();
        let f = File::open(&path).unwrap();
        let mut buf = [0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 0).unwrap();
        assert!(is_cached(&f, 100), "a page just read");
        nix::fcntl::posix_fadvise(
            f.as_raw_fd(),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
        assert!(!is_cached(&f, 100), "a page dropped from the cache");
        assert!(!is_cached(&f, u64::MAX), "past any file");
    }
}
