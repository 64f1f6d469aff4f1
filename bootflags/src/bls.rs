//! systemd-boot boot counting: entry file names `NAME+LEFT[-DONE].conf` (or `.efi`).
//!
//! Before booting a counted entry, the boot loader renames it with LEFT - 1 and DONE + 1;
//! entries with LEFT = 0 sort after all others (and are booted only when nothing else is
//! left); `systemd-bless-boot good` removes the counter, `bad` sets LEFT to 0. A `+` whose
//! tail is not a counter is part of the name, as systemd reads it.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::model::{check_slot, AbControl, Slot, SlotState, MAX_SLOTS};

/// A boot entry file name with its counter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntryName {
    /// The name without counter and suffix (the entry id).
    pub id: String,
    /// `.conf` or `.efi`.
    pub suffix: String,
    /// The counter, if the entry is counted.
    pub counter: Option<Counter>,
}

/// A boot counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Counter {
    /// Tries left.
    pub left: u32,
    /// Tries done (absent in a name that was never booted: `+3.conf`).
    pub done: Option<u32>,
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl EntryName {
    /// Parse a file name. It must end in `.conf` or `.efi` and have a non-empty id.
    pub fn parse(file_name: &str) -> Result<Self> {
        let (stem, suffix) = [".conf", ".efi"]
            .iter()
            .find_map(|s| file_name.strip_suffix(s).map(|stem| (stem, *s)))
            .ok_or_else(|| Error::Syntax {
                what: "boot entry name",
                offset: 0,
                reason: format!("{file_name:?} does not end in .conf or .efi"),
            })?;
        if stem.contains('/') {
            return Err(Error::Syntax {
                what: "boot entry name",
                offset: 0,
                reason: format!("{file_name:?} is a path, not a file name"),
            });
        }
        let mut name = EntryName {
            id: stem.to_string(),
            suffix: suffix.to_string(),
            counter: None,
        };
        if let Some((id, tail)) = stem.rsplit_once('+') {
            // systemd writes counters without leading zeros; one with them would be read
            // as a number here and written back differently, so it is refused, not guessed.
            let leading_zero = |d: &str| d.len() > 1 && d.starts_with('0');
            let parts: Vec<&str> = tail.splitn(2, '-').collect();
            if parts.iter().all(|p| digits(p).is_some()) && parts.iter().any(|p| leading_zero(p)) {
                return Err(Error::Syntax {
                    what: "boot entry name",
                    offset: id.len() + 1,
                    reason: format!("{file_name:?}: the boot counter {tail:?} has a leading zero"),
                });
            }
            let counter = match tail.split_once('-') {
                Some((l, d)) => digits(l).zip(digits(d)).map(|(left, done)| Counter {
                    left,
                    done: Some(done),
                }),
                None => digits(tail).map(|left| Counter { left, done: None }),
            };
            if counter.is_some() {
                name.id = id.to_string();
                name.counter = counter;
            }
        }
        if name.id.is_empty() {
            return Err(Error::Syntax {
                what: "boot entry name",
                offset: 0,
                reason: format!("{file_name:?} has an empty entry id"),
            });
        }
        Ok(name)
    }

    /// The file name.
    pub fn file_name(&self) -> String {
        match self.counter {
            None => format!("{}{}", self.id, self.suffix),
            Some(Counter { left, done: None }) => format!("{}+{left}{}", self.id, self.suffix),
            Some(Counter {
                left,
                done: Some(d),
            }) => format!("{}+{left}-{d}{}", self.id, self.suffix),
        }
    }

    /// What the boot loader renames a counted entry to before booting it: one try used.
    /// Unchanged if uncounted or exhausted.
    pub fn step(&self) -> EntryName {
        let mut n = self.clone();
        if let Some(c) = &mut n.counter {
            if c.left > 0 {
                c.left -= 1;
                c.done = Some(c.done.unwrap_or(0).saturating_add(1));
            }
        }
        n
    }

    /// `systemd-bless-boot good`: the counter removed.
    pub fn bless(&self) -> EntryName {
        EntryName {
            counter: None,
            ..self.clone()
        }
    }

    /// `systemd-bless-boot bad`: no tries left.
    pub fn bad(&self) -> EntryName {
        let done = self.counter.and_then(|c| c.done);
        EntryName {
            counter: Some(Counter { left: 0, done }),
            ..self.clone()
        }
    }

    /// Counted with tries left, or not counted.
    pub fn is_bootable(&self) -> bool {
        self.counter.is_none_or(|c| c.left > 0)
    }
}

/// Default tries for an armed entry (systemd's `kernel-install` default).
pub const DEFAULT_TRIES: u32 = 3;

/// A/B slots as systemd-boot entries, one per slot, in the order the boot menu sorts them
/// (the agent makes a slot's entry sort first, e.g. by a newer version).
///
/// Common view: priority from the position in the order (0 when the entry has no tries
/// left), tries = LEFT, successful = blessed (no counter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemdBoot {
    entries: Vec<EntryName>,
    order: Vec<Slot>,
}

impl SystemdBoot {
    /// Entries for slots A, B, ... with `order` the menu order (every slot once).
    pub fn new(entries: Vec<EntryName>, order: Vec<Slot>) -> Result<Self> {
        if !(1..=MAX_SLOTS).contains(&entries.len()) {
            return Err(Error::SlotCount {
                count: entries.len(),
                max: MAX_SLOTS,
            });
        }
        let mut sorted = order.clone();
        sorted.sort();
        if sorted != Slot::all(entries.len()).collect::<Vec<_>>() {
            return Err(Error::Order);
        }
        Ok(SystemdBoot { entries, order })
    }

    /// The entry of `slot`.
    pub fn entry(&self, slot: Slot) -> Option<&EntryName> {
        self.entries.get(slot.index())
    }

    /// The agent's order (before exhausted entries are moved last).
    pub fn menu_order(&self) -> &[Slot] {
        &self.order
    }

    /// The menu order: bootable entries first in the agent's order, exhausted ones last.
    pub fn menu(&self) -> Vec<Slot> {
        let (mut good, bad): (Vec<Slot>, Vec<Slot>) = self
            .order
            .iter()
            .partition(|s| self.entries[s.index()].is_bootable());
        good.extend(bad);
        good
    }
}

impl AbControl for SystemdBoot {
    fn slot_count(&self) -> usize {
        self.entries.len()
    }

    fn state(&self, slot: Slot) -> Result<SlotState> {
        check_slot(slot, self.entries.len())?;
        let e = &self.entries[slot.index()];
        // The position in the menu the boot loader shows (spent entries last), so a state
        // read back from the ESP agrees with the one that wrote it.
        let pos = self
            .menu()
            .iter()
            .position(|&s| s == slot)
            .unwrap_or(MAX_SLOTS);
        Ok(SlotState {
            priority: if e.is_bootable() {
                (MAX_SLOTS - pos) as u8
            } else {
                0
            },
            tries: e.counter.map_or(0, |c| c.left.min(255) as u8),
            successful: e.counter.is_none(),
        })
    }

    fn is_bootable(&self, slot: Slot) -> Result<bool> {
        check_slot(slot, self.entries.len())?;
        Ok(self.entries[slot.index()].is_bootable())
    }

    /// The first entry of the menu (an exhausted one only if all are); its counter steps.
    fn boot(&mut self) -> Option<Slot> {
        let slot = *self.menu().first()?;
        let e = &mut self.entries[slot.index()];
        *e = e.step();
        Some(slot)
    }

    /// Sort the entry first; an unblessed entry gets `tries` (default 3) and DONE 0.
    fn set_active(&mut self, slot: Slot, tries: Option<u8>) -> Result<()> {
        check_slot(slot, self.entries.len())?;
        let tries = crate::model::arming_tries(tries, DEFAULT_TRIES)?;
        let e = &mut self.entries[slot.index()];
        if e.counter.is_some() {
            e.counter = Some(Counter {
                left: tries,
                done: Some(0),
            });
        }
        self.order.retain(|&s| s != slot);
        self.order.insert(0, slot);
        Ok(())
    }

    /// `systemd-bless-boot good`.
    fn mark_good(&mut self, slot: Slot) -> Result<()> {
        check_slot(slot, self.entries.len())?;
        let e = &mut self.entries[slot.index()];
        *e = e.bless();
        Ok(())
    }

    /// `systemd-bless-boot bad`.
    fn mark_bad(&mut self, slot: Slot) -> Result<()> {
        check_slot(slot, self.entries.len())?;
        let e = &mut self.entries[slot.index()];
        *e = e.bad();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_step_bless() {
        let n = EntryName::parse("os-b+3.conf").unwrap();
        assert_eq!(n.id, "os-b");
        assert_eq!(
            n.counter,
            Some(Counter {
                left: 3,
                done: None
            })
        );
        assert_eq!(n.step().file_name(), "os-b+2-1.conf");
        assert_eq!(n.step().step().step().file_name(), "os-b+0-3.conf");
        assert_eq!(n.step().step().step().step().file_name(), "os-b+0-3.conf");
        assert_eq!(n.step().bless().file_name(), "os-b.conf");
        assert_eq!(
            EntryName::parse("x+1-2.efi").unwrap().bad().file_name(),
            "x+0-2.efi"
        );
        // Not counters: part of the id, as systemd reads them.
        for (f, id) in [
            ("a+b.conf", "a+b"),
            ("a+1-.conf", "a+1-"),
            ("a+-1.conf", "a+-1"),
            ("a.conf", "a"),
        ] {
            let n = EntryName::parse(f).unwrap();
            assert_eq!((n.id.as_str(), n.counter), (id, None), "{f}");
            assert_eq!(n.file_name(), f);
        }
        for f in ["a.txt", "+3.conf", "dir/a.conf", ".conf"] {
            assert!(EntryName::parse(f).is_err(), "{f}");
        }
        // Leading zeros would print back differently ("+01" as "+1"): refused. A single
        // zero is a counter.
        for f in ["a+01.conf", "a+1-02.conf", "a+00-1.efi"] {
            assert!(EntryName::parse(f).is_err(), "{f}");
        }
        for f in ["a+0.conf", "a+0-0.conf", "a+10-20.conf"] {
            assert_eq!(EntryName::parse(f).unwrap().file_name(), f);
        }
    }

    #[test]
    fn exhausted_entries_sort_last() {
        let a = EntryName::parse("os-a.conf").unwrap();
        let b = EntryName::parse("os-b+2.conf").unwrap();
        let mut s = SystemdBoot::new(alloc::vec![a, b], alloc::vec![Slot::B, Slot::A]).unwrap();
        assert_eq!(s.boot(), Some(Slot::B));
        assert_eq!(s.boot(), Some(Slot::B));
        assert_eq!(s.entry(Slot::B).unwrap().file_name(), "os-b+0-2.conf");
        assert_eq!(s.boot(), Some(Slot::A));
        assert_eq!(s.menu(), [Slot::A, Slot::B]);
    }
}
