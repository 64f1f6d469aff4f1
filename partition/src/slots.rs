//! A/B slot pairs on a GPT disk and the boot-flag operations on them.

use keel_bootflags::gpt::GptAttributes;
use keel_bootflags::{
    prioritize, AbControl, BootControl, PriorityPolicy, PrioritySlots, Slot, SlotState,
};

use crate::disk::GptDisk;
use crate::error::{Error, Result};
use crate::gpt::Partition;
use crate::guid::{types, Guid};
use keel_io::{ReadAt, Region, WriteAt};

/// How to find the two slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotSelector {
    /// Try the known label pairs (`USR-A`/`USR-B`, `root-a`/`root-b`, `ROOT-A`/`ROOT-B`,
    /// `KERN-A`/`KERN-B`), then exactly two partitions of the CoreOS USR or a
    /// Discoverable-Partitions root or usr type.
    Auto,
    /// By labels.
    Labels(String, String),
    /// The two partitions of this type (there must be exactly two).
    Type(Guid),
    /// By partition numbers.
    Numbers(u32, u32),
}

/// One slot as found on the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// A or B.
    pub slot: Slot,
    /// The partition.
    pub partition: Partition,
    /// Its boot state, decoded from the attribute bits.
    pub state: SlotState,
}

impl SlotInfo {
    /// Size in bytes.
    pub fn size_bytes(&self, sector_size: u64) -> u64 {
        self.partition.sectors() * sector_size
    }
}

const LABEL_PAIRS: [(&str, &str); 4] = [
    ("USR-A", "USR-B"),
    ("root-a", "root-b"),
    ("ROOT-A", "ROOT-B"),
    ("KERN-A", "KERN-B"),
];

fn by_label<'a>(parts: &'a [Partition], label: &str) -> Result<Option<&'a Partition>> {
    let found: Vec<&Partition> = parts.iter().filter(|p| p.name == label).collect();
    match found.len() {
        0 => Ok(None),
        1 => Ok(Some(found[0])),
        n => Err(Error::Slots(format!(
            "{n} partitions are labelled {label:?}"
        ))),
    }
}

/// Find the A/B pair in `parts`.
pub fn find_slots(parts: &[Partition], selector: &SlotSelector) -> Result<[Partition; 2]> {
    let pair = |a: &Partition, b: &Partition| [a.clone(), b.clone()];
    match selector {
        SlotSelector::Labels(a, b) => match (by_label(parts, a)?, by_label(parts, b)?) {
            (Some(x), Some(y)) => Ok(pair(x, y)),
            _ => Err(Error::Slots(format!(
                "no partitions labelled {a:?} and {b:?}"
            ))),
        },
        SlotSelector::Numbers(a, b) => {
            let get = |n: u32| {
                parts
                    .iter()
                    .find(|p| p.number == n)
                    .ok_or_else(|| Error::Slots(format!("partition {n} does not exist")))
            };
            if a == b {
                return Err(Error::Slots(
                    "the two slots must be different partitions".into(),
                ));
            }
            Ok(pair(get(*a)?, get(*b)?))
        }
        SlotSelector::Type(t) => {
            let found: Vec<&Partition> = parts.iter().filter(|p| p.type_guid == *t).collect();
            match found.as_slice() {
                [x, y] => Ok(pair(x, y)),
                other => Err(Error::Slots(format!(
                    "{} partitions of type {t}, exactly 2 needed",
                    other.len()
                ))),
            }
        }
        SlotSelector::Auto => {
            for (a, b) in LABEL_PAIRS {
                if let (Some(x), Some(y)) = (by_label(parts, a)?, by_label(parts, b)?) {
                    return Ok(pair(x, y));
                }
            }
            for t in [
                types::coreos_usr(),
                types::root_x86_64(),
                types::root_aarch64(),
                types::usr_x86_64(),
                types::chromeos_kernel(),
            ] {
                if let Ok(p) = find_slots(parts, &SlotSelector::Type(t)) {
                    return Ok(p);
                }
            }
            Err(Error::Slots(
                "no A/B pair found: no USR-A/USR-B, root-a/root-b, ROOT-A/ROOT-B or KERN-A/KERN-B labels, and no type with exactly two partitions; name the slots".into(),
            ))
        }
    }
}

/// A/B slots on a GPT disk with a boot loader's rules. Every operation is one crash-safe
/// attribute update ([`GptDisk::set_attributes`]).
#[derive(Debug)]
pub struct AbDisk<D> {
    disk: GptDisk<D>,
    numbers: [u32; 2],
    policy: PriorityPolicy,
}

impl<D: ReadAt + WriteAt> AbDisk<D> {
    /// Find the slots on `disk`.
    pub fn new(disk: GptDisk<D>, selector: &SlotSelector, policy: PriorityPolicy) -> Result<Self> {
        let [a, b] = find_slots(&disk.partitions(), selector)?;
        Ok(AbDisk {
            disk,
            numbers: [a.number, b.number],
            policy,
        })
    }

    /// The disk.
    pub fn disk(&self) -> &GptDisk<D> {
        &self.disk
    }

    /// Take the disk back.
    pub fn into_disk(self) -> GptDisk<D> {
        self.disk
    }

    /// Both slots with their partitions and states.
    pub fn slots(&self) -> Result<[SlotInfo; 2]> {
        let info = |slot: Slot, n: u32| -> Result<SlotInfo> {
            let p = self
                .disk
                .partition(n)
                .ok_or_else(|| Error::Slots(format!("partition {n} disappeared")))?;
            let state = GptAttributes(p.attributes).state();
            Ok(SlotInfo {
                slot,
                partition: p,
                state,
            })
        };
        Ok([
            info(Slot::A, self.numbers[0])?,
            info(Slot::B, self.numbers[1])?,
        ])
    }

    /// Where `slot` lies on the disk: its first byte and its length.
    pub fn slot_range(&self, slot: Slot) -> Result<(u64, u64)> {
        let ss = self.disk.sector_size();
        let info = self
            .slots()?
            .into_iter()
            .find(|s| s.slot == slot)
            .ok_or_else(|| Error::Slots(format!("no slot {slot}")))?;
        let p = &info.partition;
        Ok((p.first_lba * ss, p.sectors() * ss))
    }

    /// `slot` as a device of its own: reads and writes stay inside its partition. Payload
    /// apply and verity format and verify take it directly, over a disk opened on a `File`
    /// or on `&File` alike.
    ///
    /// ```
    /// use keel_bootflags::{PriorityPolicy, Slot};
    /// use keel_partition::{create_layout, AbDisk, GptDisk, Layout, ReadAt, SlotSelector, WriteAt};
    /// let file = tempfile::tempfile()?;
    /// file.set_len(16 << 20)?;
    /// let mut layout = Layout::flatcar(4 << 20);
    /// layout.esp_size = 1 << 20;
    /// create_layout(&mut &file, &layout)?;
    /// let ab = AbDisk::new(GptDisk::open(&file, None)?, &SlotSelector::Auto, PriorityPolicy::Flatcar)?;
    /// let mut b = ab.slot_region(Slot::B)?; // a Region<&&File>, which writes
    /// b.write_all_at(b"new image", 0)?;
    /// let mut back = [0u8; 9];
    /// b.read_exact_at(&mut back, 0)?;
    /// assert_eq!(&back, b"new image");
    /// assert_eq!(b.len(), 4 << 20);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn slot_region(&self, slot: Slot) -> Result<Region<&D>> {
        let (start, len) = self.slot_range(slot)?;
        Region::new(self.disk.device(), start, len)
            .map_err(|e| Error::io(format!("slot {slot}"), e))
    }

    /// The slot a partition number or letter names.
    pub fn slot_of(&self, name: &str) -> Result<Slot> {
        if let Some(s) = name
            .chars()
            .next()
            .filter(|_| name.len() == 1)
            .and_then(Slot::from_letter)
            .filter(|s| s.index() < 2)
        {
            return Ok(s);
        }
        let n: u32 = name
            .parse()
            .map_err(|_| Error::Slots(format!("{name:?} is not A, B or a partition number")))?;
        self.numbers
            .iter()
            .position(|&x| x == n)
            .and_then(Slot::new)
            .ok_or_else(|| {
                Error::Slots(format!(
                    "partition {n} is not one of the slots ({} and {})",
                    self.numbers[0], self.numbers[1]
                ))
            })
    }

    fn model(&self) -> Result<PrioritySlots> {
        let [a, b] = self.slots()?;
        Ok(PrioritySlots::new(vec![a.state, b.state], self.policy)?)
    }

    fn apply(&mut self, m: &PrioritySlots) -> Result<()> {
        let [a, b] = self.slots()?;
        let mut changes = Vec::new();
        for (info, st) in [(a, m.slots[0]), (b, m.slots[1])] {
            let new = GptAttributes(info.partition.attributes).with_state(st).0;
            if new != info.partition.attributes {
                changes.push((info.partition.number, new));
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        self.disk.set_attributes(&changes)
    }

    fn op(
        &mut self,
        f: impl FnOnce(&mut PrioritySlots) -> keel_bootflags::Result<()>,
    ) -> Result<()> {
        let mut m = self.model()?;
        f(&mut m)?;
        self.apply(&m)
    }

    /// Arm `slot` with `tries` (default: the policy's) and give it the top priority.
    pub fn set_active(&mut self, slot: Slot, tries: Option<u8>) -> Result<()> {
        self.op(|m| m.set_active(slot, tries))
    }

    /// The booted slot came up: successful, no tries, top priority.
    pub fn mark_good(&mut self, slot: Slot) -> Result<()> {
        self.op(|m| m.mark_good(slot))
    }

    /// Never boot `slot` until armed again: priority, tries and successful cleared.
    pub fn mark_bad(&mut self, slot: Slot) -> Result<()> {
        self.op(|m| m.mark_bad(slot))
    }

    /// Act as the boot loader: choose and store its counter change.
    pub fn boot(&mut self) -> Result<Option<Slot>> {
        let mut m = self.model()?;
        let chosen = m.boot();
        self.apply(&m)?;
        Ok(chosen)
    }

    /// The slot the boot loader would choose, without changing anything.
    pub fn next_boot(&self) -> Result<Option<Slot>> {
        Ok(self.policy.choose(&self.model()?.slots))
    }
}

fn to_boot_error(e: Error) -> keel_bootflags::Error {
    match e {
        Error::BootFlags(b) => b,
        e => keel_bootflags::Error::Backend {
            store: "GPT",
            source: Box::new(e),
        },
    }
}

/// The GPT slots as the one boot-control interface: every operation is one crash-safe
/// attribute update.
impl<D: ReadAt + WriteAt> BootControl for AbDisk<D> {
    fn slot_count(&self) -> usize {
        2
    }
    fn rules(&self) -> &'static str {
        match self.policy {
            PriorityPolicy::ChromeOs => "ChromeOS firmware over GPT attribute bits",
            PriorityPolicy::Flatcar => "Flatcar's GRUB gptprio over GPT attribute bits",
            _ => "GPT attribute bits",
        }
    }
    fn status(&self) -> keel_bootflags::Result<Vec<SlotState>> {
        let [a, b] = self.slots().map_err(to_boot_error)?;
        Ok(vec![a.state, b.state])
    }
    fn next_boot(&self) -> keel_bootflags::Result<Option<Slot>> {
        AbDisk::next_boot(self).map_err(to_boot_error)
    }
    fn set_active(&mut self, slot: Slot, tries: Option<u8>) -> keel_bootflags::Result<()> {
        AbDisk::set_active(self, slot, tries).map_err(to_boot_error)
    }
    fn mark_good(&mut self, slot: Slot) -> keel_bootflags::Result<()> {
        AbDisk::mark_good(self, slot).map_err(to_boot_error)
    }
    fn mark_bad(&mut self, slot: Slot) -> keel_bootflags::Result<()> {
        AbDisk::mark_bad(self, slot).map_err(to_boot_error)
    }
    fn boot(&mut self) -> keel_bootflags::Result<Option<Slot>> {
        AbDisk::boot(self).map_err(to_boot_error)
    }
}

/// `cgpt prioritize -i N`: partition `number` gets the top priority among all partitions of
/// its type, the others keep their order; one crash-safe update.
pub fn prioritize_partition<D: ReadAt + WriteAt>(
    disk: &mut GptDisk<D>,
    number: u32,
    max: u8,
) -> Result<()> {
    let parts = disk.partitions();
    let target = parts
        .iter()
        .find(|p| p.number == number)
        .ok_or(Error::NoSuchPartition(number))?;
    let group: Vec<&Partition> = parts
        .iter()
        .filter(|p| p.type_guid == target.type_guid)
        .collect();
    let mut states: Vec<SlotState> = group
        .iter()
        .map(|p| GptAttributes(p.attributes).state())
        .collect();
    let index = group.iter().position(|p| p.number == number).unwrap_or(0);
    prioritize(&mut states, index, max);
    let changes: Vec<(u32, u64)> = group
        .iter()
        .zip(&states)
        .map(|(p, st)| (p.number, GptAttributes(p.attributes).with_state(*st).0))
        .filter(|(n, a)| parts.iter().any(|p| p.number == *n && p.attributes != *a))
        .collect();
    if changes.is_empty() {
        return Ok(());
    }
    disk.set_attributes(&changes)
}
