//! What the agent's tests share: a test directory with a disk image, a device root and a
//! state directory, and the small helpers around them.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};

use keel_bootflags::Slot;
use keel_io::testing::PowerCut;
use keel_io::Shared;
use keel_partition::GptDisk;
use keel_update::{Agent, Installed};
use keel_verity::{HashTree, RootDescriptor, VerityParams};

/// A test's directory: `disk.img`, the device root `root/` (its /proc, /sys and /etc) and
/// the agent's `state/`.
pub(crate) trait Dirs {
    /// The directory.
    fn base(&self) -> &Path;

    fn p(&self, name: &str) -> PathBuf {
        self.base().join(name)
    }
    fn disk(&self) -> PathBuf {
        self.p("disk.img")
    }
    fn root(&self) -> PathBuf {
        self.p("root")
    }
    fn state(&self) -> PathBuf {
        self.p("state")
    }

    /// The device root's /proc and /etc, running `version`.
    fn make_root(&self, version: &str) {
        fs::create_dir_all(self.root().join("proc")).unwrap();
        fs::create_dir_all(self.root().join("etc")).unwrap();
        fs::write(
            self.root().join("etc/os-release"),
            format!("ID=keel\nVERSION_ID=\"{version}\"\n"),
        )
        .unwrap();
    }
}

pub(crate) fn open_rw(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// (offset, length) of the partition labelled `label` on a disk read into memory.
pub(crate) fn range(disk: &[u8], label: &str) -> (u64, u64) {
    let g = GptDisk::open(disk.to_vec(), None).unwrap();
    let ss = g.sector_size();
    let p = g.partition_by_label(label).unwrap();
    (p.first_lba * ss, p.sectors() * ss)
}

/// The signed root's descriptor of `image` with the salt `salt` (hex).
pub(crate) fn descriptor(image: &[u8], salt: &str) -> RootDescriptor {
    let params = VerityParams::builder()
        .salt(hex::decode(salt).unwrap())
        .data_blocks(image.len() as u64 / 4096)
        .build()
        .unwrap();
    let root = HashTree::build(&params, image)
        .unwrap()
        .root_hash()
        .to_vec();
    RootDescriptor::new(params, &root).unwrap()
}

/// A power cut at every write of `install`, then `install` again on what the cut left (with
/// the same state directory): each rerun must give slot B as the uninterrupted install
/// gives it, and B armed with `tries`. `before_cut` runs before each cut run (to reset what
/// is not on the disk); `after` checks each rerun's outcome. Returns the number of cuts.
pub(crate) fn cut_at_every_write(
    dirs: &dyn Dirs,
    system: impl Fn() -> keel_update::System,
    initial: &[u8],
    install: impl Fn(&Shared<PowerCut<Vec<u8>>>, &Path) -> keel_update::Result<Installed>,
    tries: u8,
    mut before_cut: impl FnMut(),
    mut after: impl FnMut(usize, &Installed),
) -> usize {
    let clean = Shared::new(PowerCut::new(initial.to_vec(), usize::MAX, 0));
    install(&clean, &dirs.p("clean-state")).unwrap();
    let clean = clean.into_inner();
    let (b_off, b_len) = range(&clean.inner, "USR-B");
    let slot = (b_off as usize)..((b_off + b_len) as usize);
    for cut in 0..clean.writes {
        before_cut();
        let state = dirs.p(&format!("state-{cut}"));
        let disk = Shared::new(PowerCut::new(initial.to_vec(), cut, 100));
        assert!(install(&disk, &state).is_err(), "cut {cut}: not noticed");
        let disk = Shared::new(PowerCut::new(disk.into_inner().inner, usize::MAX, 0));
        let done = install(&disk, &state).unwrap_or_else(|e| panic!("cut {cut}: rerun: {e}"));
        assert_eq!(done.slot, Slot::B);
        let end = disk.into_inner().inner;
        assert!(
            end[slot.clone()] == clean.inner[slot.clone()],
            "cut {cut}: slot B differs"
        );
        let st = Agent::new(system(), &Shared::new(end))
            .root(dirs.root())
            .state_dir(&state)
            .status()
            .unwrap();
        assert!(
            st.slots[1].next_boot && st.slots[1].tries == tries,
            "cut {cut}: {st:?}"
        );
        after(cut, &done);
    }
    clean.writes
}
