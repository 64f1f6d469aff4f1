//! On a real block device (a loop device, as root): the size and sector size come from
//! the kernel, changes are made in place, and the kernel re-reads the table (BLKRRPART),
//! or says it is busy when a partition is open.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use keel_testsupport as tools;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use keel_bootflags::{PriorityPolicy, Slot};
use keel_partition::{
    create_layout, open_disk, reread_partitions, AbDisk, Error, GptDisk, Layout, SlotSelector,
};
use tools::loopdev::attach;
use tools::{run_ok, tool};

fn make_image(dir: &Path, sector_size: u64) -> PathBuf {
    let img = dir.join(format!("disk{sector_size}.img"));
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut layout = Layout::flatcar(16 << 20);
    layout.sector_size = sector_size;
    layout.esp_size = 8 << 20;
    create_layout(&mut open_disk(&img, true).unwrap(), &layout).unwrap();
    img
}

#[test]
fn flag_updates_and_reread_on_a_loop_device() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), 512);
    let Some(lo) = attach(&img, 512) else { return };
    let dev = open_disk(Path::new(&lo.dev), true).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_block_device(
        &dev.metadata().unwrap().file_type()
    ));
    let disk = GptDisk::open(dev, None).unwrap();
    assert_eq!(disk.sector_size(), 512);
    let mut ab = AbDisk::new(disk, &SlotSelector::Auto, PriorityPolicy::Flatcar).unwrap();
    ab.set_active(Slot::B, Some(1)).unwrap();
    let disk = ab.into_disk();
    reread_partitions(disk.device()).unwrap();
    // Where the kernel parses GPTs, it now knows the partitions.
    let sys = format!("/sys/block/{0}/{0}p3", lo.dev.trim_start_matches("/dev/"));
    eprintln!("kernel partition 3 present: {}", Path::new(&sys).exists());
    // The device claimed by another opener (as a mount does): the kernel refuses to
    // re-read, and Keel says so.
    let held = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_EXCL)
        .open(&lo.dev)
        .unwrap();
    match reread_partitions(disk.device()) {
        Err(Error::Busy) => {}
        other => panic!("expected Busy with the device claimed, got {other:?}"),
    }
    drop(held);
    reread_partitions(disk.device()).unwrap();
    // The change is on the image behind the device.
    let again = AbDisk::new(
        GptDisk::open(open_disk(&img, false).unwrap(), None).unwrap(),
        &SlotSelector::Auto,
        PriorityPolicy::Flatcar,
    )
    .unwrap();
    assert_eq!(again.next_boot().unwrap(), Some(Slot::B));
}

#[test]
fn four_kib_sectors_on_a_loop_device() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), 4096);
    let Some(lo) = attach(&img, 4096) else { return };
    let disk = GptDisk::open(open_disk(Path::new(&lo.dev), true).unwrap(), None).unwrap();
    assert_eq!(disk.sector_size(), 4096);
    assert!(disk.health().is_clean());
    assert_eq!(disk.partitions().len(), 3);
    let mut ab = AbDisk::new(disk, &SlotSelector::Auto, PriorityPolicy::ChromeOs).unwrap();
    ab.set_active(Slot::B, None).unwrap();
    if let Some(sgdisk) = tool("sgdisk", "gdisk") {
        let out = run_ok(&sgdisk, &["-v", &lo.dev]);
        assert!(
            out.contains("No problems found") && !out.contains("Warning"),
            "{out}"
        );
    }
    // The image file alone: the 4096-byte header is found by probing.
    let file_disk = GptDisk::open(open_disk(&img, false).unwrap(), None).unwrap();
    assert_eq!(file_disk.sector_size(), 4096);
}
