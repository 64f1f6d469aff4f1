//! keel-update: the A/B update agent as a library.
//!
//! An agent's whole cycle: load the system description, build the [`System`], open the
//! boot disk, [`Agent::install`] a payload (checked, applied into the slot that is not
//! running, its dm-verity tree written and verified against the signed root, armed),
//! reboot, [`Agent::commit`] after health checks.
//!
//! ```no_run
//! use keel_update::{Agent, HealthCheck, System};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let loaded = keel_config::load_files("/etc/keel/system.toml".as_ref(), &[])?;
//! let config = loaded.config.ok_or("the description has errors")?;
//! let system = System::from_config(&config)?;
//! let disk = std::fs::OpenOptions::new().read(true).write(true).open("/dev/vda")?;
//! let agent = Agent::new(system, &disk);
//! agent.install(std::fs::File::open("update.payload")?, None)?;
//! // ... reboot; then, in the new slot:
//! let checks = [HealthCheck::Command {
//!     name: "network".into(),
//!     argv: vec!["/usr/bin/ping".into(), "-c1".into(), "gateway".into()],
//!     timeout: std::time::Duration::from_secs(30),
//! }];
//! agent.commit(&checks)?;
//! # Ok(()) }
//! ```
//!
//! Over the network, [`Agent::install_from_index`] fetches and verifies a signed release
//! index (keel-fetch), keeps its serial against rollback, chooses the delta from the
//! booted image or the full payload, and streams it in with range resume
//! ([`Agent::install_seekable`]: an interrupted install does not fetch again what it
//! applied). The payload must be signed as the version the index names for it
//! ([`Error::ReleaseMismatch`]), and dates are judged on a clock no earlier than the
//! newest of this agent's build date and the last index accepted
//! ([`Agent::trusted_now`]). The publisher's side, [`publish`], makes the index's entries from the payload
//! files.
//!
//! The slots are partitions of one disk with a GPT, named in the description by label,
//! unique GUID or device path. Every reference (each slot's data and hash device, a
//! boot-state store on a partition) is resolved to the partition it is before anything is
//! compared, so two spellings of one partition are refused ([`Error::SameDevice`]) rather
//! than written as two; a device path is what /sys says it is (its disk and number, by
//! device number for a node), and a partition of another disk is refused by name
//! ([`Error::OtherDisk`]). The dm-verity tree (and parity) follows the image in the
//! slot, or, with `hash-tree = "separate"`, goes on each slot's own `hash-device`
//! partition; either way the space is checked before anything is written. A description
//! may have several slot classes switching together (ChromeOS's kernel and root pairs; the
//! first carries the boot state) and `[[file]]` classes, a file per slot on a filesystem
//! both share (a kernel and an initramfs on the ESP, `/efi/keel/{slot}/vmlinuz`). An
//! install writes a bundle's images into the inactive slot set, one image per class (a
//! payload of one image fits a description of one slot class), never a running slot's
//! file, and arms the set only once every image and the dm-verity tree (of `[verity]
//! class`) are in place and verified; a set record lets a run after an interruption skip
//! the images already done ([`Installed::skipped`]). The booted slot is told from the kernel command line
//! (`root=`/`usr=`/`mount.usr=` by PARTUUID, PARTLABEL, device, major:minor or
//! device-mapper name; `roothash=`, `usrhash=`, `verity.usrhash=`; `dm-mod.create=`) and
//! /sys, under a root directory tests can point elsewhere.

mod agent;
mod booted;
mod devices;
mod error;
pub mod publish;
mod record;
mod system;

pub use agent::{
    fetch_index, Agent, Commit, HealthCheck, Installed, SlotStatus, Status, BUILD_TIME_FLOOR,
    INDEX_DEADLINE,
};
pub use booted::{boot_disk, clues, Clue};
pub use error::{Error, Refusal, Result};
/// The boot-state backend of a [`System`]: keel-bootflags' one specification.
pub use keel_bootflags::BackendSpec;
pub use record::SlotRecord;
pub use system::{FileSpec, SlotClass, SlotDevice, SlotSpec, System, VeritySpec};
