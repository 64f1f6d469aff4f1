//! RECOMPRESS operations applied: the blob ([`crate::recompress`]) read, the reference
//! blocks decompressed from the source extents, the content and literal frames decoded,
//! and the target blocks compressed again, on every core, each checked against its
//! recorded length.
//!
//! Compressed blocks of a changed file share nothing with the old version's blocks, so a
//! delta over them is as large as the file. On the decompressed content the delta is as
//! small as the change; the applier compresses the content again with the same
//! compressor and level. That reproduces the target's bytes only with the same compressor
//! version, so the generator checks every block before it chooses this operation, the
//! manifest names the version, and an applier with another refuses before writing.

use crate::codec::recompress::{recompressor_for, Compressor};
use crate::codec::{zstd::unframe, Codec};
use crate::fs::squashfs::STORED;
use crate::recompress::{Segment, MAX_CONTENT, MAX_FRAME_DICT, XZ_FRAME};

/// Largest squashfs block.
const MAX_BLOCK: u32 = 1 << 20;

/// The operation's output (`out_len` bytes: its target blocks) from its blob and its
/// source extents' bytes; the reason when the blob is malformed or a block does not
/// come out at its recorded length.
pub(crate) fn build(
    blob: &[u8],
    reference: &[u8],
    out_len: usize,
    codec: Codec,
) -> Result<Vec<u8>, String> {
    let mut c = keel_io::Cursor::new(blob, 0);
    let e = |e: keel_io::CursorError| format!("{} at blob offset {}: truncated", e.field, e.offset);
    let id = c.u8("compressor").map_err(e)?;
    // The manifest names a library and its version; the blob, which of its compressors
    // (lz4 makes both squashfs's blocks and EROFS's pclusters).
    let codec = Codec::from_blob_id(id)
        .filter(|&b| recompressor_for(b) == recompressor_for(codec))
        .ok_or_else(|| {
            format!(
                "compressor {id}: the manifest names {} ({})",
                codec.id(),
                recompressor_for(codec)
            )
        })?;
    let level = c.u32("level").map_err(e)? as i32;
    let block_size = c.u32("block size").map_err(e)?;
    if !(1..=MAX_BLOCK).contains(&block_size) {
        return Err(format!("block size {block_size}: at most {MAX_BLOCK}"));
    }
    if codec == Codec::ErofsLz4 && block_size != 4096 {
        return Err(format!(
            "pcluster size {block_size}: only 4096 is re-created"
        ));
    }
    let bs = block_size as usize;
    let skip = c.u32("skip").map_err(e)? as usize;
    let total = skip
        .checked_add(out_len)
        .filter(|_| skip <= bs + 4096)
        .ok_or_else(|| format!("skip {skip}: more than a block"))?;
    let sources = c.u32("source block count").map_err(e)? as usize;
    if sources.saturating_mul(bs) > MAX_CONTENT {
        return Err(format!(
            "{sources} source blocks of {bs}: more than {MAX_CONTENT} bytes"
        ));
    }
    // The reference: each source block decompressed.
    let mut s = Vec::new();
    for _ in 0..sources {
        let off = c.u64("source block offset").map_err(e)?;
        let w = c.u32("source block size").map_err(e)?;
        if codec == Codec::GzipFile {
            let taken = c.u32("source content length").map_err(e)? as usize;
            if taken > bs {
                return Err(format!("source content length {taken}: more than {bs}"));
            }
            let tail = match c.u32("source tail length").map_err(e)? {
                0 => None,
                len => Some((c.u64("source tail offset").map_err(e)?, len)),
            };
            crate::codec::gzip::inflate_prefix(reference, (off, w), tail, taken, &mut s)
                .ok_or_else(|| {
                    let tail =
                        tail.map_or(String::new(), |(at, len)| format!(" and at {at} (+{len})"));
                    format!(
                        "the gzip stream at {off} (+{w}){tail} in the source extents does not \
                         give {taken} bytes (at most {bs})"
                    )
                })?;
            continue;
        }
        crate::fs::squashfs::block_content(codec, reference, off, w, bs, &mut s).ok_or_else(
            || {
                format!(
                    "source block at {off} (+{}) lies outside the source extents or does not \
                 decompress",
                    w & (STORED - 1)
                )
            },
        )?;
        // An lz4 pcluster's content is larger than its block.
        if s.len() > MAX_CONTENT {
            return Err(format!(
                "source blocks decompress to more than {MAX_CONTENT} bytes"
            ));
        }
    }
    let n = c.u32("segment count").map_err(e)? as usize;
    // Five bytes at least each.
    if n > total || n > c.remaining() / 5 {
        return Err(format!("{n} segments for {total} bytes"));
    }
    let mut segments = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = c.u8("segment kind").map_err(e)?;
        let len = c.u32("segment length").map_err(e)?;
        let seg = match kind {
            0 => Segment::Literal(len),
            1 => Segment::Compress(len, c.u32("compressed length").map_err(e)?),
            2 => Segment::Stored(len),
            3 => Segment::Sparse(len),
            4 if codec == Codec::ErofsLz4 => Segment::Fill(
                len,
                c.u32("compressed length").map_err(e)?,
                c.u32("offered length").map_err(e)?,
            ),
            5 if codec == Codec::GzipFile => Segment::Preflate(
                len,
                c.u32("stream length").map_err(e)?,
                c.u32("correction length").map_err(e)?,
                c.u32("placed length").map_err(e)?,
            ),
            6 if codec == Codec::GzipFile => Segment::Rest(len, c.u32("stream").map_err(e)?),
            k => return Err(format!("segment kind {k}")),
        };
        if codec == Codec::GzipFile && matches!(seg, Segment::Compress(..)) {
            return Err("a gzip file's stream is re-created from corrections".into());
        }
        if let Segment::Preflate(_, stream, _, placed) = seg {
            if placed > stream || stream > block_size.saturating_mul(2) {
                return Err(format!(
                    "a gzip stream of {stream} bytes placing {placed}: at most twice the \
                     {block_size}-byte block, and no more than its length"
                ));
            }
        }
        let content = !matches!(
            seg,
            Segment::Literal(_) | Segment::Fill(..) | Segment::Rest(..)
        );
        if let Segment::Fill(n, z, offered) = seg {
            if offered < n || offered as usize > MAX_CONTENT || z > block_size {
                return Err(format!(
                    "a pcluster taking {n} of {offered} content bytes into {z}: at most \
                     {MAX_CONTENT} bytes, into a {block_size}-byte pcluster"
                ));
            }
        }
        // EROFS: content offered to a piece's last pcluster and not taken is skipped.
        let skipped = codec == Codec::ErofsLz4 && matches!(seg, Segment::Sparse(_));
        if skipped && len as usize > MAX_CONTENT || !skipped && content && len > block_size {
            return Err(format!(
                "a segment of {len} content bytes: blocks hold {block_size}"
            ));
        }
        segments.push(seg);
    }
    let mut frame = |what: &'static str, prefix: &[u8], max: usize| -> Result<Vec<u8>, String> {
        let len = c.u64(what).map_err(e)?;
        if len > max as u64 {
            return Err(format!("{what} {len}: more than {max}"));
        }
        let word = c.u32(what).map_err(e)?;
        let f = c.take((word & !XZ_FRAME) as usize, what).map_err(e)?;
        match word & XZ_FRAME {
            0 => unframe(f, prefix, len, what),
            _ if what == "content" => {
                crate::codec::xz::decode_blob(f, prefix.into(), len as usize, MAX_FRAME_DICT)
                    .map_err(|why| format!("{what}: {why}"))
            }
            _ => Err(format!("{what}: only the content frame may be LZMA2")),
        }
    };
    let content = frame("content", &s, MAX_CONTENT)?;
    drop(s);
    // A gzip file's operation also writes the EROFS metadata blocks holding its tail:
    // their other bytes are literal, against the old blocks among the source extents.
    let literal_prefix = if codec == Codec::GzipFile {
        reference
    } else {
        &[]
    };
    let literal = frame("literal", literal_prefix, total)?;
    if c.remaining() != 0 {
        return Err(format!("{} bytes after the literal frame", c.remaining()));
    }
    // Each segment's place in the output is known from its recorded length, so the
    // blocks are compressed straight into their places, on every core.
    let produced: usize = segments
        .iter()
        .map(|s| match *s {
            Segment::Literal(n) | Segment::Stored(n) | Segment::Rest(n, _) => n as usize,
            Segment::Compress(_, c) | Segment::Fill(_, c, _) | Segment::Preflate(.., c) => {
                c as usize
            }
            Segment::Sparse(_) => 0,
        })
        .sum();
    let used = |pick: fn(&Segment) -> usize| -> usize { segments.iter().map(pick).sum() };
    let content_used = used(|s| match *s {
        Segment::Compress(n, _)
        | Segment::Stored(n)
        | Segment::Sparse(n)
        | Segment::Fill(n, ..)
        | Segment::Preflate(n, ..) => n as usize,
        Segment::Literal(_) | Segment::Rest(..) => 0,
    });
    let literal_used = used(|s| match *s {
        Segment::Literal(n) | Segment::Preflate(_, _, n, _) => n as usize,
        _ => 0,
    });
    if produced != total || content_used != content.len() || literal_used != literal.len() {
        return Err(format!(
            "the segments build {produced} bytes of {total}, use {content_used} content bytes \
             of {} and {literal_used} literal bytes of {}",
            content.len(),
            literal.len()
        ));
    }
    if codec == Codec::GzipFile {
        let mut out = gzip_streams(&segments, &content, &literal, total)?;
        out.drain(..skip);
        return Ok(out);
    }
    let mut out = vec![0u8; total];
    // (what the compressor is given, what it must take of it, where its output goes).
    let mut jobs: Vec<(&[u8], usize, &mut [u8])> = Vec::new();
    let (mut rest, mut ci, mut li) = (&mut out[..], 0usize, 0usize);
    for seg in &segments {
        let (n, place) = match *seg {
            Segment::Literal(n) | Segment::Stored(n) => (n as usize, n as usize),
            Segment::Compress(n, c) | Segment::Fill(n, c, _) => (n as usize, c as usize),
            Segment::Sparse(n) => (n as usize, 0),
            Segment::Preflate(..) | Segment::Rest(..) => {
                return Err("PREFLATE and REST are for gzip files".into())
            }
        };
        let (here, after) = std::mem::take(&mut rest).split_at_mut(place);
        rest = after;
        match *seg {
            Segment::Literal(_) => {
                here.copy_from_slice(&literal[li..li + n]);
                li += n;
            }
            Segment::Stored(_) => here.copy_from_slice(&content[ci..ci + n]),
            Segment::Compress(..) => jobs.push((&content[ci..ci + n], n, here)),
            Segment::Fill(_, _, offered) => {
                let offered = content.get(ci..ci + offered as usize).ok_or_else(|| {
                    format!(
                        "a pcluster offered {offered} content bytes at {ci} of {}",
                        content.len()
                    )
                })?;
                jobs.push((offered, n, here));
            }
            Segment::Sparse(_) | Segment::Preflate(..) | Segment::Rest(..) => {}
        }
        if !matches!(seg, Segment::Literal(_)) {
            ci += n;
        }
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len().div_ceil(4))
        .max(1);
    let per = jobs.len().div_ceil(threads).max(1);
    let results: Vec<Result<(), String>> = std::thread::scope(|sc| {
        let handles: Vec<_> = jobs
            .chunks_mut(per)
            .map(|chunk| sc.spawn(move || compress_all(chunk, codec, level, bs)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a compressing thread failed".into()))
            })
            .collect()
    });
    results.into_iter().collect::<Result<(), String>>()?;
    out.drain(..skip);
    Ok(out)
}

/// A gzip files' operation's output, segment by segment: each PREFLATE segment's
/// stream is built from its content and corrections, checked against its recorded
/// length, and placed in parts (its start, then RESTs).
fn gzip_streams(
    segments: &[Segment],
    content: &[u8],
    literal: &[u8],
    total: usize,
) -> Result<Vec<u8>, String> {
    // The streams are independent: each is re-created from its own content and
    // corrections, on every core (an operation holds the changed files of a whole
    // directory, and one such operation alone would keep one core busy for a third of a
    // second), then placed in order.
    let mut inputs = Vec::new();
    let (mut ci, mut li) = (0usize, 0usize);
    for seg in segments {
        match *seg {
            Segment::Literal(n) => li += n as usize,
            Segment::Preflate(n, len, k, _) => {
                let (n, k) = (n as usize, k as usize);
                inputs.push((&content[ci..ci + n], &literal[li..li + k], len as usize));
                (ci, li) = (ci + n, li + k);
            }
            _ => {}
        }
    }
    let mut made = keel_io::Threads::AllCores
        .map(inputs, |(content, corrections, len)| {
            let stream = crate::codec::gzip::recreate(content, corrections)?;
            if stream.len() != len {
                return Err(format!(
                    "a gzip stream came out {} bytes, the target's is {len}: the \
                     corrections do not fit the content",
                    stream.len()
                ));
            }
            Ok(stream)
        })
        .into_iter();
    let mut out = Vec::with_capacity(total);
    let mut li = 0usize;
    // Each stream and how much of it is placed.
    let mut streams: Vec<(Vec<u8>, usize)> = Vec::new();
    for seg in segments {
        match *seg {
            Segment::Literal(n) => {
                out.extend_from_slice(&literal[li..li + n as usize]);
                li += n as usize;
            }
            Segment::Preflate(_, _, k, first) => {
                let stream = made.next().ok_or("a gzip stream was not re-created")??;
                out.extend_from_slice(&stream[..first as usize]);
                li += k as usize;
                streams.push((stream, first as usize));
            }
            Segment::Rest(n, i) => {
                let (stream, placed) = streams
                    .get_mut(i as usize)
                    .ok_or_else(|| format!("REST of stream {i}: no such stream before it"))?;
                let part = stream.get(*placed..*placed + n as usize).ok_or_else(|| {
                    format!(
                        "{n} more bytes of the {}-byte gzip stream {i}, {placed} of it placed",
                        stream.len()
                    )
                })?;
                out.extend_from_slice(part);
                *placed += n as usize;
            }
            _ => return Err("a gzip file's segments are literal, PREFLATE and REST".into()),
        }
    }
    Ok(out)
}

/// Compress each job's content into its place, which must be exactly filled.
fn compress_all(
    jobs: &mut [(&[u8], usize, &mut [u8])],
    codec: Codec,
    level: i32,
    bs: usize,
) -> Result<(), String> {
    let mut compressor = Compressor::new(codec, level, bs)?;
    let mut scratch: Vec<u8> =
        Vec::with_capacity(zstd::zstd_safe::compress_bound(bs) + bs / 100 + 64);
    for (src, take, dst) in jobs.iter_mut() {
        if codec == Codec::ErofsLz4 {
            let taken = compressor.fill(src, &mut scratch)?;
            if taken != *take {
                return Err(format!(
                    "lz4 took {taken} content bytes into a pcluster, the target {take}: {} \
                     does not compress as the image's builder did",
                    recompressor_for(codec)
                ));
            }
        } else {
            compressor.compress(src, &mut scratch)?;
        }
        if scratch.len() != dst.len() {
            return Err(format!(
                "a block compressed to {} bytes, the target has {}: {} does not compress as \
                 the image's compressor did",
                scratch.len(),
                dst.len(),
                recompressor_for(codec)
            ));
        }
        dst.copy_from_slice(&scratch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recompress::{encode, encode_with, Spec};

    /// Blocks compressed here (so they reproduce whatever the zstd version), a stored
    /// block, a sparse one, literal bytes around them and a skipped head: built back
    /// exactly; then each kind of damage is an error, never a panic or a wrong result.
    #[test]
    fn blobs_build_back_and_damage_is_refused() {
        let bs = 4096usize;
        let old: Vec<u8> = (0..3 * bs).map(|i| (i / 7 % 251) as u8).collect();
        let mut new = old.clone();
        new[5000..5100].fill(9);
        let stored: Vec<u8> = keel_testsupport::seeded_bytes(3, bs);
        let (a, b) = (
            zstd::bulk::compress(&new[..bs], 5).unwrap(),
            zstd::bulk::compress(&new[bs..2 * bs], 5).unwrap(),
        );
        let reference_block = zstd::bulk::compress(&old[..2 * bs][bs..], 5).unwrap();
        let reference = [vec![0xEE; 100], reference_block.clone()].concat();
        let head = b"HEAD".to_vec();
        let tail = vec![7u8; 30];
        // Built stream: head (skipped 2 bytes), a, b, stored, a sparse block, tail.
        let expect = [&head[2..], &a, &b, &stored, &tail].concat();
        let spec = Spec {
            codec: Codec::Zstd,
            level: 5,
            block_size: bs as u32,
            skip: 2,
            sources: vec![(100, reference_block.len() as u32)],
            taken: Vec::new(),
            tails: Vec::new(),
            segments: vec![
                Segment::Literal(4),
                Segment::Compress(bs as u32, a.len() as u32),
                Segment::Compress(bs as u32, b.len() as u32),
                Segment::Stored(bs as u32),
                Segment::Sparse(bs as u32),
                Segment::Literal(30),
            ],
        };
        let content = [&new[..2 * bs], &stored, &vec![0u8; bs]].concat();
        let s = &old[bs..2 * bs];
        let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 3, s).unwrap();
        std::io::Write::write_all(&mut enc, &content).unwrap();
        let frame = enc.finish().unwrap();
        let literal = [head, tail].concat();
        let lit = zstd::bulk::compress(&literal, 3).unwrap();
        let blob = encode(
            &spec,
            content.len() as u64,
            &frame,
            literal.len() as u64,
            &lit,
        );
        assert_eq!(
            build(&blob, &reference, expect.len(), Codec::Zstd).unwrap(),
            expect
        );
        // The output's length is the operation's: any other is refused.
        assert!(build(&blob, &reference, expect.len() - 1, Codec::Zstd).is_err());
        assert!(build(&blob, &reference, expect.len() + 1, Codec::Zstd).is_err());
        // A block recorded at another compressed length (another compressor version).
        let mut other = spec.clone();
        other.segments[1] = Segment::Compress(bs as u32, a.len() as u32 + 1);
        other.segments[2] = Segment::Compress(bs as u32, b.len() as u32 - 1);
        let e = build(
            &encode(
                &other,
                content.len() as u64,
                &frame,
                literal.len() as u64,
                &lit,
            ),
            &reference,
            expect.len(),
            Codec::Zstd,
        );
        assert!(e.unwrap_err().contains("does not compress as"));
        // A blob for another compressor than the manifest names.
        assert!(build(&blob, &reference, expect.len(), Codec::Gzip).is_err());
        // The content as an LZMA2 blob with S as preset dictionary builds the same; the
        // literal frame marked so, or a damaged one, is refused.
        let xz = crate::codec::xz::encode_blob(&content, s, false).unwrap();
        let with_xz = |xz: &[u8]| {
            encode_with(
                &spec,
                (content.len() as u64, xz, true),
                literal.len() as u64,
                &lit,
            )
        };
        assert_eq!(
            build(&with_xz(&xz), &reference, expect.len(), Codec::Zstd).unwrap(),
            expect
        );
        let e = build(
            &with_xz(&xz[..xz.len() - 3]),
            &reference,
            expect.len(),
            Codec::Zstd,
        );
        assert!(e.unwrap_err().starts_with("content: "));
        let mut big = xz.clone();
        big[1..5].copy_from_slice(&(32u32 << 20).to_le_bytes());
        let e = build(&with_xz(&big), &reference, expect.len(), Codec::Zstd).unwrap_err();
        assert!(e.contains("dictionary"), "{e}");
        let mut marked = with_xz(&xz);
        let at = marked.len() - lit.len() - 4;
        marked[at + 3] |= 0x80;
        let e = build(&marked, &reference, expect.len(), Codec::Zstd).unwrap_err();
        assert!(e.contains("only the content frame"), "{e}");
        // A source block outside the reference; a reference that is not the one hashed.
        let mut other = spec.clone();
        other.sources[0].0 = 200;
        assert!(build(
            &encode(
                &other,
                content.len() as u64,
                &frame,
                literal.len() as u64,
                &lit
            ),
            &reference,
            expect.len(),
            Codec::Zstd
        )
        .is_err());
        assert!(build(&blob, &reference[..150], expect.len(), Codec::Zstd).is_err());
        // Every truncation and every flipped byte of the blob: an error or the same bytes.
        for n in 0..blob.len() {
            assert!(
                build(&blob[..n], &reference, expect.len(), Codec::Zstd).is_err(),
                "truncated at {n}"
            );
        }
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x41;
            if let Ok(out) = build(&bad, &reference, expect.len(), Codec::Zstd) {
                assert_eq!(out.len(), expect.len());
            }
        }
    }

    /// EROFS pclusters: lz4 offered the rest of the content fills each pcluster as
    /// mkfs.erofs does, behind its zero padding, from a reference decompressed from an
    /// old lz4 pcluster; a pcluster that takes another length, content offered past the
    /// end, a Fill in a zstd blob and every truncation are errors.
    #[test]
    fn erofs_blobs_fill_pclusters_as_mkfs_erofs_does() {
        let new = crate::testdata::compressible(11, 30_000);
        let mut old = new.clone();
        old[1000..1100].fill(b'x');
        let mut lz = crate::codec::lz4::DestSize::new(9).unwrap();
        let pcluster = |lz: &mut crate::codec::lz4::DestSize, src: &[u8]| {
            let mut b = vec![0u8; 4096];
            let (taken, n) = lz.compress(src, &mut b).unwrap();
            b.truncate(n);
            (taken, [vec![0u8; 4096 - n], b].concat(), n)
        };
        let (t0, reference, _) = pcluster(&mut lz, &old);
        // Pclusters until the content is taken, each offered all that is left.
        let (mut at, mut expect, mut segments, mut literal) =
            (0, Vec::new(), Vec::new(), Vec::new());
        let mut fills = Vec::new();
        while at < new.len() {
            let (t, p, w) = pcluster(&mut lz, &new[at..]);
            segments.push(Segment::Literal((4096 - w) as u32));
            segments.push(Segment::Fill(t as u32, w as u32, (new.len() - at) as u32));
            fills.push((segments.len() - 1, t, w, new.len() - at));
            literal.extend_from_slice(&p[..4096 - w]);
            expect.extend_from_slice(&p);
            at += t;
        }
        assert!(fills.len() >= 3, "{} pclusters", fills.len());
        let spec = Spec {
            codec: Codec::ErofsLz4,
            level: 9,
            block_size: 4096,
            skip: 0,
            sources: vec![(0, t0 as u32)],
            taken: Vec::new(),
            tails: Vec::new(),
            segments,
        };
        let mut enc =
            zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 3, &old[..t0]).unwrap();
        std::io::Write::write_all(&mut enc, &new).unwrap();
        let frame = enc.finish().unwrap();
        let lit = zstd::bulk::compress(&literal, 3).unwrap();
        let blob_of =
            |spec: &Spec| encode(spec, new.len() as u64, &frame, literal.len() as u64, &lit);
        let blob = blob_of(&spec);
        assert_eq!(
            build(&blob, &reference, expect.len(), Codec::ErofsLz4).unwrap(),
            expect
        );
        // Each change of the spec refused, naming what went wrong.
        let refused = |other: &Spec, says: &str| {
            let e = build(&blob_of(other), &reference, expect.len(), Codec::ErofsLz4);
            assert!(matches!(&e, Err(m) if m.contains(says)), "{:?}", e.err());
        };
        // Offered less than it took; another level than the image's (lz4 takes another
        // length or gives another size); offered past the content's end.
        let mut other = spec.clone();
        let (i, t, w, _) = fills[0];
        other.segments[i] = Segment::Fill(t as u32, w as u32, t as u32 / 2);
        refused(&other, "taking");
        let mut other = spec.clone();
        other.level = 12;
        refused(&other, "does not compress as");
        let mut other = spec.clone();
        let (i, t, w, offered) = fills[fills.len() - 1];
        other.segments[i] = Segment::Fill(t as u32, w as u32, offered as u32 + 1);
        refused(&other, "offered");
        // Offered a little more than mkfs.erofs did: it may take the same (what lz4 takes
        // depends on a bounded look-ahead); never a wrong output.
        let mut other = spec.clone();
        let (i, t, w, offered) = fills[0];
        other.segments[i] = Segment::Fill(t as u32, w as u32, offered as u32 - 4000);
        if let Ok(out) = build(&blob_of(&other), &reference, expect.len(), Codec::ErofsLz4) {
            assert!(out == expect);
        }
        // Another level; a Fill in a blob for zstd.
        let mut other = spec.clone();
        other.level = 13;
        assert!(build(&blob_of(&other), &reference, expect.len(), Codec::ErofsLz4).is_err());
        let mut zstd_blob = blob.clone();
        zstd_blob[0] = Codec::Zstd.id();
        assert!(build(&zstd_blob, &reference, expect.len(), Codec::Zstd).is_err());
        for n in 0..blob.len() {
            assert!(build(&blob[..n], &reference, expect.len(), Codec::ErofsLz4).is_err());
        }
        for i in 0..blob.len().min(200) {
            let mut bad = blob.clone();
            bad[i] ^= 0x41;
            if let Ok(out) = build(&bad, &reference, expect.len(), Codec::ErofsLz4) {
                assert_eq!(out.len(), expect.len());
            }
        }
    }

    /// Two versions of a text as raw deflate streams: the new one (`len` bytes from
    /// `seed`), the old one its first `kept` bytes and `own` bytes of its own. Returns the
    /// old text, both streams, and the new stream's content and preflate corrections.
    fn gzip_versions(seed: u64, len: usize, kept: usize, own: usize) -> Versions {
        let text = crate::testdata::compressible(seed, len);
        let mut old_text = text[..kept].to_vec();
        old_text.extend_from_slice(&crate::testdata::compressible(seed + 1, own));
        let deflate = |t: &[u8]| {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            std::io::Write::write_all(&mut e, t).unwrap();
            e.finish().unwrap()
        };
        let (stream, old_stream) = (deflate(&text), deflate(&old_text));
        let (content, corrections) = crate::codec::gzip::analyze(&stream, 1 << 20).unwrap();
        Versions {
            old_text,
            stream,
            old_stream,
            content,
            corrections,
        }
    }

    struct Versions {
        old_text: Vec<u8>,
        stream: Vec<u8>,
        old_stream: Vec<u8>,
        content: Vec<u8>,
        corrections: Vec<u8>,
    }

    /// A gzip file's blob whose source extents are 100 bytes, then `cut` bytes of the old
    /// stream.
    fn gzip_spec(cut: usize) -> Spec {
        Spec {
            codec: Codec::GzipFile,
            level: 0,
            block_size: 64 << 10,
            skip: 0,
            sources: vec![(100, cut as u32)],
            taken: Vec::new(),
            tails: Vec::new(),
            segments: Vec::new(),
        }
    }

    impl Versions {
        /// The new stream rebuilt from its content and corrections, its first `placed`
        /// bytes where the segment stands.
        fn preflate(&self, placed: u32) -> Segment {
            Segment::Preflate(
                self.content.len() as u32,
                self.stream.len() as u32,
                self.corrections.len() as u32,
                placed,
            )
        }
    }

    /// An old gzip stream in two places (its blocks, and its end beside its inode in an
    /// old EROFS metadata block) gives all its content as reference; a tail outside the
    /// source extents, or one that does not continue the stream, is refused.
    #[test]
    fn old_gzip_streams_go_on_in_their_tails() {
        let v = gzip_versions(21, 30_000, 20_000, 3000);
        let cut = v.old_stream.len() / 2;
        let gap = vec![0xCD; 7];
        let reference = [
            &[0xAB; 100][..],
            &v.old_stream[..cut],
            &gap,
            &v.old_stream[cut..],
        ]
        .concat();
        let rest = (v.old_stream.len() - cut) as u32;
        let spec = Spec {
            taken: vec![v.old_text.len() as u32],
            tails: vec![((100 + cut + gap.len()) as u64, rest)],
            segments: vec![v.preflate(v.stream.len() as u32)],
            ..gzip_spec(cut)
        };
        // The content frame needs the old content whole: text's first 20,000 bytes are there.
        let mut e =
            zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 3, &v.old_text[..]).unwrap();
        std::io::Write::write_all(&mut e, &v.content).unwrap();
        let frame = e.finish().unwrap();
        let lit = zstd::bulk::compress(&v.corrections, 3).unwrap();
        let blob_of = |spec: &Spec| {
            encode(
                spec,
                v.content.len() as u64,
                &frame,
                v.corrections.len() as u64,
                &lit,
            )
        };
        let out = build(&blob_of(&spec), &reference, v.stream.len(), Codec::GzipFile).unwrap();
        assert!(out == v.stream);
        for (what, tail) in [
            ("outside", ((reference.len() - 3) as u64, rest)),
            ("none", (0, 0)),
        ] {
            let mut s = spec.clone();
            s.tails[0] = tail;
            let e = build(&blob_of(&s), &reference, v.stream.len(), Codec::GzipFile);
            assert!(
                e.as_ref().is_err_and(|e| e.contains("does not give")),
                "{what}: {:?}",
                e.map(|o| o.len())
            );
        }
        // Bytes that do not continue the stream: refused, by whichever check meets them
        // first (the inflater, the content frame, or the rebuilt stream's length).
        let mut s = spec.clone();
        s.tails[0].0 = 100 + cut as u64;
        assert!(build(&blob_of(&s), &reference, v.stream.len(), Codec::GzipFile).is_err());
        // Truncated inside the tail's fields.
        let blob = blob_of(&spec);
        let at = 1 + 4 + 4 + 4 + 4 + 8 + 4 + 4;
        for n in at..at + 12 {
            assert!(build(&blob[..n], &reference, v.stream.len(), Codec::GzipFile).is_err());
        }
    }

    /// A gzip file's blob: a stream placed in two parts around literal bytes (as an EROFS
    /// tail puts its end in a metadata block), its literal bytes a delta against the
    /// source extents, an old stream cut short as reference; each kind of damage refused.
    #[test]
    fn gzip_streams_build_back_in_parts() {
        let v = gzip_versions(11, 60_000, 40_000, 5000);
        // The source extents: 100 bytes, then the old stream cut to two thirds.
        let cut = v.old_stream.len() * 2 / 3;
        let mut reference = vec![0xAB; 100];
        reference.extend_from_slice(&v.old_stream[..cut]);
        let taken = crate::codec::gzip::prefix_len(&v.old_stream[..cut], false, 0, 1 << 20);
        assert!(taken > 10_000);
        let first = 1000usize;
        let head = b"HEAD".to_vec();
        // Bytes the source extents hold too (as an old metadata block holds a new one's).
        let mid = v.old_stream[..50].to_vec();
        let expect = [&head[..], &v.stream[..first], &mid, &v.stream[first..]].concat();
        let spec = Spec {
            taken: vec![taken as u32],
            segments: vec![
                Segment::Literal(4),
                v.preflate(first as u32),
                Segment::Literal(50),
                Segment::Rest((v.stream.len() - first) as u32, 0),
            ],
            ..gzip_spec(cut)
        };
        let literal = [&head[..], &v.corrections, &mid].concat();
        let blob_of = |spec: &Spec| {
            let old = &v.old_text[..taken];
            let mut e = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 3, old).unwrap();
            std::io::Write::write_all(&mut e, &v.content).unwrap();
            let frame = e.finish().unwrap();
            let mut e =
                zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 3, &reference[..])
                    .unwrap();
            std::io::Write::write_all(&mut e, &literal).unwrap();
            let lit = e.finish().unwrap();
            encode(
                spec,
                v.content.len() as u64,
                &frame,
                literal.len() as u64,
                &lit,
            )
        };
        let blob = blob_of(&spec);
        let out = build(&blob, &reference, expect.len(), Codec::GzipFile).unwrap();
        assert!(out == expect);
        let mut damaged = Vec::new();
        let mut s = spec.clone();
        s.segments[3] = Segment::Rest((v.stream.len() - first) as u32, 1);
        damaged.push(("no such stream", s));
        let mut s = spec.clone();
        s.segments[1] = Segment::Preflate(
            v.content.len() as u32,
            v.stream.len() as u32 + 1,
            v.corrections.len() as u32,
            first as u32,
        );
        damaged.push(("stream length", s));
        let mut s = spec.clone();
        s.segments[1] = v.preflate(v.stream.len() as u32 + 1);
        damaged.push(("placed past the stream", s));
        let mut s = spec.clone();
        s.taken = vec![taken as u32 + 50_000];
        damaged.push(("more than the cut stream gives", s));
        let mut s = spec.clone();
        s.segments[1] = Segment::Compress(v.content.len() as u32, v.stream.len() as u32);
        damaged.push(("COMPRESS in a gzip blob", s));
        for (what, s) in damaged {
            assert!(
                build(&blob_of(&s), &reference, expect.len(), Codec::GzipFile).is_err(),
                "{what}"
            );
        }
        // Other source bytes: refused or other bytes.
        let mut other = reference.clone();
        other[100..160].fill(0);
        if let Ok(out) = build(&blob, &other, expect.len(), Codec::GzipFile) {
            assert!(out != expect);
        }
        for n in 0..blob.len() {
            assert!(build(&blob[..n], &reference, expect.len(), Codec::GzipFile).is_err());
        }
    }
}
