//! keel-bootflags: one A/B boot-state model over every boot loader's encoding.
//!
//! Boot loaders keep A/B state in different places and with different rules. This crate
//! has the one model (slots with priority, tries remaining and successful, and the
//! operations of [`AbControl`]), each boot loader's exact selection rules, and each
//! encoding as a parser and serializer that checks every field and keeps every other bit:
//!
//! | store | encoding | rules |
//! |---|---|---|
//! | GPT attributes (ChromeOS, Flatcar) | [`gpt::GptAttributes`] | [`PrioritySlots`] with [`PriorityPolicy`] |
//! | Android misc | [`android::BootloaderControl`] | AOSP boot_control HAL, U-Boot `android_ab` |
//! | GRUB environment | [`grubenv::GrubEnv`] | [`rauc::RaucGrub`] |
//! | U-Boot environment | [`ubootenv::UbootEnv`] | [`rauc::RaucUboot`] |
//! | systemd-boot entries | [`bls::EntryName`] | [`bls::SystemdBoot`] |
//!
//! For firmware, [`fixed`] has allocation-free, panic-free entry points over the Android,
//! U-Boot and GRUB stores (what keel-bootflags-ffi gives C boot loaders).
//!
//! Pure logic, `no_std` with `alloc`; the `std` feature (on by default) adds file I/O
//! that writes each change in one crash-safe step ([`store`]).
//!
//! ```
//! use keel_bootflags::{AbControl, PriorityPolicy, PrioritySlots, Slot, SlotState};
//!
//! // A good, B freshly written: arm B with one try, the Flatcar way.
//! let good = SlotState { priority: 1, tries: 0, successful: true };
//! let mut gpt = PrioritySlots::new(vec![good, SlotState::default()], PriorityPolicy::Flatcar)?;
//! gpt.set_active(Slot::B, Some(1))?;
//! assert_eq!(gpt.boot(), Some(Slot::B)); // the boot loader tries B once...
//! assert_eq!(gpt.boot(), Some(Slot::A)); // ...B never marked itself good: back to A.
//! # Ok::<(), keel_bootflags::Error>(())
//! ```
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod android;
pub mod bls;
#[cfg(feature = "std")]
#[cfg_attr(docsrs, doc(cfg(feature = "std")))]
pub mod blsdir;
mod error;
pub mod fixed;
pub mod gpt;
pub mod grubenv;
mod model;
pub mod rauc;
#[cfg(feature = "std")]
#[cfg_attr(docsrs, doc(cfg(feature = "std")))]
pub mod spec;
#[cfg(feature = "std")]
#[cfg_attr(docsrs, doc(cfg(feature = "std")))]
pub mod store;
pub mod ubootenv;

pub use error::{Error, Result};
pub use model::{
    prioritize, AbControl, BootControl, PriorityPolicy, PrioritySlots, Slot, SlotState,
    MAX_PRIORITY, MAX_SLOTS, MAX_TRIES,
};
#[cfg(feature = "std")]
pub use spec::{BackendKind, BackendSpec};
