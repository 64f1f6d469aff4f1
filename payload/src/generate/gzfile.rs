//! gzip files inside ext4 and uncompressed EROFS images (Debian's changelogs and manual
//! pages, compressed data files): RECOMPRESS operations that carry a delta of the
//! decompressed content and build the deflate stream again on apply with preflate-rs's
//! corrections ([`crate::codec::gzip`]), as update_engine's puffin does with its own encoding.
//!
//! A changed `.gz` file shares nothing with its old version's deflate stream past the
//! first change (a changelog grows at its head), and new ones compress no further; their
//! content does, against the old content and against each other (the changelogs of one
//! source package's binaries are one text). Header and trailer travel as literal bytes.
//!
//! EROFS keeps a file's last partial block beside its inode, in a metadata block shared
//! with other inodes: an operation writes those blocks too, the stream's end where the
//! tail lies and the rest as literal bytes against the old metadata blocks of the same
//! paths (among its source extents).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::blocks::{claim, fs_files, meta_refs, push_extent, range, Kind};
use super::encode::{recompress_op, Recreated};
use crate::codec::gzip::{analyze, header_len, prefix_len};
use crate::codec::{decompress, Codec};
use crate::error::{Error, Result};
use crate::format::{Operation, BLOCK_SIZE, MAX_OP_BYTES};
use crate::recompress::{Segment, Spec, MAX_CONTENT};

/// Largest decompressed content of one file (a RECOMPRESS block).
const MAX_FILE_CONTENT: usize = 1 << 20;
/// Decompressed content (and reference) of one operation.
const OP_CONTENT: usize = 4 << 20;

/// One gzip file: where its blocks are and where its deflate stream lies in them.
#[derive(Clone, Debug)]
struct Gz {
    path: String,
    /// (first block, count) in file order.
    extents: Vec<(u64, u64)>,
    /// Header bytes before the deflate stream.
    header: usize,
    /// Length of the deflate stream.
    deflate: usize,
    /// Decompressed length.
    content: usize,
    /// EROFS: where the file's last bytes lie beside its inode (not in its blocks).
    tail: Option<u64>,
}

impl Gz {
    fn blocks(&self) -> u64 {
        self.extents.iter().map(|e| e.1).sum()
    }

    /// The metadata block holding its inline tail, if it has one.
    fn tail_block(&self) -> Option<u64> {
        self.tail.map(|at| at / BLOCK_SIZE)
    }

    fn size(&self) -> u64 {
        (self.header + self.deflate + 8) as u64
    }

    /// Bytes of the file its blocks hold (all, or all but an inline tail).
    fn in_blocks(&self) -> u64 {
        self.blocks() * BLOCK_SIZE
    }

    /// Bytes of its deflate stream beside its inode (EROFS), after those in its blocks.
    fn stream_in_tail(&self) -> usize {
        match self.tail {
            Some(_) => (self.header + self.deflate).saturating_sub(self.in_blocks() as usize),
            None => 0,
        }
    }
}

/// A target gzip file to re-create, with preflate's corrections and its old version.
#[derive(Clone, Debug)]
struct Unit {
    new: Gz,
    corrections: Vec<u8>,
    /// The old version and the content bytes it gives: all, its stream's end beside
    /// its inode (EROFS) read from the old metadata block, unless its stream starts
    /// there (then what its blocks surely give).
    old: Option<(Gz, usize)>,
}

/// The bytes of a file with `extents`, `size` bytes and maybe an inline tail, if every
/// block is in `img` and there are no holes.
fn file_bytes(img: &[u8], extents: &[(u64, u64)], size: u64, tail: Option<u64>) -> Option<Vec<u8>> {
    let blocks: u64 = extents.iter().map(|e| e.1).sum();
    let tail_len = usize::try_from(size % BLOCK_SIZE).ok()?;
    let whole = match tail {
        Some(_) => blocks == size / BLOCK_SIZE && tail_len > 0,
        None => blocks == size.div_ceil(BLOCK_SIZE),
    };
    if !whole {
        return None;
    }
    let mut out = Vec::with_capacity(usize::try_from(blocks * BLOCK_SIZE).ok()? + tail_len);
    for &(s, l) in extents {
        let a = usize::try_from(s.checked_mul(BLOCK_SIZE)?).ok()?;
        let b = a.checked_add(usize::try_from(l.checked_mul(BLOCK_SIZE)?).ok()?)?;
        out.extend_from_slice(img.get(a..b)?);
    }
    if let Some(at) = tail {
        let at = usize::try_from(at).ok()?;
        out.extend_from_slice(img.get(at..at.checked_add(tail_len)?)?);
    }
    out.truncate(usize::try_from(size).ok()?);
    Some(out)
}

/// A file's bytes, if it is small enough to be a gzip file taken here.
fn read(img: &[u8], f: &crate::fs::ext4::File) -> Option<Vec<u8>> {
    if f.size > MAX_FILE_CONTENT as u64 {
        return None;
    }
    file_bytes(img, &f.extents, f.size, f.inline_tail)
}

/// The gzip layout of file `f` (its `bytes`, from [`read`]) and its content: one member
/// whose deflate stream ends where the 8-byte trailer begins, with the trailer's CRC and
/// length matching the content.
fn parse(f: &crate::fs::ext4::File, bytes: &[u8]) -> Option<(Gz, Vec<u8>)> {
    let header = header_len(bytes)?;
    let deflate = bytes.len() - header - 8;
    let content = decompress(
        Codec::GzipFile,
        &bytes[header..header + deflate],
        MAX_FILE_CONTENT,
    )?;
    let trailer = &bytes[bytes.len() - 8..];
    let mut crc = flate2::Crc::new();
    crc.update(&content);
    let ok = trailer[..4] == crc.sum().to_le_bytes()
        && trailer[4..] == (content.len() as u32).to_le_bytes()
        && !content.is_empty();
    ok.then(|| {
        (
            Gz {
                path: f.path.clone(),
                extents: f.extents.clone(),
                header,
                deflate,
                content: content.len(),
                tail: f.inline_tail,
            },
            content,
        )
    })
}

/// The blob's block size for contents of up to `largest` bytes: each file's content is
/// one block.
fn block_size(largest: usize) -> usize {
    largest.max(1).next_multiple_of(BLOCK_SIZE as usize)
}

/// gzip files whose tails share one metadata block (or one file without a tail): they go
/// into one operation with that block.
struct Cluster {
    units: Vec<Unit>,
    meta: Option<u64>,
}

impl Cluster {
    fn content(&self) -> usize {
        self.units.iter().map(|u| u.new.content).sum()
    }
    fn reference(&self) -> usize {
        self.units
            .iter()
            .map(|u| u.old.as_ref().map_or(0, |o| o.1))
            .sum()
    }
    fn largest(&self) -> usize {
        self.units
            .iter()
            .map(|u| u.new.content.max(u.old.as_ref().map_or(0, |o| o.1)))
            .max()
            .unwrap_or(0)
    }
    fn sources(&self) -> usize {
        self.units.iter().filter(|u| u.old.is_some()).count()
    }
    fn target_blocks(&self) -> u64 {
        self.units.iter().map(|u| u.new.blocks()).sum::<u64>() + u64::from(self.meta.is_some())
    }
    /// Old metadata blocks it reads: those of the paths in its metadata block, and those
    /// holding old versions' stream ends (or whole old versions) beside their inodes.
    fn meta_sources(&self, meta_refs: &BTreeMap<u64, BTreeSet<u64>>) -> BTreeSet<u64> {
        let mut out: BTreeSet<u64> = self
            .meta
            .and_then(|m| meta_refs.get(&m))
            .cloned()
            .unwrap_or_default();
        out.extend(
            self.units
                .iter()
                .filter_map(|u| u.old.as_ref())
                .filter(|o| o.0.stream_in_tail() > 0)
                .filter_map(|o| o.0.tail_block()),
        );
        out
    }
    fn source_blocks(&self, meta_refs: &BTreeMap<u64, BTreeSet<u64>>) -> u64 {
        let data: u64 = self
            .units
            .iter()
            .filter_map(|u| u.old.as_ref())
            .map(|o| o.0.blocks())
            .sum();
        data + self.meta_sources(meta_refs).len() as u64
    }
}

/// One RECOMPRESS operation to make.
pub(super) struct Job {
    units: Vec<Unit>,
    /// Metadata blocks it writes (holding its files' tails).
    meta: Vec<u64>,
    /// Old metadata blocks it reads (see [`Cluster::meta_sources`]).
    meta_sources: BTreeSet<u64>,
}

impl Job {
    /// Target blocks it writes.
    pub(super) fn blocks(&self) -> u64 {
        self.units.iter().map(|u| u.new.blocks()).sum::<u64>() + self.meta.len() as u64
    }
}

/// The target's changed gzip files preflate re-creates, grouped into operations with
/// their old versions (same path) as reference. Marks their blocks (and the metadata
/// blocks holding their tails) [`Kind::InFile`].
pub(super) fn plan(source: &[u8], target: &[u8], kinds: &mut [Kind], threads: usize) -> Vec<Job> {
    let is_new = |b: u64| kinds.get(b as usize) == Some(&Kind::New);
    let changed: Vec<crate::fs::ext4::File> = fs_files(target)
        .into_iter()
        .filter(|f| {
            let first = f
                .extents
                .first()
                .map(|e| e.0 * BLOCK_SIZE)
                .or(f.inline_tail);
            f.size <= MAX_FILE_CONTENT as u64
                && (f.extents.iter().any(|&(s, l)| (s..s + l).any(is_new))
                    || f.inline_tail.is_some_and(|at| is_new(at / BLOCK_SIZE)))
                && first.is_some_and(|at| {
                    target
                        .get(at as usize..)
                        .is_some_and(|b| b.starts_with(&[0x1f, 0x8b, 8]))
                })
        })
        .collect();
    if changed.is_empty() {
        return Vec::new();
    }
    let old_files = fs_files(source);
    let old: HashMap<&str, &crate::fs::ext4::File> =
        old_files.iter().map(|f| (f.path.as_str(), f)).collect();
    let found: Vec<Option<Unit>> = keel_io::Threads::exactly(threads).map(changed, |f| {
        let bytes = read(target, &f)?;
        let old_file = old.get(f.path.as_str()).copied();
        let old_bytes = old_file.and_then(|o| read(source, o));
        // Unchanged, though its metadata block changed: the block diff keeps it.
        if old_bytes.as_ref() == Some(&bytes) {
            return None;
        }
        let (new, content) = parse(&f, &bytes)?;
        let (again, corrections) = analyze(
            &bytes[new.header..new.header + new.deflate],
            MAX_FILE_CONTENT,
        )?;
        // Corrections travel with the literal bytes, which never exceed the output.
        if again != content || corrections.len() > new.deflate {
            return None;
        }
        let old = old_file.zip(old_bytes).and_then(|(o, bytes)| {
            let (g, text) = parse(o, &bytes)?;
            if g.blocks() == 0 {
                // All of it beside its inode: whole, in the old metadata block.
                return Some((g, text.len()));
            }
            let (from, to) = (g.header, g.header + g.deflate);
            let in_blocks = usize::try_from(g.in_blocks()).ok()?;
            if g.tail.is_some() && from < in_blocks {
                // The stream goes on beside the old inode: the old metadata block is read.
                return Some((g, text.len()));
            }
            let end = to.min(in_blocks);
            let taken = prefix_len(
                bytes.get(from..end)?,
                end == to,
                text.len(),
                MAX_FILE_CONTENT,
            );
            (taken > 0).then_some((g, taken))
        });
        Some(Unit {
            new,
            corrections,
            old,
        })
    });
    let units: Vec<Unit> = found.into_iter().flatten().collect();
    let refs = meta_refs(source, target);
    // Files whose tails share a metadata block go together.
    let mut by_meta: BTreeMap<u64, Vec<Unit>> = BTreeMap::new();
    let mut clusters: Vec<Cluster> = Vec::new();
    for u in units {
        match u.new.tail_block() {
            Some(m) => by_meta.entry(m).or_default().push(u),
            None => clusters.push(Cluster {
                units: vec![u],
                meta: None,
            }),
        }
    }
    clusters.extend(by_meta.into_iter().map(|(m, units)| Cluster {
        units,
        meta: Some(m),
    }));
    // Paired files in target order; new ones by name, so like content follows like.
    let key = |c: &Cluster| {
        let u = &c.units[0];
        let fresh = c.units.iter().all(|u| u.old.is_none());
        let name = u
            .new
            .path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let at = u.new.extents.first().map_or(c.meta.unwrap_or(0), |e| e.0);
        (fresh, fresh.then_some(name), at)
    };
    clusters.sort_by_cached_key(key);
    let mut jobs: Vec<Job> = Vec::new();
    let (mut content, mut reference, mut tblocks, mut sblocks) = (0usize, 0usize, 0u64, 0u64);
    let (mut sources, mut largest) = (0usize, 0usize);
    for c in clusters {
        let (cc, cr, ct, cs) = (
            c.content(),
            c.reference(),
            c.target_blocks(),
            c.source_blocks(&refs),
        );
        let bs = |l: usize| block_size(l.max(c.largest()));
        if ct * BLOCK_SIZE > MAX_OP_BYTES
            || cs * BLOCK_SIZE > MAX_OP_BYTES
            || c.sources() * bs(0) > MAX_CONTENT
            || cc > OP_CONTENT
            || cr > OP_CONTENT
        {
            continue;
        }
        let fits = !jobs.is_empty()
            && content + cc <= OP_CONTENT
            && reference + cr <= OP_CONTENT
            && (tblocks + ct) * BLOCK_SIZE <= MAX_OP_BYTES
            && (sblocks + cs) * BLOCK_SIZE <= MAX_OP_BYTES
            // The applier bounds the reference by its sources times the block size.
            && (sources + c.sources()) * bs(largest) <= MAX_CONTENT;
        if !fits {
            jobs.push(Job {
                units: Vec::new(),
                meta: Vec::new(),
                meta_sources: BTreeSet::new(),
            });
            (content, reference, tblocks, sblocks, sources, largest) = (0, 0, 0, 0, 0, 0);
        }
        (content, reference, tblocks, sblocks) =
            (content + cc, reference + cr, tblocks + ct, sblocks + cs);
        (sources, largest) = (sources + c.sources(), largest.max(c.largest()));
        let Some(j) = jobs.last_mut() else {
            continue;
        };
        for u in &c.units {
            for &(s, l) in &u.new.extents {
                claim(kinds, s, s + l);
            }
        }
        if let Some(m) = c.meta {
            claim(kinds, m, m + 1);
            j.meta.push(m);
        }
        j.meta_sources.extend(c.meta_sources(&refs));
        j.units.extend(c.units);
    }
    for j in &mut jobs {
        j.meta.sort_unstable();
    }
    jobs
}

/// Segments and literal bytes of an operation, built in output order.
struct Out<'a> {
    spec: Spec,
    content: Vec<u8>,
    literal: Vec<u8>,
    /// Per unit: the number of its stream's PREFLATE segment, once emitted.
    started: Vec<Option<u32>>,
    streams: u32,
    units: &'a [Unit],
}

impl Out<'_> {
    fn literal(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.literal.extend_from_slice(bytes);
        match self.spec.segments.last_mut() {
            Some(Segment::Literal(n)) => *n += bytes.len() as u32,
            _ => self
                .spec
                .segments
                .push(Segment::Literal(bytes.len() as u32)),
        }
    }

    /// Bytes `at..at + here.len()` of unit `i`'s file (`here` as the target holds them;
    /// past the file's end, padding): the stream's part is built, the rest literal.
    fn file_part(&mut self, i: usize, at: usize, here: &[u8], text: &[u8]) {
        let u = &self.units[i];
        let (h, d) = (u.new.header, u.new.deflate);
        let end = at + here.len();
        // The stream's bytes within this part (a header may run past the part).
        let (sa, sb) = (h.clamp(at, end), (h + d).clamp(at, end));
        self.literal(&here[..sa - at]);
        if sb > sa {
            if let Some(k) = self.started[i] {
                self.spec.segments.push(Segment::Rest((sb - sa) as u32, k));
            } else {
                self.started[i] = Some(self.streams);
                self.streams += 1;
                self.spec.segments.push(Segment::Preflate(
                    text.len() as u32,
                    d as u32,
                    u.corrections.len() as u32,
                    (sb - sa) as u32,
                ));
                self.literal.extend_from_slice(&u.corrections);
                self.content.extend_from_slice(text);
            }
        }
        self.literal(&here[sb - at..]);
    }
}

/// One RECOMPRESS operation and its blob.
pub(super) fn encode(
    source: &[u8],
    target: &[u8],
    job: &Job,
    level: i32,
) -> Result<(Operation, Vec<u8>)> {
    let bad = |g: &Gz| Error::Undecodable {
        image: "gzip file",
        what: g.path.clone(),
    };
    let text = |img: &[u8], g: &Gz| -> Result<Vec<u8>> {
        let bytes = file_bytes(img, &g.extents, g.size(), g.tail).ok_or_else(|| bad(g))?;
        let stream = &bytes[g.header..g.header + g.deflate];
        decompress(Codec::GzipFile, stream, MAX_FILE_CONTENT).ok_or_else(|| bad(g))
    };
    let bs = block_size(
        job.units
            .iter()
            .map(|u| u.new.content.max(u.old.as_ref().map_or(0, |o| o.1)))
            .max()
            .unwrap_or(1),
    );
    // Source extents: the old files' blocks, then the old metadata blocks.
    let (mut source_ext, mut old) = (Vec::new(), Vec::new());
    let mut sources = Vec::new();
    let mut source_at = 0u64;
    let (mut old_inline, mut old_tails) = (Vec::new(), Vec::new());
    for u in &job.units {
        let Some((o, taken)) = &u.old else {
            continue;
        };
        let t = text(source, o)?;
        old.extend_from_slice(t.get(..*taken).ok_or_else(|| bad(o))?);
        if o.blocks() == 0 {
            // Whole beside its inode: found in its old metadata block, below.
            old_inline.push((sources.len(), o));
            sources.push((0, o.deflate as u32, *taken as u32));
            continue;
        }
        let w = (o.deflate as u64).min(o.in_blocks() - o.header as u64);
        if o.stream_in_tail() > 0 {
            old_tails.push((sources.len(), o));
        }
        sources.push((source_at + o.header as u64, w as u32, *taken as u32));
        for &(s, l) in &o.extents {
            push_extent(&mut source_ext, s, l);
            source_at += l * BLOCK_SIZE;
        }
    }
    let mut meta_at = HashMap::new();
    for &b in &job.meta_sources {
        meta_at.insert(b, source_at);
        push_extent(&mut source_ext, b, 1);
        source_at += BLOCK_SIZE;
    }
    // Where an old file's bytes beside its inode lie in the source extents.
    let beside_inode = |o: &Gz| -> Result<u64> {
        let (b, at) = (o.tail_block().unwrap_or(0), o.tail.unwrap_or(0));
        let block = meta_at.get(&b).ok_or_else(|| {
            Error::Internal(format!("{}: its old metadata block is not read", o.path))
        })?;
        Ok(block + at % BLOCK_SIZE)
    };
    for (k, o) in old_inline {
        sources[k].0 = beside_inode(o)? + o.header as u64;
    }
    let mut tails = vec![(0u64, 0u32); sources.len()];
    for (k, o) in old_tails {
        tails[k] = (beside_inode(o)?, o.stream_in_tail() as u32);
    }
    let mut out = Out {
        spec: Spec {
            codec: Codec::GzipFile,
            level: 0,
            block_size: bs as u32,
            skip: 0,
            sources: sources.iter().map(|s| (s.0, s.1)).collect(),
            taken: sources.iter().map(|s| s.2).collect(),
            tails,
            segments: Vec::new(),
        },
        content: Vec::new(),
        literal: Vec::new(),
        started: vec![None; job.units.len()],
        streams: 0,
        units: &job.units,
    };
    let texts: Vec<Vec<u8>> = job
        .units
        .iter()
        .map(|u| text(target, &u.new))
        .collect::<Result<_>>()?;
    // The files' blocks, then the metadata blocks with their tails.
    let mut target_ext = Vec::new();
    for (i, u) in job.units.iter().enumerate() {
        let mut at = 0usize;
        for &(s, l) in &u.new.extents {
            push_extent(&mut target_ext, s, l);
            let here = range(target, s, l);
            out.file_part(i, at, &here, &texts[i]);
            at += here.len();
        }
    }
    for &m in &job.meta {
        push_extent(&mut target_ext, m, 1);
        let block = range(target, m, 1);
        let mut tails: Vec<(usize, usize)> = job
            .units
            .iter()
            .enumerate()
            .filter(|(_, u)| u.new.tail_block() == Some(m))
            .map(|(i, u)| (u.new.tail.unwrap_or(0) as usize % BLOCK_SIZE as usize, i))
            .collect();
        tails.sort_unstable();
        let mut pos = 0usize;
        for (off, i) in tails {
            let g = &job.units[i].new;
            let len = (g.size() % BLOCK_SIZE) as usize;
            out.literal(&block[pos..off]);
            out.file_part(i, g.in_blocks() as usize, &block[off..off + len], &texts[i]);
            pos = off + len;
        }
        out.literal(&block[pos..]);
    }
    recompress_op(
        source,
        source_ext,
        target_ext,
        &Recreated {
            spec: &out.spec,
            content: &out.content,
            old: &old,
            literal: &out.literal,
            literal_patched: true,
        },
        level,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::io::Write;

    /// A file given in parts that split its header (a long name runs past the first
    /// block) comes out as one literal header, the stream, and the trailer: never an
    /// index past a part.
    #[test]
    fn parts_that_split_a_header_make_whole_segments() {
        let text = crate::testdata::compressible(3, 20_000);
        let mut gz = flate2::GzBuilder::new()
            .filename(vec![b'n'; 6000])
            .write(Vec::new(), flate2::Compression::best());
        gz.write_all(&text).unwrap();
        let bytes = gz.finish().unwrap();
        let header = header_len(&bytes).unwrap();
        let deflate = bytes.len() - header - 8;
        let (content, corrections) =
            analyze(&bytes[header..header + deflate], MAX_FILE_CONTENT).unwrap();
        let unit = Unit {
            new: Gz {
                path: "/a.gz".into(),
                extents: vec![(0, 1), (5, 2)],
                header,
                deflate,
                content: content.len(),
                tail: None,
            },
            corrections: corrections.clone(),
            old: None,
        };
        let units = [unit];
        let mut out = Out {
            spec: Spec {
                codec: Codec::GzipFile,
                level: 0,
                block_size: 64 << 10,
                skip: 0,
                sources: Vec::new(),
                taken: Vec::new(),
                tails: Vec::new(),
                segments: Vec::new(),
            },
            content: Vec::new(),
            literal: Vec::new(),
            started: vec![None],
            streams: 0,
            units: &units,
        };
        let mut padded = bytes.clone();
        padded.resize(bytes.len().next_multiple_of(4096), 0);
        out.file_part(0, 0, &padded[..4096], &content);
        out.file_part(0, 4096, &padded[4096..], &content);
        let tail = padded.len() - header - deflate;
        assert_eq!(
            out.spec.segments,
            vec![
                Segment::Literal(header as u32),
                Segment::Preflate(
                    content.len() as u32,
                    deflate as u32,
                    corrections.len() as u32,
                    deflate as u32
                ),
                Segment::Literal(tail as u32),
            ]
        );
        assert!(
            out.literal == [&bytes[..header], &corrections, &padded[header + deflate..]].concat()
        );
        assert!(out.content == content);
    }
}
