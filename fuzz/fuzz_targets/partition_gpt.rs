//! The GPT reader on arbitrary tables: the input is LBA 1 onward of a small disk, with the
//! CRCs fixed up when the first byte asks, so the fuzzer gets past them. Never a panic;
//! what opens can be listed, repaired and updated, and reopens with the same partitions.
#![no_main]

use keel_partition::{GptDisk, SlotSelector};
use libfuzzer_sys::fuzz_target;

const SECTORS: usize = 96;

fn le32(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

fn fix_crcs(disk: &mut [u8], header_at: usize) {
    let entries_lba = u64::from_le_bytes(disk[header_at + 72..header_at + 80].try_into().unwrap_or_default()) as usize;
    let n = le32(disk, header_at + 80);
    let es = le32(disk, header_at + 84);
    let start = entries_lba.saturating_mul(512);
    if let Some(len) = n.checked_mul(es) {
        if let Some(entries) = start.checked_add(len).and_then(|end| disk.get(start..end)) {
            let crc = crc32fast::hash(entries);
            disk[header_at + 88..header_at + 92].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let hs = le32(disk, header_at + 12).clamp(92, 512);
    disk[header_at + 16..header_at + 20].fill(0);
    let crc = crc32fast::hash(&disk[header_at..header_at + hs]);
    disk[header_at + 16..header_at + 20].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut disk = vec![0u8; SECTORS * 512];
    let n = rest.len().min(disk.len() - 512);
    disk[512..512 + n].copy_from_slice(&rest[..n]);
    if mode & 1 == 1 {
        disk[512..520].copy_from_slice(b"EFI PART");
        fix_crcs(&mut disk, 512);
    }
    let Ok(mut g) = GptDisk::open(disk, None) else { return };
    let parts = g.partitions();
    let _ = keel_partition::find_slots(&parts, &SlotSelector::Auto);
    if g.repair().is_ok() {
        let again = GptDisk::open(g.into_device(), None).expect("a repaired table opens");
        assert!(again.health().is_clean());
        assert_eq!(again.partitions(), parts);
        g = again;
    }
    if let Some(p) = parts.first() {
        // Refused only for a table whose copies would overlap; otherwise it lands.
        if g.set_attributes(&[(p.number, p.attributes ^ (1 << 56))]).is_err() {
            return;
        }
        let again = GptDisk::open(g.into_device(), None).expect("an updated table opens");
        assert_eq!(again.partition(p.number).map(|q| q.attributes), Some(p.attributes ^ (1 << 56)));
    }
});
