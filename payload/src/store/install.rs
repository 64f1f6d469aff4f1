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

/// Stored bytes of runs not needed that a range may take in to join two needed ones,
/// by default: about one run. On the corpus's ext4 pair it halves the requests (376 to
/// 194) for 6% more bytes; a link with a long round trip wants more (`gap`).
pub const DEFAULT_GAP: u64 = 16 << 10;
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
}

/// Where each block comes from, and what will be fetched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plan {
    /// Blocks the target already holds (the hint of its tree, or the resume record).
    pub in_place: u64,
    /// Zero blocks.
    pub zero: u64,
    /// Blocks copied from a seed.
    pub from_seed: u64,
    /// Blocks copied from a block written earlier in the install.
    pub duplicate: u64,
    /// Blocks taken from the runs fetched (all their blocks not in place: a run is
    /// fetched whole for the blocks only the store has).
    pub fetched_blocks: u64,
    /// The ranges to fetch (file offset, length), in order.
    pub ranges: Vec<(u64, u64)>,
    /// Their bytes: what the install will fetch when no block it counts on has changed.
    pub fetch_bytes: u64,
    /// Bytes already fetched to make the plan (header, index, leaves).
    pub fetched_so_far: u64,
    /// Requests made so far.
    pub requests_so_far: u64,
    /// Bytes of seeds read and hashed to index them (0 where each seed's tree served).
    pub seed_bytes_hashed: u64,
    /// The runs to fetch, by index.
    needed: Vec<bool>,
    /// The resume record's first block not known written.
    resume_from: u64,
}

/// What an install did.
#[derive(Clone, Debug)]
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

/// Where a block not in place comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Zero,
    Seed(usize, u64),
    Earlier(u64),
    Fetch,
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
        let mut signed = vec![0u8; HEADER_SIZE + header.index_len as usize + SIGNATURE_SIZE];
        signed[..HEADER_SIZE].copy_from_slice(&h);
        read(&mut signed[HEADER_SIZE..], HEADER_SIZE as u64, "index")?;
        let mut sig = [0u8; SIGNATURE_SIZE];
        sig.copy_from_slice(&signed[signed.len() - SIGNATURE_SIZE..]);
        signed.truncate(signed.len() - SIGNATURE_SIZE);
        let key_id = keel_trust::KeyId(header.key_id);
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
                Error::BadField {
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
    /// usable tree are read and hashed here, once.
    pub fn plan(&self, seeds: &[Seed<'_>], opts: &StoreOptions<'_>) -> Result<Plan> {
        let maps = self.seed_maps(seeds, opts)?;
        let resume_from = self.resume_point(opts);
        let (plan, _) = self.plan_with(&maps, resume_from, opts);
        Ok(plan)
    }

    fn plan_with(&self, maps: &Maps, resume_from: u64, opts: &StoreOptions<'_>) -> (Plan, ()) {
        let mut plan = Plan {
            seed_bytes_hashed: maps.hashed,
            needed: vec![false; self.index.runs.len()],
            resume_from,
            fetched_so_far: self.fetched,
            requests_so_far: self.requests,
            ..Plan::default()
        };
        for (r, run) in self.index.runs.iter().enumerate() {
            let blocks = run.first_block..run.first_block + u64::from(run.blocks);
            let local: Vec<Option<Source>> = blocks
                .map(|b| (!self.in_place(b, resume_from, opts)).then(|| self.source(b, maps)))
                .collect();
            // A run with one block only the store has is fetched whole, and all its blocks
            // not in place come from it.
            let fetch = local.contains(&Some(Source::Fetch));
            plan.needed[r] = fetch;
            for s in local {
                match s {
                    None => plan.in_place += 1,
                    Some(_) if fetch => plan.fetched_blocks += 1,
                    Some(Source::Zero) => plan.zero += 1,
                    Some(Source::Seed(..)) => plan.from_seed += 1,
                    Some(Source::Earlier(_)) => plan.duplicate += 1,
                    Some(Source::Fetch) => {}
                }
            }
        }
        plan.ranges = ranges(&self.index.runs, &plan.needed, opts);
        plan.fetch_bytes = plan.ranges.iter().map(|r| r.1).sum();
        (plan, ())
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

    fn source(&self, b: u64, maps: &Maps) -> Source {
        let Some(d) = self.tree.leaf(b) else {
            return Source::Fetch;
        };
        if d == maps.zero.as_bytes() {
            return Source::Zero;
        }
        let k = key(d);
        for (i, m) in maps.seeds.iter().enumerate() {
            if let Some(&at) = m.get(&k) {
                return Source::Seed(i, u64::from(at));
            }
        }
        match maps.first.get(&k) {
            Some(&j) if u64::from(j) < b => Source::Earlier(u64::from(j)),
            _ => Source::Fetch,
        }
    }

    /// The lookup maps: each seed's blocks by digest (from its tree, or hashed), and the
    /// new image's first block of each digest.
    fn seed_maps(&self, seeds: &[Seed<'_>], opts: &StoreOptions<'_>) -> Result<Maps> {
        let params = self.tree.params();
        let hasher = BlockHasher::new(params);
        let bs = params.data_block_size() as usize;
        let ds = hasher.digest_size();
        let mut out = Vec::with_capacity(seeds.len());
        let mut hashed = 0u64;
        for seed in seeds {
            let mut m: HashMap<u64, u32> = HashMap::new();
            match seed.tree.filter(|t| {
                t.params().salt() == params.salt()
                    && t.params().algorithm() == params.algorithm()
                    && t.params().hash_type() == params.hash_type()
                    && t.params().data_block_size() == params.data_block_size()
            }) {
                Some(t) => {
                    for b in 0..t.params().data_blocks() {
                        if let Some(d) = t.leaf(b) {
                            m.entry(key(d)).or_insert(b as u32);
                        }
                    }
                }
                None => {
                    let size = seed.image.size().map_err(|e| Error::io("seed size", e))?;
                    let blocks = size / bs as u64;
                    let chunk = 1024usize;
                    let mut buf = vec![0u8; chunk * bs];
                    let mut digests = vec![0u8; chunk * ds];
                    let mut b = 0u64;
                    while b < blocks {
                        if opts.apply.progress.is_some_and(|p| p.cancelled()) {
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
                        hashed += (n * bs) as u64;
                    }
                }
            }
            out.push(m);
        }
        let mut first = HashMap::new();
        for b in 0..params.data_blocks() {
            if let Some(d) = self.tree.leaf(b) {
                first.entry(key(d)).or_insert(b as u32);
            }
        }
        Ok(Maps {
            hashed,
            seeds: out,
            first,
            zero: hasher.hash(&vec![0u8; bs]),
        })
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
        let maps = self.seed_maps(seeds, opts)?;
        let resume_from = self.resume_point(opts);
        let (mut plan, ()) = self.plan_with(&maps, resume_from, opts);
        let hasher = BlockHasher::new(self.tree.params());
        let bs = u64::from(self.index.block_size);
        let mut job = Job {
            session: self,
            seeds,
            maps: &maps,
            hasher: &hasher,
            opts,
            resume_from,
            written: 0,
            fetched: 0,
            requests: 0,
            retry: Vec::new(),
            done: PlanCounts::default(),
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
                    let mut buf = vec![0u8; len as usize];
                    let r = store
                        .read_exact_at(&mut buf, at)
                        .map(|()| (at, buf))
                        .map_err(|e| {
                            Error::io(format!("fetching store bytes {at}..{}", at + len), e)
                        });
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
                let data = if plan.needed[r] {
                    while !range.as_ref().is_some_and(|(at, b)| {
                        *at <= run.offset
                            && run.offset + u64::from(run.stored) <= at + b.len() as u64
                    }) {
                        let next = rx.recv().map_err(|_| {
                            Error::Internal("the store's ranges ended before its runs".into())
                        })??;
                        job.fetched += next.1.len() as u64;
                        job.requests += 1;
                        range = Some(next);
                    }
                    let (at, b) = range
                        .as_ref()
                        .map(|(a, b)| (*a, &b[..]))
                        .unwrap_or((0, &[]));
                    let off = (run.offset - at) as usize;
                    Some(decode(run, &b[off..off + run.stored as usize], bs)?)
                } else {
                    None
                };
                job.run(r, run, data.as_deref(), target)?;
                since += u64::from(run.blocks) * bs;
                let end = run.first_block + u64::from(run.blocks);
                if since >= checkpoint && job.retry.is_empty() {
                    since = 0;
                    job.checkpoint(target, end)?;
                }
                if let Some(p) = opts.apply.progress {
                    p.progress(end * bs, size);
                }
            }
            Ok(())
        })?;
        // Runs whose local blocks did not match their leaves: fetched now, whole.
        let retry = std::mem::take(&mut job.retry);
        if !retry.is_empty() {
            let mut needed = vec![false; runs.len()];
            for &r in &retry {
                needed[r] = true;
            }
            for (at, len) in ranges(runs, &needed, opts) {
                let mut buf = vec![0u8; len as usize];
                self.store.read_exact_at(&mut buf, at).map_err(|e| {
                    Error::io(format!("fetching store bytes {at}..{}", at + len), e)
                })?;
                job.fetched += len;
                job.requests += 1;
                for &r in retry.iter().filter(|&&r| {
                    runs[r].offset >= at && runs[r].offset + u64::from(runs[r].stored) <= at + len
                }) {
                    let run = &runs[r];
                    let off = (run.offset - at) as usize;
                    let data = decode(run, &buf[off..off + run.stored as usize], bs)?;
                    job.run(r, run, Some(&data), target)?;
                }
            }
            if !job.retry.is_empty() {
                return Err(Error::Internal("a fetched run did not verify".into()));
            }
        }
        target
            .sync()
            .map_err(|e| Error::io("syncing the target", e))?;
        if let Some(path) = opts.apply.state {
            let _ = std::fs::remove_file(path);
        }
        plan.in_place = job.done.in_place;
        plan.zero = job.done.zero;
        plan.from_seed = job.done.from_seed;
        plan.duplicate = job.done.duplicate;
        plan.fetched_blocks = job.done.fetched;
        Ok(Installed {
            tree: self.tree.clone(),
            plan,
            fetched: self.fetched + job.fetched,
            requests: self.requests + job.requests,
            written_blocks: job.written,
        })
    }
}

struct Maps {
    hashed: u64,
    seeds: Vec<HashMap<u64, u32>>,
    first: HashMap<u64, u32>,
    zero: keel_verity::Digest64,
}

#[derive(Default)]
struct PlanCounts {
    in_place: u64,
    zero: u64,
    from_seed: u64,
    duplicate: u64,
    fetched: u64,
}

struct Job<'j, 's, S: ReadAt + ?Sized> {
    session: &'j StoreSession<'s, S>,
    seeds: &'j [Seed<'j>],
    maps: &'j Maps,
    hasher: &'j BlockHasher,
    opts: &'j StoreOptions<'j>,
    resume_from: u64,
    written: u64,
    fetched: u64,
    requests: u64,
    retry: Vec<usize>,
    done: PlanCounts,
}

impl<'j, S: ReadAt + ?Sized> Job<'j, '_, S> {
    /// Put run `r` on the target: its blocks from `data` (fetched) or from where the plan
    /// says; a run whose local blocks do not all verify is left for the retry.
    fn run<T: ReadAt + WriteAt + ?Sized>(
        &mut self,
        r: usize,
        run: &Run,
        data: Option<&[u8]>,
        target: &mut T,
    ) -> Result<()> {
        let s = self.session;
        let bs = u64::from(s.index.block_size);
        let n = run.blocks as usize;
        let b0 = run.first_block;
        // A zero run not already in place: one write of zeros (a hole in a file).
        if run.kind == RunKind::Zero
            && data.is_none()
            && !(b0..b0 + n as u64).any(|b| s.in_place(b, self.resume_from, self.opts))
        {
            target
                .write_zeros(b0 * bs, n as u64 * bs)
                .map_err(|e| Error::io(format!("writing zeros at block {b0}"), e))?;
            self.written += n as u64;
            self.done.zero += n as u64;
            return Ok(());
        }
        let mut buf = vec![0u8; n * bs as usize];
        let mut write = vec![true; n];
        let mut counts = PlanCounts::default();
        for i in 0..n {
            let b = b0 + i as u64;
            let out = &mut buf[i * bs as usize..(i + 1) * bs as usize];
            let leaf = s.tree.leaf(b).unwrap_or_default();
            if s.in_place(b, self.resume_from, self.opts) {
                target
                    .read_exact_at(out, b * bs)
                    .map_err(|e| Error::io(format!("reading target block {b}"), e))?;
                if self.hasher.hash(out).as_bytes() == leaf {
                    write[i] = false;
                    counts.in_place += 1;
                    continue;
                }
            }
            if let Some(d) = data {
                out.copy_from_slice(&d[i * bs as usize..(i + 1) * bs as usize]);
                if self.hasher.hash(out).as_bytes() != leaf {
                    return Err(Error::BadField {
                        field: "run",
                        offset: run.offset,
                        reason: format!("block {b} of the store does not match its dm-verity leaf"),
                    });
                }
                counts.fetched += 1;
                continue;
            }
            let src = s.source(b, self.maps);
            let read = match src {
                Source::Zero => {
                    out.fill(0);
                    counts.zero += 1;
                    continue;
                }
                Source::Seed(k, at) => self.seed(k).read_exact_at(out, at * bs),
                Source::Earlier(j) => target.read_exact_at(out, j * bs),
                Source::Fetch => {
                    self.retry.push(r);
                    return Ok(());
                }
            };
            if read.is_err() || self.hasher.hash(out).as_bytes() != leaf {
                self.retry.push(r);
                return Ok(());
            }
            match src {
                Source::Earlier(_) => counts.duplicate += 1,
                _ => counts.from_seed += 1,
            }
        }
        let mut i = 0;
        while i < n {
            if !write[i] {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < n && write[j] {
                j += 1;
            }
            let at = (b0 + i as u64) * bs;
            target
                .write_all_at(&buf[i * bs as usize..j * bs as usize], at)
                .map_err(|e| {
                    Error::io(
                        format!("writing target blocks {}..{}", b0 + i as u64, b0 + j as u64),
                        e,
                    )
                })?;
            self.written += (j - i) as u64;
            i = j;
        }
        self.done.in_place += counts.in_place;
        self.done.zero += counts.zero;
        self.done.from_seed += counts.from_seed;
        self.done.duplicate += counts.duplicate;
        self.done.fetched += counts.fetched;
        Ok(())
    }

    fn seed(&self, k: usize) -> &'j dyn ReadAt {
        self.seeds[k].image
    }

    /// The target synced, then the record: blocks before `next` are written.
    fn checkpoint<T: WriteAt + ?Sized>(&mut self, target: &mut T, next: u64) -> Result<()> {
        let Some(path) = self.opts.apply.state else {
            return Ok(());
        };
        target
            .sync()
            .map_err(|e| Error::io("syncing the target", e))?;
        write_record(path, &self.session.id, self.session.index.image.size, next)
    }
}

/// A fetched run's blocks, exactly.
fn decode(run: &Run, stored: &[u8], bs: u64) -> Result<Vec<u8>> {
    let len = u64::from(run.blocks) * bs;
    match run.kind {
        RunKind::Zero => Ok(vec![0u8; len as usize]),
        RunKind::Zstd => unframe(stored, &[], len, "run").map_err(|reason| Error::BadField {
            field: "run",
            offset: run.offset,
            reason: format!("blocks {}..: {reason}", run.first_block),
        }),
    }
}

/// The needed runs' data as ranges: neighbours joined across at most `gap` bytes of runs
/// not needed, each at most `max_range` (a run larger is asked for alone).
fn ranges(runs: &[Run], needed: &[bool], opts: &StoreOptions<'_>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (run, _) in runs.iter().zip(needed).filter(|(r, n)| **n && r.stored > 0) {
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
/// those 56 bytes.
fn write_record(path: &Path, id: &[u8; 32], size: u64, next: u64) -> Result<()> {
    let mut b = Vec::with_capacity(88);
    b.extend_from_slice(RECORD_MAGIC);
    b.extend_from_slice(id);
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&next.to_le_bytes());
    let h = sha256(&b);
    b.extend_from_slice(&h);
    keel_io::replace_file_private(path, &b)
        .map_err(|e| Error::io(format!("writing the resume record {}", path.display()), e))
}

fn read_record(path: &Path) -> Option<([u8; 32], u64, u64)> {
    let b = std::fs::read(path).ok()?;
    if b.len() != 88 || &b[..8] != RECORD_MAGIC || sha256(&b[..56])[..] != b[56..] {
        return None;
    }
    let id: [u8; 32] = b[8..40].try_into().ok()?;
    let size = u64::from_le_bytes(b[40..48].try_into().ok()?);
    let next = u64::from_le_bytes(b[48..56].try_into().ok()?);
    Some((id, size, next))
}
