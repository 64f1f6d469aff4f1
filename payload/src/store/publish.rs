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

/// Blocks per run by default: 16 KiB. A device fetches whole runs, so a smaller run
/// wastes less around a changed block and compresses worse; on the corpus's ext4 pair
/// (512 MiB Debian roots) 16 KiB runs fetch 19.3 MB where 64 KiB runs fetch 22.8 MB.
pub const DEFAULT_RUN_BLOCKS: u32 = 4;

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
    /// The zstd level of every run (default 19).
    pub level: i32,
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
            level: 19,
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
        None => block_runs(&tree, opts.run_blocks),
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
            if let Some(f) = frame {
                run.stored = f.len() as u32;
                out.write_all(&f).map_err(w)?;
                data_len += f.len() as u64;
            }
        }
    }
    let header = StoreHeader {
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

/// The image cut into runs of whole blocks: at multiples of `run_blocks`, and wherever
/// zero blocks (known from their leaf: the digest of a zero block) start or end; zero runs
/// up to the limit.
fn block_runs(tree: &HashTree, run_blocks: u32) -> Vec<Run> {
    let blocks = tree.params().data_blocks();
    let bs = tree.params().data_block_size();
    let zero = BlockHasher::new(tree.params()).hash(&vec![0u8; bs as usize]);
    let is_zero = |b: u64| tree.leaf(b) == Some(zero.as_bytes());
    let mut runs = Vec::new();
    let mut b = 0u64;
    while b < blocks {
        let z = is_zero(b);
        let limit = if z {
            u64::from(MAX_RUN_BLOCKS)
        } else {
            // Aligned to the image, so that a run is the same blocks in every version.
            u64::from(run_blocks) - b % u64::from(run_blocks)
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

/// The frames of a batch's data runs (`None` for zero runs), compressed on every core.
fn compress_batch<I: ReadAt + ?Sized>(
    image: &I,
    batch: &[Run],
    opts: &PublishOptions,
) -> Result<Vec<Option<Vec<u8>>>> {
    let threads = opts.threads.count().max(1).min(batch.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Option<Vec<u8>>> = vec![None; batch.len()];
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
                        let f = c
                            .compress(&buf)
                            .map_err(|e| Error::io("compressing a run", e))?;
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
