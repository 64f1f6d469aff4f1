//! The GPT partition attribute field as ChromeOS firmware, Flatcar's GRUB and `cgpt` use it.
//!
//! | bits | meaning |
//! |---|---|
//! | 0 | required (UEFI) |
//! | 1 | no block-IO protocol (UEFI) |
//! | 2 | legacy BIOS bootable |
//! | 48-51 | priority 0..15 |
//! | 52-55 | tries remaining 0..15 |
//! | 56 | successful |
//! | 60 | read-only (Discoverable Partitions Specification) |
//! | 63 | no-auto (Discoverable Partitions Specification) |
//!
//! The field is the 8 little-endian bytes at offset 48 of a partition entry. Only bits
//! 48-56 are changed; every other bit is kept as it was.

use crate::model::SlotState;

const PRIORITY_SHIFT: u32 = 48;
const TRIES_SHIFT: u32 = 52;
const SUCCESSFUL_BIT: u64 = 1 << 56;
/// The bits this module owns (48-56).
pub const BOOT_BITS: u64 = 0x1ff << PRIORITY_SHIFT;

/// A partition's 64-bit attribute field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GptAttributes(pub u64);

impl GptAttributes {
    /// Decode the boot state (every value of bits 48-56 is valid).
    pub fn state(self) -> SlotState {
        SlotState {
            priority: ((self.0 >> PRIORITY_SHIFT) & 0xf) as u8,
            tries: ((self.0 >> TRIES_SHIFT) & 0xf) as u8,
            successful: self.0 & SUCCESSFUL_BIT != 0,
        }
    }

    /// The same attributes with bits 48-56 replaced by `state` (priority and tries are
    /// clamped to 15); all other bits kept.
    pub fn with_state(self, state: SlotState) -> GptAttributes {
        let bits = (u64::from(state.priority.min(15)) << PRIORITY_SHIFT)
            | (u64::from(state.tries.min(15)) << TRIES_SHIFT)
            | if state.successful { SUCCESSFUL_BIT } else { 0 };
        GptAttributes((self.0 & !BOOT_BITS) | bits)
    }

    /// From the 8 bytes of the on-disk field.
    pub fn from_le_bytes(b: [u8; 8]) -> Self {
        GptAttributes(u64::from_le_bytes(b))
    }

    /// The 8 bytes of the on-disk field.
    pub fn to_le_bytes(self) -> [u8; 8] {
        self.0.to_le_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_from_cgpt() {
        // P=2 T=0 S=1 and P=1 T=15 S=0, as cgpt writes them.
        let a = GptAttributes(0x0102_0000_0000_0000);
        assert_eq!(
            a.state(),
            SlotState {
                priority: 2,
                tries: 0,
                successful: true
            }
        );
        let b = GptAttributes(0x00f1_0000_0000_0000);
        assert_eq!(
            b.state(),
            SlotState {
                priority: 1,
                tries: 15,
                successful: false
            }
        );
        assert_eq!(GptAttributes(0).with_state(b.state()), b);
    }

    #[test]
    fn other_bits_are_kept() {
        let others = 0b111 | (1 << 60) | (1 << 63) | (1 << 57) | (1 << 30);
        let a = GptAttributes(others | 0x0102_0000_0000_0000);
        let b = a.with_state(SlotState {
            priority: 15,
            tries: 3,
            successful: false,
        });
        assert_eq!(b.0 & !BOOT_BITS, others);
        assert_eq!(
            b.state(),
            SlotState {
                priority: 15,
                tries: 3,
                successful: false
            }
        );
        assert_eq!(GptAttributes::from_le_bytes(b.to_le_bytes()), b);
    }
}
