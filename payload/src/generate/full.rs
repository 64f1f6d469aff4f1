//! A full payload in one pass over the target image.
//!
//! A full payload needs no block index: each unit of the target (16 MiB) is read once by a
//! worker, which finds its zero blocks, hashes its 1 MiB digest chunks (the image digest
//! the manifest carries, without a second pass over the image), and encodes its other
//! blocks, at most 8 MiB to an operation, while they are in the cache. The units are written in order as
//! they are done, so both cores compress and hash while the writer streams the blobs out.

use crate::digest::ZEROS;
use crate::error::{Error, Result};
use crate::format::{OpType, Operation, BLOCK_SIZE, DIGEST_CHUNK, MAX_OP_BYTES};

use super::blocks::{block, extents_cow, par_ordered, push_extent};
use super::{GenerateOptions, Images, Plan, HELD_BLOBS, INCOMPRESSIBLE, PROBE_LEVEL};
use keel_io::Progress;
use std::borrow::Cow;

/// Target bytes per operation at most.
const SPAN: u64 = MAX_OP_BYTES;
/// zstd's window for a whole operation.
const WINDOW_LOG: u32 = SPAN.trailing_zeros();
const _: () = assert!(SPAN.is_power_of_two() && WINDOW_LOG <= crate::codec::zstd::MAX_WINDOW_LOG);
/// Target bytes per unit at most: two operations, sixteen digest chunks (hashed sixteen at
/// once where the CPU allows, and chunks of zeros not at all).
const UNIT: u64 = 16 * DIGEST_CHUNK;
const _: () = assert!(UNIT.is_multiple_of(SPAN) && SPAN.is_multiple_of(DIGEST_CHUNK));
const _: () = assert!(DIGEST_CHUNK.is_multiple_of(BLOCK_SIZE));

/// The unit for an image of `size` bytes: 16 MiB, but a sixteenth of a smaller image, in
/// whole digest chunks, so that a small image's install still reports progress and
/// resumes after a stop at several points.
fn unit_for(size: u64) -> u64 {
    (size / 16 / DIGEST_CHUNK * DIGEST_CHUNK).clamp(DIGEST_CHUNK, UNIT)
}

/// What one unit gives the writer: its operations with their blobs, and its digest
/// chunks' digests.
type Unit<'a> = (Vec<(Operation, Cow<'a, [u8]>)>, Vec<[u8; 32]>);

/// The operations of a full payload of `target` (their blobs written to `sink` in order),
/// the data's length, and the image's digest ([`crate::format::image_digest`]).
pub(super) fn build(
    target: &[u8],
    opts: &GenerateOptions,
    progress: Option<&dyn Progress>,
    sink: &mut dyn std::io::Write,
) -> Result<(Vec<Operation>, u64, [u8; 32])> {
    build_in_units(target, unit_for(target.len() as u64), opts, progress, sink)
}

/// [`build`] with units of `unit_len` bytes.
fn build_in_units(
    target: &[u8],
    unit_len: u64,
    opts: &GenerateOptions,
    progress: Option<&dyn Progress>,
    sink: &mut dyn std::io::Write,
) -> Result<(Vec<Operation>, u64, [u8; 32])> {
    let size = target.len() as u64;
    let units = size.div_ceil(unit_len);
    let images = Images {
        source: None,
        target,
        anchors: &Default::default(),
    };
    // Progress counts each target byte twice (found, then encoded), as a delta's does.
    let total = 2 * size;
    let done = std::sync::atomic::AtomicU64::new(0);
    let report = |bytes: u64| -> Result<()> {
        let now = done.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed) + bytes;
        match progress {
            Some(p) if p.cancelled() => Err(Error::Cancelled),
            Some(p) => {
                p.progress(now.min(total), total);
                Ok(())
            }
            None => Ok(()),
        }
    };
    report(0)?;
    let threads = opts.threads.count();
    // A sparse image's holes are zeros known without reading them.
    let holes = crate::digest::Holes::of(target);
    let unit = |u: u64| -> Result<Unit<'_>> {
        let start = u * unit_len;
        let end = (start + unit_len).min(size);
        // The unit a worker takes after those under way now: read from the disk while
        // they are encoded (page faults alone would read a little at a time, waiting).
        let ahead = (u + threads as u64) * unit_len;
        if ahead < size {
            for r in holes.data_in(ahead as usize..(ahead + unit_len).min(size) as usize) {
                keel_io::will_need(&target[r]);
            }
        }
        // Blocks first, in order: a mapped image's pages come in by sequential readahead
        // (the digests read sixteen places at once, and the encoder part of it).
        let mut plans = Vec::with_capacity(4);
        for at in (start..end).step_by(SPAN as usize) {
            // Zero blocks go in one ZERO operation, the others in one REPLACE: the target
            // may hold anything before (a slot's old contents), so zeros are written too.
            let (mut zeros, mut new) = (Vec::new(), Vec::new());
            let to = (at + SPAN).min(end);
            for b in at / BLOCK_SIZE..to.div_ceil(BLOCK_SIZE) {
                let at = (b * BLOCK_SIZE) as usize;
                let zero = match target.get(at..at + super::BS) {
                    Some(_) => holes.is_zero(target, at..at + super::BS),
                    None => *block(target, b) == ZEROS[..super::BS],
                };
                let into = if zero { &mut zeros } else { &mut new };
                push_extent(into, b, 1);
            }
            if !zeros.is_empty() {
                plans.push((OpType::Zero, zeros, Vec::new()));
            }
            if !new.is_empty() {
                plans.push((OpType::Replace, new, Vec::new()));
            }
        }
        let bytes = &target[start as usize..end as usize];
        let mut digests = vec![[0u8; 32]; bytes.len().div_ceil(DIGEST_CHUNK as usize)];
        crate::digest::sha256_pieces_sparse(bytes, DIGEST_CHUNK as usize, &mut digests);
        report(end - start)?;
        let mut ops = plans
            .into_iter()
            .map(|p| encode(&images, p, opts.level, (start, &digests)))
            .collect::<Result<Vec<_>>>()?;
        // In the target's order: a stopped install resumes after what it wrote first.
        ops.sort_by_key(|(o, _)| o.target.first().map(|e| e.start));
        report(end - start)?;
        Ok((ops, digests))
    };
    let items = (0..units as usize).map(|u| (u, u as u64)).collect();
    let weight = |r: &Result<Unit<'_>>| {
        r.as_ref()
            .map_or(0, |(ops, _)| ops.iter().map(|(_, b)| b.len()).sum())
    };
    let mut operations = Vec::with_capacity(units as usize * 2);
    let mut chunk_digests = sha2::Sha256::default();
    let mut written = 0u64;
    par_ordered(items, threads, HELD_BLOBS, weight, unit, |r| {
        let (ops, digests) = r?;
        for (mut o, blob) in ops {
            o.data_offset = if blob.is_empty() { 0 } else { written };
            sink.write_all(&blob)
                .map_err(|e| Error::io("writing the payload's data", e))?;
            written += blob.len() as u64;
            operations.push(o);
        }
        for d in digests {
            sha2::Digest::update(&mut chunk_digests, d);
        }
        Ok::<(), Error>(())
    })?;
    Ok((
        operations,
        written,
        sha2::Digest::finalize(chunk_digests).into(),
    ))
}

/// One operation of a unit and its blob: a REPLACE's new data first compressed at the
/// probe level into the worker's own buffer (a fresh one per operation would be pages the
/// kernel maps and clears each time, and most data that does not compress is dropped),
/// and stored as it is (REPLACE_RAW, borrowed from the image) when that does not shrink
/// it; what compresses is encoded as a delta's new data is.
///
/// `chunks` is the unit's first byte and the digests of its chunks: a REPLACE_RAW that
/// covers whole chunks has its data digest from them ([`crate::format::data_digest`]).
fn encode<'a>(
    images: &Images<'a>,
    plan: Plan,
    level: i32,
    chunks: (u64, &[[u8; 32]]),
) -> Result<(Operation, Cow<'a, [u8]>)> {
    thread_local! {
        static PROBE: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>, Vec<u8>)>> =
            const { std::cell::RefCell::new(None) };
    }
    if plan.0 != OpType::Replace {
        return images
            .encode(plan, None, level)
            .map(|(o, b)| (o, Cow::Owned(b)));
    }
    let data = extents_cow(images.target, &plan.1);
    let n = data.len();
    let probe = level.min(PROBE_LEVEL);
    let stored = PROBE.with(|cell| -> Result<Option<Vec<u8>>> {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(l, ..)| *l != probe) {
            let mut c =
                zstd::bulk::Compressor::new(probe).map_err(|e| Error::io("zstd compress", e))?;
            // A window as large as the operation (zstd shrinks it to the input's size):
            // the applier decodes an operation whole anyway, and at the low levels, whose
            // windows are 1 to 2 MiB, it makes the corpus's ext4 image 2% smaller for 5%
            // more time.
            c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(WINDOW_LOG))
                .map_err(|e| Error::io("zstd window", e))?;
            *cell = Some((probe, c, Vec::new()));
        }
        let Some((_, c, buf)) = cell.as_mut() else {
            return Err(Error::Internal("no probe compressor".into()));
        };
        buf.clear();
        buf.reserve(zstd::zstd_safe::compress_bound(n));
        c.compress_to_buffer(&data[..], buf)
            .map_err(|e| Error::io("zstd compress", e))?;
        Ok((buf.len() < n).then(|| buf.to_vec()))
    })?;
    let (op, blob) = match stored {
        // Compresses: the probe is a delta's first step too.
        Some(p) if p.len() < n - n / INCOMPRESSIBLE => {
            return images
                .encode_probed(plan, None, level, Some(p))
                .map(|(o, b)| (o, Cow::Owned(b)));
        }
        // Barely: kept at the probe level, as a delta's would be.
        Some(p) => (OpType::Replace, Cow::Owned(p)),
        None => (OpType::ReplaceRaw, data),
    };
    let digest = match (op, &plan.1[..]) {
        (OpType::ReplaceRaw, [e]) => {
            let (from, to) = (e.start * BLOCK_SIZE, (e.start + e.blocks) * BLOCK_SIZE);
            let whole = from % DIGEST_CHUNK == 0
                && to % DIGEST_CHUNK == 0
                && to <= images.target.len() as u64;
            let first = from
                .checked_sub(chunks.0)
                .map(|b| (b / DIGEST_CHUNK) as usize);
            let last = ((to - from) / DIGEST_CHUNK) as usize;
            match first.and_then(|f| chunks.1.get(f..f + last)) {
                Some(pieces) if whole => crate::digest::of_pieces(pieces),
                _ => crate::format::data_digest(op, &blob),
            }
        }
        _ => crate::format::data_digest(op, &blob),
    };
    Ok((
        Operation {
            op,
            target: plan.1,
            source: Vec::new(),
            data_offset: 0,
            data_length: blob.len() as u64,
            data_sha256: digest,
            source_sha256: [0; 32],
        },
        blob,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{image_digest, Extent};

    /// Whether `e` lies in one unit (a full payload's operations never cross one).
    fn in_one_unit(e: &Extent, unit: u64) -> bool {
        let unit = unit.min(SPAN);
        e.start * BLOCK_SIZE / unit == ((e.start + e.blocks) * BLOCK_SIZE - 1) / unit
    }

    #[test]
    fn units_are_whole_digest_chunks_and_at_most_an_operation() {
        assert_eq!(unit_for(0), DIGEST_CHUNK);
        assert_eq!(unit_for(6 << 20), DIGEST_CHUNK);
        assert_eq!(unit_for(64 << 20), 4 << 20);
        assert_eq!(unit_for(1 << 40), UNIT);
    }

    #[test]
    fn one_pass_gives_the_image_digest_and_covers_every_block() {
        // Units with data, zeros, a mix, and a short last block.
        // Two whole units, one and a half, and a short last block.
        let size = 2 * UNIT as usize + 3 * SPAN as usize / 2 + 1000;
        let unit = UNIT;
        let mut img = vec![0u8; size];
        let mut x = 7u64;
        for (i, b) in img.iter_mut().enumerate() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Unit 1 is zeros but for every fifth block; the rest is random.
            let unit1 = i / unit as usize == 1;
            if !unit1 || (i / BLOCK_SIZE as usize).is_multiple_of(5) {
                *b = (x >> 56) as u8;
            }
        }
        let opts = GenerateOptions::new("t", "1").level(3);
        let mut data = Vec::new();
        let (ops, len, digest) = build_in_units(&img, unit, &opts, None, &mut data).unwrap();
        assert_eq!(digest, image_digest(&img[..], size as u64).unwrap());
        assert_eq!(len, data.len() as u64);
        let mut covered = 0;
        for o in &ops {
            assert!(o.target.iter().all(|e| in_one_unit(e, unit)), "{o:?}");
            covered += o.target_blocks();
            let blob = &data[o.data_offset as usize..][..o.data_length as usize];
            if !blob.is_empty() {
                assert_eq!(
                    crate::format::data_digest(o.op, blob),
                    o.data_sha256,
                    "{o:?}"
                );
            }
            // Random data does not compress: stored as it is (but for the last unit,
            // whose short last block reads as mostly zeros).
            let last = o.target[0].start * BLOCK_SIZE / unit == size as u64 / unit;
            if o.op != OpType::Zero && !last {
                assert_eq!(o.op, OpType::ReplaceRaw, "{o:?}");
            }
        }
        assert_eq!(covered, (size as u64).div_ceil(BLOCK_SIZE));
        assert!(ops
            .iter()
            .any(|o| o.op == OpType::Zero && o.target.len() > 1));
    }
}
