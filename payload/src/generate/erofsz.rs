//! EROFS pairs with lz4 pclusters: changed compressed files as RECOMPRESS operations (a
//! delta of the decompressed content against the old version's, the pclusters filled
//! again on apply as mkfs.erofs fills them), where liblz4 here reproduces the target's
//! pclusters exactly.
//!
//! mkfs.erofs (1.5) gives `LZ4_compress_HC_destSize` (or `LZ4_compress_destSize`) all of
//! the file it holds in its 1.8 MiB window, and lz4 takes what fits one block; what it
//! takes depends on what it was offered, so each pcluster records the bytes offered,
//! which follow from the cluster map alone ([`offered`]).

use std::collections::{BTreeSet, HashMap};

use super::blocks::{block, claim, push_extent, range, scale, Kind};
use super::encode::{recompress_op, Recreated};
use crate::codec::recompress::Compressor;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::format::{Extent, Operation, BLOCK_SIZE, MAX_OP_BYTES};
use crate::fs::erofs::{self, packed, Cluster, Compressed};
use crate::fs::squashfs::STORED;
use crate::recompress::{Segment, Spec};

/// mkfs.erofs's window: it reads up to twice this, and slides once a pcluster ends past it.
const WINDOW: u64 = 900 * 1024;
/// Content of one piece of a file (then up to a window more offered to its last pcluster).
const PIECE_CONTENT: u64 = 4 << 20;
/// Decompressed content and reference of one operation (the applier allows 12 MiB).
const OP_CONTENT: u64 = 8 << 20;
/// Reference around a piece's place in the old version, each side.
const REF_MARGIN: u64 = 1 << 20;
/// Blocks between two units an operation carries as they are rather than end there.
const MAX_GAP_BLOCKS: u64 = 1;
/// lz4hc levels tried on the target, most likely first; 0 is lz4.
const LEVELS: [i32; 13] = [9, 12, 0, 10, 11, 8, 7, 6, 5, 4, 3, 2, 1];
/// Files whose pclusters are tried to find the level.
const LEVEL_PROBES: usize = 8;

/// For each pcluster of a file of `size` bytes, the bytes mkfs.erofs offered lz4 when
/// it filled it (the rest of its window); `None` if the map does not add up.
pub(super) fn offered(size: u64, clusters: &[Cluster]) -> Option<Vec<u64>> {
    let mut out = Vec::with_capacity(clusters.len());
    let (mut pos, mut base, mut tail, mut left) = (0u64, 0u64, 0u64, size);
    while left > 0 {
        let read = left.min(2 * WINDOW - (tail - base));
        if read == 0 {
            return None;
        }
        left -= read;
        tail += read;
        let last = left == 0;
        while tail > pos {
            if tail - pos <= BLOCK_SIZE && !last {
                break;
            }
            let c = clusters.get(out.len())?;
            if c.start != pos {
                return None;
            }
            out.push(tail - pos);
            pos += u64::from(c.len);
            if !last && pos - base >= WINDOW {
                base = pos - (pos - base) % BLOCK_SIZE;
                break;
            }
        }
    }
    (out.len() == clusters.len()).then_some(out)
}

/// Pclusters `a..b` of a file and the old pclusters holding their old content.
#[derive(Clone, Debug)]
struct Unit {
    file: usize,
    a: usize,
    b: usize,
    /// Bytes of content from the first pcluster's start: what the pclusters take and
    /// what is offered past them.
    content: u64,
    /// (old file, its pclusters `from..to`).
    old: Option<(usize, usize, usize)>,
}

/// RECOMPRESS operations to make: units in target order and the blocks they write.
pub(super) struct Job {
    units: Vec<Unit>,
    span: Extent,
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
    new: Vec<Compressed>,
    /// [`offered`] for each of `new`'s pclusters.
    offered: Vec<Vec<u64>>,
    old: Vec<Compressed>,
    level: i32,
}

/// The target as EROFS with lz4 pclusters liblz4 here reproduces at some level, or `None`.
pub(super) fn pair<'a>(source: &'a [u8], target: &'a [u8]) -> Option<Pair<'a>> {
    // Files whose map does not add up to what mkfs.erofs would write are left out.
    let (new, offered): (Vec<Compressed>, Vec<Vec<u64>>) = erofs::compressed_files(target)
        .into_iter()
        .filter_map(|f| {
            let o = offered(f.size, &f.clusters)?;
            Some((f, o))
        })
        .unzip();
    let level = level_of(target, &new, &offered)?;
    Some(Pair {
        source,
        target,
        old: erofs::compressed_files(source),
        new,
        offered,
        level,
    })
}

/// The level whose output matches the first pclusters of a few files.
fn level_of(img: &[u8], files: &[Compressed], offered: &[Vec<u64>]) -> Option<i32> {
    let contents: Vec<(&Compressed, Vec<u8>, &Vec<u64>)> = files
        .iter()
        .zip(offered)
        .filter(|(f, _)| f.size <= OP_CONTENT && f.clusters.iter().any(|c| !c.raw))
        .take(LEVEL_PROBES)
        .filter_map(|(f, o)| Some((f, erofs::content(img, f, OP_CONTENT)?, o)))
        .collect();
    LEVELS.into_iter().find(|&level| {
        let Ok(mut c) = Compressor::new(Codec::ErofsLz4, level, BLOCK_SIZE as usize) else {
            return false;
        };
        let mut scratch = Vec::new();
        !contents.is_empty()
            && contents.iter().all(|(f, content, offered)| {
                f.clusters
                    .iter()
                    .zip(offered.iter())
                    .filter(|(c, _)| !c.raw)
                    .take(2)
                    .all(|(cl, o)| fills(img, &mut c, cl, content, 0, *o, &mut scratch))
            })
    })
}

/// Whether lz4 offered `offered` bytes of `content` (which starts at file offset
/// `content_at`) from the pcluster's start takes its length and gives its bytes.
fn fills(
    img: &[u8],
    c: &mut Compressor,
    cl: &Cluster,
    content: &[u8],
    content_at: u64,
    offered: u64,
    scratch: &mut Vec<u8>,
) -> bool {
    let from = (cl.start - content_at) as usize;
    let Some(src) = content.get(from..from + offered as usize) else {
        return false;
    };
    c.fill(src, scratch).is_ok_and(|taken| {
        taken == cl.len as usize && scratch[..] == *packed(&block(img, cl.block))
    })
}

/// A file's content from pcluster `a` up to file offset `end`.
fn content_from(img: &[u8], f: &Compressed, a: usize, end: u64) -> Option<Vec<u8>> {
    let start = f.clusters.get(a)?.start;
    let mut out = Vec::new();
    for cl in f.clusters[a..].iter().take_while(|c| c.start < end) {
        erofs::cluster_content(&block(img, cl.block), cl.len, cl.raw, &mut out)?;
    }
    out.truncate((end - start) as usize);
    (out.len() as u64 == end - start).then_some(out)
}

impl Pair<'_> {
    /// Changed files in pieces, each with the old version's pclusters around the same
    /// place; only those whose every lz4 pcluster liblz4 here fills exactly as the target.
    fn units(&self, kinds: &[Kind], threads: usize) -> Vec<Unit> {
        let old: HashMap<&str, usize> = self
            .old
            .iter()
            .enumerate()
            .map(|(i, f)| (f.path.as_str(), i))
            .collect();
        let mut units = Vec::new();
        for (i, f) in self.new.iter().enumerate() {
            let Some((first, n)) = f.blocks() else {
                continue;
            };
            if !(first..first + n).any(|b| kinds.get(b as usize) == Some(&Kind::New)) {
                continue;
            }
            let offered = &self.offered[i];
            let o = old.get(f.path.as_str()).copied();
            let mut a = 0;
            while a < f.clusters.len() {
                let start = f.clusters[a].start;
                let mut b = a + 1;
                while b < f.clusters.len() && f.clusters[b].start - start < PIECE_CONTENT {
                    b += 1;
                }
                let end = (a..b)
                    .map(|k| f.clusters[k].start + offered[k].max(u64::from(f.clusters[k].len)))
                    .max()
                    .unwrap_or(start)
                    .min(f.size);
                let piece_end = f.clusters.get(b).map_or(f.size, |c| c.start);
                let (from, to) = (a, b);
                a = b;
                if end - start > OP_CONTENT {
                    continue;
                }
                // The old version around the same place, a margin each side, bounded.
                let old = o.and_then(|oi| {
                    let of = &self.old[oi];
                    let (lo, hi) = (
                        scale(start, of.size, f.size).saturating_sub(REF_MARGIN),
                        scale(piece_end, of.size, f.size).saturating_add(REF_MARGIN),
                    );
                    let first = of
                        .clusters
                        .iter()
                        .position(|c| c.start + u64::from(c.len) > lo)?;
                    let mut last = first;
                    while last < of.clusters.len()
                        && of.clusters[last].start < hi
                        && of.clusters[last].start - of.clusters[first].start < OP_CONTENT / 2
                    {
                        last += 1;
                    }
                    let len: u64 = of.clusters[first..last]
                        .iter()
                        .map(|c| u64::from(c.len))
                        .sum();
                    (last > first && len <= OP_CONTENT).then_some((oi, first, last))
                });
                units.push(Unit {
                    file: i,
                    a: from,
                    b: to,
                    content: end - start,
                    old,
                });
            }
        }
        // Keep the pieces liblz4 here re-creates, pcluster for pcluster.
        // An old version that does not decompress costs its reference, not the run.
        let checked = keel_io::Threads::exactly(threads).map(units, |mut u| {
            u.old = u.old.filter(|&(oi, from, to)| {
                let f = &self.old[oi];
                let end = f.clusters.get(to).map_or(f.size, |c| c.start);
                content_from(self.source, f, from, end).is_some()
            });
            self.reproduces(&u).then_some(u)
        });
        let mut units: Vec<Unit> = checked.into_iter().flatten().collect();
        units.sort_by_key(|u| self.new[u.file].clusters[u.a].block);
        units
    }

    /// Whether each lz4 pcluster of the unit comes out of its content as it is.
    fn reproduces(&self, u: &Unit) -> bool {
        let f = &self.new[u.file];
        let start = f.clusters[u.a].start;
        let offered = &self.offered[u.file];
        let (Some(content), Ok(mut c)) = (
            content_from(self.target, f, u.a, start + u.content),
            Compressor::new(Codec::ErofsLz4, self.level, BLOCK_SIZE as usize),
        ) else {
            return false;
        };
        let mut scratch = Vec::new();
        (u.a..u.b).all(|k| {
            let cl = &f.clusters[k];
            cl.raw
                || fills(
                    self.target,
                    &mut c,
                    cl,
                    &content,
                    start,
                    offered[k],
                    &mut scratch,
                )
        })
    }

    fn span(&self, u: &Unit) -> (u64, u64) {
        let c = &self.new[u.file].clusters;
        (c[u.a].block, c[u.b - 1].block + 1)
    }

    fn reference_len(&self, u: &Unit) -> u64 {
        u.old.map_or(0, |(oi, from, to)| {
            self.old[oi].clusters[from..to]
                .iter()
                .map(|c| u64::from(c.len))
                .sum()
        })
    }

    /// Units grouped into operations: neighbours in the target while content, reference
    /// and span stay bounded. Marks the blocks each operation writes as [`Kind::InFile`].
    pub(super) fn plan(&self, kinds: &mut [Kind], threads: usize) -> Vec<Job> {
        let units = self.units(kinds, threads);
        let mut groups: Vec<Vec<Unit>> = Vec::new();
        let (mut c, mut r) = (0u64, 0u64);
        for u in units {
            let (a, _) = self.span(&u);
            let fits = groups
                .last()
                .and_then(|g| Some((g.first()?, g.last()?)))
                .is_some_and(|(first, last)| {
                    let (end, start) = (self.span(last).1, self.span(first).0);
                    a >= end
                        && a - end <= MAX_GAP_BLOCKS
                        && c + u.content <= OP_CONTENT
                        && r + self.reference_len(&u) <= OP_CONTENT
                        && (self.span(&u).1 - start) * BLOCK_SIZE <= MAX_OP_BYTES
                });
            if !fits {
                if groups
                    .last()
                    .and_then(|g| g.last())
                    .is_some_and(|l| a < self.span(l).1)
                {
                    continue;
                }
                groups.push(Vec::new());
                (c, r) = (0, 0);
            }
            c += u.content;
            r += self.reference_len(&u);
            if let Some(g) = groups.last_mut() {
                g.push(u);
            }
        }
        let mut jobs = Vec::new();
        for g in groups {
            let (Some(first), Some(last)) = (g.first(), g.last()) else {
                continue;
            };
            let (sb, eb) = (self.span(first).0, self.span(last).1);
            if eb as usize > kinds.len() {
                continue;
            }
            jobs.push(Job {
                span: claim(kinds, sb, eb),
                units: g,
            });
        }
        jobs
    }

    /// One RECOMPRESS operation and its blob.
    pub(super) fn encode(&self, job: &Job, level: i32) -> Result<(Operation, Vec<u8>)> {
        let bad = |what: &str| Error::Undecodable {
            image: "EROFS",
            what: what.to_string(),
        };
        // The reference: the old pclusters, once each, in image order.
        let mut old_blocks: BTreeSet<(u64, u32, bool)> = BTreeSet::new();
        for u in &job.units {
            if let Some((oi, from, to)) = u.old {
                old_blocks.extend(
                    self.old[oi].clusters[from..to]
                        .iter()
                        .map(|c| (c.block, c.len, c.raw)),
                );
            }
        }
        let mut source = Vec::new();
        for &(b, ..) in &old_blocks {
            push_extent(&mut source, b, 1);
        }
        let mut spec = Spec {
            codec: Codec::ErofsLz4,
            level: self.level,
            block_size: BLOCK_SIZE as u32,
            skip: 0,
            sources: Vec::new(),
            taken: Vec::new(),
            tails: Vec::new(),
            segments: Vec::new(),
        };
        let mut s = Vec::new();
        for (rank, &(b, len, raw)) in old_blocks.iter().enumerate() {
            let word = len | if raw { STORED } else { 0 };
            spec.sources.push((rank as u64 * BLOCK_SIZE, word));
            let at = b as usize * BLOCK_SIZE as usize;
            let blk = self.source.get(at..).unwrap_or_default();
            erofs::cluster_content(blk, len, raw, &mut s).ok_or_else(|| bad("an old pcluster"))?;
        }
        let (mut content, mut literal) = (Vec::new(), Vec::new());
        let mut pos = job.span.start;
        for u in &job.units {
            let f = &self.new[u.file];
            let start = f.clusters[u.a].start;
            let offered = &self.offered[u.file];
            let piece = content_from(self.target, f, u.a, start + u.content)
                .ok_or_else(|| bad("a pcluster"))?;
            let (first, _) = self.span(u);
            if first > pos {
                literal.extend_from_slice(&range(self.target, pos, first - pos));
                spec.segments
                    .push(Segment::Literal(((first - pos) * BLOCK_SIZE) as u32));
            }
            let mut used = 0u64;
            for (k, cl) in f.clusters.iter().enumerate().take(u.b).skip(u.a) {
                let blk = block(self.target, cl.block);
                if cl.raw {
                    spec.segments.push(Segment::Stored(cl.len));
                    literal.extend_from_slice(&blk[cl.len as usize..]);
                    spec.segments
                        .push(Segment::Literal(BLOCK_SIZE as u32 - cl.len));
                } else {
                    let z = packed(&blk).len();
                    literal.extend_from_slice(&blk[..blk.len() - z]);
                    spec.segments
                        .push(Segment::Literal((BLOCK_SIZE as usize - z) as u32));
                    spec.segments
                        .push(Segment::Fill(cl.len, z as u32, offered[k] as u32));
                }
                used += u64::from(cl.len);
            }
            // What was offered past the piece's last pcluster: content, no output.
            if u.content > used {
                spec.segments
                    .push(Segment::Sparse((u.content - used) as u32));
            }
            content.extend_from_slice(&piece);
            pos = self.span(u).1;
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
