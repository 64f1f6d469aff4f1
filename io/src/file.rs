//! Files and block devices: opening only what has a size, size checks, identity, and
//! crash-safe replacement of small files.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What an opened device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// An image file.
    RegularFile,
    /// A block device (`/dev/sda`, `/dev/loop0p3`).
    BlockDevice,
}

/// The kind of `f`, or an `InvalidInput` error for anything else (a directory, a
/// character device such as /dev/zero, a pipe): none of them has a size to build on.
pub(crate) fn kind(f: &File) -> io::Result<DeviceKind> {
    let ft = f.metadata()?.file_type();
    if ft.is_file() {
        Ok(DeviceKind::RegularFile)
    } else if ft.is_block_device() {
        Ok(DeviceKind::BlockDevice)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        ))
    }
}

/// The size of a regular file or block device.
pub(crate) fn size_of(f: &File) -> io::Result<u64> {
    match kind(f)? {
        DeviceKind::RegularFile => Ok(f.metadata()?.len()),
        // Block devices report 0 in metadata; their end is their size.
        DeviceKind::BlockDevice => (&mut &*f).seek(SeekFrom::End(0)),
    }
}

/// Open a regular file or block device, read-only or writable, and say which it is. Any
/// other kind of file is refused with an error naming `path`.
pub fn open_device(path: &Path, writable: bool) -> io::Result<(File, DeviceKind)> {
    use std::os::unix::fs::OpenOptionsExt;
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    // Opened without waiting: a FIFO would block the open until a writer came, before its
    // kind could be refused.
    let f = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(named)?;
    let k = kind(&f).map_err(named)?;
    // A regular file or a block device: back to ordinary blocking I/O.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let flags =
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| named(e.into()))?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(|e| named(e.into()))?;
    Ok((f, k))
}

/// An error unless `dev` holds at least `need` bytes; `what` names it in the message.
pub fn require_size<D: crate::ReadAt + ?Sized>(dev: &D, need: u64, what: &str) -> io::Result<()> {
    let have = dev.size()?;
    if have < need {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} holds {have} bytes, {need} are needed"),
        ));
    }
    Ok(())
}

/// What a file or device is, however it was named or opened: a block device by its device
/// number (`/dev/sda` and `/dev/disk/by-id/...` are one), anything else by its file system
/// and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileId {
    /// A block device: its device number.
    Device(u64),
    /// A regular file: the device of its file system, and its inode.
    Inode(u64, u64),
}

impl FileId {
    fn of(md: &std::fs::Metadata) -> Option<FileId> {
        use std::os::unix::fs::FileTypeExt;
        if md.file_type().is_block_device() {
            Some(FileId::Device(md.rdev()))
        } else if md.is_file() {
            Some(FileId::Inode(md.dev(), md.ino()))
        } else {
            None
        }
    }

    /// The identity of the file or block device at `path` (symlinks followed); `None` for
    /// anything else or nothing.
    pub fn of_path(path: &Path) -> Option<FileId> {
        FileId::of(&std::fs::metadata(path).ok()?)
    }

    /// The identity of an open file or block device.
    pub fn of_file(f: &File) -> Option<FileId> {
        FileId::of(&f.metadata().ok()?)
    }
}

/// Whether two open files are the same file or device (the running slot as a target).
pub fn same_file(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino() && x.rdev() == y.rdev(),
        _ => false,
    }
}

/// A small regular file's bytes, at most `max` of them: a FIFO (which would block), a
/// device (`/dev/zero`, endless) or a directory where the file belongs is an error, never
/// a wait or an endless read, and so is a file larger than `max` (never a partial read).
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::other(format!(
            "{}: larger than {max} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// An exclusive lock on a file (created if missing), held until dropped: one holder at a
/// time, for a directory of state that two processes must not write together.
#[derive(Debug)]
pub struct FileLock(#[allow(dead_code)] nix::fcntl::Flock<File>);

impl FileLock {
    /// Take the lock on `path` without waiting: `ErrorKind::WouldBlock` while another
    /// holds it. A symlink at `path` is not followed.
    pub fn try_exclusive(path: &Path) -> io::Result<FileLock> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map(FileLock)
            .map_err(|(_, errno)| io::Error::from(errno))
    }
}

/// Replace `path` with `bytes` atomically: a temporary file beside it, written and
/// synced, renamed over it, the directory synced. After a crash at any point the file
/// holds the old or the new bytes, never a mix.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_with_mode(path, bytes, None)
}

/// [`replace_file`] for a secret (a private key): the file is created readable by its
/// owner only (0600) and never through a symlink. A symlink at `path` is replaced, not
/// followed, and the temporary file is created exclusively, so no other file is written.
pub fn replace_file_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_with_mode(path, bytes, Some(0o600))
}

fn replace_with_mode(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a file name", path.display()),
            )
        })?;
    // A name of this call's own, created exclusively: nothing that is there already (a
    // leftover of a killed run, a planted link, another file that happens to bear the
    // name) is followed, reused or removed.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let named = |p: &Path, e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    let mut tmp = PathBuf::new();
    let mut file = None;
    for n in 0..100u32 {
        tmp = dir.join(format!(
            ".{name}.keel-tmp.{}.{stamp}.{n}",
            std::process::id()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.unwrap_or(0o666))
            .open(&tmp)
        {
            Ok(f) => {
                file = Some(f);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(named(&tmp, e)),
        }
    }
    let Some(mut f) = file else {
        return Err(named(
            &tmp,
            io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary name"),
        ));
    };
    if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
        let _ = std::fs::remove_file(&tmp);
        return Err(named(&tmp, e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(named(path, e));
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReadAt;

    #[test]
    fn private_files_are_0600_and_replace_a_symlink_without_following_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let key = dir.path().join("key.pem");
        std::os::unix::fs::symlink(&victim, &key).unwrap();
        // A symlink planted where the temporary file goes is not followed either.
        std::os::unix::fs::symlink(&victim, dir.path().join(".key.pem.keel-tmp")).unwrap();
        replace_file_private(&key, b"secret").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let md = std::fs::symlink_metadata(&key).unwrap();
        assert!(md.file_type().is_file());
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&key).unwrap(), b"secret");
    }

    #[test]
    fn a_link_planted_where_the_temporary_file_goes_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let record = dir.path().join("slot-B.json");
        std::os::unix::fs::symlink(&victim, dir.path().join(".slot-B.json.keel-tmp")).unwrap();
        replace_file(&record, b"{}").unwrap();
        std::fs::remove_file(&record).unwrap();
        // (The symlink is still there: the replace neither used nor removed it.)
        std::fs::remove_file(dir.path().join(".slot-B.json.keel-tmp")).unwrap();
        std::fs::hard_link(&victim, dir.path().join(".slot-B.json.keel-tmp")).unwrap();
        replace_file(&record, b"{}").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        // A file that bears the old fixed temporary name (another input of the caller's)
        // is not removed either, and no temporary file is left.
        assert!(dir.path().join(".slot-B.json.keel-tmp").exists());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("keel-tmp."))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(std::fs::symlink_metadata(&record)
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(std::fs::read(&record).unwrap(), b"{}");
    }

    #[test]
    fn only_files_and_block_devices_have_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_device(dir.path(), false).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = open_device(Path::new("/dev/zero"), false).unwrap_err();
        assert!(e.to_string().contains("/dev/zero"), "{e}");
        assert!(File::open(dir.path()).unwrap().size().is_err());
        let p = dir.path().join("f");
        std::fs::write(&p, [1u8; 10]).unwrap();
        let (f, k) = open_device(&p, false).unwrap();
        assert_eq!((k, f.size().unwrap()), (DeviceKind::RegularFile, 10));
        assert!(require_size(&f, 11, "the slot")
            .unwrap_err()
            .to_string()
            .contains("the slot holds 10 bytes"));
        assert!(same_file(&f, &File::open(&p).unwrap()));
    }

    #[test]
    fn replace_file_leaves_no_temporary_and_refuses_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("env");
        replace_file(&p, b"one").unwrap();
        replace_file(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("x"), b"").unwrap();
        assert!(replace_file(&sub, b"x").is_err());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary left"
        );
    }
}
