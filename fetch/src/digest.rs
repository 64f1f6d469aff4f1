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

/// What a saved state file holds, in this order: the magic, the expected digest and size
/// of the file being hashed (a state saved for another file is not used), the length
/// hashed, the chaining words (big-endian), the partial block, and the SHA-256 of all
/// that (a torn or damaged file is not used either).
const MAGIC: &[u8; 8] = b"KEELSHA1";
pub(crate) const SAVED_LEN: usize = 8 + 32 + 8 + 8 + 32 + 64 + 32;

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

    /// The state as a file's bytes, bound to the file being hashed.
    pub(crate) fn save(&self, expected: &[u8; 32], size: u64) -> Vec<u8> {
        use sha2::Digest;
        let mut out = Vec::with_capacity(SAVED_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(expected);
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        for w in self.h {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out.extend_from_slice(&self.partial);
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
        if bytes.len() != SAVED_LEN {
            return Err("wrong length");
        }
        let (body, sum) = bytes.split_at(SAVED_LEN - 32);
        if sha2::Sha256::digest(body).as_slice() != sum {
            return Err("its checksum does not match (torn or damaged)");
        }
        if &body[..8] != MAGIC {
            return Err("not a saved digest state");
        }
        if &body[8..40] != expected || body[40..48] != size.to_be_bytes() {
            return Err("saved for another file");
        }
        let len = u64::from_be_bytes(body[48..56].try_into().map_err(|_| "length")?);
        if len > size {
            return Err("hashed past the file's size");
        }
        let mut h = [0u32; 8];
        for (w, b) in h.iter_mut().zip(body[56..88].chunks_exact(4)) {
            *w = u32::from_be_bytes(b.try_into().map_err(|_| "state")?);
        }
        let mut partial = [0u8; 64];
        partial.copy_from_slice(&body[88..152]);
        Ok(Sha256State { h, len, partial })
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
        for (len, seed) in [
            (0, 1),
            (1, 2),
            (55, 3),
            (56, 4),
            (63, 5),
            (64, 6),
            (65, 7),
            (200_003, 8),
        ] {
            let data = bytes(len, seed);
            let want: [u8; 32] = sha2::Sha256::digest(&data).into();
            for cut in [0, 1, 63, 64, 100, len / 2, len] {
                let cut = cut.min(len);
                let mut s = Sha256State::new();
                s.update(&data[..cut]);
                let saved = s.save(&want, len as u64);
                let mut r = Sha256State::restore(&saved, &want, len as u64).unwrap();
                assert_eq!(r.len(), cut as u64);
                // Pieces of odd sizes after the restore.
                for piece in data[cut..].chunks(97) {
                    r.update(piece);
                }
                assert_eq!(r.finish(), want, "len {len} cut {cut}");
            }
        }
    }

    #[test]
    fn a_damaged_or_foreign_state_is_not_used() {
        let want = [7u8; 32];
        let mut s = Sha256State::new();
        s.update(&bytes(1000, 9));
        let saved = s.save(&want, 5000);
        assert!(Sha256State::restore(&saved, &want, 5000).is_ok());
        for i in [0, 10, 50, 100, SAVED_LEN - 1] {
            let mut bad = saved.clone();
            bad[i] ^= 1;
            assert!(Sha256State::restore(&bad, &want, 5000).is_err(), "byte {i}");
        }
        assert!(Sha256State::restore(&saved[..100], &want, 5000).is_err());
        assert_eq!(
            Sha256State::restore(&saved, &[8u8; 32], 5000).err(),
            Some("saved for another file")
        );
        assert!(Sha256State::restore(&saved, &want, 999).is_err());
    }
}
