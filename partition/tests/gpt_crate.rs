//! keel-partition against the `gpt` crate, an independent GPT implementation, both
//! directions and both sector sizes: what Keel lays out and updates, `gpt` reads field for
//! field with both headers valid; a table `gpt` writes, Keel reads, finds the A/B pair in
//! and updates, and `gpt` reads the update back. (Keel writes the table itself rather than
//! through `gpt`: an attribute change must write the copy not in force first, entries
//! before header, with a sync between the copies, so a power cut at any write leaves one
//! valid table; `gpt` writes both copies in one go.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::io::Cursor;

use keel_bootflags::{PriorityPolicy, Slot, SlotState};
use keel_partition::{create_layout, types, AbDisk, ExtraPartition, GptDisk, Layout, SlotSelector};

const DISK: u64 = 48 << 20;

fn lb(sector: u64) -> gpt::disk::LogicalBlockSize {
    match sector {
        512 => gpt::disk::LogicalBlockSize::Lb512,
        _ => gpt::disk::LogicalBlockSize::Lb4096,
    }
}

/// `gpt`'s reading of `image`, insisting on both headers being valid.
fn read_with_gpt(image: &[u8], sector: u64) -> gpt::GptDisk<Cursor<Vec<u8>>> {
    gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(lb(sector))
        .only_valid_headers(true)
        .open_from_device(Cursor::new(image.to_vec()))
        .unwrap()
}

/// Keel's partitions and `gpt`'s, field for field.
fn assert_same(keel: &GptDisk<Vec<u8>>, other: &gpt::GptDisk<Cursor<Vec<u8>>>) {
    let theirs = other.partitions();
    let ours = keel.partitions();
    assert_eq!(ours.len(), theirs.len());
    for p in &ours {
        let q = theirs
            .get(&p.number)
            .unwrap_or_else(|| panic!("gpt has no partition {}", p.number));
        assert_eq!(
            q.part_type_guid.guid,
            p.type_guid.to_uuid(),
            "type of {}",
            p.number
        );
        assert_eq!(q.part_guid, p.guid.to_uuid(), "GUID of {}", p.number);
        assert_eq!((q.first_lba, q.last_lba), (p.first_lba, p.last_lba));
        assert_eq!(q.flags, p.attributes, "attributes of {}", p.number);
        assert_eq!(q.name, p.name);
    }
    assert_eq!(*other.guid(), keel.header().disk_guid.to_uuid());
}

#[test]
fn what_keel_writes_the_gpt_crate_reads() {
    for sector in [512u64, 4096] {
        let mut image = vec![0u8; DISK as usize];
        let mut layout = Layout::flatcar(16 << 20);
        layout.sector_size = sector;
        layout.esp_size = 4 << 20;
        layout.extra = vec![ExtraPartition {
            label: "OEM".into(),
            type_guid: types::linux_data(),
            size: None,
            guid: None,
        }];
        create_layout(&mut image, &layout).unwrap();
        let keel = GptDisk::open(image.clone(), None).unwrap();
        assert_eq!(keel.partitions().len(), 4);
        assert_same(&keel, &read_with_gpt(&image, sector));

        // An A/B switch changes only the attribute bits, in both copies, as gpt sees them.
        let mut ab = AbDisk::new(
            GptDisk::open(image, None).unwrap(),
            &SlotSelector::Labels("USR-A".into(), "USR-B".into()),
            PriorityPolicy::Flatcar,
        )
        .unwrap();
        ab.set_active(Slot::B, Some(1)).unwrap();
        let image = ab.into_disk().into_device();
        let keel = GptDisk::open(image.clone(), None).unwrap();
        let b = keel.partition_by_label("USR-B").unwrap();
        assert_ne!(b.attributes, 0);
        assert_same(&keel, &read_with_gpt(&image, sector));
    }
}

#[test]
fn what_the_gpt_crate_writes_keel_reads_and_updates() {
    for sector in [512u64, 4096] {
        let mut device = Cursor::new(vec![0u8; DISK as usize]);
        let sectors = DISK / sector;
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap())
            .overwrite_lba0(&mut device)
            .unwrap();
        let mut g = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(lb(sector))
            .create_from_device(device, None)
            .unwrap();
        let usr = gpt::partition_types::Type {
            guid: types::coreos_usr().to_uuid(),
            os: gpt::partition_types::OperatingSystem::None,
        };
        g.add_partition("EFI-SYSTEM", 2 << 20, gpt::partition_types::EFI, 0, None)
            .unwrap();
        // Slot A good with priority 1, as an image builder would ship it (Flatcar's bits:
        // priority 48-51, tries 52-55, successful 56).
        let a_flags = (1u64 << 48) | (1 << 56);
        g.add_partition("USR-A", 12 << 20, usr.clone(), a_flags, None)
            .unwrap();
        g.add_partition("USR-B", 12 << 20, usr, 0, None).unwrap();
        let image = g.write().unwrap().into_inner();

        let keel = GptDisk::open(image.clone(), None).unwrap();
        assert_eq!(keel.sector_size(), sector);
        assert!(keel.health().is_clean(), "{:?}", keel.health());
        assert_same(&keel, &read_with_gpt(&image, sector));

        let mut ab = AbDisk::new(
            keel,
            &SlotSelector::Labels("USR-A".into(), "USR-B".into()),
            PriorityPolicy::Flatcar,
        )
        .unwrap();
        let [a, _] = ab.slots().unwrap();
        assert_eq!(
            a.state,
            SlotState {
                priority: 1,
                tries: 0,
                successful: true
            }
        );
        ab.set_active(Slot::B, Some(2)).unwrap();
        let image = ab.into_disk().into_device();
        let other = read_with_gpt(&image, sector);
        let b = other
            .partitions()
            .values()
            .find(|p| p.name == "USR-B")
            .unwrap();
        // B: priority 2, two tries, not yet successful; A's bits kept.
        assert_eq!(b.flags >> 48 & 0x1ff, 2 | (2 << 4));
        let a = other
            .partitions()
            .values()
            .find(|p| p.name == "USR-A")
            .unwrap();
        assert_eq!(a.flags, a_flags);
        assert_same(&GptDisk::open(image, None).unwrap(), &other);
    }
}
