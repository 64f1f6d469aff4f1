//! keel-partition: GPT A/B slots on disks and image files, boot-flag updates that survive
//! a power cut, repair, and A/B layout creation for image builders.
//!
//! ```
//! use keel_partition::{create_layout, AbDisk, GptDisk, Layout, SlotSelector};
//! use keel_bootflags::{PriorityPolicy, Slot};
//!
//! // An image builder lays out a 300 MiB disk: ESP, USR-A (good) and USR-B.
//! let mut image = vec![0u8; 300 << 20];
//! create_layout(&mut image, &Layout::flatcar(100 << 20))?;
//!
//! // An update agent writes B, arms it, and the boot loader tries it.
//! let disk = GptDisk::open(image, None)?;
//! let mut ab = AbDisk::new(disk, &SlotSelector::Auto, PriorityPolicy::Flatcar)?;
//! ab.mark_bad(Slot::B)?;
//! ab.set_active(Slot::B, Some(1))?;
//! assert_eq!(ab.boot()?, Some(Slot::B));
//! assert_eq!(ab.boot()?, Some(Slot::A)); // B never came up: back to A.
//! # Ok::<(), keel_partition::Error>(())
//! ```
//!
//! Keel parses the table itself rather than through the `gpt` crate: that crate
//! renumbers partitions on write, rewrites both entry arrays before either header, does
//! not fall back to the backup and panics on entry sizes other than 128. Here a damaged
//! primary is read from the backup, partition numbers never change, and an attribute
//! change writes the copy that is not in force (entries, header, sync) before the one in
//! force (entries, header, sync): the backup first on a healthy disk, the primary first
//! when only the backup is valid. A power cut at any write leaves a valid table with the
//! old or the new state. The `gpt` crate serves as a second, independent implementation
//! in the tests (`tests/gpt_crate.rs`): it reads what Keel lays out and updates, field for
//! field, and Keel reads and updates a table it writes, at 512 and 4096-byte sectors.

mod create;
mod disk;
mod error;
mod file;
pub mod gpt;
mod guid;
mod slots;

pub use create::{
    create_layout, existing_table, protective_mbr, ExtraPartition, Layout, ALIGN, ENTRIES,
};
pub use disk::{CopyState, GptDisk, Health};
pub use error::{Error, LayoutProblem, Result};
pub use file::{open_disk, reread_partitions};
pub use guid::{types, Guid};
pub use keel_io::{ReadAt, Region, WriteAt};
pub use slots::{find_slots, prioritize_partition, AbDisk, SlotInfo, SlotSelector};
