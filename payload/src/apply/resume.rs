//! The resume record: where a run stopped, tied to the payload and the target, and the
//! check that the target still holds what the record says was written.

use std::io::{self, Read};
use std::path::Path;

use keel_verity::{ReadAt, StreamTree};

use super::read_extents;
use crate::error::{Error, Result};
use crate::format::{sha256, Manifest, OpType, Operation};

/// Why a resume record was not used and the apply started from the first operation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordDiscarded {
    /// The record does not parse or its checksum fails.
    Unreadable,
    /// It belongs to another payload.
    OtherPayload,
    /// It belongs to another target (device and inode, or size).
    OtherTarget,
    /// The payload was resumed this many times already.
    ResumesSpent(u32),
    /// The blocks the record says were written are not on the target any more.
    TargetChanged,
}

impl std::fmt::Display for RecordDiscarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordDiscarded::Unreadable => f.write_str("the resume record is damaged"),
            RecordDiscarded::OtherPayload => {
                f.write_str("the resume record belongs to another payload")
            }
            RecordDiscarded::OtherTarget => {
                f.write_str("the resume record belongs to another target")
            }
            RecordDiscarded::ResumesSpent(n) => {
                write!(f, "the payload was resumed {n} times already")
            }
            RecordDiscarded::TargetChanged => f.write_str(
                "the target no longer holds what the operations before the resume point wrote",
            ),
        }
    }
}

const STATE_MAGIC: &[u8; 8] = b"KEELRSM2";
const STATE_SIZE: usize = 8 + 32 + 8 + 8 + 8 + 8 + 4 + 32;

/// The resume record (little-endian, then a sha256 of those bytes):
///
/// ```text
/// 0   8  magic "KEELRSM2"
/// 8   32 payload id (sha256 of the signed header and manifest)
/// 40  8  target device, 48 8 target inode (0 when the target is not a file)
/// 56  8  target size
/// 64  8  next operation
/// 72  4  resumes so far
/// 76  32 written digest: what operations 0..next wrote (see `chain_digest`)
/// ```
///
/// The payload offset is not stored: it follows from the operation index and the
/// signed manifest, so a damaged or forged record cannot make the applier skip data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct State {
    pub(super) payload_id: [u8; 32],
    pub(super) target: TargetId,
    pub(super) next_op: u64,
    pub(super) resumes: u32,
    pub(super) written: [u8; 32],
}

/// The target a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(super) struct TargetId {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) size: u64,
}

impl State {
    fn to_bytes(self) -> Vec<u8> {
        let mut b = Vec::with_capacity(STATE_SIZE + 32);
        b.extend_from_slice(STATE_MAGIC);
        b.extend_from_slice(&self.payload_id);
        b.extend_from_slice(&self.target.dev.to_le_bytes());
        b.extend_from_slice(&self.target.ino.to_le_bytes());
        b.extend_from_slice(&self.target.size.to_le_bytes());
        b.extend_from_slice(&self.next_op.to_le_bytes());
        b.extend_from_slice(&self.resumes.to_le_bytes());
        b.extend_from_slice(&self.written);
        let h = sha256(&b);
        b.extend_from_slice(&h);
        b
    }

    /// The record at `path`: `Ok(None)` when there is none, `Err` when one is there but
    /// does not parse (it is then ignored, never trusted). At most one record's bytes
    /// are read, whatever the file is.
    pub(crate) fn read(path: &Path) -> std::result::Result<Option<State>, ()> {
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(_) => return Err(()),
        };
        let mut b = Vec::new();
        f.take(STATE_SIZE as u64 + 33)
            .read_to_end(&mut b)
            .map_err(|_| ())?;
        State::parse(&b).map(Some).ok_or(())
    }

    /// Decode a record's bytes; `None` unless they are exactly one record that checks.
    pub(crate) fn parse(b: &[u8]) -> Option<State> {
        if b.len() != STATE_SIZE + 32
            || &b[..8] != STATE_MAGIC
            || sha256(&b[..STATE_SIZE])[..] != b[STATE_SIZE..]
        {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[8..40]);
        let mut written = [0u8; 32];
        written.copy_from_slice(&b[76..108]);
        Some(State {
            payload_id: id,
            target: TargetId {
                dev: u64_at(40),
                ino: u64_at(48),
                size: u64_at(56),
            },
            next_op: u64_at(64),
            resumes: u32::from_le_bytes(b[72..76].try_into().unwrap_or_default()),
            written,
        })
    }

    pub(super) fn write(self, path: &Path) -> Result<()> {
        // Written beside it and renamed over it, never through a link planted there.
        keel_io::replace_file(path, &self.to_bytes())
            .map_err(|e| Error::io("replacing the resume record", e))
    }

    pub(super) fn remove(path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => {
                sync_parent(path);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!("removing the resume record {}", path.display()),
                e,
            )),
        }
    }
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// The resume record can live at `path`: a regular file or nothing there yet, in a
/// directory that exists. Checked before anything is written, so a wrong `state` is an
/// error at once, not after the whole image at the first checkpoint.
pub(super) fn check_place(path: &Path) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::io(
            format!("the resume record {}", path.display()),
            io::Error::other(why.to_string()),
        ))
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() => return bad("is there and is not a regular file"),
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::io(
                format!("the resume record {}", path.display()),
                e,
            ))
        }
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    match parent.map(std::fs::metadata) {
        Some(Ok(m)) if !m.is_dir() => bad("its directory is not a directory"),
        Some(Err(e)) => Err(Error::io(
            format!("the directory of the resume record {}", path.display()),
            e,
        )),
        _ => Ok(()),
    }
}

/// Most resumes of one payload before the applier starts over.
pub const MAX_RESUMES: u32 = 10;

/// Chain the digest of what operation `i` left in the target: `bytes` is the operation's
/// output laid out over its target extents (full blocks; nothing past the image's end
/// counts), `None` for a ZERO operation.
pub(super) fn chain_digest(
    prev: &[u8; 32],
    i: usize,
    op: &Operation,
    bytes: Option<&[u8]>,
    size: u64,
) -> [u8; 32] {
    let mut h = ChainDigest::new(prev, i);
    match bytes {
        Some(bytes) => {
            for (_, at, keep) in super::placed(op, size) {
                h.update(&bytes[at..at + keep]);
            }
        }
        None => h.zero(),
    }
    h.finish()
}

/// [`chain_digest`] given the bytes an operation left in the target piece by piece, in
/// their order in its output.
pub(super) struct ChainDigest(sha2::Sha256);

impl ChainDigest {
    pub(super) fn new(prev: &[u8; 32], i: usize) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(prev);
        h.update((i as u64).to_le_bytes());
        ChainDigest(h)
    }

    pub(super) fn update(&mut self, kept: &[u8]) {
        sha2::Digest::update(&mut self.0, kept);
    }

    fn zero(&mut self) {
        sha2::Digest::update(&mut self.0, b"zero");
    }

    pub(super) fn finish(self) -> [u8; 32] {
        sha2::Digest::finalize(self.0).into()
    }
}

/// Whether the target still holds what operations `0..next` wrote, as chained in
/// `expected`. Reads each operation's target blocks once (one operation's bytes at a time).
pub(super) fn check_written<T: ReadAt + ?Sized>(
    target: &T,
    ops: &[Operation],
    size: u64,
    expected: &[u8; 32],
    mut stream: Option<&mut StreamTree>,
) -> Result<bool> {
    let mut d = [0u8; 32];
    let mut buf = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = read_extents(target, &op.target, size, &mut buf) {
            return match e.kind() {
                io::ErrorKind::UnexpectedEof => Ok(false),
                _ => Err(Error::io("reading the target to check a resume", e)),
            };
        }
        let out = match op.op {
            OpType::Zero if buf.iter().any(|&b| b != 0) => return Ok(false),
            OpType::Zero => None,
            _ => Some(&buf[..]),
        };
        d = chain_digest(&d, i, op, out, size);
        if let Some(s) = stream.as_deref_mut() {
            super::feed(s, op, out, size);
        }
    }
    Ok(d == *expected)
}

/// Decide where to start: a record of this payload and target whose promised blocks are
/// still on the target, or operation 0. The raised resume count is made durable before
/// anything else happens, so a resume that keeps failing runs out.
pub(super) fn resume_point<T: ReadAt + ?Sized>(
    path: &Path,
    fresh: State,
    manifest: &Manifest,
    target: &T,
    max_resumes: u32,
    stream: Option<&mut StreamTree>,
) -> Result<(State, Option<RecordDiscarded>)> {
    let s = match State::read(path) {
        Ok(None) => return Ok((fresh, None)),
        Err(()) => return Ok((fresh, Some(RecordDiscarded::Unreadable))),
        Ok(Some(s)) => s,
    };
    let discard = |why| -> Result<(State, Option<RecordDiscarded>)> {
        State::remove(path)?;
        Ok((fresh, Some(why)))
    };
    if s.payload_id != fresh.payload_id {
        return discard(RecordDiscarded::OtherPayload);
    }
    if s.target != fresh.target {
        return discard(RecordDiscarded::OtherTarget);
    }
    let next = s.next_op as usize;
    if next > manifest.operations.len() {
        return discard(RecordDiscarded::Unreadable);
    }
    if s.resumes >= max_resumes {
        return discard(RecordDiscarded::ResumesSpent(s.resumes));
    }
    let s = State {
        resumes: s.resumes + 1,
        ..s
    };
    s.write(path)?;
    if check_written(
        target,
        &manifest.operations[..next],
        manifest.target.size,
        &s.written,
        stream,
    )? {
        Ok((s, None))
    } else {
        discard(RecordDiscarded::TargetChanged)
    }
}
