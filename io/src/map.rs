//! Read-only memory maps of images: the other `unsafe` code for I/O in Keel.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::path::Path;
use std::ptr::NonNull;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// A regular file or block device mapped read-only, seen as `&[u8]`.
///
/// For tools that look at whole images at random (a delta generator): the bytes are the
/// kernel's page cache, read on first touch and dropped again under memory pressure, so
/// an image larger than the memory the tool may use is still one slice, and two images
/// of 768 MiB do not need 1.5 GiB of the process's own memory.
///
/// The image must not change while it is mapped: bytes written meanwhile by another
/// process show through, and a file truncated meanwhile ends the process with `SIGBUS`
/// on the next touch past its new end (as with every mapped reader: zstd, git, ripgrep).
/// Build pipelines map images they made and no longer write.
pub struct Mapped {
    map: Option<(NonNull<c_void>, NonZeroUsize)>,
}

// SAFETY: the mapping is read-only and private to this value; sharing `&[u8]` of it
// between threads is as safe as sharing any other immutable slice.
unsafe impl Send for Mapped {}
// SAFETY: as above: nothing mutates the mapping through a `Mapped`.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Map the regular file or block device at `path` whole. Anything else (a directory,
    /// /dev/zero, a pipe) is refused by name, as [`crate::open_device`] does; an image
    /// larger than the address space is an error, not a truncated map.
    pub fn open(path: &Path) -> io::Result<Mapped> {
        let (f, _) = crate::open_device(path, false)?;
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let size = crate::file::size_of(&f).map_err(named)?;
        let len = usize::try_from(size).map_err(|_| {
            named(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{size} bytes do not fit this machine's address space"),
            ))
        })?;
        Self::map(&f, len).map_err(named)
    }

    fn map(f: &File, len: usize) -> io::Result<Mapped> {
        let Some(len) = NonZeroUsize::new(len) else {
            return Ok(Mapped { map: None });
        };
        // SAFETY: a fresh read-only shared mapping of an open descriptor at offset 0;
        // the kernel picks the address, so no existing memory is replaced. The file
        // may be closed afterwards: the mapping keeps its own reference.
        let ptr = unsafe { mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, f, 0) }
            .map_err(io::Error::from)?;
        Ok(Mapped {
            map: Some((ptr, len)),
        })
    }
}

/// Ask the kernel to start reading the pages under `bytes` (`MADV_WILLNEED`) and return
/// at once: a reader of a mapped image that works through it in pieces (a generator's
/// workers) has the next piece read from the disk while it computes on this one, where
/// page faults would read a little at a time and wait each time. Advice only: memory that
/// is not a file's mapping, or a kernel that declines, is left as it was.
pub fn will_need(bytes: &[u8]) {
    // SAFETY: sysconf reads a constant of the system; it takes and returns plain values.
    let page = usize::try_from(unsafe { nix::libc::sysconf(nix::libc::_SC_PAGESIZE) })
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096);
    let start = bytes.as_ptr() as usize;
    let aligned = start - start % page;
    let Some(ptr) = NonNull::new(aligned as *mut c_void).filter(|_| !bytes.is_empty()) else {
        return;
    };
    // SAFETY: WILLNEED changes no memory's contents or mapping, only when the kernel
    // reads it in; the range is pages that `bytes` (a live borrow) touches, rounded down
    // to its first page's start.
    let _ = unsafe {
        nix::sys::mman::madvise(
            ptr,
            bytes.len() + (start - aligned),
            nix::sys::mman::MmapAdvise::MADV_WILLNEED,
        )
    };
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self.map {
            // SAFETY: `ptr` is a live mapping of `len` readable bytes until `drop`, which
            // needs `&mut self`, so no slice handed out here outlives it.
            Some((ptr, len)) => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr().cast::<u8>(), len.get())
            },
            None => &[],
        }
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if let Some((ptr, len)) = self.map.take() {
            // SAFETY: the mapping made in `map`, unmapped once; no slice of it is alive
            // (they borrow `self`).
            let _ = unsafe { munmap(ptr, len.get()) };
        }
    }
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapped").field("len", &self.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_files_whole_and_refuses_what_has_no_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let bytes: Vec<u8> = (0..300_001u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, &bytes).unwrap();
        let m = Mapped::open(&p).unwrap();
        assert!(*m == *bytes);
        let shared = std::sync::Arc::new(m);
        let s2 = std::sync::Arc::clone(&shared);
        let sum = std::thread::spawn(move || s2.iter().map(|&b| u64::from(b)).sum::<u64>())
            .join()
            .unwrap();
        assert_eq!(sum, bytes.iter().map(|&b| u64::from(b)).sum::<u64>());
        std::fs::write(&p, b"").unwrap();
        assert!(Mapped::open(&p).unwrap().is_empty());
        for bad in [dir.path(), Path::new("/dev/zero"), &dir.path().join("none")] {
            let e = Mapped::open(bad).unwrap_err();
            assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
        }
    }
}
