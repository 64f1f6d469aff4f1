//! Positioned I/O over files, block devices and memory.
//!
//! Trees are built by several threads reading different parts of a device at once, so
//! reading goes by offset (`pread`) through a shared reference.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A device or buffer read by offset, shareable between threads.
pub trait ReadAt: Sync {
    /// Fill `buf` from `offset`; an error (`UnexpectedEof`) if the source ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Size in bytes. Files that are neither regular files nor block devices (a
    /// directory, /dev/zero) have none: an `InvalidInput` error.
    fn size(&self) -> io::Result<u64>;
    /// The whole content, when it is already in memory (lets hashing skip the copy).
    fn as_slice(&self) -> Option<&[u8]> {
        None
    }
    /// The logical sector size the kernel reports for a block device; `None` for an
    /// image file or memory.
    fn logical_sector_size(&self) -> Option<u32> {
        None
    }
    /// What file or block device this reads, when it reads one ([`crate::FileId`]):
    /// lets a caller check a handle against the path a description names.
    fn file_id(&self) -> Option<crate::FileId> {
        None
    }
    /// The parts of `offset..offset + len` known to read as zeros without being read:
    /// a sparse file's holes (`SEEK_HOLE`/`SEEK_DATA`), sorted and disjoint, as offsets
    /// of this device. None where it cannot tell (a block device, memory, a wrapper that
    /// changes what it reads): a reader that skips them (an image digest of a mostly empty
    /// image) reads what it would have read otherwise.
    fn known_zeros(&self, offset: u64, len: u64) -> Vec<std::ops::Range<u64>> {
        let _ = (offset, len);
        Vec::new()
    }
    /// A hint that `offset..offset + len` will be read soon: a file or block device starts
    /// reading it into the page cache in the background (`POSIX_FADV_WILLNEED`), so that a
    /// reader going through many places of a device at once (the FEC parity's order) keeps
    /// the disk busy while it computes. Nothing happens where there is no such cache, and
    /// no error is reported: it is only a hint.
    fn will_need(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }
}

/// Most holes a walk over a file visits (two system calls each): a file cut finer than
/// that (a hole every other block of a terabyte) has the rest of it reported as data.
const MAX_VISITED_HOLES: usize = 1 << 22;

/// The holes of the regular file `f` within `offset..offset + len`, in order, at most
/// `max` of them: where there are more, the largest (the shortest are dropped, the
/// threshold doubling until `max` remain), so that a file with many small holes before a
/// large one still has the large one skipped. None for anything else (a block device has
/// no holes), or where the file system cannot tell.
pub(crate) fn file_holes(f: &File, offset: u64, len: u64, max: usize) -> Vec<std::ops::Range<u64>> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    // Only within the file: what lies past its end is not zeros but missing (a short
    // image is an error for its reader, never a run of zeros). A block device's
    // metadata gives no length, and it has no holes.
    let Ok(meta) = f.metadata() else {
        return out;
    };
    if !meta.is_file() {
        return out;
    }
    let (Ok(mut pos), Ok(end)) = (
        i64::try_from(offset),
        i64::try_from(offset.saturating_add(len).min(meta.len())),
    ) else {
        return out;
    };
    // Holes shorter than this are not kept.
    let mut shortest = 0u64;
    let mut visited = 0usize;
    while pos < end && visited < MAX_VISITED_HOLES && max > 0 {
        visited += 1;
        let Ok(hole) = lseek(fd, pos, Whence::SeekHole) else {
            break;
        };
        if hole >= end {
            break;
        }
        // No data after the hole (ENXIO): it runs to the end of the file.
        let data = lseek(fd, hole, Whence::SeekData).map_or(end, |d| d.min(end));
        if data <= hole {
            break;
        }
        if (data - hole) as u64 >= shortest {
            out.push(hole as u64..data as u64);
        }
        while out.len() > max {
            let least = out.iter().map(|h| h.end - h.start).min().unwrap_or(0);
            shortest = shortest.saturating_mul(2).max(least + 1);
            out.retain(|h| h.end - h.start >= shortest);
        }
        pos = data;
    }
    out
}

/// A device or buffer written by offset.
pub trait WriteAt {
    /// Write all of `buf` at `offset`. Files and vectors grow if needed; a
    /// [`Region`](crate::Region) or a block device refuses what lies past its end.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make what was written durable (`fdatasync` for files; nothing for memory).
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Start writing back what was written, without waiting ([`crate::sys::start_writeback`]
    /// for files and block devices; nothing for memory): reads before the next
    /// [`sync`](Self::sync) overlap the disk's work. Not a durability point.
    fn start_sync(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Write `len` zero bytes at `offset`. Files and block devices let the kernel zero the
    /// range (`fallocate` with `FALLOC_FL_ZERO_RANGE`) instead of copying zeros in.
    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        write_zeros_by_copy(self, offset, len)
    }
}

pub(crate) fn write_zeros_by_copy<W: WriteAt + ?Sized>(
    w: &mut W,
    offset: u64,
    len: u64,
) -> io::Result<()> {
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
///
/// A regular file gets a hole there (`FALLOC_FL_PUNCH_HOLE`, growing the file first if
/// the range ends past it): an image whose zeros were holes stays sparse when a payload
/// or a store writes it again, where `FALLOC_FL_ZERO_RANGE` would allocate every block.
/// A block device has the range zeroed (`FALLOC_FL_ZERO_RANGE`, which keeps the blocks
/// mapped: no discard on a slot).
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
    let end = offset
        .checked_add(len)
        .filter(|e| i64::try_from(*e).is_ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))?;
    let meta = f.metadata()?;
    if meta.is_file() {
        if end > meta.len() {
            // Growing a file leaves a hole: the part past the old end is zeros already.
            f.set_len(end)?;
        }
        let punch = meta.len().min(end).saturating_sub(offset) as i64;
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        if punch == 0 || fallocate(f.as_raw_fd(), flags, off, punch).is_ok() {
            return Ok(());
        }
    }
    match fallocate(f.as_raw_fd(), FallocateFlags::FALLOC_FL_ZERO_RANGE, off, n) {
        Ok(()) => Ok(()),
        Err(_) => write_zeros_by_copy(&mut &*f, offset, len),
    }
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        crate::file::size_of(self)
    }
    fn logical_sector_size(&self) -> Option<u32> {
        crate::file::kind(self)
            .ok()
            .filter(|k| *k == crate::DeviceKind::BlockDevice)
            .and_then(|_| crate::sys::logical_sector_size(self).ok())
    }
    fn file_id(&self) -> Option<crate::FileId> {
        crate::FileId::of_file(self)
    }
    fn known_zeros(&self, offset: u64, len: u64) -> Vec<std::ops::Range<u64>> {
        // A range's holes: one per 16 KiB asked about at most, so that what is kept stays
        // a fraction of what a reader holds for the range itself.
        file_holes(self, offset, len, (len >> 14).max(1) as usize)
    }
    fn will_need(&self, offset: u64, len: u64) {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // A range whose last page is cached was read before (or asked for already): asking
        // again would only walk its pages (a tenth of a warm parity pass's time).
        if len == 0 || crate::sys::is_cached(self, offset.saturating_add(len - 1) as u64) {
            return;
        }
        // Only a hint: a file system without a page cache (or a kernel that declines)
        // reads the range when it is asked for, as without it.
        let _ = nix::fcntl::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(self),
            offset,
            len,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
    }
}

/// `len` bytes of `buf` (grown to fit) that start on a 4 KiB boundary: where to read
/// into. The kernel copies a read from the page cache, whose pages start on a boundary,
/// with `rep movsb`; on AMD's recent cores that runs at a fraction of its speed when the
/// destination lies a few bytes past a boundary (4 KiB aliasing), as the allocator's large
/// buffers do (16 bytes past): the copy of a 1 GiB dm-verity tree's data took as long as
/// its hashing.
pub fn page_aligned(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    const PAGE: usize = 4096;
    buf.resize(len + PAGE, 0);
    let skip = buf.as_ptr().align_offset(PAGE).min(PAGE);
    &mut buf[skip..skip + len]
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

/// References read through to what they refer to.
macro_rules! read_through {
    ($($r:ty),*) => {$(
        impl<T: ReadAt + ?Sized> ReadAt for $r {
            fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
                (**self).read_exact_at(buf, offset)
            }
            fn size(&self) -> io::Result<u64> {
                (**self).size()
            }
            fn as_slice(&self) -> Option<&[u8]> {
                (**self).as_slice()
            }
            fn logical_sector_size(&self) -> Option<u32> {
                (**self).logical_sector_size()
            }
            fn file_id(&self) -> Option<crate::FileId> {
                (**self).file_id()
            }
            fn known_zeros(&self, offset: u64, len: u64) -> Vec<std::ops::Range<u64>> {
                (**self).known_zeros(offset, len)
            }
            fn will_need(&self, offset: u64, len: u64) {
                (**self).will_need(offset, len)
            }
        }
    )*};
}

read_through!(&T, &mut T);

impl WriteAt for &File {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(*self, buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
    fn start_sync(&mut self) -> io::Result<()> {
        crate::sys::start_writeback(self)
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
    fn start_sync(&mut self) -> io::Result<()> {
        crate::sys::start_writeback(self)
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

/// A reference to a shared file writes through it: `&&File` is what a disk opened on
/// `&File` hands out (`AbDisk::slot_region`). Concrete, not a blanket over `&&T`: a
/// blanket would send the compiler's inference into an endless `&&&...` for a generic `D`.
impl WriteAt for &&File {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut w: &File = self;
        WriteAt::write_all_at(&mut w, buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        let mut w: &File = self;
        WriteAt::sync(&mut w)
    }
    fn start_sync(&mut self) -> io::Result<()> {
        crate::sys::start_writeback(self)
    }
    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let mut w: &File = self;
        WriteAt::write_zeros(&mut w, offset, len)
    }
}

impl<T: WriteAt + ?Sized> WriteAt for &mut T {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_all_at(buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        (**self).sync()
    }
    fn start_sync(&mut self) -> io::Result<()> {
        (**self).start_sync()
    }
    fn write_zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        (**self).write_zeros(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A file's holes as the file, a region of it and a reference report them; memory and
    /// a block device report none.
    /// Writeback started through a region of a file leaves what was written in place and
    /// nothing dirty for the sync after; a handle the kernel cannot write back says so.
    #[test]
    fn writeback_starts_through_a_region_and_the_sync_follows() {
        use nix::libc;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = File::create_new(&p).unwrap();
        let mut r = crate::Region::new(&f, 4096, 1 << 20).unwrap();
        let data = vec![0xa5u8; 300_000];
        r.write_all_at(&data, 10).unwrap();
        r.start_sync().unwrap();
        r.sync().unwrap();
        let back = std::fs::read(&p).unwrap();
        assert_eq!(&back[4096 + 10..4096 + 10 + data.len()], &data[..]);
        // A pipe has no pages to write back: ESPIPE, not a silent success.
        let (rd, _wr) = nix::unistd::pipe().unwrap();
        let e = crate::sys::start_writeback(&File::from(rd)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESPIPE), "{e}");
    }

    #[test]
    fn a_files_holes_are_known_zeros_through_regions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = File::create_new(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 2 << 20).unwrap();
        f.write_all_at(&[2u8; 4096], 5 << 20).unwrap();
        let f = File::open(&p).unwrap();
        let holes = ReadAt::known_zeros(&f, 0, 8 << 20);
        assert!(holes.len() >= 2, "{holes:?}");
        let mut content = vec![0u8; 8 << 20];
        ReadAt::read_exact_at(&f, &mut content, 0).unwrap();
        for h in &holes {
            assert!(content[h.start as usize..h.end as usize]
                .iter()
                .all(|&b| b == 0));
        }
        for at in [2u64 << 20, 5 << 20] {
            assert!(
                !holes.iter().any(|h| h.start < at + 4096 && at < h.end),
                "{holes:?}"
            );
        }
        // Only what was asked about, and the data at its start stays data.
        let part = ReadAt::known_zeros(&&f, (2 << 20) + 100, 1 << 20);
        assert!(part
            .iter()
            .all(|h| h.start >= (2 << 20) + 4096 && h.end <= (3 << 20) + 100));
        assert!(!part.is_empty());
        // A region from 1 MiB: its offsets, clipped to it.
        let r = crate::Region::new(&f, 1 << 20, 3 << 20).unwrap();
        let rh = r.known_zeros(0, 8 << 20);
        assert!(
            !rh.is_empty() && rh.iter().all(|h| h.end <= 3 << 20),
            "{rh:?}"
        );
        assert!(!rh
            .iter()
            .any(|h| h.start < (1 << 20) + 4096 && (1 << 20) < h.end));
        assert!(rh.iter().any(|h| h.start == 0));
        assert!(r.known_zeros(3 << 20, 10).is_empty());
        assert!(content.known_zeros(0, 8 << 20).is_empty());
        // Nothing past the end of the file is a hole: it is missing.
        let tail = ReadAt::known_zeros(&f, 6 << 20, 4 << 20);
        assert!(
            tail.iter().all(|h| h.end <= 8 << 20) && !tail.is_empty(),
            "{tail:?}"
        );
        assert!(ReadAt::known_zeros(&f, 8 << 20, 1 << 20).is_empty());
        assert!(File::open("/dev/null")
            .map(|n| ReadAt::known_zeros(&n, 0, 1 << 20))
            .unwrap()
            .is_empty());
    }

    /// Over the limit, the largest holes are kept wherever they lie.
    #[test]
    fn many_small_holes_leave_room_for_the_large_ones() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create_new(dir.path().join("img")).unwrap();
        let size = 32u64 << 20;
        f.set_len(size).unwrap();
        // Twenty one-block holes between data blocks, then a large hole, then data, then
        // a two-block hole, then a large hole to the end.
        for b in (0..41u64).step_by(2) {
            f.write_all_at(&[1u8; 4096], b * 4096).unwrap();
        }
        f.write_all_at(&[1u8; 4096], 16 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], (16 << 20) + 3 * 4096).unwrap();
        let all = file_holes(&f, 0, size, 1000);
        assert_eq!(all.len(), 23, "{all:?}");
        let kept = file_holes(&f, 0, size, 3);
        assert_eq!(
            kept,
            vec![
                41 * 4096..16 << 20,
                (16 << 20) + 4096..(16 << 20) + 3 * 4096,
                (16 << 20) + 4 * 4096..size
            ]
        );
        let two = file_holes(&f, 0, size, 2);
        assert_eq!(two, vec![41 * 4096..16 << 20, (16 << 20) + 4 * 4096..size]);
        assert!(file_holes(&f, 0, size, 0).is_empty());
    }

    #[test]
    fn zeros_in_a_file_are_holes_and_grow_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let mut f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        let data = vec![0xa5u8; 8 << 20];
        f.write_all_at(&data, 0).unwrap();
        f.sync().unwrap();
        let full = f.metadata().unwrap().blocks();
        // Zeros over most of the data, and past the end (the file grows).
        f.write_zeros(4096, (6 << 20) - 4096).unwrap();
        f.write_zeros(10 << 20, 1 << 20).unwrap();
        f.write_zeros(0, 0).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 11 << 20);
        let mut back = vec![0u8; 11 << 20];
        ReadAt::read_exact_at(&f, &mut back, 0).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0xa5));
        assert!(back[4096..6 << 20].iter().all(|&b| b == 0));
        assert!(back[6 << 20..8 << 20].iter().all(|&b| b == 0xa5));
        assert!(back[8 << 20..].iter().all(|&b| b == 0));
        // Where the file system has holes (a fresh file set long has none of its blocks),
        // the zeroed range holds no blocks.
        let probe = File::create(dir.path().join("probe")).unwrap();
        probe.set_len(1 << 20).unwrap();
        if probe.metadata().unwrap().blocks() == 0 {
            let now = f.metadata().unwrap().blocks();
            assert!(
                now * 512 <= full * 512 - (6 << 20) + 4096 + (64 << 10),
                "{now} of {full}"
            );
        }
    }
}
