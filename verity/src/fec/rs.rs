//! Reed-Solomon over GF(2^8) as dm-verity FEC uses it: the field of polynomial 0x11d,
//! primitive element 2, generator roots alpha^0 .. alpha^(roots-1) (first consecutive root
//! 0), full-length systematic codewords of 255 symbols. This is Phil Karn's `init_rs_char(8,
//! 0x11d, 0, 1, roots, 0)`, which cryptsetup, Android's libfec and the kernel all use.
//!
//! Symbol 0 of a codeword is the coefficient of the highest power, x^254; the parity follows
//! the data. The scalar encoder here is the reference; the fast encoders in
//! [`crate::fec::gfmul`] multiply whole blocks by the columns of [`Code::parity_matrix`], or
//! gather their syndromes and multiply those by [`Code::parity_of_syndromes`].

/// Symbols per codeword.
pub(crate) const NN: usize = 255;

/// log/antilog tables of the field.
pub(crate) struct Field {
    exp: [u8; 512],
    log: [u8; 256],
}

impl Field {
    const fn new() -> Field {
        let mut exp = [0u8; 512];
        let mut log = [0u8; 256];
        let mut x: u16 = 1;
        let mut i = 0;
        while i < 255 {
            exp[i] = x as u8;
            exp[i + 255] = x as u8;
            log[x as usize] = i as u8;
            x <<= 1;
            if x & 0x100 != 0 {
                x ^= 0x11d;
            }
            i += 1;
        }
        // exp[510], exp[511] stay unused; log[0] is undefined and never read.
        Field { exp, log }
    }

    #[inline]
    pub(crate) fn mul(&self, a: u8, b: u8) -> u8 {
        if a == 0 || b == 0 {
            0
        } else {
            self.exp[self.log[a as usize] as usize + self.log[b as usize] as usize]
        }
    }

    /// The e with alpha^e = a; a must not be zero.
    #[inline]
    fn log(&self, a: u8) -> usize {
        self.log[a as usize] as usize
    }

    /// alpha^e for e < 510.
    #[inline]
    fn exp(&self, e: usize) -> u8 {
        self.exp[e]
    }

    /// alpha^e for any e (taken mod 255).
    #[inline]
    pub(crate) fn pow_alpha(&self, e: usize) -> u8 {
        self.exp[e % 255]
    }

    /// a / b; b must not be zero.
    #[inline]
    fn div(&self, a: u8, b: u8) -> u8 {
        if a == 0 {
            0
        } else {
            self.exp[self.log[a as usize] as usize + 255 - self.log[b as usize] as usize]
        }
    }

    fn inv(&self, a: u8) -> u8 {
        self.div(1, a)
    }
}

pub(crate) static GF: Field = Field::new();

/// One RS(255, 255 - roots) code.
#[derive(Clone, Debug)]
pub(crate) struct Code {
    roots: usize,
    /// Generator polynomial, highest power first, monic: genpoly[0] = 1.
    genpoly: Vec<u8>,
    /// `times[j][x]` = x * alpha^j for j < roots: a syndrome's Horner step is one lookup.
    times: Vec<[u8; 256]>,
}

/// Outcome of decoding one codeword.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Already a codeword.
    Clean,
    /// Corrected this many symbols (erasures whose value was already right not counted).
    Corrected(usize),
    /// Too many errors: left untouched.
    Failed,
}

impl Code {
    pub(crate) fn new(roots: usize) -> Code {
        // g(x) = prod_{i < roots} (x - alpha^i), built highest power first.
        let mut g = vec![1u8];
        for i in 0..roots {
            let r = GF.pow_alpha(i);
            let mut next = vec![0u8; g.len() + 1];
            for (j, &c) in g.iter().enumerate() {
                next[j] ^= c;
                next[j + 1] ^= GF.mul(c, r);
            }
            g = next;
        }
        let times = (0..roots)
            .map(|j| {
                let a = GF.pow_alpha(j);
                std::array::from_fn(|x| GF.mul(x as u8, a))
            })
            .collect();
        Code {
            roots,
            genpoly: g,
            times,
        }
    }

    pub(crate) fn roots(&self) -> usize {
        self.roots
    }

    pub(crate) fn data_len(&self) -> usize {
        NN - self.roots
    }

    /// Parity of `data` (length `data_len()`) into `parity` (length `roots`): the remainder
    /// of data(x) * x^roots divided by g(x), the classic LFSR.
    pub(crate) fn encode(&self, data: &[u8], parity: &mut [u8]) {
        let r = self.roots;
        parity[..r].fill(0);
        for &d in &data[..self.data_len()] {
            let fb = d ^ parity[0];
            parity.copy_within(1..r, 0);
            parity[r - 1] = 0;
            if fb != 0 {
                for (p, &g) in parity[..r].iter_mut().zip(&self.genpoly[1..]) {
                    *p ^= GF.mul(fb, g);
                }
            }
        }
    }

    /// Row i holds the parity of the unit codeword with symbol i = 1: parity(data) is the
    /// XOR over i of data[i] times row i, since the code is linear.
    pub(crate) fn parity_matrix(&self) -> Vec<u8> {
        let k = self.data_len();
        let mut rows = vec![0u8; k * self.roots];
        let mut unit = vec![0u8; k];
        for (i, row) in rows.chunks_mut(self.roots).enumerate() {
            unit[i] = 1;
            self.encode(&unit, row);
            unit[i] = 0;
        }
        rows
    }

    /// The matrix that turns the syndromes of the data alone into the parity:
    /// `raw[j * roots + m]` is the coefficient of syndrome j in parity symbol m, where
    /// syndrome j of data d is `XOR_i d[i] * alpha^(j * (data_len - 1 - i))` (Horner over
    /// the data at alpha^j). The parity is linear in the data and so in its syndromes: the
    /// codeword's value at a root is zero, which ties the two by a Vandermonde system. It
    /// is solved here from the last `roots` rows of the parity matrix, whose syndromes are
    /// alpha^(j * e) for e < roots.
    pub(crate) fn parity_of_syndromes(&self) -> Vec<u8> {
        let r = self.roots;
        let k = self.data_len();
        let p = self.parity_matrix();
        // Rows [W | B]: W[e][j] = alpha^(j * e), B[e] = the parity row of position k-1-e.
        let mut rows: Vec<Vec<u8>> = (0..r)
            .map(|e| {
                let mut row: Vec<u8> = (0..r).map(|j| GF.pow_alpha(j * e)).collect();
                row.extend_from_slice(&p[(k - 1 - e) * r..(k - e) * r]);
                row
            })
            .collect();
        // Gauss-Jordan; a Vandermonde matrix of distinct points always has a pivot.
        for col in 0..r {
            let Some(pivot) = (col..r).find(|&e| rows[e][col] != 0) else {
                continue;
            };
            rows.swap(col, pivot);
            let inv = GF.inv(rows[col][col]);
            for x in rows[col].iter_mut() {
                *x = GF.mul(*x, inv);
            }
            let lead = rows[col].clone();
            for (e, row) in rows.iter_mut().enumerate() {
                let f = row[col];
                if e != col && f != 0 {
                    for (x, &l) in row.iter_mut().zip(&lead) {
                        *x ^= GF.mul(f, l);
                    }
                }
            }
        }
        rows.iter()
            .flat_map(|row| row[r..].iter().copied())
            .collect()
    }

    /// The syndromes of `cw` (Horner at each root, all roots side by side: independent
    /// chains of lookups).
    fn syndromes(&self, cw: &[u8], s: &mut [u8; 32]) {
        let r = self.roots;
        let mut acc = [0u8; 32];
        for &c in cw {
            for (a, t) in acc[..r].iter_mut().zip(&self.times) {
                *a = t[*a as usize] ^ c;
            }
        }
        *s = acc;
    }

    /// The syndromes of a received word whose last `roots` symbols differ by `delta` from
    /// the parity of its first `data_len()`: the word less that codeword is zero but for
    /// `delta`, so only `roots` symbols are summed (a scan that has encoded the data
    /// knows the difference; its full syndromes would take 255 symbols).
    pub(crate) fn syndromes_of_parity_delta(&self, delta: &[u8]) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.syndromes(&delta[..self.roots], &mut s);
        s
    }

    /// Correct `cw` (255 symbols) in place, treating the symbols at `erasures` as unknown.
    /// Corrects e errors and s erasures when 2e + s <= roots. The result is checked to be a
    /// codeword before anything is changed, so a failure leaves `cw` as it was.
    pub(crate) fn decode(&self, cw: &mut [u8], erasures: &[usize]) -> Decoded {
        let mut s = [0u8; 32];
        self.syndromes(&cw[..NN], &mut s);
        self.decode_with(cw, &s, erasures)
    }

    /// [`Code::decode`] given the syndromes of `cw`.
    pub(crate) fn decode_with(&self, cw: &mut [u8], s: &[u8; 32], erasures: &[usize]) -> Decoded {
        let r = self.roots;
        if s[..r].iter().all(|&x| x == 0) {
            return Decoded::Clean;
        }
        if erasures.len() > r || erasures.iter().any(|&p| p >= NN) {
            return Decoded::Failed;
        }
        // lambda (lowest power first), initialised to the erasure locator
        // prod (1 + X_k x) with X_k = alpha^(254 - position).
        let mut lambda = [0u8; 33];
        lambda[0] = 1;
        for &p in erasures {
            let x = GF.pow_alpha(NN - 1 - p);
            for j in (1..=r).rev() {
                lambda[j] ^= GF.mul(lambda[j - 1], x);
            }
        }
        let mut b = lambda;
        let ne = erasures.len();
        let mut el = ne;
        for step in (ne + 1)..=r {
            let mut discr = 0u8;
            for i in 0..step {
                discr ^= GF.mul(lambda[i], s[step - i - 1]);
            }
            // b <- x * b
            let mut xb = [0u8; 33];
            xb[1..].copy_from_slice(&b[..32]);
            if discr == 0 {
                b = xb;
                continue;
            }
            let mut t = lambda;
            for i in 0..=r {
                t[i] ^= GF.mul(discr, xb[i]);
            }
            if 2 * el < step + ne {
                el = step + ne - el;
                let inv = GF.inv(discr);
                for i in 0..=r {
                    b[i] = GF.mul(lambda[i], inv);
                }
            } else {
                b = xb;
            }
            lambda = t;
        }
        let deg = (0..=r).rev().find(|&i| lambda[i] != 0).unwrap_or(0);
        // deg = erasures + errors; only 2 * errors + erasures <= roots is sure to be the
        // nearest codeword. Past that the decoder may still find one (another codeword
        // than the one sent), which a caller would take for a repair.
        if deg == 0 || deg > r || 2 * deg > r + ne {
            return Decoded::Failed;
        }
        // omega = s(x) * lambda(x) mod x^r
        let mut omega = [0u8; 32];
        for i in 0..r {
            let mut acc = 0u8;
            for j in 0..=i {
                acc ^= GF.mul(s[i - j], lambda[j]);
            }
            omega[i] = acc;
        }
        // Chien search over all 255 positions, Forney for the values. In the log domain:
        // term i of lambda(X^-1) at position p is alpha^(log lambda_i + i * (p + 1)), so
        // the next position adds i to its exponent (an addition and a lookup per term,
        // where products took most of a decode).
        let mut exps = [0usize; 33];
        for (i, x) in exps.iter_mut().enumerate().take(deg + 1).skip(1) {
            if lambda[i] != 0 {
                *x = (GF.log(lambda[i]) + i) % 255;
            }
        }
        let mut fixes: [(usize, u8); 32] = [(0, 0); 32];
        let mut found = 0;
        for p in 0..NN {
            let e = NN - 1 - p; // X = alpha^e, X^-1 = alpha^(255 - e)
            let mut v = lambda[0];
            for (i, x) in exps.iter_mut().enumerate().take(deg + 1).skip(1) {
                if lambda[i] != 0 {
                    v ^= GF.exp(*x);
                    let next = *x + i;
                    *x = if next >= 255 { next - 255 } else { next };
                }
            }
            if v != 0 {
                continue;
            }
            let xinv = GF.pow_alpha(255 - e);
            if found == deg {
                return Decoded::Failed;
            }
            // lambda'(x): odd terms only, in characteristic 2.
            let mut den = 0u8;
            let mut xp = 1u8;
            let x2 = GF.mul(xinv, xinv);
            let mut i = 1;
            while i <= deg {
                den ^= GF.mul(lambda[i], xp);
                xp = GF.mul(xp, x2);
                i += 2;
            }
            if den == 0 {
                return Decoded::Failed;
            }
            let mut num = 0u8;
            let mut xp = 1u8;
            for &o in omega.iter().take(r) {
                num ^= GF.mul(o, xp);
                xp = GF.mul(xp, xinv);
            }
            let y = GF.mul(GF.pow_alpha(e), GF.div(num, den));
            fixes[found] = (p, y);
            found += 1;
        }
        if found != deg {
            return Decoded::Failed;
        }
        // The corrected word must be a codeword: the error pattern's syndromes are the
        // received word's (the code is linear), which takes a product per fix and root
        // rather than the whole word's syndromes again.
        for (j, &sj) in s[..r].iter().enumerate() {
            let mut acc = sj;
            for &(p, y) in &fixes[..found] {
                acc ^= GF.mul(y, GF.pow_alpha(j * (NN - 1 - p)));
            }
            if acc != 0 {
                return Decoded::Failed;
            }
        }
        let mut changed = 0;
        for &(p, y) in &fixes[..found] {
            if y != 0 {
                cw[p] ^= y;
                changed += 1;
            }
        }
        Decoded::Corrected(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn codeword(code: &Code, seed: &mut u64) -> Vec<u8> {
        let mut cw: Vec<u8> = (0..NN).map(|_| rng(seed) as u8).collect();
        let k = code.data_len();
        let (d, p) = cw.split_at_mut(k);
        code.encode(d, p);
        cw
    }

    #[test]
    fn field_tables_are_the_0x11d_field() {
        assert_eq!(GF.pow_alpha(8), 0x1d);
        assert_eq!(GF.mul(0x80, 2), 0x1d);
        for a in 1..=255u8 {
            assert_eq!(GF.mul(a, GF.inv(a)), 1, "inverse of {a}");
        }
    }

    #[test]
    fn generator_has_the_consecutive_roots() {
        for roots in [2, 10, 24] {
            let code = Code::new(roots);
            for i in 0..roots {
                let x = GF.pow_alpha(i);
                let v = code.genpoly.iter().fold(0u8, |acc, &c| GF.mul(acc, x) ^ c);
                assert_eq!(v, 0, "alpha^{i} is a root for {roots} roots");
            }
        }
    }

    #[test]
    fn parity_from_syndromes_equals_the_lfsr() {
        let mut seed = 0x0bad_cafe_f00d_1234u64;
        for roots in [1, 2, 3, 7, 24] {
            let code = Code::new(roots);
            let m = code.parity_of_syndromes();
            let k = code.data_len();
            for _ in 0..20 {
                let cw = codeword(&code, &mut seed);
                let data = &cw[..k];
                let mut expect = vec![0u8; roots];
                code.encode(data, &mut expect);
                let s: Vec<u8> = (0..roots)
                    .map(|j| {
                        let x = GF.pow_alpha(j);
                        data.iter().fold(0u8, |acc, &d| GF.mul(acc, x) ^ d)
                    })
                    .collect();
                let got: Vec<u8> = (0..roots)
                    .map(|mm| (0..roots).fold(0u8, |acc, j| acc ^ GF.mul(s[j], m[j * roots + mm])))
                    .collect();
                assert_eq!(got, expect, "{roots} roots");
            }
        }
    }

    #[test]
    fn matrix_encoding_equals_the_lfsr() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        for roots in [2, 7, 24] {
            let code = Code::new(roots);
            let m = code.parity_matrix();
            for _ in 0..20 {
                let cw = codeword(&code, &mut seed);
                let mut p = vec![0u8; roots];
                for (i, &d) in cw[..code.data_len()].iter().enumerate() {
                    for j in 0..roots {
                        p[j] ^= GF.mul(d, m[i * roots + j]);
                    }
                }
                assert_eq!(p, cw[code.data_len()..]);
            }
        }
    }

    #[test]
    fn corrects_up_to_half_the_roots_and_never_changes_on_failure() {
        let mut seed = 0xfeed_beef_1234_5678u64;
        for roots in 2..=24usize {
            let code = Code::new(roots);
            for trial in 0..40 {
                let good = codeword(&code, &mut seed);
                let mut bad = good.clone();
                let nerr = trial % (roots / 2 + 1);
                let mut pos = Vec::new();
                while pos.len() < nerr {
                    let p = (rng(&mut seed) % NN as u64) as usize;
                    if !pos.contains(&p) {
                        pos.push(p);
                        bad[p] ^= 1 + (rng(&mut seed) % 255) as u8;
                    }
                }
                let out = code.decode(&mut bad, &[]);
                assert_eq!(bad, good, "roots {roots}, {nerr} errors");
                let expect = if nerr == 0 {
                    Decoded::Clean
                } else {
                    Decoded::Corrected(nerr)
                };
                assert_eq!(out, expect);
            }
        }
    }

    #[test]
    fn erasures_and_errors_together() {
        let mut seed = 0x0bad_cafe_0000_0001u64;
        for roots in [2usize, 3, 8, 24] {
            let code = Code::new(roots);
            for trial in 0..60 {
                let good = codeword(&code, &mut seed);
                let mut bad = good.clone();
                let s = trial % (roots + 1);
                let e = (roots - s) / 2;
                let mut pos: Vec<usize> = Vec::new();
                while pos.len() < s + e {
                    let p = (rng(&mut seed) % NN as u64) as usize;
                    if !pos.contains(&p) {
                        pos.push(p);
                    }
                }
                for &p in &pos {
                    bad[p] = rng(&mut seed) as u8;
                }
                let erasures = &pos[..s];
                let out = code.decode(&mut bad, erasures);
                assert_eq!(bad, good, "roots {roots}, {s} erasures {e} errors");
                assert_ne!(out, Decoded::Failed);
            }
        }
    }

    /// Past the capacity (2 * errors + erasures > roots) the decoder either fails or lands
    /// on a codeword within the capacity of what it was given: never more corrections
    /// outside the erasures than the roots left by them allow. (A repair's erasures are
    /// whole blocks the tree rejects; a codeword with another error beside them was once
    /// "corrected" to a third codeword, and its round lost.)
    #[test]
    fn past_the_capacity_no_correction_exceeds_it() {
        let mut seed = 0x00c0_ffee_0000_0003u64;
        let mut failed = 0;
        for roots in [2usize, 3, 4, 8, 24] {
            let code = Code::new(roots);
            for trial in 0..200 {
                let good = codeword(&code, &mut seed);
                let mut bad = good.clone();
                let s = trial % (roots + 1);
                // One error more than the erasures leave room for.
                let e = (roots - s) / 2 + 1;
                let mut pos: Vec<usize> = Vec::new();
                while pos.len() < s + e {
                    let p = (rng(&mut seed) % NN as u64) as usize;
                    if !pos.contains(&p) {
                        pos.push(p);
                    }
                }
                // The erased symbols keep their values half the time (a bad block's
                // bytes are not all bad).
                for (n, &p) in pos.iter().enumerate() {
                    if n >= s || trial % 2 == 0 {
                        bad[p] ^= 1 + (rng(&mut seed) % 255) as u8;
                    }
                }
                let erasures = &pos[..s];
                let before = bad.clone();
                match code.decode(&mut bad, erasures) {
                    Decoded::Failed => {
                        failed += 1;
                        assert_eq!(bad, before);
                    }
                    _ => {
                        let outside = (0..NN)
                            .filter(|p| bad[*p] != before[*p] && !erasures.contains(p))
                            .count();
                        assert!(
                            2 * outside + s <= roots,
                            "roots {roots}, {s} erasures: {outside} corrections outside them"
                        );
                    }
                }
            }
        }
        assert!(failed > 500, "only {failed} of 1000 failed");
    }

    #[test]
    fn beyond_capacity_is_failed_or_a_valid_codeword() {
        // Past the capacity a decoder may land on another codeword (that is why repair
        // checks the hash tree); it must never return a non-codeword.
        let mut seed = 42u64;
        let code = Code::new(8);
        let mut failed = 0;
        for _ in 0..200 {
            let good = codeword(&code, &mut seed);
            let mut bad = good.clone();
            for _ in 0..9 {
                let p = (rng(&mut seed) % NN as u64) as usize;
                bad[p] ^= 1 + (rng(&mut seed) % 255) as u8;
            }
            let before = bad.clone();
            match code.decode(&mut bad, &[]) {
                Decoded::Failed => {
                    failed += 1;
                    assert_eq!(bad, before);
                }
                _ => {
                    let mut s = [0u8; 32];
                    code.syndromes(&bad, &mut s);
                    assert_eq!(s, [0; 32]);
                }
            }
        }
        assert!(failed > 150, "only {failed} of 200 detected");
    }

    /// What a scan does: the syndromes from the difference between the stored parity and
    /// the data's own are the word's, and decoding with them ends as decoding the word
    /// does, within the capacity and past it (where only a codeword or nothing may come
    /// out).
    #[test]
    fn syndromes_of_the_parity_difference_decode_as_the_word() {
        let mut seed = 0x05ee_d0fd_e17a_u64;
        for roots in 2..=24usize {
            let code = Code::new(roots);
            let k = code.data_len();
            for trial in 0..60 {
                let good = codeword(&code, &mut seed);
                let mut bad = good.clone();
                // Up to twice the capacity, in data and parity alike.
                for _ in 0..trial % (roots + 2) {
                    let p = (rng(&mut seed) % NN as u64) as usize;
                    bad[p] ^= 1 + (rng(&mut seed) % 255) as u8;
                }
                let mut own = vec![0u8; roots];
                code.encode(&bad[..k], &mut own);
                let delta: Vec<u8> = own.iter().zip(&bad[k..]).map(|(a, b)| a ^ b).collect();
                let s = code.syndromes_of_parity_delta(&delta);
                let mut full = [0u8; 32];
                code.syndromes(&bad, &mut full);
                assert_eq!(s, full, "roots {roots}");
                let (mut a, mut b) = (bad.clone(), bad.clone());
                let out = code.decode_with(&mut a, &s, &[]);
                assert_eq!(out, code.decode(&mut b, &[]), "roots {roots}");
                assert_eq!(a, b);
                if out != Decoded::Failed {
                    code.syndromes(&a, &mut full);
                    assert_eq!(full, [0; 32], "roots {roots}: not a codeword");
                } else {
                    assert_eq!(a, bad, "a failure changed the word");
                }
            }
        }
    }
}
