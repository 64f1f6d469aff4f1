//! keel-io: the bottom floor of Keel. Everything that reads or writes a disk goes through
//! these few types, so the crates above compose without adapters.
//!
//! - [`ReadAt`] / [`WriteAt`]: positioned I/O over files, block devices and memory,
//!   shareable between threads for reading; [`WriteAt::write_zeros`] lets the kernel zero
//!   ranges; [`ReadAt::logical_sector_size`] reports a block device's sector size.
//! - [`Region`]: a window of a device (a slot partition of a disk), itself a device;
//!   [`Shared`] lets several regions and a partition table write one device.
//! - [`open_device`], [`require_size`], [`same_file`], [`replace_file`],
//!   [`replace_file_private`]: opening only
//!   regular files and block devices, size checks, "is this the running slot", and
//!   crash-safe replacement of small files.
//! - [`Progress`] and [`Cancel`]: long work reports bytes done and can be stopped.
//! - [`Threads`]: how many workers a long job may use, the same type in every crate.
//! - [`Cursor`]: a bounded little-endian reader for on-disk structures, whose errors name
//!   the field and its byte offset.
//! - [`Mapped`]: a whole image as `&[u8]` backed by the page cache, for tools that read
//!   images at random (a delta generator) without holding them in their own memory;
//!   [`known_zeros`] tells a slice of it where a sparse file's holes are.
//! - [`sys`]: the block-device ioctls; with [`Mapped`], the only `unsafe` code for I/O in
//!   Keel.
//!
//! ```
//! use keel_io::{ReadAt, Region, WriteAt};
//!
//! // A 1 MiB "disk" in memory; slot B is the window from 256 KiB, 128 KiB long.
//! let mut disk = vec![0u8; 1 << 20];
//! let mut slot_b = Region::new(&mut disk, 256 << 10, 128 << 10)?;
//! slot_b.write_all_at(b"v2", 0)?;
//! assert!(slot_b.write_all_at(b"x", 128 << 10).is_err()); // nothing past the slot
//! assert_eq!(slot_b.size()?, 128 << 10);
//! assert_eq!(&disk[256 << 10..(256 << 10) + 2], b"v2");
//! # Ok::<(), std::io::Error>(())
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cursor;
mod device;
mod error;
mod file;
mod map;
mod progress;
mod region;
mod shared;
pub mod sys;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod threads;

pub use cursor::{Cursor, CursorError};
pub use device::{page_aligned, ReadAt, WriteAt};
pub use error::IoError;
pub use file::{
    open_device, read_bounded, replace_file, replace_file_private, require_size, same_file,
    DeviceKind, FileId, FileLock,
};
pub use map::{known_zeros, will_need, Mapped};
pub use progress::{Cancel, Cancelled, Progress};
pub use region::Region;
pub use shared::Shared;
pub use threads::Threads;
