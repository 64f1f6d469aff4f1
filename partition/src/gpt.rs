//! The GUID Partition Table: both copies read and checked, the backup used when the
//! primary is damaged, and attribute changes written crash-safely.
//!
//! Header (UEFI 2.10 §5.3.2), little-endian, at LBA 1 (primary) and the last LBA (backup):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | signature `"EFI PART"` |
//! | 8 | 4 | revision 0x00010000 |
//! | 12 | 4 | header size (92 to the sector size) |
//! | 16 | 4 | CRC-32 of the header (this field zero) |
//! | 20 | 4 | reserved, zero |
//! | 24 | 8 | this header's LBA |
//! | 32 | 8 | the other header's LBA |
//! | 40 | 8 | first usable LBA |
//! | 48 | 8 | last usable LBA |
//! | 56 | 16 | disk GUID |
//! | 72 | 8 | LBA of the entry array |
//! | 80 | 4 | number of entries |
//! | 84 | 4 | entry size (128 x 2^n) |
//! | 88 | 4 | CRC-32 of the entry array |
//!
//! Entry: type GUID (0), unique GUID (16), first LBA (32), last LBA (40), attributes (48),
//! name UTF-16LE (56, 72 bytes). Partition numbers are entry positions + 1 and are never
//! changed.

use crate::error::{Error, Result};
use crate::guid::Guid;
use keel_io::{Cursor, CursorError, ReadAt};

/// The header signature.
pub const SIGNATURE: [u8; 8] = *b"EFI PART";
/// The only revision.
pub const REVISION: u32 = 0x0001_0000;
/// Size of the header fields.
pub const HEADER_SIZE: u32 = 92;
/// The largest entry array Keel reads (real ones are 16 KiB).
pub const MAX_ENTRY_ARRAY: u64 = 1 << 20;

/// Which copy of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptCopy {
    /// At LBA 1.
    Primary,
    /// At the last LBA.
    Backup,
}

impl std::fmt::Display for GptCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GptCopy::Primary => "primary",
            GptCopy::Backup => "backup",
        })
    }
}

/// A GPT header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header size (92 normally).
    pub header_size: u32,
    /// LBA of this header.
    pub my_lba: u64,
    /// LBA of the other header.
    pub alternate_lba: u64,
    /// First LBA partitions may use.
    pub first_usable_lba: u64,
    /// Last LBA partitions may use.
    pub last_usable_lba: u64,
    /// Disk GUID.
    pub disk_guid: Guid,
    /// LBA of this copy's entry array.
    pub entries_lba: u64,
    /// Number of entries.
    pub num_entries: u32,
    /// Bytes per entry.
    pub entry_size: u32,
    /// CRC-32 of the entry array.
    pub entries_crc: u32,
}

impl Header {
    /// Size in bytes of the entry array.
    pub fn entries_bytes(&self) -> u64 {
        u64::from(self.num_entries) * u64::from(self.entry_size)
    }

    /// Encode into one new sector (reserved bytes zero).
    pub fn to_sector(&self, sector_size: usize) -> Vec<u8> {
        self.encode_over(&vec![0u8; sector_size])
    }

    /// Encode over a header sector as read from the disk: the fields are replaced, while
    /// the reserved bytes (20..24) and whatever follows byte 92 stay as they were (a
    /// header larger than 92 bytes covers them with its CRC, so they travel with it).
    pub fn encode_over(&self, sector: &[u8]) -> Vec<u8> {
        let mut b = sector.to_vec();
        b[0..8].copy_from_slice(&SIGNATURE);
        b[8..12].copy_from_slice(&REVISION.to_le_bytes());
        b[12..16].copy_from_slice(&self.header_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.my_lba.to_le_bytes());
        b[32..40].copy_from_slice(&self.alternate_lba.to_le_bytes());
        b[40..48].copy_from_slice(&self.first_usable_lba.to_le_bytes());
        b[48..56].copy_from_slice(&self.last_usable_lba.to_le_bytes());
        b[56..72].copy_from_slice(&self.disk_guid.0);
        b[72..80].copy_from_slice(&self.entries_lba.to_le_bytes());
        b[80..84].copy_from_slice(&self.num_entries.to_le_bytes());
        b[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
        b[88..92].copy_from_slice(&self.entries_crc.to_le_bytes());
        b[16..20].fill(0);
        let end = (self.header_size as usize).clamp(HEADER_SIZE as usize, b.len());
        let crc = crc32fast::hash(&b[..end]);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and check a header sector read from `lba` of a disk of `disk_sectors`.
    pub fn parse(b: &[u8], copy: GptCopy, lba: u64, disk_sectors: u64) -> Result<Header> {
        let ss = b.len() as u64;
        let base = lba * ss;
        let what = format!("{copy} GPT header");
        let bad = |field: &'static str, at: u64, reason: String| Error::BadField {
            what: what.clone(),
            field,
            offset: base + at,
            reason,
        };
        if b.len() < 512 {
            return Err(bad(
                "sector",
                0,
                format!("{} bytes, at least 512 needed", b.len()),
            ));
        }
        // Front to back in layout order; the sector holds at least 512 bytes, so a short
        // read cannot happen (and would be reported like any bad field).
        let mut c = Cursor::new(b, 0);
        let short = |e: CursorError| bad(e.field, e.offset, e.to_string());
        let sig = c.take(8, "signature").map_err(short)?;
        if sig != SIGNATURE {
            return Err(bad(
                "signature",
                0,
                format!(
                    "expected \"EFI PART\", found {:?}",
                    String::from_utf8_lossy(sig)
                ),
            ));
        }
        let rev = c.u32("revision").map_err(short)?;
        if rev != REVISION {
            return Err(bad(
                "revision",
                8,
                format!("expected {REVISION:#010x}, found {rev:#010x}"),
            ));
        }
        let hs = c.u32("header size").map_err(short)?;
        if hs < HEADER_SIZE || u64::from(hs) > ss {
            return Err(bad(
                "header size",
                12,
                format!("{hs}: expected 92 to the sector size {ss}"),
            ));
        }
        let stored = c.u32("header CRC").map_err(short)?;
        let mut copy_b = b[..hs as usize].to_vec();
        copy_b[16..20].fill(0);
        let computed = crc32fast::hash(&copy_b);
        if stored != computed {
            return Err(bad(
                "header CRC",
                16,
                format!("stored {stored:#010x}, computed {computed:#010x}"),
            ));
        }
        c.skip(4, "reserved").map_err(short)?;
        let h = Header {
            header_size: hs,
            my_lba: c.u64("my LBA").map_err(short)?,
            alternate_lba: c.u64("alternate LBA").map_err(short)?,
            first_usable_lba: c.u64("first usable LBA").map_err(short)?,
            last_usable_lba: c.u64("last usable LBA").map_err(short)?,
            disk_guid: Guid(c.array("disk GUID").map_err(short)?),
            entries_lba: c.u64("entries LBA").map_err(short)?,
            num_entries: c.u32("number of entries").map_err(short)?,
            entry_size: c.u32("entry size").map_err(short)?,
            entries_crc: c.u32("entries CRC").map_err(short)?,
        };
        if h.my_lba != lba {
            return Err(bad(
                "my LBA",
                24,
                format!("expected {lba}, found {}", h.my_lba),
            ));
        }
        // A backup names the primary's place; a mirror of it written anywhere but LBA 1
        // would not be found by anything that reads GPTs.
        if copy == GptCopy::Backup && h.alternate_lba != 1 {
            return Err(bad(
                "alternate LBA",
                32,
                format!(
                    "a backup header must point at LBA 1, found {}",
                    h.alternate_lba
                ),
            ));
        }
        if h.alternate_lba >= disk_sectors || h.alternate_lba == lba {
            return Err(bad(
                "alternate LBA",
                32,
                format!(
                    "{} is beyond the disk ({disk_sectors} sectors) or this header",
                    h.alternate_lba
                ),
            ));
        }
        if h.entry_size < 128
            || !(h.entry_size / 128).is_power_of_two()
            || !h.entry_size.is_multiple_of(128)
        {
            return Err(bad(
                "entry size",
                84,
                format!("{}: expected 128 x 2^n", h.entry_size),
            ));
        }
        if h.num_entries == 0 || h.entries_bytes() > MAX_ENTRY_ARRAY {
            return Err(bad(
                "number of entries",
                80,
                format!(
                    "{} entries of {} bytes: expected 1 to {MAX_ENTRY_ARRAY} bytes",
                    h.num_entries, h.entry_size
                ),
            ));
        }
        if h.first_usable_lba > h.last_usable_lba || h.last_usable_lba >= disk_sectors {
            return Err(bad(
                "usable LBAs",
                40,
                format!(
                    "{}..={} is empty or beyond the disk ({disk_sectors} sectors)",
                    h.first_usable_lba, h.last_usable_lba
                ),
            ));
        }
        let entry_sectors = h.entries_bytes().div_ceil(ss);
        let entries_end = h.entries_lba.saturating_add(entry_sectors);
        let overlaps_usable =
            h.entries_lba <= h.last_usable_lba && entries_end > h.first_usable_lba;
        if h.entries_lba < 2
            || entries_end > disk_sectors
            || overlaps_usable
            || (h.entries_lba..entries_end).contains(&lba)
        {
            return Err(bad(
                "entries LBA",
                72,
                format!("entry array at LBA {}..{entries_end} overlaps a header, the usable area or the disk end", h.entries_lba),
            ));
        }
        Ok(h)
    }
}

/// A used partition entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Partition number: entry position + 1.
    pub number: u32,
    /// Type GUID.
    pub type_guid: Guid,
    /// Unique partition GUID (PARTUUID).
    pub guid: Guid,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
    /// Attribute field.
    pub attributes: u64,
    /// Name (PARTLABEL).
    pub name: String,
}

impl Partition {
    /// Size in sectors.
    pub fn sectors(&self) -> u64 {
        self.last_lba - self.first_lba + 1
    }
}

/// Decode the used entries of an entry array, checking ranges and overlaps.
pub fn parse_entries(
    header: &Header,
    array: &[u8],
    copy: GptCopy,
    sector_size: u64,
) -> Result<Vec<Partition>> {
    let es = header.entry_size as usize;
    let base = header.entries_lba * sector_size;
    let mut parts: Vec<Partition> = Vec::new();
    for (i, e) in array.chunks_exact(es).enumerate() {
        let number = i as u32 + 1;
        let at = base + (i * es) as u64;
        let bad = |field: &'static str, off: u64, reason: String| Error::BadField {
            what: format!("{copy} partition entry {number}"),
            field,
            offset: at + off,
            reason,
        };
        // In layout order; an entry is at least 128 bytes (checked with the header).
        let mut c = Cursor::new(e, 0);
        let short = |e: CursorError| bad(e.field, e.offset, e.to_string());
        let type_guid = Guid(c.array("type GUID").map_err(short)?);
        if type_guid.is_nil() {
            continue;
        }
        let guid = Guid(c.array("partition GUID").map_err(short)?);
        let first = c.u64("first LBA").map_err(short)?;
        let last = c.u64("last LBA").map_err(short)?;
        let attributes = c.u64("attributes").map_err(short)?;
        let name_field = c.take(72, "name").map_err(short)?;
        if first > last || first < header.first_usable_lba || last > header.last_usable_lba {
            return Err(bad(
                "LBA range",
                32,
                format!(
                    "{first}..={last} outside the usable area {}..={}",
                    header.first_usable_lba, header.last_usable_lba
                ),
            ));
        }
        if let Some(o) = parts
            .iter()
            .find(|p| first <= p.last_lba && p.first_lba <= last)
        {
            return Err(bad(
                "LBA range",
                32,
                format!(
                    "{first}..={last} overlaps partition {} ({}..={})",
                    o.number, o.first_lba, o.last_lba
                ),
            ));
        }
        let units: Vec<u16> = name_field
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let name = String::from_utf16(&units)
            .map_err(|_| bad("name", 56, "not valid UTF-16".to_string()))?;
        parts.push(Partition {
            number,
            type_guid,
            guid,
            first_lba: first,
            last_lba: last,
            attributes,
            name,
        });
    }
    Ok(parts)
}

/// Encode one 128-byte entry.
pub fn encode_entry(p: &Partition, entry_size: usize) -> Result<Vec<u8>> {
    let mut e = vec![0u8; entry_size];
    e[0..16].copy_from_slice(&p.type_guid.0);
    e[16..32].copy_from_slice(&p.guid.0);
    e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
    e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
    e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
    let units: Vec<u16> = p.name.encode_utf16().collect();
    if units.len() > 36 {
        return Err(Error::NameTooLong {
            name: p.name.clone(),
            units: units.len(),
        });
    }
    for (i, u) in units.iter().enumerate() {
        e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
    Ok(e)
}

/// One copy as read from the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableCopy {
    /// Its header.
    pub header: Header,
    /// Its header sector exactly as on disk (reserved bytes and the rest of the sector
    /// are written back as they were).
    pub header_sector: Vec<u8>,
    /// Its entry array, exactly as on disk.
    pub entries: Vec<u8>,
}

/// Read and check one copy: header at `lba`, then its entry array and CRC.
pub fn read_copy<D: ReadAt + ?Sized>(
    dev: &D,
    copy: GptCopy,
    lba: u64,
    sector_size: u64,
    disk_sectors: u64,
) -> Result<TableCopy> {
    let mut sector = vec![0u8; sector_size as usize];
    dev.read_exact_at(&mut sector, lba * sector_size)
        .map_err(|e| Error::io(format!("reading the {copy} GPT header at LBA {lba}"), e))?;
    let header = Header::parse(&sector, copy, lba, disk_sectors)?;
    let header_sector = sector;
    // Bounded by MAX_ENTRY_ARRAY and inside the disk (checked by parse).
    let mut entries = vec![0u8; header.entries_bytes() as usize];
    dev.read_exact_at(&mut entries, header.entries_lba * sector_size)
        .map_err(|e| Error::io(format!("reading the {copy} partition entries"), e))?;
    let computed = crc32fast::hash(&entries);
    if computed != header.entries_crc {
        return Err(Error::BadField {
            what: format!("{copy} GPT header"),
            field: "entries CRC",
            offset: lba * sector_size + 88,
            reason: format!(
                "stored {:#010x}, the entry array gives {computed:#010x}",
                header.entries_crc
            ),
        });
    }
    parse_entries(&header, &entries, copy, sector_size)?;
    Ok(TableCopy {
        header,
        header_sector,
        entries,
    })
}

/// The other copy's header for the same table: positions swapped, entry array placed as
/// the standard layout puts it (after LBA 1, or right before the backup header). An error
/// if that array would run into the usable area.
pub fn mirror_header(h: &Header, sector_size: u64) -> Result<Header> {
    let entry_sectors = h.entries_bytes().div_ceil(sector_size);
    let (my, alt) = (h.alternate_lba, h.my_lba);
    let (entries_lba, fits) = if my == 1 {
        (2, 2 + entry_sectors <= h.first_usable_lba)
    } else {
        let e = my.saturating_sub(entry_sectors);
        (e, e > h.last_usable_lba)
    };
    if !fits {
        return Err(Error::NoRoomForEntries {
            copy: if my == 1 {
                GptCopy::Primary
            } else {
                GptCopy::Backup
            },
            sectors: entry_sectors,
        });
    }
    Ok(Header {
        my_lba: my,
        alternate_lba: alt,
        entries_lba,
        ..h.clone()
    })
}
