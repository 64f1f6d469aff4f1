//! keel-bootflags: the A/B boot-state model (slot priority, tries remaining, successful),
//! the boot loaders' selection policies, and their on-disk encodings (GPT attribute bits,
//! Android misc `bootloader_control`, GRUB environment block, U-Boot environment,
//! systemd-boot boot counters).
//!
//! Not built yet: this crate is an empty placeholder so the workspace layout is in
//! place. The work is tracked in the project's keel-bootflags issue.
#![no_std]
