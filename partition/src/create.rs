//! A/B disk layouts for image builders: protective MBR, GPT, an ESP, two slots and any
//! further partitions, starting and ending on 1 MiB boundaries (sizes round up).

use keel_bootflags::gpt::GptAttributes;
use keel_bootflags::SlotState;

use crate::error::{Error, LayoutProblem, Result};
use crate::gpt::{encode_entry, mirror_header, Header, Partition, HEADER_SIZE};
use crate::guid::{types, Guid};
use keel_io::{ReadAt, WriteAt};

/// Partition alignment.
pub const ALIGN: u64 = 1 << 20;
/// Entries in the arrays Keel writes (the common 16 KiB array).
pub const ENTRIES: u32 = 128;

/// A further partition after the slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraPartition {
    /// Label.
    pub label: String,
    /// Type.
    pub type_guid: Guid,
    /// Size in bytes; `None` takes the rest of the disk (last partition only).
    pub size: Option<u64>,
    /// Unique GUID; random if `None`.
    pub guid: Option<Guid>,
}

/// The partition table a device already holds, if any, in words for a person: a GPT
/// (either copy valid, with its partition count) or an MBR with partitions. An image
/// builder calls this before [`create_layout`] to refuse overwriting a disk in use.
pub fn existing_table<D: ReadAt + WriteAt>(dev: &mut D) -> Result<Option<String>> {
    if let Ok(g) = crate::disk::GptDisk::open(&mut *dev, None) {
        return Ok(Some(format!(
            "a GPT with {} partitions ({} copy valid)",
            g.partitions().len(),
            g.in_force()
        )));
    }
    let size = dev
        .size()
        .map_err(|e| Error::io("reading the disk size", e))?;
    if size < 512 {
        return Ok(None);
    }
    let mut mbr = [0u8; 512];
    dev.read_exact_at(&mut mbr, 0)
        .map_err(|e| Error::io("reading the MBR", e))?;
    if mbr[510..512] != [0x55, 0xaa] {
        return Ok(None);
    }
    // Entries at 446, 16 bytes each, the type at byte 4 of an entry; 0 is unused.
    let used = (0..4).filter(|i| mbr[446 + 16 * i + 4] != 0).count();
    Ok((used > 0).then(|| format!("an MBR with {used} partitions")))
}

/// What to lay out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// 512 or 4096.
    pub sector_size: u64,
    /// ESP size in bytes; 0 for no ESP.
    pub esp_size: u64,
    /// Each slot's size in bytes.
    pub slot_size: u64,
    /// The slots' partition type.
    pub slot_type: Guid,
    /// The slots' labels.
    pub labels: (String, String),
    /// The slots' unique GUIDs; random if `None`.
    pub slot_guids: Option<(Guid, Guid)>,
    /// The disk GUID; random if `None`.
    pub disk_guid: Option<Guid>,
    /// Partitions after the slots.
    pub extra: Vec<ExtraPartition>,
    /// Slot A's initial boot state (B starts empty: all zero).
    pub a_state: SlotState,
}

impl Layout {
    /// An ESP of 64 MiB and two `USR-A`/`USR-B` slots of the CoreOS USR type, A the good
    /// slot (priority 1, successful), as Flatcar's images start.
    pub fn flatcar(slot_size: u64) -> Layout {
        Layout {
            sector_size: 512,
            esp_size: 64 << 20,
            slot_size,
            slot_type: types::coreos_usr(),
            labels: ("USR-A".into(), "USR-B".into()),
            slot_guids: None,
            disk_guid: None,
            extra: Vec::new(),
            a_state: SlotState {
                priority: 1,
                tries: 0,
                successful: true,
            },
        }
    }
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// The protective MBR for a disk of `disk_sectors`.
pub fn protective_mbr(disk_sectors: u64, sector_size: u64) -> Vec<u8> {
    let mut m = vec![0u8; sector_size as usize];
    let e = &mut m[446..462];
    e[0] = 0x00;
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    e[4] = 0xee;
    e[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(disk_sectors - 1).unwrap_or(u32::MAX);
    e[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xaa;
    m
}

/// Write a fresh table with the layout over the whole device; returns the partitions.
pub fn create_layout<D: ReadAt + WriteAt>(dev: &mut D, layout: &Layout) -> Result<Vec<Partition>> {
    let ss = layout.sector_size;
    if ss != 512 && ss != 4096 {
        return Err(Error::SectorSize(ss));
    }
    let disk_bytes = dev
        .size()
        .map_err(|e| Error::io("reading the disk size", e))?;
    let disk_sectors = disk_bytes / ss;
    let entries_bytes = u64::from(ENTRIES) * 128;
    let entry_sectors = entries_bytes.div_ceil(ss);
    let first_usable = 2 + entry_sectors;
    let last_usable = disk_sectors
        .checked_sub(2 + entry_sectors)
        .filter(|&l| l > first_usable)
        .ok_or(Error::DiskTooSmall { bytes: disk_bytes })?;
    // (label, type, size, unique GUID, attributes) of each partition, in disk order.
    type Spec = (String, Guid, Option<u64>, Option<Guid>, u64);
    let mut specs: Vec<Spec> = Vec::new();
    if layout.esp_size > 0 {
        specs.push(("ESP".into(), types::esp(), Some(layout.esp_size), None, 0));
    }
    let (ga, gb) = match layout.slot_guids {
        Some((a, b)) => (Some(a), Some(b)),
        None => (None, None),
    };
    let a_attrs = GptAttributes(0).with_state(layout.a_state).0;
    specs.push((
        layout.labels.0.clone(),
        layout.slot_type,
        Some(layout.slot_size),
        ga,
        a_attrs,
    ));
    specs.push((
        layout.labels.1.clone(),
        layout.slot_type,
        Some(layout.slot_size),
        gb,
        0,
    ));
    for (i, x) in layout.extra.iter().enumerate() {
        if x.size.is_none() && i + 1 != layout.extra.len() {
            return Err(Error::Layout {
                label: x.label.clone(),
                problem: LayoutProblem::RestNotLast,
            });
        }
        specs.push((x.label.clone(), x.type_guid, x.size, x.guid, 0));
    }
    let align = ALIGN / ss;
    let mut next = align_up(first_usable, align);
    let mut parts = Vec::new();
    for (i, (label, type_guid, size, guid, attrs)) in specs.into_iter().enumerate() {
        let first = next;
        let last = match size {
            Some(0) => {
                return Err(Error::Layout {
                    label,
                    problem: LayoutProblem::ZeroSize,
                })
            }
            // Sizes round up to the alignment so every partition also ends on a boundary.
            Some(bytes) => first + align_up(bytes.div_ceil(ss), align) - 1,
            // The rest of the disk, ending on an alignment boundary too.
            None => ((last_usable + 1) / align * align)
                .saturating_sub(1)
                .max(first),
        };
        if last > last_usable {
            return Err(Error::Layout {
                label,
                problem: LayoutProblem::BeyondDisk {
                    last_lba: last,
                    last_usable,
                    disk_bytes,
                },
            });
        }
        parts.push(Partition {
            number: i as u32 + 1,
            type_guid,
            guid: match guid {
                Some(g) => g,
                None => Guid::random()?,
            },
            first_lba: first,
            last_lba: last,
            attributes: attrs,
            name: label,
        });
        next = align_up(last + 1, align);
    }
    let mut entries = Vec::with_capacity(entries_bytes as usize);
    for p in &parts {
        entries.extend_from_slice(&encode_entry(p, 128)?);
    }
    entries.resize(entries_bytes as usize, 0);
    let primary = Header {
        header_size: HEADER_SIZE,
        my_lba: 1,
        alternate_lba: disk_sectors - 1,
        first_usable_lba: first_usable,
        last_usable_lba: last_usable,
        disk_guid: match layout.disk_guid {
            Some(g) => g,
            None => Guid::random()?,
        },
        entries_lba: 2,
        num_entries: ENTRIES,
        entry_size: 128,
        entries_crc: crc32fast::hash(&entries),
    };
    let backup = mirror_header(&primary, ss)?;
    let w = |dev: &mut D, what: &str, bytes: &[u8], lba: u64| {
        dev.write_all_at(bytes, lba * ss)
            .map_err(|e| Error::io(format!("writing the {what}"), e))
    };
    w(
        dev,
        "backup partition entries",
        &entries,
        backup.entries_lba,
    )?;
    w(
        dev,
        "backup GPT header",
        &backup.to_sector(ss as usize),
        backup.my_lba,
    )?;
    w(dev, "partition entries", &entries, primary.entries_lba)?;
    w(dev, "GPT header", &primary.to_sector(ss as usize), 1)?;
    w(dev, "protective MBR", &protective_mbr(disk_sectors, ss), 0)?;
    dev.sync()
        .map_err(|e| Error::io("syncing the new table", e))?;
    Ok(parts)
}
