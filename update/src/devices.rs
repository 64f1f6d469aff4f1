//! Device references resolved to what they are before any comparison: a partition of the
//! boot disk (its number and extents), found by label, unique GUID or kernel device. Two
//! spellings of one partition (`PARTUUID=` of A's partition and `PARTLABEL=USR-A`, a path
//! through a symlink) resolve to the same identity, so the checks that keep an install off
//! the running slot cannot be fooled by how the description spells a device.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use keel_partition::gpt::Partition;

use crate::error::{Error, Result};

/// A block device as the kernel knows it: its name in /sys/class/block and, for a
/// partition, the disk holding it and its number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KernelDevice {
    /// The kernel's name (`sda4`, `vda`).
    pub(crate) name: String,
    /// For a partition: the disk's kernel name and the partition number.
    pub(crate) partition: Option<(String, u32)>,
}

/// What the kernel says `dev` (an absolute path on the running system, read under `root`)
/// is: by its device number when the path is a block device node (whatever the path's
/// spelling or symlinks), else by the name the path resolves to in /sys/class/block.
/// `None` when /sys knows no such device.
pub(crate) fn kernel_device(root: &Path, dev: &Path) -> Option<KernelDevice> {
    let node = root.join(dev.strip_prefix("/").unwrap_or(dev));
    let sys = match std::fs::metadata(&node) {
        Ok(md) if md.file_type().is_block_device() => {
            let rdev = md.rdev();
            // glibc's gnu_dev_major/minor: 12 bits of major and 20 of minor, split.
            let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
            let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
            std::fs::canonicalize(root.join(format!("sys/dev/block/{major}:{minor}"))).ok()?
        }
        // A regular file (an environment file, an image) is no kernel device.
        Ok(md) if md.is_file() => return None,
        _ => {
            // Only a /dev path is a kernel name (a fake /dev in tests has no nodes).
            if !dev.starts_with("/dev") {
                return None;
            }
            // A symlink (/dev/disk/by-partlabel/X, /dev/block/by-name/X) names its target.
            let name = std::fs::canonicalize(&node)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_os_string()))
                .or_else(|| dev.file_name().map(|n| n.to_os_string()))?;
            std::fs::canonicalize(root.join("sys/class/block").join(name)).ok()?
        }
    };
    let name = sys.file_name()?.to_str()?.to_string();
    let partition = read_trim(&sys.join("partition"))
        .and_then(|n| n.parse::<u32>().ok())
        .and_then(|n| {
            let parent = sys.parent()?;
            parent.join("dev").exists().then_some(())?;
            Some((parent.file_name()?.to_str()?.to_string(), n))
        });
    Some(KernelDevice { name, partition })
}

/// The kernel name of the disk at `path` (read under `root`), when it is a block device;
/// `None` for an image file.
pub(crate) fn disk_name(root: &Path, path: &Path) -> Option<String> {
    let node = root.join(path.strip_prefix("/").unwrap_or(path));
    let md = std::fs::metadata(node).ok()?;
    if !md.file_type().is_block_device() {
        return None;
    }
    kernel_device(root, path)
        .filter(|d| d.partition.is_none())
        .map(|d| d.name)
}

/// One device reference of the description, resolved: the setting that named it and the
/// partition it is.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    /// The setting, as `slot[1].hash-device`.
    pub(crate) field: String,
    /// The partition.
    pub(crate) partition: Partition,
}

impl Resolved {
    fn overlaps(&self, other: &Resolved) -> bool {
        let (a, b) = (&self.partition, &other.partition);
        a.number == b.number || (a.first_lba <= b.last_lba && b.first_lba <= a.last_lba)
    }
}

/// Refuse any two references (data, tree, parity) that are one partition or whose extents
/// overlap: an install into one slot would write the other, which may be the running one.
pub(crate) fn check_distinct(refs: &[Resolved]) -> Result<()> {
    for (i, a) in refs.iter().enumerate() {
        for b in &refs[i + 1..] {
            if a.overlaps(b) {
                return Err(Error::SameDevice {
                    first: a.field.clone(),
                    second: b.field.clone(),
                    first_partition: a.partition.number,
                    second_partition: b.partition.number,
                });
            }
        }
    }
    Ok(())
}

/// A file the boot backend writes (an environment, a misc partition) must not be a
/// partition the slots use: resolved through the kernel when it is a device of the boot
/// disk.
pub(crate) fn check_backend_path(
    root: &Path,
    field: &str,
    path: &Path,
    boot_disk: Option<&str>,
    refs: &[Resolved],
) -> Result<()> {
    let Some(KernelDevice {
        partition: Some((disk, number)),
        ..
    }) = kernel_device(root, path)
    else {
        return Ok(());
    };
    if boot_disk.is_some_and(|d| d != disk) {
        return Ok(());
    }
    if let Some(r) = refs.iter().find(|r| r.partition.number == number) {
        return Err(Error::SameDevice {
            first: field.to_string(),
            second: r.field.clone(),
            first_partition: number,
            second_partition: r.partition.number,
        });
    }
    Ok(())
}

fn read_trim(p: &PathBuf) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}
