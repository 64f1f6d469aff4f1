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
    kernel_device_at(root, &node, dev)
}

/// [`kernel_device`] of `node`, a path already under `root` (`dev`: how it was named).
fn kernel_device_at(root: &Path, node: &Path, dev: &Path) -> Option<KernelDevice> {
    let sys = match std::fs::metadata(node) {
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
            let name = std::fs::canonicalize(node)
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

/// What a file or device is, however named (keel-io's [`keel_io::FileId`]).
pub(crate) use keel_io::FileId as Identity;

/// The identity of `p`, if it is a regular file or a block device.
pub(crate) fn identity(p: &Path) -> Option<Identity> {
    Identity::of_path(p)
}

/// Bytes a boot-state store writes: a file or device (under the root), a range in it, and
/// the setting that names it.
#[derive(Clone, Debug)]
pub(crate) struct StoreWrite {
    pub(crate) field: &'static str,
    pub(crate) path: PathBuf,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// The boot-state store's writes must touch no slot: not a slot's partition (by the
/// kernel's description of the device), not a slot's bytes on the disk itself (the store
/// is the disk image or device, by identity, at an offset inside a slot), and not each
/// other (two copies of a redundant environment sharing bytes). A block device the
/// kernel does not describe under the root cannot be told apart from a slot: refused.
pub(crate) fn check_store_writes(
    root: &Path,
    writes: &[StoreWrite],
    disks: &[Identity],
    boot_disk: Option<&str>,
    refs: &[Resolved],
    sector_size: u64,
) -> Result<()> {
    let ids: Vec<Option<Identity>> = writes.iter().map(|w| identity(&w.path)).collect();
    for (i, a) in writes.iter().enumerate() {
        for (j, b) in writes.iter().enumerate().skip(i + 1) {
            if ids[i].is_some() && ids[i] == ids[j] && overlap((a.offset, a.len), (b.offset, b.len))
            {
                return Err(Error::StoreOverlap {
                    field: a.field.to_string(),
                    path: b.path.clone(),
                });
            }
        }
    }
    for (w, id) in writes.iter().zip(&ids) {
        // A path under /dev that is not there (yet) is still told by its name in /sys.
        let in_dev = w.path.starts_with(root.join("dev"));
        let on_disk = match id {
            Some(id) if disks.contains(id) => true,
            Some(Identity::Device(_)) | None if id.is_some() || in_dev => {
                // How the running system names it (for the /sys lookup by name).
                let named = w
                    .path
                    .strip_prefix(root)
                    .map_or_else(|_| w.path.clone(), |p| Path::new("/").join(p));
                match kernel_device_at(root, &w.path, &named) {
                    None if id.is_none() => false,
                    None => {
                        return Err(Error::UnknownDevice {
                            field: w.field.to_string(),
                            path: w.path.clone(),
                        })
                    }
                    Some(KernelDevice {
                        partition: Some((disk, number)),
                        ..
                    }) => {
                        if boot_disk.is_none_or(|d| d == disk) {
                            if let Some(r) = refs.iter().find(|r| r.partition.number == number) {
                                return Err(Error::SameDevice {
                                    first: w.field.to_string(),
                                    second: r.field.clone(),
                                    first_partition: number,
                                    second_partition: r.partition.number,
                                });
                            }
                        }
                        false
                    }
                    Some(KernelDevice { name, .. }) => boot_disk == Some(name.as_str()),
                }
            }
            _ => false,
        };
        if !on_disk {
            continue;
        }
        for r in refs {
            let p = &r.partition;
            let slot = (
                p.first_lba.saturating_mul(sector_size),
                p.sectors().saturating_mul(sector_size),
            );
            if overlap((w.offset, w.len), slot) {
                return Err(Error::StoreOnSlot {
                    field: w.field.to_string(),
                    slot: r.field.clone(),
                    offset: w.offset,
                });
            }
        }
    }
    Ok(())
}

fn read_trim(p: &PathBuf) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}
