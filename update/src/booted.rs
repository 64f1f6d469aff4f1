//! Which slot the running system booted from, told by what the kernel was given (the
//! command line) and what /sys says about the devices, read under a root directory so
//! tests can point it at a fake /proc and /sys.

use std::path::{Path, PathBuf};

use keel_partition::Guid;

use crate::error::{Error, Result};

/// One thing the kernel command line says about the booted root (or `/usr`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Clue {
    /// The partition with this unique GUID.
    PartUuid(Guid),
    /// The partition with this label.
    PartLabel(String),
    /// A partition as /sys knows it: its number, and the kernel name of its disk where
    /// /sys says (a partition of another disk is not a slot).
    Partition {
        /// The disk's kernel name (`vda`), if /sys shows the partition's parent.
        disk: Option<String>,
        /// The partition number.
        number: u32,
    },
    /// A dm-verity root hash (`roothash=`, `usrhash=`, `verity.usrhash=`, a table's root).
    RootHash(Vec<u8>),
}

/// The kernel command line under `root`: a regular file of at most 64 KiB (the largest
/// any architecture allows), never a FIFO's wait or /dev/zero's endless read.
fn cmdline(root: &Path) -> Result<String> {
    let path = root.join("proc/cmdline");
    let bytes = keel_io::read_bounded(&path, 64 << 10)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Every clue in `root`/proc/cmdline, in order.
pub fn clues(root: &Path) -> Result<Vec<Clue>> {
    let text = cmdline(root)?;
    let mut out = Vec::new();
    for arg in split_cmdline(&text) {
        let Some((key, value)) = arg.split_once('=') else {
            continue;
        };
        match key {
            "root"
            | "usr"
            | "mount.usr"
            | "systemd.verity_root_data"
            | "systemd.verity_usr_data" => {
                out.extend(device_clue(root, value));
            }
            "roothash" | "usrhash" | "verity.usrhash" | "systemd.verity_root_hash" => {
                if let Ok(h) = hex::decode(value) {
                    out.push(Clue::RootHash(h));
                }
            }
            "dm-mod.create" => out.extend(dm_mod_create_clues(root, value)),
            _ => {}
        }
    }
    Ok(out)
}

/// The disk the running system booted from, as a path under `root`: the whole-disk
/// device of the partition the kernel command line names for `/` or `/usr`, found through
/// `/dev/disk/by-partuuid`, `/dev/disk/by-partlabel`, device-mapper slaves and /sys. For
/// descriptions without `boot.disk`.
pub fn boot_disk(root: &Path) -> Result<PathBuf> {
    let text = cmdline(root)?;
    let mut devices = Vec::new();
    for arg in split_cmdline(&text) {
        match arg.split_once('=') {
            Some(("root" | "usr" | "mount.usr", v)) => devices.push(v.to_string()),
            Some(("dm-mod.create", v)) => devices.extend(
                v.split(';')
                    .filter_map(|d| d.splitn(5, ',').nth(4))
                    .flat_map(|t| t.split(','))
                    .filter_map(|t| {
                        let w: Vec<&str> = t.split_whitespace().collect();
                        (w.get(2) == Some(&"verity")).then(|| w.get(4).map(|d| d.to_string()))?
                    }),
            ),
            _ => {}
        }
    }
    for dev in &devices {
        for part in partition_names(root, dev) {
            if let Some(disk) = disk_of(root, &part) {
                return Ok(root.join("dev").join(disk));
            }
        }
    }
    Err(Error::BootedSlot(format!(
        "no partition of a disk behind {devices:?} (set boot.disk)"
    )))
}

/// The kernel names (`vda3`) of the partitions behind a device named on the command line.
fn partition_names(root: &Path, dev: &str) -> Vec<String> {
    let link = |dir: &str, name: &str| {
        std::fs::read_link(root.join("dev/disk").join(dir).join(name))
            .ok()
            .and_then(|t| t.file_name().and_then(|n| n.to_str()).map(str::to_string))
    };
    if let Some(u) = dev.strip_prefix("PARTUUID=") {
        return link("by-partuuid", &u.to_ascii_lowercase())
            .into_iter()
            .collect();
    }
    if let Some(l) = dev.strip_prefix("PARTLABEL=") {
        return link("by-partlabel", l).into_iter().collect();
    }
    let dm = |which: &dyn Fn(&Path) -> bool| -> Vec<String> {
        let Ok(list) = std::fs::read_dir(root.join("sys/block")) else {
            return Vec::new();
        };
        let mut out: Vec<String> = list
            .flatten()
            .map(|e| e.path())
            .filter(|d| which(d))
            .filter_map(|d| std::fs::read_dir(d.join("slaves")).ok())
            .flat_map(|l| l.flatten().filter_map(|e| e.file_name().into_string().ok()))
            .collect();
        out.sort();
        out
    };
    if let Some(name) = dev.strip_prefix("/dev/mapper/") {
        return dm(&|d| read_trim(&d.join("dm/name")).as_deref() == Some(name));
    }
    if let Some(name) = dev.strip_prefix("/dev/").filter(|n| n.starts_with("dm-")) {
        return dm(&|d| d.file_name().and_then(|f| f.to_str()) == Some(name));
    }
    if let Some(rest) = dev.strip_prefix("/dev/disk/by-partuuid/") {
        return link("by-partuuid", rest).into_iter().collect();
    }
    if let Some(rest) = dev.strip_prefix("/dev/disk/by-partlabel/") {
        return link("by-partlabel", rest).into_iter().collect();
    }
    dev.strip_prefix("/dev/")
        .map(str::to_string)
        .into_iter()
        .collect()
}

/// The disk holding partition `part`: the parent of its /sys directory, when that is a
/// block device itself (it has a `dev` file).
fn disk_of(root: &Path, part: &str) -> Option<String> {
    let dir = std::fs::canonicalize(root.join("sys/class/block").join(part)).ok()?;
    dir.join("partition").exists().then_some(())?;
    let parent = dir.parent()?;
    parent.join("dev").exists().then_some(())?;
    parent.file_name()?.to_str().map(str::to_string)
}

use keel_bootflags::spec::split_cmdline;

/// What a device named on the command line is.
fn device_clue(root: &Path, dev: &str) -> Vec<Clue> {
    if let Some(u) = dev
        .strip_prefix("PARTUUID=")
        .or_else(|| dev.strip_prefix("/dev/disk/by-partuuid/"))
    {
        return u.parse().map(Clue::PartUuid).into_iter().collect();
    }
    if let Some(l) = dev
        .strip_prefix("PARTLABEL=")
        .or_else(|| dev.strip_prefix("/dev/disk/by-partlabel/"))
    {
        return vec![Clue::PartLabel(l.to_string())];
    }
    if let Some((major, minor)) = dev.split_once(':').filter(|(a, b)| {
        !a.is_empty() && !b.is_empty() && (a.bytes().chain(b.bytes())).all(|c| c.is_ascii_digit())
    }) {
        return sys_partition(&root.join(format!("sys/dev/block/{major}:{minor}")));
    }
    if let Some(name) = dev.strip_prefix("/dev/mapper/") {
        return mapped(root, |dm| {
            read_trim(&dm.join("dm/name")).as_deref() == Some(name)
        });
    }
    if let Some(name) = dev.strip_prefix("/dev/").filter(|n| n.starts_with("dm-")) {
        return mapped(root, |dm| {
            dm.file_name().and_then(|f| f.to_str()) == Some(name)
        });
    }
    if let Some(name) = dev.strip_prefix("/dev/") {
        return sys_partition(&root.join("sys/class/block").join(name));
    }
    Vec::new()
}

/// The partition number /sys gives a block device, with its disk.
fn sys_partition(dir: &Path) -> Vec<Clue> {
    let disk = std::fs::canonicalize(dir).ok().and_then(|d| {
        let parent = d.parent()?;
        parent.join("dev").exists().then_some(())?;
        parent.file_name()?.to_str().map(str::to_string)
    });
    read_trim(&dir.join("partition"))
        .and_then(|n| n.parse().ok())
        .map(|number| Clue::Partition { disk, number })
        .into_iter()
        .collect()
}

/// The partitions under the device-mapper devices `which` picks (their `slaves`).
fn mapped(root: &Path, which: impl Fn(&Path) -> bool) -> Vec<Clue> {
    let mut out = Vec::new();
    let Ok(list) = std::fs::read_dir(root.join("sys/block")) else {
        return out;
    };
    let mut dms: Vec<PathBuf> = list.flatten().map(|e| e.path()).collect();
    dms.sort();
    for dm in dms.iter().filter(|d| which(d)) {
        let Ok(slaves) = std::fs::read_dir(dm.join("slaves")) else {
            continue;
        };
        let mut names: Vec<_> = slaves.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for s in names {
            out.extend(sys_partition(&root.join("sys/class/block").join(s)));
        }
    }
    out
}

/// `dm-mod.create="name,uuid,minor,flags,table[,table...][;device...]"`: for each verity
/// table, its data device and root hash.
fn dm_mod_create_clues(root: &Path, value: &str) -> Vec<Clue> {
    let mut out = Vec::new();
    for device in value.split(';') {
        // The first four fields are name, uuid, minor and flags; tables follow.
        for table in device.splitn(5, ',').nth(4).unwrap_or("").split(',') {
            let words: Vec<&str> = table.split_whitespace().collect();
            // start length verity version data hash dbs hbs blocks hash_start alg root salt
            if words.get(2) == Some(&"verity") && words.len() >= 13 {
                out.extend(device_clue(root, words[4]));
                if let Ok(h) = hex::decode(words[11]) {
                    out.push(Clue::RootHash(h));
                }
            }
        }
    }
    out
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}
