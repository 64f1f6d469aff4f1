//! Android A/B: `struct bootloader_control` in the misc partition, with the rules of
//! AOSP's reference boot_control HAL (`libboot_control`) for the agent operations and of
//! U-Boot's `android_ab` for the boot loader.
//!
//! 32 bytes at byte 2048 of misc, packed, little-endian (AOSP
//! `bootloader_message.h`):
//!
//! | offset | field |
//! |---|---|
//! | 0 | `slot_suffix[4]`, the booted slot (`"_a"`) |
//! | 4 | `magic` u32 = 0x42414342 (`"BCAB"` in memory order) |
//! | 8 | `version` u8 = 1 |
//! | 9 | bits 0-2 `nb_slot`, bits 3-5 `recovery_tries_remaining`, bits 6-7 + byte 10 bit 0 `merge_status` |
//! | 11 | reserved |
//! | 12 | `slot_info[4]`, 2 bytes each: bits 0-3 priority, 4-6 tries_remaining, 7 successful_boot; second byte bit 0 verity_corrupted |
//! | 20 | reserved\[8\] |
//! | 28 | `crc32_le`: zlib CRC-32 of bytes 0..28 |
//!
//! Only the fields named are ever changed; every other bit is kept.

use alloc::format;

use crate::error::{Error, Result};
use crate::model::{check_slot, AbControl, Slot, SlotState};

/// Byte offset of the block in the misc partition.
pub const MISC_OFFSET: u64 = 2048;
/// Size of the block.
pub const SIZE: usize = 32;
/// The magic, as a little-endian u32.
pub const MAGIC: u32 = 0x4241_4342;
/// The only version.
pub const VERSION: u8 = 1;
/// Priority the HAL gives the slot it activates.
pub const ACTIVE_PRIORITY: u8 = 15;
/// Tries the HAL gives the slot it activates.
pub const ACTIVE_TRIES: u8 = 6;
/// Largest tries value (3 bits).
pub const MAX_TRIES: u8 = 7;

const WHAT: &str = "android bootloader_control";

/// A decoded `bootloader_control`, holding its exact bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootloaderControl {
    bytes: [u8; SIZE],
}

fn bad(field: &'static str, offset: usize, reason: alloc::string::String) -> Error {
    Error::BadField {
        what: WHAT,
        field,
        offset,
        reason,
    }
}

impl BootloaderControl {
    /// A fresh block for `nb_slot` slots (1 to 4) as the HAL initialises one
    /// (`InitDefaultBootloaderControl`): every slot priority 7 and tries 7, the booted slot
    /// `good` successful and named by the suffix.
    pub fn new(nb_slot: u8, good: Slot) -> Result<Self> {
        if !(1..=4).contains(&nb_slot) {
            return Err(Error::SlotCount {
                count: usize::from(nb_slot),
                max: 4,
            });
        }
        check_slot(good, usize::from(nb_slot))?;
        Ok(BootloaderControl::fresh(nb_slot, good))
    }

    /// [`new`](Self::new) without the checks (`nb_slot` 1 to 4, `good` below it), for
    /// the allocation-free path.
    pub(crate) fn fresh(nb_slot: u8, good: Slot) -> Self {
        let mut b = [0u8; SIZE];
        b[4..8].copy_from_slice(&MAGIC.to_le_bytes());
        b[8] = VERSION;
        let mut c = BootloaderControl { bytes: b };
        c.set_nb_slot(nb_slot);
        c.set_suffix(good);
        for s in Slot::all(usize::from(nb_slot)) {
            c.set_slot_state(
                s,
                SlotState {
                    priority: 7,
                    tries: 7,
                    successful: s == good,
                },
            );
        }
        c
    }

    /// Decode 32 bytes, checking size, magic, version, CRC and slot count.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let b: [u8; SIZE] = bytes.try_into().map_err(|_| Error::Size {
            what: WHAT,
            expected: SIZE,
            found: bytes.len(),
        })?;
        let magic = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if magic != MAGIC {
            return Err(bad(
                "magic",
                4,
                format!("expected {MAGIC:#010x}, found {magic:#010x}"),
            ));
        }
        if b[8] != VERSION {
            return Err(bad(
                "version",
                8,
                format!("expected {VERSION}, found {}", b[8]),
            ));
        }
        let stored = u32::from_le_bytes([b[28], b[29], b[30], b[31]]);
        let computed = crc32fast::hash(&b[..28]);
        if stored != computed {
            return Err(Error::Crc {
                what: WHAT,
                stored,
                computed,
            });
        }
        let c = BootloaderControl { bytes: b };
        let n = c.nb_slot();
        if !(1..=4).contains(&n) {
            return Err(bad("nb_slot", 9, format!("expected 1 to 4, found {n}")));
        }
        Ok(c)
    }

    /// Encode, with a fresh CRC.
    pub fn to_bytes(&self) -> [u8; SIZE] {
        let mut b = self.bytes;
        let crc = crc32fast::hash(&b[..28]);
        b[28..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Number of slots.
    pub fn nb_slot(&self) -> u8 {
        self.bytes[9] & 0x7
    }

    fn set_nb_slot(&mut self, n: u8) {
        self.bytes[9] = (self.bytes[9] & !0x7) | (n & 0x7);
    }

    /// Tries left for recovery.
    pub fn recovery_tries_remaining(&self) -> u8 {
        (self.bytes[9] >> 3) & 0x7
    }

    /// Set the recovery tries (0 to 7).
    pub fn set_recovery_tries_remaining(&mut self, t: u8) {
        self.bytes[9] = (self.bytes[9] & !0x38) | ((t & 0x7) << 3);
    }

    /// Virtual A/B merge status (3 bits across bytes 9 and 10).
    pub fn merge_status(&self) -> u8 {
        (self.bytes[9] >> 6) | ((self.bytes[10] & 1) << 2)
    }

    /// Set the merge status (0 to 7).
    pub fn set_merge_status(&mut self, m: u8) {
        self.bytes[9] = (self.bytes[9] & 0x3f) | ((m & 0x3) << 6);
        self.bytes[10] = (self.bytes[10] & !1) | ((m >> 2) & 1);
    }

    /// The booted slot as the suffix names it, if it names one of ours.
    pub fn suffix_slot(&self) -> Option<Slot> {
        if self.bytes[0] != b'_' {
            return None;
        }
        Slot::from_letter(char::from(self.bytes[1]))
            .filter(|s| s.index() < usize::from(self.nb_slot()))
    }

    fn set_suffix(&mut self, s: Slot) {
        self.bytes[0] = b'_';
        self.bytes[1] = s.letter().to_ascii_lowercase() as u8;
        self.bytes[2] = 0;
    }

    fn meta(&self, s: Slot) -> (u8, u8) {
        let at = 12 + 2 * s.index();
        (self.bytes[at], self.bytes[at + 1])
    }

    /// Priority, tries and successful of `s` (any slot index 0-3 can be read).
    pub fn slot_state(&self, s: Slot) -> SlotState {
        let (b0, _) = self.meta(s);
        SlotState {
            priority: b0 & 0xf,
            tries: (b0 >> 4) & 0x7,
            successful: b0 & 0x80 != 0,
        }
    }

    /// Set priority (clamped to 15), tries (clamped to 7) and successful of `s`.
    pub fn set_slot_state(&mut self, s: Slot, st: SlotState) {
        let at = 12 + 2 * s.index();
        self.bytes[at] = (st.priority.min(15))
            | (st.tries.min(MAX_TRIES) << 4)
            | if st.successful { 0x80 } else { 0 };
    }

    /// The `verity_corrupted` flag of `s`.
    pub fn verity_corrupted(&self, s: Slot) -> bool {
        self.meta(s).1 & 1 != 0
    }

    /// Set the `verity_corrupted` flag of `s`.
    pub fn set_verity_corrupted(&mut self, s: Slot, v: bool) {
        let at = 13 + 2 * s.index();
        self.bytes[at] = (self.bytes[at] & !1) | u8::from(v);
    }
}

/// U-Boot `android_ab` ordering: higher priority, then successful, then more tries.
fn better(a: &SlotState, b: &SlotState) -> bool {
    (a.priority, a.successful, a.tries) > (b.priority, b.successful, b.tries)
}

impl AbControl for BootloaderControl {
    fn slot_count(&self) -> usize {
        usize::from(self.nb_slot())
    }

    fn state(&self, slot: Slot) -> Result<SlotState> {
        check_slot(slot, self.slot_count())?;
        Ok(self.slot_state(slot))
    }

    fn is_bootable(&self, slot: Slot) -> Result<bool> {
        Ok(self.state(slot)?.is_bootable())
    }

    /// U-Boot `ab_select_slot`: the best bootable slot (ties to the lowest); an
    /// unsuccessful one loses a try; the suffix is set to the chosen slot.
    fn boot(&mut self) -> Option<Slot> {
        let mut best: Option<(Slot, SlotState)> = None;
        for s in Slot::all(self.slot_count()) {
            let st = self.slot_state(s);
            if !st.is_bootable() {
                continue;
            }
            if best.is_none_or(|(_, b)| better(&st, &b)) {
                best = Some((s, st));
            }
        }
        let (slot, mut st) = best?;
        if !st.successful {
            st.tries -= 1;
            self.set_slot_state(slot, st);
        }
        self.set_suffix(slot);
        Some(slot)
    }

    /// HAL `setActiveBootSlot`: other slots at priority 15 drop to 14; the slot gets
    /// priority 15 and `tries` (default 6) and keeps its successful bit; its
    /// verity_corrupted flag is cleared unless it is the booted slot.
    fn set_active(&mut self, slot: Slot, tries: Option<u8>) -> Result<()> {
        check_slot(slot, self.slot_count())?;
        let tries = tries.unwrap_or(ACTIVE_TRIES);
        if tries == 0 || tries > MAX_TRIES {
            return Err(Error::Tries {
                tries,
                min: 1,
                max: MAX_TRIES,
            });
        }
        self.activate(slot, tries);
        Ok(())
    }

    /// HAL `markBootSuccessful`: successful, and one try so a slot that succeeded on its
    /// last attempt stays bootable.
    fn mark_good(&mut self, slot: Slot) -> Result<()> {
        check_slot(slot, self.slot_count())?;
        self.hal_mark_good(slot);
        Ok(())
    }

    /// HAL `setSlotAsUnbootable`: not successful, no tries.
    fn mark_bad(&mut self, slot: Slot) -> Result<()> {
        check_slot(slot, self.slot_count())?;
        self.hal_mark_bad(slot);
        Ok(())
    }
}

// The rules without the checks, shared with the allocation-free path of `crate::fixed`
// (whose callers check the slot and tries first, and must not reach an error that
// allocates its message).
impl BootloaderControl {
    /// Wrap 32 bytes whose magic, version, CRC and slot count were checked.
    pub(crate) fn from_checked(bytes: [u8; SIZE]) -> Self {
        BootloaderControl { bytes }
    }

    /// The bytes as they are (the CRC as read or last written).
    pub(crate) fn raw(&self) -> [u8; SIZE] {
        self.bytes
    }

    pub(crate) fn activate(&mut self, slot: Slot, tries: u8) {
        for s in Slot::all(self.slot_count()) {
            let mut st = self.slot_state(s);
            if s != slot && st.priority >= ACTIVE_PRIORITY {
                st.priority = ACTIVE_PRIORITY - 1;
                self.set_slot_state(s, st);
            }
        }
        let mut st = self.slot_state(slot);
        st.priority = ACTIVE_PRIORITY;
        st.tries = tries;
        self.set_slot_state(slot, st);
        if self.suffix_slot() != Some(slot) {
            self.set_verity_corrupted(slot, false);
        }
    }

    pub(crate) fn hal_mark_good(&mut self, slot: Slot) {
        let mut st = self.slot_state(slot);
        st.successful = true;
        st.tries = 1;
        if st.priority == 0 {
            st.priority = 1;
        }
        self.set_slot_state(slot, st);
    }

    pub(crate) fn hal_mark_bad(&mut self, slot: Slot) {
        let mut st = self.slot_state(slot);
        st.successful = false;
        st.tries = 0;
        self.set_slot_state(slot, st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_layout_is_pinned() {
        let mut c = BootloaderControl::new(2, Slot::A).unwrap();
        c.set_recovery_tries_remaining(5);
        c.set_merge_status(5);
        c.set_verity_corrupted(Slot::B, true);
        let b = c.to_bytes();
        assert_eq!(&b[0..3], b"_a\0");
        assert_eq!(&b[4..8], &[0x42, 0x43, 0x41, 0x42]);
        assert_eq!(b[8], 1);
        // nb_slot 2 | recovery 5 << 3 | merge low bits 01 << 6; merge bit 2 in byte 10.
        assert_eq!(b[9], 2 | (5 << 3) | (1 << 6));
        assert_eq!(b[10], 1);
        assert_eq!(b[12], 7 | (7 << 4) | 0x80);
        assert_eq!(b[14], 7 | (7 << 4));
        assert_eq!(b[15], 1);
        assert_eq!(&b[28..], &crc32fast::hash(&b[..28]).to_le_bytes());
        let back = BootloaderControl::parse(&b).unwrap();
        assert_eq!(back.merge_status(), 5);
        assert_eq!(back.recovery_tries_remaining(), 5);
        assert!(back.verity_corrupted(Slot::B));
    }

    #[test]
    fn bad_input_names_the_field() {
        let good = BootloaderControl::new(2, Slot::A).unwrap().to_bytes();
        let mut b = good;
        b[5] ^= 1;
        assert!(matches!(
            BootloaderControl::parse(&b),
            Err(Error::BadField {
                field: "magic",
                offset: 4,
                ..
            })
        ));
        let mut b = good;
        b[8] = 2;
        assert!(matches!(
            BootloaderControl::parse(&b),
            Err(Error::BadField {
                field: "version",
                ..
            })
        ));
        let mut b = good;
        b[20] = 9;
        assert!(matches!(
            BootloaderControl::parse(&b),
            Err(Error::Crc { .. })
        ));
        assert!(matches!(
            BootloaderControl::parse(&good[..31]),
            Err(Error::Size { found: 31, .. })
        ));
        let mut b = good;
        b[9] = (b[9] & !7) | 5;
        let crc = crc32fast::hash(&b[..28]);
        b[28..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            BootloaderControl::parse(&b),
            Err(Error::BadField {
                field: "nb_slot",
                ..
            })
        ));
    }

    #[test]
    fn reserved_bits_are_kept() {
        let mut b = BootloaderControl::new(2, Slot::A).unwrap().to_bytes();
        b[10] |= 0xfe;
        b[11] = 0xaa;
        b[13] |= 0xfe;
        b[20..28].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        b[3] = 0x77;
        let crc = crc32fast::hash(&b[..28]);
        b[28..].copy_from_slice(&crc.to_le_bytes());
        let mut c = BootloaderControl::parse(&b).unwrap();
        c.set_active(Slot::B, None).unwrap();
        c.boot();
        c.mark_good(Slot::B).unwrap();
        c.set_merge_status(2);
        let out = c.to_bytes();
        assert_eq!(out[10] & 0xfe, 0xfe);
        assert_eq!(out[11], 0xaa);
        assert_eq!(out[13] & 0xfe, 0xfe);
        assert_eq!(&out[20..28], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(out[3], 0x77);
    }

    #[test]
    fn hal_and_bootloader_rules() {
        let mut c = BootloaderControl::new(2, Slot::A).unwrap();
        c.mark_bad(Slot::B).unwrap();
        c.set_active(Slot::B, None).unwrap();
        assert_eq!(c.slot_state(Slot::A).priority, 7);
        c.set_active(Slot::A, None).unwrap();
        c.set_active(Slot::B, None).unwrap();
        assert_eq!(c.slot_state(Slot::A).priority, 14);
        assert_eq!(
            c.slot_state(Slot::B),
            SlotState {
                priority: 15,
                tries: 6,
                successful: false
            }
        );
        for left in (0..6).rev() {
            assert_eq!(c.boot(), Some(Slot::B));
            assert_eq!(c.slot_state(Slot::B).tries, left);
        }
        assert_eq!(c.boot(), Some(Slot::A));
        assert_eq!(c.suffix_slot(), Some(Slot::A));
        c.set_active(Slot::B, Some(2)).unwrap();
        c.boot();
        c.mark_good(Slot::B).unwrap();
        assert_eq!(
            c.slot_state(Slot::B),
            SlotState {
                priority: 15,
                tries: 1,
                successful: true
            }
        );
        for _ in 0..5 {
            assert_eq!(c.boot(), Some(Slot::B));
        }
    }
}
