//! What the agent keeps about each slot in its state directory: the version installed
//! there, its dm-verity root and the kernel argument that maps it. Each record is
//! replaced atomically.

use std::path::{Path, PathBuf};

use keel_bootflags::Slot;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The record of one slot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SlotRecord {
    /// The version installed.
    pub version: String,
    /// The dm-verity root hash, hex, if the slot has a tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_hash: Option<String>,
    /// The `dm-mod.create=` argument that maps the slot, if it has a tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_argument: Option<String>,
    /// The bytes of data the tree covers, if the slot has a tree: with the root, what
    /// reads the slot's own tree back as the index of its blocks (a block store install).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u64>,
}

/// Records are small; anything larger is not one of ours.
const MAX_RECORD: u64 = 64 << 10;

pub(crate) fn path(dir: &Path, slot: Slot) -> PathBuf {
    dir.join(format!("slot-{}.json", slot.letter()))
}

pub(crate) fn resume_path(dir: &Path, slot: Slot) -> PathBuf {
    dir.join(format!("resume-{}", slot.letter()))
}

/// A block store install's resume record: a file of its own, since a store install
/// replaces only a store record (a payload's record left by an earlier install is not one).
pub(crate) fn store_resume_path(dir: &Path, slot: Slot) -> PathBuf {
    dir.join(format!("store-resume-{}", slot.letter()))
}

/// Which images of a slot set an install wrote and verified, for the payload it names: a
/// run after an interruption skips them.
pub(crate) fn set_path(dir: &Path, slot: Slot) -> PathBuf {
    dir.join(format!("set-{}.json", slot.letter()))
}

/// The images of a slot set in place.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SetRecord {
    /// The payload's identity, hex.
    pub(crate) payload: String,
    /// The images written and verified, by name.
    pub(crate) done: Vec<String>,
}

/// The images of `slot`'s set the record says are in place from the payload `id` (none for
/// another payload, with no record, or with one that cannot be read: the record only
/// saves work, and each image it names is checked again before it is skipped).
pub(crate) fn read_set(dir: &Path, slot: Slot, id: &[u8; 32]) -> Vec<String> {
    let rec: Option<SetRecord> = read_json(&set_path(dir, slot)).ok().flatten();
    rec.filter(|r| r.payload == hex::encode(id))
        .map(|r| r.done)
        .unwrap_or_default()
}

pub(crate) fn write_set(dir: &Path, slot: Slot, id: &[u8; 32], done: &[String]) -> Result<()> {
    let r = SetRecord {
        payload: hex::encode(id),
        done: done.to_vec(),
    };
    let text = serde_json::to_vec(&r)
        .map_err(|e| Error::io("encoding a set record", std::io::Error::other(e)))?;
    replace(&set_path(dir, slot), &text)
}

pub(crate) fn error_path(dir: &Path) -> PathBuf {
    dir.join("last-error")
}

/// The record of `slot`, if there is one.
pub(crate) fn read(dir: &Path, slot: Slot) -> Result<Option<SlotRecord>> {
    read_json(&path(dir, slot))
}

fn read_json<T: for<'de> Deserialize<'de>>(p: &Path) -> Result<Option<T>> {
    let text = match read_small(p)? {
        Some(t) => t,
        None => return Ok(None),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::io(format!("reading {}", p.display()), std::io::Error::other(e)))
}

/// [`read_small`], with bytes that are not UTF-8 replaced rather than refused (a machine id
/// is what it is; the rollout hashes it).
pub(crate) fn read_small_lossy(p: &Path) -> Result<Option<String>> {
    read_small_bytes(p).map(|b| b.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// A small text file, if it is there; anything but a regular file (a FIFO, which would
/// block, a device) is an error, not a read.
pub(crate) fn read_small(p: &Path) -> Result<Option<String>> {
    read_small_bytes(p)?
        .map(|b| {
            String::from_utf8(b).map_err(|e| {
                Error::io(
                    format!("reading {}", p.display()),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            })
        })
        .transpose()
}

/// [`read_small`]'s bytes: a regular file of at most [`MAX_RECORD`] bytes.
fn read_small_bytes(p: &Path) -> Result<Option<Vec<u8>>> {
    match keel_io::read_bounded(p, MAX_RECORD) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
    }
}

pub(crate) fn write(dir: &Path, slot: Slot, r: &SlotRecord) -> Result<()> {
    let text = serde_json::to_vec_pretty(r)
        .map_err(|e| Error::io("encoding a slot record", std::io::Error::other(e)))?;
    replace(&path(dir, slot), &text)
}

pub(crate) fn replace(p: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)
            .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
    }
    keel_io::replace_file(p, bytes).map_err(|e| Error::io(format!("writing {}", p.display()), e))
}

pub(crate) fn remove(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", p.display()), e)),
    }
}
