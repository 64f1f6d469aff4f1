//! Applying a payload: read once, front to back, from any reader; operations decoded on
//! every core, in the order what they build on allows, and written in order; memory
//! bounded by the operation being written and [`APPLY_HELD`] bytes beyond it; resumable
//! from a small state record.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{mpsc, Mutex};

use keel_trust::{Context, KeyId, Keyring};
use keel_verity::{
    BuildOptions, FecGeometry, HashTree, Progress, ReadAt, RootDescriptor, StreamTree, Streamed,
    WriteAt,
};

/// Most bytes of operations (blobs, references and outputs) decoding ahead of the one being
/// written, so also the most payload bytes an apply has read beyond what it has written
/// (besides that operation's own): what a killed apply may have fetched in vain beyond its
/// last checkpoint.
pub const APPLY_READ_AHEAD: u64 = 8 << 20;

/// Most bytes the operations started beyond the one being written hold (blobs, references,
/// LZMA2 dictionaries, outputs not yet written, outputs kept for a CHAIN's reference): room
/// for a full payload's 8 MiB operations, or a delta's chain of new files, to decode beside
/// the one being written.
pub const APPLY_HELD: u64 = 24 << 20;

mod recompress;
mod resume;

use resume::{chain_digest, resume_point, ChainDigest, State, TargetId};
pub use resume::{RecordDiscarded, MAX_RESUMES};

use crate::codec::recompress::{codec_of, recompressor_for};
use crate::codec::{xz, zstd};
use crate::error::{Error, Result, Section, TargetCheck};
use crate::format::{
    bspatch, image_digest, parse_bundle, parse_manifest, sha256, unpack_manifest, BundleImage,
    Extent, Header, ImageKind, Manifest, OpType, Operation, Version, BLOCK_SIZE, BUNDLE_VERSION,
    HEADER_SIZE, SIGNATURE_SIZE,
};

/// What the payload's version is checked against before anything is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VersionCheck<'a> {
    /// The version installed now: an older payload is refused (unless
    /// [`ApplyOptions::allow_downgrade`]), and so is the same version (unless
    /// [`ApplyOptions::allow_reinstall`]). A version that does not parse is an error.
    Installed(&'a str),
    /// No check: the caller says explicitly that there is no installed version to
    /// protect (a factory install, a recovery image).
    Unchecked,
}

/// How to apply. Made by [`ApplyOptions::new`]: the keyring and the version check have no
/// default a caller could forget.
///
/// ```
/// use keel_payload::{ApplyOptions, VersionCheck};
/// use keel_trust::Keyring;
/// let keys = Keyring::new();
/// let opts = ApplyOptions::new(&keys, VersionCheck::Installed("2.0"))
///     .compatible("acme-os")
///     .checkpoint_bytes(16 << 20);
/// assert_eq!(opts.compatible, Some("acme-os"));
/// ```
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct ApplyOptions<'a> {
    /// The keys that may sign payloads.
    pub keyring: &'a Keyring,
    /// What the payload's version is checked against.
    pub version: VersionCheck<'a>,
    /// This system's compatible string; `None` skips the check.
    pub compatible: Option<&'a str>,
    /// Accept a payload older than the installed version.
    pub allow_downgrade: bool,
    /// Accept a payload of the installed version.
    pub allow_reinstall: bool,
    /// Where to keep the resume record; `None` for no resume.
    pub state: Option<&'a Path>,
    /// Resumes of one payload before the applier starts over from the first operation
    /// (default [`MAX_RESUMES`]).
    pub max_resumes: u32,
    /// Receives target bytes written so far.
    pub progress: Option<&'a dyn Progress>,
    /// Checkpoint after this many target bytes (default 64 MiB).
    pub checkpoint_bytes: Option<u64>,
    /// The time the keys' not-after dates are checked against, seconds since the epoch
    /// (default: the clock now).
    pub now: Option<u64>,
    /// The source image's size and digest (keel-payload's image digest), as the caller
    /// already knows them: a delta's source is then not hashed again.
    pub source_digest: Option<(u64, [u8; 32])>,
    /// With a signed dm-verity root, also compute this FEC parity of the image and its tree
    /// from the blocks as they are written ([`Applied::verity`]).
    pub parity: Option<&'a FecGeometry>,
}

impl<'a> ApplyOptions<'a> {
    /// Options with the keys that may sign and the version check; everything else off.
    pub fn new(keyring: &'a Keyring, version: VersionCheck<'a>) -> Self {
        ApplyOptions {
            keyring,
            version,
            compatible: None,
            allow_downgrade: false,
            allow_reinstall: false,
            state: None,
            max_resumes: MAX_RESUMES,
            progress: None,
            checkpoint_bytes: None,
            now: None,
            source_digest: None,
            parity: None,
        }
    }

    /// The time keys are judged at.
    pub(crate) fn clock(&self) -> u64 {
        self.now.unwrap_or_else(keel_trust::unix_now)
    }

    /// The caller hashed the source image (`size` bytes, keel-payload's image digest) to
    /// choose the payload: a delta for another source is refused by [`Payload::check`]
    /// without reading anything, and the source is not hashed a second time. Each
    /// operation still checks the source blocks it reads against the signed manifest.
    pub fn source_digest(mut self, size: u64, digest: [u8; 32]) -> Self {
        self.source_digest = Some((size, digest));
        self
    }

    /// Check the payload is for this system ([`ApplyOptions::compatible`]).
    pub fn compatible(mut self, compatible: impl Into<Option<&'a str>>) -> Self {
        self.compatible = compatible.into();
        self
    }

    /// Set [`ApplyOptions::allow_downgrade`].
    pub fn allow_downgrade(mut self, on: bool) -> Self {
        self.allow_downgrade = on;
        self
    }

    /// Set [`ApplyOptions::allow_reinstall`].
    pub fn allow_reinstall(mut self, on: bool) -> Self {
        self.allow_reinstall = on;
        self
    }

    /// Keep a resume record at `path` ([`ApplyOptions::state`]).
    pub fn state<P: AsRef<Path> + ?Sized>(mut self, path: &'a P) -> Self {
        self.state = Some(path.as_ref());
        self
    }

    /// Set [`ApplyOptions::max_resumes`].
    pub fn max_resumes(mut self, n: u32) -> Self {
        self.max_resumes = n;
        self
    }

    /// Report progress to, and take cancellation from, `progress`.
    pub fn progress(mut self, progress: &'a dyn Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Checkpoint after this many target bytes ([`ApplyOptions::checkpoint_bytes`]).
    pub fn checkpoint_bytes(mut self, bytes: u64) -> Self {
        self.checkpoint_bytes = Some(bytes);
        self
    }

    /// Set [`ApplyOptions::parity`].
    pub fn parity(mut self, g: &'a FecGeometry) -> Self {
        self.parity = Some(g);
        self
    }

    /// Check key dates against this time ([`ApplyOptions::now`]).
    pub fn now(mut self, unix_seconds: u64) -> Self {
        self.now = Some(unix_seconds);
        self
    }
}

impl std::fmt::Debug for ApplyOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyOptions")
            .field("version", &self.version)
            .field("compatible", &self.compatible)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// What an apply did.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    /// The manifest.
    pub manifest: Manifest,
    /// The operation it started from (non-zero after a resume).
    pub resumed_at: usize,
    /// A resume record that was there but not used, and why: the apply started over.
    pub discarded: Option<RecordDiscarded>,
    /// With a signed dm-verity root over the whole image: its hash tree (checked against
    /// the signed root) and the parity [`ApplyOptions::parity`] asked for, computed from
    /// the blocks as they were written; only what this run did not write whole (an
    /// earlier run's blocks after a resume) was read back from the target
    /// ([`keel_verity::StreamTree`]).
    pub verity: Option<Streamed>,
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], section: Section) -> Result<()> {
    let v = read_vec(r, buf.len() as u64, section)?;
    buf.copy_from_slice(&v);
    Ok(())
}

fn read_vec<R: Read>(r: &mut R, len: u64, section: Section) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    read_append(r, len, &mut v, section)?;
    Ok(v)
}

/// Append exactly `len` bytes to `v`. Every caller's length is bounded by the format
/// (the header checks the manifest's, the manifest each blob's), so the room is reserved
/// once: pages are touched only as bytes arrive, and the buffer never doubles and copies
/// (a lying header costs at most the bound, not twice or three times it).
fn read_append<R: Read>(r: &mut R, len: u64, v: &mut Vec<u8>, section: Section) -> Result<()> {
    let start = v.len();
    v.reserve_exact(usize::try_from(len).unwrap_or(0));
    r.take(len)
        .read_to_end(v)
        .map_err(|e| Error::io(format!("reading the {section}"), e))?;
    let got = (v.len() - start) as u64;
    if got < len {
        return Err(Error::Truncated {
            section,
            got,
            expected: len,
        });
    }
    Ok(())
}

/// Read, check the signature of, and parse a payload's header and manifest, with the
/// keys' not-after dates checked against the clock now.
pub fn read_manifest<R: Read>(
    r: &mut R,
    keyring: &Keyring,
) -> Result<(Header, Manifest, [u8; 32])> {
    read_manifest_at(r, keyring, keel_trust::unix_now())
}

/// [`read_manifest`] at the time `now` (seconds since the epoch). The signer's key is
/// checked against the keyring (and its not-after date) before the manifest is read, and
/// nothing of the manifest is parsed before its signature, in the payload context, is
/// verified.
pub fn read_manifest_at<R: Read>(
    r: &mut R,
    keyring: &Keyring,
    now: u64,
) -> Result<(Header, Manifest, [u8; 32])> {
    let (header, mut images, id) = read_images_at(r, keyring, now)?;
    Ok((header, images.swap_remove(0).manifest, id))
}

/// [`read_manifest_at`] giving every image: a bundle's, or a version 2 payload's one
/// (named `""`, a slot image). A bundle's first image is what [`read_manifest_at`] gives.
pub fn read_images_at<R: Read>(
    r: &mut R,
    keyring: &Keyring,
    now: u64,
) -> Result<(Header, Vec<BundleImage>, [u8; 32])> {
    let mut hb = [0u8; HEADER_SIZE];
    read_exact(r, &mut hb, Section::Header)?;
    let header = Header::parse(&hb)?;
    let key_id = KeyId(header.key_id);
    keyring.trusted(&key_id, now)?;
    // The header and the manifest in one buffer: the bytes signed, never copied.
    let mut signed = hb.to_vec();
    read_append(r, header.manifest_len, &mut signed, Section::Manifest)?;
    let mut sig = [0u8; SIGNATURE_SIZE];
    read_exact(r, &mut sig, Section::Signature)?;
    keyring.verify(&key_id, Context::Payload, &signed, &sig, now)?;
    let raw = unpack_manifest(&signed[HEADER_SIZE..])?;
    let images = if header.version == BUNDLE_VERSION {
        parse_bundle(&raw, header.data_len)?
    } else {
        vec![BundleImage {
            name: String::new(),
            kind: ImageKind::Slot,
            data_len: header.data_len,
            manifest: parse_manifest(&raw, header.data_len)?,
        }]
    };
    Ok((header, images, sha256(&signed)))
}

fn read_extents<S: ReadAt + ?Sized>(
    src: &S,
    ext: &[Extent],
    size: u64,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let total: u64 = ext.iter().map(|e| e.blocks * BLOCK_SIZE).sum();
    out.clear();
    out.resize(total as usize, 0);
    let mut at = 0usize;
    for e in ext {
        let off = e.start * BLOCK_SIZE;
        let len = (e.blocks * BLOCK_SIZE) as usize;
        // One read per extent; the image's last block may be partial and reads as zeros.
        let n = (size.saturating_sub(off)).min(len as u64) as usize;
        src.read_exact_at(&mut out[at..at + n], off)?;
        at += len;
    }
    Ok(())
}

fn decode(op: OpType, blob: Vec<u8>, reference: Vec<u8>, expected: usize) -> io::Result<Vec<u8>> {
    if matches!(op, OpType::ReplaceXz | OpType::ChainXz | OpType::PatchXz) {
        return xz::decode_blob(&blob, reference.into(), expected, xz::MAX_DICT)
            .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why));
    }
    if op == OpType::Bsdiff {
        return bspatch(&reference, zstd::decoder(&blob[..], None)?, expected);
    }
    if op == OpType::ReplaceRaw {
        // The manifest's check made its length the target's.
        if blob.len() != expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} raw bytes, expected {expected}", blob.len()),
            ));
        }
        return Ok(blob);
    }
    let mut out = Vec::with_capacity(expected);
    let mut dec = match op {
        OpType::Replace => zstd::decoder(&blob[..], None)?,
        _ => zstd::decoder(&blob[..], Some(&reference[..]))?,
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

/// Check compatible string and version, before anything is written.
fn check_release(manifest: &Manifest, opts: &ApplyOptions<'_>) -> Result<()> {
    check_release_of(&manifest.compatible, &manifest.version, opts)
}

/// Check a compatible string and version (a payload's or a block store's) against the
/// options.
pub(crate) fn check_release_of(
    compatible: &str,
    version: &str,
    opts: &ApplyOptions<'_>,
) -> Result<()> {
    if let Some(system) = opts.compatible {
        if system != compatible {
            return Err(Error::Incompatible {
                payload: compatible.to_string(),
                system: system.to_string(),
            });
        }
    }
    let VersionCheck::Installed(installed) = opts.version else {
        return Ok(());
    };
    let installed_v = Version::parse(installed).map_err(|reason| Error::BadVersion {
        what: "installed version",
        version: installed.to_string(),
        reason,
    })?;
    let payload_v = Version::parse(version).map_err(|reason| Error::BadVersion {
        what: "payload version",
        version: version.to_string(),
        reason,
    })?;
    match payload_v.cmp(&installed_v) {
        std::cmp::Ordering::Less if !opts.allow_downgrade => Err(Error::Downgrade {
            installed: installed.to_string(),
            payload: version.to_string(),
        }),
        std::cmp::Ordering::Equal if !opts.allow_reinstall => {
            Err(Error::SameVersion(installed.to_string()))
        }
        _ => Ok(()),
    }
}

/// Check the source is the image the payload was made for: by the digest the caller
/// vouches for ([`ApplyOptions::source_digest`]), else by hashing it.
fn check_source<S: ReadAt + ?Sized>(
    manifest: &Manifest,
    source: Option<&S>,
    known: Option<(u64, [u8; 32])>,
) -> Result<()> {
    let Some(id) = manifest.source else {
        return Ok(());
    };
    let src = source.ok_or_else(|| Error::MissingSource("none was given".into()))?;
    let have = src.size().map_err(|e| Error::io("source size", e))?;
    if have < id.size {
        return Err(Error::MissingSource(format!(
            "the source holds {have} bytes, the payload needs {}",
            id.size
        )));
    }
    let h = match known {
        Some((size, digest)) if size == id.size => digest,
        // An I/O error stays an I/O error: only a digest that differs means another source.
        _ => image_digest(src, id.size).map_err(|e| Error::io("reading the source", e))?,
    };
    if h != id.digest {
        return Err(Error::SourceModified { op: None });
    }
    Ok(())
}

/// A payload opened for one pass: its signature checked and its manifest parsed, the reader
/// left at its first data byte. [`Payload::check`] judges it against the system with no
/// further reads; [`Payload::apply`] goes on from where the open stopped, so a payload
/// streamed over a network is read once, front to back (a resumed apply moves forward past
/// what it applied, never back).
///
/// ```
/// use keel_payload::{ApplyOptions, Payload, VersionCheck};
/// # use keel_payload::{generate, GenerateOptions};
/// # use keel_trust::{Keyring, SigningKey};
/// # let key = SigningKey::generate()?;
/// # let mut keys = Keyring::new();
/// # keys.add(key.public_key().clone())?;
/// # let image = vec![7u8; 3 * 4096];
/// # let bytes = generate(None, &image, &key, &GenerateOptions::new("acme-os", "2.0"))?;
/// # let reader = &bytes[..];
/// let payload = Payload::open(reader, &keys)?;
/// assert_eq!(payload.manifest().version, "2.0");
/// let opts = ApplyOptions::new(&keys, VersionCheck::Installed("1.0")).compatible("acme-os");
/// payload.check(&opts)?; // nothing more read, nothing written
/// let mut target = vec![0u8; payload.manifest().target.size as usize];
/// payload.apply(None::<&[u8]>, &mut target, &opts)?;
/// # assert_eq!(target, image);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Payload<R> {
    reader: R,
    /// How to move forward past applied data: read and drop, or seek.
    skip: fn(&mut R, u64) -> io::Result<u64>,
    header: Header,
    /// Its images (one for a version 2 payload).
    images: Vec<BundleImage>,
    id: [u8; 32],
    /// The image the stream is at: the next one to apply or skip.
    next: usize,
}

impl<R> std::fmt::Debug for Payload<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload")
            .field("compatible", &self.images[0].manifest.compatible)
            .field("version", &self.images[0].manifest.version)
            .field("images", &self.images.len())
            .field("id", &hex::encode(self.id))
            .finish_non_exhaustive()
    }
}

/// What image `index`'s resume record is tied to: the payload's identity for its first
/// image (a version 2 payload's record as before), bound to the index for the others.
fn record_id(id: &[u8; 32], index: usize) -> [u8; 32] {
    if index == 0 {
        return *id;
    }
    let mut b = id.to_vec();
    b.extend_from_slice(b"image");
    b.extend_from_slice(&(index as u64).to_le_bytes());
    sha256(&b)
}

fn read_and_drop<R: Read>(r: &mut R, n: u64) -> io::Result<u64> {
    io::copy(&mut r.take(n), &mut io::sink())
}

fn seek_forward<R: io::Seek>(r: &mut R, n: u64) -> io::Result<u64> {
    let delta = i64::try_from(n)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "skip too large"))?;
    r.seek(io::SeekFrom::Current(delta))?;
    Ok(n)
}

impl<R: Read> Payload<R> {
    /// Read the header, check the signer against `keyring` (and its not-after date against
    /// the clock), read the manifest and the signature, verify it over the exact bytes, and
    /// only then parse the manifest. A resumed apply reads (and drops) the data it skips.
    pub fn open(reader: R, keyring: &Keyring) -> Result<Self> {
        Self::open_at(reader, keyring, keel_trust::unix_now())
    }

    /// [`Payload::open`] with the keys' dates checked against `now` (seconds since the
    /// epoch).
    pub fn open_at(mut reader: R, keyring: &Keyring, now: u64) -> Result<Self> {
        let (header, images, id) = read_images_at(&mut reader, keyring, now)?;
        Ok(Payload {
            reader,
            skip: read_and_drop::<R>,
            header,
            images,
            id,
            next: 0,
        })
    }

    /// The signed manifest: a bundle's first image's (every image has the bundle's
    /// compatible string and version; [`Payload::images`] has them all).
    pub fn manifest(&self) -> &Manifest {
        &self.images[0].manifest
    }

    /// The images, in the order they come: one for a version 2 payload (named `""`),
    /// several for a bundle.
    pub fn images(&self) -> &[BundleImage] {
        &self.images
    }

    /// The image the next [`Payload::apply_next`] or [`Payload::skip_next`] reads, if
    /// any is left.
    pub fn next_image(&self) -> Option<&BundleImage> {
        self.images.get(self.next)
    }

    /// The payload's identity: the SHA-256 of its signed header and manifest, which bind
    /// every byte of its data. A release index pins a payload by it; the resume record is
    /// tied to it.
    pub fn id(&self) -> &[u8; 32] {
        &self.id
    }

    /// The payload's whole length in bytes, as its signed header says.
    pub fn len(&self) -> u64 {
        (HEADER_SIZE + SIGNATURE_SIZE) as u64 + self.header.manifest_len + self.header.data_len
    }

    /// Whether the payload has no data (never: a header is there).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Judge the payload against the system, before anything is written and with no
    /// further reads of the payload: compatible string, version (downgrade, reinstall),
    /// the recompressor it needs, and for a delta the source image's digest when the caller
    /// gives it ([`ApplyOptions::source_digest`]; otherwise [`Payload::apply`] hashes the
    /// source first). [`Payload::apply`] makes these checks again.
    pub fn check(&self, opts: &ApplyOptions<'_>) -> Result<()> {
        check_release(self.manifest(), opts)?;
        for image in &self.images {
            if let Some(needs) = &image.manifest.recompressor {
                let have = recompressor_for(codec_of(needs));
                if *needs != have {
                    return Err(Error::Recompressor {
                        needs: needs.clone(),
                        have,
                    });
                }
            }
        }
        // The source the caller vouches for is the next image's.
        let next = self.images.get(self.next).and_then(|i| i.manifest.source);
        if let (Some(id), Some((size, digest))) = (next, opts.source_digest) {
            if size == id.size && digest != id.digest {
                return Err(Error::SourceModified { op: None });
            }
        }
        Ok(())
    }

    /// Apply the payload to `target`, reading `source` (required for a delta), going on
    /// from where [`Payload::open`] stopped. On success the target holds exactly the target
    /// image, checked by its digest (and its dm-verity root when the manifest has one).
    ///
    /// The target must already be at least as large as the image (a slot, or a file the
    /// caller sized; [`apply_files`] sizes a regular file after checking the free space).
    ///
    /// With [`ApplyOptions::state`], a record of the progress is kept after each checkpoint
    /// (the target synced first). A later run of the same payload on the same target
    /// resumes after the last checkpoint if the target still holds every block the record
    /// says was written; otherwise, after [`ApplyOptions::max_resumes`] resumes, or for a
    /// record of another payload or target, it starts over from the first operation in the
    /// same run and says why in [`Applied::discarded`]. A failed final check removes the
    /// record, so the next run starts over. The record is the only state: where the data of
    /// the resume point lies follows from the signed manifest.
    pub fn apply<S, T>(
        mut self,
        source: Option<&S>,
        target: &mut T,
        opts: &ApplyOptions<'_>,
    ) -> Result<Applied>
    where
        S: ReadAt + ?Sized,
        T: ReadAt + WriteAt,
    {
        if self.images.len() > 1 {
            return Err(Error::Bundle {
                images: self.images.len(),
            });
        }
        self.apply_next(source, target, opts)
    }

    /// Apply the next image of the payload (a bundle's images one after another, from the
    /// one stream) as [`Payload::apply`] applies a payload of one image, into its own
    /// target and with its own resume record ([`ApplyOptions::state`]: one per image).
    /// After an error the payload has no image left: open it again to go on.
    pub fn apply_next<S, T>(
        &mut self,
        source: Option<&S>,
        target: &mut T,
        opts: &ApplyOptions<'_>,
    ) -> Result<Applied>
    where
        S: ReadAt + ?Sized,
        T: ReadAt + WriteAt,
    {
        self.apply_to(source, target, opts, (0, 0), |t: &mut T, _, _| {
            t.size().map_err(|e| Error::io("target size", e))
        })
    }

    /// Move past the next image without applying it (one a resumed install found in
    /// place already): its data are skipped as a resumed apply skips what it applied.
    pub fn skip_next(&mut self) -> Result<()> {
        let index = self.next;
        let Some(image) = self.images.get(index) else {
            return Err(Error::NoImageLeft);
        };
        let len = image.data_len;
        self.next = self.images.len();
        let skipped =
            (self.skip)(&mut self.reader, len).map_err(|e| Error::io("skipping an image", e))?;
        if skipped < len {
            return Err(Error::Truncated {
                section: Section::Data,
                got: skipped,
                expected: len,
            });
        }
        self.next = index + 1;
        Ok(())
    }

    /// [`Payload::apply_next`], with the target's identity for the resume record and a
    /// step that returns the target's size once the image's is known (and may grow a file
    /// to it); it is given the image's size and the bytes of it that are not zeros (a
    /// file's zeros are holes, which take no space).
    fn apply_to<S, T>(
        &mut self,
        source: Option<&S>,
        target: &mut T,
        opts: &ApplyOptions<'_>,
        target_inode: (u64, u64),
        size_target: impl FnOnce(&mut T, u64, u64) -> Result<u64>,
    ) -> Result<Applied>
    where
        S: ReadAt + ?Sized,
        T: ReadAt + WriteAt,
    {
        let index = self.next;
        let Some(image) = self.images.get(index) else {
            return Err(Error::NoImageLeft);
        };
        let manifest = image.manifest.clone();
        self.check(opts)?;
        // Part way through an image the stream is nowhere a later call could start from.
        self.next = self.images.len();
        let payload_id = record_id(&self.id, index);
        let skip = self.skip;
        let payload = &mut self.reader;
        let target_size = manifest.target.size;
        check_source(&manifest, source, opts.source_digest)?;
        if let Some(path) = opts.state {
            resume::check_place(path)?;
        }
        let data_bytes = manifest
            .operations
            .iter()
            .filter(|o| o.op != OpType::Zero)
            .map(|o| o.target_blocks().saturating_mul(BLOCK_SIZE))
            .fold(0u64, u64::saturating_add)
            .min(target_size);
        let have = size_target(target, target_size, data_bytes)?;
        if have < target_size {
            return Err(Error::TargetTooSmall {
                have,
                need: target_size,
            });
        }

        let fresh = State {
            payload_id,
            target: TargetId {
                dev: target_inode.0,
                ino: target_inode.1,
                size: have,
            },
            next_op: 0,
            resumes: 0,
            written: [0u8; 32],
        };
        // The tree (and parity) of the image from the blocks as they pass: a resume's check
        // of what the earlier run wrote shows it those blocks.
        let mut stream = stream_tree(&manifest, opts.parity)?;
        let (mut state, discarded) = match opts.state {
            Some(path) => resume_point(
                path,
                fresh,
                &manifest,
                &*target,
                opts.max_resumes,
                stream.as_mut(),
            )?,
            None => (fresh, None),
        };
        if discarded.is_some() {
            // It saw blocks that will be written again.
            stream = stream_tree(&manifest, opts.parity)?;
        }
        let resumed_at = state.next_op as usize;
        skip_applied_data(payload, skip, &manifest, resumed_at)?;
        let total: u64 = manifest
            .operations
            .iter()
            .map(|o| o.target_blocks() * BLOCK_SIZE)
            .sum();
        let mut done: u64 = manifest.operations[..resumed_at]
            .iter()
            .map(|o| o.target_blocks() * BLOCK_SIZE)
            .sum();
        let checkpoint = opts.checkpoint_bytes.unwrap_or(64 << 20).max(1);
        let mut since_checkpoint = 0u64;

        // Operations decode on every core while this thread reads the stream in order and
        // writes their outputs in order (and so checkpoints exactly as one thread would).
        // The workers read their source blocks themselves. The payload read ahead of the
        // operation being written stays within APPLY_READ_AHEAD bytes; beyond the one being
        // written, what operations started hold (blobs, references, decoders' dictionaries,
        // outputs not yet written) stays within APPLY_HELD. An operation that builds on
        // target blocks (CHAIN) starts once the operations that wrote them are written,
        // its reference taken from their outputs, kept in memory for it (within
        // APPLY_HELD), rather than read back; those after it start meanwhile, so a long
        // chain of them decodes beside the rest, and one thread is kept free for the next
        // link while one is to come.
        let ops = &manifest.operations;
        let threads = keel_io::Threads::default().count();
        let m = &manifest;
        let jobs = Jobs::new(threads);
        let (res_tx, res_rx) = mpsc::channel::<(usize, Result<Option<Vec<u8>>>)>();
        std::thread::scope(|scope| -> Result<()> {
            // However the closure returns, the queue closes: the workers stop, and the
            // scope can end. After an error the workers drop what was queued undecoded.
            let _close = CloseOnDrop(&jobs);
            let mut plan = Schedule::new(ops, resumed_at, &jobs);
            for _ in 0..threads {
                let (jobs, res_tx) = (&jobs, res_tx.clone());
                scope.spawn(move || loop {
                    let Some(((i, blob, reference), other)) = jobs.take() else {
                        return;
                    };
                    // A decoder that panics must not leave the writer waiting for it.
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let reference = match reference {
                            Some(r) => {
                                check_chain_reference(i, &m.operations[i], &r)?;
                                r
                            }
                            None => read_source_reference(i, &m.operations[i], m, source)?,
                        };
                        decode_op(m, i, blob, reference)
                    }))
                    .unwrap_or_else(|_| {
                        Err(Error::Decode {
                            op: i,
                            reason: "the decoder panicked".into(),
                        })
                    });
                    jobs.done(other);
                    if res_tx.send((i, out)).is_err() {
                        return;
                    }
                });
            }
            drop(res_tx);
            let mut ready: BTreeMap<usize, Result<Option<Vec<u8>>>> = BTreeMap::new();
            let mut copy_buf = Vec::new();
            for (i, op) in ops.iter().enumerate().skip(resumed_at) {
                // Reading ahead may wait on the payload's source (a stalled download): only
                // while this thread would wait anyway, not before writing what is ready.
                let wait = !(Schedule::inline(op) || ready.contains_key(&i));
                plan.fill(i, wait, payload, m, &*target)?;
                if opts.progress.is_some_and(|p| p.cancelled()) {
                    // Stop at an operation boundary with everything so far durable and
                    // recorded, so the next run resumes here.
                    target
                        .sync()
                        .map_err(|e| Error::io("syncing the target", e))?;
                    if let Some(path) = opts.state {
                        state.write(path)?;
                    }
                    return Err(Error::Cancelled);
                }
                let len = (op.target_blocks() * BLOCK_SIZE) as usize;
                let mut kept = None;
                if op.op == OpType::Copy {
                    // No decoding: this thread moves the bytes while the others decode.
                    let mut digest = opts
                        .state
                        .is_some()
                        .then(|| ChainDigest::new(&state.written, i));
                    let to = Placing {
                        target: &mut *target,
                        size: target_size,
                        stream: stream.as_mut(),
                        digest: digest.as_mut(),
                    };
                    copy_op(i, op, m, source, to, &mut copy_buf)?;
                    if let Some(d) = digest {
                        state.written = d.finish();
                    }
                } else {
                    let out = match op.op {
                        OpType::Zero => None,
                        _ => loop {
                            if let Some(r) = ready.remove(&i) {
                                break r;
                            }
                            match res_rx.recv() {
                                Ok((j, r)) => {
                                    plan.decoded(j, &r);
                                    ready.insert(j, r);
                                    // What it no longer holds may let another start.
                                    if j != i {
                                        plan.fill(i, true, payload, m, &*target)?;
                                    }
                                }
                                Err(_) => {
                                    return Err(Error::Decode {
                                        op: i,
                                        reason: "a decoding thread stopped".into(),
                                    })
                                }
                            }
                        }?,
                    };
                    write_op(i, op, out.as_deref(), target, target_size)?;
                    if let Some(s) = stream.as_mut() {
                        feed(s, op, out.as_deref(), target_size);
                    }
                    if opts.state.is_some() {
                        state.written =
                            chain_digest(&state.written, i, op, out.as_deref(), target_size);
                    }
                    kept = out;
                }
                plan.written(i, kept);
                done += len as u64;
                since_checkpoint += len as u64;
                state.next_op = i as u64 + 1;
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
            drop(plan);
            Ok(())
        })?;
        // The disk writes the image back while the check reads it from memory; the check
        // judges the bytes the sync then makes durable.
        target
            .start_sync()
            .map_err(|e| Error::io("syncing the target", e))?;
        let checked = match stream {
            Some(stream) => check_streamed(&manifest, stream, &*target, opts).map(Some),
            None => check_target(&manifest, &*target).map(|()| None),
        };
        target
            .sync()
            .map_err(|e| Error::io("syncing the target", e))?;
        let verity = match checked {
            Ok(v) => v,
            Err(Error::Cancelled) => {
                // Everything is written and durable: the next run starts past the last
                // operation and only reads the image back.
                if let Some(path) = opts.state {
                    state.write(path)?;
                }
                return Err(Error::Cancelled);
            }
            Err(e) => {
                // What was written cannot be trusted as a resume point: the next run
                // starts over.
                if let Some(path) = opts.state {
                    State::remove(path)?;
                }
                return Err(e);
            }
        };
        if let Some(path) = opts.state {
            State::remove(path)?;
        }
        self.next = index + 1;
        Ok(Applied {
            manifest,
            resumed_at,
            discarded,
            verity,
        })
    }
}

impl<R: Read + io::Seek> Payload<R> {
    /// [`Payload::open`] of a payload that can move forward without reading (a file, an
    /// HTTP client that makes a range request): a resumed apply jumps over the data of the
    /// operations it already applied instead of reading it, so nothing applied is fetched
    /// again. Reads start at the payload's first byte (the stream's position when called).
    pub fn open_seekable(reader: R, keyring: &Keyring) -> Result<Self> {
        Self::open_seekable_at(reader, keyring, keel_trust::unix_now())
    }

    /// [`Payload::open_seekable`] with the keys' dates checked against `now`.
    pub fn open_seekable_at(reader: R, keyring: &Keyring, now: u64) -> Result<Self> {
        let mut p = Self::open_at(reader, keyring, now)?;
        p.skip = seek_forward::<R>;
        Ok(p)
    }
}

/// Open `payload` and apply it ([`Payload::open_at`] at [`ApplyOptions::now`], then
/// [`Payload::apply`]).
pub fn apply<R, S, T>(
    payload: R,
    source: Option<&S>,
    target: &mut T,
    opts: &ApplyOptions<'_>,
) -> Result<Applied>
where
    R: Read,
    S: ReadAt + ?Sized,
    T: ReadAt + WriteAt,
{
    Payload::open_at(payload, opts.keyring, opts.clock())?.apply(source, target, opts)
}

/// Read past the data of the operations a resumed run does not repeat. Where the resume
/// point's data starts follows from the signed manifest, not from the record.
fn skip_applied_data<R>(
    payload: &mut R,
    skip_fn: fn(&mut R, u64) -> io::Result<u64>,
    manifest: &Manifest,
    resumed_at: usize,
) -> Result<()> {
    let skip: u64 = manifest.operations[..resumed_at]
        .iter()
        .map(|o| o.data_length)
        .sum();
    if skip > 0 {
        let skipped = skip_fn(payload, skip).map_err(|e| Error::io("skipping applied data", e))?;
        if skipped < skip {
            return Err(Error::Truncated {
                section: Section::ResumePoint,
                got: skipped,
                expected: skip,
            });
        }
    }
    Ok(())
}

/// An operation for a decoding thread: its index, its checked blob, and for a CHAIN its
/// checked reference (the thread reads any other's source blocks itself).
type Job = (usize, Vec<u8>, Option<Vec<u8>>);

/// The decoding threads' queue. Operations on a CHAIN's road (the CHAINs and what they
/// build on) go first. A chain of them decodes one after another, each once the one before
/// is written, and is often the longest road through a payload: while one of them is to
/// come (read from the payload, the writer at the last operation it builds on), the other
/// operations may keep all threads but one busy, so the next link starts as soon as it
/// may instead of after a long decode.
struct Jobs {
    queue: Mutex<Queue>,
    wake: std::sync::Condvar,
    threads: usize,
}

#[derive(Default)]
struct Queue {
    road: std::collections::VecDeque<Job>,
    other: std::collections::VecDeque<Job>,
    /// CHAINs read and not started whose reference's last writer is being written.
    soon: usize,
    /// Threads decoding an operation off the road.
    busy_other: usize,
    closed: bool,
}

impl Jobs {
    fn new(threads: usize) -> Self {
        Jobs {
            queue: Mutex::new(Queue::default()),
            wake: std::sync::Condvar::new(),
            threads,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A worker that panicked did so outside the lock (decoders run unlocked).
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `job` (on a CHAIN's road or not).
    fn push(&self, job: Job, road: bool) {
        let mut q = self.lock();
        if road {
            q.road.push_back(job);
        } else {
            q.other.push_back(job);
        }
        drop(q);
        self.wake.notify_all();
    }

    /// How many CHAINs are to come soon: read, not started, the last of what they build
    /// on being written.
    fn set_soon(&self, soon: usize) {
        let mut q = self.lock();
        if q.soon != soon {
            q.soon = soon;
            drop(q);
            self.wake.notify_all();
        }
    }

    /// The next job for a thread, and whether it is off the road; `None` once closed.
    fn take(&self) -> Option<(Job, bool)> {
        let mut q = self.lock();
        loop {
            if q.closed {
                return None;
            }
            if let Some(next) = q.next(self.threads) {
                return Some(next);
            }
            q = self.wake.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A thread finished a job (off the road if `other`).
    fn done(&self, other: bool) {
        if other {
            self.lock().busy_other -= 1;
            self.wake.notify_all();
        }
    }
}

impl Queue {
    /// What a thread of `threads` may take now: the road first; off it, only while that
    /// leaves a thread for a CHAIN to come. A lone thread takes everything in turn (the
    /// writer may need what is off the road before it can write what the CHAIN reads).
    fn next(&mut self, threads: usize) -> Option<(Job, bool)> {
        if let Some(job) = self.road.pop_front() {
            return Some((job, false));
        }
        if self.soon > 0 && threads > 1 && self.busy_other + 1 >= threads {
            return None;
        }
        let job = self.other.pop_front()?;
        self.busy_other += 1;
        Some((job, true))
    }
}

/// Closes the queue when dropped: the threads stop and drop what was queued.
struct CloseOnDrop<'a>(&'a Jobs);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.wake.notify_all();
    }
}

/// Operations looked ahead of the one being written, at most.
const LOOK_AHEAD_OPS: usize = 4096;
/// RECOMPRESS operations decoding at once, at most: two keep both cores of a squashfs
/// delta busy (each compresses its blocks on every core, between serial steps).
const RECOMPRESSING: usize = 2;
/// Operations read and waiting to start, at most: each start looks through them, and a
/// payload of a million operations must not cost a million times this.
const PARKED_OPS: usize = 64;

/// Which operations start when, on the writing thread: the payload's blobs read in order,
/// each operation handed to the decoding threads once what it builds on is written and
/// what it would hold fits.
struct Schedule<'m> {
    ops: &'m [Operation],
    /// For each operation, how many must be written before it starts.
    after: Vec<usize>,
    /// Whether a CHAIN waits for the operation to be written (it wrote the last of the
    /// CHAIN's reference).
    key: Vec<bool>,
    /// Read, not started: index and blob, in order.
    parked: std::collections::VecDeque<(usize, Vec<u8>)>,
    /// The next operation whose blob to read.
    next_read: usize,
    /// Blob bytes read of operations not yet written.
    ahead: u64,
    /// What each started, unwritten operation holds, and their sum.
    charged: BTreeMap<usize, u64>,
    held: u64,
    jobs: &'m Jobs,
    /// Every target extent an operation writes, sorted: (first block, end, operation,
    /// where the extent starts in the operation's output); empty without CHAINs.
    writes: Vec<(u64, u64, usize, u64)>,
    /// For each CHAIN this run applies, the operations that write its reference.
    writers: BTreeMap<usize, Vec<usize>>,
    /// For each operation that writes a CHAIN's reference, the CHAINs not yet started
    /// that read it, in order.
    readers: BTreeMap<usize, std::collections::VecDeque<usize>>,
    /// Outputs of written operations a CHAIN already read from the payload (not one far
    /// ahead) is to read, counted in `held`: its reference comes from memory, not read
    /// back.
    kept: BTreeMap<usize, Vec<u8>>,
    /// A read that failed: returned once the operations before it are written.
    failed: Option<Error>,
    /// The RECOMPRESS operations decoding: at most [`RECOMPRESSING`] (each may hold tens
    /// of megabytes its cost does not tell: content decompressed from a small blob, the
    /// compressors' state).
    recompressing: std::collections::BTreeSet<usize>,
}

impl<'m> Schedule<'m> {
    fn new(ops: &'m [Operation], first: usize, jobs: &'m Jobs) -> Self {
        let writes = target_writes(ops);
        let after = ready_after(ops, &writes);
        let mut writers = BTreeMap::new();
        let mut readers: BTreeMap<usize, std::collections::VecDeque<usize>> = BTreeMap::new();
        for (j, o) in ops.iter().enumerate().skip(first) {
            if !o.op.is_chain() {
                continue;
            }
            let mut w: Vec<usize> = o
                .source
                .iter()
                .flat_map(|e| covering(&writes, e.start, e.start.saturating_add(e.blocks)))
                .map(|(_, _, op, _)| op)
                .collect();
            w.sort_unstable();
            w.dedup();
            for &k in &w {
                readers.entry(k).or_default().push_back(j);
            }
            writers.insert(j, w);
        }
        let mut key = vec![false; ops.len()];
        for &a in &after {
            if let Some(w) = a.checked_sub(1) {
                key[w] = true;
            }
        }
        Schedule {
            ops,
            after,
            key,
            parked: Default::default(),
            next_read: first,
            ahead: 0,
            charged: BTreeMap::new(),
            held: 0,
            jobs,
            writes,
            writers,
            readers,
            kept: BTreeMap::new(),
            failed: None,
            recompressing: Default::default(),
        }
    }

    /// Operations the writing thread does itself, with nothing to decode: ZERO, and COPY
    /// piece by piece ([`copy_op`]).
    fn inline(op: &Operation) -> bool {
        matches!(op.op, OpType::Zero | OpType::Copy)
    }

    /// What an operation holds while it decodes: blob, reference, output, and the
    /// decoder's window (LZMA2's dictionary and zstd's window hold the reference and the
    /// output again); a RECOMPRESS operation also the content it decompresses and its
    /// compressors' state, counted as twice its output again.
    fn cost(op: &Operation) -> u64 {
        let (r, o) = (
            op.source_blocks() * BLOCK_SIZE,
            op.target_blocks() * BLOCK_SIZE,
        );
        let extra = match op.op {
            OpType::Recompress => r + 2 * o,
            OpType::Replace
            | OpType::Patch
            | OpType::Chain
            | OpType::ReplaceXz
            | OpType::ChainXz
            | OpType::PatchXz => 2 * r + o,
            _ => r,
        };
        op.data_length + o + extra
    }

    /// With operations before `i` written: read ahead (if `ahead`) and start what may start.
    /// Operation `i` itself is always read and started (whatever it holds), or its read's
    /// error is returned.
    fn fill<R, T>(
        &mut self,
        i: usize,
        ahead: bool,
        payload: &mut R,
        m: &Manifest,
        target: &T,
    ) -> Result<()>
    where
        R: Read,
        T: ReadAt + ?Sized,
    {
        let ops = self.ops;
        while self.failed.is_none()
            && self.next_read < ops.len()
            && (self.next_read == i
                || (ahead
                    && self.next_read - i <= LOOK_AHEAD_OPS
                    && self.parked.len() < PARKED_OPS
                    && self.ahead + ops[self.next_read].data_length <= APPLY_READ_AHEAD))
        {
            let j = self.next_read;
            match read_blob(payload, j, m) {
                Ok(blob) => {
                    self.ahead += ops[j].data_length;
                    if Self::inline(&ops[j]) {
                        // The writing thread does it when it comes to it; it holds nothing
                        // before.
                        self.charged.insert(j, 0);
                    } else {
                        self.parked.push_back((j, blob));
                    }
                    self.next_read += 1;
                }
                Err(e) => self.failed = Some(e),
            }
        }
        // Beyond the one being written (charged here once started).
        let limit = APPLY_HELD + self.charged.get(&i).copied().unwrap_or(0);
        // Those a CHAIN waits for first (the head of a chain of them is the longest road),
        // then the rest in order.
        for keyed in [true, false] {
            let mut k = 0;
            while k < self.parked.len() {
                let j = self.parked[k].0;
                let cost = Self::cost(&ops[j]);
                let busy =
                    ops[j].op == OpType::Recompress && self.recompressing.len() >= RECOMPRESSING;
                if (keyed && !self.key[j])
                    || (j != i && (busy || self.after[j] > i || self.held + cost > limit))
                {
                    k += 1;
                    continue;
                }
                let Some((j, blob)) = self.parked.remove(k) else {
                    break;
                };
                let reference = if ops[j].op.is_chain() {
                    let r = self.chain_reference(j, m, target)?;
                    for w in self.writers.remove(&j).unwrap_or_default() {
                        let next = self.readers.get_mut(&w).and_then(|r| {
                            r.retain(|&c| c != j);
                            r.front().copied()
                        });
                        // Kept no longer than a CHAIN already read needs it.
                        if next.is_none_or(|c| c >= self.next_read) {
                            if let Some(out) = self.kept.remove(&w) {
                                self.held -= out.len() as u64;
                            }
                        }
                    }
                    Some(r)
                } else {
                    None
                };
                self.held += cost;
                self.charged.insert(j, cost);
                if ops[j].op == OpType::Recompress {
                    self.recompressing.insert(j);
                }
                self.jobs
                    .push((j, blob, reference), self.key[j] || ops[j].op.is_chain());
            }
        }
        // A CHAIN read from the payload whose reference's last writer is being written
        // (or was) comes next on its road: a thread is kept for it (see Jobs). One the
        // writer is still far from keeps nothing back.
        let soon = self
            .parked
            .iter()
            .filter(|&&(j, _)| ops[j].op.is_chain() && self.after[j] <= i + 1)
            .count();
        self.jobs.set_soon(soon);
        if self.charged.contains_key(&i) {
            return Ok(());
        }
        Err(self.failed.take().unwrap_or(Error::NoImageLeft))
    }

    /// Operation `j` decoded: from now on it holds its output only.
    fn decoded(&mut self, j: usize, out: &Result<Option<Vec<u8>>>) {
        self.recompressing.remove(&j);
        let now = match out {
            Ok(Some(v)) => v.len() as u64,
            _ => 0,
        };
        if let Some(c) = self.charged.get_mut(&j) {
            self.held -= *c - now.min(*c);
            *c = now.min(*c);
        }
    }

    /// Operation `i` written (from `out`, if decoded): it holds nothing, but its output
    /// while a CHAIN already read from the payload is to read it, if that fits within
    /// [`APPLY_HELD`] (CHAINs far ahead, or outputs too large, read their references back
    /// instead).
    fn written(&mut self, i: usize, out: Option<Vec<u8>>) {
        if let Some(c) = self.charged.remove(&i) {
            self.held -= c;
        }
        self.ahead -= self.ops[i].data_length;
        let room = APPLY_HELD.saturating_sub(self.held);
        let near = self
            .readers
            .get(&i)
            .and_then(|r| r.front())
            .is_some_and(|&c| c < self.next_read);
        if let Some(out) = out.filter(|o| near && o.len() as u64 <= room) {
            self.held += out.len() as u64;
            self.kept.insert(i, out);
        }
    }

    /// CHAIN `j`'s reference: from the outputs kept in memory where they hold it, else
    /// read from the target (what COPY and ZERO wrote, what an earlier run wrote, outputs
    /// not kept). The decoding thread checks it against the signed hash
    /// ([`check_chain_reference`]) wherever it came from.
    fn chain_reference<T: ReadAt + ?Sized>(
        &self,
        j: usize,
        m: &Manifest,
        target: &T,
    ) -> Result<Vec<u8>> {
        let op = &self.ops[j];
        let size = m.target.size;
        let mut out = vec![0u8; (op.source_blocks() * BLOCK_SIZE) as usize];
        // Blocks lo..hi of the image into the reference at byte `at`; the image's last
        // block may be partial and reads as zeros past its end.
        let read = |out: &mut [u8], lo: u64, hi: u64| -> Result<()> {
            let off = lo * BLOCK_SIZE;
            let have = size.saturating_sub(off).min((hi - lo) * BLOCK_SIZE) as usize;
            target
                .read_exact_at(&mut out[..have], off)
                .map_err(|e| Error::io("reading target blocks", e))
        };
        let mut at = 0usize;
        for e in &op.source {
            let (start, end) = (e.start, e.start.saturating_add(e.blocks));
            let place = |b: u64| at + ((b - start) * BLOCK_SIZE) as usize;
            let mut b = start;
            for (s, t, w, from) in covering(&self.writes, start, end) {
                let (lo, hi) = (s.max(b), t.min(end));
                if b < lo {
                    // Written by no operation (the manifest's check rules it out).
                    read(&mut out[place(b)..], b, lo)?;
                }
                match self.kept.get(&w) {
                    Some(v) => {
                        let n = ((hi - lo) * BLOCK_SIZE) as usize;
                        let from = (from + (lo - s) * BLOCK_SIZE) as usize;
                        // Past the image's end, zeros, as a read gives.
                        let keep = size.saturating_sub(lo * BLOCK_SIZE).min(n as u64) as usize;
                        out[place(lo)..place(lo) + keep].copy_from_slice(&v[from..from + keep]);
                    }
                    None => read(&mut out[place(lo)..], lo, hi)?,
                }
                b = hi;
            }
            if b < end {
                read(&mut out[place(b)..], b, end)?;
            }
            at += (e.blocks * BLOCK_SIZE) as usize;
        }
        Ok(out)
    }
}

/// CHAIN `i`'s reference against its signed hash, on the decoding thread (the writer goes
/// on meanwhile): every run refuses a reference that differs, whether it was read back or
/// assembled from outputs in memory.
fn check_chain_reference(i: usize, op: &Operation, reference: &[u8]) -> Result<()> {
    if sha256(reference) != op.source_sha256 {
        return Err(Error::TargetMismatch(TargetCheck::ChainReference { op: i }));
    }
    Ok(())
}

/// For each operation, how many operations must be written before it may start: for a
/// CHAIN, up to the last one that writes a block of its reference; 0 for the others. The
/// manifest's check made every target block written once and a CHAIN's reference written
/// before it, so the target extents are disjoint and sorting them finds the writers.
fn ready_after(ops: &[Operation], writes: &[(u64, u64, usize, u64)]) -> Vec<usize> {
    if !ops.iter().any(|o| o.op.is_chain()) {
        return vec![0; ops.len()];
    }
    ops.iter()
        .enumerate()
        .map(|(i, o)| {
            if !o.op.is_chain() {
                return 0;
            }
            let after = o
                .source
                .iter()
                .flat_map(|e| covering(writes, e.start, e.start.saturating_add(e.blocks)))
                .map(|w| w.2 + 1)
                .max()
                .unwrap_or(0);
            after.min(i)
        })
        .collect()
}

/// Every target extent the operations write, sorted by block: (first block, end,
/// operation, where the extent's bytes start in the operation's output). Only CHAINs look
/// blocks up: empty without them.
fn target_writes(ops: &[Operation]) -> Vec<(u64, u64, usize, u64)> {
    if !ops.iter().any(|o| o.op.is_chain()) {
        return Vec::new();
    }
    let mut writes: Vec<(u64, u64, usize, u64)> = ops
        .iter()
        .enumerate()
        .flat_map(|(i, o)| {
            o.target.iter().scan(0u64, move |at, e| {
                let here = *at;
                *at += e.blocks * BLOCK_SIZE;
                Some((e.start, e.start.saturating_add(e.blocks), i, here))
            })
        })
        .collect();
    writes.sort_unstable();
    writes
}

/// The extents of `writes` ([`target_writes`]) that hold blocks `start..end`, in order.
fn covering(
    writes: &[(u64, u64, usize, u64)],
    start: u64,
    end: u64,
) -> impl Iterator<Item = (u64, u64, usize, u64)> + '_ {
    let k = writes.partition_point(|w| w.1 <= start);
    writes[k..].iter().copied().take_while(move |w| w.0 < end)
}

/// Operation `i`'s blob, read from the stream and checked against its signed hash.
fn read_blob<R: Read>(payload: &mut R, i: usize, manifest: &Manifest) -> Result<Vec<u8>> {
    let op = &manifest.operations[i];
    let blob = read_vec(payload, op.data_length, Section::Data)?;
    if op.data_length > 0 && crate::format::data_digest(op.op, &blob) != op.data_sha256 {
        return Err(Error::BlobMismatch { op: i });
    }
    Ok(blob)
}

/// What operation `i` writes (`None` for zeros), decoded from its checked blob and
/// reference.
fn decode_op(
    manifest: &Manifest,
    i: usize,
    blob: Vec<u8>,
    reference: Vec<u8>,
) -> Result<Option<Vec<u8>>> {
    let op = &manifest.operations[i];
    let len = (op.target_blocks() * BLOCK_SIZE) as usize;
    Ok(match op.op {
        OpType::Zero => None,
        OpType::Copy => Some(reference),
        OpType::Recompress => Some(
            recompress::build(
                &blob,
                &reference,
                len,
                codec_of(manifest.recompressor.as_deref().unwrap_or_default()),
            )
            .map_err(|reason| Error::Decode { op: i, reason })?,
        ),
        OpType::Replace
        | OpType::ReplaceRaw
        | OpType::Patch
        | OpType::Chain
        | OpType::Bsdiff
        | OpType::ReplaceXz
        | OpType::ChainXz
        | OpType::PatchXz => {
            Some(
                decode(op.op, blob, reference, len).map_err(|e| Error::Decode {
                    op: i,
                    reason: e.to_string(),
                })?,
            )
        }
    })
}

/// The source blocks operation `i` builds on (none for most), checked against the signed
/// hash.
fn read_source_reference<S: ReadAt + ?Sized>(
    i: usize,
    op: &Operation,
    manifest: &Manifest,
    source: Option<&S>,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if op.source.is_empty() {
        return Ok(out);
    }
    let (src, size) = source_of(i, manifest, source)?;
    read_extents(src, &op.source, size, &mut out)
        .map_err(|e| Error::io("reading source blocks", e))?;
    if sha256(&out) != op.source_sha256 {
        return Err(Error::SourceModified { op: Some(i) });
    }
    Ok(out)
}

/// The source operation `i` reads, and its size: an error if the payload has none or the
/// caller gave none.
fn source_of<'s, S: ?Sized>(
    i: usize,
    manifest: &Manifest,
    source: Option<&'s S>,
) -> Result<(&'s S, u64)> {
    match (source, manifest.source) {
        (Some(src), Some(id)) => Ok((src, id.size)),
        _ => Err(Error::MissingSource(format!(
            "operation {i} reads a source that is not there"
        ))),
    }
}

/// Bytes of a COPY the writing thread moves at a time.
const COPY_PIECE: usize = 1 << 20;

/// Where an operation's bytes go as they are made: the target (an image of `size` bytes),
/// and the tree and the resume record's digest, if kept.
struct Placing<'a, T: ?Sized> {
    target: &'a mut T,
    size: u64,
    stream: Option<&'a mut StreamTree>,
    digest: Option<&'a mut ChainDigest>,
}

/// COPY operation `i` done by the writing thread piece by piece: its source blocks read and
/// hashed, and written over its target extents, in one buffer of [`COPY_PIECE`] bytes
/// instead of the operation's megabytes. Its source's hash is known at the end only, so
/// blocks of a source that changed under the apply are on the target when it fails; the
/// resume record never counts them.
fn copy_op<S, T>(
    i: usize,
    op: &Operation,
    manifest: &Manifest,
    source: Option<&S>,
    mut to: Placing<'_, T>,
    buf: &mut Vec<u8>,
) -> Result<()>
where
    S: ReadAt + ?Sized,
    T: WriteAt + ?Sized,
{
    use sha2::Digest;
    let (src, size) = source_of(i, manifest, source)?;
    // Page-aligned: the kernel's copy from the page cache runs at a fraction of its speed
    // into a buffer a few bytes past a page boundary ([`keel_io::page_aligned`]).
    let buf = keel_io::page_aligned(buf, COPY_PIECE);
    let placed: Vec<(u64, usize, usize)> = placed(op, to.size).collect();
    let total = (op.source_blocks() * BLOCK_SIZE) as usize;
    let mut hash = sha2::Sha256::new();
    let (mut si, mut used) = (0usize, 0u64);
    let (mut at, mut pk) = (0usize, 0usize);
    while at < total {
        let n = (total - at).min(COPY_PIECE);
        // The output's bytes at..at + n, from as many source extents as they span.
        let mut filled = 0usize;
        while filled < n {
            let Some(e) = op.source.get(si) else {
                break;
            };
            let off = e.start * BLOCK_SIZE + used;
            let m = (e.blocks * BLOCK_SIZE - used).min((n - filled) as u64) as usize;
            // The image's last block may be partial and reads as zeros.
            let have = size.saturating_sub(off).min(m as u64) as usize;
            src.read_exact_at(&mut buf[filled..filled + have], off)
                .map_err(|e| Error::io("reading source blocks", e))?;
            buf[filled + have..filled + m].fill(0);
            filled += m;
            used += m as u64;
            if used == e.blocks * BLOCK_SIZE {
                (si, used) = (si + 1, 0);
            }
        }
        let piece = &buf[..filled];
        hash.update(piece);
        // The parts of the target extents (in output order) these bytes cover.
        while pk < placed.len() && placed[pk].1 + placed[pk].2 <= at {
            pk += 1;
        }
        for &(off, start, keep) in placed[pk..].iter().take_while(|p| p.1 < at + filled) {
            let (lo, hi) = (start.max(at), (start + keep).min(at + filled));
            if lo >= hi {
                continue;
            }
            let bytes = &piece[lo - at..hi - at];
            let dst = off + (lo - start) as u64;
            to.target
                .write_all_at(bytes, dst)
                .map_err(|e| Error::io(format!("operation {i}: writing the target"), e))?;
            if let Some(s) = to.stream.as_deref_mut() {
                s.write(dst, bytes);
            }
            if let Some(d) = to.digest.as_deref_mut() {
                d.update(bytes);
            }
        }
        if filled < n {
            break;
        }
        at += n;
    }
    if at < total || <[u8; 32]>::from(hash.finalize()) != op.source_sha256 {
        return Err(Error::SourceModified { op: Some(i) });
    }
    Ok(())
}

/// Write operation `i`'s output over its target extents (zero them for ZERO); nothing
/// past the image's end is written (its last block may be partial).
fn write_op<T: WriteAt + ?Sized>(
    i: usize,
    op: &Operation,
    out: Option<&[u8]>,
    target: &mut T,
    target_size: u64,
) -> Result<()> {
    for (off, at, keep) in placed(op, target_size) {
        match out {
            // The kernel zeroes the range (no copying zeros in) where it can.
            None => target
                .write_zeros(off, keep as u64)
                .map_err(|e| Error::io(format!("operation {i}: zeroing the target"), e))?,
            Some(out) => target
                .write_all_at(&out[at..at + keep], off)
                .map_err(|e| Error::io(format!("operation {i}: writing the target"), e))?,
        }
    }
    Ok(())
}

/// Where operation `op`'s output lands: for each target extent, its byte offset in the
/// image, where its bytes start in the output (extents laid end to end in whole blocks),
/// and how many of them fall inside an image of `size` bytes.
pub(super) fn placed(op: &Operation, size: u64) -> impl Iterator<Item = (u64, usize, usize)> + '_ {
    op.target.iter().scan(0usize, move |at, e| {
        let off = e.start * BLOCK_SIZE;
        let n = (e.blocks * BLOCK_SIZE) as usize;
        let keep = size.saturating_sub(off).min(n as u64) as usize;
        let here = *at;
        *at += n;
        Some((off, here, keep))
    })
}

/// Tell `stream` what operation `op` wrote (`None`: zeros), as [`write_op`] lays it out.
pub(super) fn feed(stream: &mut StreamTree, op: &Operation, out: Option<&[u8]>, size: u64) {
    for (off, at, keep) in placed(op, size) {
        match out {
            None => stream.zeros(off, keep as u64),
            Some(out) => stream.write(off, &out[at..at + keep]),
        }
    }
}

/// The tree (and parity) to build from the writes: when the manifest signs a dm-verity
/// root over exactly the image, whose tree then binds every byte the digest binds.
fn stream_tree(manifest: &Manifest, parity: Option<&FecGeometry>) -> Result<Option<StreamTree>> {
    let Some(v) = &manifest.verity else {
        return Ok(None);
    };
    let d = RootDescriptor::parse(v)?;
    if d.params().data_size() != manifest.target.size {
        return Ok(None);
    }
    let s = StreamTree::new(d.params())?;
    Ok(Some(match parity {
        Some(g) => s.parity(g)?,
        None => s,
    }))
}

/// The target against the signed dm-verity root, from the tree built as it was written
/// (what was not seen whole is read back). The image digest is not computed: the tree
/// covers the same bytes.
fn check_streamed<T: ReadAt + ?Sized>(
    manifest: &Manifest,
    stream: StreamTree,
    target: &T,
    opts: &ApplyOptions<'_>,
) -> Result<Streamed> {
    // Reading back is not writing: the apply's observer keeps its count (at the total),
    // only its cancel switch is consulted.
    struct CancelOnly<'a>(&'a dyn Progress);
    impl Progress for CancelOnly<'_> {
        fn progress(&self, _: u64, _: u64) {}
        fn cancelled(&self) -> bool {
            self.0.cancelled()
        }
    }
    let cancel = opts.progress.map(CancelOnly);
    let mut build = BuildOptions::default();
    if let Some(c) = &cancel {
        build = build.progress(c);
    }
    let streamed = stream.finish(target, &build).map_err(|e| match e {
        keel_verity::Error::Cancelled => Error::Cancelled,
        e => Error::from(e),
    })?;
    let d = RootDescriptor::parse(manifest.verity.as_deref().unwrap_or_default())?;
    if streamed.tree.root_hash() != d.root_hash() {
        return Err(Error::TargetMismatch(TargetCheck::VerityRoot));
    }
    Ok(streamed)
}

/// The whole written target against the manifest: digest, and dm-verity root if signed.
fn check_target<T: ReadAt + ?Sized>(manifest: &Manifest, target: &T) -> Result<()> {
    let h = image_digest(target, manifest.target.size)
        .map_err(|e| Error::io("reading the target", e))?;
    if h != manifest.target.digest {
        return Err(Error::TargetMismatch(TargetCheck::Digest {
            found: h,
            expected: manifest.target.digest,
        }));
    }
    if let Some(v) = &manifest.verity {
        let d = RootDescriptor::parse(v)?;
        let tree = HashTree::build(d.params(), target)?;
        if tree.root_hash() != d.root_hash() {
            return Err(Error::TargetMismatch(TargetCheck::VerityRoot));
        }
    }
    Ok(())
}

/// Whether two open files are the same file or device ([`keel_io::same_file`]).
pub use keel_io::same_file;

/// [`apply`] between files: refuses a target that is the source, ties the resume record
/// to the target's device and inode, and grows a regular target file to the image's size
/// once the signed manifest gives it, if the file system has the room (a block device
/// must already be large enough).
pub fn apply_files<R: Read>(
    payload: R,
    source: Option<&std::fs::File>,
    target: &mut std::fs::File,
    opts: &ApplyOptions<'_>,
) -> Result<Applied> {
    Payload::open_at(payload, opts.keyring, opts.clock())?.apply_file(source, target, opts)
}

impl<R: Read> Payload<R> {
    /// [`Payload::apply`] between files, as [`apply_files`].
    pub fn apply_file(
        mut self,
        source: Option<&std::fs::File>,
        target: &mut std::fs::File,
        opts: &ApplyOptions<'_>,
    ) -> Result<Applied> {
        if self.images.len() > 1 {
            return Err(Error::Bundle {
                images: self.images.len(),
            });
        }
        self.apply_next_file(source, target, opts)
    }

    /// [`Payload::apply_next`] between files, as [`apply_files`]: a bundle's images one
    /// after another, each into its own file or device.
    pub fn apply_next_file(
        &mut self,
        source: Option<&std::fs::File>,
        target: &mut std::fs::File,
        opts: &ApplyOptions<'_>,
    ) -> Result<Applied> {
        use std::os::unix::fs::MetadataExt;
        if let Some(s) = source {
            if same_file(s, target) {
                return Err(Error::TargetIsSource);
            }
        }
        let meta = target
            .metadata()
            .map_err(|e| Error::io("inspecting the target", e))?;
        let ft = meta.file_type();
        if !ft.is_file() && !std::os::unix::fs::FileTypeExt::is_block_device(&ft) {
            return Err(Error::TargetKind);
        }
        let id = if ft.is_file() {
            (meta.dev(), meta.ino())
        } else {
            (meta.rdev(), 0)
        };
        self.apply_to(
            source,
            target,
            opts,
            id,
            |f: &mut std::fs::File, need, data| {
                let have = ReadAt::size(f).map_err(|e| Error::io("target size", e))?;
                if have >= need || !ft.is_file() {
                    return Ok(have);
                }
                let free = nix::sys::statvfs::fstatvfs(&*f)
                    .map(|v| v.blocks_available().saturating_mul(v.fragment_size()))
                    .map_err(|e| Error::io("checking the free space for the target", e.into()))?;
                // What the file grows by takes space only where the image has data (its zeros
                // are holes); a file system short of that fails the write itself, by name.
                let grows = (need - have).min(data);
                if free < grows {
                    return Err(Error::TargetSpace { need: grows, free });
                }
                f.set_len(need)
                    .map_err(|e| Error::io("growing the target file", e))?;
                Ok(need)
            },
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn ext(list: &[(u64, u64)]) -> Vec<Extent> {
        list.iter()
            .map(|&(start, blocks)| Extent { start, blocks })
            .collect()
    }

    fn op(op: OpType, target: &[(u64, u64)], source: &[(u64, u64)]) -> Operation {
        Operation {
            op,
            target: ext(target),
            source: ext(source),
            data_offset: 0,
            data_length: 0,
            data_sha256: [0; 32],
            source_sha256: [0; 32],
        }
    }

    /// A manifest of `ops` from a source of `source` bytes (if any) to `size` bytes.
    fn manifest(source: Option<u64>, size: u64, operations: Vec<Operation>) -> Manifest {
        let id = |size| crate::format::ImageId {
            size,
            digest: [0; 32],
        };
        Manifest {
            source: source.map(id),
            target: id(size),
            verity: None,
            compatible: "test".into(),
            version: "1".into(),
            operations,
            recompressor: None,
        }
    }

    #[test]
    fn a_chain_waits_for_the_last_operation_that_wrote_its_reference_only() {
        let ops = [
            op(OpType::ReplaceXz, &[(0, 2)], &[]),
            op(OpType::Zero, &[(2, 1)], &[]),
            op(OpType::Copy, &[(3, 1)], &[(9, 1)]),
            op(OpType::ChainXz, &[(10, 4)], &[(1, 2)]),
            op(OpType::PatchXz, &[(4, 1)], &[(0, 1)]),
            op(OpType::Chain, &[(5, 1)], &[(3, 1)]),
            op(OpType::ChainXz, &[(6, 1)], &[(0, 1), (11, 1)]),
        ];
        // Op 3 reads blocks 1 and 2 (ops 0 and 1 wrote them): once two are written. Op 5
        // reads op 2's block, op 6 op 0's and op 3's.
        assert_eq!(
            ready_after(&ops, &target_writes(&ops)),
            vec![0, 0, 0, 2, 0, 3, 4]
        );
        // Without a CHAIN nothing waits.
        assert_eq!(
            ready_after(&ops[..3], &target_writes(&ops[..3])),
            vec![0, 0, 0]
        );
    }

    /// A CHAIN's reference comes from the outputs kept in memory where they hold it: the
    /// target is not read, whatever it holds. Blocks a COPY wrote, or an output too large
    /// to keep, are read back and the whole reference checked against its signed hash;
    /// past the image's end it is zeros either way.
    #[test]
    fn a_chains_reference_comes_from_memory_or_is_read_back_and_checked() {
        struct Reads<'a>(&'a [u8], std::sync::atomic::AtomicU64);
        impl ReadAt for Reads<'_> {
            fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
                self.1
                    .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
                self.0.read_exact_at(buf, offset)
            }
            fn size(&self) -> io::Result<u64> {
                Ok(self.0.len() as u64)
            }
        }
        let b = BLOCK_SIZE as usize;
        // The image ends 100 bytes into block 4.
        let size = (4 * b + 100) as u64;
        let decoded = keel_testsupport::seeded_bytes(3, 3 * b);
        let mut ops = vec![
            op(OpType::ReplaceXz, &[(0, 1), (3, 2)], &[]),
            op(OpType::Copy, &[(1, 1)], &[(0, 1)]),
            op(OpType::ChainXz, &[(5, 1)], &[(4, 1), (0, 1)]),
            op(OpType::ChainXz, &[(6, 1)], &[(1, 1), (3, 1)]),
        ];
        // What the target holds: op 0's output, except in block 4 (a device that returns
        // other bytes than were written there), and the COPY's block.
        let mut image = vec![0u8; 7 * b];
        image[..b].copy_from_slice(&decoded[..b]);
        image[3 * b..5 * b].copy_from_slice(&decoded[b..]);
        image[4 * b + 7] ^= 1;
        image[b..2 * b].fill(0x5a);
        let mut want2 = decoded[2 * b..2 * b + 100].to_vec();
        want2.resize(b, 0);
        want2.extend_from_slice(&decoded[..b]);
        let mut want3 = vec![0x5a; b];
        want3.extend_from_slice(&decoded[b..2 * b]);
        ops[2].source_sha256 = sha256(&want2);
        ops[3].source_sha256 = sha256(&want3);
        let m = manifest(None, size, ops.clone());
        let jobs = Jobs::new(1);
        let mut plan = Schedule::new(&ops, 0, &jobs);
        // The CHAINs were read from the payload: op 0's output is kept for them.
        plan.next_read = ops.len();
        plan.written(0, Some(decoded.clone()));
        plan.written(1, None);
        assert!(plan.kept.contains_key(&0));
        let target = Reads(&image, Default::default());
        let refused = |j: usize, r: &[u8]| match check_chain_reference(j, &ops[j], r) {
            Err(Error::TargetMismatch(TargetCheck::ChainReference { op })) => op == j,
            _ => false,
        };
        // All of op 2's reference is op 0's output: nothing read, zeros past the end.
        let r2 = plan.chain_reference(2, &m, &target).unwrap();
        assert_eq!(r2, want2);
        assert!(!refused(2, &r2));
        assert_eq!(target.1.load(std::sync::atomic::Ordering::Relaxed), 0);
        // Op 3's first block is the COPY's: read back.
        let r3 = plan.chain_reference(3, &m, &target).unwrap();
        assert_eq!(r3, want3);
        assert!(!refused(3, &r3));
        assert_eq!(
            target.1.load(std::sync::atomic::Ordering::Relaxed),
            BLOCK_SIZE
        );
        let mut bad = image.clone();
        bad[b + 9] ^= 1;
        assert!(refused(3, &plan.chain_reference(3, &m, &&bad[..]).unwrap()));
        // A signed hash that does not match is refused from memory too.
        let mut wrong = ops[2].clone();
        wrong.source_sha256[0] ^= 1;
        assert!(check_chain_reference(2, &wrong, &r2).is_err());
        // An output that does not fit beside what is held, or one for CHAINs not yet read
        // (far ahead), is not kept: read back, and the bytes the device returned at
        // block 4 are caught.
        for (held, next_read) in [(APPLY_HELD - 1, ops.len()), (0, 2)] {
            let mut plan = Schedule::new(&ops, 0, &jobs);
            (plan.held, plan.next_read) = (held, next_read);
            plan.written(0, Some(decoded.clone()));
            assert!(plan.kept.is_empty());
            plan.next_read = ops.len();
            assert!(refused(2, &plan.chain_reference(2, &m, &target).unwrap()));
        }
    }

    /// While a CHAIN is to come (the writer at what it builds on), operations off its road
    /// leave one thread free for it; once it has started, or with one thread only, they
    /// take every thread. The road goes first.
    #[test]
    fn a_thread_waits_for_the_next_link_of_a_chain() {
        let job = |i| (i, Vec::new(), None);
        let mut q = Queue::default();
        q.other.push_back(job(1));
        q.other.push_back(job(2));
        q.other.push_back(job(3));
        q.road.push_back(job(0));
        assert_eq!(q.next(2).map(|(j, other)| (j.0, other)), Some((0, false)));
        // A CHAIN is read and the writer is at the operation it builds on.
        q.soon = 1;
        assert_eq!(q.next(2).map(|(j, other)| (j.0, other)), Some((1, true)));
        assert!(
            q.next(2).is_none(),
            "the second thread is kept for the CHAIN"
        );
        assert_eq!(q.next(3).map(|(j, other)| (j.0, other)), Some((2, true)));
        q.road.push_back(job(9));
        q.soon = 0;
        assert_eq!(q.next(3).map(|(j, other)| (j.0, other)), Some((9, false)));
        assert_eq!(q.next(3).map(|(j, other)| (j.0, other)), Some((3, true)));
        assert_eq!(q.busy_other, 3);
        // A lone thread keeps nothing back: the writer may be waiting for what is off
        // the road before it writes what the CHAIN reads.
        let mut q = Queue::default();
        q.other.push_back(job(1));
        q.soon = 1;
        assert_eq!(q.next(1).map(|(j, other)| (j.0, other)), Some((1, true)));
    }

    /// A COPY done piece by piece on the writing thread writes, and chains into the resume
    /// record, what the whole output decoded at once would have: source and target extents
    /// cut differently, more than one piece long, the source's last block partial and the
    /// target image ending inside the last block written.
    #[test]
    fn a_copy_in_pieces_writes_what_the_whole_output_would() {
        let source_size = (3 << 20) + 1000;
        let source = keel_testsupport::seeded_bytes(7, source_size);
        let last = (source_size as u64).div_ceil(BLOCK_SIZE) - 1;
        let src = [
            (5, 300),
            (400, 1),
            (310, 50),
            (600, 168),
            (last, 1),
            (0, 32),
        ];
        let tgt = [(0, 100), (200, 1), (150, 20), (1000, 431)];
        let target_size = 1430 * BLOCK_SIZE + 123;
        let mut copy = op(OpType::Copy, &tgt, &src);
        assert_eq!(copy.source_blocks(), copy.target_blocks());
        assert!(copy.source_blocks() * BLOCK_SIZE > 2 * COPY_PIECE as u64);
        let mut whole = Vec::new();
        read_extents(&source[..], &copy.source, source_size as u64, &mut whole).unwrap();
        copy.source_sha256 = sha256(&whole);
        let manifest = manifest(Some(source_size as u64), target_size, vec![copy.clone()]);
        let before = keel_testsupport::seeded_bytes(9, target_size as usize);
        let mut expected = before.clone();
        write_op(0, &copy, Some(&whole), &mut expected, target_size).unwrap();
        let prev = [3u8; 32];
        let expected_digest = chain_digest(&prev, 0, &copy, Some(&whole), target_size);

        let mut target = before.clone();
        let mut digest = ChainDigest::new(&prev, 0);
        let to = Placing {
            target: &mut target,
            size: target_size,
            stream: None,
            digest: Some(&mut digest),
        };
        let mut buf = Vec::new();
        copy_op(0, &copy, &manifest, Some(&source[..]), to, &mut buf).unwrap();
        assert!(target == expected, "the pieces wrote other bytes");
        assert_eq!(target.len() as u64, target_size);
        assert_eq!(digest.finish(), expected_digest);

        // A source that is not the one hashed: refused, naming the operation.
        let mut other = source.clone();
        other[5 * BLOCK_SIZE as usize + 17] ^= 1;
        let to = Placing {
            target: &mut target,
            size: target_size,
            stream: None,
            digest: None,
        };
        let e = copy_op(0, &copy, &manifest, Some(&other[..]), to, &mut buf).unwrap_err();
        assert!(matches!(e, Error::SourceModified { op: Some(0) }), "{e}");
    }
}
