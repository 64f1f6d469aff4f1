//! SHA-256 whose state can be saved and restored, so that a download resumed by another
//! process can still be checked against the release index's digest of the whole file
//! without fetching again what the first process already hashed.
//!
//! `sha2::Sha256` does not expose its state; this keeps the eight chaining words, the
//! length and the partial block itself and runs `sha2::compress256` (the same compression
//! function, SHA-NI where the CPU has it) over whole blocks.

use sha2::digest::consts::U64;
use sha2::digest::generic_array::GenericArray;

const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// A running SHA-256.
#[derive(Clone)]
pub(crate) struct Sha256State {
    h: [u32; 8],
    /// Bytes hashed so far.
    len: u64,
    /// The bytes of the unfinished block (`len % 64` of them).
    partial: [u8; 64],
}

impl Sha256State {
    pub(crate) fn new() -> Self {
        Sha256State {
            h: H0,
            len: 0,
            partial: [0; 64],
        }
    }

    /// Bytes hashed so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        let have = (self.len % 64) as usize;
        self.len += data.len() as u64;
        if have > 0 {
            let take = (64 - have).min(data.len());
            self.partial[have..have + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if have + take < 64 {
                return;
            }
            sha2::compress256(
                &mut self.h,
                &[GenericArray::clone_from_slice(&self.partial)],
            );
        }
        let whole = data.len() / 64 * 64;
        // compress256 wants its own block type: copied 16 KiB at a time (a copy costs far
        // less than the hash) so that each call runs many blocks, not one.
        let mut blocks = [GenericArray::<u8, U64>::default(); 256];
        for run in data[..whole].chunks(64 * blocks.len()) {
            let n = run.len() / 64;
            for (b, src) in blocks.iter_mut().zip(run.chunks_exact(64)) {
                b.copy_from_slice(src);
            }
            sha2::compress256(&mut self.h, &blocks[..n]);
        }
        let rest = &data[whole..];
        self.partial[..rest.len()].copy_from_slice(rest);
    }

    pub(crate) fn finish(&self) -> [u8; 32] {
        let mut h = self.h;
        let have = (self.len % 64) as usize;
        let mut tail = [0u8; 128];
        tail[..have].copy_from_slice(&self.partial[..have]);
        tail[have] = 0x80;
        let blocks = if have < 56 { 1 } else { 2 };
        tail[blocks * 64 - 8..blocks * 64].copy_from_slice(&(self.len * 8).to_be_bytes());
        for b in tail[..blocks * 64].chunks_exact(64) {
            sha2::compress256(&mut h, &[GenericArray::clone_from_slice(b)]);
        }
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(h) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

/// The span of one chunk digest: bytes fetched a second time are checked a chunk at a
/// time against what was hashed the first time (32 bytes of memory and state per MiB).
pub(crate) const CHUNK: u64 = 1 << 20;
/// The first chunk is checked in smaller pieces: a payload's header and manifest, read
/// again by every run that resumes, are a few KiB, not a MiB.
pub(crate) const PIECE: u64 = 64 << 10;
const PIECES: u64 = CHUNK / PIECE;

/// Everything hashed so far: the whole file's running SHA-256, and the SHA-256 of each
/// whole [`CHUNK`] of it (of each [`PIECE`] of the first) plus the running one of the
/// chunk (and piece) under way, so that a byte delivered again (after a seek back) can
/// be checked against the first delivery.
#[derive(Clone)]
pub(crate) struct Digests {
    file: Sha256State,
    chunks: Vec<[u8; 32]>,
    /// The chunk under way: bytes `chunks.len() * CHUNK .. file.len()`.
    chunk: Sha256State,
    /// The first chunk's whole pieces, and the piece under way while it is.
    pieces: Vec<[u8; 32]>,
    piece: Sha256State,
}

/// What a saved state file holds, in this order: the magic, the expected digest and size
/// of the file being hashed (a state saved for another file is not used), the length
/// hashed, the whole file's chaining words (big-endian), the partial block, the chunk
/// under way's chaining words (its partial block is the file's: chunks are whole blocks),
/// the piece under way's, the number of whole chunks and their digests, the number of
/// the first chunk's whole pieces and theirs, and the SHA-256 of all that (a torn or
/// damaged file is not used either).
const MAGIC: &[u8; 8] = b"KEELSHA2";
const FIXED_LEN: usize = 8 + 32 + 8 + 8 + 32 + 64 + 32 + 32;

impl Digests {
    pub(crate) fn new() -> Self {
        Digests {
            file: Sha256State::new(),
            chunks: Vec::new(),
            chunk: Sha256State::new(),
            pieces: Vec::new(),
            piece: Sha256State::new(),
        }
    }

    /// Bytes hashed so far (the frontier).
    pub(crate) fn len(&self) -> u64 {
        self.file.len()
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let at = self.file.len();
            let span = if at < CHUNK { PIECE } else { CHUNK };
            let room = span - at % span;
            let take = usize::try_from(room).map_or(data.len(), |r| r.min(data.len()));
            let (now, rest) = data.split_at(take);
            self.file.update(now);
            self.chunk.update(now);
            if at < CHUNK {
                self.piece.update(now);
            }
            let at = self.file.len();
            if at <= CHUNK && at.is_multiple_of(PIECE) {
                self.pieces.push(self.piece.finish());
                self.piece = Sha256State::new();
            }
            if at.is_multiple_of(CHUNK) {
                self.chunks.push(self.chunk.finish());
                self.chunk = Sha256State::new();
            }
            data = rest;
        }
    }

    /// The whole file's digest (of what was hashed).
    pub(crate) fn finish(&self) -> [u8; 32] {
        self.file.finish()
    }

    /// Where the chunk (or piece) holding `offset` (below the frontier) starts and ends
    /// as far as it was hashed, and the digest of those bytes.
    pub(crate) fn chunk_at(&self, offset: u64) -> Option<(u64, u64, [u8; 32])> {
        if offset >= self.len() {
            return None;
        }
        let (span, done, running) = if offset < CHUNK {
            (PIECE, &self.pieces, &self.piece)
        } else {
            (CHUNK, &self.chunks, &self.chunk)
        };
        let k = offset / span;
        let start = k * span;
        match done.get(usize::try_from(k).ok()?) {
            Some(d) => Some((start, start + span, *d)),
            None => Some((start, self.len(), running.finish())),
        }
    }

    /// The longest state file saved for a file of `size` bytes.
    pub(crate) fn max_saved_len(size: u64) -> u64 {
        FIXED_LEN as u64 + 8 + size / CHUNK * 32 + 8 + PIECES * 32 + 32
    }

    /// The state as a file's bytes, bound to the file being hashed.
    pub(crate) fn save(&self, expected: &[u8; 32], size: u64) -> Vec<u8> {
        use sha2::Digest;
        let mut out = Vec::with_capacity(FIXED_LEN + 16 + (self.chunks.len() + 17) * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(expected);
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&self.file.len.to_be_bytes());
        let words = |out: &mut Vec<u8>, h: &[u32; 8]| {
            for w in h {
                out.extend_from_slice(&w.to_be_bytes());
            }
        };
        words(&mut out, &self.file.h);
        out.extend_from_slice(&self.file.partial);
        words(&mut out, &self.chunk.h);
        words(&mut out, &self.piece.h);
        for list in [&self.chunks, &self.pieces] {
            out.extend_from_slice(&(list.len() as u64).to_be_bytes());
            for c in list {
                out.extend_from_slice(c);
            }
        }
        let sum = sha2::Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// A state saved for this file, or why it cannot be used.
    pub(crate) fn restore(
        bytes: &[u8],
        expected: &[u8; 32],
        size: u64,
    ) -> Result<Self, &'static str> {
        use sha2::Digest;
        if bytes.len() < FIXED_LEN + 16 + 32 || bytes.len() as u64 > Self::max_saved_len(size) {
            return Err("wrong length");
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if sha2::Sha256::digest(body).as_slice() != sum {
            return Err("its checksum does not match (torn or damaged)");
        }
        let (head, mut rest) = body.split_at(FIXED_LEN);
        if &head[..8] != MAGIC {
            return Err("not a saved digest state");
        }
        if &head[8..40] != expected || head[40..48] != size.to_be_bytes() {
            return Err("saved for another file");
        }
        let word = |b: &[u8]| -> Result<u64, &'static str> {
            Ok(u64::from_be_bytes(
                b.get(..8).and_then(|b| b.try_into().ok()).ok_or("length")?,
            ))
        };
        let len = word(&head[48..])?;
        if len > size {
            return Err("hashed past the file's size");
        }
        let words = |at: usize| -> Result<[u32; 8], &'static str> {
            let mut h = [0u32; 8];
            let b = head.get(at..at + 32).ok_or("state")?;
            for (w, b) in h.iter_mut().zip(b.chunks_exact(4)) {
                *w = u32::from_be_bytes(b.try_into().map_err(|_| "state")?);
            }
            Ok(h)
        };
        let mut partial = [0u8; 64];
        partial.copy_from_slice(&head[88..152]);
        let mut list = |want: u64| -> Result<Vec<[u8; 32]>, &'static str> {
            if word(rest)? != want {
                return Err("the digests listed do not match the length hashed");
            }
            let n = usize::try_from(want).map_err(|_| "length")?;
            let digests = rest
                .get(8..8 + n * 32)
                .ok_or("the digests listed are cut short")?;
            rest = &rest[8 + n * 32..];
            digests
                .chunks_exact(32)
                .map(|c| c.try_into().map_err(|_| "digest"))
                .collect()
        };
        let chunks = list(len / CHUNK)?;
        let pieces = list(len.min(CHUNK) / PIECE)?;
        if !rest.is_empty() {
            return Err("bytes after the digests");
        }
        Ok(Digests {
            file: Sha256State {
                h: words(56)?,
                len,
                partial,
            },
            chunks,
            chunk: Sha256State {
                h: words(152)?,
                len: len % CHUNK,
                partial,
            },
            pieces,
            piece: Sha256State {
                h: words(184)?,
                len: if len < CHUNK { len % PIECE } else { 0 },
                partial,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        keel_testsupport::seeded_bytes(seed, n)
    }

    #[test]
    fn equals_sha256_for_any_split_and_after_a_save_and_restore() {
        let mib = CHUNK as usize;
        for (len, seed) in [
            (0, 1),
            (1, 2),
            (55, 3),
            (56, 4),
            (63, 5),
            (64, 6),
            (65, 7),
            (200_003, 8),
            (2 * mib + 77, 9),
        ] {
            let data = bytes(len, seed);
            let want: [u8; 32] = sha2::Sha256::digest(&data).into();
            for cut in [0, 1, 63, 64, 100, 70_000, len / 2, mib, mib + 1, len] {
                let cut = cut.min(len);
                let mut s = Digests::new();
                s.update(&data[..cut]);
                let saved = s.save(&want, len as u64);
                assert!(saved.len() as u64 <= Digests::max_saved_len(len as u64));
                let mut r = Digests::restore(&saved, &want, len as u64).unwrap();
                assert_eq!(r.len(), cut as u64);
                // Pieces of odd sizes after the restore.
                for piece in data[cut..].chunks(97_001) {
                    r.update(piece);
                }
                assert_eq!(r.finish(), want, "len {len} cut {cut}");
                // Every chunk's (piece's) digest is the SHA-256 of its bytes, whole or
                // partial.
                for at in (0..len)
                    .step_by(mib / 2)
                    .chain((0..len.min(mib)).step_by(40_000))
                {
                    let (a, e, d) = r.chunk_at(at as u64).unwrap();
                    let span = if (at as u64) < CHUNK { PIECE } else { CHUNK };
                    assert_eq!(a, at as u64 / span * span);
                    assert_eq!(e, (a + span).min(len as u64));
                    let sum: [u8; 32] = sha2::Sha256::digest(&data[a as usize..e as usize]).into();
                    assert_eq!(d, sum, "len {len} cut {cut} at {at}");
                }
                assert!(r.chunk_at(len as u64).is_none());
            }
        }
    }

    #[test]
    fn a_damaged_or_foreign_state_is_not_used() {
        let want = [7u8; 32];
        let mut s = Digests::new();
        s.update(&bytes((CHUNK + 1000) as usize, 9));
        let size = 3 * CHUNK;
        let saved = s.save(&want, size);
        assert!(Digests::restore(&saved, &want, size).is_ok());
        for i in [0, 10, 50, 100, 190, 200, 240, saved.len() - 1] {
            let mut bad = saved.clone();
            bad[i] ^= 1;
            assert!(Digests::restore(&bad, &want, size).is_err(), "byte {i}");
        }
        assert!(Digests::restore(&saved[..100], &want, size).is_err());
        assert_eq!(
            Digests::restore(&saved, &[8u8; 32], size).err(),
            Some("saved for another file")
        );
        assert!(Digests::restore(&saved, &want, 999).is_err());
        // The bound follows the expected size: a state with more chunks than the file has
        // is refused before its checksum is even computed.
        assert_eq!(
            Digests::restore(&saved, &want, 1000).err(),
            Some("wrong length")
        );
    }
}
