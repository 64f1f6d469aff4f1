//! Both slots at a glance.

use keel_bootflags::SlotState;
use keel_io::{ReadAt, WriteAt};
use serde::Serialize;

use super::Agent;
use crate::error::Result;
use crate::record;

/// One slot in [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SlotStatus {
    /// The slot's name in the description.
    pub name: String,
    /// A or B.
    pub slot: String,
    /// Whether the running system booted from it.
    pub booted: bool,
    /// Whether the boot loader will choose it next.
    pub next_boot: bool,
    /// Boot priority.
    pub priority: u8,
    /// Tries left.
    pub tries: u8,
    /// Marked good.
    pub successful: bool,
    /// The version installed, if known.
    pub version: Option<String>,
    /// The dm-verity root hash, if known.
    pub root_hash: Option<String>,
}

/// Both slots and the last install error, for `status --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// The boot loader's rules.
    pub rules: String,
    /// The slots.
    pub slots: Vec<SlotStatus>,
    /// The last install's error, if it failed.
    pub last_error: Option<String>,
}

impl<'d, D> Agent<'d, D>
where
    D: ReadAt,
    &'d D: WriteAt,
{
    /// Both slots: boot state, version, root hash, which one is booted and which boots
    /// next; and the last install error.
    pub fn status(&self) -> Result<Status> {
        let boot = self.boot_control()?;
        let states = boot.status()?;
        let next = boot.next_boot()?;
        let booted = self.booted_slot().ok();
        let mut slots = Vec::new();
        for spec in self.system.slots() {
            let st = states.get(spec.slot.index()).copied().unwrap_or(SlotState {
                priority: 0,
                tries: 0,
                successful: false,
            });
            let rec = record::read(&self.state_dir, spec.slot)?;
            let version = match &rec {
                Some(r) => Some(r.version.clone()),
                None => self.installed_version(spec.slot, booted == Some(spec.slot))?,
            };
            slots.push(SlotStatus {
                name: spec.name.clone(),
                slot: spec.slot.to_string(),
                booted: booted == Some(spec.slot),
                next_boot: next == Some(spec.slot),
                priority: st.priority,
                tries: st.tries,
                successful: st.successful,
                version,
                root_hash: rec.and_then(|r| r.root_hash),
            });
        }
        Ok(Status {
            rules: boot.rules().to_string(),
            slots,
            last_error: record::read_small(&record::error_path(&self.state_dir))?,
        })
    }
}
