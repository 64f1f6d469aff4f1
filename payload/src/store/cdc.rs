//! Content-defined chunking: where runs of a store whose image does not keep its content
//! on block boundaries (squashfs packs compressed data back to back) are cut, so that the
//! same bytes in an older image, shifted by any amount, are cut the same way and found.
//!
//! A gear hash (as FastCDC's): `h = (h << 1) + GEAR[byte]`, each byte's influence leaving
//! after 64 bytes; a cut after the byte where the top `bits` bits of `h` are all zero
//! (one chance in 2^bits), never before `min` bytes (the hash starts there) and at `max`
//! bytes at the latest. `GEAR` is 256 values of splitmix64 from the seed
//! `0x4b45_454c_5354_4f52` ("KEELSTOR"); both sides compute it, the format depends on it.

use std::sync::OnceLock;

use keel_verity::ReadAt;

/// The chunking parameters a store names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cdc {
    /// The fewest bytes in a chunk (but the image's last).
    pub min: u32,
    /// The average chunk is about `min + 2^bits` bytes.
    pub bits: u32,
    /// The most bytes in a chunk.
    pub max: u32,
}

impl Cdc {
    /// 4 KiB to 64 KiB, 16 KiB on average past the minimum: a changed file costs about
    /// a 16 KiB chunk around it.
    pub const DEFAULT: Cdc = Cdc {
        min: 4 << 10,
        bits: 14,
        max: 64 << 10,
    };

    /// Whether the parameters are in the ranges the format allows.
    pub fn check(&self) -> Result<(), String> {
        if !(64..=(1 << 20)).contains(&self.min)
            || !(6..=24).contains(&self.bits)
            || self.max <= self.min
            || self.max > super::MAX_RUN_LEN
        {
            return Err(format!(
                "min {} (64 to 1 MiB), bits {} (6 to 24), max {} (above min, at most {})",
                self.min,
                self.bits,
                self.max,
                super::MAX_RUN_LEN
            ));
        }
        Ok(())
    }

    /// The length of the chunk at the start of `data` (all of it when it is the image's
    /// end and shorter than `max`; `data` must hold `max` bytes otherwise).
    pub fn cut(&self, data: &[u8]) -> usize {
        let g = gear();
        let end = data.len().min(self.max as usize);
        let min = self.min as usize;
        if end <= min {
            return end;
        }
        let shift = 64 - self.bits;
        let mut h = 0u64;
        for (i, &b) in data[min..end].iter().enumerate() {
            h = (h << 1).wrapping_add(g[b as usize]);
            if h >> shift == 0 {
                return min + i + 1;
            }
        }
        end
    }

    /// Call `f(start, bytes)` for each chunk of the first `size` bytes of `data`, in
    /// order, reading a few MiB at a time.
    pub fn chunks<R: ReadAt + ?Sized>(
        &self,
        data: &R,
        size: u64,
        mut f: impl FnMut(u64, &[u8]) -> crate::Result<()>,
    ) -> crate::Result<()> {
        let window = (4usize << 20).max(2 * self.max as usize);
        let mut buf = vec![0u8; window];
        let (mut have, mut at_buf, mut pos) = (0usize, 0u64, 0u64);
        while pos < size {
            let off = (pos - at_buf) as usize;
            // Refill when less than a whole chunk is left in the buffer.
            if have - off < self.max as usize && at_buf + (have as u64) < size {
                buf.copy_within(off..have, 0);
                have -= off;
                at_buf = pos;
                let want = ((size - at_buf) as usize).min(window) - have;
                data.read_exact_at(&mut buf[have..have + want], at_buf + have as u64)
                    .map_err(|e| {
                        crate::Error::io(format!("reading bytes at {}", at_buf + have as u64), e)
                    })?;
                have += want;
            }
            let off = (pos - at_buf) as usize;
            let n = self.cut(&buf[off..have]);
            f(pos, &buf[off..off + n])?;
            pos += n as u64;
        }
        Ok(())
    }
}

fn gear() -> &'static [u64; 256] {
    static GEAR: OnceLock<[u64; 256]> = OnceLock::new();
    GEAR.get_or_init(|| {
        let mut s = 0x4b45_454c_5354_4f52u64;
        let mut g = [0u64; 256];
        for v in &mut g {
            // splitmix64
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            *v = z ^ (z >> 31);
        }
        g
    })
}

/// A run's digest hint: the first 8 bytes of its SHA-256, little-endian.
pub(crate) fn hint(bytes: &[u8]) -> u64 {
    let d = crate::format::sha256(bytes);
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cuts_follow_the_content_not_its_offset() {
        let c = Cdc::DEFAULT;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..2_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut a = Vec::new();
        c.chunks(&data[..], data.len() as u64, |s, b| {
            a.push((s, b.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(a.iter().map(|x| x.1 as u64).sum::<u64>(), data.len() as u64);
        assert!(a.iter().all(|x| x.1 <= c.max as usize));
        let avg = data.len() / a.len();
        assert!((8 << 10..40 << 10).contains(&avg), "average {avg}");
        // 1234 bytes inserted at the front: after a chunk or two, the same cuts, shifted.
        let mut shifted = vec![7u8; 1234];
        shifted.extend_from_slice(&data);
        let mut b = Vec::new();
        c.chunks(&shifted[..], shifted.len() as u64, |s, x| {
            b.push((s, x.len()));
            Ok(())
        })
        .unwrap();
        let moved: std::collections::HashSet<_> = b
            .iter()
            .filter(|&&(s, _)| s >= 1234)
            .map(|&(s, n)| (s - 1234, n))
            .collect();
        let same = a.iter().filter(|x| moved.contains(x)).count();
        assert!(same + 3 >= a.len(), "{same} of {}", a.len());
    }
}
