//! Whole-block GF(2^8) multiply-accumulate: `plane[j] = XOR_i coef(i, j) * input[i]`, the
//! inner loop of the FEC encoder.
//!
//! Reed-Solomon parity is linear in the data, so instead of running the LFSR byte by byte
//! (cryptsetup, about 30 MB/s) each parity byte plane of a round is a sum of the round's
//! data blocks multiplied by constants. Multiplying 64 bytes by a constant is one
//! `vgf2p8affineqb`: the instruction multiplies each byte by an 8x8 bit matrix, and
//! multiplication by a constant in any GF(2^8), including the 0x11d field that is not
//! GFNI's own, is such a matrix. Without GFNI, AVX2 splits bytes into nibbles and looks up
//! two 16-entry products with `vpshufb` (the technique of ISA-L's `gf_vect_dot_prod`); the
//! scalar fallback uses a 64 KiB product table.
//!
//! Where a round's blocks come in order, [`Syndromes`] does less: the first two syndromes
//! need no products at all (a XOR, and Horner's rule at 2, a shift), and the parity is a
//! small product of the syndromes once per round. With two roots, dm-verity's default, that
//! is about a third of the instructions.
//!
//! `unsafe` is confined here as in [`crate::sha256x16`]: the intrinsics need it; every
//! pointer is checked to lie in its slice before the kernels run.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;
use std::sync::OnceLock;

use crate::fec::rs::{Code, GF};

/// Which implementation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// AVX-512BW + GFNI, 64 bytes per instruction.
    Gfni,
    /// AVX2 nibble tables, 32 bytes per lookup pair.
    Avx2,
    /// Table lookups.
    Scalar,
}

impl Kernel {
    /// The fastest this CPU supports.
    pub(crate) fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("gfni")
            {
                return Kernel::Gfni;
            }
            if std::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    /// Every kernel this CPU can run (for tests).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Kernel> {
        let mut v = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                v.push(Kernel::Avx2);
            }
            if Kernel::best() == Kernel::Gfni {
                v.push(Kernel::Gfni);
            }
        }
        v
    }
}

/// The constants of one parity matrix (k rows of `roots` coefficients) in the forms the
/// kernels use.
#[derive(Debug)]
pub(crate) struct Coeffs {
    k: usize,
    roots: usize,
    raw: Vec<u8>,
    /// GFNI bit matrices, one u64 per coefficient.
    affine: Vec<u64>,
    /// Low and high nibble product tables, 32 bytes per coefficient.
    nibbles: Vec<[u8; 32]>,
}

/// The 8x8 bit matrix of "multiply by c" in the layout `vgf2p8affineqb` expects: output
/// bit i is the parity of (byte 7 - i of the matrix) AND the input byte.
fn affine_matrix(c: u8) -> u64 {
    let mut m = 0u64;
    for i in 0..8 {
        let mut row = 0u8;
        for j in 0..8 {
            if GF.mul(c, 1 << j) >> i & 1 == 1 {
                row |= 1 << j;
            }
        }
        m |= u64::from(row) << (8 * (7 - i));
    }
    m
}

fn nibble_tables(c: u8) -> [u8; 32] {
    let mut t = [0u8; 32];
    for x in 0..16u8 {
        t[x as usize] = GF.mul(c, x);
        t[16 + x as usize] = GF.mul(c, x << 4);
    }
    t
}

fn product_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = vec![0u8; 65536];
        for c in 0..256usize {
            for x in 0..256usize {
                t[c * 256 + x] = GF.mul(c as u8, x as u8);
            }
        }
        t
    })
}

impl Coeffs {
    /// `raw[i * roots + j]` is the coefficient of input i in plane j.
    pub(crate) fn new(raw: Vec<u8>, roots: usize) -> Coeffs {
        let k = raw.len() / roots;
        Coeffs {
            k,
            roots,
            affine: raw.iter().map(|&c| affine_matrix(c)).collect(),
            nibbles: raw.iter().map(|&c| nibble_tables(c)).collect(),
            raw,
        }
    }

    /// `planes[j * len..(j + 1) * len] = XOR_i coef(i, j) * inputs[i][..len]` for every j.
    ///
    /// Returns false (and does nothing) if the shapes do not match.
    pub(crate) fn dot(
        &self,
        kernel: Kernel,
        inputs: &[&[u8]],
        len: usize,
        planes: &mut [u8],
    ) -> bool {
        self.dot_into::<false>(kernel, inputs, len, planes)
    }

    /// As [`Coeffs::dot`], but the products are added to what `planes` holds (a parity
    /// built from its inputs one at a time, in any order).
    pub(crate) fn dot_add(
        &self,
        kernel: Kernel,
        inputs: &[&[u8]],
        len: usize,
        planes: &mut [u8],
    ) -> bool {
        self.dot_into::<true>(kernel, inputs, len, planes)
    }

    fn dot_into<const ACC: bool>(
        &self,
        kernel: Kernel,
        inputs: &[&[u8]],
        len: usize,
        planes: &mut [u8],
    ) -> bool {
        if inputs.len() != self.k
            || inputs.iter().any(|s| s.len() < len)
            || planes.len() < self.roots * len
        {
            return false;
        }
        let vec_len = len - len % 64;
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Gfni if Kernel::best() == Kernel::Gfni => {
                // SAFETY: the CPU has AVX-512F/BW and GFNI (checked just above); every input
                // holds at least `len` bytes and `planes` at least roots * len (checked at
                // the top), and the kernel touches only bytes below vec_len <= len.
                unsafe { dot_gfni::<ACC>(&self.affine, self.roots, inputs, vec_len, len, planes) };
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 if std::is_x86_feature_detected!("avx2") => {
                // SAFETY: as above, with AVX2 checked just above.
                unsafe { dot_avx2::<ACC>(&self.nibbles, self.roots, inputs, vec_len, len, planes) };
            }
            _ => {
                self.dot_scalar::<ACC>(inputs, 0, len, len, planes);
                return true;
            }
        }
        self.dot_scalar::<ACC>(inputs, vec_len, len, len, planes);
        true
    }

    fn dot_scalar<const ACC: bool>(
        &self,
        inputs: &[&[u8]],
        from: usize,
        to: usize,
        len: usize,
        planes: &mut [u8],
    ) {
        if from >= to {
            return;
        }
        let table = product_table();
        if !ACC {
            for j in 0..self.roots {
                planes[j * len + from..j * len + to].fill(0);
            }
        }
        for (i, input) in inputs.iter().enumerate() {
            for j in 0..self.roots {
                let c = self.raw[i * self.roots + j] as usize;
                let row = &table[c * 256..c * 256 + 256];
                let plane = &mut planes[j * len + from..j * len + to];
                for (p, &x) in plane.iter_mut().zip(&input[from..to]) {
                    *p ^= row[x as usize];
                }
            }
        }
    }
}

/// A round's parity by way of its syndromes, for data added a tile of consecutive
/// positions at a time, in order.
///
/// Syndrome 0 is the XOR of the data and syndrome 1 is Horner's rule at alpha = 2
/// (`s = 2s ^ d` for each position in turn): no products, a shift and a conditional XOR of
/// the field's polynomial, about a third of the work of the nibble products the direct
/// parity takes for each of its planes. Syndromes 2 and up are sums of products by
/// per-position constants (as the parity's planes are). The parity is then a
/// roots x roots product of the syndromes ([`Code::parity_of_syndromes`]), once per round
/// instead of once per position.
#[derive(Debug)]
pub(crate) struct Syndromes {
    roots: usize,
    tile: usize,
    k: usize,
    /// Each tile's coefficients for syndromes 2 and up (none with two roots or fewer).
    high: Vec<Coeffs>,
    to_parity: Coeffs,
}

impl Syndromes {
    /// Tiles of `tile` positions, of which the first `tiles` will be added (the positions
    /// after them are zero here, e.g. a hash area whose share is added to the parity later).
    pub(crate) fn new(code: &Code, tile: usize, tiles: usize) -> Syndromes {
        let roots = code.roots();
        let k = code.data_len();
        let tile = tile.clamp(1, k);
        let steps = tiles.saturating_mul(tile).min(k);
        let high_tiles = if roots > 2 { k.div_ceil(tile) } else { 0 };
        let high = (0..high_tiles)
            .map(|q| {
                let raw = (q * tile..((q + 1) * tile).min(k))
                    .flat_map(|i| (2..roots).map(move |j| GF.pow_alpha(j * (k - 1 - i))))
                    .collect();
                Coeffs::new(raw, roots - 2)
            })
            .collect();
        let mut m = code.parity_of_syndromes();
        // Horner stopped `k - steps` positions early: syndrome 1 still owes that power.
        if roots > 1 {
            let owed = GF.pow_alpha(k - steps);
            for c in &mut m[roots..2 * roots] {
                *c = GF.mul(*c, owed);
            }
        }
        Syndromes {
            roots,
            tile,
            k,
            high,
            to_parity: Coeffs::new(m, roots),
        }
    }

    /// The positions tile `q` holds.
    pub(crate) fn tile_len(&self, q: usize) -> usize {
        self.k
            .min((q + 1) * self.tile)
            .saturating_sub(q * self.tile)
    }

    /// Add tile `q` (`inputs`, one per position, `len` bytes each) to the syndromes in
    /// `planes` (`roots` planes of `len` bytes, side by side). The tiles must come in order,
    /// each once, from planes of zeros. Returns false (and does nothing) if the shapes do
    /// not match.
    pub(crate) fn add(
        &self,
        kernel: Kernel,
        q: usize,
        inputs: &[&[u8]],
        len: usize,
        planes: &mut [u8],
    ) -> bool {
        if inputs.len() != self.tile_len(q)
            || inputs.iter().any(|s| s.len() < len)
            || planes.len() < self.roots * len
        {
            return false;
        }
        let (low, high) = planes.split_at_mut(self.roots.min(2) * len);
        xor_and_double(kernel, inputs, len, low);
        match self.high.get(q) {
            Some(c) => c.dot_add(kernel, inputs, len, high),
            None => true,
        }
    }

    /// The parity of the syndromes in `syn` (`roots` planes of `len` bytes) into `out`
    /// (as many planes).
    pub(crate) fn parity(&self, kernel: Kernel, syn: &[u8], len: usize, out: &mut [u8]) -> bool {
        if syn.len() < self.roots * len {
            return false;
        }
        let inputs: Vec<&[u8]> = syn.chunks_exact(len).take(self.roots).collect();
        self.to_parity.dot(kernel, &inputs, len, out)
    }
}

/// `planes[0] ^= XOR inputs`, and if there is a second plane, `p = 2p ^ input` for each
/// input in turn: syndromes 0 and 1 of [`Syndromes`]. `planes` holds one or two planes of
/// `len` bytes; every input at least `len` bytes (checked by the caller).
fn xor_and_double(kernel: Kernel, inputs: &[&[u8]], len: usize, planes: &mut [u8]) {
    let two = planes.len() >= 2 * len;
    #[cfg(target_arch = "x86_64")]
    if kernel != Kernel::Scalar && std::is_x86_feature_detected!("avx2") {
        let vec_len = len - len % XD_STEP;
        match two {
            // SAFETY: AVX2 is checked just above; every input holds at least len >= vec_len
            // bytes and planes two planes of len, and the kernel touches bytes below
            // vec_len of each.
            true => unsafe { xor_and_double_avx2::<2>(inputs, vec_len, len, planes) },
            // SAFETY: as above, with one plane of len.
            false => unsafe { xor_and_double_avx2::<1>(inputs, vec_len, len, planes) },
        }
        xor_and_double_scalar(inputs, vec_len, len, two, planes);
        return;
    }
    let _ = kernel;
    xor_and_double_scalar(inputs, 0, len, two, planes);
}

fn xor_and_double_scalar(inputs: &[&[u8]], from: usize, len: usize, two: bool, planes: &mut [u8]) {
    let (p0, rest) = planes.split_at_mut(len);
    for input in inputs {
        for (p, &x) in p0[from..].iter_mut().zip(&input[from..len]) {
            *p ^= x;
        }
        if two {
            for (p, &x) in rest[from..len].iter_mut().zip(&input[from..len]) {
                *p = (*p << 1) ^ (((*p as i8) >> 7) as u8 & 0x1d) ^ x;
            }
        }
    }
}

/// Bytes [`xor_and_double_avx2`] takes a step: four vectors, so that four of Horner's
/// chains run side by side (each step of one waits on the last).
const XD_STEP: usize = 128;
const XD_VECS: usize = XD_STEP / 32;

/// [`xor_and_double`] for G planes, [`XD_STEP`] bytes a step.
///
/// # Safety
///
/// The CPU must have AVX2; every input must hold `vec_len` bytes (a multiple of
/// [`XD_STEP`]) and `planes` `G * len` bytes with `vec_len <= len`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn xor_and_double_avx2<const G: usize>(
    inputs: &[&[u8]],
    vec_len: usize,
    len: usize,
    planes: &mut [u8],
) {
    let poly = _mm256_set1_epi8(0x1d);
    let zero = _mm256_setzero_si256();
    let mut off = 0;
    while off < vec_len {
        let mut acc = [[zero; XD_VECS]; G];
        for (g, a) in acc.iter_mut().enumerate() {
            for (h, v) in a.iter_mut().enumerate() {
                let p = planes.as_ptr().wrapping_add(g * len + off + 32 * h);
                // SAFETY: g * len + off + XD_STEP <= G * len <= planes.len() (the caller's
                // bounds), and 32 * h + 32 <= XD_STEP.
                *v = unsafe { _mm256_loadu_si256(p.cast()) };
            }
        }
        let (first, rest) = acc.split_at_mut(1);
        let first = &mut first[0];
        for input in inputs {
            let mut second = rest.iter_mut().flatten();
            for (h, a) in first.iter_mut().enumerate() {
                let p = input.as_ptr().wrapping_add(off + 32 * h);
                // SAFETY: off + XD_STEP <= vec_len <= input.len(), 32 * h + 32 <= XD_STEP.
                let x = unsafe { _mm256_loadu_si256(p.cast()) };
                *a = _mm256_xor_si256(*a, x);
                if let Some(s) = second.next() {
                    // 2s ^ x: each byte shifted left, the polynomial folded in where its top
                    // bit was set.
                    let fold = _mm256_and_si256(_mm256_cmpgt_epi8(zero, *s), poly);
                    let shifted = _mm256_xor_si256(_mm256_add_epi8(*s, *s), x);
                    *s = _mm256_xor_si256(shifted, fold);
                }
            }
        }
        for (g, a) in acc.iter().enumerate() {
            for (h, v) in a.iter().enumerate() {
                let p = planes.as_mut_ptr().wrapping_add(g * len + off + 32 * h);
                // SAFETY: as for the loads.
                unsafe { _mm256_storeu_si256(p.cast(), *v) };
            }
        }
        off += XD_STEP;
    }
}

/// Run `$body::<G>` for the group size `$g` (1 to 8) known at compile time, so the
/// accumulators of one group live in registers.
macro_rules! by_group {
    ($g:expr, $f:ident, $acc:ident, $($arg:expr),*) => {
        match $g {
            1 => $f::<1, $acc>($($arg),*),
            2 => $f::<2, $acc>($($arg),*),
            3 => $f::<3, $acc>($($arg),*),
            4 => $f::<4, $acc>($($arg),*),
            5 => $f::<5, $acc>($($arg),*),
            6 => $f::<6, $acc>($($arg),*),
            7 => $f::<7, $acc>($($arg),*),
            _ => $f::<8, $acc>($($arg),*),
        }
    };
}

/// The parity planes of `inputs` with GFNI, 64 bytes a step.
///
/// # Safety
///
/// The CPU must have AVX-512F, AVX-512BW and GFNI; every input must hold `vec_len` bytes
/// (a multiple of 64) and `planes` `roots * len` bytes with `vec_len <= len`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,gfni")]
unsafe fn dot_gfni<const ACC: bool>(
    m: &[u64],
    roots: usize,
    inputs: &[&[u8]],
    vec_len: usize,
    len: usize,
    planes: &mut [u8],
) {
    let mut j0 = 0;
    while j0 < roots {
        let g = (roots - j0).min(8);
        let mut off = 0;
        while off < vec_len {
            // SAFETY: off + 64 <= vec_len <= every input's length; the planes written are
            // j0..j0 + g < roots, each len long, at off + 64 <= len.
            unsafe { by_group!(g, group_gfni, ACC, m, roots, inputs, off, j0, len, planes) };
            off += 64;
        }
        j0 += g;
    }
}

/// Planes `j0..j0 + G` of one 64-byte step at `off`.
///
/// # Safety
///
/// As [`dot_gfni`], with `off + 64 <= vec_len` and `j0 + G <= roots`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,gfni")]
#[allow(clippy::too_many_arguments)]
unsafe fn group_gfni<const G: usize, const ACC: bool>(
    m: &[u64],
    roots: usize,
    inputs: &[&[u8]],
    off: usize,
    j0: usize,
    len: usize,
    planes: &mut [u8],
) {
    let mut acc = [_mm512_setzero_si512(); G];
    if ACC {
        for (g, a) in acc.iter_mut().enumerate() {
            let at = (j0 + g) * len + off;
            // SAFETY: the caller guarantees (j0 + g) * len + off + 64 <= planes.len().
            *a = unsafe { _mm512_loadu_si512(planes.as_ptr().wrapping_add(at).cast()) };
        }
    }
    for (i, input) in inputs.iter().enumerate() {
        // SAFETY: the caller guarantees off + 64 <= input.len().
        let x = unsafe { _mm512_loadu_si512(input.as_ptr().wrapping_add(off).cast()) };
        let row = &m[i * roots + j0..i * roots + j0 + G];
        for (a, &c) in acc.iter_mut().zip(row) {
            let mat = _mm512_set1_epi64(c as i64);
            *a = _mm512_xor_si512(*a, _mm512_gf2p8affine_epi64_epi8::<0>(x, mat));
        }
    }
    for (g, a) in acc.iter().enumerate() {
        let at = (j0 + g) * len + off;
        // SAFETY: the caller guarantees (j0 + g) * len + off + 64 <= planes.len().
        unsafe { _mm512_storeu_si512(planes.as_mut_ptr().wrapping_add(at).cast(), *a) };
    }
}

/// The parity planes of `inputs` with AVX2 nibble tables, 64 bytes a step.
///
/// # Safety
///
/// The CPU must have AVX2; the lengths as for [`dot_gfni`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2<const ACC: bool>(
    t: &[[u8; 32]],
    roots: usize,
    inputs: &[&[u8]],
    vec_len: usize,
    len: usize,
    planes: &mut [u8],
) {
    let mut j0 = 0;
    while j0 < roots {
        let g = (roots - j0).min(8);
        let mut off = 0;
        if g <= 2 {
            // Few planes: a whole 64-byte step at once, each input's tables loaded once.
            while off < vec_len {
                match g {
                    // SAFETY: as in dot_gfni (off + 64 <= vec_len, j0 + 1 <= roots).
                    1 => unsafe { pair_avx2::<1, ACC>(t, roots, inputs, off, j0, len, planes) },
                    // SAFETY: as in dot_gfni (off + 64 <= vec_len, j0 + 2 <= roots).
                    _ => unsafe { pair_avx2::<2, ACC>(t, roots, inputs, off, j0, len, planes) },
                }
                off += 64;
            }
            j0 += g;
            continue;
        }
        while off < vec_len {
            // SAFETY: as in dot_gfni, for the first 32-byte half of the 64-byte step.
            unsafe { by_group!(g, group_avx2, ACC, t, roots, inputs, off, j0, len, planes) };
            // SAFETY: as in dot_gfni, for the second half (off + 64 <= vec_len).
            unsafe {
                by_group!(
                    g,
                    group_avx2,
                    ACC,
                    t,
                    roots,
                    inputs,
                    off + 32,
                    j0,
                    len,
                    planes
                )
            };
            off += 64;
        }
        j0 += g;
    }
}

/// Planes `j0..j0 + G` of one 32-byte step at `off`.
///
/// # Safety
///
/// As [`dot_avx2`], with `off + 32 <= vec_len` and `j0 + G <= roots`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn group_avx2<const G: usize, const ACC: bool>(
    t: &[[u8; 32]],
    roots: usize,
    inputs: &[&[u8]],
    off: usize,
    j0: usize,
    len: usize,
    planes: &mut [u8],
) {
    let mut acc = [_mm256_setzero_si256(); G];
    if ACC {
        for (g, a) in acc.iter_mut().enumerate() {
            let at = (j0 + g) * len + off;
            // SAFETY: the caller guarantees (j0 + g) * len + off + 32 <= planes.len().
            *a = unsafe { _mm256_loadu_si256(planes.as_ptr().wrapping_add(at).cast()) };
        }
    }
    let low = _mm256_set1_epi8(0x0f);
    for (i, input) in inputs.iter().enumerate() {
        // SAFETY: the caller guarantees off + 32 <= input.len().
        let x = unsafe { _mm256_loadu_si256(input.as_ptr().wrapping_add(off).cast()) };
        let lo = _mm256_and_si256(x, low);
        let hi = _mm256_and_si256(_mm256_srli_epi64::<4>(x), low);
        let row = &t[i * roots + j0..i * roots + j0 + G];
        for (a, tab) in acc.iter_mut().zip(row) {
            let (tl, th) = nibble_lanes(tab);
            let p = _mm256_xor_si256(_mm256_shuffle_epi8(tl, lo), _mm256_shuffle_epi8(th, hi));
            *a = _mm256_xor_si256(*a, p);
        }
    }
    for (g, a) in acc.iter().enumerate() {
        let at = (j0 + g) * len + off;
        // SAFETY: the caller guarantees (j0 + g) * len + off + 32 <= planes.len().
        unsafe { _mm256_storeu_si256(planes.as_mut_ptr().wrapping_add(at).cast(), *a) };
    }
}

/// A coefficient's low- and high-nibble product tables, each in both 128-bit lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn nibble_lanes(tab: &[u8; 32]) -> (__m256i, __m256i) {
    let (lo_half, hi_half) = tab.split_at(16);
    // SAFETY: each half of the 32-byte table is 16 bytes, what the load reads.
    let lo = unsafe { _mm_loadu_si128(lo_half.as_ptr().cast()) };
    // SAFETY: as above, for the high half.
    let hi = unsafe { _mm_loadu_si128(hi_half.as_ptr().cast()) };
    (
        _mm256_broadcastsi128_si256(lo),
        _mm256_broadcastsi128_si256(hi),
    )
}

/// Planes `j0..j0 + G` of one 64-byte step at `off`, two vectors at a time (for G <= 2,
/// where the accumulators and tables fit in the registers).
///
/// # Safety
///
/// As [`dot_avx2`], with `off + 64 <= vec_len` and `j0 + G <= roots`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn pair_avx2<const G: usize, const ACC: bool>(
    t: &[[u8; 32]],
    roots: usize,
    inputs: &[&[u8]],
    off: usize,
    j0: usize,
    len: usize,
    planes: &mut [u8],
) {
    let mut acc = [[_mm256_setzero_si256(); 2]; G];
    if ACC {
        for (g, a) in acc.iter_mut().enumerate() {
            let at = (j0 + g) * len + off;
            // SAFETY: the caller guarantees (j0 + g) * len + off + 64 <= planes.len().
            a[0] = unsafe { _mm256_loadu_si256(planes.as_ptr().wrapping_add(at).cast()) };
            // SAFETY: as above, for the second 32 bytes.
            a[1] = unsafe { _mm256_loadu_si256(planes.as_ptr().wrapping_add(at + 32).cast()) };
        }
    }
    let low = _mm256_set1_epi8(0x0f);
    for (i, input) in inputs.iter().enumerate() {
        let p = input.as_ptr().wrapping_add(off);
        // SAFETY: the caller guarantees off + 64 <= input.len().
        let x0 = unsafe { _mm256_loadu_si256(p.cast()) };
        // SAFETY: as above, for the second 32 bytes.
        let x1 = unsafe { _mm256_loadu_si256(p.wrapping_add(32).cast()) };
        let (lo0, lo1) = (_mm256_and_si256(x0, low), _mm256_and_si256(x1, low));
        let hi0 = _mm256_and_si256(_mm256_srli_epi64::<4>(x0), low);
        let hi1 = _mm256_and_si256(_mm256_srli_epi64::<4>(x1), low);
        let row = &t[i * roots + j0..i * roots + j0 + G];
        for (a, tab) in acc.iter_mut().zip(row) {
            let (tl, th) = nibble_lanes(tab);
            let p0 = _mm256_xor_si256(_mm256_shuffle_epi8(tl, lo0), _mm256_shuffle_epi8(th, hi0));
            let p1 = _mm256_xor_si256(_mm256_shuffle_epi8(tl, lo1), _mm256_shuffle_epi8(th, hi1));
            a[0] = _mm256_xor_si256(a[0], p0);
            a[1] = _mm256_xor_si256(a[1], p1);
        }
    }
    for (g, a) in acc.iter().enumerate() {
        let at = (j0 + g) * len + off;
        // SAFETY: the caller guarantees (j0 + g) * len + off + 64 <= planes.len().
        unsafe { _mm256_storeu_si256(planes.as_mut_ptr().wrapping_add(at).cast(), a[0]) };
        // SAFETY: as above, for the second 32 bytes.
        unsafe { _mm256_storeu_si256(planes.as_mut_ptr().wrapping_add(at + 32).cast(), a[1]) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fec::rs::Code;

    #[test]
    fn every_kernel_matches_the_lfsr() {
        for roots in [1usize, 2, 3, 8, 9, 17, 24] {
            let code = Code::new(roots);
            let k = code.data_len();
            let coeffs = Coeffs::new(code.parity_matrix(), roots);
            // One vector step and a scalar tail.
            let len = 128 + 36;
            let blocks: Vec<Vec<u8>> = (0..k)
                .map(|i| crate::io::seeded(len, 0x9e37_79b9_7f4a_7c15 ^ (roots << 8 | i) as u64))
                .collect();
            let inputs: Vec<&[u8]> = blocks.iter().map(|b| b.as_slice()).collect();
            let mut expect = vec![0u8; roots * len];
            let mut data = vec![0u8; k];
            let mut parity = vec![0u8; roots];
            for b in 0..len {
                for i in 0..k {
                    data[i] = blocks[i][b];
                }
                code.encode(&data, &mut parity);
                for j in 0..roots {
                    expect[j * len + b] = parity[j];
                }
            }
            for kernel in Kernel::available() {
                let mut planes = vec![0xaau8; roots * len];
                assert!(coeffs.dot(kernel, &inputs, len, &mut planes));
                assert!(planes == expect, "{kernel:?} with {roots} roots");
                // The same parity added up one input at a time, in reverse order.
                let raw = code.parity_matrix();
                let mut sum = vec![0u8; roots * len];
                for i in (0..k).rev() {
                    let one = Coeffs::new(raw[i * roots..(i + 1) * roots].to_vec(), roots);
                    assert!(one.dot_add(kernel, &[inputs[i]], len, &mut sum));
                }
                assert!(sum == expect, "{kernel:?} adding with {roots} roots");
                // Through the syndromes, in tiles of 8 positions in order; and with the
                // data ending at position 100 (later positions zero), as the hash area
                // is left for later.
                for steps in [k, 100] {
                    let syn = Syndromes::new(&code, 8, steps.div_ceil(8));
                    let mut s = vec![0u8; roots * len];
                    let zeros = vec![0u8; len];
                    for q in 0..k.div_ceil(8) {
                        if q * 8 >= steps.div_ceil(8) * 8 {
                            break;
                        }
                        let tile: Vec<&[u8]> = (q * 8..(q * 8 + 8).min(k))
                            .map(|i| if i < steps { inputs[i] } else { &zeros[..] })
                            .collect();
                        assert!(syn.add(kernel, q, &tile, len, &mut s));
                    }
                    let mut got = vec![0xaau8; roots * len];
                    assert!(syn.parity(kernel, &s, len, &mut got));
                    let mut want = vec![0u8; roots * len];
                    let cut: Vec<&[u8]> = (0..k)
                        .map(|i| if i < steps { inputs[i] } else { &zeros[..] })
                        .collect();
                    assert!(coeffs.dot(kernel, &cut, len, &mut want));
                    assert!(
                        got == want,
                        "{kernel:?} through syndromes, {roots} roots, {steps}"
                    );
                }
            }
        }
    }
}
