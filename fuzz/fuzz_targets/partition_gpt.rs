//! The GPT reader on arbitrary tables: the input is LBA 1 onward of a small disk. Mode
//! bits fix up what the fuzzer cannot guess: bit 0 the primary's CRCs; bit 1 a backup
//! mirrored from the primary at the last LBA with its own CRCs (so backup-in-force paths
//! are reached); bit 2 zeroes the primary header afterwards. Never a panic; what opens
//! can be listed, repaired and updated, and reopens with the same partitions; an update
//! cut off after any write and torn anywhere (byte 1 of the input picks where) leaves a table that opens
//! with the old or the new attributes.
#![no_main]

use keel_io::testing::PowerCut;
use keel_partition::{GptDisk, SlotSelector};
use libfuzzer_sys::fuzz_target;

const SECTORS: usize = 96;
const SS: usize = 512;

fn le32(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

fn fix_crcs(disk: &mut [u8], header_at: usize) {
    let entries_lba = u64::from_le_bytes(
        disk[header_at + 72..header_at + 80]
            .try_into()
            .unwrap_or_default(),
    ) as usize;
    let n = le32(disk, header_at + 80);
    let es = le32(disk, header_at + 84);
    let start = entries_lba.saturating_mul(SS);
    if let Some(len) = n.checked_mul(es) {
        if let Some(entries) = start.checked_add(len).and_then(|end| disk.get(start..end)) {
            let crc = crc32fast::hash(entries);
            disk[header_at + 88..header_at + 92].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let hs = le32(disk, header_at + 12).clamp(92, SS);
    disk[header_at + 16..header_at + 20].fill(0);
    let crc = crc32fast::hash(&disk[header_at..header_at + hs]);
    disk[header_at + 16..header_at + 20].copy_from_slice(&crc.to_le_bytes());
}

/// The primary's header and entries copied to the backup's place.
fn mirror(disk: &mut [u8]) {
    let last = SECTORS - 1;
    let (lba, n, es) = (
        u64::from_le_bytes(disk[SS + 72..SS + 80].try_into().unwrap_or_default()) as usize,
        le32(disk, SS + 80),
        le32(disk, SS + 84),
    );
    let len = n.saturating_mul(es).min(32 * SS);
    let sectors = len.div_ceil(SS);
    let backup_entries = last.saturating_sub(sectors);
    let span = lba
        .checked_mul(SS)
        .and_then(|s| Some(s..s.checked_add(len)?));
    if let Some(src) = span.and_then(|r| disk.get(r)).map(<[u8]>::to_vec) {
        disk[backup_entries * SS..backup_entries * SS + len].copy_from_slice(&src);
    }
    let header: Vec<u8> = disk[SS..2 * SS].to_vec();
    let at = last * SS;
    disk[at..at + SS].copy_from_slice(&header);
    disk[at + 24..at + 32].copy_from_slice(&(last as u64).to_le_bytes());
    disk[at + 32..at + 40].copy_from_slice(&1u64.to_le_bytes());
    disk[at + 72..at + 80].copy_from_slice(&(backup_entries as u64).to_le_bytes());
    fix_crcs(disk, at);
}

fuzz_target!(|data: &[u8]| {
    let Some((&[mode, cut], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let mut disk = vec![0u8; SECTORS * SS];
    let n = rest.len().min(disk.len() - 2 * SS);
    disk[SS..SS + n].copy_from_slice(&rest[..n]);
    if mode & 1 == 1 {
        disk[SS..SS + 8].copy_from_slice(b"EFI PART");
        fix_crcs(&mut disk, SS);
    }
    if mode & 2 == 2 {
        mirror(&mut disk);
    }
    if mode & 4 == 4 {
        disk[SS..2 * SS].fill(0);
    }
    let Ok(g) = GptDisk::open(disk.clone(), None) else {
        return;
    };
    let parts = g.partitions();
    let _ = keel_partition::find_slots(&parts, &SlotSelector::Auto);

    // A cut update: the old or the new attributes, from whichever copy was in force.
    if let Some(p) = parts.first() {
        let flipped = p.attributes ^ (1 << 56);
        // Low bits: after how many writes; high bits: how much of the next one lands.
        let mut dev = PowerCut::new(
            disk.clone(),
            usize::from(cut % 5),
            usize::from(cut / 5) * 200,
        );
        let r = GptDisk::open(&mut dev, None)
            .and_then(|mut g| g.set_attributes(&[(p.number, flipped)]));
        if r.is_ok() || dev.writes > 0 {
            let after = GptDisk::open(dev.inner, None).expect("a cut update leaves a valid table");
            let a = after.partition(p.number).map(|q| q.attributes);
            assert!(a == Some(p.attributes) || a == Some(flipped), "{a:?}");
        }
    }

    let mut g = g;
    if g.repair().is_ok() {
        let again = GptDisk::open(g.into_device(), None).expect("a repaired table opens");
        assert!(again.health().is_clean());
        assert_eq!(again.partitions(), parts);
        g = again;
    }
    if let Some(p) = parts.first() {
        // Refused only for a table whose copies would overlap; otherwise it lands.
        if g.set_attributes(&[(p.number, p.attributes ^ (1 << 56))])
            .is_err()
        {
            return;
        }
        let again = GptDisk::open(g.into_device(), None).expect("an updated table opens");
        assert_eq!(
            again.partition(p.number).map(|q| q.attributes),
            Some(p.attributes ^ (1 << 56))
        );
    }
});
