//! Power cuts during a flag update: the writes are cut off after each write in turn (and
//! in the middle of each write); every time the table opens, in Keel and in cgpt, sgdisk
//! finds nothing that repair cannot fix, and the slots read back in the old or the new
//! state, never a mix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use keel_testsupport as tools;

use keel_bootflags::{PriorityPolicy, Slot, SlotState};
use keel_partition::{create_layout, AbDisk, GptDisk, Layout, SlotSelector};
use tools::{run, stdout, tool};

type PowerCut = keel_io::testing::PowerCut<Vec<u8>>;

fn states(disk: Vec<u8>) -> [SlotState; 2] {
    let ab = AbDisk::new(
        GptDisk::open(disk, None).unwrap(),
        &SlotSelector::Auto,
        PriorityPolicy::ChromeOs,
    )
    .unwrap();
    let [a, b] = ab.slots().unwrap();
    [a.state, b.state]
}

fn check_with_tools(img: &[u8], dir: &std::path::Path, label: &str) {
    let (Some(cgpt), Some(sgdisk)) = (tool("cgpt", "cgpt"), tool("sgdisk", "gdisk")) else {
        return;
    };
    let f = dir.join("cut.img");
    std::fs::write(&f, img).unwrap();
    let s = f.to_str().unwrap();
    let o = run(&cgpt, &["show", s]);
    assert!(
        o.status.success(),
        "{label}: cgpt show failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // sgdisk may report the copy the cut damaged: only checksum problems, which repair fixes.
    let o = run(&sgdisk, &["-v", s]);
    let text = stdout(&o);
    if !text.contains("No problems found") {
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("Caution: The") || l.starts_with("Problem:"))
            .collect();
        assert!(
            !problems.is_empty() && problems.iter().all(|l| l.contains("CRC")),
            "{label}: sgdisk -v: {text}"
        );
    }
    // Keel's repair leaves nothing for sgdisk to warn about.
    let mut disk = GptDisk::open(keel_partition::open_disk(&f, true).unwrap(), None).unwrap();
    disk.repair().unwrap();
    let o = run(&sgdisk, &["-v", s]);
    let all = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(
        !all.contains("Warning") && !all.contains("Caution") && all.contains("No problems found"),
        "{label}: after repair: {all}"
    );
}

/// A 8 MiB Flatcar-style disk: ESP, A, B.
fn fresh_disk() -> Vec<u8> {
    let mut disk = vec![0u8; 8 << 20];
    let mut layout = Layout::flatcar(2 << 20);
    layout.esp_size = 1 << 20;
    create_layout(&mut disk, &layout).unwrap();
    disk
}

/// Arm B on `disk` with a power cut after every write (and inside the next one); after
/// each cut Keel opens a valid table with the old or the new state, and the real tools
/// agree.
fn cut_every_write(disk: &[u8], start: &str) {
    let old = states(disk.to_vec());

    // The change: arm B, one update of both slots' attributes.
    let change = |dev: &mut PowerCut| -> keel_partition::Result<()> {
        let mut ab = AbDisk::new(
            GptDisk::open(&mut *dev, None)?,
            &SlotSelector::Auto,
            PriorityPolicy::ChromeOs,
        )?;
        ab.set_active(Slot::B, Some(4))
    };
    let mut full = PowerCut::new(disk.to_vec(), usize::MAX, 0);
    change(&mut full).unwrap();
    let total = full.writes;
    assert_eq!(
        total, 4,
        "{start}: the other copy's entries and header, then the copy in force's"
    );
    let new = states(full.inner.clone());
    assert_ne!(old, new);

    let dir = tempfile::tempdir().unwrap();
    for allowed in 0..=total {
        for torn in [0usize, 1, 100, 8192] {
            let mut dev = PowerCut::new(disk.to_vec(), allowed, torn);
            let r = change(&mut dev);
            assert_eq!(r.is_ok(), allowed == total, "cut after {allowed} writes");
            let label = format!("{start}: cut after {allowed} writes, {torn} bytes of the next");
            let got = GptDisk::open(dev.inner.clone(), None)
                .map(|_| states(dev.inner.clone()))
                .unwrap_or_else(|e| panic!("{label}: no valid table: {e}"));
            assert!(got == old || got == new, "{label}: mixed state {got:?}");
            if allowed == total {
                assert_eq!(got, new);
            }
            check_with_tools(&dev.inner, dir.path(), &label);
        }
    }
}

#[test]
fn every_cut_leaves_the_old_or_the_new_state() {
    cut_every_write(&fresh_disk(), "healthy disk");
}

#[test]
fn every_cut_from_a_damaged_primary_leaves_the_old_or_the_new_state() {
    // The backup is the only valid copy: it must not be the first one overwritten.
    let mut disk = fresh_disk();
    disk[512..1024].fill(0);
    assert_eq!(
        GptDisk::open(disk.clone(), None).unwrap().in_force(),
        keel_partition::gpt::GptCopy::Backup
    );
    cut_every_write(&disk, "primary header zeroed");

    let mut disk = fresh_disk();
    disk[1024 + 40] ^= 0xff; // primary entries damaged, header intact
    cut_every_write(&disk, "primary entries damaged");
}

#[test]
fn every_cut_from_a_damaged_backup_leaves_the_old_or_the_new_state() {
    let mut disk = fresh_disk();
    let n = disk.len();
    disk[n - 512..].fill(0);
    cut_every_write(&disk, "backup header zeroed");
}
