//! Where the slots are: every device reference resolved to its partition, the booted slot, the versions installed.

use keel_bootflags::Slot;
use keel_io::{ReadAt, Region, WriteAt};
use keel_partition::gpt::Partition;

use super::Agent;
use crate::booted::{clues, Clue};
use crate::error::{Error, Result};
use crate::record;
use crate::system::SlotDevice;
use keel_bootflags::BackendSpec;

impl<'d, D> Agent<'d, D>
where
    D: ReadAt,
    &'d D: WriteAt,
{
    /// The partitions of the boot class's pair, in the order of
    /// [`System::slots`](crate::System::slots), each checked against its expected type.
    /// Every device reference of the description (each slot's data and hash device, and a
    /// boot-state store on a partition) is resolved to the partition it is before anything
    /// is compared: two references to one partition, or to overlapping extents, are refused
    /// ([`Error::SameDevice`]) however they are spelled, and a device path must be a
    /// partition of this disk ([`Error::OtherDisk`]).
    pub fn partitions(&self) -> Result<[Partition; 2]> {
        self.class_partitions(0)
    }

    /// [`Agent::partitions`] of class `class` (an index into
    /// [`System::classes`](crate::System::classes)).
    pub fn class_partitions(&self, class: usize) -> Result<[Partition; 2]> {
        let refs = self.resolve()?;
        let find = |i: usize| -> Result<Partition> {
            let spec = &self.system.classes[class].slots[i];
            let p = refs[2 * class + i].partition.clone();
            if let Some(t) = spec.partition_type {
                if p.type_guid != t {
                    return Err(Error::Device {
                        slot: spec.name.clone(),
                        reason: format!(
                            "partition {} has type {}, expected {t}",
                            p.number, p.type_guid
                        ),
                    });
                }
            }
            Ok(p)
        };
        Ok([find(0)?, find(1)?])
    }

    /// Every device reference resolved and checked: the slots' data partitions (class by
    /// class, each in the order of its pair), then their hash partitions where they have
    /// them.
    pub(super) fn resolve(&self) -> Result<Vec<crate::devices::Resolved>> {
        use crate::devices::{check_distinct, check_store_writes, Resolved};
        self.check_disk_handle()?;
        let parts = self.gpt()?.partitions();
        let boot_disk = self.boot_disk_name()?;
        let mut refs = Vec::new();
        let specs = || self.system.classes.iter().flat_map(|c| c.slots.iter());
        for spec in specs() {
            let field = format!("slot {} ({}).device", spec.slot, spec.name);
            let partition = self.find_partition(&parts, &field, &spec.device, &boot_disk)?;
            refs.push(Resolved { field, partition });
        }
        for spec in specs() {
            if let Some(dev) = &spec.hash_device {
                let field = format!("slot {} ({}).hash-device", spec.slot, spec.name);
                let partition = self.find_partition(&parts, &field, dev, &boot_disk)?;
                refs.push(Resolved { field, partition });
            }
        }
        check_distinct(&refs)?;
        let disk = boot_disk.as_ref().ok().map(String::as_str);
        let sector_size = self.gpt()?.sector_size();
        check_store_writes(
            &self.root,
            &self.store_writes()?,
            &self.disk_identities(),
            disk,
            &refs,
            sector_size,
        )?;
        Ok(refs)
    }

    /// What the boot backend writes, with the setting that names it.
    pub(super) fn store_writes(&self) -> Result<Vec<crate::devices::StoreWrite>> {
        let field = match &self.system.backend {
            BackendSpec::GrubEnv(_) => "boot.grubenv",
            BackendSpec::Uboot { .. } => "boot.env-file",
            BackendSpec::FwEnv(_) => "boot.fw-env-config",
            BackendSpec::AndroidMisc(_) => "boot.misc-device",
            _ => "boot",
        };
        Ok(self
            .system
            .backend
            .writes(&self.root)?
            .into_iter()
            .map(|(path, offset, len)| crate::devices::StoreWrite {
                field,
                path,
                offset,
                len,
            })
            .collect())
    }

    /// The handle the agent writes is the disk the description names, compared by
    /// identity: `boot.disk` (which a disk path given to the agent cannot override) and the
    /// path given, else the disk the kernel booted from. A handle that is not a file
    /// (memory in a test) is taken as given; so is a name with no file here.
    fn check_disk_handle(&self) -> Result<()> {
        let Some(given) = self.disk.file_id() else {
            return Ok(());
        };
        let mut named: Vec<(&'static str, std::path::PathBuf)> = Vec::new();
        if let Some(p) = &self.system.disk {
            named.push(("boot.disk", p.clone()));
        }
        if let Some(p) = &self.disk_path {
            named.push(("the disk path given to the agent", p.clone()));
        }
        if named.is_empty() {
            if let Ok(p) = crate::booted::boot_disk(&self.root) {
                named.push(("the disk the kernel booted from", p));
            }
        }
        for (field, path) in named {
            let ids = self.identities_of(&path);
            if !ids.is_empty() && !ids.contains(&given) {
                return Err(Error::WrongDisk { field, path });
            }
        }
        Ok(())
    }

    /// What `path` is, as opened and under the root directory.
    fn identities_of(&self, path: &std::path::Path) -> Vec<crate::devices::Identity> {
        [
            path.to_path_buf(),
            keel_bootflags::spec::under_root(&self.root, path),
        ]
        .iter()
        .filter_map(|p| crate::devices::identity(p))
        .collect()
    }

    /// Every identity the disk holding the slots may have: the path given with
    /// [`Agent::disk_path`] and `boot.disk` (as opened, and under the root), and the disk
    /// the kernel booted from.
    pub(super) fn disk_identities(&self) -> Vec<crate::devices::Identity> {
        let mut ids: Vec<_> = self
            .disk_path
            .iter()
            .chain(self.system.disk.iter())
            .flat_map(|p| self.identities_of(p))
            .collect();
        if let Ok(p) = crate::booted::boot_disk(&self.root) {
            ids.extend(crate::devices::identity(&p));
        }
        ids
    }

    /// The kernel name of the disk holding the slots: the disk given with
    /// [`Agent::disk_path`], else `boot.disk`, else the disk the kernel booted from.
    /// `Err(how it was given)` when it is not a block device the kernel knows (an image
    /// file): then no device path can name a partition of it.
    pub(super) fn boot_disk_name(&self) -> Result<std::result::Result<String, String>> {
        match self.disk_path.as_ref().or(self.system.disk.as_ref()) {
            Some(p) => Ok(crate::devices::disk_name(&self.root, p)
                .ok_or_else(|| format!("{} (not a block device)", p.display()))),
            None => Ok(crate::booted::boot_disk(&self.root)
                .ok()
                .and_then(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
                .ok_or_else(|| "the disk the kernel booted from (not found)".to_string())),
        }
    }

    /// The partition of the boot disk `device` names (for the setting `field`).
    pub(super) fn find_partition(
        &self,
        parts: &[Partition],
        field: &str,
        device: &SlotDevice,
        boot_disk: &std::result::Result<String, String>,
    ) -> Result<Partition> {
        let number = match device {
            SlotDevice::Path(dev) => {
                let found = crate::devices::kernel_device(&self.root, dev);
                let other = |found: String| Error::OtherDisk {
                    field: field.to_string(),
                    device: dev.clone(),
                    found,
                    boot_disk: match boot_disk {
                        Ok(d) | Err(d) => d.clone(),
                    },
                };
                match (found, boot_disk) {
                    (Some(kd), Ok(disk)) => match kd.partition {
                        Some((d, n)) if &d == disk => Some(n),
                        Some((d, n)) => return Err(other(format!("partition {n} of {d}"))),
                        None => return Err(other(format!("{}, a whole disk", kd.name))),
                    },
                    (Some(kd), Err(_)) => {
                        return Err(other(match kd.partition {
                            Some((d, n)) => format!("partition {n} of {d}"),
                            None => kd.name,
                        }))
                    }
                    (None, _) => return Err(other("not a block device the kernel knows".into())),
                }
            }
            _ => None,
        };
        let hit = parts.iter().find(|p| match device {
            SlotDevice::PartLabel(l) => &p.name == l,
            SlotDevice::PartUuid(g) => p.guid == *g,
            SlotDevice::Path(_) => number == Some(p.number),
        });
        hit.cloned().ok_or_else(|| Error::Device {
            slot: field.to_string(),
            reason: format!("{device:?} is not a partition of the boot disk"),
        })
    }

    /// `slot`'s partition of class `class`.
    pub(super) fn partition_in(&self, class: usize, slot: Slot) -> Result<Partition> {
        let parts = self.class_partitions(class)?;
        let i = usize::from(self.system.classes[class].slots[1].slot == slot);
        Ok(parts[i].clone())
    }

    /// `slot`'s partition of class `class` as a device of its own.
    pub(super) fn region_in(&self, class: usize, slot: Slot) -> Result<Region<&'d D>> {
        let p = self.partition_in(class, slot)?;
        let ss = self.gpt()?.sector_size();
        Region::new(self.disk, p.first_lba * ss, p.sectors() * ss)
            .map_err(|e| Error::io("the slot's region", e))
    }

    /// The class with the dm-verity tree, else the boot class.
    pub(super) fn data_class(&self) -> usize {
        self.system.verity_class().unwrap_or(0)
    }

    /// How the kernel names the slot's partition of the class with the dm-verity tree
    /// (the device its table maps).
    pub(super) fn kernel_device(&self, slot: Slot) -> Result<String> {
        Ok(format!(
            "PARTUUID={}",
            self.partition_in(self.data_class(), slot)?.guid
        ))
    }

    /// The slot the running system booted from: as set with [`Agent::booted`], else
    /// from the kernel command line and /sys under the root directory.
    pub fn booted_slot(&self) -> Result<Slot> {
        if let Some(s) = self.booted {
            return Ok(s);
        }
        let found = clues(&self.root)?;
        if found.is_empty() {
            return Err(Error::BootedSlot(
                "the kernel command line names no root, usr or verity root hash".into(),
            ));
        }
        let boot_disk = self.boot_disk_name()?;
        let mut hits = Vec::new();
        // A clue may name any class's partition (ChromeOS's `root=` names the root, not
        // the kernel partition that holds the boot state).
        let mut pairs = Vec::new();
        for (k, class) in self.system.classes.iter().enumerate() {
            let parts = self.class_partitions(k)?;
            pairs.extend(class.slots.iter().zip(parts));
        }
        for (spec, p) in &pairs {
            let rec = record::read(&self.state_dir, spec.slot)?;
            let hash = rec
                .and_then(|r| r.root_hash)
                .and_then(|h| hex::decode(h).ok());
            let matches = found.iter().any(|c| match c {
                Clue::PartUuid(g) => p.guid == *g,
                Clue::PartLabel(l) => &p.name == l,
                Clue::Partition { disk, number } => {
                    p.number == *number
                        && match (disk, &boot_disk) {
                            (Some(d), Ok(b)) => d == b,
                            // A partition of a disk the kernel names is not one of an
                            // image file's: the same number proves nothing.
                            (Some(_), Err(_)) => false,
                            (None, _) => true,
                        }
                }
                Clue::RootHash(h) => hash.as_deref() == Some(h.as_slice()),
            });
            if matches && !hits.contains(&spec.slot) {
                hits.push(spec.slot);
            }
        }
        match hits[..] {
            [s] => Ok(s),
            [] => Err(Error::BootedSlot(format!(
                "the kernel command line points at neither slot ({found:?})"
            ))),
            _ => Err(Error::BootedSlot(format!(
                "the kernel command line points at both slots ({found:?})"
            ))),
        }
    }

    /// The version in `slot`: its record, or for the booted slot the running system's
    /// `VERSION_ID` (a slot written by the image builder has no record).
    pub(super) fn installed_version(&self, slot: Slot, booted: bool) -> Result<Option<String>> {
        if let Some(r) = record::read(&self.state_dir, slot)? {
            return Ok(Some(r.version));
        }
        if !booted {
            return Ok(None);
        }
        let os = record::read_small(&self.root.join("etc/os-release"))?;
        Ok(os.and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VERSION_ID="))
                .map(|v| v.trim_matches('"').to_string())
        }))
    }
}
