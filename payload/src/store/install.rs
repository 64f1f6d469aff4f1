//! Installing from a block store: the leaves fetched and checked, each block found among
//! what the device has or fetched in coalesced ranges, every block checked before it counts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;

use keel_trust::Context;
use keel_verity::{BlockHasher, HashTree, ReadAt, RootDescriptor, WriteAt};

use super::{parse_index, Run, RunKind, StoreHeader, StoreIndex};
use crate::apply::{check_release_of, ApplyOptions};
use crate::codec::zstd::unframe;
use crate::error::{Error, Result};
use crate::format::{sha256, HEADER_SIZE, SIGNATURE_SIZE};

/// Stored bytes of runs not needed that a range may take in to join two needed ones, by
/// default: about one metadata run. On the corpus's EROFS pair a 4 KiB gap fetches 20.6 MB
/// in 1014 ranges, 16 KiB 24.7 MB in 468 (metadata blocks changed all over the image);
/// a link with a long round trip wants more (`gap`).
pub const DEFAULT_GAP: u64 = 4 << 10;
/// The most bytes one range request asks for (and the installer holds per range).
pub const MAX_RANGE: u64 = 4 << 20;
/// Ranges fetched ahead of the writes.
const RANGES_AHEAD: usize = 2;

/// A device's image the installer takes blocks from: the booted slot.
#[derive(Clone, Copy)]
pub struct Seed<'a> {
    /// The image's bytes (whole 4 KiB blocks are used; a tail is ignored).
    pub image: &'a dyn ReadAt,
    /// Its dm-verity tree, when it has one with the store's parameters (algorithm,
    /// salt, block sizes): its leaves say what each block holds without reading it. `None`
    /// (or another salt): the image is hashed once. Only a hint either way: every block
    /// taken is hashed and compared with the new leaf.
    pub tree: Option<&'a HashTree>,
}

impl std::fmt::Debug for Seed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seed")
            .field("tree", &self.tree.is_some())
            .finish_non_exhaustive()
    }
}

/// How to install from a store.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct StoreOptions<'a> {
    /// The keyring, the version and compatible checks, resume record, progress and
    /// cancel, checkpoint interval: as for a payload.
    pub apply: ApplyOptions<'a>,
    /// See [`DEFAULT_GAP`].
    pub gap: u64,
    /// See [`MAX_RANGE`].
    pub max_range: u64,
    /// The target's own tree before the install (the version it held), when it has one
    /// with the store's parameters: blocks it already holds are checked in place instead
    /// of written (a hint: each is read and hashed).
    pub target_tree: Option<&'a HashTree>,
    /// Also compute this FEC parity of the image and its tree from the blocks as they are
    /// written or checked in place ([`Installed::parity`]): no pass over the slot after.
    pub parity: Option<&'a keel_verity::FecGeometry>,
}

impl std::fmt::Debug for StoreOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("gap", &self.gap)
            .field("max_range", &self.max_range)
            .field("target_tree", &self.target_tree.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a> StoreOptions<'a> {
    /// Options from the payload options (keys, version check, ...).
    pub fn new(apply: ApplyOptions<'a>) -> Self {
        StoreOptions {
            apply,
            gap: DEFAULT_GAP,
            max_range: MAX_RANGE,
            target_tree: None,
            parity: None,
        }
    }

    /// Bytes of unneeded runs a range may take in.
    pub fn gap(mut self, bytes: u64) -> Self {
        self.gap = bytes;
        self
    }

    /// The most bytes per range request (at least one run is always asked for whole).
    pub fn max_range(mut self, bytes: u64) -> Self {
        self.max_range = bytes;
        self
    }

    /// The target's tree before the install.
    pub fn target_tree(mut self, tree: &'a HashTree) -> Self {
        self.target_tree = Some(tree);
        self
    }

    /// The FEC parity to compute on the way ([`StoreOptions::parity`]).
    pub fn parity(mut self, g: &'a keel_verity::FecGeometry) -> Self {
        self.parity = Some(g);
        self
    }
}

/// Where each block comes from, and what will be fetched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plan {
    /// Blocks the target already holds (the hint of its tree, or the resume record).
    pub in_place: u64,
    /// Zero blocks.
    pub zero: u64,
    /// Blocks copied from a seed, found by their leaf.
    pub from_seed: u64,
    /// Blocks copied from a block written earlier in the install.
    pub duplicate: u64,
    /// Blocks built from runs of a content-cut store that a seed holds, shifted.
    pub from_seed_runs: u64,
    /// Blocks built from fetched runs (a run is fetched whole for the blocks only the store
    /// has, and gives all its blocks not found otherwise).
    pub fetched_blocks: u64,
    /// The ranges to fetch (file offset, length), in order.
    pub ranges: Vec<(u64, u64)>,
    /// Their bytes: what the install will fetch when no block it counts on has changed.
    pub fetch_bytes: u64,
    /// Bytes already fetched to make the plan (header, index, leaves).
    pub fetched_so_far: u64,
    /// Requests made so far.
    pub requests_so_far: u64,
    /// Bytes of seeds read and hashed to index them (0 where each seed's tree served and
    /// the store's runs are whole blocks).
    pub seed_bytes_hashed: u64,
    /// Where each run's bytes come from, for the runs needed.
    runs: Vec<Option<RunSource>>,
    /// The resume record's first block not known written.
    resume_from: u64,
}

/// Where a needed run's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunSource {
    Fetch,
    /// A seed's bytes at this offset (a content-cut run whose hint it has).
    Seed(usize, u64),
}

/// What an install did.
#[derive(Debug)]
#[non_exhaustive]
pub struct Installed {
    /// The image's tree (checked against the signed root): what to write to the hash
    /// device.
    pub tree: HashTree,
    /// Where the blocks came from, as done (blocks whose local copy did not match were
    /// fetched instead, and counted there).
    pub plan: Plan,
    /// Bytes fetched from the store, with the header, index and leaves.
    pub fetched: u64,
    /// Range requests made to the store.
    pub requests: u64,
    /// Blocks written to the target.
    pub written_blocks: u64,
    /// The parity asked for ([`StoreOptions::parity`]), of the blocks as they were
    /// written or found in place; `None` if none was asked for or a block was seen twice.
    pub parity: Option<keel_verity::Parity>,
}

/// A store opened: its signed index verified and parsed, its leaves fetched and checked
/// against the signed dm-verity root.
pub struct StoreSession<'s, S: ReadAt + ?Sized> {
    store: &'s S,
    index: StoreIndex,
    tree: HashTree,
    id: [u8; 32],
    fetched: u64,
    requests: u64,
}

impl<S: ReadAt + ?Sized> std::fmt::Debug for StoreSession<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSession")
            .field("version", &self.index.version)
            .field("image", &self.index.image.size)
            .field("runs", &self.index.runs.len())
            .finish_non_exhaustive()
    }
}

/// A block's key in the lookup maps: the first 8 bytes of its digest (a match is only a
/// candidate: the block is hashed whole before it is used).
fn key(d: &[u8]) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&d[..8]);
    u64::from_le_bytes(k)
}

impl<'s, S: ReadAt + ?Sized> StoreSession<'s, S> {
    /// Open the store: header, index (its signature checked before it is parsed, then its
    /// compatible string and version against `opts`), leaves (checked against the signed
    /// root). Three range requests.
    pub fn open(store: &'s S, opts: &StoreOptions<'_>) -> Result<Self> {
        let read = |buf: &mut [u8], at: u64, what: &str| {
            store
                .read_exact_at(buf, at)
                .map_err(|e| Error::io(format!("reading the store's {what}"), e))
        };
        let mut h = [0u8; HEADER_SIZE];
        read(&mut h, 0, "header")?;
        let header = StoreHeader::parse(&h)?;
        let key_id = keel_trust::KeyId(header.key_id);
        // An untrusted signer is refused before its index (up to 64 MiB) is fetched.
        opts.apply.keyring.trusted(&key_id, opts.apply.clock())?;
        let mut signed = vec![0u8; HEADER_SIZE + header.index_len as usize + SIGNATURE_SIZE];
        signed[..HEADER_SIZE].copy_from_slice(&h);
        read(&mut signed[HEADER_SIZE..], HEADER_SIZE as u64, "index")?;
        let mut sig = [0u8; SIGNATURE_SIZE];
        sig.copy_from_slice(&signed[signed.len() - SIGNATURE_SIZE..]);
        signed.truncate(signed.len() - SIGNATURE_SIZE);
        opts.apply
            .keyring
            .verify(&key_id, Context::Payload, &signed, &sig, opts.apply.clock())?;
        let id = sha256(&signed);
        let index = parse_index(&signed[HEADER_SIZE..], &header)?;
        check_release_of(&index.compatible, &index.version, &opts.apply)?;
        let (at, stored) = index.leaves_at;
        let mut frame = vec![0u8; stored as usize];
        read(&mut frame, at, "leaf level")?;
        let leaves =
            unframe(&frame, &[], index.leaves_len, "the leaf level").map_err(|reason| {
                Error::StoreField {
                    field: "leaf level",
                    offset: at,
                    reason,
                }
            })?;
        let d = RootDescriptor::parse(&index.verity)?;
        let tree = HashTree::from_leaf_level(d.params(), &leaves, d.root_hash())?;
        let fetched =
            (HEADER_SIZE + signed.len() - HEADER_SIZE + SIGNATURE_SIZE) as u64 + u64::from(stored);
        Ok(StoreSession {
            store,
            index,
            tree,
            id,
            fetched,
            requests: 3,
        })
    }

    /// The signed index.
    pub fn index(&self) -> &StoreIndex {
        &self.index
    }

    /// The image's tree, checked against the signed root.
    pub fn tree(&self) -> &HashTree {
        &self.tree
    }

    /// The store's id: the sha256 of its signed header and index.
    pub fn id(&self) -> [u8; 32] {
        self.id
    }

    /// Where each block will come from and which ranges will be fetched. Seeds without a
    /// usable tree are read and hashed here, once; so is every seed for a store cut by
    /// content when some run is still needed (its runs are looked up among the seed's).
    pub fn plan(&self, seeds: &[Seed<'_>], opts: &StoreOptions<'_>) -> Result<Plan> {
        let resume_from = self.resume_point(opts);
        let maps = self.maps(seeds, resume_from, opts)?;
        Ok(self.plan_with(&maps, resume_from, opts))
    }

    fn plan_with(&self, maps: &Maps, resume_from: u64, opts: &StoreOptions<'_>) -> Plan {
        let bs = u64::from(self.index.block_size);
        let mut plan = Plan {
            seed_bytes_hashed: maps.hashed,
            runs: vec![None; self.index.runs.len()],
            resume_from,
            fetched_so_far: self.fetched,
            requests_so_far: self.requests,
            ..Plan::default()
        };
        let runs = &self.index.runs;
        // Each block counted once: locally, or by the runs that give it.
        let mut by_runs: Vec<u64> = Vec::new();
        for (r, run) in runs.iter().enumerate() {
            let blocks = blocks_of(run, bs);
            let mut need = false;
            for b in blocks.clone() {
                let first = run.start <= b * bs;
                match self.local(b, resume_from, maps, opts) {
                    Some(kind) if first => match kind {
                        Local::InPlace => plan.in_place += 1,
                        Local::Zero => plan.zero += 1,
                        Local::Seed(..) => plan.from_seed += 1,
                        Local::Earlier(_) => plan.duplicate += 1,
                    },
                    Some(_) => {}
                    None => need = true,
                }
            }
            if need {
                plan.runs[r] = Some(match maps.runs.get(&run.hint) {
                    Some(&(k, at)) if run.hint != 0 => RunSource::Seed(k, at),
                    _ => RunSource::Fetch,
                });
                by_runs.push(r as u64);
            }
        }
        // Blocks from runs: fetched if any of their runs is fetched.
        let mut last = None;
        for &r in &by_runs {
            let run = &runs[r as usize];
            for b in blocks_of(run, bs) {
                if last == Some(b) || self.local(b, resume_from, maps, opts).is_some() {
                    continue;
                }
                last = Some(b);
                let fetched = runs_of(runs, b, bs).any(|q| plan.runs[q] == Some(RunSource::Fetch));
                if fetched {
                    plan.fetched_blocks += 1;
                } else {
                    plan.from_seed_runs += 1;
                }
            }
        }
        plan.ranges = ranges(runs, |r| plan.runs[r] == Some(RunSource::Fetch), opts);
        plan.fetch_bytes = plan.ranges.iter().map(|r| r.1).sum();
        plan
    }

    /// Where block `b` comes from without the store's runs, if anywhere: the target's own
    /// (by its tree's hint or the resume record), zeros, a seed, an earlier block.
    fn local(
        &self,
        b: u64,
        resume_from: u64,
        maps: &Maps,
        opts: &StoreOptions<'_>,
    ) -> Option<Local> {
        if self.in_place(b, resume_from, opts) {
            return Some(Local::InPlace);
        }
        let d = self.tree.leaf(b)?;
        if d == maps.zero.as_bytes() {
            return Some(Local::Zero);
        }
        let k = key(d);
        for (i, m) in maps.seeds.iter().enumerate() {
            if let Some(&at) = m.get(&k) {
                return Some(Local::Seed(i, u64::from(at)));
            }
        }
        match maps.first.get(&k) {
            Some(&j) if u64::from(j) < b => Some(Local::Earlier(u64::from(j))),
            _ => None,
        }
    }

    /// Whether block `b` is taken to be on the target already (checked when installing).
    fn in_place(&self, b: u64, resume_from: u64, opts: &StoreOptions<'_>) -> bool {
        if b < resume_from {
            return true;
        }
        opts.target_tree
            .filter(|t| t.params() == self.tree.params())
            .and_then(|t| t.leaf(b))
            .is_some_and(|d| Some(d) == self.tree.leaf(b))
    }

    /// The lookup maps: each seed's blocks by digest (from its tree, or hashed), the new
    /// image's first block of each digest, and for a store cut by content, the seeds' own
    /// runs by hint when some run is still needed.
    fn maps(&self, seeds: &[Seed<'_>], resume_from: u64, opts: &StoreOptions<'_>) -> Result<Maps> {
        let params = self.tree.params();
        let hasher = BlockHasher::new(params);
        let bs = params.data_block_size() as usize;
        let ds = hasher.digest_size();
        let cancelled = || opts.apply.progress.is_some_and(|p| p.cancelled());
        let mut maps = Maps {
            hashed: 0,
            seeds: Vec::with_capacity(seeds.len()),
            first: HashMap::new(),
            runs: HashMap::new(),
            zero: hasher.hash(&vec![0u8; bs]),
        };
        for (k, seed) in seeds.iter().enumerate() {
            let mut m: HashMap<u64, u32> = HashMap::new();
            let tree = seed.tree.filter(|t| {
                let p = t.params();
                p.salt() == params.salt()
                    && p.algorithm() == params.algorithm()
                    && p.hash_type() == params.hash_type()
                    && p.data_block_size() == params.data_block_size()
            });
            match tree {
                Some(t) => {
                    for b in 0..t.params().data_blocks() {
                        if let Some(d) = t.leaf(b) {
                            m.entry(key(d)).or_insert(b as u32);
                        }
                    }
                }
                None => {
                    let size = seed
                        .image
                        .size()
                        .map_err(|e| Error::io(format!("the size of seed {k}"), e))?;
                    let blocks = size / bs as u64;
                    let chunk = 1024usize;
                    let mut buf = vec![0u8; chunk * bs];
                    let mut digests = vec![0u8; chunk * ds];
                    let mut b = 0u64;
                    while b < blocks {
                        if cancelled() {
                            return Err(Error::Cancelled);
                        }
                        let n = (blocks - b).min(chunk as u64) as usize;
                        seed.image
                            .read_exact_at(&mut buf[..n * bs], b * bs as u64)
                            .map_err(|e| Error::io(format!("reading seed block {b}"), e))?;
                        hasher.hash_many(&buf[..n * bs], &mut digests[..n * ds]);
                        for (i, d) in digests[..n * ds].chunks_exact(ds).enumerate() {
                            m.entry(key(d)).or_insert((b + i as u64) as u32);
                        }
                        b += n as u64;
                        maps.hashed += (n * bs) as u64;
                    }
                }
            }
            maps.seeds.push(m);
        }
        for b in 0..params.data_blocks() {
            if let Some(d) = self.tree.leaf(b) {
                maps.first.entry(key(d)).or_insert(b as u32);
            }
        }
        // Content-cut runs are looked up among the seeds' own chunks, which costs a read
        // of each seed: only when the blocks alone leave runs to fetch.
        if let Some(cdc) = self.index.chunking {
            let plan = self.plan_with(&maps, resume_from, opts);
            if plan.runs.iter().any(Option::is_some) {
                let wanted: std::collections::HashSet<u64> = self
                    .index
                    .runs
                    .iter()
                    .zip(&plan.runs)
                    .filter(|(r, n)| n.is_some() && r.hint != 0)
                    .map(|(r, _)| r.hint)
                    .collect();
                for (k, seed) in seeds.iter().enumerate() {
                    let size = seed
                        .image
                        .size()
                        .map_err(|e| Error::io(format!("the size of seed {k}"), e))?;
                    let mut hashed = 0u64;
                    cdc.chunks(seed.image, size, |at, bytes| {
                        if cancelled() {
                            return Err(Error::Cancelled);
                        }
                        hashed += bytes.len() as u64;
                        let h = super::cdc::hint(bytes);
                        if wanted.contains(&h) {
                            maps.runs.entry(h).or_insert((k, at));
                        }
                        Ok(())
                    })?;
                    maps.hashed += hashed;
                }
            }
        }
        Ok(maps)
    }

    /// The first block the resume record does not vouch for (0 without one).
    fn resume_point(&self, opts: &StoreOptions<'_>) -> u64 {
        let Some(path) = opts.apply.state else {
            return 0;
        };
        match read_record(path) {
            Some((id, size, next)) if id == self.id && size == self.index.image.size => {
                next.min(self.tree.params().data_blocks())
            }
            _ => 0,
        }
    }

    /// Install the image onto `target` (at least the image's size), taking blocks from
    /// `seeds`, fetching the rest. Checkpoints (target synced, then the record written)
    /// every `checkpoint_bytes` of the image when a state path is given; a later call
    /// resumes there, checking what the record vouches for.
    pub fn install<T: ReadAt + WriteAt + ?Sized>(
        &self,
        seeds: &[Seed<'_>],
        target: &mut T,
        opts: &StoreOptions<'_>,
    ) -> Result<Installed> {
        let size = self.index.image.size;
        let have = target.size().map_err(|e| Error::io("target size", e))?;
        if have < size {
            return Err(Error::TargetTooSmall { have, need: size });
        }
        let resume_from = self.resume_point(opts);
        let maps = self.maps(seeds, resume_from, opts)?;
        let mut plan = self.plan_with(&maps, resume_from, opts);
        let hasher = BlockHasher::new(self.tree.params());
        let bs = u64::from(self.index.block_size);
        let mut job = Job {
            session: self,
            seeds,
            maps: &maps,
            hasher: &hasher,
            opts,
            resume_from,
            out: Out::default(),
            asm: vec![0u8; bs as usize],
            asm_block: None,
            asm_ok: false,
            asm_fetched: false,
            scratch: vec![0u8; bs as usize],
            failed: Vec::new(),
            fetched: 0,
            requests: 0,
            done: Plan::default(),
            stream: match opts.parity {
                Some(g) => Some(keel_verity::StreamTree::new(self.tree.params())?.parity(g)?),
                None => None,
            },
        };
        let checkpoint = opts.apply.checkpoint_bytes.unwrap_or(64 << 20).max(bs);
        let mut since = 0u64;
        let runs = &self.index.runs;
        std::thread::scope(|s| -> Result<()> {
            let (tx, rx) = mpsc::sync_channel::<Result<(u64, Vec<u8>)>>(RANGES_AHEAD);
            let store = self.store;
            let ranges = plan.ranges.clone();
            s.spawn(move || {
                for (at, len) in ranges {
                    let r = fetch_range(store, at, len);
                    let stop = r.is_err();
                    if tx.send(r).is_err() || stop {
                        return;
                    }
                }
            });
            let mut range: Option<(u64, Vec<u8>)> = None;
            for (r, run) in runs.iter().enumerate() {
                if opts.apply.progress.is_some_and(|p| p.cancelled()) {
                    return Err(Error::Cancelled);
                }
                let data = match plan.runs[r] {
                    None => None,
                    Some(RunSource::Fetch) => {
                        let next = || {
                            rx.recv().map_err(|_| {
                                Error::Internal("the store's ranges ended before its runs".into())
                            })?
                        };
                        Some((from_ranges(run, &mut range, next, &mut job)?, true))
                    }
                    Some(RunSource::Seed(k, at)) => {
                        let mut b = vec![0u8; run.len as usize];
                        // A seed that cannot give the bytes any more: its blocks fail and
                        // are fetched.
                        match seeds[k].image.read_exact_at(&mut b, at) {
                            Ok(()) => Some((b, false)),
                            Err(_) => Some((Vec::new(), false)),
                        }
                    }
                };
                job.run(run, data.as_ref().map(|(d, f)| (&d[..], *f)), target, None)?;
                since += u64::from(run.len);
                let end = run.start + u64::from(run.len);
                if since >= checkpoint && job.failed.is_empty() {
                    since = 0;
                    job.checkpoint(target, end / bs)?;
                }
                if let Some(p) = opts.apply.progress {
                    p.progress(end, size);
                }
            }
            Ok(())
        })?;
        job.out.flush(target)?;
        // Blocks whose local bytes did not match their leaves: built again from fetched
        // runs alone.
        let failed = std::mem::take(&mut job.failed);
        job.asm_block = None;
        if !failed.is_empty() {
            let only: std::collections::HashSet<u64> = failed.iter().copied().collect();
            let mut wanted = vec![false; runs.len()];
            for &b in &failed {
                for q in runs_of(runs, b, bs) {
                    wanted[q] = true;
                }
            }
            let rs = ranges(runs, |r| wanted[r], opts);
            let mut next = rs.iter();
            let mut cur: Option<(u64, Vec<u8>)> = None;
            for run in runs
                .iter()
                .enumerate()
                .filter(|(r, _)| wanted[*r])
                .map(|(_, run)| run)
            {
                let fetch = || match next.next() {
                    Some(&(at, len)) => fetch_range(self.store, at, len),
                    None => Err(Error::Internal(
                        "the store's ranges ended before its runs".into(),
                    )),
                };
                let data = from_ranges(run, &mut cur, fetch, &mut job)?;
                job.run(run, Some((&data, true)), target, Some(&only))?;
            }
            job.out.flush(target)?;
            if let Some(&b) = job.failed.first() {
                return Err(Error::StoreField {
                    field: "run",
                    offset: runs_of(runs, b, bs).next().map_or(0, |r| runs[r].offset),
                    reason: format!(
                        "block {b} built from the store's runs does not match its dm-verity leaf"
                    ),
                });
            }
        }
        target
            .sync()
            .map_err(|e| Error::io("syncing the target", e))?;
        if let Some(path) = opts.apply.state {
            // Only this store's own record goes.
            if read_record(path).is_some_and(|(id, ..)| id == self.id) {
                let _ = std::fs::remove_file(path);
            }
        }
        let written = job.out.written;
        // Every block was fed: nothing is read back; the tree it gives is the signed one.
        let parity = match job.stream.take() {
            Some(st) => {
                let streamed = st.finish(&*target, &keel_verity::BuildOptions::default())?;
                if streamed.tree.root_hash() != self.tree.root_hash() {
                    return Err(Error::TargetMismatch(crate::error::TargetCheck::VerityRoot));
                }
                streamed.parity
            }
            None => None,
        };
        plan.in_place = job.done.in_place;
        plan.zero = job.done.zero;
        plan.from_seed = job.done.from_seed;
        plan.duplicate = job.done.duplicate;
        plan.from_seed_runs = job.done.from_seed_runs;
        plan.fetched_blocks = job.done.fetched_blocks;
        Ok(Installed {
            tree: self.tree.clone(),
            plan,
            fetched: self.fetched + job.fetched,
            requests: self.requests + job.requests,
            written_blocks: written / bs,
            parity,
        })
    }
}

/// The blocks run `run` touches.
fn blocks_of(run: &Run, bs: u64) -> std::ops::Range<u64> {
    run.start / bs..(run.start + u64::from(run.len)).div_ceil(bs)
}

/// The runs that hold bytes of block `b` (runs are in image order).
fn runs_of(runs: &[Run], b: u64, bs: u64) -> impl Iterator<Item = usize> + '_ {
    let (lo, hi) = (b * bs, (b + 1) * bs);
    let first = runs.partition_point(|r| r.start + u64::from(r.len) <= lo);
    (first..runs.len()).take_while(move |&r| runs[r].start < hi)
}

/// Where a block comes from without the store's runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Local {
    InPlace,
    Zero,
    Seed(usize, u64),
    Earlier(u64),
}

struct Maps {
    hashed: u64,
    seeds: Vec<HashMap<u64, u32>>,
    first: HashMap<u64, u32>,
    /// Content-cut runs a seed holds: hint to (seed, byte offset).
    runs: HashMap<u64, (usize, u64)>,
    zero: keel_verity::Digest64,
}

/// Writes gathered into runs of contiguous blocks (or of zeros).
#[derive(Default)]
struct Out {
    at: u64,
    buf: Vec<u8>,
    zeros: u64,
    written: u64,
}

impl Out {
    const FLUSH: usize = 1 << 20;

    fn end(&self) -> u64 {
        self.at + self.buf.len() as u64 + self.zeros
    }

    fn block<T: WriteAt + ?Sized>(&mut self, t: &mut T, at: u64, bytes: &[u8]) -> Result<()> {
        if self.zeros > 0 || at != self.end() || self.buf.len() >= Self::FLUSH {
            self.flush(t)?;
            self.at = at;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn zero<T: WriteAt + ?Sized>(&mut self, t: &mut T, at: u64, len: u64) -> Result<()> {
        if !self.buf.is_empty() || at != self.end() {
            self.flush(t)?;
            self.at = at;
        }
        self.zeros += len;
        Ok(())
    }

    fn flush<T: WriteAt + ?Sized>(&mut self, t: &mut T) -> Result<()> {
        if !self.buf.is_empty() {
            t.write_all_at(&self.buf, self.at)
                .map_err(|e| Error::io(format!("writing target bytes at {}", self.at), e))?;
            self.written += self.buf.len() as u64;
        }
        if self.zeros > 0 {
            t.write_zeros(self.at, self.zeros)
                .map_err(|e| Error::io(format!("writing zeros at {}", self.at), e))?;
            self.written += self.zeros;
        }
        self.at = self.end();
        self.buf.clear();
        self.zeros = 0;
        Ok(())
    }
}

struct Job<'j, 's, S: ReadAt + ?Sized> {
    session: &'j StoreSession<'s, S>,
    seeds: &'j [Seed<'j>],
    maps: &'j Maps,
    hasher: &'j BlockHasher,
    opts: &'j StoreOptions<'j>,
    resume_from: u64,
    out: Out,
    /// The block being built from runs, and whether every byte came and whether any came
    /// from a fetched run.
    asm: Vec<u8>,
    asm_block: Option<u64>,
    asm_ok: bool,
    asm_fetched: bool,
    /// A block read from where it is found locally.
    scratch: Vec<u8>,
    /// Blocks whose bytes did not match their leaf, to build from fetched runs.
    failed: Vec<u64>,
    fetched: u64,
    requests: u64,
    done: Plan,
    /// The parity's accumulator, fed every block as it is written or checked in place.
    stream: Option<keel_verity::StreamTree>,
}

impl<'j, S: ReadAt + ?Sized> Job<'j, '_, S> {
    /// The blocks run `run` touches: a block found locally when the run holds its first
    /// byte; else its bytes from the run's `data` (and whether they were fetched), the
    /// block checked and written once whole. With `only`, just those blocks, from runs.
    fn run<T: ReadAt + WriteAt + ?Sized>(
        &mut self,
        run: &Run,
        data: Option<(&[u8], bool)>,
        target: &mut T,
        only: Option<&std::collections::HashSet<u64>>,
    ) -> Result<()> {
        let s = self.session;
        let bs = u64::from(s.index.block_size);
        let end = run.start + u64::from(run.len);
        for b in blocks_of(run, bs) {
            let lo = b * bs;
            if let Some(only) = only {
                if !only.contains(&b) {
                    continue;
                }
            } else if let Some(kind) = s.local(b, self.resume_from, self.maps, self.opts) {
                if run.start <= lo {
                    self.local(b, kind, target)?;
                }
                continue;
            }
            if self.asm_block != Some(b) {
                self.asm_block = Some(b);
                self.asm_ok = true;
                self.asm_fetched = false;
            }
            let (from, to) = (lo.max(run.start), (lo + bs).min(end));
            match data {
                Some((_, fetched)) if run.kind == RunKind::Zero => {
                    self.asm[(from - lo) as usize..(to - lo) as usize].fill(0);
                    self.asm_fetched |= fetched;
                }
                Some((d, fetched)) if d.len() == run.len as usize => {
                    let src = &d[(from - run.start) as usize..(to - run.start) as usize];
                    self.asm[(from - lo) as usize..(to - lo) as usize].copy_from_slice(src);
                    self.asm_fetched |= fetched;
                }
                _ => self.asm_ok = false,
            }
            if to == lo + bs {
                self.asm_block = None;
                let leaf = s.tree.leaf(b).unwrap_or_default();
                if self.asm_ok && self.hasher.hash(&self.asm).as_bytes() == leaf {
                    let asm = std::mem::take(&mut self.asm);
                    self.out.block(target, lo, &asm)?;
                    if let Some(st) = &mut self.stream {
                        st.write(lo, &asm);
                    }
                    self.asm = asm;
                    if self.asm_fetched {
                        self.done.fetched_blocks += 1;
                    } else {
                        self.done.from_seed_runs += 1;
                    }
                } else {
                    self.failed.push(b);
                }
            }
        }
        Ok(())
    }

    /// Block `b` from where it is found locally, checked against its leaf; a block that
    /// does not check is left for the runs.
    fn local<T: ReadAt + WriteAt + ?Sized>(
        &mut self,
        b: u64,
        kind: Local,
        target: &mut T,
    ) -> Result<()> {
        let s = self.session;
        let bs = u64::from(s.index.block_size);
        let leaf = s.tree.leaf(b).unwrap_or_default();
        let mut block = std::mem::take(&mut self.scratch);
        let mut kind = kind;
        if kind == Local::InPlace {
            self.out.flush(target)?;
            let ok = target.read_exact_at(&mut block, b * bs).is_ok()
                && self.hasher.hash(&block).as_bytes() == leaf;
            if ok {
                self.done.in_place += 1;
                if let Some(st) = &mut self.stream {
                    st.write(b * bs, &block);
                }
                self.scratch = block;
                return Ok(());
            }
            // Not what the hint said: where it would come from otherwise.
            let none = StoreOptions {
                target_tree: None,
                ..*self.opts
            };
            match s.local(b, 0, self.maps, &none) {
                Some(k) => kind = k,
                None => {
                    self.failed.push(b);
                    self.scratch = block;
                    return Ok(());
                }
            }
        }
        let ok = match kind {
            Local::Zero => {
                self.out.zero(target, b * bs, bs)?;
                if let Some(st) = &mut self.stream {
                    st.zeros(b * bs, bs);
                }
                self.done.zero += 1;
                self.scratch = block;
                return Ok(());
            }
            Local::Seed(k, at) => self.seeds[k]
                .image
                .read_exact_at(&mut block, at * bs)
                .is_ok(),
            Local::Earlier(j) => {
                self.out.flush(target)?;
                target.read_exact_at(&mut block, j * bs).is_ok()
            }
            Local::InPlace => false,
        } && self.hasher.hash(&block).as_bytes() == leaf;
        if ok {
            self.out.block(target, b * bs, &block)?;
            if let Some(st) = &mut self.stream {
                st.write(b * bs, &block);
            }
            match kind {
                Local::Earlier(_) => self.done.duplicate += 1,
                _ => self.done.from_seed += 1,
            }
        } else {
            self.failed.push(b);
        }
        self.scratch = block;
        Ok(())
    }

    /// The target synced, then the record: blocks before `next` are written.
    fn checkpoint<T: WriteAt + ?Sized>(&mut self, target: &mut T, next: u64) -> Result<()> {
        let Some(path) = self.opts.apply.state else {
            return Ok(());
        };
        self.out.flush(target)?;
        target
            .sync()
            .map_err(|e| Error::io("syncing the target", e))?;
        write_record(path, &self.session.id, self.session.index.image.size, next)
    }
}

/// `len` bytes of the store at `at`, in one range request.
fn fetch_range<S: ReadAt + ?Sized>(store: &S, at: u64, len: u64) -> Result<(u64, Vec<u8>)> {
    let mut buf = vec![0u8; len as usize];
    store
        .read_exact_at(&mut buf, at)
        .map_err(|e| Error::io(format!("fetching store bytes {at}..{}", at + len), e))?;
    Ok((at, buf))
}

/// Run `run`'s bytes from the fetched range `cur`, moved on to the ranges `next` gives
/// (counted in `job`) until one holds its data; a zero run needs none (a block straddling
/// it and another run).
fn from_ranges<S: ReadAt + ?Sized>(
    run: &Run,
    cur: &mut Option<(u64, Vec<u8>)>,
    mut next: impl FnMut() -> Result<(u64, Vec<u8>)>,
    job: &mut Job<'_, '_, S>,
) -> Result<Vec<u8>> {
    if run.kind == RunKind::Zero {
        return Ok(Vec::new());
    }
    let end = run.offset + u64::from(run.stored);
    loop {
        if let Some((at, b)) = cur
            .as_ref()
            .filter(|(at, b)| *at <= run.offset && end <= at + b.len() as u64)
        {
            let off = (run.offset - at) as usize;
            return decode(run, &b[off..off + run.stored as usize]);
        }
        let r = next()?;
        job.fetched += r.1.len() as u64;
        job.requests += 1;
        *cur = Some(r);
    }
}

/// A fetched run's bytes, exactly; none for a zero run (up to 1 GiB), whose zeros
/// [`Job::run`] writes where a block needs them.
fn decode(run: &Run, stored: &[u8]) -> Result<Vec<u8>> {
    let len = u64::from(run.len);
    match run.kind {
        RunKind::Zero => Ok(Vec::new()),
        RunKind::Zstd => unframe(stored, &[], len, "run").map_err(|reason| Error::StoreField {
            field: "run",
            offset: run.offset,
            reason: format!("bytes {}..: {reason}", run.start),
        }),
        // The dictionary is bounded by the run (as the publisher sizes it): a blob cannot
        // ask for more memory than its output.
        RunKind::Xz => crate::codec::xz::decode_blob(
            stored,
            Default::default(),
            len as usize,
            crate::codec::xz::dict_size(0, len as usize),
        )
        .map_err(|reason| Error::StoreField {
            field: "run",
            offset: run.offset,
            reason: format!("bytes {}..: {reason}", run.start),
        }),
    }
}

/// The data of the runs `wanted` says as ranges: neighbours joined across at most `gap`
/// bytes of runs not wanted, each at most `max_range` (a run larger is asked for alone).
fn ranges(
    runs: &[Run],
    wanted: impl Fn(usize) -> bool,
    opts: &StoreOptions<'_>,
) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (r, run) in runs.iter().enumerate() {
        if !wanted(r) || run.stored == 0 {
            continue;
        }
        let (a, b) = (run.offset, run.offset + u64::from(run.stored));
        if let Some(last) = out.last_mut() {
            let end = last.0 + last.1;
            if a.saturating_sub(end) <= opts.gap && b - last.0 <= opts.max_range {
                last.1 = b - last.0;
                continue;
            }
        }
        out.push((a, b - a));
    }
    out
}

const RECORD_MAGIC: &[u8; 8] = b"KEELSRS1";

/// The store resume record: magic, store id, image size, next block, then the sha256 of
/// those 56 bytes. A path that holds anything but such a record (of any store) is refused,
/// never replaced: it is not a record of ours.
fn write_record(path: &Path, id: &[u8; 32], size: u64, next: u64) -> Result<()> {
    if std::fs::symlink_metadata(path).is_ok() && read_record(path).is_none() {
        return Err(Error::io(
            format!("writing the resume record {}", path.display()),
            std::io::Error::other("the path holds something that is not a store resume record"),
        ));
    }
    let mut b = Vec::with_capacity(RECORD_SIZE);
    b.extend_from_slice(RECORD_MAGIC);
    b.extend_from_slice(id);
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&next.to_le_bytes());
    let h = sha256(&b);
    b.extend_from_slice(&h);
    keel_io::replace_file_private(path, &b)
        .map_err(|e| Error::io(format!("writing the resume record {}", path.display()), e))
}

const RECORD_SIZE: usize = 88;

/// The record at `path`: only a regular file of a record's size is read.
fn read_record(path: &Path) -> Option<([u8; 32], u64, u64)> {
    use std::io::Read;
    let m = std::fs::metadata(path).ok()?;
    if !m.is_file() || m.len() != RECORD_SIZE as u64 {
        return None;
    }
    let mut b = Vec::with_capacity(RECORD_SIZE + 1);
    std::fs::File::open(path)
        .ok()?
        .take(RECORD_SIZE as u64 + 1)
        .read_to_end(&mut b)
        .ok()?;
    if b.len() != RECORD_SIZE || &b[..8] != RECORD_MAGIC || sha256(&b[..56])[..] != b[56..] {
        return None;
    }
    let id: [u8; 32] = b[8..40].try_into().ok()?;
    let size = u64::from_le_bytes(b[40..48].try_into().ok()?);
    let next = u64::from_le_bytes(b[48..56].try_into().ok()?);
    Some((id, size, next))
}
