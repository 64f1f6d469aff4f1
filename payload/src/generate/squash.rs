//! squashfs pairs: changed files and fragment blocks as RECOMPRESS operations (a delta of
//! the decompressed content against the old versions', the blocks compressed again on
//! apply), where the compressor reproduces the target's blocks exactly.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::blocks::{claim, push_extent, scale, Kind, BS};
use super::encode::{recompress_op, Recreated};
use crate::codec::recompress::{level_field, Compressor};
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::format::{sha256, Extent, Operation, BLOCK_SIZE, MAX_OP_BYTES};
use crate::fs::squashfs::{self, Blocks, Image, STORED};
use crate::recompress::{Segment, Spec};

/// Content of one piece of a file (its blocks).
const PIECE_CONTENT: u64 = 2 << 20;
/// Decompressed content and reference of one operation (the applier allows 12 MiB).
const OP_CONTENT: u64 = 8 << 20;
/// Bytes between two units an operation carries as they are rather than end there.
const MAX_GAP: u64 = 4096;
/// Source fragment blocks one fragment block refers to.
const MAX_FRAGMENT_REFS: usize = 16;
/// Highest zstd level of an operation whose content all has old versions.
const DELTA_LEVEL: i32 = 9;

/// Compressed blocks of the target and the source blocks holding their old content.
#[derive(Clone, Debug)]
struct Unit {
    target: Blocks,
    sources: Vec<Blocks>,
}

impl Unit {
    fn end(&self) -> u64 {
        self.target.start + self.target.stored_len()
    }
}

/// The RECOMPRESS operations to make: units in target order, the target blocks they
/// write, and where their stream starts.
pub(super) struct Job {
    units: Vec<Unit>,
    span: Extent,
    stream_start: u64,
}

impl Job {
    /// Target blocks it writes.
    pub(super) fn blocks(&self) -> u64 {
        self.span.blocks
    }
}

/// What the encoder needs of both images.
pub(super) struct Pair<'a> {
    source: &'a [u8],
    target: &'a [u8],
    src: Image,
    tgt: Image,
    level: i32,
}

fn bytes<'a>(img: &'a [u8], b: &Blocks) -> &'a [u8] {
    let a = b.start as usize;
    img.get(a..a + b.stored_len() as usize).unwrap_or_default()
}

/// Sub-run `from..to` of a run of blocks.
fn sub(b: &Blocks, from: usize, to: usize) -> Blocks {
    let start = b.start
        + b.words[..from]
            .iter()
            .map(|w| u64::from(w & (STORED - 1)))
            .sum::<u64>();
    Blocks {
        start,
        words: b.words[from..to].to_vec(),
    }
}

/// Whether any 4 KiB block under `b` is new (else block copies already make it).
fn touches_new(b: &Blocks, kinds: &[Kind]) -> bool {
    let (a, z) = (
        b.start / BLOCK_SIZE,
        (b.start + b.stored_len()).div_ceil(BLOCK_SIZE),
    );
    (a..z).any(|i| kinds.get(i as usize) == Some(&Kind::New))
}

/// Both images as squashfs with zstd, gzip, xz or lz4 blocks of one size and one
/// compressor, or `None`.
pub(super) fn pair<'a>(source: &'a [u8], target: &'a [u8]) -> Option<Pair<'a>> {
    if !squashfs::is_squashfs(target) {
        return None;
    }
    let tgt = squashfs::open(target)?;
    let src = squashfs::open(source)?;
    let level = tgt.level?;
    let level = level_field(tgt.codec, level, tgt.window_bits);
    (matches!(
        tgt.codec,
        Codec::Zstd | Codec::Gzip | Codec::Xz | Codec::Lz4
    ) && src.codec == tgt.codec
        && src.block_size == tgt.block_size)
        .then_some(Pair {
            source,
            target,
            src,
            tgt,
            level,
        })
}

impl Pair<'_> {
    /// The units: changed files' blocks in pieces, each with the old version's blocks
    /// around the same place, and changed fragment blocks with the old fragments of the
    /// same files; only those whose every block the compressor here reproduces.
    fn units(&self, kinds: &[Kind], threads: usize) -> Vec<Unit> {
        let bs = u64::from(self.tgt.block_size);
        let old: HashMap<&str, &squashfs::File> = self
            .src
            .files
            .iter()
            .map(|f| (f.path.as_str(), f))
            .collect();
        let mut units = Vec::new();
        let mut seen = HashSet::new();
        let per_piece = (PIECE_CONTENT / bs).max(1) as usize;
        for f in &self.tgt.files {
            let n = f.data.words.len();
            // mksquashfs stores identical files once: one unit for their blocks.
            if n == 0 || !seen.insert(f.data.start) || !touches_new(&f.data, kinds) {
                continue;
            }
            let o = old
                .get(f.path.as_str())
                .filter(|o| !o.data.words.is_empty());
            if o.is_some_and(|o| bytes(self.source, &o.data) == bytes(self.target, &f.data)) {
                continue;
            }
            for a in (0..n).step_by(per_piece) {
                let z = (a + per_piece).min(n);
                let sources = o.map_or_else(Vec::new, |o| {
                    let m = o.data.words.len();
                    // The old version around the same place: positions scale with the size
                    // change, a block of margin each side.
                    let margin = 1 + m.abs_diff(n).min(per_piece);
                    let lo = (scale(a as u64, m as u64, n as u64) as usize).saturating_sub(margin);
                    let hi = (scale(z as u64, m as u64, n as u64) as usize + margin)
                        .min(m)
                        .min(lo + 2 * per_piece);
                    if lo < hi {
                        vec![sub(&o.data, lo, hi)]
                    } else {
                        Vec::new()
                    }
                });
                units.push(Unit {
                    target: sub(&f.data, a, z),
                    sources,
                });
            }
        }
        // Fragment blocks: the tails of many files; the old fragments of the same paths.
        let old_frags: HashSet<[u8; 32]> = self
            .src
            .fragments
            .iter()
            .map(|b| sha256(bytes(self.source, b)))
            .collect();
        let mut tails: HashMap<u32, BTreeSet<u32>> = HashMap::new();
        for f in &self.tgt.files {
            let old_frag = old.get(f.path.as_str()).and_then(|o| o.fragment);
            if let (Some((t, _)), Some((s, _))) = (f.fragment, old_frag) {
                tails.entry(t).or_default().insert(s);
            }
        }
        for (i, fb) in self.tgt.fragments.iter().enumerate() {
            if fb.words.is_empty()
                || !touches_new(fb, kinds)
                || old_frags.contains(&sha256(bytes(self.target, fb)))
            {
                continue;
            }
            let sources = tails
                .get(&(i as u32))
                .into_iter()
                .flatten()
                .filter_map(|&s| self.src.fragments.get(s as usize))
                .filter(|b| !b.words.is_empty())
                .take(MAX_FRAGMENT_REFS)
                .cloned()
                .collect();
            units.push(Unit {
                target: fb.clone(),
                sources,
            });
        }
        // Keep the units the compressor here re-creates, block for block, with the old
        // blocks that decompress (a damaged source costs its reference, not the run).
        // Without an old version, a strong compressor's blocks (not stored ones) are left
        // as they are: their content compressed again at the payload's zstd level is no
        // smaller than xz's blocks, and under a tenth smaller than zstd -19's (the corpus
        // pair: 0.85 MB of 12.5), for twice the generator's time (checking that the
        // blocks come out again is compressing them as mksquashfs did).
        let strong = self.strong();
        let checked = keel_io::Threads::exactly(threads).map(units, |mut u| {
            u.sources
                .retain(|s| self.src.content(self.source, s).is_some());
            let compressed = u.target.words.iter().any(|&w| w != 0 && w & STORED == 0);
            (!(strong && compressed && u.sources.is_empty()) && self.reproduces(&u.target))
                .then_some(u)
        });
        let mut units: Vec<Unit> = checked.into_iter().flatten().collect();
        units.sort_by_key(|u| u.target.start);
        units
    }

    /// The target's compressor.
    pub(super) fn codec(&self) -> Codec {
        self.tgt.codec
    }

    /// Whether the image's compressor leaves zstd little to gain on new content: xz, and
    /// zstd from mksquashfs's default level (15) up.
    fn strong(&self) -> bool {
        match self.tgt.codec {
            Codec::Xz => true,
            Codec::Zstd => self.level >= 15,
            _ => false,
        }
    }

    /// Whether compressing each block's content again as the image's compressor did gives
    /// the block's bytes.
    fn reproduces(&self, b: &Blocks) -> bool {
        let bs = self.tgt.block_size as usize;
        let Ok(mut c) = Compressor::new(self.tgt.codec, self.level, bs) else {
            return false;
        };
        let (mut content, mut scratch) = (Vec::new(), Vec::new());
        b.each().all(|(at, w)| {
            if w == 0 || w & STORED != 0 {
                return true;
            }
            content.clear();
            let raw = squashfs::stored_bytes(self.target, at, w);
            squashfs::block_content(self.tgt.codec, self.target, at, w, bs, &mut content).is_some()
                && raw.is_some_and(|raw| c.reproduces(&content, raw, &mut scratch))
        })
    }

    /// Units grouped into operations: neighbours in the target (at most [`MAX_GAP`]
    /// apart) while content, reference and span stay bounded. Marks the blocks each
    /// operation writes as [`Kind::InFile`].
    pub(super) fn plan(&self, kinds: &mut [Kind], threads: usize) -> Vec<Job> {
        let units = self.units(kinds, threads);
        let bs = u64::from(self.tgt.block_size);
        let tblocks = (self.target.len() as u64).div_ceil(BLOCK_SIZE);
        let content = |u: &Unit| u.target.words.len() as u64 * bs;
        let reference =
            |u: &Unit| -> u64 { u.sources.iter().map(|s| s.words.len() as u64 * bs).sum() };
        let mut groups: Vec<Vec<Unit>> = Vec::new();
        let (mut c, mut r) = (0u64, 0u64);
        for u in units {
            let fits = groups
                .last()
                .and_then(|g| Some((g.first()?, g.last()?)))
                .is_some_and(|(first, last)| {
                    u.target.start >= last.end()
                        && u.target.start - last.end() <= MAX_GAP
                        && c + content(&u) <= OP_CONTENT
                        && r + reference(&u) <= OP_CONTENT
                        && u.end() - first.target.start <= MAX_OP_BYTES - 2 * BLOCK_SIZE
                });
            if !fits {
                // A unit overlapping the one before (shared blocks) is left out.
                if groups
                    .last()
                    .and_then(|g| g.last())
                    .is_some_and(|l| u.target.start < l.end())
                {
                    continue;
                }
                groups.push(Vec::new());
                (c, r) = (0, 0);
            }
            c += content(&u);
            r += reference(&u);
            if let Some(g) = groups.last_mut() {
                g.push(u);
            }
        }
        let mut jobs = Vec::new();
        let mut prev_end = 0u64;
        for g in groups {
            let (Some(first), Some(last)) = (g.first(), g.last()) else {
                continue;
            };
            let start = first.target.start;
            let sb = (start / BLOCK_SIZE).max(prev_end);
            let eb = last.end().div_ceil(BLOCK_SIZE).min(tblocks);
            // Inside the blocks the operation before wrote (as they are): nothing to do.
            if sb >= eb {
                continue;
            }
            prev_end = eb;
            jobs.push(Job {
                stream_start: start.min(sb * BLOCK_SIZE),
                span: claim(kinds, sb, eb),
                units: g,
            });
        }
        jobs
    }

    /// One RECOMPRESS operation and its blob.
    pub(super) fn encode(&self, job: &Job, level: i32) -> Result<(Operation, Vec<u8>)> {
        // A delta of content against its old version is long matches: zstd -9 finds
        // them 10 times faster than -19 for a delta 5% larger (the corpus pair: 0.11 MB
        // of 12.6; 6.5 of 14 CPU seconds). New content keeps the level asked for.
        let level = if job.units.iter().all(|u| !u.sources.is_empty()) {
            level.min(DELTA_LEVEL)
        } else {
            level
        };
        let bs = self.tgt.block_size as usize;
        let bad = |what: &str| Error::Undecodable {
            image: "squashfs",
            what: what.to_string(),
        };
        // The reference: the source blocks, once each, in image order, and the 4 KiB
        // blocks holding them.
        let mut src_blocks: BTreeSet<(u64, u32)> = BTreeSet::new();
        for u in &job.units {
            for s in &u.sources {
                src_blocks.extend(s.each());
            }
        }
        src_blocks.retain(|&(_, w)| w != 0);
        let mut covered: BTreeSet<u64> = BTreeSet::new();
        for &(at, w) in &src_blocks {
            let len = u64::from(w & (STORED - 1)).max(1);
            covered.extend(at / BLOCK_SIZE..=(at + len - 1) / BLOCK_SIZE);
        }
        let rank: HashMap<u64, u64> = covered
            .iter()
            .enumerate()
            .map(|(i, &b)| (b, i as u64))
            .collect();
        let mut source = Vec::new();
        for &b in &covered {
            push_extent(&mut source, b, 1);
        }
        let mut spec = Spec {
            codec: self.tgt.codec,
            level: self.level,
            block_size: self.tgt.block_size,
            skip: (job.span.start * BLOCK_SIZE - job.stream_start) as u32,
            sources: Vec::new(),
            taken: Vec::new(),
            tails: Vec::new(),
            segments: Vec::new(),
        };
        let mut s = Vec::new();
        for &(at, w) in &src_blocks {
            let offset = rank.get(&(at / BLOCK_SIZE)).copied().unwrap_or_default() * BLOCK_SIZE
                + at % BLOCK_SIZE;
            spec.sources.push((offset, w));
            squashfs::block_content(self.src.codec, self.source, at, w, bs, &mut s)
                .ok_or_else(|| bad("a source block"))?;
        }
        // The stream: literal bytes between units, each unit's blocks from its content.
        let (mut content, mut literal) = (Vec::new(), Vec::new());
        let mut pos = job.stream_start;
        let span_end = job.span.start + job.span.blocks;
        let target_bytes = |from: u64, to: u64, out: &mut Vec<u8>| {
            for i in from..to {
                let b = self.target.get(i as usize).copied().unwrap_or(0);
                out.push(b);
            }
        };
        for u in &job.units {
            if u.target.start > pos {
                target_bytes(pos, u.target.start, &mut literal);
                spec.segments
                    .push(Segment::Literal((u.target.start - pos) as u32));
            }
            for (at, w) in u.target.each() {
                let len = w & (STORED - 1);
                let before = content.len();
                squashfs::block_content(self.tgt.codec, self.target, at, w, bs, &mut content)
                    .ok_or_else(|| bad("a target block"))?;
                let n = (content.len() - before) as u32;
                spec.segments.push(if w == 0 {
                    Segment::Sparse(n)
                } else if w & STORED != 0 {
                    Segment::Stored(n)
                } else {
                    Segment::Compress(n, len)
                });
            }
            pos = u.end();
        }
        let end = span_end * BLOCK_SIZE;
        if end > pos {
            target_bytes(pos, end, &mut literal);
            spec.segments.push(Segment::Literal((end - pos) as u32));
        }
        recompress_op(
            self.source,
            source,
            vec![job.span],
            &Recreated {
                spec: &spec,
                content: &content,
                old: &s,
                literal: &literal,
                literal_patched: false,
            },
            level,
        )
    }
}

const _: () = assert!(BS as u64 == BLOCK_SIZE);
