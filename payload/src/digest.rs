//! Image identities: sha256 of chunk digests, computed on every core.

use sha2::{Digest, Sha256};

/// Chunk size of [`image_digest`].
pub const DIGEST_CHUNK: u64 = 1 << 20;

/// An image's identity: sha256 over the concatenated sha256 digests of its 1 MiB chunks
/// (the last one may be shorter; an empty image has no chunks).
///
/// A plain sha256 of the whole image runs on one core at the speed of the SHA extensions
/// (about 1.1 GB/s here); the chunk digests split over every core, two chunks hashed at
/// once by each, and chunks of zeros (most of a sparse image) are found by comparison and
/// not hashed. Memory: 4 MiB per core and 32 bytes per MiB.
pub fn image_digest<R: keel_verity::ReadAt + ?Sized>(
    dev: &R,
    size: u64,
) -> std::io::Result<[u8; 32]> {
    const GROUP: u64 = 4 * DIGEST_CHUNK;
    chunk_digests(size, GROUP, |off, n, buf, out| {
        buf.resize(n, 0);
        dev.read_exact_at(&mut buf[..n], off)?;
        sha256_pieces_sparse(&buf[..n], DIGEST_CHUNK as usize, out);
        Ok(())
    })
}

/// [`image_digest`] of an image in memory (mapped): nothing copied, sixteen chunks hashed
/// at once where the CPU allows. Nothing is read, so the only error is a worker's panic.
pub fn image_digest_of(image: &[u8]) -> std::io::Result<[u8; 32]> {
    const GROUP: u64 = 16 * DIGEST_CHUNK;
    chunk_digests(image.len() as u64, GROUP, |off, n, _, out| {
        sha256_pieces_sparse(&image[off as usize..][..n], DIGEST_CHUNK as usize, out);
        Ok(())
    })
}

/// The image digest of `size` bytes whose chunks `hash(offset, length, buffer, out)`
/// hashes `group` bytes at a time, on every core.
fn chunk_digests(
    size: u64,
    group: u64,
    hash: impl Fn(u64, usize, &mut Vec<u8>, &mut [[u8; 32]]) -> std::io::Result<()> + Sync,
) -> std::io::Result<[u8; 32]> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let groups = size.div_ceil(group);
    let threads = keel_io::Threads::AllCores
        .count()
        .min(groups.max(1) as usize);
    let next = AtomicU64::new(0);
    type Part = std::io::Result<Vec<(u64, Vec<[u8; 32]>)>>;
    let digests: Vec<Part> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    let mut buf = Vec::new();
                    loop {
                        let g = next.fetch_add(1, Ordering::Relaxed);
                        if g >= groups {
                            return Ok(out);
                        }
                        let off = g * group;
                        let n = (size - off).min(group) as usize;
                        let mut d = vec![[0u8; 32]; n.div_ceil(DIGEST_CHUNK as usize)];
                        hash(off, n, &mut buf, &mut d)?;
                        out.push((g, d));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(std::io::Error::other("an image digest worker panicked"))
                })
            })
            .collect()
    });
    let mut all = Vec::with_capacity(groups as usize);
    for d in digests {
        all.extend(d?);
    }
    all.sort_unstable_by_key(|d| d.0);
    let mut h = Sha256::new();
    for (_, d) in &all {
        for c in d {
            h.update(c);
        }
    }
    Ok(h.finalize().into())
}

/// The digest of an operation's data as its manifest entry holds it: sha256 of the blob,
/// and for REPLACE_RAW (data as large as the target, hashed once more as part of the
/// image anyway) sha256 over the sha256 of each [`DIGEST_CHUNK`] piece, the pieces
/// hashed several at once ([`keel_verity::sha256_pieces`]): a generator takes them from
/// the image chunks' digests where the operation covers whole chunks, and an applier
/// hashes sixteen or two streams at a time instead of one.
pub fn data_digest(op: crate::format::OpType, blob: &[u8]) -> [u8; 32] {
    if op != crate::format::OpType::ReplaceRaw {
        return sha256(blob);
    }
    let mut pieces = vec![[0u8; 32]; blob.len().div_ceil(DIGEST_CHUNK as usize)];
    keel_verity::sha256_pieces(blob, DIGEST_CHUNK as usize, &mut pieces);
    of_pieces(&pieces)
}

/// sha256 of each `piece`-byte piece of `bytes` (the last may be shorter) into `out`, as
/// [`keel_verity::sha256_pieces`] (sixteen or two at once), except that a whole piece of
/// zeros is found by comparing (memory speed) and given the digest of zeros without
/// hashing: an image mostly empty costs what its data costs. `piece` is at most
/// [`DIGEST_CHUNK`] and a power of two.
pub(crate) fn sha256_pieces_sparse(bytes: &[u8], piece: usize, out: &mut [[u8; 32]]) {
    // The digest of a zero piece, once per piece size.
    static ZERO_DIGESTS: [std::sync::OnceLock<[u8; 32]>; 21] =
        [const { std::sync::OnceLock::new() }; 21];
    assert!(
        piece.is_power_of_two() && piece <= ZEROS.len() && out.len() == bytes.len().div_ceil(piece)
    );
    let zero_digest =
        || *ZERO_DIGESTS[piece.trailing_zeros() as usize].get_or_init(|| sha256(&ZEROS[..piece]));
    let is_zero = |i: usize| {
        bytes[i * piece..].len() >= piece && bytes[i * piece..][..piece] == ZEROS[..piece]
    };
    let mut i = 0;
    while i < out.len() {
        if is_zero(i) {
            out[i] = zero_digest();
            i += 1;
            continue;
        }
        // A run of pieces with data, hashed together.
        let mut j = i + 1;
        while j < out.len() && !is_zero(j) {
            j += 1;
        }
        let end = (j * piece).min(bytes.len());
        keel_verity::sha256_pieces(&bytes[i * piece..end], piece, &mut out[i..j]);
        i = j;
    }
}

/// sha256 over piece digests, one after another.
pub(crate) fn of_pieces(pieces: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in pieces {
        h.update(p);
    }
    h.finalize().into()
}

/// Zeros to compare with: a digest chunk of them (blocks compare with its start).
pub(crate) static ZEROS: [u8; DIGEST_CHUNK as usize] = [0; DIGEST_CHUNK as usize];

/// sha256 of some bytes.
pub fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_digest_is_the_sha256_of_the_chunk_digests() {
        let img: Vec<u8> = (0..(7u64 << 19) + 5)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        for size in [
            0u64,
            1,
            DIGEST_CHUNK - 1,
            DIGEST_CHUNK,
            DIGEST_CHUNK + 1,
            img.len() as u64,
        ] {
            let mut list = Vec::new();
            for c in img[..size as usize].chunks(DIGEST_CHUNK as usize) {
                list.extend_from_slice(&sha256(c));
            }
            assert_eq!(
                image_digest(&img[..], size).unwrap(),
                sha256(&list),
                "size {size}"
            );
            assert_eq!(
                image_digest_of(&img[..size as usize]).unwrap(),
                sha256(&list)
            );
        }
        // A short device is an error, not a digest of less.
        assert!(image_digest(&img[..10], 11).is_err());
    }

    #[test]
    fn sparse_pieces_are_the_plain_digests() {
        // Zero pieces alone, in runs, between data, at the end, and a short zero tail.
        let piece = 4096;
        let mut bytes = vec![0u8; 40 * piece + 100];
        for p in [
            1usize, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 38,
        ] {
            bytes[p * piece + p] = p as u8;
        }
        for len in [0, 1, piece, 17 * piece, bytes.len()] {
            let b = &bytes[..len];
            let mut out = vec![[0u8; 32]; len.div_ceil(piece)];
            sha256_pieces_sparse(b, piece, &mut out);
            let want: Vec<[u8; 32]> = b.chunks(piece).map(sha256).collect();
            assert_eq!(out, want, "{len} bytes");
        }
    }
}
