//! SHA-256 of sixteen equal-length messages at once with AVX-512.
//!
//! On recent Intel cores the SHA extensions are not pipelined deeply enough for
//! interleaving to pay much (two streams give about 13% here), but AVX-512 runs the
//! scalar SHA-256 rounds on sixteen 32-bit lanes, with single-instruction rotates and
//! three-input logic (`vprord`, `vpternlogd`). A hash tree offers sixteen blocks of one
//! size at every step, so each lane takes one block: the multi-buffer technique of
//! Intel's ISA-L `sha256_mb`.
//!
//! `unsafe` is confined here as in [`crate::sha256x2`]: the intrinsics and the gathers need
//! it; every address gathered is checked to lie in its lane's input before the call.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

use crate::sha256x2::fill_chunk;

/// Lanes per call.
pub(crate) const LANES: usize = 16;

/// Whether this CPU can run [`hash16`].
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

const K: [u32; 64] = crate::sha256x2::K;

/// SHA-256 of `prefix || x_i || suffix` for the sixteen bodies `x_i =
/// input[i * n..(i + 1) * n]`, continuing from `state` after `absorbed` bytes (a multiple
/// of 64) of a common leading part; digest `i` goes to `out[i * stride..]`.
///
/// Returns false (and does nothing) if the CPU lacks AVX-512 or the input is too short.
#[allow(clippy::too_many_arguments)]
pub(crate) fn hash16(
    state: &[u32; 8],
    absorbed: u64,
    prefix: &[u8],
    suffix: &[u8],
    input: &[u8],
    n: usize,
    out: &mut [u8],
    stride: usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let fits = prefix.len() < 64
            && input.len() >= LANES * n
            && out.len() >= (LANES - 1) * stride + 32
            && stride >= 32
            && (LANES * n) <= i32::MAX as usize;
        if fits && available() {
            // SAFETY: the CPU has AVX-512F/BW (checked above), and the lengths the function
            // relies on were checked just above.
            unsafe { hash16_avx512(state, absorbed, prefix, suffix, input, n, out, stride) };
            return true;
        }
    }
    let _ = (state, absorbed, prefix, suffix, input, n, out, stride);
    false
}

/// Sixteen SHA-256 digests at once: lane `i` hashes `prefix`, body `i` of `input` (`n`
/// bytes at `i * n`) and `suffix`, continuing `state` after `absorbed` bytes; digest `i`
/// goes to `out[i * stride..]`.
///
/// # Safety
///
/// The CPU must have AVX-512F and AVX-512BW; `input` must hold 16 bodies of `n` bytes and
/// `out` 16 digests at `stride`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn hash16_avx512(
    state: &[u32; 8],
    absorbed: u64,
    prefix: &[u8],
    suffix: &[u8],
    input: &[u8],
    n: usize,
    out: &mut [u8],
    stride: usize,
) {
    let p = prefix.len();
    let total = p + n + suffix.len();
    let bits = (absorbed + total as u64) * 8;
    let chunks = (total + 9).div_ceil(64);
    let first_inner = p.div_ceil(64);
    let end_inner = (p + n) / 64;

    let mut st = [_mm512_setzero_si512(); 8];
    for (v, &w) in st.iter_mut().zip(state) {
        *v = _mm512_set1_epi32(w as i32);
    }
    let lane_index = |step: i32| {
        _mm512_set_epi32(
            15 * step,
            14 * step,
            13 * step,
            12 * step,
            11 * step,
            10 * step,
            9 * step,
            8 * step,
            7 * step,
            6 * step,
            5 * step,
            4 * step,
            3 * step,
            2 * step,
            step,
            0,
        )
    };
    let in_place = lane_index(n as i32);
    let buffered = lane_index(64);
    let mut buf = [[0u8; 64]; LANES];
    let mut c = 0;
    while c < chunks {
        if c >= first_inner && c < end_inner {
            let run = end_inner - c;
            let start = c * 64 - p;
            let base = input[start..].as_ptr();
            // SAFETY: AVX-512F/BW are enabled for this function. Lane i reads
            // input[i * n + start .. i * n + start + run * 64], inside body i because
            // (c + run) * 64 - p <= n, and the caller checked input holds 16 bodies of n.
            unsafe { compress_run(&mut st, base, in_place, run) };
            c = end_inner;
            continue;
        }
        for (lane, b) in buf.iter_mut().enumerate() {
            fill_chunk(
                b,
                c,
                prefix,
                &input[lane * n..(lane + 1) * n],
                suffix,
                total,
                bits,
                chunks,
            );
        }
        // SAFETY: AVX-512F/BW are enabled for this function; lane i reads buf[i], 64 bytes
        // at index 64 * i of the 16 x 64-byte buffer.
        unsafe { compress_run(&mut st, buf.as_ptr().cast::<u8>(), buffered, 1) };
        c += 1;
    }
    let mut words = [[0u32; LANES]; 8];
    for (w, v) in words.iter_mut().zip(st) {
        // SAFETY: `w` is 16 u32s, exactly the 64 bytes an unaligned store writes.
        unsafe { _mm512_storeu_si512(w.as_mut_ptr().cast::<__m512i>(), v) };
    }
    for lane in 0..LANES {
        let o = &mut out[lane * stride..lane * stride + 32];
        for (j, w) in words.iter().enumerate() {
            o[j * 4..j * 4 + 4].copy_from_slice(&w[lane].to_be_bytes());
        }
    }
}

/// Compress `run` consecutive 64-byte chunks in each of the sixteen lanes; lane `i`'s
/// chunks start at `base + index[i]`.
///
/// # Safety
///
/// The CPU must have AVX-512F and AVX-512BW, and for every lane `i` the `run * 64` bytes
/// at `base + index[i]` must be readable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(unused_assignments)] // the last rounds schedule words no later round reads
unsafe fn compress_run(st: &mut [__m512i; 8], base: *const u8, index: __m512i, run: usize) {
    // Big-endian words: reverse the bytes of each 32-bit element.
    let bswap = _mm512_set_epi64(
        0x0c0d0e0f08090a0b,
        0x0405060700010203,
        0x0c0d0e0f08090a0b,
        0x0405060700010203,
        0x0c0d0e0f08090a0b,
        0x0405060700010203,
        0x0c0d0e0f08090a0b,
        0x0405060700010203,
    );
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *st;
    for chunk in 0..run {
        let ptr = base.wrapping_add(chunk * 64);
        let mut w = [_mm512_setzero_si512(); 16];
        for (t, wt) in w.iter_mut().enumerate() {
            let at = ptr.wrapping_add(4 * t).cast::<i32>();
            // SAFETY: the caller guarantees that for every lane i the `run` chunks of 64
            // bytes at base + index[i] are readable; `at` + index[i] lies in chunk `chunk`.
            let words = unsafe { _mm512_i32gather_epi32::<1>(index, at) };
            *wt = _mm512_shuffle_epi8(words, bswap);
        }
        let (sa, sb, sc, sd, se, sf, sg, sh) = (a, b, c, d, e, f, g, h);
        macro_rules! round {
            ($t:expr) => {{
                let wt = if $t < 16 {
                    w[$t & 15]
                } else {
                    let w15 = w[($t + 1) & 15];
                    let w2 = w[($t + 14) & 15];
                    let s0 = _mm512_ternarylogic_epi32::<0x96>(
                        _mm512_ror_epi32::<7>(w15),
                        _mm512_ror_epi32::<18>(w15),
                        _mm512_srli_epi32::<3>(w15),
                    );
                    let s1 = _mm512_ternarylogic_epi32::<0x96>(
                        _mm512_ror_epi32::<17>(w2),
                        _mm512_ror_epi32::<19>(w2),
                        _mm512_srli_epi32::<10>(w2),
                    );
                    let v = _mm512_add_epi32(
                        _mm512_add_epi32(w[$t & 15], s0),
                        _mm512_add_epi32(w[($t + 9) & 15], s1),
                    );
                    w[$t & 15] = v;
                    v
                };
                let s1 = _mm512_ternarylogic_epi32::<0x96>(
                    _mm512_ror_epi32::<6>(e),
                    _mm512_ror_epi32::<11>(e),
                    _mm512_ror_epi32::<25>(e),
                );
                let ch = _mm512_ternarylogic_epi32::<0xCA>(e, f, g);
                let t1 = _mm512_add_epi32(
                    _mm512_add_epi32(h, s1),
                    _mm512_add_epi32(ch, _mm512_add_epi32(wt, _mm512_set1_epi32(K[$t] as i32))),
                );
                let s0 = _mm512_ternarylogic_epi32::<0x96>(
                    _mm512_ror_epi32::<2>(a),
                    _mm512_ror_epi32::<13>(a),
                    _mm512_ror_epi32::<22>(a),
                );
                let maj = _mm512_ternarylogic_epi32::<0xE8>(a, b, c);
                let t2 = _mm512_add_epi32(s0, maj);
                h = g;
                g = f;
                f = e;
                e = _mm512_add_epi32(d, t1);
                d = c;
                c = b;
                b = a;
                a = _mm512_add_epi32(t1, t2);
            }};
        }
        macro_rules! rounds8 {
            ($t:expr) => {
                round!($t);
                round!($t + 1);
                round!($t + 2);
                round!($t + 3);
                round!($t + 4);
                round!($t + 5);
                round!($t + 6);
                round!($t + 7);
            };
        }
        rounds8!(0);
        rounds8!(8);
        rounds8!(16);
        rounds8!(24);
        rounds8!(32);
        rounds8!(40);
        rounds8!(48);
        rounds8!(56);
        a = _mm512_add_epi32(a, sa);
        b = _mm512_add_epi32(b, sb);
        c = _mm512_add_epi32(c, sc);
        d = _mm512_add_epi32(d, sd);
        e = _mm512_add_epi32(e, se);
        f = _mm512_add_epi32(f, sf);
        g = _mm512_add_epi32(g, sg);
        h = _mm512_add_epi32(h, sh);
    }
    *st = [a, b, c, d, e, f, g, h];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha256x2::tests::layouts;

    #[test]
    fn matches_sha2_for_every_layout() {
        if !available() {
            eprintln!("SKIPPED: no AVX-512 on this CPU");
            return;
        }
        for l in layouts() {
            let n = l.n;
            let input: Vec<u8> = (0..n * LANES).map(|i| (i * 13 + i / 7) as u8).collect();
            let mut out = vec![0u8; LANES * 40];
            assert!(hash16(
                &l.state,
                l.lead.len() as u64,
                &l.prefix,
                &l.suffix,
                &input,
                n,
                &mut out,
                40
            ));
            for lane in 0..LANES {
                let want = l.want(&input[lane * n..(lane + 1) * n]);
                assert_eq!(out[lane * 40..lane * 40 + 32], want, "lane {lane} n={n}");
            }
        }
    }
}
