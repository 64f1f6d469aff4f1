//! A disk with a GPT: open (falling back to the backup), inspect, change attributes
//! crash-safely, repair.

use crate::error::{Error, Result};
use crate::gpt::{
    mirror_header, parse_entries, read_copy, GptCopy, Header, Partition, TableCopy, SIGNATURE,
};
use keel_io::{ReadAt, WriteAt};

/// The state of the two copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyState {
    /// Valid.
    Good,
    /// Damaged or missing, with the reason.
    Bad(String),
}

/// What [`GptDisk::open`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The primary copy.
    pub primary: CopyState,
    /// The backup copy.
    pub backup: CopyState,
    /// Both valid but describing different tables (a change cut short between the copies).
    pub diverged: bool,
}

impl Health {
    /// Both copies valid and equal.
    pub fn is_clean(&self) -> bool {
        self.primary == CopyState::Good && self.backup == CopyState::Good && !self.diverged
    }
}

/// A GPT disk.
#[derive(Debug)]
pub struct GptDisk<D> {
    dev: D,
    sector_size: u64,
    disk_sectors: u64,
    /// The copy in force: the primary if valid (as firmware reads it), else the backup.
    table: TableCopy,
    in_force: GptCopy,
    health: Health,
}

fn probe_sector_size<D: ReadAt + ?Sized>(dev: &D) -> Result<u64> {
    if let Some(s) = dev.logical_sector_size() {
        return Ok(u64::from(s));
    }
    let size = dev
        .size()
        .map_err(|e| Error::io("reading the disk size", e))?;
    for ss in [512u64, 4096] {
        let mut sig = [0u8; 8];
        if size >= 2 * ss && dev.read_exact_at(&mut sig, ss).is_ok() && sig == SIGNATURE {
            return Ok(ss);
        }
    }
    // No primary header found: look for a backup header in the last sector.
    for ss in [512u64, 4096] {
        let mut sig = [0u8; 8];
        if size >= 2 * ss
            && dev.read_exact_at(&mut sig, (size / ss - 1) * ss).is_ok()
            && sig == SIGNATURE
        {
            return Ok(ss);
        }
    }
    Ok(512)
}

fn same_table(a: &TableCopy, b: &TableCopy) -> bool {
    let norm = |h: &Header| Header {
        my_lba: 0,
        alternate_lba: 0,
        entries_lba: 0,
        ..h.clone()
    };
    a.entries == b.entries && norm(&a.header) == norm(&b.header)
}

impl<D: ReadAt + WriteAt> GptDisk<D> {
    /// Open a disk: the sector size from the kernel for a block device, else where the
    /// header is found (512 or 4096), or as given.
    pub fn open(dev: D, sector_size: Option<u64>) -> Result<Self> {
        let ss = match sector_size {
            Some(s) if s == 512 || s == 4096 => s,
            Some(s) => return Err(Error::SectorSize(s)),
            None => probe_sector_size(&dev)?,
        };
        let size = dev
            .size()
            .map_err(|e| Error::io("reading the disk size", e))?;
        let disk_sectors = size / ss;
        if disk_sectors < 6 {
            return Err(Error::DiskTooSmall { bytes: size });
        }
        let primary = read_copy(&dev, GptCopy::Primary, 1, ss, disk_sectors);
        let backup_lba = match &primary {
            Ok(p) => p.header.alternate_lba,
            Err(_) => disk_sectors - 1,
        };
        let backup = read_copy(&dev, GptCopy::Backup, backup_lba, ss, disk_sectors);
        let state = |r: &Result<TableCopy>| match r {
            Ok(_) => CopyState::Good,
            Err(e) => CopyState::Bad(e.to_string()),
        };
        let diverged = matches!((&primary, &backup), (Ok(p), Ok(b)) if !same_table(p, b));
        let health = Health {
            primary: state(&primary),
            backup: state(&backup),
            diverged,
        };
        let (table, in_force) = match (primary, backup) {
            (Ok(p), _) => (p, GptCopy::Primary),
            (Err(_), Ok(b)) => (b, GptCopy::Backup),
            (Err(p), Err(b)) => {
                return Err(Error::NoValidTable {
                    primary: Box::new(p),
                    backup: Box::new(b),
                })
            }
        };
        Ok(GptDisk {
            dev,
            sector_size: ss,
            disk_sectors,
            table,
            in_force,
            health,
        })
    }

    /// The state of both copies.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Which copy the partitions were read from.
    pub fn in_force(&self) -> GptCopy {
        self.in_force
    }

    /// Logical sector size.
    pub fn sector_size(&self) -> u64 {
        self.sector_size
    }

    /// Disk size in sectors.
    pub fn disk_sectors(&self) -> u64 {
        self.disk_sectors
    }

    /// The header in force.
    pub fn header(&self) -> &Header {
        &self.table.header
    }

    /// The used partitions, by number.
    pub fn partitions(&self) -> Vec<Partition> {
        parse_entries(
            &self.table.header,
            &self.table.entries,
            self.in_force,
            self.sector_size,
        )
        .unwrap_or_default()
    }

    /// One partition by number.
    pub fn partition(&self, number: u32) -> Option<Partition> {
        self.partitions().into_iter().find(|p| p.number == number)
    }

    /// The first partition labelled `label` (PARTLABEL).
    pub fn partition_by_label(&self, label: &str) -> Option<Partition> {
        self.partitions().into_iter().find(|p| p.name == label)
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The device, for changes outside the table.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Take the device back.
    pub fn into_device(self) -> D {
        self.dev
    }

    /// Set the attribute fields of some partitions, changing nothing else (reserved header
    /// bytes included): the copy that is not in force (the backup on a healthy disk, the
    /// primary when only the backup is valid) is written first, entries then header, and
    /// synced; then the copy in force, and synced. A power cut at any point leaves a valid
    /// table with either the old or the new attributes, also on a disk that had a damaged
    /// copy, which is rewritten from the one in force on the way.
    pub fn set_attributes(&mut self, changes: &[(u32, u64)]) -> Result<()> {
        let es = self.table.header.entry_size as usize;
        let mut entries = self.table.entries.clone();
        for &(number, attrs) in changes {
            let i = (number as usize)
                .checked_sub(1)
                .filter(|&i| i < self.table.header.num_entries as usize)
                .ok_or(Error::NoSuchPartition(number))?;
            let at = i * es + 48;
            if entries[i * es..i * es + 16] == [0u8; 16] {
                return Err(Error::PartitionUnused(number));
            }
            entries[at..at + 8].copy_from_slice(&attrs.to_le_bytes());
        }
        self.write_both(entries)
    }

    /// Rewrite both copies from the copy in force (the other copy first), after which both
    /// are valid and equal. Nothing is written when the table is already clean.
    pub fn repair(&mut self) -> Result<bool> {
        if self.health.is_clean() {
            return Ok(false);
        }
        let entries = self.table.entries.clone();
        self.write_both(entries)?;
        Ok(true)
    }

    fn write_both(&mut self, entries: Vec<u8>) -> Result<()> {
        let ss = self.sector_size;
        let crc = crc32fast::hash(&entries);
        let current = Header {
            entries_crc: crc,
            ..self.table.header.clone()
        };
        let mirrored = mirror_header(&current, ss)?;
        // The crash-safety argument needs the two copies in disjoint sectors.
        let span = |h: &Header| {
            let n = h.entries_bytes().div_ceil(ss);
            [(h.my_lba, h.my_lba + 1), (h.entries_lba, h.entries_lba + n)]
        };
        for (a0, a1) in span(&current) {
            for (b0, b1) in span(&mirrored) {
                if a0 < b1 && b0 < a1 {
                    return Err(Error::CopiesOverlap {
                        primary: (a0, a1),
                        backup: (b0, b1),
                    });
                }
            }
        }
        // Both sectors start from the one in force, so reserved bytes travel unchanged.
        let raw = &self.table.header_sector;
        let (current_sector, mirrored_sector) =
            (current.encode_over(raw), mirrored.encode_over(raw));
        let other = match self.in_force {
            GptCopy::Primary => GptCopy::Backup,
            GptCopy::Backup => GptCopy::Primary,
        };
        // The copy that is not in force goes first: until its header is durable the copy
        // in force still holds the old table, and once it is, it holds the new table by
        // itself; only then is the copy in force overwritten. Writing the copy in force
        // first would leave no valid copy if the cut came inside it.
        for (h, sector, what) in [
            (&mirrored, &mirrored_sector, other),
            (&current, &current_sector, self.in_force),
        ] {
            self.dev
                .write_all_at(&entries, h.entries_lba * ss)
                .map_err(|e| Error::io(format!("writing the {what} partition entries"), e))?;
            self.dev
                .write_all_at(sector, h.my_lba * ss)
                .map_err(|e| Error::io(format!("writing the {what} GPT header"), e))?;
            self.dev
                .sync()
                .map_err(|e| Error::io(format!("syncing the {what} GPT"), e))?;
        }
        let (header, header_sector) = match self.in_force {
            GptCopy::Primary => (current, current_sector),
            GptCopy::Backup => (mirrored, mirrored_sector),
        };
        self.table = TableCopy {
            header,
            header_sector,
            entries,
        };
        self.in_force = GptCopy::Primary;
        self.health = Health {
            primary: CopyState::Good,
            backup: CopyState::Good,
            diverged: false,
        };
        Ok(())
    }
}
