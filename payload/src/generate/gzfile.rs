//! gzip files inside ext4 and uncompressed EROFS images (Debian's changelogs and manual
//! pages, compressed data files): RECOMPRESS operations that carry a delta of the
//! decompressed content and build the deflate stream again on apply with preflate-rs's
//! corrections ([`crate::gzip`]), as update_engine's puffin does with its own encoding.
//!
//! A changed `.gz` file shares nothing with its old version's deflate stream past the
//! first change (a changelog grows at its head), and new ones compress no further; their
//! content does, against the old content and against each other (the changelogs of one
//! source package's binaries are one text). Header and trailer travel as literal bytes.

use std::collections::HashMap;

use super::{claim, fs_files, par_map, push_extent, range, Kind};
use crate::error::{Error, Result};
use crate::format::{Operation, BLOCK_SIZE, MAX_OP_BYTES};
use crate::gzip::{analyze, header_len, prefix_len};
use crate::recompress::{Segment, Spec, MAX_CONTENT};
use crate::squashfs::{decompress, Codec};

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

    fn size(&self) -> u64 {
        (self.header + self.deflate + 8) as u64
    }

    /// Bytes of the file its blocks hold (all, or all but an inline tail).
    fn in_blocks(&self) -> u64 {
        self.blocks() * BLOCK_SIZE
    }
}

/// A target gzip file to re-create, with preflate's corrections and its old version.
#[derive(Clone, Debug)]
struct Unit {
    new: Gz,
    corrections: Vec<u8>,
    /// The old version and the content bytes its blocks surely give (all, unless an
    /// EROFS inline tail holds the end of its stream).
    old: Option<(Gz, usize)>,
}

/// One RECOMPRESS operation to make.
pub(super) struct Job {
    units: Vec<Unit>,
}

impl Job {
    /// Target blocks it writes.
    pub(super) fn blocks(&self) -> u64 {
        self.units.iter().map(|u| u.new.blocks()).sum()
    }
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

/// A file's gzip layout and its content: one member whose deflate stream ends where the
/// 8-byte trailer begins, with the trailer's CRC and length matching the content.
fn parse(img: &[u8], f: &crate::ext4::File) -> Option<(Gz, Vec<u8>)> {
    if f.size > MAX_FILE_CONTENT as u64 {
        return None;
    }
    let bytes = file_bytes(img, &f.extents, f.size, f.inline_tail)?;
    let header = header_len(&bytes)?;
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

/// The target's changed gzip files preflate re-creates, grouped into operations with
/// their old versions (same path) as reference. Marks their blocks [`Kind::InFile`].
pub(super) fn plan(source: &[u8], target: &[u8], kinds: &mut [Kind], threads: usize) -> Vec<Job> {
    let changed: Vec<crate::ext4::File> = fs_files(target)
        .into_iter()
        .filter(|f| {
            f.size <= MAX_FILE_CONTENT as u64
                && f.extents
                    .iter()
                    .any(|&(s, l)| (s..s + l).any(|b| kinds.get(b as usize) == Some(&Kind::New)))
                && f.extents.first().is_some_and(|&(s, _)| {
                    target
                        .get((s * BLOCK_SIZE) as usize..)
                        .is_some_and(|b| b.starts_with(&[0x1f, 0x8b, 8]))
                })
        })
        .collect();
    if changed.is_empty() {
        return Vec::new();
    }
    let old_files = fs_files(source);
    let old: HashMap<&str, &crate::ext4::File> =
        old_files.iter().map(|f| (f.path.as_str(), f)).collect();
    let found: Vec<Option<Unit>> = par_map(changed, threads, |f| {
        let (new, content) = parse(target, &f)?;
        // Its blocks must hold more than the header for the stream to write any of them.
        if new.in_blocks() <= new.header as u64 {
            return None;
        }
        let bytes = file_bytes(target, &f.extents, f.size, f.inline_tail)?;
        let (again, corrections) = analyze(
            &bytes[new.header..new.header + new.deflate],
            MAX_FILE_CONTENT,
        )?;
        // Corrections travel with the literal bytes, which never exceed the output.
        let placed = (new.deflate as u64).min(new.in_blocks() - new.header as u64);
        if again != content || corrections.len() as u64 > placed {
            return None;
        }
        let old = old.get(f.path.as_str()).and_then(|o| {
            let (g, text) = parse(source, o)?;
            let bytes = file_bytes(source, &o.extents, o.size, o.inline_tail)?;
            let (from, to) = (g.header, g.header + g.deflate);
            let end = to.min(usize::try_from(g.in_blocks()).ok()?);
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
    let mut units: Vec<Unit> = found.into_iter().flatten().collect();
    // Paired files in target order; new ones by name, so like content follows like.
    let name = |u: &Unit| {
        u.new
            .path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    units.sort_by_cached_key(|u| {
        (
            u.old.is_none(),
            u.old.is_none().then(|| name(u)),
            u.new.extents.first().map_or(0, |e| e.0),
        )
    });
    let mut jobs: Vec<Job> = Vec::new();
    let (mut content, mut reference, mut tblocks, mut sblocks) = (0usize, 0usize, 0u64, 0u64);
    let (mut sources, mut largest) = (0usize, 0usize);
    for u in units {
        let (c, r) = (u.new.content, u.old.as_ref().map_or(0, |o| o.1));
        let (t, s) = (u.new.blocks(), u.old.as_ref().map_or(0, |o| o.0.blocks()));
        let n = usize::from(u.old.is_some());
        let fits = jobs.last().is_some_and(|j| {
            j.units.last().map(|l| l.old.is_none()) == Some(u.old.is_none())
                && content + c <= OP_CONTENT
                && reference + r <= OP_CONTENT
                && (tblocks + t) * BLOCK_SIZE <= MAX_OP_BYTES
                && (sblocks + s) * BLOCK_SIZE <= MAX_OP_BYTES
                // The applier bounds the reference by its sources times the block size.
                && (sources + n) * block_size(largest.max(c).max(r)) <= MAX_CONTENT
        });
        if !fits {
            jobs.push(Job { units: Vec::new() });
            (content, reference, tblocks, sblocks, sources, largest) = (0, 0, 0, 0, 0, 0);
        }
        (content, reference, tblocks, sblocks) =
            (content + c, reference + r, tblocks + t, sblocks + s);
        (sources, largest) = (sources + n, largest.max(c).max(r));
        for &(s, l) in &u.new.extents {
            claim(kinds, s, s + l);
        }
        if let Some(j) = jobs.last_mut() {
            j.units.push(u);
        }
    }
    jobs
}

/// One RECOMPRESS operation and its blob.
pub(super) fn encode(
    source: &[u8],
    target: &[u8],
    job: &Job,
    level: i32,
) -> Result<(Operation, Vec<u8>)> {
    let bad = |g: &Gz| Error::Invalid(format!("{}: the gzip file does not decompress", g.path));
    let text = |img: &[u8], g: &Gz| -> Result<(Vec<u8>, Vec<u8>)> {
        let bytes = file_bytes(img, &g.extents, g.size(), g.tail).ok_or_else(|| bad(g))?;
        let stream = &bytes[g.header..g.header + g.deflate];
        let content =
            decompress(Codec::GzipFile, stream, MAX_FILE_CONTENT).ok_or_else(|| bad(g))?;
        Ok((bytes, content))
    };
    let bs = block_size(
        job.units
            .iter()
            .map(|u| u.new.content.max(u.old.as_ref().map_or(0, |o| o.1)))
            .max()
            .unwrap_or(1),
    );
    let mut spec = Spec {
        codec: Codec::GzipFile,
        level: 0,
        block_size: bs as u32,
        skip: 0,
        sources: Vec::new(),
        taken: Vec::new(),
        segments: Vec::new(),
    };
    let (mut content, mut old, mut literal) = (Vec::new(), Vec::new(), Vec::new());
    let (mut target_ext, mut source_ext) = (Vec::new(), Vec::new());
    let mut source_at = 0u64;
    for u in &job.units {
        let g = &u.new;
        let (_, new_text) = text(target, g)?;
        // The file's blocks: the header, as much of the stream from content and
        // corrections as they hold, then the trailer and the rest of the last block.
        let mut blocks = Vec::new();
        for &(s, l) in &g.extents {
            push_extent(&mut target_ext, s, l);
            blocks.extend_from_slice(&range(target, s, l));
        }
        let placed = g.deflate.min(blocks.len() - g.header);
        literal.extend_from_slice(&blocks[..g.header]);
        spec.segments.push(Segment::Literal(g.header as u32));
        spec.segments.push(Segment::Preflate(
            new_text.len() as u32,
            g.deflate as u32,
            u.corrections.len() as u32,
            placed as u32,
        ));
        literal.extend_from_slice(&u.corrections);
        content.extend_from_slice(&new_text);
        let rest = &blocks[g.header + placed..];
        if !rest.is_empty() {
            literal.extend_from_slice(rest);
            spec.segments.push(Segment::Literal(rest.len() as u32));
        }
        if let Some((o, taken)) = &u.old {
            let t = text(source, o)?.1;
            old.extend_from_slice(t.get(..*taken).ok_or_else(|| bad(o))?);
            let w = (o.deflate as u64).min(o.in_blocks() - o.header as u64);
            spec.sources.push((source_at + o.header as u64, w as u32));
            spec.taken.push(*taken as u32);
            for &(s, l) in &o.extents {
                push_extent(&mut source_ext, s, l);
                source_at += l * BLOCK_SIZE;
            }
        }
    }
    super::recompress_op(
        source,
        source_ext,
        target_ext,
        &super::Recreated {
            spec: &spec,
            content: &content,
            old: &old,
            literal: &literal,
        },
        level,
    )
}
