//! The boot-control commands `bootstate` and `slots` share: one clap subcommand set run
//! against any `BootControl` (a file store, the GPT slots), so both front ends speak the
//! same verbs with the same meaning. Included with `#[path = "support/boot.rs"] mod boot;`.
#![allow(dead_code)]

use clap::Subcommand;
use keel::bootflags::{BootControl, Slot};

#[derive(Subcommand)]
pub(crate) enum BootCmd {
    /// Arm SLOT to boot next, with N tries (the rules' default if not given).
    SetActive {
        /// The slot: A, B (or, for a disk, its partition number).
        slot: String,
        /// Boots it gets before the boot loader falls back (default: the rules' own).
        #[arg(long)]
        tries: Option<u8>,
    },
    /// The booted SLOT came up healthy: it stops counting tries.
    MarkGood {
        /// The slot: A, B (or, for a disk, its partition number).
        slot: String,
    },
    /// Never boot SLOT until it is armed again.
    MarkBad {
        /// The slot: A, B (or, for a disk, its partition number).
        slot: String,
    },
    /// Act as the boot loader: choose a slot and store its counter change.
    Boot,
}

impl BootCmd {
    /// Run the command, with SLOT turned into a slot by `slot_of` first (a front end
    /// knows its own slot names). Each change is written crash-safely by the
    /// `BootControl` before this returns.
    pub(crate) fn run<C: BootControl>(
        &self,
        ctl: &mut C,
        slot_of: impl FnOnce(&C, &str) -> Result<Slot, String>,
    ) -> Result<(), String> {
        let e = |e: keel::bootflags::Error| e.to_string();
        match self {
            BootCmd::SetActive { slot, tries } => {
                let s = slot_of(ctl, slot)?;
                ctl.set_active(s, *tries).map_err(e)
            }
            BootCmd::MarkGood { slot } => {
                let s = slot_of(ctl, slot)?;
                ctl.mark_good(s).map_err(e)
            }
            BootCmd::MarkBad { slot } => {
                let s = slot_of(ctl, slot)?;
                ctl.mark_bad(s).map_err(e)
            }
            BootCmd::Boot => {
                match ctl.boot().map_err(e)? {
                    Some(s) => println!("booting slot {s}"),
                    None => println!("no bootable slot"),
                }
                Ok(())
            }
        }
    }
}
