//! Applying a payload: read once, front to back, from any reader; memory bounded by one
//! operation; resumable from a small state record.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use keel_verity::{HashTree, KeyId, Keyring, Progress, ReadAt, RootDescriptor, WriteAt};

use crate::error::{Error, Result};
use crate::format::{
    bspatch, image_digest, parse_manifest, sha256, unpack_manifest, version_cmp, Extent, Header,
    Manifest, OpType, BLOCK_SIZE, HEADER_SIZE, SIGNATURE_SIZE,
};

/// How to apply.
#[derive(Clone, Copy, Default)]
pub struct ApplyOptions<'a> {
    /// The keys that may sign payloads.
    pub keyring: Option<&'a Keyring>,
    /// This system's compatible string; `None` skips the check.
    pub compatible: Option<&'a str>,
    /// The installed version; a payload for an older one is refused.
    pub installed_version: Option<&'a str>,
    /// Accept a downgrade.
    pub allow_downgrade: bool,
    /// Where to keep the resume record; `None` for no resume.
    pub state: Option<&'a Path>,
    /// Receives target bytes written so far.
    pub progress: Option<&'a dyn Progress>,
    /// Checkpoint after this many target bytes (default 64 MiB).
    pub checkpoint_bytes: Option<u64>,
}

impl std::fmt::Debug for ApplyOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyOptions")
            .field("compatible", &self.compatible)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// What an apply did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The manifest.
    pub manifest: Manifest,
    /// The operation it started from (non-zero after a resume).
    pub resumed_at: usize,
}

const STATE_MAGIC: &[u8; 8] = b"KEELRSM1";
const STATE_SIZE: usize = 8 + 32 + 8 + 8 + 4;

/// The resume record: which payload, the next operation and its data offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    payload_id: [u8; 32],
    next_op: u64,
    data_offset: u64,
    resumes: u32,
}

impl State {
    fn to_bytes(self) -> Vec<u8> {
        let mut b = Vec::with_capacity(STATE_SIZE + 32);
        b.extend_from_slice(STATE_MAGIC);
        b.extend_from_slice(&self.payload_id);
        b.extend_from_slice(&self.next_op.to_le_bytes());
        b.extend_from_slice(&self.data_offset.to_le_bytes());
        b.extend_from_slice(&self.resumes.to_le_bytes());
        let h = sha256(&b);
        b.extend_from_slice(&h);
        b
    }

    /// A record that does not parse or check is ignored, never trusted.
    fn read(path: &Path) -> Option<State> {
        let b = std::fs::read(path).ok()?;
        if b.len() != STATE_SIZE + 32
            || &b[..8] != STATE_MAGIC
            || sha256(&b[..STATE_SIZE])[..] != b[STATE_SIZE..]
        {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[8..40]);
        Some(State {
            payload_id: id,
            next_op: u64_at(40),
            data_offset: u64_at(48),
            resumes: u32::from_le_bytes(b[56..60].try_into().unwrap_or_default()),
        })
    }

    fn write(self, path: &Path) -> Result<()> {
        let tmp: PathBuf = path.with_extension("keel-tmp");
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        io::Write::write_all(&mut f, &self.to_bytes())
            .map_err(|e| Error::io("writing the resume record", e))?;
        f.sync_all()
            .map_err(|e| Error::io("syncing the resume record", e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io("replacing the resume record", e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

/// Most resumes of one payload before the applier starts over.
pub const MAX_RESUMES: u32 = 10;

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Truncated(format!("ends inside the {what}")),
        _ => Error::io(format!("reading the {what}"), e),
    })
}

fn read_vec<R: Read>(r: &mut R, len: u64, what: &str) -> Result<Vec<u8>> {
    // Grows only as bytes arrive: a lying length cannot make a large allocation.
    let mut v = Vec::new();
    r.take(len)
        .read_to_end(&mut v)
        .map_err(|e| Error::io(format!("reading the {what}"), e))?;
    if (v.len() as u64) < len {
        return Err(Error::Truncated(format!(
            "ends inside the {what} ({} of {len} bytes)",
            v.len()
        )));
    }
    Ok(v)
}

/// Read, check the signature of, and parse a payload's header and manifest. Nothing of the
/// manifest is parsed before its signature is verified.
pub fn read_manifest<R: Read>(
    r: &mut R,
    keyring: &Keyring,
) -> Result<(Header, Manifest, [u8; 32])> {
    let mut hb = [0u8; HEADER_SIZE];
    read_exact(r, &mut hb, "header")?;
    let header = Header::parse(&hb)?;
    let m = read_vec(r, header.manifest_len, "manifest")?;
    let mut sig = [0u8; SIGNATURE_SIZE];
    read_exact(r, &mut sig, "signature")?;
    let key = keyring.get(&KeyId(header.key_id)).ok_or_else(|| {
        Error::Signature(format!("key {} is not trusted", hex::encode(header.key_id)))
    })?;
    let mut signed = hb.to_vec();
    signed.extend_from_slice(&m);
    key.verify_raw(&signed, &sig)
        .map_err(|e| Error::Signature(e.to_string()))?;
    let manifest = parse_manifest(&unpack_manifest(&m)?, header.data_len)?;
    Ok((header, manifest, sha256(&signed)))
}

fn hash_prefix<S: ReadAt + ?Sized>(dev: &S, size: u64, what: &str) -> Result<[u8; 32]> {
    let have = dev
        .size()
        .map_err(|e| Error::io(format!("{what} size"), e))?;
    if have < size {
        return Err(Error::TargetMismatch(format!(
            "{what} holds {have} bytes, the image has {size}"
        )));
    }
    image_digest(dev, size).map_err(|e| Error::io(format!("reading the {what}"), e))
}

fn read_extents<S: ReadAt + ?Sized>(src: &S, ext: &[Extent], size: u64) -> Result<Vec<u8>> {
    let total: u64 = ext.iter().map(|e| e.blocks * BLOCK_SIZE).sum();
    let mut out = vec![0u8; total as usize];
    let mut at = 0usize;
    for e in ext {
        let off = e.start * BLOCK_SIZE;
        let len = (e.blocks * BLOCK_SIZE) as usize;
        // One read per extent; the image's last block may be partial and reads as zeros.
        let n = (size.saturating_sub(off)).min(len as u64) as usize;
        src.read_exact_at(&mut out[at..at + n], off)
            .map_err(|e| Error::io("reading source blocks", e))?;
        at += len;
    }
    Ok(out)
}

fn decode(op: OpType, blob: &[u8], reference: &[u8], expected: usize) -> io::Result<Vec<u8>> {
    if op == OpType::Bsdiff {
        return bspatch(reference, zstd::stream::read::Decoder::new(blob)?, expected);
    }
    let mut out = Vec::with_capacity(expected);
    let mut dec: Box<dyn Read> = match op {
        OpType::Replace => Box::new(zstd::stream::read::Decoder::new(blob)?),
        _ => Box::new(zstd::stream::read::Decoder::with_ref_prefix(
            io::BufReader::new(blob),
            reference,
        )?),
    };
    // One byte more than expected exposes a blob that decodes too long.
    (&mut dec).take(expected as u64 + 1).read_to_end(&mut out)?;
    if out.len() != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("decoded {} bytes, expected {expected}", out.len()),
        ));
    }
    Ok(out)
}

/// Apply `payload` (read once, front to back) to `target`, reading `source` (required for a
/// delta payload). On success the target holds exactly the target image, checked by its
/// digest (and its dm-verity root when the manifest has one).
pub fn apply<R, S, T>(
    mut payload: R,
    source: Option<&S>,
    target: &mut T,
    opts: &ApplyOptions<'_>,
) -> Result<Applied>
where
    R: Read,
    S: ReadAt + ?Sized,
    T: ReadAt + WriteAt,
{
    let keyring = opts
        .keyring
        .ok_or_else(|| Error::Signature("no keyring given".into()))?;
    let (_header, manifest, payload_id) = read_manifest(&mut payload, keyring)?;
    if let Some(system) = opts.compatible {
        if system != manifest.compatible {
            return Err(Error::Incompatible {
                payload: manifest.compatible.clone(),
                system: system.to_string(),
            });
        }
    }
    if let Some(installed) = opts.installed_version {
        if !opts.allow_downgrade
            && version_cmp(&manifest.version, installed) == std::cmp::Ordering::Less
        {
            return Err(Error::Downgrade {
                installed: installed.to_string(),
                payload: manifest.version.clone(),
            });
        }
    }
    if let Some(id) = manifest.source {
        let src = source.ok_or_else(|| {
            Error::SourceModified("a delta payload needs its source image".into())
        })?;
        let h = hash_prefix(src, id.size, "source")
            .map_err(|e| Error::SourceModified(e.to_string()))?;
        if h != id.digest {
            return Err(Error::SourceModified(format!(
                "the source's digest is {}, the payload needs {}",
                hex::encode(h),
                hex::encode(id.digest)
            )));
        }
    }
    let target_size = manifest.target.size;

    // Resume where a previous run of this payload left off.
    let mut state = State {
        payload_id,
        next_op: 0,
        data_offset: 0,
        resumes: 0,
    };
    if let Some(path) = opts.state {
        if let Some(s) =
            State::read(path).filter(|s| s.payload_id == payload_id && s.resumes < MAX_RESUMES)
        {
            state = State {
                resumes: s.resumes + 1,
                ..s
            };
        }
    }
    let resumed_at = state.next_op as usize;
    if state.data_offset > 0 {
        let skipped = io::copy(&mut (&mut payload).take(state.data_offset), &mut io::sink())
            .map_err(|e| Error::io("skipping applied data", e))?;
        if skipped < state.data_offset {
            return Err(Error::Truncated("ends before the resume point".into()));
        }
    }
    let total: u64 = manifest
        .operations
        .iter()
        .map(|o| o.target_blocks() * BLOCK_SIZE)
        .sum();
    let mut done: u64 = manifest.operations[..resumed_at.min(manifest.operations.len())]
        .iter()
        .map(|o| o.target_blocks() * BLOCK_SIZE)
        .sum();
    let checkpoint = opts.checkpoint_bytes.unwrap_or(64 << 20).max(1);
    let mut since_checkpoint = 0u64;
    let mut data_pos = state.data_offset;
    let empty: &[u8] = &[];

    for (i, op) in manifest.operations.iter().enumerate().skip(resumed_at) {
        let blob = read_vec(&mut payload, op.data_length, "operation data")?;
        if op.data_length > 0 && sha256(&blob) != op.data_sha256 {
            return Err(Error::BlobMismatch { op: i });
        }
        let src_bytes = match (op.op, op.source.is_empty(), source, manifest.source) {
            (_, true, _, _) => Vec::new(),
            (OpType::Chain, false, _, _) => {
                // Blocks earlier operations wrote (durable before any resume point).
                let b = read_extents(&*target, &op.source, target_size)?;
                if sha256(&b) != op.source_sha256 {
                    return Err(Error::TargetMismatch(format!(
                        "operation {i}: the target blocks it builds on changed"
                    )));
                }
                b
            }
            (_, false, Some(src), Some(id)) => {
                let b = read_extents(src, &op.source, id.size)?;
                if sha256(&b) != op.source_sha256 {
                    return Err(Error::SourceModified(format!(
                        "operation {i}: its source blocks changed"
                    )));
                }
                b
            }
            _ => {
                return Err(Error::SourceModified(format!(
                    "operation {i} reads a source that is not there"
                )))
            }
        };
        let len = (op.target_blocks() * BLOCK_SIZE) as usize;
        if op.op == OpType::Zero {
            // The kernel zeroes the range (no copying zeros in) where it can.
            for e in &op.target {
                let off = e.start * BLOCK_SIZE;
                let keep = (target_size.saturating_sub(off)).min(e.blocks * BLOCK_SIZE);
                target
                    .write_zeros(off, keep)
                    .map_err(|e| Error::io(format!("operation {i}: zeroing the target"), e))?;
            }
        }
        let out = match op.op {
            OpType::Zero => Vec::new(),
            OpType::Copy => src_bytes,
            OpType::Replace | OpType::Patch | OpType::Chain | OpType::Bsdiff => {
                let reference = if op.op != OpType::Replace {
                    &src_bytes[..]
                } else {
                    empty
                };
                decode(op.op, &blob, reference, len)
                    .map_err(|e| Error::Invalid(format!("operation {i}: {e}")))?
            }
        };
        let mut at = 0usize;
        // ZERO ranges were zeroed above; every other operation writes its output.
        let written = if op.op == OpType::Zero {
            &[][..]
        } else {
            &op.target[..]
        };
        for e in written {
            let off = e.start * BLOCK_SIZE;
            let n = (e.blocks * BLOCK_SIZE) as usize;
            // Nothing past the image's end is written (its last block may be partial).
            let keep = (target_size.saturating_sub(off)).min(n as u64) as usize;
            target
                .write_all_at(&out[at..at + keep], off)
                .map_err(|e| Error::io(format!("operation {i}: writing the target"), e))?;
            at += n;
        }
        done += len as u64;
        since_checkpoint += len as u64;
        data_pos += op.data_length;
        state.next_op = i as u64 + 1;
        state.data_offset = data_pos;
        if let Some(p) = opts.progress {
            p.progress(done, total);
        }
        if since_checkpoint >= checkpoint {
            if let Some(path) = opts.state {
                // Write-ahead: the target is durable before the record says so.
                target
                    .sync()
                    .map_err(|e| Error::io("syncing the target", e))?;
                state.write(path)?;
            }
            since_checkpoint = 0;
        }
    }
    target
        .sync()
        .map_err(|e| Error::io("syncing the target", e))?;
    let h = hash_prefix(&*target, target_size, "target")?;
    if h != manifest.target.digest {
        return Err(Error::TargetMismatch(format!(
            "the written target's digest is {}, expected {}",
            hex::encode(h),
            hex::encode(manifest.target.digest)
        )));
    }
    if let Some(v) = &manifest.verity {
        let d = RootDescriptor::parse(v)?;
        let tree = HashTree::build(d.params(), &*target)?;
        if tree.root_hash() != d.root_hash() {
            return Err(Error::TargetMismatch(
                "the target's dm-verity root differs from the signed one".into(),
            ));
        }
    }
    if let Some(path) = opts.state {
        let _ = std::fs::remove_file(path);
    }
    Ok(Applied {
        manifest,
        resumed_at,
    })
}

/// Whether two open files are the same file or device.
pub fn same_file(a: &std::fs::File, b: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.metadata(), b.metadata()) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino() && x.rdev() == y.rdev(),
        _ => false,
    }
}

/// [`apply`] between files: refuses a target that is the source.
pub fn apply_files<R: Read>(
    payload: R,
    source: Option<&std::fs::File>,
    target: &mut std::fs::File,
    opts: &ApplyOptions<'_>,
) -> Result<Applied> {
    if let Some(s) = source {
        if same_file(s, target) {
            return Err(Error::TargetIsSource);
        }
    }
    apply(payload, source, target, opts)
}
