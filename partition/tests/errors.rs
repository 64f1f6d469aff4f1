//! Bad tables get a clear error naming the copy, the field and the byte offset; a damaged
//! primary is read from the backup and repaired.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use keel_partition::{create_layout, CopyState, Error, GptDisk, Layout};

fn disk() -> Vec<u8> {
    let mut d = vec![0u8; 8 << 20];
    let mut l = Layout::flatcar(2 << 20);
    l.esp_size = 1 << 20;
    create_layout(&mut d, &l).unwrap();
    d
}

const LAST: usize = (8 << 20) - 512;

fn refix_header_crc(d: &mut [u8], at: usize) {
    let hs = u32::from_le_bytes(d[at + 12..at + 16].try_into().unwrap()) as usize;
    d[at + 16..at + 20].fill(0);
    let crc = crc32fast::hash(&d[at..at + hs]);
    d[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
}

fn both_bad(d: Vec<u8>) -> (String, String) {
    match GptDisk::open(d, None) {
        Err(Error::NoValidTable { primary, backup }) => (primary.to_string(), backup.to_string()),
        other => panic!("expected NoValidTable, got {other:?}"),
    }
}

#[test]
fn damaged_primary_falls_back_to_the_backup_and_repairs() {
    for at in [512usize, 512 + 16, 1024 + 50] {
        let mut d = disk();
        d[at] ^= 0xff;
        let mut g = GptDisk::open(d, None).unwrap();
        assert!(matches!(g.health().primary, CopyState::Bad(_)), "byte {at}");
        assert_eq!(g.health().backup, CopyState::Good);
        assert_eq!(g.partitions().len(), 3);
        assert!(g.repair().unwrap());
        let d = g.into_device();
        assert!(GptDisk::open(d, None).unwrap().health().is_clean());
    }
}

#[test]
fn each_bad_field_is_named() {
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "signature",
            Box::new(|d| {
                d[512] = b'X';
                d[LAST] = b'X';
            }),
        ),
        (
            "header CRC",
            Box::new(|d| {
                d[512 + 40] ^= 1;
                d[LAST + 40] ^= 1;
            }),
        ),
        (
            "entries CRC",
            Box::new(|d| {
                d[1024 + 200] ^= 1;
                d[LAST - 16384 + 200] ^= 1;
            }),
        ),
        (
            "entry size",
            Box::new(|d| {
                for at in [512, LAST] {
                    d[at + 84..at + 88].copy_from_slice(&100u32.to_le_bytes());
                    refix_header_crc(d, at);
                }
            }),
        ),
        (
            "header size",
            Box::new(|d| {
                for at in [512, LAST] {
                    d[at + 12..at + 16].copy_from_slice(&20u32.to_le_bytes());
                }
            }),
        ),
        (
            "usable LBAs",
            Box::new(|d| {
                for at in [512, LAST] {
                    d[at + 48..at + 56].copy_from_slice(&(1u64 << 40).to_le_bytes());
                    refix_header_crc(d, at);
                }
            }),
        ),
        (
            "alternate LBA",
            Box::new(|d| {
                for at in [512, LAST] {
                    d[at + 32..at + 40].copy_from_slice(&(1u64 << 40).to_le_bytes());
                    refix_header_crc(d, at);
                }
            }),
        ),
    ];
    for (field, f) in cases {
        let mut d = disk();
        f(&mut d);
        let (p, b) = both_bad(d);
        assert!(p.contains(field) && b.contains(field), "{field}: {p} / {b}");
        assert!(p.contains("primary") && b.contains("backup"), "{p} / {b}");
        assert!(p.contains("at byte"), "{p}");
    }
}

#[test]
fn overlapping_partitions_are_refused() {
    let mut d = disk();
    // Entry 3 (USR-B) made to start inside entry 2, in both arrays, CRCs fixed.
    for (entries, header) in [(1024usize, 512usize), (LAST - 16384, LAST)] {
        let e2_first = u64::from_le_bytes(
            d[entries + 128 + 32..entries + 128 + 40]
                .try_into()
                .unwrap(),
        );
        d[entries + 256 + 32..entries + 256 + 40].copy_from_slice(&(e2_first + 1).to_le_bytes());
        let crc = crc32fast::hash(&d[entries..entries + 16384]);
        d[header + 88..header + 92].copy_from_slice(&crc.to_le_bytes());
        refix_header_crc(&mut d, header);
    }
    let (p, _) = both_bad(d);
    assert!(
        p.contains("partition entry 3") && p.contains("overlaps partition 2"),
        "{p}"
    );
}

#[test]
fn a_table_beyond_the_disk_is_refused() {
    // The same table on a disk cut short: the backup is gone, the primary points past the end.
    let mut d = disk();
    d.truncate(4 << 20);
    let (p, b) = both_bad(d);
    assert!(p.contains("alternate LBA") || p.contains("usable"), "{p}");
    assert!(b.contains("signature") || b.contains("backup"), "{b}");
    assert!(GptDisk::open(vec![0u8; 1024], None).is_err());
}

#[test]
fn copies_that_would_overlap_are_not_written() {
    // A primary whose entry array sits where the backup's goes (found by fuzzing): valid
    // to read, but an update would write one copy over the other, so it is refused.
    let mut d = disk();
    let backup_entries_lba = (LAST / 512 - 32) as u64;
    d[512 + 72..512 + 80].copy_from_slice(&backup_entries_lba.to_le_bytes());
    refix_header_crc(&mut d, 512);
    let mut g = GptDisk::open(d, None).unwrap();
    assert_eq!(g.health().primary, CopyState::Good);
    let p = g.partitions()[0].clone();
    let e = g.set_attributes(&[(p.number, 1)]).unwrap_err();
    assert!(e.to_string().contains("overlap"), "{e}");
}

#[test]
fn a_backup_that_does_not_point_at_lba_1_is_refused() {
    // Primary gone, backup names LBA 2 as the primary's place: a repair following it would
    // write the "primary" where nothing reads it and claim success.
    let mut d = disk();
    d[512..1024].fill(0);
    d[LAST + 32..LAST + 40].copy_from_slice(&2u64.to_le_bytes());
    refix_header_crc(&mut d, LAST);
    let (_, backup) = both_bad(d);
    assert!(
        backup.contains("alternate LBA") && backup.contains("must point at LBA 1"),
        "{backup}"
    );
}

#[test]
fn attribute_updates_and_repair_keep_reserved_header_bytes() {
    use keel_partition::{AbDisk, SlotSelector};
    for damaged_primary in [false, true] {
        let mut d = disk();
        // Reserved bytes at 20..24 and bytes past the 92-byte header, in both copies.
        for at in [512usize, LAST] {
            d[at + 20..at + 24].copy_from_slice(&[1, 2, 3, 4]);
            d[at + 100..at + 104].copy_from_slice(b"keep");
            refix_header_crc(&mut d, at);
        }
        if damaged_primary {
            d[512 + 40] ^= 1;
        }
        let mut ab = AbDisk::new(
            GptDisk::open(d, None).unwrap(),
            &SlotSelector::Auto,
            keel_bootflags::PriorityPolicy::ChromeOs,
        )
        .unwrap();
        ab.set_active(keel_bootflags::Slot::B, Some(3)).unwrap();
        let d = ab.into_disk().into_device();
        for at in [512usize, LAST] {
            assert_eq!(
                &d[at + 20..at + 24],
                &[1, 2, 3, 4],
                "damaged {damaged_primary}"
            );
            assert_eq!(&d[at + 100..at + 104], b"keep", "damaged {damaged_primary}");
        }
        assert!(GptDisk::open(d, None).unwrap().health().is_clean());
    }
}
