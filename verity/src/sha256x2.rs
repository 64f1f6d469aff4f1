//! SHA-256 of two equal-length messages at once with the x86 SHA extensions.
//!
//! One SHA-256 stream is bound by the latency of `sha256rnds2`: each pair of rounds waits
//! for the previous one, and most of the core's SHA unit sits idle. Two independent
//! streams interleaved keep it busy and hash close to twice as fast (the technique of the
//! Linux kernel's `sha256_finup_2x` for dm-verity and fs-verity). A hash tree is made of
//! many blocks of one size, so blocks can always be paired.
//!
//! This is one of the two places the workspace allows `unsafe`: the intrinsics need it,
//! and it is confined to the function that runs only after the CPU features were
//! detected.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

pub(crate) const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// Whether this CPU can run [`compress2`].
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("sha")
            && std::is_x86_feature_detected!("sse2")
            && std::is_x86_feature_detected!("ssse3")
            && std::is_x86_feature_detected!("sse4.1")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Run the compression function over `a` into `sa` and over `b` into `sb`, interleaved.
/// Falls back to one stream after the other where the SHA extensions are missing.
pub(crate) fn compress2(sa: &mut [u32; 8], a: &[[u8; 64]], sb: &mut [u32; 8], b: &[[u8; 64]]) {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if a.len() == b.len() && available() {
        // SAFETY: the CPU has the features `digest2` is compiled for (checked just above);
        // the slices are valid for the reads it makes (whole 64-byte blocks).
        unsafe { digest2(sa, a, sb, b) };
        return;
    }
    compress_one(sa, a);
    compress_one(sb, b);
}

/// One stream, through the sha2 crate.
pub(crate) fn compress_one(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    for block in blocks {
        sha2::compress256(state, &[(*block).into()]);
    }
}

/// Two SHA-256 compressions interleaved: `a` into `sa` and `b` into `sb`, block by block.
///
/// # Safety
///
/// The CPU must have the SHA extensions, SSE2, SSSE3 and SSE4.1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
unsafe fn digest2(sa: &mut [u32; 8], a: &[[u8; 64]], sb: &mut [u32; 8], b: &[[u8; 64]]) {
    let mask = _mm_set_epi64x(
        0x0C0D_0E0F_0809_0A0Bu64 as i64,
        0x0405_0607_0001_0203u64 as i64,
    );

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    #[inline]
    fn load_state(s: &[u32; 8]) -> (__m128i, __m128i) {
        let dcba = _mm_set_epi32(s[3] as i32, s[2] as i32, s[1] as i32, s[0] as i32);
        let efgh = _mm_set_epi32(s[7] as i32, s[6] as i32, s[5] as i32, s[4] as i32);
        let cdab = _mm_shuffle_epi32(dcba, 0xB1);
        let efgh = _mm_shuffle_epi32(efgh, 0x1B);
        (
            _mm_alignr_epi8(cdab, efgh, 8),
            _mm_blend_epi16(efgh, cdab, 0xF0),
        )
    }
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    #[inline]
    fn store_state(s: &mut [u32; 8], abef: __m128i, cdgh: __m128i) {
        let feba = _mm_shuffle_epi32(abef, 0x1B);
        let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
        let dcba = _mm_blend_epi16(feba, dchg, 0xF0);
        let hgef = _mm_alignr_epi8(dchg, feba, 8);
        let mut out = [0u32; 8];
        for (i, v) in [
            _mm_extract_epi32(dcba, 0),
            _mm_extract_epi32(dcba, 1),
            _mm_extract_epi32(dcba, 2),
            _mm_extract_epi32(dcba, 3),
            _mm_extract_epi32(hgef, 0),
            _mm_extract_epi32(hgef, 1),
            _mm_extract_epi32(hgef, 2),
            _mm_extract_epi32(hgef, 3),
        ]
        .into_iter()
        .enumerate()
        {
            out[i] = v as u32;
        }
        *s = out;
    }
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    #[inline]
    fn schedule(v0: __m128i, v1: __m128i, v2: __m128i, v3: __m128i) -> __m128i {
        let t1 = _mm_sha256msg1_epu32(v0, v1);
        let t2 = _mm_alignr_epi8(v3, v2, 4);
        let t3 = _mm_add_epi32(t1, t2);
        _mm_sha256msg2_epu32(t3, v3)
    }
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    #[inline]
    fn k4(i: usize) -> __m128i {
        _mm_set_epi32(
            K[4 * i + 3] as i32,
            K[4 * i + 2] as i32,
            K[4 * i + 1] as i32,
            K[4 * i] as i32,
        )
    }

    let (mut abef_a, mut cdgh_a) = load_state(sa);
    let (mut abef_b, mut cdgh_b) = load_state(sb);

    for (ba, bb) in a.iter().zip(b) {
        let save = (abef_a, cdgh_a, abef_b, cdgh_b);
        // One message word group: 16 bytes of a 64-byte block, as big-endian words.
        macro_rules! words {
            ($block:expr, $i:expr) => {{
                let part = &$block[16 * $i..16 * $i + 16];
                // SAFETY: `part` is 16 bytes, what the unaligned load reads.
                let v = unsafe { _mm_loadu_si128(part.as_ptr().cast::<__m128i>()) };
                _mm_shuffle_epi8(v, mask)
            }};
        }
        let mut wa = [words!(ba, 0), words!(ba, 1), words!(ba, 2), words!(ba, 3)];
        let mut wb = [words!(bb, 0), words!(bb, 1), words!(bb, 2), words!(bb, 3)];
        // Sixteen groups of four rounds; from group 4 on, the message word group is
        // scheduled from the previous four (kept in a ring of four registers).
        macro_rules! group {
            ($i:expr) => {{
                let j = $i % 4;
                if $i >= 4 {
                    wa[j] = schedule(wa[j], wa[(j + 1) % 4], wa[(j + 2) % 4], wa[(j + 3) % 4]);
                    wb[j] = schedule(wb[j], wb[(j + 1) % 4], wb[(j + 2) % 4], wb[(j + 3) % 4]);
                }
                let k = k4($i);
                let ta = _mm_add_epi32(wa[j], k);
                let tb = _mm_add_epi32(wb[j], k);
                cdgh_a = _mm_sha256rnds2_epu32(cdgh_a, abef_a, ta);
                cdgh_b = _mm_sha256rnds2_epu32(cdgh_b, abef_b, tb);
                abef_a = _mm_sha256rnds2_epu32(abef_a, cdgh_a, _mm_shuffle_epi32(ta, 0x0E));
                abef_b = _mm_sha256rnds2_epu32(abef_b, cdgh_b, _mm_shuffle_epi32(tb, 0x0E));
            }};
        }
        group!(0);
        group!(1);
        group!(2);
        group!(3);
        group!(4);
        group!(5);
        group!(6);
        group!(7);
        group!(8);
        group!(9);
        group!(10);
        group!(11);
        group!(12);
        group!(13);
        group!(14);
        group!(15);
        abef_a = _mm_add_epi32(abef_a, save.0);
        cdgh_a = _mm_add_epi32(cdgh_a, save.1);
        abef_b = _mm_add_epi32(abef_b, save.2);
        cdgh_b = _mm_add_epi32(cdgh_b, save.3);
    }
    store_state(sa, abef_a, cdgh_a);
    store_state(sb, abef_b, cdgh_b);
}

/// SHA-256 of `prefix || x || suffix` for two bodies `xa`, `xb` of equal length, continuing
/// from `state` that has already absorbed `absorbed` bytes (a multiple of 64) of a common
/// leading part. `prefix` and `suffix` are common to both messages; `prefix` is shorter than
/// 64 bytes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn hash2(
    state: &[u32; 8],
    absorbed: u64,
    prefix: &[u8],
    suffix: &[u8],
    xa: &[u8],
    xb: &[u8],
    out_a: &mut [u8],
    out_b: &mut [u8],
) {
    debug_assert!(prefix.len() < 64 && xa.len() == xb.len());
    let n = xa.len();
    let p = prefix.len();
    let total = p + n + suffix.len();
    let bits = (absorbed + total as u64) * 8;
    let chunks = (total + 9).div_ceil(64);
    let mut sa = *state;
    let mut sb = *state;

    // Chunks that lie wholly inside the bodies are hashed in place.
    let first_inner = p.div_ceil(64);
    let end_inner = (p + n) / 64;
    let mut buf_a = [0u8; 64];
    let mut buf_b = [0u8; 64];
    let mut c = 0;
    while c < chunks {
        if c >= first_inner && c < end_inner {
            let start = c * 64 - p;
            let len = (end_inner - c) * 64;
            let (ca, _) = xa[start..start + len].as_chunks::<64>();
            let (cb, _) = xb[start..start + len].as_chunks::<64>();
            compress2(&mut sa, ca, &mut sb, cb);
            c = end_inner;
            continue;
        }
        fill_chunk(&mut buf_a, c, prefix, xa, suffix, total, bits, chunks);
        fill_chunk(&mut buf_b, c, prefix, xb, suffix, total, bits, chunks);
        compress2(&mut sa, &[buf_a], &mut sb, &[buf_b]);
        c += 1;
    }
    write_digest(&sa, out_a);
    write_digest(&sb, out_b);
}

/// Chunk `c` of `prefix || x || suffix || padding`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fill_chunk(
    buf: &mut [u8; 64],
    c: usize,
    prefix: &[u8],
    x: &[u8],
    suffix: &[u8],
    total: usize,
    bits: u64,
    chunks: usize,
) {
    let lo = c * 64;
    let hi = lo + 64;
    buf.fill(0);
    let mut seg_start = 0;
    for seg in [prefix, x, suffix] {
        let s = seg_start.max(lo);
        let e = (seg_start + seg.len()).min(hi);
        if s < e {
            buf[s - lo..e - lo].copy_from_slice(&seg[s - seg_start..e - seg_start]);
        }
        seg_start += seg.len();
    }
    if (lo..hi).contains(&total) {
        buf[total - lo] = 0x80;
    }
    if c + 1 == chunks {
        buf[56..].copy_from_slice(&bits.to_be_bytes());
    }
}

fn write_digest(state: &[u32; 8], out: &mut [u8]) {
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
}

/// The SHA-256 initial state.
pub(crate) const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sha2::Digest;

    /// One test layout: the leading bytes already absorbed into the state, the prefix and
    /// the suffix around each body, the body length, and the state after the lead.
    pub(crate) struct Layout {
        pub(crate) lead: Vec<u8>,
        pub(crate) prefix: Vec<u8>,
        pub(crate) suffix: Vec<u8>,
        pub(crate) n: usize,
        pub(crate) state: [u32; 8],
    }

    impl Layout {
        /// SHA-256 of `lead || prefix || body || suffix`, computed by the `sha2` crate.
        pub(crate) fn want(&self, body: &[u8]) -> [u8; 32] {
            sha2::Sha256::new()
                .chain_update(&self.lead)
                .chain_update(&self.prefix)
                .chain_update(body)
                .chain_update(&self.suffix)
                .finalize()
                .into()
        }
    }

    /// Prefixes short and long, bodies across the padding boundary (55/56 bytes), suffixes
    /// spanning blocks, with and without absorbed leading blocks, and the empty case.
    pub(crate) fn layouts() -> impl Iterator<Item = Layout> {
        [
            (0usize, 4096usize, 0usize, 0usize),
            (32, 4096, 0, 0),
            (0, 4096, 32, 0),
            (63, 512, 0, 1),
            (1, 55, 0, 0),
            (0, 56, 0, 0),
            (0, 64, 200, 2),
            (17, 100, 256, 0),
            (0, 0, 0, 0),
        ]
        .into_iter()
        .map(|(p, n, s, lead_chunks)| {
            let lead: Vec<u8> = (0..lead_chunks * 64).map(|i| i as u8).collect();
            let mut state = IV;
            compress_one(&mut state, lead.as_chunks::<64>().0);
            Layout {
                prefix: (0..p).map(|i| (i * 7) as u8).collect(),
                suffix: (0..s).map(|i| (i * 3 + 1) as u8).collect(),
                lead,
                n,
                state,
            }
        })
    }

    #[test]
    fn matches_sha2_for_every_layout() {
        for l in layouts() {
            let n = l.n;
            let xa: Vec<u8> = (0..n).map(|i| (i * 13 + 5) as u8).collect();
            let xb: Vec<u8> = (0..n).map(|i| (i * 31 + 9) as u8).collect();
            let (mut oa, mut ob) = ([0u8; 32], [0u8; 32]);
            hash2(
                &l.state,
                l.lead.len() as u64,
                &l.prefix,
                &l.suffix,
                &xa,
                &xb,
                &mut oa,
                &mut ob,
            );
            for (x, o) in [(&xa, oa), (&xb, ob)] {
                assert_eq!(
                    o,
                    l.want(x),
                    "n={n} prefix={} lead={}",
                    l.prefix.len(),
                    l.lead.len()
                );
            }
        }
    }
}
