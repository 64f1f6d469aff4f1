//! The agent: install into the other slot, arm it, commit it after a healthy boot. Each
//! concern has a room: where the slots are (`disks`), the boot loader (`boot`), install
//! (`install`, a slot set's images: `images`, from an index: `index`, from a block store:
//! `store`), the clock floor (`clock`), commit after health
//! checks (`commit`), status (`status`).

mod boot;
mod clock;
mod commit;
mod disks;
mod images;
mod index;
mod install;
mod status;
mod store;

pub use clock::BUILD_TIME_FLOOR;
pub use commit::{Commit, HealthCheck};
pub use index::{fetch_index, INDEX_DEADLINE};
pub use install::Installed;
pub use status::{SlotStatus, Status};

use std::path::PathBuf;

use keel_bootflags::Slot;
use keel_io::{ReadAt, WriteAt};
use keel_partition::GptDisk;

use crate::error::Result;
use crate::system::System;

/// An update agent for one system on one disk. `disk` is the disk whose GPT holds the
/// slots: `&File` of an image or a block device, or `&Shared<_>` of anything else.
#[derive(Debug)]
pub struct Agent<'d, D> {
    system: System,
    disk: &'d D,
    root: PathBuf,
    state_dir: PathBuf,
    booted: Option<Slot>,
    checkpoint_bytes: Option<u64>,
    disk_path: Option<PathBuf>,
}

impl<'d, D> Agent<'d, D>
where
    D: ReadAt,
    &'d D: WriteAt,
{
    /// An agent for `system` on `disk`, reading the running system under `/` and keeping
    /// its records in `/var/lib/keel`.
    ///
    /// `disk` must be the disk the description names: `boot.disk` when it is given (and the
    /// path given with [`Agent::disk_path`], which must then be the same disk), else the
    /// path given, else the disk the kernel booted from. A handle that is another file or
    /// device (by identity, however it is spelled) is refused before anything is read or
    /// written ([`Error::WrongDisk`](crate::Error::WrongDisk)).
    ///
    /// Under the root directory ([`Agent::root`]) the agent reads `/proc/cmdline` (the
    /// booted slot: `root=`, `usr=`, `mount.usr=`, `systemd.verity_*`, `roothash=`,
    /// `usrhash=`, `dm-mod.create=`), `/dev/disk/by-partuuid` and `by-partlabel`,
    /// `/sys/dev/block` and `/sys/class/block` (which partition of which disk a device is),
    /// `/etc/os-release` (`VERSION_ID`: the booted version when no record says it) and
    /// `/etc/machine-id` (a staged rollout's share); and the boot-state stores the
    /// description names (a grubenv, U-Boot's environment, `/boot/loader/entries`).
    pub fn new(system: System, disk: &'d D) -> Self {
        Agent {
            system,
            disk,
            root: PathBuf::from("/"),
            state_dir: PathBuf::from("/var/lib/keel"),
            booted: None,
            checkpoint_bytes: None,
            disk_path: None,
        }
    }

    /// The path `disk` was opened from (on the running system, read under the root
    /// directory), for a description without `boot.disk`: slots named by a device path are
    /// checked to be partitions of this disk. With `boot.disk` it must name the same disk.
    /// Without it, `boot.disk`, else the disk the kernel booted from.
    pub fn disk_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.disk_path = Some(path.into());
        self
    }

    /// Read /proc, /sys and /etc under `root` (a test's fake tree, an image being built).
    pub fn root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = root.into();
        self
    }

    /// Keep the slot records and resume state here.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = dir.into();
        self
    }

    /// Take `slot` as the booted slot instead of detecting it (an installer running from
    /// other media, a test).
    pub fn booted(mut self, slot: Slot) -> Self {
        self.booted = Some(slot);
        self
    }

    /// Make the apply durable and record its resume point after this many bytes
    /// (default: keel-payload's 64 MiB). Smaller: less work repeated after a power cut.
    pub fn checkpoint_bytes(mut self, bytes: u64) -> Self {
        self.checkpoint_bytes = Some(bytes);
        self
    }

    /// The system.
    pub fn system(&self) -> &System {
        &self.system
    }

    pub(super) fn gpt(&self) -> Result<GptDisk<&'d D>> {
        Ok(GptDisk::open(self.disk, None)?)
    }
}
