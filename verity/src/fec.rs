//! Forward error correction for dm-verity: Reed-Solomon parity byte-identical to
//! `veritysetup format --fec-device --fec-roots N`, verification, and repair of data and
//! hash blocks, with the hash tree as the judge of every repair.
//!
//! # Layout (cryptsetup `lib/verity/verity_fec.c`, the kernel's `dm-verity-fec.c`)
//!
//! The covered input is the data area (`data_blocks` blocks of the data device) followed by
//! the hash area: from the tree's first block to the end of the hash device, or to the FEC
//! offset when the parity lives on the hash device. Data and hash block size must be equal.
//! With `k = 255 - roots`, `blocks` covered blocks and `rounds = ceil(blocks / k)`, the
//! codeword for round `n` and byte `b` takes symbol `i` from byte `b` of covered block
//! `i * rounds + n` (zero past the end), so the blocks of one codeword lie far apart and a
//! run of damaged blocks costs each codeword at most one symbol. The parity area holds, for
//! each round and each byte of the block, `roots` parity bytes: `rounds * roots * block`
//! bytes in all. The code is RS(255, k) over GF(2^8) with polynomial 0x11d and first root
//! alpha^0 ([`crate::rs`]).
//!
//! # Speed
//!
//! cryptsetup runs the encoder's LFSR byte by byte after gathering each codeword from 253
//! blocks (about 30 MB/s). Keel reads each round's blocks in large runs (the blocks of
//! consecutive rounds are adjacent), computes every parity byte plane as a sum of whole
//! blocks multiplied by constants with GFNI or AVX2 ([`crate::gfmul`]), and splits rounds
//! between cores.
//!
//! # Repair
//!
//! Errors-only decoding corrects up to `roots / 2` bad bytes per codeword, but past that a
//! decoder can land on a different valid codeword. So [`fec_repair`] never trusts FEC
//! alone: every block it would change must then match the hash tree under the trusted
//! root. Blocks the tree still rejects become erasures (known positions), which RS corrects
//! up to `roots` per codeword, and the check repeats level by level; what the tree never
//! accepts is reported unrepairable and left as it was.
//!
//! # Android
//!
//! Android's `fec` tool writes the same parity (4 KiB blocks) followed by a 4 KiB block
//! holding a 60-byte [`AndroidFecHeader`] at its start and again at its end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::geometry::TreeGeometry;
use crate::gfmul::{Coeffs, Kernel};
use crate::io::{ReadAt, WriteAt};
use crate::params::VerityParams;
use crate::rs::{Code, Decoded, NN};
use crate::tree::BuildOptions;
use crate::verify::find_damage;
use crate::verify::in_runs;

/// Fewest parity bytes per codeword veritysetup accepts (RS(255, 253)).
pub const FEC_MIN_ROOTS: u8 = 2;
/// Most parity bytes per codeword veritysetup accepts (RS(255, 231)).
pub const FEC_MAX_ROOTS: u8 = 24;
/// veritysetup's default `--fec-roots`.
pub const FEC_DEFAULT_ROOTS: u8 = 2;

/// Covered input each worker reads per unit of work.
const BATCH_INPUT_BYTES: u64 = 8 << 20;
/// Most single-byte corrections kept in memory by a scan (16 bytes each).
const MAX_FIXES: usize = 4 << 20;
/// Most repaired blocks held in memory before they are checked and written.
const MAX_REPAIR_BYTES: u64 = 64 << 20;

/// Where the parity goes and what it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FecGeometry {
    block_size: u64,
    roots: u8,
    data_blocks: u64,
    hash_area_offset: u64,
    hash_blocks: u64,
    rounds: u64,
    fec_offset: u64,
}

impl FecGeometry {
    /// The geometry veritysetup uses. The hash area runs from the tree's first block to
    /// `hash_area_end` (rounded down to a block): the hash device's size when the parity
    /// has a device of its own, or `fec_offset` when it is on the hash device. The parity
    /// starts at byte `fec_offset` of the FEC device (a multiple of the block size, since
    /// the kernel takes it in blocks).
    pub fn new(
        params: &VerityParams,
        tree: &TreeGeometry,
        roots: u8,
        hash_area_end: u64,
        fec_offset: u64,
    ) -> Result<Self> {
        if params.data_block_size() != params.hash_block_size() {
            return Err(Error::param(
                "fec",
                format!(
                    "data block size {} and hash block size {} differ; FEC needs them equal",
                    params.data_block_size(),
                    params.hash_block_size()
                ),
            ));
        }
        if !(FEC_MIN_ROOTS..=FEC_MAX_ROOTS).contains(&roots) {
            return Err(Error::param(
                "fec-roots",
                format!("{roots}; must be {FEC_MIN_ROOTS} to {FEC_MAX_ROOTS}"),
            ));
        }
        let bs = u64::from(params.data_block_size());
        if !fec_offset.is_multiple_of(bs) {
            return Err(Error::param(
                "fec-offset",
                format!("{fec_offset} is not a multiple of the block size {bs}"),
            ));
        }
        let start = tree.hash_start_block();
        let tree_end = start + tree.tree_blocks();
        let end = hash_area_end / bs;
        if end < tree_end {
            return Err(Error::param(
                "fec",
                format!(
                    "the hash area ends at byte {hash_area_end}, before the end of the tree at \
                     byte {}",
                    tree_end * bs
                ),
            ));
        }
        let hash_blocks = end - start;
        let blocks = params
            .data_blocks()
            .checked_add(hash_blocks)
            .ok_or_else(|| Error::param("fec", "covered area too large"))?;
        let rounds = blocks.div_ceil(u64::from(255 - roots));
        rounds
            .checked_mul(u64::from(roots) * bs)
            .and_then(|p| p.checked_add(fec_offset))
            .ok_or_else(|| Error::param("fec", "parity area too large"))?;
        Ok(FecGeometry {
            block_size: bs,
            roots,
            data_blocks: params.data_blocks(),
            hash_area_offset: start * bs,
            hash_blocks,
            rounds,
            fec_offset,
        })
    }

    /// Parity on a device of its own at `fec_offset`; the hash area runs to the end of the
    /// hash device, `hash_device_size` bytes (veritysetup's `--fec-device=OTHER`).
    pub fn separate(
        params: &VerityParams,
        tree: &TreeGeometry,
        roots: u8,
        hash_device_size: u64,
        fec_offset: u64,
    ) -> Result<Self> {
        Self::new(params, tree, roots, hash_device_size, fec_offset)
    }

    /// Parity on the hash device at `fec_offset`, after the tree (veritysetup's
    /// `--fec-device=HASH --fec-offset=N`); everything between the tree and the parity is
    /// covered too.
    pub fn on_hash_device(
        params: &VerityParams,
        tree: &TreeGeometry,
        roots: u8,
        fec_offset: u64,
    ) -> Result<Self> {
        Self::new(params, tree, roots, fec_offset, fec_offset)
    }

    /// veritysetup's rule for open files: the parity on the hash device itself (same file
    /// or device) at `fec_offset`, with the hash area running to that offset; otherwise
    /// on a device of its own, with the hash area running to the end of the hash device.
    pub fn for_files(
        params: &VerityParams,
        tree: &TreeGeometry,
        roots: u8,
        hash: &std::fs::File,
        fec: &std::fs::File,
        fec_offset: u64,
    ) -> Result<Self> {
        if keel_io::same_file(hash, fec) {
            Self::on_hash_device(params, tree, roots, fec_offset)
        } else {
            let size = hash
                .size()
                .map_err(|e| Error::io("reading the hash device size", e))?;
            Self::separate(params, tree, roots, size, fec_offset)
        }
    }

    /// Parity bytes per codeword.
    pub fn roots(&self) -> u8 {
        self.roots
    }
    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }
    /// Data symbols per codeword, 255 - roots.
    pub fn rs_n(&self) -> u64 {
        255 - u64::from(self.roots)
    }
    /// Data blocks covered.
    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }
    /// Byte offset of the covered hash area on the hash device.
    pub fn hash_area_offset(&self) -> u64 {
        self.hash_area_offset
    }
    /// Hash-device blocks covered.
    pub fn hash_blocks(&self) -> u64 {
        self.hash_blocks
    }
    /// Blocks covered in all: the kernel table's `fec_blocks`.
    pub fn covered_blocks(&self) -> u64 {
        self.data_blocks + self.hash_blocks
    }
    /// Codeword rounds.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }
    /// Bytes of parity.
    pub fn parity_size(&self) -> u64 {
        self.rounds * u64::from(self.roots) * self.block_size
    }
    /// Byte offset of the parity on the FEC device.
    pub fn fec_offset(&self) -> u64 {
        self.fec_offset
    }
    /// The kernel table's `fec_start`, in blocks.
    pub fn fec_start_block(&self) -> u64 {
        self.fec_offset / self.block_size
    }
    /// Size the FEC device must have at least.
    pub fn fec_device_size(&self) -> u64 {
        self.fec_offset + self.parity_size()
    }

    fn k(&self) -> usize {
        255 - self.roots as usize
    }

    /// Rounds per unit of work, so one unit reads about BATCH_INPUT_BYTES.
    fn batch_rounds(&self) -> u64 {
        (BATCH_INPUT_BYTES / (self.k() as u64 * self.block_size)).clamp(1, self.rounds.max(1))
    }

    /// Where covered block `g` lives.
    fn locate(&self, g: u64) -> Place {
        if g < self.data_blocks {
            Place::Data(g)
        } else if g < self.covered_blocks() {
            Place::Hash(self.hash_area_offset / self.block_size + g - self.data_blocks)
        } else {
            Place::Padding
        }
    }
}

/// Where a covered block lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Data block number.
    Data(u64),
    /// Hash-device block number.
    Hash(u64),
    /// Past the end: zeros that are not stored.
    Padding,
}

/// The covered input: data area, hash area, then zeros.
struct Input<'a, D: ?Sized, H: ?Sized> {
    g: &'a FecGeometry,
    data: &'a D,
    hash: &'a H,
}

impl<D: ReadAt + ?Sized, H: ReadAt + ?Sized> Input<'_, D, H> {
    /// Fill `buf` (whole blocks) with covered blocks from `first` on.
    fn read(&self, first: u64, buf: &mut [u8]) -> Result<()> {
        let bs = self.g.block_size;
        let mut b = first;
        let mut rest = buf;
        while !rest.is_empty() {
            let want = rest.len() as u64 / bs;
            let (n, res) = match self.g.locate(b) {
                Place::Data(d) => {
                    let n = want.min(self.g.data_blocks - d);
                    let off = d * bs;
                    let r = self
                        .data
                        .read_exact_at(&mut rest[..(n * bs) as usize], off)
                        .map_err(|e| Error::io(format!("reading data device byte {off}"), e));
                    (n, r)
                }
                Place::Hash(h) => {
                    let n = want.min(self.g.covered_blocks() - b);
                    let off = h * bs;
                    let r = self
                        .hash
                        .read_exact_at(&mut rest[..(n * bs) as usize], off)
                        .map_err(|e| Error::io(format!("reading hash device byte {off}"), e));
                    (n, r)
                }
                Place::Padding => {
                    rest.fill(0);
                    (want, Ok(()))
                }
            };
            res?;
            rest = &mut rest[(n * bs) as usize..];
            b += n;
        }
        Ok(())
    }
}

/// One worker's buffers and code, for a batch of consecutive rounds.
struct Batch<'a> {
    g: &'a FecGeometry,
    coeffs: &'a Coeffs,
    kernel: Kernel,
    /// k runs of batch_rounds blocks: run i holds covered blocks i * rounds + r0 ...
    input: Vec<u8>,
    planes: Vec<u8>,
}

impl<'a> Batch<'a> {
    fn new(g: &'a FecGeometry, coeffs: &'a Coeffs, kernel: Kernel) -> Self {
        let bs = g.block_size as usize;
        Batch {
            g,
            coeffs,
            kernel,
            input: vec![0u8; g.k() * g.batch_rounds() as usize * bs],
            planes: vec![0u8; g.roots as usize * bs],
        }
    }

    fn load<D: ReadAt + ?Sized, H: ReadAt + ?Sized>(
        &mut self,
        input: &Input<'_, D, H>,
        r0: u64,
        nr: u64,
    ) -> Result<()> {
        let run = (nr * self.g.block_size) as usize;
        let stride = self.g.batch_rounds() as usize * self.g.block_size as usize;
        for i in 0..self.g.k() {
            let first = i as u64 * self.g.rounds + r0;
            input.read(first, &mut self.input[i * stride..i * stride + run])?;
        }
        Ok(())
    }

    /// Byte `b` of symbol `i` in round `r` (relative to the batch).
    fn symbol(&self, i: usize, r: usize, b: usize) -> u8 {
        let bs = self.g.block_size as usize;
        let stride = self.g.batch_rounds() as usize * bs;
        self.input[i * stride + r * bs + b]
    }

    /// Parity of round `r` of the loaded batch into `out` (block * roots bytes, interleaved
    /// as on disk).
    fn encode_round(&mut self, r: usize, out: &mut [u8]) -> Result<()> {
        let bs = self.g.block_size as usize;
        let stride = self.g.batch_rounds() as usize * bs;
        let inputs: Vec<&[u8]> = (0..self.g.k())
            .map(|i| &self.input[i * stride + r * bs..i * stride + (r + 1) * bs])
            .collect();
        if !self.coeffs.dot(self.kernel, &inputs, bs, &mut self.planes) {
            return Err(Error::param("fec", "internal buffer shapes disagree"));
        }
        let roots = self.g.roots as usize;
        for (j, plane) in self.planes.chunks_exact(bs).enumerate() {
            for (b, &p) in plane.iter().enumerate() {
                out[b * roots + j] = p;
            }
        }
        Ok(())
    }
}

fn code_and_coeffs(roots: u8) -> (Code, Coeffs) {
    let code = Code::new(roots as usize);
    let coeffs = Coeffs::new(code.parity_matrix(), roots as usize);
    (code, coeffs)
}

/// Run `work` over every batch of rounds on the worker threads, handing each result to
/// `sink` on this thread in completion order. Stops at the first error.
fn for_each_batch<T, W, S>(
    g: &FecGeometry,
    opts: &BuildOptions<'_>,
    work: W,
    mut sink: S,
) -> Result<()>
where
    T: Send,
    W: Fn(&mut Batch<'_>, u64, u64) -> Result<T> + Sync,
    S: FnMut(u64, u64, T) -> Result<()>,
{
    let (_, coeffs) = code_and_coeffs(g.roots);
    let kernel = Kernel::best();
    let per = g.batch_rounds();
    let batches = g.rounds.div_ceil(per);
    let threads = opts.thread_count().clamp(1, batches.max(1) as usize);
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let total = g.rounds * g.k() as u64 * g.block_size;
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<Result<(u64, u64, T)>>(threads);
        for _ in 0..threads {
            let tx = tx.clone();
            let (coeffs, next, stop, work) = (&coeffs, &next, &stop, &work);
            s.spawn(move || {
                let mut batch = Batch::new(g, coeffs, kernel);
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let r0 = b * per;
                    let nr = per.min(g.rounds - r0);
                    let res = work(&mut batch, r0, nr).map(|t| (r0, nr, t));
                    if tx.send(res).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut first: Option<Error> = None;
        let mut done = 0u64;
        for msg in rx {
            if first.is_some() {
                continue;
            }
            match msg.and_then(|(r0, nr, t)| sink(r0, nr, t).map(|()| nr)) {
                Ok(nr) => {
                    done += nr * g.k() as u64 * g.block_size;
                    if let Some(p) = opts.progress {
                        p.progress(done, total);
                    }
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    first = Some(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    })
}

/// Compute the parity of the data and hash areas and write it at `g.fec_offset()` of
/// `fec`: the bytes `veritysetup format --fec-device` writes. `fec` is synced at the end.
///
/// Memory: about 8 MiB of input per thread. When the parity goes on the hash device, pass
/// a second handle of the same file as `fec`.
pub fn fec_encode<D, H, F>(
    g: &FecGeometry,
    data: &D,
    hash: &H,
    fec: &mut F,
    opts: &BuildOptions<'_>,
) -> Result<()>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
    F: WriteAt + ?Sized,
{
    let input = Input { g, data, hash };
    let bs = g.block_size as usize;
    let roots = g.roots as usize;
    for_each_batch(
        g,
        opts,
        |batch, r0, nr| {
            batch.load(&input, r0, nr)?;
            let mut out = vec![0u8; nr as usize * bs * roots];
            for (r, o) in out.chunks_exact_mut(bs * roots).enumerate() {
                batch.encode_round(r, o)?;
            }
            Ok(out)
        },
        |r0, _, out| {
            let off = g.fec_offset + r0 * (bs * roots) as u64;
            fec.write_all_at(&out, off)
                .map_err(|e| Error::io(format!("writing parity at FEC device byte {off}"), e))
        },
    )?;
    fec.sync()
        .map_err(|e| Error::io("syncing the FEC device", e))
}

/// What a parity check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FecReport {
    /// Codewords checked.
    pub codewords: u64,
    /// Codewords that were not valid.
    pub damaged_codewords: u64,
    /// Bytes errors-only decoding can correct: the count `veritysetup verify --fec-device`
    /// reports as "repairable errors".
    pub corrected_symbols: u64,
    /// Codewords with more errors than the parity can locate.
    pub unrepairable_codewords: u64,
    /// Data blocks holding correctable bytes.
    pub data_blocks: Vec<u64>,
    /// Hash-device blocks (numbered in blocks) holding correctable bytes.
    pub hash_blocks: Vec<u64>,
    /// Correctable bytes in the parity itself.
    pub parity_bytes: u64,
}

impl FecReport {
    /// True when every codeword was valid.
    pub fn is_clean(&self) -> bool {
        self.damaged_codewords == 0
    }
}

/// One correction found by a scan.
#[derive(Clone, Copy, Debug)]
enum Fix {
    /// Byte `offset` of covered block `block`.
    Input { block: u64, offset: u32, value: u8 },
    /// Byte at `offset` from the start of the parity area.
    Parity { offset: u64, value: u8 },
}

#[derive(Default)]
struct ScanPart {
    damaged: u64,
    corrected: u64,
    failed: u64,
    failed_rounds: Vec<u64>,
    fixes: Vec<Fix>,
}

/// Decode every codeword that does not match its parity, errors only.
fn scan<D, H, F>(
    g: &FecGeometry,
    data: &D,
    hash: &H,
    fec: &F,
    opts: &BuildOptions<'_>,
) -> Result<(FecReport, Vec<Fix>, Vec<u64>)>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
    F: ReadAt + ?Sized,
{
    check_fec_size(g, fec)?;
    let input = Input { g, data, hash };
    let bs = g.block_size as usize;
    let roots = g.roots as usize;
    let k = g.k();
    let code = Code::new(roots);
    let mut report = FecReport {
        codewords: g.rounds * g.block_size,
        ..Default::default()
    };
    let mut fixes = Vec::new();
    let mut failed_rounds = Vec::new();
    for_each_batch(
        g,
        opts,
        |batch, r0, nr| {
            batch.load(&input, r0, nr)?;
            let mut stored = vec![0u8; nr as usize * bs * roots];
            let off = g.fec_offset + r0 * (bs * roots) as u64;
            fec.read_exact_at(&mut stored, off)
                .map_err(|e| Error::io(format!("reading parity at FEC device byte {off}"), e))?;
            let mut fresh = vec![0u8; bs * roots];
            let mut part = ScanPart::default();
            let mut cw = [0u8; NN];
            for r in 0..nr as usize {
                batch.encode_round(r, &mut fresh)?;
                let have = &stored[r * bs * roots..(r + 1) * bs * roots];
                if fresh == have {
                    continue;
                }
                let round = r0 + r as u64;
                for b in 0..bs {
                    let p = &have[b * roots..(b + 1) * roots];
                    if fresh[b * roots..(b + 1) * roots] == *p {
                        continue;
                    }
                    part.damaged += 1;
                    for (i, s) in cw[..k].iter_mut().enumerate() {
                        *s = batch.symbol(i, r, b);
                    }
                    cw[k..].copy_from_slice(p);
                    let before = cw;
                    let mut new_fixes = Vec::new();
                    let ok = match code.decode(&mut cw, &[]) {
                        Decoded::Corrected(_) => {
                            let mut ok = true;
                            for (pos, (&a, &bb)) in cw.iter().zip(&before).enumerate() {
                                if a == bb {
                                    continue;
                                }
                                if pos >= k {
                                    let offset = g.parity_offset(round, b, pos - k);
                                    new_fixes.push(Fix::Parity { offset, value: a });
                                    continue;
                                }
                                let block = pos as u64 * g.rounds + round;
                                if g.locate(block) == Place::Padding {
                                    // The zeros past the end are not stored, so they
                                    // cannot be wrong: the decoder went astray.
                                    ok = false;
                                    break;
                                }
                                new_fixes.push(Fix::Input {
                                    block,
                                    offset: b as u32,
                                    value: a,
                                });
                            }
                            ok
                        }
                        Decoded::Clean | Decoded::Failed => false,
                    };
                    if ok {
                        part.corrected += new_fixes.len() as u64;
                        if part.fixes.len() + new_fixes.len() <= MAX_FIXES {
                            part.fixes.extend(new_fixes);
                        }
                    } else {
                        part.failed += 1;
                        if part.failed_rounds.last() != Some(&round) {
                            part.failed_rounds.push(round);
                        }
                    }
                }
            }
            Ok(part)
        },
        |_, _, part| {
            report.damaged_codewords += part.damaged;
            report.corrected_symbols += part.corrected;
            report.unrepairable_codewords += part.failed;
            failed_rounds.extend(part.failed_rounds);
            if fixes.len() + part.fixes.len() > MAX_FIXES {
                return Err(Error::param(
                    "fec",
                    format!("more than {MAX_FIXES} damaged bytes; too much damage to hold"),
                ));
            }
            fixes.extend(part.fixes);
            Ok(())
        },
    )?;
    let mut data_blocks = BTreeSet::new();
    let mut hash_blocks = BTreeSet::new();
    for f in &fixes {
        match f {
            Fix::Input { block, .. } => match g.locate(*block) {
                Place::Data(d) => {
                    data_blocks.insert(d);
                }
                Place::Hash(h) => {
                    hash_blocks.insert(h);
                }
                Place::Padding => {}
            },
            Fix::Parity { .. } => report.parity_bytes += 1,
        }
    }
    report.data_blocks = data_blocks.into_iter().collect();
    report.hash_blocks = hash_blocks.into_iter().collect();
    Ok((report, fixes, failed_rounds))
}

impl FecGeometry {
    /// Offset within the parity area of parity byte `j` of codeword (round, byte b).
    fn parity_offset(&self, round: u64, b: usize, j: usize) -> u64 {
        (round * self.block_size + b as u64) * u64::from(self.roots) + j as u64
    }
}

fn check_fec_size<F: ReadAt + ?Sized>(g: &FecGeometry, fec: &F) -> Result<()> {
    let size = fec
        .size()
        .map_err(|e| Error::io("reading the FEC device size", e))?;
    if size < g.fec_device_size() {
        return Err(Error::TooSmall {
            what: "FEC device",
            needed: g.fec_device_size(),
            found: size,
        });
    }
    Ok(())
}

/// Check the data and hash areas against their parity, as `veritysetup verify
/// --fec-device` does: which codewords are damaged, how many bytes FEC could correct, in
/// which blocks, and how many codewords are beyond repair. Nothing is written.
///
/// FEC alone cannot tell a correct repair from a decoder landing on another codeword when
/// the damage exceeds `roots / 2` bytes per codeword; [`fec_repair`] settles that with the
/// hash tree.
pub fn fec_verify<D, H, F>(
    g: &FecGeometry,
    data: &D,
    hash: &H,
    fec: &F,
    opts: &BuildOptions<'_>,
) -> Result<FecReport>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
    F: ReadAt + ?Sized,
{
    scan(g, data, hash, fec, opts).map(|(r, _, _)| r)
}

/// What [`fec_repair`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// The parity check before repair.
    pub scan: FecReport,
    /// Data blocks rewritten, each now matching the tree.
    pub repaired_data_blocks: Vec<u64>,
    /// Hash-device blocks rewritten, each now matching the tree.
    pub repaired_hash_blocks: Vec<u64>,
    /// Parity bytes rewritten.
    pub repaired_parity_bytes: u64,
    /// Data blocks that still do not match the tree (left as they were).
    pub unrepairable_data_blocks: Vec<u64>,
    /// Hash-device blocks that still do not match the tree (left as they were).
    pub unrepairable_hash_blocks: Vec<u64>,
    /// Blocks that could not be checked because a hash block above them stayed damaged.
    pub unverifiable_blocks: u64,
    /// Covered hash-device blocks outside the tree (the rest of a separate hash device,
    /// or the gap before parity on the same device) that the parity says differ. No tree
    /// can check them, so they are left as they were, and the parity is not re-encoded
    /// over them.
    pub unchecked_hash_blocks: Vec<u64>,
}

impl RepairReport {
    /// True when the devices now verify against the root hash.
    pub fn is_complete(&self) -> bool {
        self.unrepairable_data_blocks.is_empty()
            && self.unrepairable_hash_blocks.is_empty()
            && self.unverifiable_blocks == 0
    }
}

/// A device seen with the repairs so far applied: device blocks `first..first + count`
/// are covered blocks `covered_first..`, looked up in the repairs by covered number.
struct Patched<'a, T: ?Sized> {
    inner: &'a T,
    blocks: &'a BTreeMap<u64, Vec<u8>>,
    bs: u64,
    first: u64,
    count: u64,
    covered_first: u64,
}

impl<T: ReadAt + ?Sized> ReadAt for Patched<'_, T> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_exact_at(buf, offset)?;
        let end = offset + buf.len() as u64;
        let lo = (offset / self.bs).max(self.first);
        let hi = end.div_ceil(self.bs).min(self.first + self.count);
        if lo >= hi {
            return Ok(());
        }
        let to_covered = |d: u64| d - self.first + self.covered_first;
        for (&c, content) in self.blocks.range(to_covered(lo)..to_covered(hi)) {
            let bstart = (c - self.covered_first + self.first) * self.bs;
            let from = offset.max(bstart);
            let to = end.min(bstart + self.bs);
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&content[(from - bstart) as usize..(to - bstart) as usize]);
            }
        }
        Ok(())
    }
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
}

/// The dm-verity side of a repair: what the corrected devices must hash to.
#[derive(Clone, Copy, Debug)]
pub struct RepairTarget<'a> {
    /// The verity parameters.
    pub params: &'a VerityParams,
    /// The tree's layout on the hash device.
    pub tree: &'a TreeGeometry,
    /// The trusted root hash.
    pub root: &'a [u8],
}

/// Repair damaged data and hash blocks in place with the parity, and damaged parity bytes
/// with the data: every block is written only once the whole tree above it verifies
/// against `target.root`, so a repair is never wrong; what cannot be repaired is reported
/// and left untouched.
///
/// First each damaged codeword is decoded errors-only (up to roots / 2 bytes). Blocks the
/// tree still rejects are then treated as erasures, whose positions are known, which
/// corrects up to `roots` blocks per round; this repeats as repaired hash blocks make the
/// blocks below them checkable. To repair into a copy, copy the devices first and pass the
/// copies. When data, hash or parity share a file, pass a handle per role.
///
/// Memory: the tree, the repaired blocks (at most 64 MiB; more damage is refused with an
/// error before anything is written) and one round of blocks while erasure decoding.
#[allow(clippy::too_many_arguments)]
pub fn fec_repair<D, H, F>(
    g: &FecGeometry,
    target: &RepairTarget<'_>,
    data: &mut D,
    hash: &mut H,
    fec: &mut F,
    opts: &BuildOptions<'_>,
) -> Result<RepairReport>
where
    D: ReadAt + WriteAt + ?Sized,
    H: ReadAt + WriteAt + ?Sized,
    F: ReadAt + WriteAt + ?Sized,
{
    let bs = g.block_size;
    if u64::from(target.params.data_block_size()) != bs
        || target.tree.data_blocks() != g.data_blocks
        || target.tree.hash_start_block() * bs != g.hash_area_offset
    {
        return Err(Error::param(
            "fec",
            "the FEC geometry was not made for these verity parameters",
        ));
    }
    let (scan_report, fixes, failed_rounds) = scan(g, &*data, &*hash, &*fec, opts)?;
    let mut report = RepairReport {
        scan: scan_report,
        ..Default::default()
    };
    // Covered block -> repaired content; parity offset -> byte.
    let mut blocks: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut parity: BTreeMap<u64, u8> = BTreeMap::new();
    let input = Input {
        g,
        data: &*data,
        hash: &*hash,
    };
    let limit = (MAX_REPAIR_BYTES / bs) as usize;
    for f in &fixes {
        match *f {
            Fix::Input {
                block,
                offset,
                value,
            } => {
                if !blocks.contains_key(&block) {
                    if blocks.len() >= limit {
                        return Err(too_much_damage());
                    }
                    let mut content = vec![0u8; bs as usize];
                    input.read(block, &mut content)?;
                    blocks.insert(block, content);
                }
                if let Some(c) = blocks.get_mut(&block) {
                    c[offset as usize] = value;
                }
            }
            Fix::Parity { offset, value } => {
                parity.insert(offset, value);
            }
        }
    }
    let code = Code::new(g.roots as usize);
    let to_covered = |h: &u64| h - g.hash_area_offset / bs + g.data_blocks;
    // Each pass reverts the repairs the tree rejects (a decoder gone astray: back to the
    // stored bytes) and decodes again with every rejected block as an erasure; repaired
    // hash blocks make the blocks below them checkable in the next pass. Decoding passes
    // are bounded; reverting only shrinks the set, so the loop ends.
    let mut budget = 4 * (target.tree.levels().len() + 2);
    let mut damage = judge(g, target, &*data, &*hash, &blocks, opts)?;
    loop {
        let bad: Vec<u64> = damage
            .bad_data
            .iter()
            .copied()
            .chain(damage.bad_hash.iter().map(to_covered))
            .collect();
        if bad.is_empty() {
            break;
        }
        let mut changed = false;
        for b in &bad {
            changed |= blocks.remove(b).is_some();
        }
        if budget > 0 {
            budget -= 1;
            changed |= erasure_pass(
                g,
                &code,
                &input,
                &*fec,
                &bad,
                &mut blocks,
                &mut parity,
                limit,
            )?;
        }
        if !changed {
            break;
        }
        damage = judge(g, target, &*data, &*hash, &blocks, opts)?;
    }
    // Only what the tree accepts is written; blocks it rejects, cannot check because a
    // hash block above them is still damaged, or cannot check at all (outside the tree)
    // keep their old content. Lookups go through sorted lists and runs, so the memory
    // stays that of the damage found, not of the device.
    let mut bad_data = damage.bad_data.clone();
    bad_data.sort_unstable();
    let mut bad_hash = damage.bad_hash.clone();
    bad_hash.sort_unstable();
    let tree_blocks =
        target.tree.hash_start_block()..target.tree.hash_start_block() + target.tree.tree_blocks();
    let mut unchecked_any =
        !bad_data.is_empty() || !bad_hash.is_empty() || damage.unknown_count() > 0;
    for (&block, content) in &blocks {
        match g.locate(block) {
            Place::Data(d) => {
                if bad_data.binary_search(&d).is_ok() || in_runs(&damage.unknown_data, d) {
                    continue;
                }
                let off = d * bs;
                data.write_all_at(content, off)
                    .map_err(|e| Error::io(format!("writing data device byte {off}"), e))?;
                report.repaired_data_blocks.push(d);
            }
            Place::Hash(h) => {
                if !tree_blocks.contains(&h) {
                    report.unchecked_hash_blocks.push(h);
                    unchecked_any = true;
                    continue;
                }
                if bad_hash.binary_search(&h).is_ok() || in_runs(&damage.unknown_hash, h) {
                    continue;
                }
                let off = h * bs;
                hash.write_all_at(content, off)
                    .map_err(|e| Error::io(format!("writing hash device byte {off}"), e))?;
                report.repaired_hash_blocks.push(h);
            }
            Place::Padding => {}
        }
    }
    if !unchecked_any {
        // With data and tree whole and checked, the parity is what they encode to: the
        // rounds where decoding touched the parity are encoded afresh rather than trusting
        // the decoder's parity bytes.
        let mut rounds: BTreeSet<u64> = parity.keys().map(|o| o / (bs * g.roots as u64)).collect();
        rounds.extend(&failed_rounds);
        let input = Input {
            g,
            data: &*data,
            hash: &*hash,
        };
        let fixes = fresh_parity(g, &input, &*fec, &rounds)?;
        for (off, value) in fixes {
            fec.write_all_at(&[value], off)
                .map_err(|e| Error::io(format!("writing FEC device byte {off}"), e))?;
            report.repaired_parity_bytes += 1;
        }
    }
    data.sync()
        .map_err(|e| Error::io("syncing the data device", e))?;
    hash.sync()
        .map_err(|e| Error::io("syncing the hash device", e))?;
    fec.sync()
        .map_err(|e| Error::io("syncing the FEC device", e))?;
    report.unverifiable_blocks = damage.unknown_count();
    report.unrepairable_data_blocks = damage.bad_data;
    report.unrepairable_hash_blocks = damage.bad_hash;
    Ok(report)
}

/// FEC-device offsets and values of the parity bytes of `rounds` that differ from what the
/// input encodes to.
fn fresh_parity<D, H, F>(
    g: &FecGeometry,
    input: &Input<'_, D, H>,
    fec: &F,
    rounds: &BTreeSet<u64>,
) -> Result<Vec<(u64, u8)>>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
    F: ReadAt + ?Sized,
{
    let (_, coeffs) = code_and_coeffs(g.roots);
    let mut batch = Batch::new(g, &coeffs, Kernel::best());
    let len = g.block_size as usize * g.roots as usize;
    let mut fresh = vec![0u8; len];
    let mut stored = vec![0u8; len];
    let mut out = Vec::new();
    for &round in rounds {
        batch.load(input, round, 1)?;
        batch.encode_round(0, &mut fresh)?;
        let off = g.fec_offset + round * len as u64;
        fec.read_exact_at(&mut stored, off)
            .map_err(|e| Error::io(format!("reading parity at FEC device byte {off}"), e))?;
        for (j, (&n, &s)) in fresh.iter().zip(&stored).enumerate() {
            if n != s {
                out.push((off + j as u64, n));
            }
        }
    }
    Ok(out)
}

fn too_much_damage() -> Error {
    Error::param(
        "fec",
        format!(
            "more than {} MiB of damaged blocks; too much damage to repair in memory",
            MAX_REPAIR_BYTES >> 20
        ),
    )
}

/// Check the devices with the repairs applied against the tree.
fn judge<D, H>(
    g: &FecGeometry,
    target: &RepairTarget<'_>,
    data: &D,
    hash: &H,
    blocks: &BTreeMap<u64, Vec<u8>>,
    opts: &BuildOptions<'_>,
) -> Result<crate::verify::Damage>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
{
    let bs = g.block_size;
    let dv = Patched {
        inner: data,
        blocks,
        bs,
        first: 0,
        count: g.data_blocks,
        covered_first: 0,
    };
    let hv = Patched {
        inner: hash,
        blocks,
        bs,
        first: g.hash_area_offset / bs,
        count: g.hash_blocks,
        covered_first: g.data_blocks,
    };
    find_damage(target.params, target.tree, &dv, &hv, target.root, opts)
}

/// Decode, with the known-bad covered blocks as erasures, every round that holds at most
/// `roots` of them. Returns whether anything changed.
#[allow(clippy::too_many_arguments)]
fn erasure_pass<D, H, F>(
    g: &FecGeometry,
    code: &Code,
    input: &Input<'_, D, H>,
    fec: &F,
    bad: &[u64],
    blocks: &mut BTreeMap<u64, Vec<u8>>,
    parity: &mut BTreeMap<u64, u8>,
    limit: usize,
) -> Result<bool>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
    F: ReadAt + ?Sized,
{
    let bs = g.block_size as usize;
    let roots = g.roots as usize;
    let k = g.k();
    let mut by_round: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for &b in bad {
        by_round
            .entry(b % g.rounds)
            .or_default()
            .push((b / g.rounds) as usize);
    }
    let mut changed = false;
    let mut round_blocks = vec![0u8; k * bs];
    let mut round_parity = vec![0u8; bs * roots];
    // The round before decoding: what a decoded block or parity byte is compared with.
    let mut before = vec![0u8; k * bs];
    let mut stored = vec![0u8; bs * roots];
    for (round, erasures) in by_round {
        if erasures.len() > roots {
            continue;
        }
        // The round as it stands with the repairs so far.
        for i in 0..k {
            let blk = i as u64 * g.rounds + round;
            let dst = &mut round_blocks[i * bs..(i + 1) * bs];
            match blocks.get(&blk) {
                Some(c) => dst.copy_from_slice(c),
                None => input.read(blk, dst)?,
            }
        }
        before.copy_from_slice(&round_blocks);
        let off = g.fec_offset + round * (bs * roots) as u64;
        fec.read_exact_at(&mut stored, off)
            .map_err(|e| Error::io(format!("reading parity at FEC device byte {off}"), e))?;
        // The stored parity, not earlier errors-only fixes of it: those may come from the
        // same decoder that went astray in this round.
        round_parity.copy_from_slice(&stored);
        let mut cw = [0u8; NN];
        let mut decoded_all = true;
        for b in 0..bs {
            for i in 0..k {
                cw[i] = round_blocks[i * bs + b];
            }
            cw[k..].copy_from_slice(&round_parity[b * roots..(b + 1) * roots]);
            match code.decode(&mut cw, &erasures) {
                Decoded::Clean => {}
                Decoded::Corrected(_) => {
                    for i in 0..k {
                        round_blocks[i * bs + b] = cw[i];
                    }
                    round_parity[b * roots..(b + 1) * roots].copy_from_slice(&cw[k..]);
                }
                Decoded::Failed => {
                    decoded_all = false;
                    break;
                }
            }
        }
        if !decoded_all {
            continue;
        }
        // A decoding that changes the unstored zeros past the end is not a real repair.
        let padding_changed = (0..k).any(|i| {
            g.locate(i as u64 * g.rounds + round) == Place::Padding
                && round_blocks[i * bs..(i + 1) * bs].iter().any(|&x| x != 0)
        });
        if padding_changed {
            continue;
        }
        for i in 0..k {
            let blk = i as u64 * g.rounds + round;
            if g.locate(blk) == Place::Padding {
                continue;
            }
            let new = &round_blocks[i * bs..(i + 1) * bs];
            if new != &before[i * bs..(i + 1) * bs] {
                if !blocks.contains_key(&blk) && blocks.len() >= limit {
                    return Err(too_much_damage());
                }
                blocks.insert(blk, new.to_vec());
                changed = true;
            }
        }
        let base = round * (bs * roots) as u64;
        let stale: Vec<u64> = parity
            .range(base..base + (bs * roots) as u64)
            .map(|(&o, _)| o)
            .collect();
        for o in stale {
            parity.remove(&o);
        }
        for (o, (&n, &s)) in round_parity.iter().zip(&stored).enumerate() {
            if n != s {
                parity.insert(base + o as u64, n);
            }
        }
    }
    Ok(changed)
}

/// Android's FEC header (`system/extras/libfec/include/fec/io.h`), 60 bytes little-endian,
/// stored at the start and at the end of the 4 KiB block that follows the parity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AndroidFecHeader {
    /// Parity bytes per codeword.
    pub roots: u32,
    /// Bytes of parity before the header block.
    pub fec_size: u32,
    /// Bytes covered (data, tree and anything between), a multiple of 4096.
    pub inp_size: u64,
    /// SHA-256 of the parity.
    pub hash: [u8; 32],
}

impl AndroidFecHeader {
    /// The magic, first field.
    pub const MAGIC: u32 = 0xFECF_ECFE;
    /// The only version.
    pub const VERSION: u32 = 0;
    /// Bytes in the header.
    pub const SIZE: usize = 60;
    /// Bytes in the header block.
    pub const BLOCK_SIZE: usize = 4096;

    /// The header for the parity `g` describes, with `parity_hash` the SHA-256 of the
    /// parity bytes ([`android_fec_header`] computes it from the device).
    pub fn for_geometry(g: &FecGeometry, parity_hash: [u8; 32]) -> Result<Self> {
        if g.block_size != Self::BLOCK_SIZE as u64 {
            return Err(Error::param(
                "fec",
                format!("Android FEC needs 4096-byte blocks, not {}", g.block_size),
            ));
        }
        let fec_size = u32::try_from(g.parity_size())
            .map_err(|_| Error::param("fec", "parity over 4 GiB does not fit the header"))?;
        Ok(AndroidFecHeader {
            roots: u32::from(g.roots),
            fec_size,
            inp_size: g.covered_blocks() * g.block_size,
            hash: parity_hash,
        })
    }

    /// The 60 header bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&Self::MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&Self::VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&(Self::SIZE as u32).to_le_bytes());
        b[12..16].copy_from_slice(&self.roots.to_le_bytes());
        b[16..20].copy_from_slice(&self.fec_size.to_le_bytes());
        b[20..28].copy_from_slice(&self.inp_size.to_le_bytes());
        b[28..60].copy_from_slice(&self.hash);
        b
    }

    /// The 4 KiB header block: the header at its start and again at its end.
    pub fn to_block(&self) -> Vec<u8> {
        let mut block = vec![0u8; Self::BLOCK_SIZE];
        let h = self.to_bytes();
        block[..Self::SIZE].copy_from_slice(&h);
        block[Self::BLOCK_SIZE - Self::SIZE..].copy_from_slice(&h);
        block
    }

    /// Parse 60 header bytes, checking every field libfec checks.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        const S: &str = "Android FEC header";
        let b = bytes.get(..Self::SIZE).ok_or(Error::TooSmall {
            what: "Android FEC header",
            needed: Self::SIZE as u64,
            found: bytes.len() as u64,
        })?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let field = |field: &'static str, offset: usize, reason: String| Error::BadField {
            structure: S,
            field,
            offset,
            reason,
        };
        if u32_at(0) != Self::MAGIC {
            return Err(field(
                "magic",
                0,
                format!("{:#010x}, not 0xfecfecfe", u32_at(0)),
            ));
        }
        if u32_at(4) != Self::VERSION {
            return Err(field("version", 4, format!("{}, not 0", u32_at(4))));
        }
        if u32_at(8) != Self::SIZE as u32 {
            return Err(field("size", 8, format!("{}, not 60", u32_at(8))));
        }
        let roots = u32_at(12);
        if !(1..255).contains(&roots) {
            return Err(field("roots", 12, format!("{roots}, not 1 to 254")));
        }
        let fec_size = u32_at(16);
        if fec_size == 0
            || !fec_size.is_multiple_of(roots)
            || !(fec_size as usize).is_multiple_of(Self::BLOCK_SIZE)
        {
            return Err(field(
                "fec_size",
                16,
                format!("{fec_size} is not a positive multiple of roots and of 4096"),
            ));
        }
        let mut inp = [0u8; 8];
        inp.copy_from_slice(&b[20..28]);
        let inp_size = u64::from_le_bytes(inp);
        if inp_size == 0 || !inp_size.is_multiple_of(Self::BLOCK_SIZE as u64) {
            return Err(field(
                "inp_size",
                20,
                format!("{inp_size} is not a positive multiple of 4096"),
            ));
        }
        let rounds = (inp_size / Self::BLOCK_SIZE as u64).div_ceil(255 - u64::from(roots));
        // An input size from the header can make this product overflow: checked, and an
        // overflow is a mismatch like any other.
        let parity = rounds
            .checked_mul(u64::from(roots))
            .and_then(|p| p.checked_mul(Self::BLOCK_SIZE as u64));
        if parity != Some(u64::from(fec_size)) {
            return Err(field(
                "fec_size",
                16,
                format!("{fec_size} does not match {inp_size} input bytes at {roots} roots"),
            ));
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[28..60]);
        Ok(AndroidFecHeader {
            roots,
            fec_size,
            inp_size,
            hash,
        })
    }

    /// Parse a header block: the copy at its start, or, if that one is damaged, the copy at
    /// its end (as libfec does).
    pub fn parse_block(block: &[u8]) -> Result<Self> {
        if block.len() != Self::BLOCK_SIZE {
            return Err(Error::param(
                "Android FEC header block",
                format!("{} bytes, not 4096", block.len()),
            ));
        }
        Self::parse(block).or_else(|first| {
            Self::parse(&block[Self::BLOCK_SIZE - Self::SIZE..]).map_err(|_| first)
        })
    }
}

/// The Android header for the parity already written for `g` on `fec` (its SHA-256 is
/// computed from the device).
pub fn android_fec_header<F: ReadAt + ?Sized>(
    g: &FecGeometry,
    fec: &F,
) -> Result<AndroidFecHeader> {
    check_fec_size(g, fec)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < g.parity_size() {
        let n = (g.parity_size() - off).min(buf.len() as u64) as usize;
        fec.read_exact_at(&mut buf[..n], g.fec_offset + off)
            .map_err(|e| Error::io("reading the parity", e))?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    AndroidFecHeader::for_geometry(g, h.finalize().into())
}
