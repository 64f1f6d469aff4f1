//! The one A/B model: slots with priority, tries remaining and a successful flag, and the
//! operations an update agent and a boot loader perform on them.

use alloc::vec::Vec;
use core::fmt;

use crate::error::{Error, Result};

/// The most slots any supported boot loader allows (Android's `bootloader_control`).
pub const MAX_SLOTS: usize = 4;

/// A slot, by index: A = 0 .. D = 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(u8);

impl Slot {
    /// Slot A.
    pub const A: Slot = Slot(0);
    /// Slot B.
    pub const B: Slot = Slot(1);
    /// Slot C.
    pub const C: Slot = Slot(2);
    /// Slot D.
    pub const D: Slot = Slot(3);

    /// The slot with this index, if below [`MAX_SLOTS`].
    pub fn new(index: usize) -> Option<Slot> {
        (index < MAX_SLOTS).then_some(Slot(index as u8))
    }

    /// From its letter, `A`..`D` (either case).
    pub fn from_letter(c: char) -> Option<Slot> {
        let i = (c.to_ascii_uppercase() as u32).checked_sub('A' as u32)?;
        Slot::new(i as usize)
    }

    /// Index, 0 for A.
    pub fn index(self) -> usize {
        // The remainder changes nothing (a Slot is always below MAX_SLOTS) but lets the
        // optimiser see the bound: indexing a per-slot array then needs no bounds check,
        // so firmware builds of the allocation-free path contain no panic.
        usize::from(self.0) % MAX_SLOTS
    }

    /// Upper-case letter.
    pub fn letter(self) -> char {
        (b'A' + self.0) as char
    }

    /// All slots of a store with `count` slots.
    pub fn all(count: usize) -> impl Iterator<Item = Slot> {
        (0..count.min(MAX_SLOTS)).map(|i| Slot(i as u8))
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.letter())
    }
}

/// The state of one slot in the common model.
///
/// GPT (ChromeOS, Flatcar) and Android store exactly these three values. The RAUC and
/// systemd-boot stores keep other variables; their [`AbControl::state`] maps them onto this
/// view, as each implementation documents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SlotState {
    /// 0 = never chosen; higher is preferred.
    pub priority: u8,
    /// Boot attempts left before the boot loader gives the slot up.
    pub tries: u8,
    /// The slot has booted and been marked good.
    pub successful: bool,
}

impl SlotState {
    /// A slot the boot loader may choose: a non-zero priority and either marked good or
    /// with tries left (the ChromeOS, Flatcar and Android rule).
    pub fn is_bootable(&self) -> bool {
        self.priority > 0 && (self.successful || self.tries > 0)
    }
}

/// A persistent A/B boot-state store: the one interface an update agent holds for every
/// backend (`Box<dyn BootControl>`): GPT attribute bits (keel-partition's `AbDisk`), GRUB
/// and U-Boot environments and Android's misc partition (`store::FileStore`, with the
/// `std` feature).
///
/// Each operation applies one boot loader's rules and writes the change crash-safely
/// before it returns; when it fails, nothing changed (on disk or in the value).
pub trait BootControl {
    /// Number of slots.
    fn slot_count(&self) -> usize;
    /// Which boot loader's rules and which encoding, in words for a person.
    fn rules(&self) -> &'static str;
    /// The state of every slot, A first.
    fn status(&self) -> Result<Vec<SlotState>>;
    /// The slot the boot loader would choose next, without changing anything.
    fn next_boot(&self) -> Result<Option<Slot>>;
    /// Arm `slot` to boot next with `tries` attempts (`None`: the boot loader's default);
    /// see [`AbControl::set_active`].
    fn set_active(&mut self, slot: Slot, tries: Option<u8>) -> Result<()>;
    /// The booted slot came up healthy: keep booting it.
    fn mark_good(&mut self, slot: Slot) -> Result<()>;
    /// Never boot `slot` again until it is armed anew.
    fn mark_bad(&mut self, slot: Slot) -> Result<()>;
    /// Act as the boot loader: choose the slot to boot and store the counter change it
    /// makes before booting it (for simulations and tests; a real boot loader does this).
    fn boot(&mut self) -> Result<Option<Slot>>;
    /// Whether this store carries each slot's kernel arguments (see
    /// [`BootControl::set_boot_arguments`]).
    fn carries_boot_arguments(&self) -> bool {
        false
    }
    /// Put `args` (the argument that maps the slot's verity root, `dm-mod.create="..."`)
    /// where the boot loader passes it to the kernel when it boots `slot`, crash-safely:
    /// a GRUB or U-Boot environment's `KEEL_<SLOT>_ARGS` (a GRUB menu entry expands it
    /// through `eval`, since GRUB's `linux` escapes quotes from a variable), a
    /// systemd-boot entry's `options` line (replacing an earlier root argument). A store
    /// that cannot carry them (GPT bits, Android misc: the root comes from the kernel
    /// partition or vbmeta) says so with an error.
    fn set_boot_arguments(&mut self, slot: Slot, args: &str) -> Result<()> {
        let _ = (slot, args);
        Err(Error::NotCarried {
            store: self.rules(),
            what: "kernel arguments",
        })
    }
}

/// The operations on an A/B store: what an update agent does, and what the boot loader
/// does at each boot, with the exact rules of one boot loader.
///
/// This is the pure model over one encoding's decoded value (no I/O): the
/// [`BootControl`] implementations (a file store, the ESP's entries, keel-partition's GPT
/// slots) run it on the value they read and write the result back in one crash-safe
/// step. An agent uses [`BootControl`]; a boot loader, a simulator or firmware tooling
/// uses this.
///
/// Every mutating operation changes the value in memory only; the store's encoding then
/// writes it back in one write (see each encoding).
pub trait AbControl {
    /// Number of slots.
    fn slot_count(&self) -> usize;

    /// The state of `slot` in the common model.
    fn state(&self, slot: Slot) -> Result<SlotState>;

    /// Whether the boot loader may still choose `slot` without any agent action (with the
    /// loader's own fallbacks counted: RAUC resets exhausted counters when nothing else
    /// is left).
    fn is_bootable(&self, slot: Slot) -> Result<bool>;

    /// Act as the boot loader: choose the slot to boot and apply the counter change it
    /// makes before booting it. `None` if nothing is bootable.
    fn boot(&mut self) -> Option<Slot>;

    /// Arm `slot` to boot next with `tries` attempts (`None`: the boot loader's default).
    /// A slot already marked good stays good (it is only moved to the front); to arm new
    /// content in a slot that was good, [`mark_bad`](Self::mark_bad) it before writing
    /// the content, as update_engine does.
    fn set_active(&mut self, slot: Slot, tries: Option<u8>) -> Result<()>;

    /// The booted slot came up healthy: keep booting it.
    fn mark_good(&mut self, slot: Slot) -> Result<()>;

    /// Never boot `slot` again until it is armed anew.
    fn mark_bad(&mut self, slot: Slot) -> Result<()>;

    /// The slot the boot loader would choose next, without changing anything.
    fn next_boot(&self) -> Option<Slot>
    where
        Self: Sized + Clone,
    {
        self.clone().boot()
    }

    /// The state of every slot.
    fn status(&self) -> Vec<SlotState> {
        Slot::all(self.slot_count())
            .filter_map(|s| self.state(s).ok())
            .collect()
    }
}

/// The tries a slot armed with `tries` gets (`default` when none are given): at least one,
/// or the slot would be armed and never tried.
pub(crate) fn arming_tries(tries: Option<u8>, default: u32) -> Result<u32> {
    match tries.map_or(default, u32::from) {
        0 => Err(Error::Tries {
            tries: 0,
            min: 1,
            max: u8::MAX,
        }),
        t => Ok(t),
    }
}

pub(crate) fn check_slot(slot: Slot, count: usize) -> Result<()> {
    if slot.index() < count {
        Ok(())
    } else {
        Err(Error::NoSuchSlot {
            slot: slot.letter(),
            count,
        })
    }
}

/// The boot loaders that keep priority / tries / successful per slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PriorityPolicy {
    /// ChromeOS firmware (vboot cgptlib): a tie goes to the lowest slot; a try of an
    /// unsuccessful slot with one try left makes it bad (priority and tries 0).
    ChromeOs,
    /// Flatcar's GRUB `gptprio.next`: a tie goes to the lowest slot; a try only
    /// decrements tries, priority is never touched.
    Flatcar,
}

impl PriorityPolicy {
    /// Default tries when arming a slot: Flatcar's update_engine arms with 1, ChromeOS
    /// with `cgpt add -T 15`... Keel uses the conservative values of the anchors' agents.
    pub fn default_tries(self) -> u8 {
        match self {
            PriorityPolicy::ChromeOs => 6,
            PriorityPolicy::Flatcar => 1,
        }
    }

    /// The slot the boot loader picks.
    pub fn choose(self, slots: &[SlotState]) -> Option<Slot> {
        let mut best: Option<(usize, u8)> = None;
        for (i, s) in slots.iter().enumerate() {
            if !(s.successful || s.tries > 0) || s.priority == 0 {
                continue;
            }
            // Strictly greater: ties keep the lowest index (both loaders).
            if best.is_none_or(|(_, p)| s.priority > p) {
                best = Some((i, s.priority));
            }
        }
        best.and_then(|(i, _)| Slot::new(i))
    }

    /// Choose and apply the boot loader's counter change.
    pub fn boot(self, slots: &mut [SlotState]) -> Option<Slot> {
        let slot = self.choose(slots)?;
        let s = &mut slots[slot.index()];
        if !s.successful {
            match self {
                PriorityPolicy::ChromeOs => {
                    if s.tries > 1 {
                        s.tries -= 1;
                    } else {
                        s.tries = 0;
                        s.priority = 0;
                    }
                }
                PriorityPolicy::Flatcar => s.tries = s.tries.saturating_sub(1),
            }
        }
        Some(slot)
    }
}

/// `cgpt prioritize`: give entry `target` the highest priority, keep the relative order of
/// the others, renumber the groups downward from the top (`max`, or the number of groups if
/// smaller), never raise a priority 0 and never lower a non-zero one to 0. Works on any
/// number of entries (cgpt applies it to every partition of a type).
pub fn prioritize(slots: &mut [SlotState], target: usize, max: u8) {
    // Distinct non-zero priorities of the other slots, highest first.
    let mut groups: Vec<u8> = slots
        .iter()
        .enumerate()
        .filter(|&(i, s)| i != target && s.priority > 0)
        .map(|(_, s)| s.priority)
        .collect();
    groups.sort_unstable_by(|a, b| b.cmp(a));
    groups.dedup();
    let top = max.min(groups.len() as u8 + 1).max(1);
    for (i, s) in slots.iter_mut().enumerate() {
        if i == target {
            s.priority = top;
        } else if s.priority > 0 {
            let rank = groups.iter().position(|&p| p == s.priority).unwrap_or(0) as u8;
            s.priority = top.saturating_sub(rank + 1).max(1);
        }
    }
}

/// ChromeOS / Flatcar state over GPT attributes, with the agent operations of their
/// update engines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrioritySlots {
    /// The slots, A first.
    pub slots: Vec<SlotState>,
    /// Whose rules apply.
    pub policy: PriorityPolicy,
}

/// Highest GPT priority.
pub const MAX_PRIORITY: u8 = 15;
/// Most GPT tries.
pub const MAX_TRIES: u8 = 15;

impl PrioritySlots {
    /// A store over `slots` with the rules of `policy`.
    pub fn new(slots: Vec<SlotState>, policy: PriorityPolicy) -> Result<Self> {
        if !(1..=MAX_SLOTS).contains(&slots.len()) {
            return Err(Error::SlotCount {
                count: slots.len(),
                max: MAX_SLOTS,
            });
        }
        for (i, s) in slots.iter().enumerate() {
            if s.priority > MAX_PRIORITY || s.tries > MAX_TRIES {
                return Err(Error::StateRange {
                    slot: Slot(i as u8).letter(),
                    priority: s.priority,
                    tries: s.tries,
                });
            }
        }
        Ok(PrioritySlots { slots, policy })
    }
}

impl AbControl for PrioritySlots {
    fn slot_count(&self) -> usize {
        self.slots.len()
    }

    fn state(&self, slot: Slot) -> Result<SlotState> {
        check_slot(slot, self.slots.len())?;
        Ok(self.slots[slot.index()])
    }

    fn is_bootable(&self, slot: Slot) -> Result<bool> {
        Ok(self.state(slot)?.is_bootable())
    }

    fn boot(&mut self) -> Option<Slot> {
        self.policy.boot(&mut self.slots)
    }

    fn set_active(&mut self, slot: Slot, tries: Option<u8>) -> Result<()> {
        check_slot(slot, self.slots.len())?;
        let tries = tries.unwrap_or(self.policy.default_tries());
        if tries == 0 || tries > MAX_TRIES {
            return Err(Error::Tries {
                tries,
                min: 1,
                max: MAX_TRIES,
            });
        }
        let s = &mut self.slots[slot.index()];
        if !s.successful {
            s.tries = tries;
        }
        prioritize(&mut self.slots, slot.index(), MAX_PRIORITY);
        Ok(())
    }

    fn mark_good(&mut self, slot: Slot) -> Result<()> {
        check_slot(slot, self.slots.len())?;
        let s = &mut self.slots[slot.index()];
        s.successful = true;
        s.tries = 0;
        prioritize(&mut self.slots, slot.index(), MAX_PRIORITY);
        Ok(())
    }

    fn mark_bad(&mut self, slot: Slot) -> Result<()> {
        check_slot(slot, self.slots.len())?;
        self.slots[slot.index()] = SlotState::default();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(priority: u8, tries: u8, successful: bool) -> SlotState {
        SlotState {
            priority,
            tries,
            successful,
        }
    }

    #[test]
    fn chromeos_last_try_clears_priority() {
        let mut s = [st(2, 1, false), st(1, 0, true)];
        assert_eq!(PriorityPolicy::ChromeOs.boot(&mut s), Some(Slot::A));
        assert_eq!(s[0], st(0, 0, false));
        assert_eq!(PriorityPolicy::ChromeOs.boot(&mut s), Some(Slot::B));
        assert_eq!(s[1], st(1, 0, true));
    }

    #[test]
    fn flatcar_decrements_tries_only() {
        let mut s = [st(2, 1, false), st(1, 0, true)];
        assert_eq!(PriorityPolicy::Flatcar.boot(&mut s), Some(Slot::A));
        assert_eq!(s[0], st(2, 0, false));
        assert_eq!(PriorityPolicy::Flatcar.boot(&mut s), Some(Slot::B));
    }

    #[test]
    fn ties_go_to_the_lowest_slot_and_priority_zero_never_boots() {
        let s = [st(3, 1, false), st(3, 0, true)];
        assert_eq!(PriorityPolicy::ChromeOs.choose(&s), Some(Slot::A));
        assert_eq!(PriorityPolicy::Flatcar.choose(&s), Some(Slot::A));
        let s = [st(0, 5, true), st(0, 1, false)];
        assert_eq!(PriorityPolicy::ChromeOs.choose(&s), None);
    }

    #[test]
    fn prioritize_like_cgpt() {
        // Observed with cgpt: {5, 3, 3, 1, 0}, prioritize the fourth: the groups are
        // renumbered downward from their count, 0 stays 0.
        let mut s = [
            st(5, 0, true),
            st(3, 0, true),
            st(3, 0, true),
            st(1, 0, false),
        ];
        prioritize(&mut s, 3, 15);
        assert_eq!(
            [s[0].priority, s[1].priority, s[2].priority, s[3].priority],
            [2, 1, 1, 3]
        );
        // {9, 0, 1, 3}, prioritize the second (priority 0): it goes on top all the same.
        let mut s = [
            st(9, 0, true),
            st(0, 0, false),
            st(1, 0, false),
            st(3, 0, true),
        ];
        prioritize(&mut s, 1, 15);
        assert_eq!(
            [s[0].priority, s[1].priority, s[2].priority, s[3].priority],
            [3, 4, 1, 2]
        );
        // Priority 0 stays 0; the top is capped at max.
        let mut s = [st(0, 0, false), st(9, 0, true)];
        prioritize(&mut s, 1, 15);
        assert_eq!([s[0].priority, s[1].priority], [0, 1]);
        let mut s = [st(2, 0, true), st(1, 0, true)];
        prioritize(&mut s, 1, 1);
        assert_eq!([s[0].priority, s[1].priority], [1, 1]);
    }
}
