//! File system readers: just enough of each format to find every regular file's data in
//! an image (and, for the compressed ones, to decompress it), so the generator can pair a
//! changed file with its old version. Read-only, bounds-checked, never trusted: a damaged
//! or hostile image gives fewer files (or none), never a panic or an unbounded allocation.
//!
//! - [`ext4`]: directories and extent trees (4 KiB blocks).
//! - [`erofs`]: inodes, uncompressed layouts, directories, and lz4 pclusters.
//! - [`squashfs`]: version 4.0 inodes, directories, data and fragment blocks.
//!
//! These modules use only [`crate::codec`] (to decompress blocks); the crate root
//! re-exports them as `keel_payload::{ext4, erofs, squashfs}`.

pub mod erofs;
pub mod ext4;
pub mod squashfs;
