//! Read-only memory maps of images: the other `unsafe` code for I/O in Keel.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

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
///
/// A sparse file's holes are found when it is mapped (`SEEK_HOLE`/`SEEK_DATA`) and told
/// to whoever holds a slice of it ([`known_zeros`]): an 8 GiB image holding 1 GiB of
/// files is then hashed and scanned for what it holds, not read through its holes (each
/// of which the kernel would otherwise fill with pages of zeros on first touch).
pub struct Mapped {
    map: Option<(NonNull<c_void>, NonZeroUsize)>,
    holes: Arc<[Range<u64>]>,
}

/// The holes of the sparse files mapped now, by the address of their mapping: what
/// [`known_zeros`] answers from. Entries are added and removed with their `Mapped`.
static MAPPED_HOLES: Mutex<Vec<MappedHoles>> = Mutex::new(Vec::new());

/// A mapping's address and length, and its file's holes.
type MappedHoles = (usize, usize, Arc<[Range<u64>]>);

/// Most holes of one file remembered: 1 MiB of ranges. Of a file cut finer than that (a
/// hole every other block of a large image), the largest holes are remembered and the
/// others read as any data is.
const MAX_HOLES: usize = 1 << 16;

fn registry() -> std::sync::MutexGuard<'static, Vec<MappedHoles>> {
    MAPPED_HOLES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The parts of `bytes` known to read as zeros without being read: where `bytes` lies in
/// a [`Mapped`] sparse file, its holes, as sorted disjoint ranges of offsets into `bytes`;
/// for any other memory, none. Finding them is a lock and a search (no system call), so
/// a reader may ask for each piece of an image it works through.
///
/// The answer is the file's holes when it was mapped: as [`Mapped`] says, an image must
/// not be written while it is mapped.
pub fn known_zeros(bytes: &[u8]) -> Vec<Range<usize>> {
    let (start, len) = (bytes.as_ptr() as usize, bytes.len());
    let mut out = Vec::new();
    if len == 0 {
        return out;
    }
    let maps = registry();
    let Some((base, _, holes)) = maps
        .iter()
        .find(|(base, size, _)| start >= *base && start + len <= base + size)
    else {
        return out;
    };
    let (from, to) = ((start - base) as u64, (start - base + len) as u64);
    let first = holes.partition_point(|h| h.end <= from);
    for h in holes[first..].iter().take_while(|h| h.start < to) {
        let (a, b) = (h.start.max(from), h.end.min(to));
        out.push((a - from) as usize..(b - from) as usize);
    }
    out
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
        if size == 0 && std::io::Read::read(&mut &f, &mut [0u8; 1]).map_err(named)? > 0 {
            // A file of /proc or /sys: its size says nothing of what it reads, and a map of
            // it is empty. Mapping it would make an image of nothing out of it.
            return Err(named(io::Error::new(
                io::ErrorKind::InvalidInput,
                "reports a size of 0 but has content (a /proc or /sys file?): not an image",
            )));
        }
        // A block device has none.
        let holes = crate::device::file_holes(&f, 0, size, MAX_HOLES);
        Self::map(&f, len, holes.into()).map_err(named)
    }

    /// The file's holes when it was mapped (byte ranges that read as zeros), in order;
    /// empty for a block device or a file without holes.
    pub fn holes(&self) -> &[Range<u64>] {
        &self.holes
    }

    fn map(f: &File, len: usize, holes: Arc<[Range<u64>]>) -> io::Result<Mapped> {
        let Some(len) = NonZeroUsize::new(len) else {
            return Ok(Mapped {
                map: None,
                holes: Vec::new().into(),
            });
        };
        // SAFETY: a fresh read-only shared mapping of an open descriptor at offset 0;
        // the kernel picks the address, so no existing memory is replaced. The file
        // may be closed afterwards: the mapping keeps its own reference.
        let ptr = unsafe { mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, f, 0) }
            .map_err(io::Error::from)?;
        if !holes.is_empty() {
            registry().push((ptr.as_ptr() as usize, len.get(), Arc::clone(&holes)));
        }
        Ok(Mapped {
            map: Some((ptr, len)),
            holes,
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
            // Forgotten before the address can be mapped again by anyone.
            registry().retain(|(base, _, _)| *base != ptr.as_ptr() as usize);
            // SAFETY: the mapping made in `map`, unmapped once; no slice of it is alive
            // (they borrow `self`).
            let _ = unsafe { munmap(ptr, len.get()) };
        }
    }
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapped")
            .field("len", &self.len())
            .field("holes", &self.holes.len())
            .finish()
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
        for bad in [
            dir.path(),
            Path::new("/dev/zero"),
            &dir.path().join("none"),
            Path::new("/proc/self/status"),
        ] {
            let e = Mapped::open(bad).unwrap_err();
            assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
        }
    }

    #[test]
    fn a_sparse_files_holes_are_known_to_its_slices_only() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = File::create(&p).unwrap();
        // Data at 1 MiB and 3 MiB (one page each), a hole before, between and after.
        let size = 5u64 << 20;
        f.set_len(size).unwrap();
        f.write_all_at(&[7u8; 4096], 1 << 20).unwrap();
        f.write_all_at(&[9u8; 4096], 3 << 20).unwrap();
        f.sync_all().unwrap();
        let m = Mapped::open(&p).unwrap();
        let holes = m.holes().to_vec();
        // Every file system a test runs on (ext4, tmpfs, btrfs, xfs) reports holes.
        assert!(!holes.is_empty(), "no holes found in {}", p.display());
        // What is reported a hole reads as zeros, every data byte lies outside the holes.
        for h in &holes {
            assert!(m[h.start as usize..h.end as usize].iter().all(|&b| b == 0));
        }
        for at in [1u64 << 20, 3 << 20] {
            assert!(!holes.iter().any(|h| h.start < at + 4096 && at < h.end));
        }
        // The holes cover at least the 4 MiB that were never written, within 64 KiB each.
        let covered: u64 = holes.iter().map(|h| h.end - h.start).sum();
        assert!(covered >= (4 << 20) - 4 * (64 << 10), "{holes:?}");
        // Through a slice: offsets relative to it, clipped to it.
        let whole = known_zeros(&m);
        assert_eq!(
            whole,
            holes
                .iter()
                .map(|h| h.start as usize..h.end as usize)
                .collect::<Vec<_>>()
        );
        let part = &m[(1 << 20) + 100..(3 << 20) + 8192];
        let inner = known_zeros(part);
        assert!(!inner.is_empty());
        for r in &inner {
            assert!(r.end <= part.len() && part[r.clone()].iter().all(|&b| b == 0));
        }
        // A copy of the same bytes in the process's own memory knows nothing.
        let copy: Vec<u8> = m.to_vec();
        assert!(known_zeros(&copy).is_empty());
        let mine = Arc::clone(&m.holes);
        drop(m);
        // Forgotten with the mapping.
        assert!(!registry().iter().any(|(_, _, h)| Arc::ptr_eq(h, &mine)));
        // A dense file has no holes.
        std::fs::write(&p, vec![1u8; 1 << 20]).unwrap();
        assert!(Mapped::open(&p).unwrap().holes().is_empty());
    }
}
