//! The tree (and the FEC parity) of data as it is written, in any order, so that a writer
//! that already holds every block on its way to the disk need not read the device again.
//!
//! A [`StreamTree`] is told of every write to the data device ([`StreamTree::write`],
//! [`StreamTree::zeros`]). Each whole data block it sees is hashed into the leaf level at
//! once, and, when parity was asked for, multiplied into the Reed-Solomon parity of its
//! round (the parity is linear in its input, so blocks may arrive in any order).
//! [`StreamTree::finish`] reads back only what it did not see whole (blocks written in part,
//! blocks an earlier, interrupted run wrote, blocks never written), builds the levels above
//! the leaves, and adds the hash area's share of the parity from the finished tree.
//!
//! What is trusted: that the device keeps what was written to it. The data is not read back
//! to be checked; a block the disk loses or alters after the write is caught where
//! dm-verity always catches it, when the kernel reads it (and, with parity, repaired
//! there). A block written twice or in part still gives the right tree (its last whole
//! write counts, a partial one is read back), but its first contribution to the parity
//! cannot be taken back: the parity is then dropped and [`Streamed::parity`] is `None`,
//! as it is when the parity would need more than [`STREAM_PARITY_BUDGET`] bytes of memory;
//! the caller computes it with [`crate::fec_encode`] instead.

use crate::algorithm::{Digest64, SaltedHasher};
use crate::error::{Error, Result};
use crate::fec::gfmul::{Coeffs, Kernel, Syndromes};
use crate::fec::rs::Code;
use crate::fec::FecGeometry;
use crate::geometry::TreeGeometry;
use crate::io::{ReadAt, WriteAt};
use crate::params::VerityParams;
use crate::tree::{hash_leaves, BuildOptions, HashTree};
use keel_io::Threads;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Most memory the parity of a [`StreamTree`] may take (beside the tree itself): the
/// parity of about 8 GiB of data with two roots.
pub const STREAM_PARITY_BUDGET: u64 = 64 << 20;

/// When the whole device is read (see [`StreamTree::read_whole`]): the codeword positions
/// read together, whose blocks of a round are added to its syndromes in one pass.
const TILE_POSITIONS: usize = 8;
/// Below this many blocks in one write, one thread hashes them: spawning costs more.
const SPLIT_MIN_BLOCKS: usize = 64;
/// When the whole device is read: what is read at each position at a time, and asked for
/// ahead of its use ([`ReadAt::will_need`]), so that a disk is read in runs this long.
const READ_RUN_BYTES: usize = 256 << 10;
/// What [`Parity::write_to`] lays out and writes at a time (a buffer that stays in the
/// cache, its pages faulted in once).
const PARITY_WRITE_BYTES: usize = 1 << 20;
/// What [`StreamTree::finish`] reads back at a time.
const READ_BACK_BYTES: usize = 8 << 20;

/// The tree, and the parity if it was asked for, of what a [`StreamTree`] saw.
#[derive(Debug, PartialEq, Eq)]
pub struct Streamed {
    /// The whole tree, with its root.
    pub tree: HashTree,
    /// The parity, in the layout `veritysetup format --fec-device` writes; `None` if none
    /// was asked for or it could not be computed on the way (see the module's text).
    pub parity: Option<Parity>,
    /// Bytes of the data device [`StreamTree::finish`] had to read.
    pub read_back: u64,
}

/// The parity of a data device and its tree, held in memory until written.
#[derive(Debug, PartialEq, Eq)]
pub struct Parity {
    g: FecGeometry,
    /// Planes in the first group.
    split: usize,
    /// Two groups of planes (the first `split`, then the rest), each `rounds` runs of its
    /// planes side by side (`block` bytes each): see [`Parity::plane`].
    planes: Vec<u8>,
}

impl Parity {
    /// Where it goes and what it covers.
    pub fn geometry(&self) -> &FecGeometry {
        &self.g
    }

    /// Write it at [`FecGeometry::fec_offset`] of `fec` (the bytes [`crate::fec_encode`]
    /// writes) and sync `fec`.
    pub fn write_to<F: WriteAt + ?Sized>(&self, fec: &mut F) -> Result<()> {
        let bs = self.g.block_size as usize;
        let roots = self.g.roots as usize;
        let rounds = self.g.rounds as usize;
        let per_write = (PARITY_WRITE_BYTES / (bs * roots)).max(1);
        let mut out = vec![0u8; per_write.min(rounds) * bs * roots];
        let mut r0 = 0usize;
        while r0 < rounds {
            let n = per_write.min(rounds - r0);
            let buf = &mut out[..n * bs * roots];
            for r in 0..n {
                let round = &mut buf[r * bs * roots..(r + 1) * bs * roots];
                if roots == 2 {
                    // The common case, in a form the compiler vectorizes (byte unpacking).
                    let (p0, p1) = (self.plane(r0 + r, 0), self.plane(r0 + r, 1));
                    for (out, (&x, &y)) in round.chunks_exact_mut(2).zip(p0.iter().zip(p1)) {
                        out[0] = x;
                        out[1] = y;
                    }
                    continue;
                }
                for j in 0..roots {
                    let plane = self.plane(r0 + r, j);
                    for (b, &p) in plane.iter().enumerate() {
                        round[b * roots + j] = p;
                    }
                }
            }
            let off = self.g.fec_offset + (r0 * bs * roots) as u64;
            fec.write_all_at(buf, off)
                .map_err(|e| Error::io(format!("writing parity at FEC device byte {off}"), e))?;
            r0 += n;
        }
        fec.sync()
            .map_err(|e| Error::io("syncing the FEC device", e))
    }
}

impl Parity {
    /// Round `r`'s parity byte plane `j` (byte b of the block is symbol j of codeword b).
    fn plane(&self, r: usize, j: usize) -> &[u8] {
        let bs = self.g.block_size as usize;
        &self.planes[plane_at(&self.g, self.split, r, j)..][..bs]
    }
}

/// Where round `r`'s plane `j` starts in planes split in two groups at `split` (each group
/// `rounds` runs of its planes side by side).
fn plane_at(g: &FecGeometry, split: usize, r: usize, j: usize) -> usize {
    let bs = g.block_size as usize;
    match j < split {
        true => (r * split + j) * bs,
        false => {
            let pg = g.roots as usize - split;
            split * g.rounds as usize * bs + (r * pg + j - split) * bs
        }
    }
}

/// The coefficients of planes `from..to` for each symbol position, from the code's parity
/// matrix `raw` (for blocks added one at a time).
fn coeffs_of(g: &FecGeometry, raw: &[u8], from: usize, to: usize) -> Vec<Coeffs> {
    let roots = g.roots as usize;
    raw[..g.k() * roots]
        .chunks(roots)
        .map(|rows| {
            let cut = rows.chunks_exact(roots).flat_map(|row| &row[from..to]);
            Coeffs::new(cut.copied().collect(), to - from)
        })
        .collect()
}

/// Write each page of `v` (zeros) once. Zeroed memory from the allocator maps its pages to
/// the shared zero page when first read: the multiply-adds read each plane before they
/// write it, and each such write then faults and makes every other core flush its TLB (1%
/// of a format's time, in the threads that compute).
fn write_pages(v: &mut [u8]) {
    for page in v.chunks_mut(4096) {
        // Opaque to the compiler, which would drop a zero written to zeroed memory.
        std::hint::black_box(page)[0] = 0;
    }
}

/// The parity as it accumulates: the planes split in two groups, one per thread.
struct Accumulator {
    g: FecGeometry,
    kernel: Kernel,
    /// Planes in the first group (the second holds the rest).
    split: usize,
    /// Each group's coefficients.
    rows: [Vec<Coeffs>; 2],
    /// The code's parity matrix, which `rows` are cut from.
    raw: Vec<u8>,
    planes: Vec<u8>,
    /// Whether every page of `planes` was written: not yet when allocated, so that
    /// [`StreamTree::read_whole`]'s threads fault in their own (a 128th of the data, which
    /// one thread took 10 to 20 ms to write before they started).
    written: bool,
}

impl Accumulator {
    fn new(g: &FecGeometry) -> Accumulator {
        let roots = g.roots as usize;
        let split = roots / 2;
        let raw = Code::new(roots).parity_matrix();
        Accumulator {
            g: g.clone(),
            kernel: Kernel::best(),
            split,
            rows: [
                coeffs_of(g, &raw, 0, split),
                coeffs_of(g, &raw, split, roots),
            ],
            raw,
            planes: vec![0u8; g.parity_size() as usize],
            written: false,
        }
    }

    /// The two groups of planes, each for one thread.
    fn shares(&mut self) -> [Share<'_>; 2] {
        if !self.written {
            write_pages(&mut self.planes);
            self.written = true;
        }
        let plane_len = self.g.rounds as usize * self.g.block_size as usize;
        let (a, b) = self.planes.split_at_mut(self.split * plane_len);
        let [ra, rb] = &self.rows;
        [
            Share::new(&self.g, self.kernel, ra, a),
            Share::new(&self.g, self.kernel, rb, b),
        ]
    }

    /// Lay the planes out as one group (each round's planes side by side), the second
    /// empty: for a parity to which nothing was added yet.
    fn one_group(&mut self) {
        let roots = self.g.roots as usize;
        self.split = roots;
        self.rows = [coeffs_of(&self.g, &self.raw, 0, roots), Vec::new()];
    }
}

/// One thread's share of the parity: one group of planes for every block of a write.
struct Share<'a> {
    g: &'a FecGeometry,
    kernel: Kernel,
    planes_in_group: usize,
    /// The group's coefficients for each symbol position.
    rows: &'a [Coeffs],
    planes: &'a mut [u8],
}

impl<'a> Share<'a> {
    /// `planes` holds `rounds` runs of the group's planes side by side.
    fn new(g: &'a FecGeometry, kernel: Kernel, rows: &'a [Coeffs], planes: &'a mut [u8]) -> Self {
        let planes_in_group = planes.len() / (g.rounds as usize * g.block_size as usize);
        Share {
            g,
            kernel,
            planes_in_group,
            rows,
            planes,
        }
    }

    /// Add covered blocks `first..` (`input`, whole blocks) to this group's planes.
    fn add(&mut self, first: u64, input: &[u8]) {
        if self.planes_in_group == 0 {
            return;
        }
        let bs = self.g.block_size as usize;
        let rounds = self.g.rounds;
        let pg = self.planes_in_group;
        for (n, block) in input.chunks_exact(bs).enumerate() {
            let c = first + n as u64;
            let (i, r) = ((c / rounds) as usize, (c % rounds) as usize);
            let Some(row) = self.rows.get(i) else {
                return; // past the covered blocks: padding, which is zero
            };
            // The shapes are fixed by construction (one input of `bs` bytes, the round's
            // planes of this group side by side).
            row.dot_add(
                self.kernel,
                &[block],
                bs,
                &mut self.planes[r * pg * bs..][..pg * bs],
            );
        }
    }
}

/// The tree (and parity) of a data device built from the writes to it; see the module.
pub struct StreamTree {
    params: VerityParams,
    geometry: TreeGeometry,
    hasher: SaltedHasher,
    tree: Vec<u8>,
    /// The digest of block 0 when the data is a single block (the tree has no levels).
    single: Option<Digest64>,
    zero_digest: Digest64,
    /// Data blocks hashed from a whole write, one bit each.
    seen: Vec<u64>,
    parity: Option<Accumulator>,
    threads: usize,
    /// [`READ_RUN_BYTES`] (smaller in tests, to see many bands on a small device).
    run_bytes: usize,
}

impl std::fmt::Debug for StreamTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTree")
            .field("params", &self.params)
            .field("parity", &self.parity.is_some())
            .finish_non_exhaustive()
    }
}

impl StreamTree {
    /// A tree of `params`'s data, nothing seen yet. Memory: the tree (a 128th of the data
    /// with SHA-256 and 4 KiB blocks) and a bit per data block.
    pub fn new(params: &VerityParams) -> Result<Self> {
        let geometry = TreeGeometry::new(params, 0, false)?;
        let tree = crate::io::zeroed(geometry.tree_size(), "hash tree")?;
        let hasher = SaltedHasher::new(params.algorithm(), params.hash_type(), params.salt());
        let zero = vec![0u8; params.data_block_size() as usize];
        let zero_digest = hasher.hash(&zero, geometry.digest_size());
        let words = usize::try_from(params.data_blocks().div_ceil(64))
            .map_err(|_| Error::param("data blocks", "too many for this machine"))?;
        Ok(StreamTree {
            params: params.clone(),
            geometry,
            hasher,
            tree,
            single: None,
            zero_digest,
            seen: vec![0; words],
            parity: None,
            threads: Threads::default().count(),
            run_bytes: READ_RUN_BYTES,
        })
    }

    /// Also compute the parity `g` describes (for `params`'s data and its tree). Refused
    /// when `g` is not of this data or its hash area is not exactly the tree (anything else
    /// in the hash area is not written through here); left out, with [`Streamed::parity`]
    /// `None`, when it needs more than [`STREAM_PARITY_BUDGET`] bytes.
    pub fn parity(mut self, g: &FecGeometry) -> Result<Self> {
        if g.block_size != u64::from(self.params.data_block_size())
            || g.data_blocks != self.params.data_blocks()
            || g.hash_blocks != self.geometry.tree_blocks()
        {
            return Err(Error::param(
                "fec",
                "the parity's geometry is not that of this data and tree alone",
            ));
        }
        if g.parity_size() <= STREAM_PARITY_BUDGET {
            self.parity = Some(Accumulator::new(g));
        }
        Ok(self)
    }

    /// Use `threads` (at most two split a write; default: every core).
    pub fn threads(mut self, threads: Threads) -> Self {
        self.threads = threads.count();
        self
    }

    /// Whether the parity is still being computed on the way.
    pub fn has_parity(&self) -> bool {
        self.parity.is_some()
    }

    /// `bytes` were written at byte `offset` of the data device. Bytes past the data are
    /// ignored; blocks written only in part are read back by [`StreamTree::finish`].
    pub fn write(&mut self, offset: u64, bytes: &[u8]) {
        let Some((first, last)) = self.whole_blocks(offset, bytes.len() as u64) else {
            return;
        };
        if first >= last {
            return;
        }
        let bs = u64::from(self.params.data_block_size());
        let from = (first * bs - offset) as usize;
        let to = (last * bs - offset) as usize;
        self.mark(first, last);
        self.hash_blocks(first, &bytes[from..to]);
    }

    /// `len` bytes of zeros were written at byte `offset` (without their bytes passing
    /// through here).
    pub fn zeros(&mut self, offset: u64, len: u64) {
        let Some((first, last)) = self.whole_blocks(offset, len) else {
            return;
        };
        if first >= last {
            return;
        }
        self.mark(first, last);
        // Zero blocks add nothing to the parity.
        if self.geometry.levels().is_empty() {
            self.single = Some(self.zero_digest);
            return;
        }
        let ds = self.geometry.digest_size();
        let z = self.zero_digest;
        for b in first..last {
            let at = self.leaf_at(b);
            self.tree[at..at + ds].copy_from_slice(z.as_bytes());
        }
    }

    /// Read back what was not seen whole from `data`, and finish the tree and the parity.
    /// Stops with [`Error::Cancelled`] between reads when `opts.progress` asks.
    pub fn finish<D: ReadAt + ?Sized>(
        mut self,
        data: &D,
        opts: &BuildOptions<'_>,
    ) -> Result<Streamed> {
        crate::tree::check_data_size(&self.params, data)?;
        let bs = u64::from(self.params.data_block_size());
        let n = self.params.data_blocks();
        let mut read_back = 0u64;
        if self.parity.is_some()
            && self.seen.iter().all(|&w| w == 0)
            && !self.geometry.levels().is_empty()
        {
            read_back = self.read_whole(data, opts)?;
        }
        let per_read = (READ_BACK_BYTES as u64 / bs).max(1);
        // The runs to read, from a copy of what was seen (the hashing marks blocks).
        let seen = self.seen.clone();
        let is_seen = |b: u64| seen[(b / 64) as usize] >> (b % 64) & 1 == 1;
        let runs = std::iter::successors(Some((0u64, 0u64)), |&(_, end)| {
            let mut b = end;
            while b < n && is_seen(b) {
                b += 1;
            }
            if b >= n {
                return None;
            }
            let mut e = b + 1;
            while e < n && e - b < per_read && !is_seen(e) {
                e += 1;
            }
            Some((b, e))
        })
        .skip(1);
        let mut buf = Vec::new();
        for (b, e) in runs {
            if opts.progress.is_some_and(|p| p.cancelled()) {
                return Err(Error::Cancelled);
            }
            buf.resize(((e - b) * bs) as usize, 0);
            // Both halves at once: on a device two reads in flight, in the page cache two
            // copies.
            let half = (((e - b) / 2) * bs) as usize;
            let (x, y) = buf.split_at_mut(half);
            let read = |part: &mut [u8], off: u64| {
                data.read_exact_at(part, off)
                    .map_err(|e| Error::io(format!("reading data device byte {off}"), e))
            };
            let off = b * bs;
            if self.threads >= 2 && !x.is_empty() {
                let (ra, rb) = std::thread::scope(|scope| {
                    let other = scope.spawn(|| read(y, off + half as u64));
                    (read(x, off), other.join())
                });
                ra?;
                rb.map_err(|_| Error::io("reading", std::io::Error::other("a thread panicked")))??;
            } else {
                read(&mut buf, off)?;
            }
            read_back += buf.len() as u64;
            self.write(off, &buf);
            if let Some(p) = opts.progress {
                p.progress(read_back, n * bs);
            }
        }
        let tree = match self.single {
            _ if !self.geometry.levels().is_empty() => HashTree::from_leaves(
                &self.params,
                self.geometry.clone(),
                std::mem::take(&mut self.tree),
                &self.hasher,
                opts,
            )?,
            Some(d) => HashTree::single(&self.params, self.geometry.clone(), d),
            None => return Err(Error::param("data", "block 0 was never hashed")),
        };
        let parity = self
            .parity
            .take()
            .map(|acc| Self::add_hash_area(acc, &tree));
        Ok(Streamed {
            tree,
            parity,
            read_back,
        })
    }

    /// Nothing seen yet: read the whole device once, hashing each block into the leaves
    /// and adding it to the parity while it is in the core's cache, the rounds split
    /// between two threads (each adds to planes nobody else writes).
    ///
    /// The parity is what costs here. Each block is added to its round's planes, and a
    /// device's planes (a 128th of it with two roots) do not stay in a core's cache: added
    /// a block at a time in the device's order, every block would read and write its
    /// round's planes from memory, four times its own bytes with two roots (that was 1.5
    /// times the tree's time; the multiply-adds themselves are a fraction of it). So a
    /// thread goes through its rounds in bands of [`READ_RUN_BYTES`] blocks: for each band
    /// it reads, at [`TILE_POSITIONS`] consecutive codeword positions at a time (a round's
    /// blocks lie a round count apart on the device), the band's run of blocks, and
    /// then, round by round, hashes the round's blocks of the tile and adds them to its
    /// syndromes in one pass while they are in the L1 cache (the round's planes loaded and
    /// stored once for all of them; see [`Syndromes`]). The band's planes stay in the cache
    /// while all positions pass, and become its parity when the last has. The disk is read
    /// in runs of [`READ_RUN_BYTES`], each asked for a band ahead ([`ReadAt::will_need`])
    /// so that a cold device is read while the last band is computed. Memory: the buffers
    /// of [`TILE_POSITIONS`] runs per thread.
    ///
    /// Runs only where two threads are allowed and there are two rounds to split; returns
    /// the bytes read (0 when it did not run: the caller's read-back then reads
    /// everything). The hash area counts as zeros here; its share is added by
    /// [`StreamTree::add_hash_area`].
    fn read_whole<D: ReadAt + ?Sized>(&mut self, data: &D, opts: &BuildOptions<'_>) -> Result<u64> {
        let Some(acc) = self.parity.as_mut() else {
            return Ok(0);
        };
        let n = self.params.data_blocks();
        let rounds = acc.g.rounds;
        if self.threads < 2
            || self.geometry.levels().is_empty()
            || n < 2 * SPLIT_MIN_BLOCKS as u64
            || rounds < 2
        {
            return Ok(0);
        }
        let bs = self.params.data_block_size() as usize;
        let total = n * bs as u64;
        let mid = rounds / 2;
        // Codeword positions that hold data blocks (the rest are the hash area, added
        // later, or padding).
        let positions = n.div_ceil(rounds) as usize;
        let (hasher, geometry) = (&self.hasher, &self.geometry);
        // Each thread's leaves, one run per position: blocks `i * rounds + (0..mid)` for
        // the first thread, `i * rounds + (mid..rounds)` for the second, cut at the data's
        // end.
        let mut leaves: [Vec<&mut [u8]>; 2] = [Vec::new(), Vec::new()];
        {
            let start = leaf_at(geometry, 0);
            let mut rest = &mut self.tree[start..];
            let mut at = start;
            for i in 0..positions as u64 {
                for (h, end) in [(0, i * rounds + mid), (1, (i + 1) * rounds)] {
                    let cut = leaf_at(geometry, end.min(n)) - at;
                    let (run, tail) = std::mem::take(&mut rest).split_at_mut(cut);
                    leaves[h].push(run);
                    rest = tail;
                    at += cut;
                }
            }
        }
        let [mut leaves_a, mut leaves_b] = leaves;
        let roots = acc.g.roots as usize;
        // The planes gather each round's syndromes while the positions pass (cheaper than
        // its parity: see `Syndromes`), turned into the parity once a band is through.
        let tiles = positions.div_ceil(TILE_POSITIONS);
        let syn = Syndromes::new(&Code::new(roots), TILE_POSITIONS, tiles);
        let kernel = acc.kernel;
        let run_bytes = self.run_bytes;
        // Nothing was added yet: the planes are laid out as one group, a round's planes
        // side by side, so that a round's share of a tile is one pass of adds.
        acc.one_group();
        // Each thread writes its planes' pages itself, a band at a time (below).
        acc.written = true;
        let (planes_a, planes_b) = acc.planes.split_at_mut(mid as usize * roots * bs);
        let done = AtomicU64::new(0);
        let failed = AtomicBool::new(false);
        // Rounds `from..to` of every position: hashed into `leaves` (one run per position,
        // from round `from`), added to `planes` (those rounds' planes, side by side);
        // `report`: this thread tells `opts.progress` (one thread does, so that the count
        // it sees only grows).
        let half = |planes: &mut [u8],
                    leaves: &mut [&mut [u8]],
                    from: u64,
                    to: u64,
                    report: bool|
         -> Result<()> {
            // Rounds read at each position at a time.
            let run_rounds = (run_bytes / bs).max(1);
            let ds = geometry.digest_size();
            // Each position's run a cache line further than a power of two from the last:
            // at 256 KiB apart the 8 blocks a multiply-add reads side by side fell in the
            // same cache sets and evicted each other (half of its time went to waiting
            // for them). The first starts on a page boundary, the others 64 bytes or more
            // past one: see [`keel_io::page_aligned`].
            let stride = run_rounds * bs + 64;
            let mut whole = Vec::new();
            let buf = keel_io::page_aligned(&mut whole, TILE_POSITIONS * stride);
            let mut parity = vec![0u8; roots * bs];
            // Rounds `a..b` of every position will be read soon.
            let hint = |a: u64, b: u64| {
                for i in 0..positions as u64 {
                    let (s, e) = ((i * rounds + a).min(n), (i * rounds + b.min(to)).min(n));
                    if s < e {
                        data.will_need(s * bs as u64, (e - s) * bs as u64);
                    }
                }
            };
            hint(from, from + run_rounds as u64);
            let mut r0 = from;
            while r0 < to {
                let width = (run_rounds as u64).min(to - r0) as usize;
                let band = (r0 - from) as usize * roots * bs;
                planes[band..band + width * roots * bs].fill(0);
                hint(r0 + width as u64, r0 + 2 * width as u64);
                for q in 0..tiles {
                    let i0 = q * TILE_POSITIONS;
                    let inputs_here = syn.tile_len(q);
                    if failed.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    if opts.progress.is_some_and(|p| p.cancelled()) {
                        return Err(Error::Cancelled);
                    }
                    // Each position's run: blocks `i * rounds + r0..`, as many as are data.
                    let mut have = [0usize; TILE_POSITIONS];
                    for (t, have) in have.iter_mut().enumerate().take(inputs_here) {
                        let run = &mut buf[t * stride..][..width * bs];
                        let b = (i0 + t) as u64 * rounds + r0;
                        *have = n.saturating_sub(b).min(width as u64) as usize;
                        // Past the data: zeros, which add nothing.
                        run[*have * bs..].fill(0);
                        if *have == 0 {
                            continue;
                        }
                        let off = b * bs as u64;
                        data.read_exact_at(&mut run[..*have * bs], off)
                            .map_err(|e| Error::io(format!("reading data device byte {off}"), e))?;
                    }
                    for r in 0..width {
                        // The round's blocks, hashed into their leaves two at a time (two
                        // lanes of SHA-256 at once) and added to its syndromes while they
                        // are in the L1 cache: hashing a position's run of rounds first
                        // left the blocks in L2 for the adds, which then waited on them.
                        let block = |t: usize| (i0 + t) as u64 * rounds + r0 + r as u64;
                        let leaf = |t: usize| {
                            leaf_at(geometry, block(t))
                                - leaf_at(geometry, (i0 + t) as u64 * rounds + from)
                        };
                        let input = |t: usize| &buf[t * stride + r * bs..][..bs];
                        let mut held: Option<usize> = None;
                        for (t, &have) in have.iter().enumerate().take(inputs_here) {
                            if r >= have {
                                continue;
                            }
                            let Some(u) = held.take() else {
                                held = Some(t);
                                continue;
                            };
                            // u < t: their leaves are in two runs.
                            let (left, right) = leaves.split_at_mut(i0 + t);
                            let (lu, lt) = (leaf(u), leaf(t));
                            hasher.hash_pair(
                                input(u),
                                input(t),
                                &mut left[i0 + u][lu..lu + ds],
                                &mut right[0][lt..lt + ds],
                            );
                        }
                        if let Some(u) = held {
                            let lu = leaf(u);
                            hasher.hash_into(input(u), &mut leaves[i0 + u][lu..lu + ds]);
                        }
                        let inputs: [&[u8]; TILE_POSITIONS] = std::array::from_fn(input);
                        let round = (r0 - from) as usize + r;
                        // The shapes are fixed by construction: an input of `bs` bytes for
                        // each of the tile's positions, the round's planes side by side.
                        syn.add(
                            kernel,
                            q,
                            &inputs[..inputs_here],
                            bs,
                            &mut planes[round * roots * bs..][..roots * bs],
                        );
                    }
                    let read = have.iter().sum::<usize>() as u64 * bs as u64;
                    let now = done.fetch_add(read, Ordering::Relaxed) + read;
                    if let Some(p) = opts.progress.filter(|_| report) {
                        p.progress(now, total);
                    }
                }
                // Every position has passed: the band's syndromes become its parity.
                for r in 0..width {
                    let round = (r0 - from) as usize + r;
                    let at = &mut planes[round * roots * bs..][..roots * bs];
                    syn.parity(kernel, at, bs, &mut parity);
                    at.copy_from_slice(&parity);
                }
                r0 += width as u64;
            }
            Ok(())
        };
        let (a, b) = std::thread::scope(|scope| {
            let other = scope.spawn(|| {
                let r = half(planes_b, &mut leaves_b, mid, rounds, false);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                r
            });
            let a = half(planes_a, &mut leaves_a, 0, mid, true);
            if a.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            (a, other.join())
        });
        a?;
        b.map_err(|_| Error::io("reading", std::io::Error::other("a thread panicked")))??;
        self.seen.fill(u64::MAX);
        Ok(total)
    }

    /// The tree's blocks are the hash area: their share of the parity.
    fn add_hash_area(mut acc: Accumulator, tree: &HashTree) -> Parity {
        let first = acc.g.data_blocks;
        for share in acc.shares().iter_mut() {
            share.add(first, tree.as_bytes());
        }
        Parity {
            g: acc.g,
            split: acc.split,
            planes: acc.planes,
        }
    }

    /// The whole data blocks `first..last` a write of `len` bytes at `offset` covers; the
    /// blocks it covers in part are forgotten (read back at the end).
    fn whole_blocks(&mut self, offset: u64, len: u64) -> Option<(u64, u64)> {
        let bs = u64::from(self.params.data_block_size());
        let size = self.params.data_blocks() * bs;
        let end = offset.checked_add(len)?.min(size);
        if offset >= end {
            return None;
        }
        if !offset.is_multiple_of(bs) {
            self.forget(offset / bs);
        }
        if !end.is_multiple_of(bs) {
            self.forget(end / bs);
        }
        Some((offset.div_ceil(bs), end / bs))
    }

    fn is_seen(&self, b: u64) -> bool {
        self.seen[(b / 64) as usize] >> (b % 64) & 1 == 1
    }

    /// Block `b` was seen whole before and is now written in part: read it back later; a
    /// parity that already holds its old contents is lost.
    fn forget(&mut self, b: u64) {
        if self.is_seen(b) {
            self.seen[(b / 64) as usize] &= !(1 << (b % 64));
            self.parity = None;
        }
    }

    /// Blocks `first..last` are seen whole; one seen before loses the parity.
    fn mark(&mut self, first: u64, last: u64) {
        for b in first..last {
            let (w, bit) = ((b / 64) as usize, 1u64 << (b % 64));
            if self.seen[w] & bit != 0 {
                self.parity = None;
            }
            self.seen[w] |= bit;
        }
    }

    /// Byte offset in the tree of data block `b`'s leaf digest.
    fn leaf_at(&self, b: u64) -> usize {
        leaf_at(&self.geometry, b)
    }

    /// Hash whole blocks `first..` (`input`) into the leaves and add them to the parity:
    /// split in two (leaves by halves, parity by planes) when the write is large.
    fn hash_blocks(&mut self, first: u64, input: &[u8]) {
        let bs = self.params.data_block_size() as usize;
        let n = input.len() / bs;
        let no_levels = self.geometry.levels().is_empty();
        if no_levels {
            self.single = Some(self.hasher.hash(&input[..bs], self.geometry.digest_size()));
        }
        let mid = if no_levels {
            0
        } else if self.threads >= 2 && n >= SPLIT_MIN_BLOCKS {
            n / 2
        } else {
            n
        };
        let (base, cut) = match no_levels {
            true => (0, 0),
            false => (self.leaf_at(first), self.leaf_at(first + mid as u64)),
        };
        let (hasher, geometry) = (&self.hasher, &self.geometry);
        let (left, right) = self.tree.split_at_mut(cut);
        let left = &mut left[base..];
        let [mut share_a, mut share_b] = match &mut self.parity {
            Some(acc) => acc.shares().map(Some),
            None => [None, None],
        };
        let (head, tail) = input.split_at(mid * bs);
        if mid == n || no_levels {
            if !no_levels {
                hash_leaves(hasher, geometry, bs, first, head, left);
            }
            for s in [share_a.as_mut(), share_b.as_mut()].into_iter().flatten() {
                s.add(first, input);
            }
            return;
        }
        std::thread::scope(|scope| {
            scope.spawn(|| {
                hash_leaves(hasher, geometry, bs, first + mid as u64, tail, right);
                if let Some(s) = share_b.as_mut() {
                    s.add(first, input);
                }
            });
            hash_leaves(hasher, geometry, bs, first, head, left);
            if let Some(s) = share_a.as_mut() {
                s.add(first, input);
            }
        });
    }
}

/// Byte offset in the tree (as [`HashTree::as_bytes`] lays it out) of data block `b`'s
/// leaf digest.
fn leaf_at(geometry: &TreeGeometry, b: u64) -> usize {
    geometry.level_offset_in_tree(0)
        + (b >> geometry.per_block_bits()) as usize * geometry.hash_block_size() as usize
        + geometry.entry_offset(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
    use super::*;
    use crate::{fec_encode, format, FormatOptions};

    /// One read of a device too small for the real bands still meets every case of one:
    /// bands and tiles that end before the rounds do, positions past the data, rounds
    /// split unevenly, digests narrower than their slots.
    #[test]
    fn one_read_in_small_bands_gives_the_parity_of_the_device() {
        let seed = crate::io::seeded;
        for (case, (bs, blocks, roots, alg, run)) in [
            (4096u32, 3000u64, 2u8, crate::HashAlgorithm::Sha256, 3usize),
            (4096, 2777, 5, crate::HashAlgorithm::Sha1, 7),
            (1024, 9001, 2, crate::HashAlgorithm::Sha512, 16),
            (512, 4000, 24, crate::HashAlgorithm::Sha256, 2),
            (4096, 600, 3, crate::HashAlgorithm::Sha256, 64),
            (4096, 1001, 2, crate::HashAlgorithm::Sha256, 5),
        ]
        .into_iter()
        .enumerate()
        {
            let p = VerityParams::builder()
                .algorithm(alg)
                .data_block_size(bs)
                .hash_block_size(bs)
                .salt(seed(32, case as u64))
                .data_blocks(blocks)
                .build()
                .unwrap();
            let data = seed((blocks * u64::from(bs)) as usize, 7 + case as u64);
            let mut hash = Vec::new();
            let f = format(&p, &data[..], &mut hash, &FormatOptions::default()).unwrap();
            let g = FecGeometry::separate(&p, &f.geometry, roots, hash.len() as u64, 0).unwrap();
            let mut expect = Vec::new();
            fec_encode(&g, &data[..], &hash, &mut expect, &BuildOptions::default()).unwrap();
            let mut s = StreamTree::new(&p)
                .unwrap()
                .threads(Threads::exactly(2))
                .parity(&g)
                .unwrap();
            s.run_bytes = run * bs as usize;
            let out = s.finish(&data[..], &BuildOptions::default()).unwrap();
            assert_eq!(out.read_back, blocks * u64::from(bs), "case {case}");
            assert_eq!(
                out.tree.root_hash(),
                f.root_hash.as_slice(),
                "case {case}: root"
            );
            let mut got = Vec::new();
            out.parity.unwrap().write_to(&mut got).unwrap();
            assert!(got == expect, "case {case}: parity");
        }
    }
}
