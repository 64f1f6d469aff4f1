//! Making a block store: the image's tree, its runs compressed on every core, the signed
//! index written in front at the end.

use std::io::{Read, Seek, SeekFrom, Write};

use keel_trust::{Context, Signer};
use keel_verity::{BlockHasher, HashTree, ReadAt, RootDescriptor, VerityParams};

use super::{
    encode_index, Cdc, Run, RunKind, StoreHeader, StoreIndex, MAX_RUN_BLOCKS, MAX_ZERO_RUN,
};
use crate::error::{Error, Result};
use crate::format::{image_digest, sha256, ImageId, Version, HEADER_SIZE, SIGNATURE_SIZE};

/// Blocks per run by default, where no file is followed: 8 KiB. A device fetches whole
/// runs, so a smaller run wastes less around a changed block and compresses worse. On the
/// corpus's EROFS pair (files followed, the rest in these runs, a 4 KiB gap) 8 KiB runs
/// fetch 20.6 MB in 1014 ranges, 16 KiB runs 22.1 MB in 760, 4 KiB runs 20.2 MB in
/// 1112; on its ext4 pair 16.2 MB, 16.7 MB and 16.1 MB.
pub const DEFAULT_RUN_BLOCKS: u32 = 2;

/// The most blocks of a file's run: 1 MiB. A file that changed is nearly always new in
/// every block (a binary's addresses move), so its blocks are fetched together and
/// compress with the file's whole context; past 1 MiB, a large file that changed only in
/// part (an archive, a database) would cost more whole runs than its context saves.
pub const FILE_RUN_BLOCKS: u64 = 256;

/// Runs shorter than this are zstd only: LZMA2 gains on a whole file's code (its branch
/// filter most), little on a few blocks of metadata.
pub const XZ_MIN_RUN: u32 = 64 << 10;

/// Runs compressed per batch: what the publisher holds at once is a batch's blocks and
/// frames (16 MiB of blocks with the default run).
const BATCH_RUNS: usize = 256;

/// How to make a store.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PublishOptions {
    /// The system the image is for.
    pub compatible: String,
    /// The image's version (dotted numbers).
    pub version: String,
    /// The image's dm-verity parameters (salt, algorithm; 4 KiB data blocks): the root
    /// the store signs is the root a device's kernel will check. A device uses its booted
    /// slot's own tree as the index of what it has when the salt is the same, so keep one
    /// salt across a product's versions.
    pub verity: VerityParams,
    /// Blocks per run (1 to 1024, default [`DEFAULT_RUN_BLOCKS`]), when the runs are
    /// whole blocks.
    pub run_blocks: u32,
    /// `Some(None)`: runs of whole blocks; `Some(Some(c))`: runs cut by content with `c`;
    /// `None` (the default) looks at the image: content for squashfs (it packs content
    /// at any byte), whole blocks for everything else.
    pub chunking: Option<Option<Cdc>>,
    /// The image's files, as (first block, blocks) extents (see [`file_extents`]): runs of
    /// whole blocks then follow them, each file's blocks in runs of their own (up to
    /// [`FILE_RUN_BLOCKS`]), the rest cut at multiples of `run_blocks` as before. Empty:
    /// every run is `run_blocks` long.
    pub files: Vec<(u64, u64)>,
    /// The zstd level of every run (default 19).
    pub level: i32,
    /// Also try LZMA2 (plain and with the x86 branch filter) on runs of at least
    /// [`XZ_MIN_RUN`] bytes and keep the smallest (default): XZ runs make a format version 2
    /// store, which installers before it refuse.
    pub xz: bool,
    /// Threads compressing (default: every core).
    pub threads: keel_io::Threads,
}

impl PublishOptions {
    /// Options for an image of `compatible` at `version` with dm-verity `verity`.
    pub fn new(compatible: &str, version: &str, verity: VerityParams) -> Self {
        PublishOptions {
            compatible: compatible.to_string(),
            version: version.to_string(),
            verity,
            run_blocks: DEFAULT_RUN_BLOCKS,
            chunking: None,
            files: Vec::new(),
            level: 19,
            xz: true,
            threads: keel_io::Threads::default(),
        }
    }

    /// Blocks per run.
    pub fn run_blocks(mut self, n: u32) -> Self {
        self.run_blocks = n;
        self
    }

    /// Runs of whole blocks (`None`) or cut by content, whatever the image is.
    pub fn chunking(mut self, chunking: Option<Cdc>) -> Self {
        self.chunking = Some(chunking);
        self
    }

    /// Runs that follow the files of `image` (the image's bytes, e.g. a
    /// [`keel_io::Mapped`] image) where it is an ext4 or uncompressed EROFS file system;
    /// nothing changes for any other image. See [`file_extents`].
    pub fn files_of(mut self, image: &[u8]) -> Self {
        self.files = file_extents(image);
        self
    }

    /// Whether runs may be LZMA2 (see [`PublishOptions::xz`]).
    pub fn xz(mut self, xz: bool) -> Self {
        self.xz = xz;
        self
    }

    /// The zstd level.
    pub fn level(mut self, level: i32) -> Self {
        self.level = level;
        self
    }
}

/// What was published: what a release index names.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The store's size in bytes.
    pub size: u64,
    /// The sha256 of the whole file.
    pub sha256: [u8; 32],
    /// The sha256 of the signed header and index: the store's id, which pins every byte
    /// of it (the index binds the leaves, the leaves every block).
    pub index_sha256: [u8; 32],
    /// The image's dm-verity root hash.
    pub root_hash: Vec<u8>,
    /// The image's runs, and how many of them are zero.
    pub runs: usize,
    /// Runs of zero blocks (no data).
    pub zero_runs: usize,
}

/// Write the block store of `image` (exactly `opts.verity`'s data size) to `out` (a new,
/// empty file: it is written from its start and read back once for its digest), signed by
/// `signer`. Reads the image three times (tree, digest, runs), holds the tree and one
/// batch of runs.
pub fn publish_store<I, W, S>(
    image: &I,
    out: &mut W,
    signer: &S,
    opts: &PublishOptions,
) -> Result<Published>
where
    I: ReadAt + ?Sized,
    W: Read + Write + Seek,
    S: Signer + ?Sized,
{
    let params = &opts.verity;
    let bs = params.data_block_size();
    if bs != 4096 {
        return Err(Error::Internal(format!(
            "a block store needs 4096-byte dm-verity data blocks, the parameters have {bs}"
        )));
    }
    if opts.run_blocks == 0 || opts.run_blocks > MAX_RUN_BLOCKS {
        return Err(Error::Internal(format!(
            "run blocks {}: expected 1 to {MAX_RUN_BLOCKS}",
            opts.run_blocks
        )));
    }
    for (what, s, max) in [
        ("compatible", &opts.compatible, 256),
        ("version", &opts.version, 64),
    ] {
        if s.is_empty() || s.len() > max {
            return Err(Error::Internal(format!("{what}: 1 to {max} bytes")));
        }
    }
    Version::parse(&opts.version).map_err(|e| Error::BadVersion {
        what: "store version",
        version: opts.version.clone(),
        reason: e,
    })?;
    let size = params.data_size();
    let have = image.size().map_err(|e| Error::io("image size", e))?;
    if have != size {
        return Err(Error::Internal(format!(
            "the image is {have} bytes, the dm-verity parameters cover {size}"
        )));
    }
    let tree = HashTree::build(params, image)?;
    let verity = RootDescriptor::new(params.clone(), tree.root_hash())?
        .to_bytes()
        .to_vec();
    let digest = image_digest(image, size).map_err(|e| Error::io("reading the image", e))?;
    let chunking = match opts.chunking {
        Some(c) => c,
        None => {
            let mut magic = [0u8; 4];
            let squashfs = image.read_exact_at(&mut magic, 0).is_ok() && &magic == b"hsqs";
            squashfs.then_some(Cdc::DEFAULT)
        }
    };
    let runs = match chunking {
        None => block_runs(&tree, opts.run_blocks, &opts.files),
        Some(c) => {
            c.check()
                .map_err(|e| Error::Internal(format!("chunking: {e}")))?;
            content_runs(image, size, &c)?
        }
    };
    let leaves = zstd::bulk::compress(tree.leaf_level(), opts.level)
        .map_err(|e| Error::io("compressing the leaf level", e))?;
    let mut index = StoreIndex {
        block_size: bs,
        image: ImageId { size, digest },
        verity,
        compatible: opts.compatible.clone(),
        version: opts.version.clone(),
        leaves_len: tree.leaf_level().len() as u64,
        leaves_at: (0, leaves.len() as u32),
        chunking,
        runs,
    };
    // The index's length does not depend on the stored lengths: room for the front now,
    // the front itself once the runs are sized.
    let index_len = encode_index(&index).len();
    let front = HEADER_SIZE + index_len + SIGNATURE_SIZE;
    let w = |e| Error::io("writing the store", e);
    out.seek(SeekFrom::Start(0)).map_err(w)?;
    out.write_all(&vec![0u8; front]).map_err(w)?;
    out.write_all(&leaves).map_err(w)?;
    let mut data_len = leaves.len() as u64;
    for batch in index.runs.chunks_mut(BATCH_RUNS) {
        let frames = compress_batch(image, batch, opts)?;
        for (run, frame) in batch.iter_mut().zip(frames) {
            if let Some((kind, f)) = frame {
                run.kind = kind;
                run.stored = f.len() as u32;
                out.write_all(&f).map_err(w)?;
                data_len += f.len() as u64;
            }
        }
    }
    let xz = index.runs.iter().any(|r| r.kind == RunKind::Xz);
    let header = StoreHeader {
        version: if xz { 2 } else { 1 },
        index_len: index_len as u64,
        data_len,
        key_id: signer.key_id().0,
    };
    let mut signed = header.to_bytes().to_vec();
    signed.extend_from_slice(&encode_index(&index));
    let sig = signer.sign(Context::Payload, &signed)?;
    let index_sha256 = sha256(&signed);
    signed.extend_from_slice(&sig);
    out.seek(SeekFrom::Start(0)).map_err(w)?;
    out.write_all(&signed).map_err(w)?;
    out.flush().map_err(w)?;
    // The whole file's digest, for mirrors: read back, as the front was written last.
    out.seek(SeekFrom::Start(0)).map_err(w)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = out
            .read(&mut buf)
            .map_err(|e| Error::io("reading the store back", e))?;
        if n == 0 {
            break;
        }
        sha2::Digest::update(&mut h, &buf[..n]);
        total += n as u64;
    }
    let zero_runs = index
        .runs
        .iter()
        .filter(|r| r.kind == RunKind::Zero)
        .count();
    Ok(Published {
        size: total,
        sha256: sha2::Digest::finalize(h).into(),
        index_sha256,
        root_hash: tree.root_hash().to_vec(),
        runs: index.runs.len(),
        zero_runs,
    })
}

use sha2::Digest as _;

/// The data extents (first block, blocks) of every regular file of `image`, in image
/// order, where it is an ext4 or an uncompressed-layout EROFS file system with 4 KiB
/// blocks; empty for anything else (squashfs, compressed EROFS, a damaged image).
pub fn file_extents(image: &[u8]) -> Vec<(u64, u64)> {
    let mut files = crate::fs::ext4::files(image);
    if files.is_empty() {
        files = crate::fs::erofs::files(image);
    }
    let mut extents: Vec<(u64, u64)> = files
        .into_iter()
        .flat_map(|f| f.extents)
        .filter(|&(_, n)| n > 0)
        .collect();
    extents.sort_unstable();
    extents
}

/// The image cut into runs of whole blocks: the extents of `files` longer than one run
/// in runs of their own (split evenly, at most [`FILE_RUN_BLOCKS`] each), everything else
/// at multiples of `run_blocks`; and wherever zero blocks (known from their leaf: the
/// digest of a zero block) start or end; zero runs up to the limit. `files` is sorted;
/// extents past the image or overlapping an earlier one are not followed.
fn block_runs(tree: &HashTree, run_blocks: u32, files: &[(u64, u64)]) -> Vec<Run> {
    let blocks = tree.params().data_blocks();
    let bs = tree.params().data_block_size();
    let zero = BlockHasher::new(tree.params()).hash(&vec![0u8; bs as usize]);
    let is_zero = |b: u64| tree.leaf(b) == Some(zero.as_bytes());
    let grid = u64::from(run_blocks);
    // The extents followed: longer than a run, inside the image, apart.
    let mut followed: Vec<(u64, u64)> = Vec::new();
    for &(s, n) in files {
        let end = s.saturating_add(n);
        if n <= grid || end > blocks || followed.last().is_some_and(|&(_, e)| s < e) {
            continue;
        }
        followed.push((s, end));
    }
    let mut next_file = 0usize;
    let mut runs = Vec::new();
    let mut b = 0u64;
    while b < blocks {
        while followed.get(next_file).is_some_and(|&(_, e)| e <= b) {
            next_file += 1;
        }
        let z = is_zero(b);
        let limit = match followed.get(next_file) {
            _ if z => u64::from(MAX_RUN_BLOCKS),
            // In a file: its pieces are the same whatever precedes them, each as long as
            // the others.
            Some(&(s, e)) if s <= b => {
                let len = e - s;
                let pieces = len.div_ceil(FILE_RUN_BLOCKS);
                let piece = len.div_ceil(pieces);
                (piece - (b - s) % piece).min(e - b)
            }
            // Aligned to the image, so that a run is the same blocks in every version,
            // and ending where a followed file starts.
            Some(&(s, _)) => (grid - b % grid).min(s - b),
            None => grid - b % grid,
        };
        let mut n = 1u64;
        while n < limit && b + n < blocks && is_zero(b + n) == z {
            n += 1;
        }
        runs.push(Run {
            start: b * u64::from(bs),
            len: (n * u64::from(bs)) as u32,
            hint: 0,
            kind: if z { RunKind::Zero } else { RunKind::Zstd },
            offset: 0,
            stored: 0,
        });
        b += n;
    }
    runs
}

/// The image cut by content; chunks of zeros merged into zero runs.
fn content_runs<I: ReadAt + ?Sized>(image: &I, size: u64, c: &Cdc) -> Result<Vec<Run>> {
    let mut runs: Vec<Run> = Vec::new();
    c.chunks(image, size, |start, bytes| {
        let zero = bytes.iter().all(|&b| b == 0);
        if let Some(last) = runs.last_mut() {
            if zero
                && last.kind == RunKind::Zero
                && u64::from(last.len) + bytes.len() as u64 <= u64::from(MAX_ZERO_RUN)
            {
                last.len += bytes.len() as u32;
                return Ok(());
            }
        }
        runs.push(Run {
            start,
            len: bytes.len() as u32,
            hint: if zero { 0 } else { super::cdc::hint(bytes) },
            kind: if zero { RunKind::Zero } else { RunKind::Zstd },
            offset: 0,
            stored: 0,
        });
        Ok(())
    })?;
    Ok(runs)
}

/// A run's data as stored: its kind and bytes.
type Frame = (RunKind, Vec<u8>);

/// The frames of a batch's data runs (`None` for zero runs), compressed on every core.
fn compress_batch<I: ReadAt + ?Sized>(
    image: &I,
    batch: &[Run],
    opts: &PublishOptions,
) -> Result<Vec<Option<Frame>>> {
    let threads = opts.threads.count().max(1).min(batch.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Option<Frame>> = vec![None; batch.len()];
    let results = std::sync::Mutex::new(Vec::with_capacity(batch.len()));
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut c = zstd::bulk::Compressor::new(opts.level)
                        .map_err(|e| Error::io("starting zstd", e))?;
                    let mut buf = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(run) = batch.get(i) else {
                            return Ok(());
                        };
                        if run.kind == RunKind::Zero {
                            continue;
                        }
                        buf.resize(run.len as usize, 0);
                        image.read_exact_at(&mut buf, run.start).map_err(|e| {
                            Error::io(format!("reading image bytes at {}", run.start), e)
                        })?;
                        let mut f = (
                            RunKind::Zstd,
                            c.compress(&buf)
                                .map_err(|e| Error::io("compressing a run", e))?,
                        );
                        if opts.xz && run.len >= XZ_MIN_RUN {
                            for x86 in [false, true] {
                                let blob =
                                    crate::codec::xz::encode_blob(&buf, &[], x86).map_err(|e| {
                                        Error::io("compressing a run", std::io::Error::other(e))
                                    })?;
                                if blob.len() < f.1.len() {
                                    f = (RunKind::Xz, blob);
                                }
                            }
                        }
                        results
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push((i, f));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| Error::Internal("a compressing thread panicked".into()))??;
        }
        Ok(())
    })?;
    for (i, f) in results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        out[i] = Some(f);
    }
    Ok(out)
}
