//! Power cuts during a flag update: the writes are cut off after each write in turn (and
//! in the middle of each write); every time the table opens, in Keel and in cgpt, sgdisk
//! finds nothing that repair cannot fix, and the slots read back in the old or the new
//! state, never a mix.

#[path = "../../testsupport/tools.rs"]
mod tools;

use std::io;

use keel_bootflags::{PriorityPolicy, Slot, SlotState};
use keel_partition::{create_layout, AbDisk, Device, GptDisk, Layout, SlotSelector};
use tools::{run, stdout, tool};

/// A disk that loses power: after `allowed` writes every write fails, the failing one
/// landing only its first `torn` bytes.
struct PowerCut {
    disk: Vec<u8>,
    allowed: usize,
    torn: usize,
    writes: usize,
}

impl Device for PowerCut {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.disk.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writes += 1;
        if self.writes > self.allowed {
            if self.writes == self.allowed + 1 {
                let n = self.torn.min(buf.len());
                self.disk.write_all_at(&buf[..n], offset)?;
            }
            return Err(io::Error::other("power cut"));
        }
        self.disk.write_all_at(buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        if self.writes > self.allowed {
            return Err(io::Error::other("power cut"));
        }
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.disk.len() as u64)
    }
}

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
    let mut disk =
        GptDisk::open(keel_partition::FileDevice::open(&f, true).unwrap(), None).unwrap();
    disk.repair().unwrap();
    let o = run(&sgdisk, &["-v", s]);
    let all = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(
        !all.contains("Warning") && !all.contains("Caution") && all.contains("No problems found"),
        "{label}: after repair: {all}"
    );
}

#[test]
fn every_cut_leaves_the_old_or_the_new_state() {
    let mut disk = vec![0u8; 8 << 20];
    let mut layout = Layout::flatcar(2 << 20);
    layout.esp_size = 1 << 20;
    create_layout(&mut disk, &layout).unwrap();
    let old = states(disk.clone());

    // The change: arm B, one update of both slots' attributes.
    let change = |dev: &mut PowerCut| -> keel_partition::Result<()> {
        let mut ab = AbDisk::new(
            GptDisk::open(&mut *dev, None)?,
            &SlotSelector::Auto,
            PriorityPolicy::ChromeOs,
        )?;
        ab.set_active(Slot::B, Some(4))
    };
    let mut full = PowerCut {
        disk: disk.clone(),
        allowed: usize::MAX,
        torn: 0,
        writes: 0,
    };
    change(&mut full).unwrap();
    let total = full.writes;
    assert_eq!(
        total, 4,
        "backup entries, backup header, primary entries, primary header"
    );
    let new = states(full.disk.clone());
    assert_ne!(old, new);

    let dir = tempfile::tempdir().unwrap();
    for allowed in 0..=total {
        for torn in [0usize, 1, 100, 8192] {
            let mut dev = PowerCut {
                disk: disk.clone(),
                allowed,
                torn,
                writes: 0,
            };
            let r = change(&mut dev);
            assert_eq!(r.is_ok(), allowed == total, "cut after {allowed} writes");
            let label = format!("cut after {allowed} writes, {torn} bytes of the next");
            let got = states(dev.disk.clone());
            assert!(got == old || got == new, "{label}: mixed state {got:?}");
            if allowed == total {
                assert_eq!(got, new);
            }
            check_with_tools(&dev.disk, dir.path(), &label);
        }
    }
}
