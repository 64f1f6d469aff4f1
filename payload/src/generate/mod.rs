//! Making a payload: every source block hashed, target blocks found anywhere in the source
//! copied, zero blocks zeroed; then the new blocks, on all cores, each operation keeping
//! the smallest of its candidate encodings:
//!
//! - in ext4 and uncompressed EROFS images, each changed file with the part of its previous
//!   version (same path)
//!   around the change as reference (PATCH, or BSDIFF where bsdiff wins: executables),
//!   small files grouped;
//! - new files grouped by extension and name, each group chained to the group before it
//!   (CHAIN: the target blocks an earlier operation wrote as reference), which gives zstd
//!   the long context of one stream in operations of bounded size;
//! - in squashfs images (zstd), changed files and fragment blocks paired on their
//!   decompressed content, their blocks re-created on apply (RECOMPRESS), where this
//!   build's zstd reproduces every one of them;
//! - the rest (file system metadata) in groups of nearby runs, patched against the source
//!   around the position the neighbouring copies predict, or plain zstd.
//!
//! Memory: both images plus 40 bytes per source block and the payload itself (the peers
//! need 1.6 to 4.6 GB for a 512 MiB pair).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

mod blocks;
mod encode;
mod erofsz;
mod full;
mod gzfile;
mod squash;

use keel_io::{Progress, Threads};
use keel_trust::{Context, Signer};
use keel_verity::RootDescriptor;

use crate::error::{Error, Result};
use crate::format::{
    encode_manifest, pack_manifest, sha256, Extent, Header, ImageId, Manifest, OpType, Operation,
    BLOCK_SIZE, MAX_OP_BYTES,
};
use blocks::{
    block, extents_bytes, fs_files, meta_refs, par_ordered, push_extent, scale, Kind, BS,
};
use encode::{xz_blob, zstd_patch, zstd_plain, XZ_FROM_LEVEL};

/// Blocks of new data encoded together.
const NEW_CHUNK_BLOCKS: u64 = 512;
/// An operation to encode: type, target extents, source extents.
type Plan = (OpType, Vec<Extent>, Vec<Extent>);

/// New runs at most this far apart are encoded together.
const MERGE_GAP_BLOCKS: u64 = 256;
/// Source bytes on each side of the predicted position used as patch reference.
const REF_MARGIN: u64 = 2 << 20;
/// zstd level at which candidate encodings are compared.
const PROBE_LEVEL: i32 = 6;
/// An encoding this many times smaller than its input at the probe level is kept at that
/// level.
const NEAR_COPY: usize = 64;
/// Content that plain zstd at the probe level shrinks by less than this fraction of its
/// size is encoded at the probe level.
const INCOMPRESSIBLE: usize = 16;

/// What to put in the manifest and how hard to compress.
///
/// ```
/// use keel_payload::GenerateOptions;
/// use keel_io::{Progress, Threads};
/// let opts = GenerateOptions::new("acme-os", "2.1").level(9).threads(Threads::exactly(2));
/// assert_eq!((opts.level, opts.version.as_str()), (9, "2.1"));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GenerateOptions {
    /// The system the payload is for.
    pub compatible: String,
    /// The target's version (dotted numbers).
    pub version: String,
    /// The target's signed dm-verity root descriptor, if it has one.
    pub verity: Option<RootDescriptor>,
    /// zstd level (19 by default).
    pub level: i32,
    /// Worker threads (default: every core).
    pub threads: Threads,
    /// Pair changed files with their old versions through the ext4 or EROFS layout of both
    /// images (on by default; other images, or other block sizes, are unaffected).
    pub file_pairing: bool,
}

impl GenerateOptions {
    /// Defaults: level 19, all cores, no verity, file pairing on.
    pub fn new(compatible: &str, version: &str) -> Self {
        GenerateOptions {
            compatible: compatible.into(),
            version: version.into(),
            verity: None,
            level: 19,
            threads: Threads::AllCores,
            file_pairing: true,
        }
    }

    /// Bind the target's dm-verity root ([`GenerateOptions::verity`]).
    pub fn verity(mut self, root: RootDescriptor) -> Self {
        self.verity = Some(root);
        self
    }

    /// Set [`GenerateOptions::level`].
    pub fn level(mut self, level: i32) -> Self {
        self.level = level;
        self
    }

    /// Set [`GenerateOptions::threads`].
    pub fn threads(mut self, threads: Threads) -> Self {
        self.threads = threads;
        self
    }

    /// Set [`GenerateOptions::file_pairing`].
    pub fn file_pairing(mut self, on: bool) -> Self {
        self.file_pairing = on;
        self
    }
}

/// The sha256 of each of the first `count` blocks of `img` (a short last block as if
/// padded with zeros), on every core, several blocks at a time, zero blocks by
/// comparison ([`crate::digest::sha256_pieces_sparse`]).
fn hashes(img: &[u8], count: u64, threads: usize) -> Vec<[u8; 32]> {
    let per = count.div_ceil(threads.max(1) as u64).max(1);
    let parts: Vec<(u64, u64)> = (0..count)
        .step_by(per as usize)
        .map(|s| (s, (s + per).min(count)))
        .collect();
    Threads::exactly(threads)
        .map(parts, |(a, b)| {
            let mut out = vec![[0u8; 32]; (b - a) as usize];
            // Whole blocks inside the image together, in pieces the cache holds; a short
            // last block (or blocks past the image) one by one.
            let whole = (img.len() as u64 / BLOCK_SIZE).clamp(a, b);
            for (i, d) in (a..whole).step_by(4096).zip(out.chunks_mut(4096)) {
                let to = (i + 4096).min(whole);
                let bytes = &img[(i * BLOCK_SIZE) as usize..(to * BLOCK_SIZE) as usize];
                crate::digest::sha256_pieces_sparse(bytes, BS, &mut d[..(to - i) as usize]);
            }
            for i in whole..b {
                out[(i - a) as usize] = sha256(&block(img, i));
            }
            out
        })
        .into_iter()
        .flatten()
        .collect()
}

/// Target blocks of one group of files with old versions (the reference gives context).
const PAIRED_GROUP_BLOCKS: u64 = 256;
/// Target blocks of one group of new files.
const NEW_GROUP_BLOCKS: u64 = 2048;
/// Blocks of earlier new files a group of new files builds on.
const CHAIN_BLOCKS: u64 = 2048;
/// Most changed blocks of one file encoded as one piece.
const PIECE_BLOCKS: u64 = 1024;
/// Changed blocks of a file this far apart (or closer) form one piece.
const RUN_GAP_BLOCKS: u64 = 32;
/// Old-version blocks on each side of a piece's expected place, besides the size change.
const REF_MARGIN_BLOCKS: u64 = 64;

fn extents_total(v: &[Extent]) -> u64 {
    v.iter().map(|e| e.blocks).sum()
}

/// Blocks `from..to` (in file order) of a file given as extents.
fn file_slice(ext: &[(u64, u64)], from: u64, to: u64) -> Vec<Extent> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    for &(s, l) in ext {
        let (a, b) = (pos.max(from), (pos + l).min(to));
        if a < b {
            push_extent(&mut out, s + (a - pos), b - a);
        }
        pos += l;
        if pos >= to {
            break;
        }
    }
    out
}

/// Pack pieces (target extents, source extents) into groups of at most `target_max`
/// target and `source_max` source blocks.
fn group(
    pieces: Vec<(PieceKey, Vec<Extent>, Vec<Extent>)>,
    target_max: u64,
    source_max: u64,
) -> Vec<(Vec<Extent>, Vec<Extent>)> {
    let mut groups: Vec<(Vec<Extent>, Vec<Extent>)> = Vec::new();
    for (_, tgt, src) in pieces {
        let fits = groups.last().is_some_and(|(t, s)| {
            extents_total(t) + extents_total(&tgt) <= target_max
                && extents_total(s) + extents_total(&src) <= source_max
        });
        match groups.last_mut() {
            Some((t, s)) if fits => {
                for e in tgt {
                    push_extent(t, e.start, e.blocks);
                }
                for e in src {
                    push_extent(s, e.start, e.blocks);
                }
            }
            _ => groups.push((tgt, src)),
        }
    }
    groups
}

/// Order of pieces: (extension, file name, first target block) for new files, the
/// first target block alone for files with an old version.
type PieceKey = (String, String, u64);

/// Pair the target's changed files with the source's files of the same path (ext4 or
/// EROFS): groups of target extents, in file order, with the old versions as their
/// reference, as update_engine does. Marks the blocks it takes as [`Kind::InFile`].
fn plan_files(source: &[u8], target: &[u8], kinds: &mut [Kind]) -> Vec<Plan> {
    let new_files = fs_files(target);
    if new_files.is_empty() {
        return Vec::new();
    }
    let old_files = fs_files(source);
    let old: HashMap<&str, &crate::fs::ext4::File> =
        old_files.iter().map(|f| (f.path.as_str(), f)).collect();
    let max = MAX_OP_BYTES / BLOCK_SIZE;
    // Each file's changed blocks in file order, keyed by where the first one lies.
    let mut pieces: Vec<(PieceKey, Vec<Extent>, Vec<Extent>)> = Vec::new();
    for f in &new_files {
        let total: u64 = f.extents.iter().map(|e| e.1).sum();
        // The file's changed blocks: (position in the file, block in the image).
        let mut changed: Vec<(u64, u64)> = Vec::new();
        let mut pos = 0u64;
        for &(start, len) in &f.extents {
            for b in start..start + len {
                if kinds.get(b as usize) == Some(&Kind::New) {
                    kinds[b as usize] = Kind::InFile;
                    changed.push((pos, b));
                }
                pos += 1;
            }
        }
        if changed.is_empty() {
            continue;
        }
        let old_f = old.get(f.path.as_str());
        // Runs of changed blocks close together in the file, at most PIECE_BLOCKS each.
        let mut runs: Vec<&[(u64, u64)]> = Vec::new();
        let mut first = 0;
        for i in 1..=changed.len() {
            let split = i == changed.len()
                || changed[i].0 - changed[i - 1].0 > RUN_GAP_BLOCKS
                || (i - first) as u64 >= PIECE_BLOCKS;
            if split {
                runs.push(&changed[first..i]);
                first = i;
            }
        }
        let name = f.path.rsplit('/').next().unwrap_or_default();
        let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
        let mut last_ref: Option<(u64, u64)> = None;
        for run in runs {
            let mut tgt = Vec::new();
            for &(_, b) in run {
                push_extent(&mut tgt, b, 1);
            }
            let (a, z) = (run[0].0, run[run.len() - 1].0 + 1);
            let Some(o) = old_f else {
                pieces.push((
                    (ext.to_string(), name.to_string(), tgt[0].start),
                    tgt,
                    Vec::new(),
                ));
                continue;
            };
            // The old version around the same place: positions scale with the size change,
            // and the margin covers what an insertion or deletion shifts.
            let old_total: u64 = o.extents.iter().map(|e| e.1).sum();
            let margin = REF_MARGIN_BLOCKS + old_total.abs_diff(total).min(max / 4);
            let lo = scale(a, old_total, total).saturating_sub(margin);
            let hi = scale(z, old_total, total)
                .saturating_add(margin)
                .min(old_total)
                .min(lo + max);
            // Neighbouring runs of one file share their reference instead of repeating it.
            let merged = match (last_ref, pieces.last_mut()) {
                (Some((plo, phi)), Some((_, pt, ps)))
                    if lo <= phi
                        && extents_total(pt) + extents_total(&tgt) <= PIECE_BLOCKS
                        && hi.max(phi) - plo.min(lo) <= max =>
                {
                    let (nlo, nhi) = (plo.min(lo), hi.max(phi));
                    for e in tgt.iter() {
                        push_extent(pt, e.start, e.blocks);
                    }
                    *ps = file_slice(&o.extents, nlo, nhi);
                    last_ref = Some((nlo, nhi));
                    true
                }
                _ => false,
            };
            if !merged && lo < hi {
                let src = file_slice(&o.extents, lo, hi);
                pieces.push(((String::new(), String::new(), tgt[0].start), tgt, src));
                last_ref = Some((lo, hi));
            } else if !merged {
                pieces.push((
                    (ext.to_string(), name.to_string(), tgt[0].start),
                    tgt,
                    Vec::new(),
                ));
                last_ref = None;
            }
        }
    }
    // Files with an old version go in disk order, with their old versions as reference.
    // New files go by extension and name: like with like gives zstd more to match.
    let (mut paired, mut fresh): (Vec<_>, Vec<_>) =
        pieces.into_iter().partition(|p| !p.2.is_empty());
    paired.sort_by(|a, b| a.0.cmp(&b.0));
    fresh.sort_by(|a, b| a.0.cmp(&b.0));
    let mut plans: Vec<(OpType, Vec<Extent>, Vec<Extent>)> =
        group(paired, PAIRED_GROUP_BLOCKS, max)
            .into_iter()
            .map(|(t, s)| (OpType::Patch, t, s))
            .collect();
    // Each group of new files may build on the one before it, already in the target: the
    // context zstd would have in one long stream, in operations of bounded size.
    let mut before: Vec<Extent> = Vec::new();
    for (t, _) in group(fresh, NEW_GROUP_BLOCKS, max) {
        if before.is_empty() {
            plans.push((OpType::Replace, t.clone(), Vec::new()));
        } else {
            plans.push((OpType::Chain, t.clone(), tail(&before, CHAIN_BLOCKS)));
        }
        before.extend(t);
        before = tail(&before, CHAIN_BLOCKS);
    }
    plans
}

/// Changed EROFS metadata blocks (inodes with their inline tails, xattrs and directory
/// entries, many to a block) grouped and patched against the source blocks holding the
/// same paths' inodes, where zstd finds the old tails and entries: the blocks a delta
/// over raw blocks would compress alone. Marks the blocks it takes as [`Kind::InFile`].
fn plan_meta(source: &[u8], target: &[u8], kinds: &mut [Kind]) -> Vec<Plan> {
    // Each changed target block, with the source blocks of the old versions of its entries.
    let refs: BTreeMap<u64, BTreeSet<u64>> = meta_refs(source, target)
        .into_iter()
        .filter(|(t, _)| kinds.get(*t as usize) == Some(&Kind::New))
        .collect();
    let max = MAX_OP_BYTES / BLOCK_SIZE;
    let mut plans = Vec::new();
    let mut group: Option<(Vec<Extent>, BTreeSet<u64>)> = None;
    for (t, srcs) in refs {
        let full = group.as_ref().is_some_and(|(tg, rs)| {
            extents_total(tg) >= PIECE_BLOCKS || rs.len() + srcs.len() > max as usize
        });
        if full {
            plans.extend(group.take().map(meta_plan));
        }
        let (tg, rs) = group.get_or_insert_with(Default::default);
        push_extent(tg, t, 1);
        rs.extend(srcs);
        kinds[t as usize] = Kind::InFile;
    }
    plans.extend(group.map(meta_plan));
    plans
}

fn meta_plan((tgt, srcs): (Vec<Extent>, std::collections::BTreeSet<u64>)) -> Plan {
    let mut src = Vec::new();
    for b in srcs {
        push_extent(&mut src, b, 1);
    }
    (OpType::Patch, tgt, src)
}

/// The last `blocks` blocks of a list of extents.
fn tail(ext: &[Extent], blocks: u64) -> Vec<Extent> {
    let total = extents_total(ext);
    let mut out = Vec::new();
    let mut pos = 0;
    for e in ext {
        let skip = total
            .saturating_sub(blocks)
            .saturating_sub(pos)
            .min(e.blocks);
        if skip < e.blocks {
            out.push(Extent {
                start: e.start + skip,
                blocks: e.blocks - skip,
            });
        }
        pos += e.blocks;
    }
    out
}

/// Generate a payload turning `source` (or nothing, for a full payload) into `target`,
/// signed by `signer` (a key in memory, an HSM callback, openssl as a process).
///
/// The phases: classify every target block (zero, copy of a source block, new); pair
/// changed files through both images' ext4, EROFS or squashfs layout; cut the blocks into runs of one kind;
/// merge nearby small runs of new blocks; encode each run on the worker threads, choosing
/// the smallest of plain zstd, zstd against a reference, and bsdiff; lay the blobs out and
/// sign the manifest.
///
/// Memory: give images mapped ([`keel_io::Mapped`]) rather than read, and they stay page
/// cache the kernel can reclaim, and a sparse file's holes are taken as zeros without
/// being read ([`keel_io::known_zeros`]: an 8 GiB image holding 355 MiB costs what the
/// 355 MiB cost); the generator's own memory is then its workers' (zstd
/// windows, bsdiff's suffix arrays: about 150 MiB each), the block-hash index (32 bytes a
/// block) and the payload it returns: [`generate_file`] writes the payload as it is made
/// instead, so that nothing grows with the images (a full payload of 640 MiB of random
/// data in 24 MiB of its own memory, `tests/example_payload.rs`). Two 768 MiB ext4 images
/// make their delta in a 384 MiB memory cgroup on two threads
/// (benches/payload-vs-peers.sh).
pub fn generate<S: Signer + ?Sized>(
    source: Option<&[u8]>,
    target: &[u8],
    signer: &S,
    opts: &GenerateOptions,
) -> Result<Vec<u8>> {
    generate_observed(source, target, signer, opts, None)
}

/// [`generate`], reporting progress to `progress` (bytes of the source and target hashed,
/// then target bytes encoded, out of source + 2 x target) and stopping with
/// [`Error::Cancelled`] when it asks.
pub fn generate_observed<S: Signer + ?Sized>(
    source: Option<&[u8]>,
    target: &[u8],
    signer: &S,
    opts: &GenerateOptions,
    progress: Option<&dyn Progress>,
) -> Result<Vec<u8>> {
    let (manifest, data) = build(source, target, opts, progress)?;
    assemble(&manifest, &data, signer)
}

/// One image of a bundle to generate ([`generate_bundle`]).
#[derive(Clone, Copy, Debug)]
pub struct BundlePart<'a> {
    /// What it installs into, as the system description names it (`usr`, `kernel`).
    pub name: &'a str,
    /// A partition per slot, or a file per slot.
    pub kind: crate::format::ImageKind,
    /// The image it is a delta from (`None`: full).
    pub source: Option<&'a [u8]>,
    /// The new image.
    pub target: &'a [u8],
    /// Its signed dm-verity root, where it is a verity slot.
    pub verity: Option<&'a RootDescriptor>,
}

impl<'a> BundlePart<'a> {
    /// An image for a partition per slot (a slot class): a delta from `source`, or full.
    pub fn slot(name: &'a str, source: Option<&'a [u8]>, target: &'a [u8]) -> Self {
        BundlePart {
            name,
            kind: crate::format::ImageKind::Slot,
            source,
            target,
            verity: None,
        }
    }

    /// An image for a file per slot (a kernel, an initramfs on the ESP).
    pub fn file(name: &'a str, source: Option<&'a [u8]>, target: &'a [u8]) -> Self {
        BundlePart {
            kind: crate::format::ImageKind::File,
            ..Self::slot(name, source, target)
        }
    }

    /// With the image's signed dm-verity root.
    pub fn verity(mut self, root: &'a RootDescriptor) -> Self {
        self.verity = Some(root);
        self
    }
}

/// A signed bundle (format version 3): each part's image encoded as [`generate`] encodes
/// one (a delta where it has a source, else full; its own dm-verity root), under one
/// signature, with `opts`'s compatible string, version, level and threads for all. Each
/// part's progress is reported in turn.
pub fn generate_bundle<S: Signer + ?Sized>(
    parts: &[BundlePart<'_>],
    signer: &S,
    opts: &GenerateOptions,
    progress: Option<&dyn Progress>,
) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    let images = bundle_images(parts, opts, progress, &mut data)?;
    let m = pack_manifest(&crate::format::encode_bundle(&images))?;
    sign_and_join(crate::format::BUNDLE_VERSION, &m, &data, signer)
}

/// Each part's image encoded into `sink` in turn; their manifests.
fn bundle_images(
    parts: &[BundlePart<'_>],
    opts: &GenerateOptions,
    progress: Option<&dyn Progress>,
    sink: &mut dyn std::io::Write,
) -> Result<Vec<crate::format::BundleImage>> {
    use crate::format::{valid_image_name, BundleImage, MAX_IMAGES};
    if parts.is_empty() || parts.len() > MAX_IMAGES {
        return Err(Error::ManifestField {
            field: "images",
            reason: format!("{}: 1 to {MAX_IMAGES}", parts.len()),
        });
    }
    let mut images: Vec<BundleImage> = Vec::new();
    for p in parts {
        if !valid_image_name(p.name) || images.iter().any(|i| i.name == p.name) {
            return Err(Error::ManifestField {
                field: "image name",
                reason: format!(
                    "{:?}: 1 to 64 letters, digits, '.', '_' or '-', each name once",
                    p.name
                ),
            });
        }
        let mut o = opts.clone();
        o.verity = p.verity.cloned();
        let (manifest, data_len) = build_into(p.source, p.target, &o, progress, sink)?;
        check_texts(&manifest)?;
        images.push(BundleImage {
            name: p.name.to_string(),
            kind: p.kind,
            data_len,
            manifest,
        });
    }
    Ok(images)
}

/// The manifest and data of one image.
fn build(
    source: Option<&[u8]>,
    target: &[u8],
    opts: &GenerateOptions,
    progress: Option<&dyn Progress>,
) -> Result<(Manifest, Vec<u8>)> {
    let mut data = Vec::new();
    let (manifest, _) = build_into(source, target, opts, progress, &mut data)?;
    Ok((manifest, data))
}

/// The data blobs finished and not yet written that the encoders may hold, beyond one
/// per worker: the generator's memory does not grow with the image.
const HELD_BLOBS: usize = 64 << 20;

/// The manifest of one image, its data written to `sink` as it is encoded, in order;
/// returns the manifest and the data's length.
fn build_into(
    source: Option<&[u8]>,
    target: &[u8],
    opts: &GenerateOptions,
    progress: Option<&dyn Progress>,
    sink: &mut dyn std::io::Write,
) -> Result<(Manifest, u64)> {
    let Some(source) = source else {
        let (operations, written, digest) = full::build(target, opts, progress, sink)?;
        return Ok((
            Manifest {
                source: None,
                target: ImageId {
                    size: target.len() as u64,
                    digest,
                },
                verity: opts.verity.as_ref().map(|d| d.to_bytes().to_vec()),
                compatible: opts.compatible.clone(),
                version: opts.version.clone(),
                operations,
                recompressor: None,
            },
            written,
        ));
    };
    let source = Some(source);
    let threads = opts.threads.count();
    let (src_len, tgt_len) = (source.map_or(0, <[u8]>::len) as u64, target.len() as u64);
    let total = src_len + 2 * tgt_len;
    let report = |done: u64| -> Result<()> {
        match progress {
            Some(p) if p.cancelled() => Err(Error::Cancelled),
            Some(p) => {
                p.progress(done, total);
                Ok(())
            }
            None => Ok(()),
        }
    };
    report(0)?;
    let mut kinds = classify(source, target, threads);
    report(src_len + tgt_len)?;
    let squashfs = source
        .filter(|_| opts.file_pairing)
        .and_then(|src| squash::pair(src, target));
    let recompress = squashfs
        .as_ref()
        .map(|p| p.plan(&mut kinds, threads))
        .unwrap_or_default();
    let erofs = source
        .filter(|_| opts.file_pairing && squashfs.is_none())
        .and_then(|src| erofsz::pair(src, target));
    let erofs_jobs = erofs
        .as_ref()
        .map(|p| p.plan(&mut kinds, threads))
        .unwrap_or_default();
    // gzip files inside the file system, when no other compressor is re-created (a
    // manifest names one).
    let gz_jobs = match source {
        Some(src) if opts.file_pairing && recompress.is_empty() && erofs_jobs.is_empty() => {
            gzfile::plan(src, target, &mut kinds, threads)
        }
        _ => Vec::new(),
    };
    let file_groups = match source {
        Some(src) if opts.file_pairing => {
            let mut g = plan_files(src, target, &mut kinds);
            g.extend(plan_meta(src, target, &mut kinds));
            g
        }
        _ => Vec::new(),
    };
    let plans = runs(&kinds);
    let predicted = predict_offsets(&plans);
    let mut merged = merge_runs(plans, predicted);
    // File groups: their reference is given, not predicted.
    merged.extend(file_groups.into_iter().map(|plan| (plan, None)));
    let index = anchor_index(source);
    let images = Images {
        source,
        target,
        anchors: &index,
    };
    // Reported under the lock, so observers see `done` increase as the trait promises.
    let encoded_bytes = Mutex::new(src_len + tgt_len);
    let encoded_one = |bytes: u64, r: Result<(Operation, Vec<u8>)>| {
        let mut done = encoded_bytes.lock().unwrap_or_else(|e| e.into_inner());
        *done += bytes;
        r.and_then(|o| report((*done).min(total)).map(|()| o))
    };
    let cancelled = || progress.is_some_and(|p| p.cancelled());
    // One queue for every operation, the costliest first: two workers then finish
    // together instead of one waiting while the other encodes a last large operation
    // (the LZMA2 groups of new files, the RECOMPRESS operations). The operations keep
    // their order in the payload (a CHAIN follows what it refers to).
    let gz = !gz_jobs.is_empty();
    let mut work: Vec<Work> = merged.into_iter().map(|(p, d)| Work::Plan(p, d)).collect();
    work.extend(recompress.into_iter().map(Work::Squash));
    work.extend(erofs_jobs.into_iter().map(Work::Erofs));
    work.extend(gz_jobs.into_iter().map(Work::Gzip));
    let mut queue: Vec<(usize, Work)> = work.into_iter().enumerate().collect();
    queue.sort_by_key(|(_, w)| std::cmp::Reverse(w.cost()));
    let mut operations = Vec::with_capacity(queue.len());
    let mut written = 0u64;
    let weight = |r: &Result<(Operation, Vec<u8>)>| r.as_ref().map_or(0, |(_, b)| b.len());
    let encode = |w: Work| {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let bytes = w.blocks() * BLOCK_SIZE;
        let r = match w {
            Work::Plan(plan, pred) => images.encode(plan, pred, opts.level),
            Work::Squash(job) => squashfs
                .as_ref()
                .ok_or_else(|| {
                    Error::Internal("a squashfs operation without a squashfs pair".into())
                })
                .and_then(|pair| pair.encode(&job, opts.level)),
            Work::Erofs(job) => erofs
                .as_ref()
                .ok_or_else(|| Error::Internal("an EROFS operation without an EROFS pair".into()))
                .and_then(|pair| pair.encode(&job, opts.level)),
            Work::Gzip(job) => gzfile::encode(images.source(), target, &job, opts.level),
        };
        encoded_one(bytes, r)
    };
    // Laid out in the operations' order as each is done: its blob's offset is where the
    // data has come to (an operation without data has offset 0).
    par_ordered(queue, threads, HELD_BLOBS, weight, encode, |r| {
        let (mut o, blob) = r?;
        o.data_offset = if blob.is_empty() { 0 } else { written };
        sink.write_all(&blob)
            .map_err(|e| Error::io("writing the payload's data", e))?;
        written += blob.len() as u64;
        operations.push(o);
        Ok::<(), Error>(())
    })?;
    let codec = match (&squashfs, &erofs) {
        _ if gz => Some(crate::codec::Codec::GzipFile),
        (Some(p), _) => Some(p.codec()),
        (None, Some(_)) => Some(crate::codec::Codec::ErofsLz4),
        _ => None,
    };
    let recompressor = codec
        .filter(|_| operations.iter().any(|o| o.op == OpType::Recompress))
        .map(crate::codec::recompress::recompressor_for);
    let manifest = Manifest {
        source: source
            .map(|s| image_id(s, "hashing the source"))
            .transpose()?,
        target: image_id(target, "hashing the target")?,
        verity: opts.verity.as_ref().map(|d| d.to_bytes().to_vec()),
        compatible: opts.compatible.clone(),
        version: opts.version.clone(),
        operations,
        recompressor,
    };
    Ok((manifest, written))
}

/// One operation to encode.
enum Work {
    Plan(Plan, Option<i128>),
    Squash(squash::Job),
    Erofs(erofsz::Job),
    Gzip(gzfile::Job),
}

impl Work {
    fn blocks(&self) -> u64 {
        match self {
            Work::Plan(plan, _) => extents_total(&plan.1),
            Work::Squash(j) => j.blocks(),
            Work::Erofs(j) => j.blocks(),
            Work::Gzip(j) => j.blocks(),
        }
    }

    /// Roughly how long it takes: copies and zeros next to nothing, compression by its
    /// bytes.
    fn cost(&self) -> u64 {
        match self {
            Work::Plan((OpType::Copy | OpType::Zero, ..), _) => 0,
            w => w.blocks(),
        }
    }
}

/// Size and digest of a whole image.
fn image_id(img: &[u8], doing: &'static str) -> Result<ImageId> {
    Ok(ImageId {
        size: img.len() as u64,
        digest: crate::format::image_digest_of(img).map_err(|e| Error::io(doing, e))?,
    })
}

/// What each target block is: zeros, a copy of some source block, or new.
fn classify(source: Option<&[u8]>, target: &[u8], threads: usize) -> Vec<Kind> {
    let tblocks = (target.len() as u64).div_ceil(BLOCK_SIZE);
    let zero_hash = sha256(&[0u8; BS]);
    let mut index: HashMap<[u8; 32], u64> = HashMap::new();
    if let Some(src) = source {
        let sblocks = (src.len() as u64).div_ceil(BLOCK_SIZE);
        for (i, h) in hashes(src, sblocks, threads).into_iter().enumerate() {
            index.entry(h).or_insert(i as u64);
        }
    }
    hashes(target, tblocks, threads)
        .iter()
        .map(|h| {
            if *h == zero_hash {
                Kind::Zero
            } else if let Some(&s) = index.get(h) {
                Kind::Copy(s)
            } else {
                Kind::New
            }
        })
        .collect()
}

/// Runs of one kind, each an operation (a COPY run continues while the source continues
/// too; new runs are cut into chunks zstd handles well; blocks in file groups are left
/// to their group).
fn runs(kinds: &[Kind]) -> Vec<Plan> {
    let tblocks = kinds.len() as u64;
    let max_blocks = MAX_OP_BYTES / BLOCK_SIZE;
    let mut plans: Vec<Plan> = Vec::new();
    let mut i = 0u64;
    while i < tblocks {
        let k = kinds[i as usize];
        let mut j = i + 1;
        let cap = match k {
            Kind::New => NEW_CHUNK_BLOCKS,
            _ => max_blocks,
        };
        while j < tblocks && j - i < cap {
            let same = matches!(
                (k, kinds[j as usize]),
                (Kind::Zero, Kind::Zero)
                    | (Kind::New, Kind::New)
                    | (Kind::Copy(_), Kind::Copy(_))
                    | (Kind::InFile, Kind::InFile)
            );
            if !same {
                break;
            }
            j += 1;
        }
        let t = Extent {
            start: i,
            blocks: j - i,
        };
        match k {
            Kind::InFile => {}
            Kind::Zero => plans.push((OpType::Zero, vec![t], Vec::new())),
            Kind::New => plans.push((OpType::Replace, vec![t], Vec::new())),
            Kind::Copy(_) => {
                // Source extents: break where the source is not consecutive.
                let mut src: Vec<Extent> = Vec::new();
                for b in i..j {
                    let Kind::Copy(s) = kinds[b as usize] else {
                        continue;
                    };
                    push_extent(&mut src, s, 1);
                }
                plans.push((OpType::Copy, vec![t], src));
            }
        }
        i = j;
    }
    plans
}

/// For each plan, the offset between target and source of the nearest COPY before it:
/// where a new chunk's old version probably lies.
fn predict_offsets(plans: &[Plan]) -> Vec<Option<i128>> {
    let mut predicted = Vec::with_capacity(plans.len());
    let mut last: Option<i128> = None;
    for (op, t, src) in plans {
        if *op == OpType::Copy {
            if let (Some(e), Some(t)) = (src.last(), t.last()) {
                last = Some(i128::from(t.start + t.blocks) - i128::from(e.start + e.blocks));
            }
        }
        predicted.push(last);
    }
    predicted
}

/// Small runs of new blocks close together (metadata: inode tables, directories,
/// bitmaps) travel together: fewer operations, more context for zstd. Copies go together
/// too, up to an operation's size: each operation costs its source digest (32 bytes that
/// do not compress) and its offsets in the manifest, and a file system that inserted files
/// cuts its unchanged blocks into more than a thousand runs.
fn merge_runs(plans: Vec<Plan>, predicted: Vec<Option<i128>>) -> Vec<(Plan, Option<i128>)> {
    let mut merged: Vec<(Plan, Option<i128>)> = Vec::new();
    let mut open: Option<usize> = None;
    let mut open_copy: Option<usize> = None;
    for (plan, pred) in plans.into_iter().zip(predicted) {
        if plan.0 == OpType::Copy {
            if let Some(((_, gt, gs), _)) = open_copy.and_then(|g| merged.get_mut(g)) {
                if extents_total(gt) + extents_total(&plan.1) <= MAX_OP_BYTES / BLOCK_SIZE {
                    for e in plan.1 {
                        push_extent(gt, e.start, e.blocks);
                    }
                    for e in plan.2 {
                        push_extent(gs, e.start, e.blocks);
                    }
                    continue;
                }
            }
            open_copy = Some(merged.len());
        }
        if plan.0 == OpType::Replace {
            if let Some(((_, gt, _), _)) = open.and_then(|g| merged.get_mut(g)) {
                let end = gt.last().map_or(0, |e| e.start + e.blocks);
                let start = plan.1.first().map_or(0, |e| e.start);
                if start.saturating_sub(end) <= MERGE_GAP_BLOCKS
                    && extents_total(gt) + extents_total(&plan.1) <= NEW_CHUNK_BLOCKS
                {
                    for e in plan.1 {
                        push_extent(gt, e.start, e.blocks);
                    }
                    continue;
                }
            }
            open = Some(merged.len());
        }
        merged.push((plan, pred));
    }
    merged
}

/// The two images an operation is encoded from.
#[derive(Clone, Copy)]
struct Images<'a> {
    source: Option<&'a [u8]>,
    target: &'a [u8],
    /// Content anchors of the source: gear hash at the anchor -> its byte offset.
    anchors: &'a HashMap<u64, u64>,
}

/// The gear table of the content anchors: 256 fixed pseudo-random words (splitmix64).
const GEAR: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut i = 0;
    while i < 256 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
};

/// Anchors fall where the gear hash (over the last 64 bytes) has these bits clear: one
/// every 4 KiB on average, wherever the content sits, aligned or not.
const ANCHOR_MASK: u64 = 0xfff << 52;

/// `(hash, offset)` of each content anchor of `bytes`.
///
/// Zeros (most of a sparse image) are passed over: 64 zeros make the hash a constant that
/// is no anchor, so past the first 64 bytes of a run of zeros nothing in it is one, and
/// the hash after it is that constant. Runs are whole blocks of zeros, found by
/// comparison, and the holes of a mapped sparse image, known without reading them.
fn anchors(bytes: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    const ZERO_RUN: u64 = {
        let mut h = 0u64;
        let mut i = 0;
        while i < 64 {
            h = (h << 1).wrapping_add(GEAR[0]);
            i += 1;
        }
        h
    };
    const _: () = assert!(ZERO_RUN & ANCHOR_MASK != 0);
    let known = crate::digest::Holes::of(bytes);
    // The first hole not behind `i`.
    let mut hole = 0usize;
    let mut h = 0u64;
    let mut i = 0usize;
    // Zeros from `i` to `end`: the first 64 shifted in (they may still make an anchor
    // from what came before), the rest passed over. Some(anchor) to return first.
    let zeros = |h: &mut u64, i: &mut usize, end: usize| {
        let upto = (*i + 64).min(end);
        while *i < upto {
            *h = (*h << 1).wrapping_add(GEAR[0]);
            let at = *i;
            *i += 1;
            if at >= 64 && *h & ANCHOR_MASK == 0 {
                return Some((*h, at as u64));
            }
        }
        if *i < end {
            *h = ZERO_RUN;
            *i = end;
        }
        None
    };
    std::iter::from_fn(move || {
        while i < bytes.len() {
            let holes = known.ranges();
            while holes.get(hole).is_some_and(|r| r.end <= i) {
                hole += 1;
            }
            if let Some(r) = holes.get(hole).filter(|r| r.start <= i) {
                if let Some(found) = zeros(&mut h, &mut i, r.end) {
                    return Some(found);
                }
                continue;
            }
            if i.is_multiple_of(BS) && i + BS <= bytes.len() && known.is_zero(bytes, i..i + BS) {
                let end = i + BS;
                if let Some(found) = zeros(&mut h, &mut i, end) {
                    return Some(found);
                }
                continue;
            }
            let b = bytes[i];
            h = (h << 1).wrapping_add(GEAR[usize::from(b)]);
            let at = i;
            i += 1;
            if at >= 64 && h & ANCHOR_MASK == 0 {
                return Some((h, at as u64));
            }
        }
        None
    })
}

/// The source's anchors, first occurrence of each.
fn anchor_index(source: Option<&[u8]>) -> HashMap<u64, u64> {
    let mut index = HashMap::new();
    for (h, at) in source.map(anchors).into_iter().flatten() {
        index.entry(h).or_insert(at);
    }
    index
}

/// A reference for a delta: the operation to use and its estimated size, the reference
/// extents, and if bsdiff won, its stream and the size of zstd against the same
/// reference (both at the probe level).
struct Candidate {
    op: OpType,
    size: usize,
    /// Size of plain zstd at the probe level.
    plain: usize,
    /// Plain zstd at the probe level, and that level: the blob itself where the
    /// operation stays a plain REPLACE at it (a full payload's).
    probe: (Vec<u8>, i32),
    source: Vec<Extent>,
    bsdiff: Option<(Vec<u8>, usize)>,
}

impl Images<'_> {
    fn source(&self) -> &[u8] {
        self.source.unwrap_or_default()
    }

    /// One operation and its blob.
    fn encode(&self, plan: Plan, pred: Option<i128>, level: i32) -> Result<(Operation, Vec<u8>)> {
        self.encode_probed(plan, pred, level, None)
    }

    /// [`Images::encode`], given the target bytes' plain zstd at the probe level if it was
    /// made already.
    fn encode_probed(
        &self,
        plan: Plan,
        pred: Option<i128>,
        level: i32,
        probed: Option<Vec<u8>>,
    ) -> Result<(Operation, Vec<u8>)> {
        let (op, t, src) = plan;
        let (op, source, data, source_sha256) = match op {
            OpType::Zero => (op, Vec::new(), Vec::new(), [0; 32]),
            OpType::Copy => {
                let hash = sha256(&extents_bytes(self.source(), &src));
                (op, src, Vec::new(), hash)
            }
            _ => {
                let tbytes = blocks::extents_cow(self.target, &t);
                let mut best = self.best_candidate(op, &t, &tbytes, src, pred, level, probed)?;
                // Content its reference nearly all holds (a file that only moved) gains a
                // few bytes from the requested level at the cost of seconds, and so does
                // content that does not compress by itself (blocks a file system
                // compressed): all a reference gives it are long matches, which the probe
                // finds as well, while the higher levels search a reference of megabytes
                // for seconds (and LZMA2 reads all of it) in vain. The probe's level does.
                let n = tbytes.len();
                let level = if best.size < n / NEAR_COPY || best.plain >= n - n / INCOMPRESSIBLE {
                    level.min(PROBE_LEVEL)
                } else {
                    level
                };
                let (op, data, hash) = self.compress(&mut best, &tbytes, level)?;
                // New data no compressor shrinks (random data, blocks a file system
                // compressed) goes as it is: a zstd frame would add 3 bytes per 128 KiB.
                if matches!(op, OpType::Replace | OpType::ReplaceXz) && data.len() >= n {
                    (OpType::ReplaceRaw, best.source, tbytes.into_owned(), hash)
                } else {
                    (op, best.source, data, hash)
                }
            }
        };
        let (data_length, data_sha256) = if data.is_empty() {
            (0, [0; 32])
        } else {
            (data.len() as u64, crate::format::data_digest(op, &data))
        };
        Ok((
            Operation {
                op,
                target: t,
                source,
                data_offset: 0,
                data_length,
                data_sha256,
                source_sha256,
            },
            data,
        ))
    }

    /// The smallest encoding of `tbytes`, compared at a fast level (only the winner is
    /// compressed at the requested one): plain zstd; for a chain, zstd against the group
    /// before it; for a file group, zstd or bsdiff against the old versions (bsdiff wins
    /// on executables); otherwise zstd against the source around where the run was or
    /// probably moved from.
    #[allow(clippy::too_many_arguments)]
    fn best_candidate(
        &self,
        op: OpType,
        t: &[Extent],
        tbytes: &[u8],
        src: Vec<Extent>,
        pred: Option<i128>,
        level: i32,
        probed: Option<Vec<u8>>,
    ) -> Result<Candidate> {
        let probe = level.min(PROBE_LEVEL);
        let probed = match probed {
            Some(p) => p,
            None => zstd_plain(tbytes, probe)?,
        };
        let plain = probed.len();
        let mut best = Candidate {
            op: OpType::Replace,
            size: plain,
            plain,
            probe: (probed, probe),
            source: Vec::new(),
            bsdiff: None,
        };
        // Like the original rule: a candidate wins when its size plus its manifest cost
        // (source extents and hashes) is below the best size so far.
        let mut consider = |op, size, overhead: usize, source: &[Extent], bsdiff| {
            if size + overhead < best.size {
                best.op = op;
                best.size = size;
                best.source = source.to_vec();
                best.bsdiff = bsdiff;
            }
        };
        if op == OpType::Chain {
            let reference = extents_bytes(self.target, &src);
            let patched = zstd_patch(tbytes, &reference, probe)?.len();
            // LZMA2 finds more in the group before than zstd's probe does: a reference
            // that does not cost it bytes is kept.
            let patched = if level >= XZ_FROM_LEVEL {
                patched.min(plain.saturating_sub(16 * src.len() + 1))
            } else {
                patched
            };
            consider(OpType::Chain, patched, 16 * src.len(), &src, None);
        } else if op == OpType::Patch && !src.is_empty() {
            let reference = extents_bytes(self.source(), &src);
            let patched = zstd_patch(tbytes, &reference, probe)?.len();
            consider(OpType::Patch, patched, 48 * src.len(), &src, None);
            let mut stream = Vec::new();
            bsdiff::diff(&reference, tbytes, &mut stream).map_err(|e| Error::io("bsdiff", e))?;
            let diffed = zstd_plain(&stream, probe)?.len();
            consider(
                OpType::Bsdiff,
                diffed,
                48 * src.len(),
                &src,
                Some((stream, patched)),
            );
        } else {
            let tstart = t.first().map_or(0, |e| e.start);
            let tspan = t.last().map_or(0, |e| e.start + e.blocks) - tstart;
            let Some(src_img) = self
                .source
                .filter(|s| !s.is_empty() && tspan <= 4 * NEW_CHUNK_BLOCKS)
            else {
                return Ok(best);
            };
            let sblocks = (src_img.len() as u64).div_ceil(BLOCK_SIZE);
            // A small run (an inode table block, a bitmap) changed in place; a large one
            // may have moved further.
            let margin = (extents_total(t) * 4).clamp(16, REF_MARGIN / BLOCK_SIZE);
            let mut centers = vec![i128::from(tstart)];
            if let Some(d) = pred {
                centers.insert(0, i128::from(tstart) - d);
            }
            if let Some(c) = self.anchored(tbytes) {
                centers.push(c);
            }
            centers.dedup();
            for c in centers {
                let lo = (c - i128::from(margin)).clamp(0, i128::from(sblocks)) as u64;
                let hi = (c + i128::from(tspan + margin)).clamp(0, i128::from(sblocks)) as u64;
                let blocks = (hi - lo).min(MAX_OP_BYTES / BLOCK_SIZE);
                if blocks == 0 {
                    continue;
                }
                let ext = [Extent { start: lo, blocks }];
                let patched = zstd_patch(tbytes, &extents_bytes(src_img, &ext), probe)?.len();
                // A source extent and its hash cost 48 bytes of manifest.
                consider(OpType::Patch, patched, 48, &ext, None);
            }
        }
        Ok(best)
    }

    /// Where the run's content probably came from, by content anchors found in both
    /// images (the median of where its anchors lie in the source, in blocks, less the
    /// run's own offset): for images whose content moves by amounts that are not whole
    /// blocks (squashfs, compressed EROFS), where no copied block predicts anything.
    fn anchored(&self, tbytes: &[u8]) -> Option<i128> {
        let mut starts: Vec<i128> = anchors(tbytes)
            .filter_map(|(h, at)| {
                let src = self.anchors.get(&h)?;
                Some(i128::from(*src) - i128::from(at))
            })
            .collect();
        if starts.is_empty() {
            return None;
        }
        let mid = starts.len() / 2;
        let (_, median, _) = starts.select_nth_unstable(mid);
        Some(median.div_euclid(i128::from(BLOCK_SIZE)))
    }

    /// The winning candidate's blob at the requested level, the operation it is for, and
    /// its reference's digest. New content (REPLACE, CHAIN) goes to LZMA2 at the higher
    /// levels: as fast as zstd -19 and a tenth smaller on executables and text.
    fn compress(
        &self,
        c: &mut Candidate,
        tbytes: &[u8],
        level: i32,
    ) -> Result<(OpType, Vec<u8>, [u8; 32])> {
        let xz = level >= XZ_FROM_LEVEL;
        Ok(match c.op {
            OpType::Patch => {
                let reference = extents_bytes(self.source(), &c.source);
                let h = sha256(&reference);
                // LZMA2 first: it beats zstd at the requested level on nearly every
                // patch, and each of the two reads the whole reference (seconds for
                // megabytes), so zstd goes only where LZMA2 does not beat the probe.
                // BCJ would turn calls that still match the old version (same relative
                // target) into ones that do not: a patch goes without it.
                match xz
                    .then(|| xz_blob(tbytes, &reference, c.size, false))
                    .flatten()
                {
                    Some(blob) => (OpType::PatchXz, blob, h),
                    None => (c.op, zstd_patch(tbytes, &reference, level)?, h),
                }
            }
            OpType::Chain => {
                let reference = extents_bytes(self.target, &c.source);
                let h = sha256(&reference);
                match xz
                    .then(|| xz_blob(tbytes, &reference, c.size, true))
                    .flatten()
                {
                    Some(blob) => (OpType::ChainXz, blob, h),
                    None => (c.op, zstd_patch(tbytes, &reference, level)?, h),
                }
            }
            OpType::Bsdiff => {
                let reference = extents_bytes(self.source(), &c.source);
                let (stream, patched) = c
                    .bsdiff
                    .as_ref()
                    .map_or((&[][..], 0), |(s, p)| (&s[..], *p));
                let zstd = zstd_plain(stream, level)?;
                let h = sha256(&reference);
                // bsdiff won at the probe level against zstd; against LZMA2 with the old
                // version as dictionary it may not, where zstd came close (on the corpus
                // LZMA2 won each time zstd was within 1.45x of bsdiff, never beyond 1.5x,
                // where bsdiff's moved addresses are what counts: the largest executables,
                // seconds of LZMA2 each).
                match (xz && patched < c.size + c.size / 2)
                    .then(|| xz_blob(tbytes, &reference, zstd.len(), false))
                    .flatten()
                {
                    Some(blob) => (OpType::PatchXz, blob, h),
                    None => (c.op, zstd, h),
                }
            }
            _ => match xz.then(|| xz_blob(tbytes, &[], c.size, true)).flatten() {
                Some(blob) => (OpType::ReplaceXz, blob, [0u8; 32]),
                // Compressed once already at this level: not again.
                None if c.probe.1 == level => {
                    (OpType::Replace, std::mem::take(&mut c.probe.0), [0u8; 32])
                }
                None => (OpType::Replace, zstd_plain(tbytes, level)?, [0u8; 32]),
            },
        })
    }
}

/// Put a payload together: header, manifest, signature over both (in the payload
/// context), data.
pub fn assemble<S: Signer + ?Sized>(
    manifest: &Manifest,
    data: &[u8],
    signer: &S,
) -> Result<Vec<u8>> {
    check_texts(manifest)?;
    let m = pack_manifest(&encode_manifest(manifest))?;
    sign_and_join(crate::format::FORMAT_VERSION, &m, data, signer)
}

/// The compatible string and version a manifest may carry.
fn check_texts(manifest: &Manifest) -> Result<()> {
    check_labels(&manifest.compatible, &manifest.version)
}

/// [`check_texts`] on the options, before any encoding: a bad label is found at once, not
/// after minutes of work.
fn check_labels(compatible: &str, version: &str) -> Result<()> {
    if compatible.is_empty() || compatible.len() > 256 {
        return Err(Error::ManifestField {
            field: "compatible",
            reason: format!("{} bytes: 1 to 256", compatible.len()),
        });
    }
    if version.len() > 64 {
        return Err(Error::ManifestField {
            field: "version",
            reason: format!("{version:?}: at most 64 bytes"),
        });
    }
    crate::format::Version::parse(version).map_err(|reason| Error::BadVersion {
        what: "payload version",
        version: version.to_string(),
        reason,
    })?;
    Ok(())
}

/// Header, packed manifest `m`, their signature, data.
fn sign_and_join<S: Signer + ?Sized>(
    version: u32,
    m: &[u8],
    data: &[u8],
    signer: &S,
) -> Result<Vec<u8>> {
    let mut out = signed_front(version, m, data.len() as u64, signer)?;
    out.extend_from_slice(data);
    Ok(out)
}

/// What goes before `data_len` bytes of data: header, packed manifest `m`, their
/// signature.
fn signed_front<S: Signer + ?Sized>(
    version: u32,
    m: &[u8],
    data_len: u64,
    signer: &S,
) -> Result<Vec<u8>> {
    if m.len() as u64 > crate::format::MAX_MANIFEST {
        return Err(Error::ManifestField {
            field: "manifest",
            reason: format!(
                "{} bytes packed: at most {}",
                m.len(),
                crate::format::MAX_MANIFEST
            ),
        });
    }
    let header = Header {
        version,
        manifest_len: m.len() as u64,
        data_len,
        key_id: signer.key_id().0,
    };
    let h = header.to_bytes();
    let mut signed = Vec::with_capacity(h.len() + m.len());
    signed.extend_from_slice(&h);
    signed.extend_from_slice(m);
    let sig = signer.sign(Context::Payload, &signed)?;
    signed.extend_from_slice(&sig);
    Ok(signed)
}

/// A file of the generator's in the output's directory: unnamed (`O_TMPFILE`) where the
/// file system allows, so that even a killed generator leaves nothing behind; else named
/// `.NAME.keel-WHAT-PID` and removed when dropped.
struct Beside {
    /// The name of a named one.
    path: Option<std::path::PathBuf>,
    file: std::fs::File,
}

impl Beside {
    /// A new file beside `out` (never an existing one).
    fn new(out: &std::path::Path, what: &str) -> Result<Beside> {
        use std::os::unix::fs::OpenOptionsExt;
        let bad = |reason: String| {
            Error::io(
                "writing the payload",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, reason),
            )
        };
        // Renamed over at the end: a device, a directory or a link there is not replaced.
        match std::fs::symlink_metadata(out) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(bad(format!(
                    "{}: a symbolic link, not replaced",
                    out.display()
                )))
            }
            Ok(m) if !m.is_file() => {
                return Err(bad(format!("{}: not a regular file", out.display())))
            }
            _ => {}
        }
        if out.file_name().is_none() || out.as_os_str().as_encoded_bytes().ends_with(b"/") {
            return Err(bad(format!("{}: not a file name", out.display())));
        }
        let dir = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        let created = |e| Error::io("creating a file beside the payload", e);
        // An unnamed file gets its name through /proc/self/fd: without /proc, a named one.
        let unnamed = std::path::Path::new("/proc/self/fd").is_dir();
        match std::fs::File::options()
            .read(true)
            .write(true)
            .mode(0o666)
            .custom_flags(nix::libc::O_TMPFILE)
            .open(dir)
        {
            Ok(file) if unnamed => return Ok(Beside { path: None, file }),
            Ok(_) => {}
            // A file system without unnamed files: a named one.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::EOPNOTSUPP | nix::libc::EISDIR | nix::libc::EINVAL)
                ) => {}
            Err(e) => return Err(created(e)),
        }
        let mut tries = 0;
        loop {
            let path = Self::name(out, what);
            match std::fs::File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(Beside {
                        path: Some(path),
                        file,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
                Err(e) => return Err(created(e)),
            }
        }
    }

    /// `.keel-WHAT-PID-RANDOM` beside `out`: short whatever `out`'s name (never past
    /// NAME_MAX), and another one each time (a process id comes back; a file a killed
    /// run left under it does not block the next).
    fn name(out: &std::path::Path, what: &str) -> std::path::PathBuf {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        out.with_file_name(format!(
            ".keel-{what}-{}-{:016x}",
            std::process::id(),
            h.finish()
        ))
    }

    /// Make the file `out` (replacing what was there at once): an unnamed one is linked
    /// under a temporary name first (a rename is what replaces a file atomically).
    fn place(mut self, out: &std::path::Path) -> Result<()> {
        let placing = |e| Error::io("renaming the payload into place", e);
        let named = match self.path.take() {
            Some(p) => p,
            None => {
                use std::os::fd::AsRawFd;
                let fd = format!("/proc/self/fd/{}", self.file.as_raw_fd());
                let mut tries = 0;
                loop {
                    let p = Self::name(out, "new");
                    match nix::unistd::linkat(
                        None,
                        std::path::Path::new(&fd),
                        None,
                        p.as_path(),
                        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
                    ) {
                        Ok(()) => break p,
                        Err(nix::errno::Errno::EEXIST) if tries < 8 => tries += 1,
                        Err(e) => return Err(placing(std::io::Error::from(e))),
                    }
                }
            }
        };
        // A kill between the link and the rename leaves the whole payload under `named`
        // (microseconds; nothing else does).
        std::fs::rename(&named, out).map_err(|e| {
            let _ = std::fs::remove_file(&named);
            placing(e)
        })?;
        // The rename itself on the disk, not only in the cache: a crash after a reported
        // success must not bring the older payload back.
        let dir = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("syncing the payload's directory", e))
    }
}

impl Drop for Beside {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The signed front (header, manifest, signature) of `m` made exactly `room` bytes long,
/// if it fits: the manifest's zstd frame followed by a zstd skippable frame of padding
/// (which every zstd decoder, and so every Keel applier, passes over; the signature
/// covers it like the rest). `None` if it does not fit.
fn front_in<S: Signer + ?Sized>(
    version: u32,
    m: &[u8],
    data_len: u64,
    signer: &S,
    room: u64,
) -> Result<Option<Vec<u8>>> {
    let bare = (crate::format::HEADER_SIZE + m.len() + crate::format::SIGNATURE_SIZE) as u64;
    if bare == room {
        return signed_front(version, m, data_len, signer).map(Some);
    }
    let Some(pad) = room
        .checked_sub(bare + 8)
        .and_then(|p| u32::try_from(p).ok())
    else {
        return Ok(None);
    };
    let mut padded = Vec::with_capacity(m.len() + 8 + pad as usize);
    padded.extend_from_slice(m);
    padded.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    padded.extend_from_slice(&pad.to_le_bytes());
    padded.resize(padded.len() + pad as usize, 0);
    let front = signed_front(version, &padded, data_len, signer)?;
    Ok((front.len() as u64 == room).then_some(front))
}

/// The payload of `version` with packed manifest `m` into `out`, its `data_len` bytes of
/// data already in `file` from offset `room`: the signed front written before them where
/// it fits in `room` (else to a new file, the data copied after it; the kernel copies file
/// to file where it can), synced, and renamed over `out`.
fn finish_file<S: Signer + ?Sized>(
    out: &std::path::Path,
    version: u32,
    m: &[u8],
    mut file: Beside,
    room: u64,
    data_len: u64,
    signer: &S,
) -> Result<u64> {
    use std::io::{Seek, Write};
    use std::os::unix::fs::FileExt;
    let io = |doing: &'static str| move |e| Error::io(doing, e);
    if let Some(front) = front_in(version, m, data_len, signer, room)? {
        file.file
            .write_all_at(&front, 0)
            .map_err(io("writing the payload"))?;
    } else {
        let front = signed_front(version, m, data_len, signer)?;
        let mut moved = Beside::new(out, "new")?;
        moved
            .file
            .write_all(&front)
            .map_err(io("writing the payload"))?;
        file.file
            .seek(std::io::SeekFrom::Start(room))
            .map_err(io("reading the payload's data back"))?;
        let copied = std::io::copy(&mut file.file, &mut moved.file)
            .map_err(io("copying the payload's data"))?;
        if copied != data_len {
            return Err(Error::io(
                "copying the payload's data",
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the data file changed"),
            ));
        }
        file = moved;
    }
    file.file.sync_all().map_err(io("syncing the payload"))?;
    let len = file
        .file
        .metadata()
        .map_err(io("syncing the payload"))?
        .len();
    file.place(out)?;
    Ok(len)
}

/// The payload's data written at `at` onward in its file, in large writes; every
/// [`WRITEBACK`] bytes the kernel is asked to start writing them to the disk and to drop
/// them from the cache once written (`POSIX_FADV_DONTNEED`), so the final sync finds
/// little left to do and a payload of gigabytes does not push the page cache out.
struct DataWriter<'a> {
    file: &'a std::fs::File,
    at: u64,
    buf: Vec<u8>,
    /// Where the bytes not yet handed to writeback begin.
    flushed: u64,
}

/// Bytes between writeback requests.
const WRITEBACK: u64 = 64 << 20;

impl<'a> DataWriter<'a> {
    fn new(file: &'a std::fs::File, at: u64) -> Self {
        DataWriter {
            file,
            at,
            buf: Vec::with_capacity(1 << 20),
            flushed: at,
        }
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(b, self.at)?;
        self.at += b.len() as u64;
        if self.at - self.flushed >= WRITEBACK {
            // Advice only: a file system that ignores it loses nothing.
            let _ = nix::fcntl::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(self.file),
                self.flushed as i64,
                (self.at - self.flushed) as i64,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
            self.flushed = self.at;
        }
        Ok(())
    }
}

impl std::io::Write for DataWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() && b.len() >= self.buf.capacity() {
            self.put(b)?;
        } else {
            let n = b.len().min(self.buf.capacity() - self.buf.len());
            self.buf.extend_from_slice(&b[..n]);
            if self.buf.len() == self.buf.capacity() {
                self.flush()?;
            }
            return Ok(n);
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let r = self.put(&buf);
        self.buf = buf;
        self.buf.clear();
        r
    }
}

/// Room to leave for the signed front of a full payload of `size` bytes of image, so
/// that its data need not be copied: the manifest of its operations (two at most per
/// 8 MiB of image, about 50 bytes each packed) with a margin.
fn full_front_room(size: u64) -> u64 {
    4096 + 96 * size.div_ceil(MAX_OP_BYTES)
}

/// [`generate_observed`] into the file `out`, in memory bounded whatever the images' size:
/// each blob goes to a new file beside `out` as it is encoded (the encoders hold at most
/// a few blobs ahead of the writer, and only the manifest is kept), then the signed header
/// and manifest go in front of it and the file is renamed over `out`. A full payload's
/// data is written after room left for its front (the manifest padded to fill it, see
/// [`crate::format`]), so it is written once; a delta's (whose manifest cannot be
/// foreseen) is copied after the front into a second file. On an error nothing is left
/// beside `out`, and `out` is as it was. Returns the payload's length.
pub fn generate_file<S: Signer + ?Sized>(
    source: Option<&[u8]>,
    target: &[u8],
    signer: &S,
    opts: &GenerateOptions,
    progress: Option<&dyn Progress>,
    out: &std::path::Path,
) -> Result<u64> {
    // A delta's manifest cannot be foreseen; it is small, and so is the copy.
    let room = match source {
        None => full_front_room(target.len() as u64),
        Some(_) => 0,
    };
    to_file(
        out,
        crate::format::FORMAT_VERSION,
        signer,
        opts,
        room,
        |w| {
            let (manifest, data_len) = build_into(source, target, opts, progress, w)?;
            Ok((pack_manifest(&encode_manifest(&manifest))?, data_len))
        },
    )
}

/// [`generate_bundle`] into the file `out`, in bounded memory as [`generate_file`].
pub fn generate_bundle_file<S: Signer + ?Sized>(
    parts: &[BundlePart<'_>],
    signer: &S,
    opts: &GenerateOptions,
    progress: Option<&dyn Progress>,
    out: &std::path::Path,
) -> Result<u64> {
    let room = parts
        .iter()
        .filter(|p| p.source.is_none())
        .map(|p| full_front_room(p.target.len() as u64) + 1024)
        .sum();
    to_file(
        out,
        crate::format::BUNDLE_VERSION,
        signer,
        opts,
        room,
        |w| {
            let images = bundle_images(parts, opts, progress, w)?;
            let data_len = images.iter().map(|i| i.data_len).sum();
            Ok((
                pack_manifest(&crate::format::encode_bundle(&images))?,
                data_len,
            ))
        },
    )
}

/// The payload `encode` makes (its data written to the sink it is given; its packed
/// manifest and data length returned) into the file `out`: the labels checked first, the
/// data written beside `out` after `room` bytes left for the front, then
/// [`finish_file`].
fn to_file<S: Signer + ?Sized>(
    out: &std::path::Path,
    version: u32,
    signer: &S,
    opts: &GenerateOptions,
    room: u64,
    encode: impl FnOnce(&mut dyn std::io::Write) -> Result<(Vec<u8>, u64)>,
) -> Result<u64> {
    check_labels(&opts.compatible, &opts.version)?;
    let file = Beside::new(out, "new")?;
    let mut w = DataWriter::new(&file.file, room);
    let (m, data_len) = encode(&mut w)?;
    std::io::Write::flush(&mut w).map_err(|e| Error::io("writing the payload's data", e))?;
    drop(w);
    finish_file(out, version, &m, file, room, data_len, signer)
}

#[cfg(test)]
mod tests {
    use super::blocks::scale;

    #[test]
    fn block_hashes_are_each_blocks_sha256() {
        use crate::format::sha256;
        // Data, zero blocks and runs of them, a short last block; more blocks asked for
        // than the image holds (they read as zeros).
        let mut img = vec![0u8; 9000 * 4096 + 123];
        for b in (0..9000).filter(|b| b % 7 == 0 || (3000..5000).contains(b)) {
            img[b * 4096 + b % 4096] = 1 + (b % 200) as u8;
        }
        *img.last_mut().unwrap() = 9;
        let count = 9003;
        let want: Vec<[u8; 32]> = (0..count).map(|i| sha256(&super::block(&img, i))).collect();
        for threads in [1, 2, 3] {
            assert_eq!(
                super::hashes(&img, count, threads),
                want,
                "{threads} threads"
            );
        }
    }

    #[test]
    fn anchors_pass_over_zero_blocks_and_find_the_same() {
        let naive = |bytes: &[u8]| -> Vec<(u64, u64)> {
            let mut h = 0u64;
            let mut v = Vec::new();
            for (i, &b) in bytes.iter().enumerate() {
                h = (h << 1).wrapping_add(super::GEAR[usize::from(b)]);
                if i >= 64 && h & super::ANCHOR_MASK == 0 {
                    v.push((h, i as u64));
                }
            }
            v
        };
        let mut img = vec![0u8; 300 * 4096 + 77];
        let mut x = 5u64;
        for (i, b) in img.iter_mut().enumerate() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Data in two of every three blocks (and the short tail), zeros otherwise.
            if (i / 4096) % 3 != 1 {
                *b = (x >> 56) as u8;
            }
        }
        for from in [0, 1, 4095, 4096] {
            let want = naive(&img[from..]);
            assert!(want.len() > 100);
            assert_eq!(super::anchors(&img[from..]).collect::<Vec<_>>(), want);
        }
    }

    /// A sparse image mapped whole: its holes are known, passed over unread by the block
    /// hashes, the content anchors, the image digest and the full payload's zero scan, and
    /// the delta and full payload are those of the same bytes with nothing known.
    #[test]
    fn a_sparse_images_holes_are_not_read_and_change_nothing() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let size = 48u64 << 20;
        let make = |name: &str, seed: u64| {
            let p = dir.path().join(name);
            let f = std::fs::File::create(&p).unwrap();
            f.set_len(size).unwrap();
            let mut x = seed;
            let mut bytes = |n: usize| -> Vec<u8> {
                (0..n)
                    .map(|i| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        // Text-like: compresses, and has anchors.
                        if i % 97 < 60 {
                            b'a' + (x >> 60) as u8
                        } else {
                            (x >> 56) as u8
                        }
                    })
                    .collect()
            };
            // Data at the start (as a file system's metadata), single blocks, a written
            // run of zeros (data to the file system), data not block-aligned, a few MiB
            // in the middle (the same in both images but for a little), and near the end.
            let common = bytes(3 << 20);
            for (at, data) in [
                (0u64, bytes(40 * 4096)),
                (5000 * 4096, bytes(4096)),
                (6000 * 4096, vec![0u8; 8 * 4096]),
                (7000 * 4096 + 123, bytes(10_000)),
                (16 << 20, common.clone()),
                ((16 << 20) + 4096 * (seed % 7), bytes(4096)),
                (size - 3 * 4096 - 5, bytes(3 * 4096)),
            ] {
                f.write_all_at(&data, at).unwrap();
            }
            f.sync_all().unwrap();
            p
        };
        // The same common run in both: the second writes over it a little elsewhere.
        let (sp, tp) = (make("source", 1), make("target", 2));
        let (src, tgt) = (
            keel_io::Mapped::open(&sp).unwrap(),
            keel_io::Mapped::open(&tp).unwrap(),
        );
        assert!(!src.holes().is_empty() && !tgt.holes().is_empty());
        let count = size / 4096;
        let opts = super::GenerateOptions::new("t", "1").level(3);
        // Pages of each file in the page cache: what was written, at first.
        let resident = crate::digest::tests::resident;
        let before = [resident(&sp), resident(&tp)];
        // Everything that passes over holes, of a source and a target.
        let results = |src: &[u8], tgt: &[u8]| {
            (
                super::hashes(tgt, count, 2),
                super::anchors(&src[1..]).collect::<Vec<_>>(),
                crate::format::image_digest_of(tgt).unwrap(),
                super::build(None, tgt, &opts, None).unwrap(),
                super::build(Some(src), tgt, &opts, None).unwrap(),
            )
        };
        let sparse = results(&src, &tgt);
        // Neither image's holes came into the page cache (a hole's page is filled with
        // zeros on its first read, and the kernel's readahead fills megabytes around it).
        for (p, was) in [&sp, &tp].into_iter().zip(before) {
            let now = resident(p);
            assert!(
                now <= was + (64 << 10),
                "{}: {now} bytes resident, {was} before",
                p.display()
            );
        }
        let (sc, tc) = (src.to_vec(), tgt.to_vec());
        assert!(keel_io::known_zeros(&tc).is_empty());
        let dense = results(&sc, &tc);
        assert!(sparse.1.len() > 100 && sparse.4 .0.operations.len() > 2);
        assert!(sparse == dense);
    }

    #[test]
    fn reference_positions_scale_without_overflow() {
        assert_eq!(scale(3, 4, 2), 6);
        assert_eq!(scale(5, 0, 0), 0);
        // Block positions and file sizes from a crafted image: the product overflows u64.
        assert_eq!(scale(1 << 40, 1 << 40, 1 << 41), 1 << 39);
        assert_eq!(scale(u64::MAX, u64::MAX, 1), u64::MAX);
    }
}
