//! Boot integration: the description's boot-state backend, opened, and the slots' kernel arguments.

use keel_bootflags::{BootControl, Slot};
use keel_io::{ReadAt, WriteAt};
use keel_partition::{AbDisk, SlotSelector};

use super::Agent;
use crate::error::Result;
use keel_bootflags::BackendSpec;

impl<'d, D> Agent<'d, D>
where
    D: ReadAt,
    &'d D: WriteAt,
{
    /// The boot-state backend of the description, opened: the GPT slots on the disk,
    /// or keel-bootflags' store of the spec (files read under the root directory; the
    /// systemd-boot entry ids are the slots' names).
    pub fn boot_control(&self) -> Result<Box<dyn BootControl + 'd>> {
        if let BackendSpec::Gpt(policy) = &self.system.backend {
            let [a, b] = self.partitions()?;
            let (a, b) = if self.system.slots()[0].slot == Slot::A {
                (a, b)
            } else {
                (b, a)
            };
            let sel = SlotSelector::Numbers(a.number, b.number);
            return Ok(Box::new(AbDisk::new(self.gpt()?, &sel, *policy)?));
        }
        let mut ids = [""; 2];
        for s in self.system.slots() {
            if let Some(id) = ids.get_mut(s.slot.index()) {
                *id = s.name.as_str();
            }
        }
        Ok(keel_bootflags::spec::open(
            &self.system.backend,
            &self.root,
            &ids,
        )?)
    }

    /// Put the argument that maps `slot` where its boot loader passes it to the kernel
    /// ([`BootControl::set_boot_arguments`]: a GRUB or U-Boot variable, a systemd-boot
    /// entry's `options` line). GPT-flag and Android systems take the root from elsewhere
    /// (the kernel partition, vbmeta); the slot record holds the argument for them.
    pub(super) fn write_boot_arguments(&self, slot: Slot, arg: &str) -> Result<()> {
        let mut boot = self.boot_control()?;
        if boot.carries_boot_arguments() {
            boot.set_boot_arguments(slot, arg)?;
        }
        Ok(())
    }
}
