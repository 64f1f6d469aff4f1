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
/// not hashed; a sparse file's holes ([`keel_io::ReadAt::known_zeros`]) are not read.
/// Memory: 4 MiB per core and 32 bytes per MiB.
pub fn image_digest<R: keel_verity::ReadAt + ?Sized>(
    dev: &R,
    size: u64,
) -> std::io::Result<[u8; 32]> {
    const GROUP: u64 = 4 * DIGEST_CHUNK;
    chunk_digests(size, GROUP, |off, n, buf, out| {
        // A sparse file's holes are zeros put in the buffer: reading them would fill the
        // page cache with pages of zeros (most of the time of a mostly empty image).
        let end = off + n as u64;
        let mut holes: Vec<std::ops::Range<usize>> = dev
            .known_zeros(off, n as u64)
            .into_iter()
            .map(|h| h.start.max(off)..h.end.min(end))
            .filter(|h| h.start < h.end)
            .map(|h| (h.start - off) as usize..(h.end - off) as usize)
            .collect();
        holes.sort_by_key(|h| h.start);
        // Page-aligned: the kernel's copy from the page cache runs at a fraction of its
        // speed into a buffer a few bytes past a page boundary ([`keel_io::page_aligned`]).
        let buf = keel_io::page_aligned(buf, n);
        for h in &holes {
            buf[h.clone()].fill(0);
        }
        for d in Holes(holes).data_in(0..n) {
            dev.read_exact_at(&mut buf[d.clone()], off + d.start as u64)?;
        }
        sha256_pieces_sparse(buf, DIGEST_CHUNK as usize, out);
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
    let holes = Holes::of(bytes);
    let piece_at = |i: usize| i * piece..((i + 1) * piece).min(bytes.len());
    let is_zero = |i: usize| piece_at(i).len() == piece && holes.is_zero(bytes, piece_at(i));
    // A piece partly in a hole is hashed with the hole's zeros taken from memory: a read
    // of a hole's page would fill it, and the kernel's readahead megabytes around it.
    let plain = |i: usize| !is_zero(i) && !holes.meets(piece_at(i));
    let mut i = 0;
    while i < out.len() {
        if is_zero(i) {
            out[i] = zero_digest();
            i += 1;
            continue;
        }
        if holes.meets(piece_at(i)) {
            out[i] = holes.sha256(bytes, piece_at(i));
            i += 1;
            continue;
        }
        // A run of pieces with data, hashed together.
        let mut j = i + 1;
        while j < out.len() && plain(j) {
            j += 1;
        }
        let end = (j * piece).min(bytes.len());
        keel_verity::sha256_pieces(&bytes[i * piece..end], piece, &mut out[i..j]);
        i = j;
    }
}

/// The parts of some bytes known to be zeros without reading them: the holes of a sparse
/// image mapped by [`keel_io::Mapped`] ([`keel_io::known_zeros`]), so that a mostly empty
/// image is not read (and its holes not filled with pages of zeros) to find its zeros.
pub(crate) struct Holes(Vec<std::ops::Range<usize>>);

impl Holes {
    pub(crate) fn of(bytes: &[u8]) -> Holes {
        Holes(keel_io::known_zeros(bytes))
    }

    /// Whether `bytes[r]` is all zeros, reading only what lies outside the holes.
    pub(crate) fn is_zero(&self, bytes: &[u8], r: std::ops::Range<usize>) -> bool {
        self.data_in(r)
            .all(|d| bytes[d].chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()]))
    }

    /// Whether any hole overlaps `r`.
    pub(crate) fn meets(&self, r: std::ops::Range<usize>) -> bool {
        let i = self.0.partition_point(|h| h.end <= r.start);
        self.0.get(i).is_some_and(|h| h.start < r.end)
    }

    /// sha256 of `bytes[r]`, the parts in holes taken as the zeros they are, unread.
    pub(crate) fn sha256(&self, bytes: &[u8], r: std::ops::Range<usize>) -> [u8; 32] {
        let mut h = Sha256::new();
        let zeros = |h: &mut Sha256, mut n: usize| {
            while n > 0 {
                let k = n.min(ZEROS.len());
                h.update(&ZEROS[..k]);
                n -= k;
            }
        };
        let mut at = r.start;
        for d in self.data_in(r.clone()) {
            zeros(&mut h, d.start - at);
            h.update(&bytes[d.clone()]);
            at = d.end;
        }
        zeros(&mut h, r.end - at);
        h.finalize().into()
    }

    /// The holes, in order: offsets into the bytes they were found for.
    pub(crate) fn ranges(&self) -> &[std::ops::Range<usize>] {
        &self.0
    }

    /// The parts of `r` outside the holes, in order.
    pub(crate) fn data_in(
        &self,
        r: std::ops::Range<usize>,
    ) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        let first = self.0.partition_point(|h| h.end <= r.start);
        let mut at = r.start;
        let mut holes = self.0[first..].iter();
        std::iter::from_fn(move || {
            while at < r.end {
                match holes.next() {
                    Some(h) if h.start < r.end => {
                        let data = at..h.start.max(at);
                        at = at.max(h.end);
                        if !data.is_empty() {
                            return Some(data);
                        }
                    }
                    _ => {
                        let data = at..r.end;
                        at = r.end;
                        return Some(data);
                    }
                }
            }
            None
        })
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
pub(crate) mod tests {
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

    /// Bytes of the file at `p` in the page cache (util-linux's fincore).
    pub(crate) fn resident(p: &std::path::Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(p)
            .output()
            .expect("fincore (util-linux-extra) runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// The digest of a sparse file read through `ReadAt` is that of its bytes, and its
    /// holes are not read (they would come into the page cache as pages of zeros).
    #[test]
    fn a_sparse_files_digest_does_not_read_its_holes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = std::fs::File::create_new(&p).unwrap();
        let size = (40u64 << 20) + 777;
        f.set_len(size).unwrap();
        for (i, at) in [0u64, 3 << 20, (9 << 20) + 4096, 20 << 20, size - 700]
            .into_iter()
            .enumerate()
        {
            f.write_all_at(&vec![i as u8 + 1; 5000.min((size - at) as usize)], at)
                .unwrap();
        }
        f.sync_all().unwrap();
        let was = resident(&p);
        let f = std::fs::File::open(&p).unwrap();
        assert!(!keel_io::ReadAt::known_zeros(&f, 0, size).is_empty());
        let d = image_digest(&f, size).unwrap();
        let now = resident(&p);
        assert!(
            now <= was + (64 << 10),
            "{now} bytes resident, {was} before"
        );
        assert_eq!(d, image_digest_of(&std::fs::read(&p).unwrap()).unwrap());
        // A short file is still an error, holes or not.
        assert!(image_digest(&f, size + 1).is_err());
    }

    /// Holes as a mapped sparse image reports them: what lies outside is read, what lies
    /// in them is taken as zeros.
    #[test]
    fn holes_answer_as_the_zeros_they_hold() {
        let mut bytes = vec![0u8; 100];
        for (i, b) in bytes.iter_mut().enumerate() {
            if !(10..30).contains(&i) && !(50..60).contains(&i) && i % 3 == 0 {
                *b = i as u8 | 1;
            }
        }
        let holes = Holes(vec![10..30, 50..60]);
        let data = |r| holes.data_in(r).collect::<Vec<_>>();
        assert_eq!(data(0..100), vec![0..10, 30..50, 60..100]);
        assert_eq!(data(12..20), vec![]);
        assert_eq!(data(20..55), vec![30..50]);
        assert_eq!(data(55..65), vec![60..65]);
        assert_eq!(data(30..50), vec![30..50]);
        assert!(holes.meets(29..31) && holes.meets(5..11) && !holes.meets(30..50));
        assert!(holes.is_zero(&bytes, 10..30) && holes.is_zero(&bytes, 49..59));
        assert!(!holes.is_zero(&bytes, 10..34));
        for r in [0..100, 10..30, 5..55, 29..61, 60..60] {
            assert_eq!(
                holes.sha256(&bytes, r.clone()),
                sha256(&bytes[r.clone()]),
                "{r:?}"
            );
        }
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
