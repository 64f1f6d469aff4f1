//! Computing the parity, batch by batch on every core.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

use crate::error::{Error, Result};
use crate::io::{ReadAt, WriteAt};
use crate::tree::BuildOptions;

use super::gfmul::{Kernel, Syndromes};
use super::rs::Code;
use super::*;

/// One worker's buffers and code, for a batch of consecutive rounds.
pub(crate) struct Batch<'a> {
    pub(crate) g: &'a FecGeometry,
    pub(crate) syn: &'a Syndromes,
    pub(crate) kernel: Kernel,
    /// k runs of batch_rounds blocks: run i holds covered blocks i * rounds + r0 ...
    pub(crate) input: Vec<u8>,
    pub(crate) planes: Vec<u8>,
    /// A round's syndromes, on their way to its parity.
    syndromes: Vec<u8>,
    /// Rounds a batch holds at most.
    pub(crate) per: u64,
}

impl<'a> Batch<'a> {
    pub(crate) fn new(g: &'a FecGeometry, syn: &'a Syndromes, kernel: Kernel) -> Self {
        Self::with_rounds(g, syn, kernel, g.batch_rounds())
    }

    /// A batch of up to `per` rounds.
    pub(crate) fn with_rounds(
        g: &'a FecGeometry,
        syn: &'a Syndromes,
        kernel: Kernel,
        per: u64,
    ) -> Self {
        let bs = g.block_size as usize;
        Batch {
            g,
            syn,
            kernel,
            input: vec![0u8; g.k() * per as usize * bs],
            planes: vec![0u8; g.roots as usize * bs],
            syndromes: vec![0u8; g.roots as usize * bs],
            per,
        }
    }

    /// Bytes between the runs of consecutive symbols in `input`.
    pub(crate) fn stride(&self) -> usize {
        self.per as usize * self.g.block_size as usize
    }

    pub(crate) fn load<D: ReadAt + ?Sized, H: ReadAt + ?Sized>(
        &mut self,
        input: &Input<'_, D, H>,
        r0: u64,
        nr: u64,
    ) -> Result<()> {
        let run = (nr * self.g.block_size) as usize;
        let stride = self.stride();
        for i in 0..self.g.k() {
            let first = i as u64 * self.g.rounds + r0;
            input.read(first, &mut self.input[i * stride..i * stride + run])?;
        }
        Ok(())
    }

    /// Byte `b` of symbol `i` in round `r` (relative to the batch).
    pub(crate) fn symbol(&self, i: usize, r: usize, b: usize) -> u8 {
        let bs = self.g.block_size as usize;
        let stride = self.stride();
        self.input[i * stride + r * bs + b]
    }

    /// Symbol `i`'s block in round `r` (relative to the batch): one covered block.
    pub(crate) fn block(&self, i: usize, r: usize) -> &[u8] {
        let bs = self.g.block_size as usize;
        &self.input[i * self.stride() + r * bs..][..bs]
    }

    /// Parity of round `r` of the loaded batch into `out` as `roots` planes of a block
    /// each, side by side.
    pub(crate) fn encode_planes(&mut self, r: usize, out: &mut [u8]) -> Result<()> {
        let bs = self.g.block_size as usize;
        let stride = self.stride();
        let inputs: Vec<&[u8]> = (0..self.g.k())
            .map(|i| &self.input[i * stride + r * bs..i * stride + (r + 1) * bs])
            .collect();
        self.syndromes.fill(0);
        if !self
            .syn
            .add(self.kernel, 0, &inputs, bs, &mut self.syndromes)
            || !self.syn.parity(self.kernel, &self.syndromes, bs, out)
        {
            return Err(Error::param("fec", "internal buffer shapes disagree"));
        }
        Ok(())
    }

    /// Parity of round `r` of the loaded batch into `out` (block * roots bytes, interleaved
    /// as on disk).
    pub(crate) fn encode_round(&mut self, r: usize, out: &mut [u8]) -> Result<()> {
        let bs = self.g.block_size as usize;
        let mut planes = std::mem::take(&mut self.planes);
        let done = self.encode_planes(r, &mut planes);
        let roots = self.g.roots as usize;
        for (j, plane) in planes.chunks_exact(bs).enumerate() {
            for (b, &p) in plane.iter().enumerate() {
                out[b * roots + j] = p;
            }
        }
        self.planes = planes;
        done
    }
}

/// The code, and its parity by way of the syndromes of a whole round at once.
pub(crate) fn code_and_syndromes(roots: u8) -> (Code, Syndromes) {
    let code = Code::new(roots as usize);
    let syn = Syndromes::new(&code, code.data_len(), 1);
    (code, syn)
}

/// Run `work` over every batch of rounds on the worker threads, handing each result to
/// `sink` on this thread in completion order. Stops at the first error, and with
/// [`Error::Cancelled`] once `opts.progress` asks (checked before every batch, so a stop
/// takes effect within one batch per worker).
pub(crate) fn for_each_batch<T, W, S>(
    g: &FecGeometry,
    opts: &BuildOptions<'_>,
    work: W,
    sink: S,
) -> Result<()>
where
    T: Send,
    W: Fn(&mut Batch<'_>, u64, u64) -> Result<T> + Sync,
    S: FnMut(u64, u64, T) -> Result<()>,
{
    for_each_batch_of(g, g.batch_rounds(), opts, work, sink)
}

/// [`for_each_batch`] with batches of up to `per` rounds.
pub(crate) fn for_each_batch_of<T, W, S>(
    g: &FecGeometry,
    per: u64,
    opts: &BuildOptions<'_>,
    work: W,
    mut sink: S,
) -> Result<()>
where
    T: Send,
    W: Fn(&mut Batch<'_>, u64, u64) -> Result<T> + Sync,
    S: FnMut(u64, u64, T) -> Result<()>,
{
    let (_, syn) = code_and_syndromes(g.roots);
    let kernel = Kernel::best();
    let per = per.clamp(1, g.rounds.max(1));
    let batches = g.rounds.div_ceil(per);
    let threads = opts.thread_count().clamp(1, batches.max(1) as usize);
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let total = g.rounds * g.k() as u64 * g.block_size;
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<Result<(u64, u64, T)>>(threads);
        for _ in 0..threads {
            let tx = tx.clone();
            let (syn, next, stop, work) = (&syn, &next, &stop, &work);
            s.spawn(move || {
                let mut batch = Batch::with_rounds(g, syn, kernel, per);
                loop {
                    if opts.progress.is_some_and(|p| p.cancelled()) {
                        let _ = tx.send(Err(Error::Cancelled));
                        break;
                    }
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
    input.check_sizes()?;
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
