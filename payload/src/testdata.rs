//! Test data the unit tests of every room share (test builds only).

/// Compressible content from `seed`: words from a small vocabulary, runs of one byte,
/// stretches of noise (raw pclusters), of `len` bytes.
pub(crate) fn compressible(seed: u64, len: usize) -> Vec<u8> {
    let mut next = keel_testsupport::seeded_choice(seed);
    let mut out = Vec::with_capacity(len + 4096);
    while out.len() < len {
        match next(10) {
            0 => out.extend(std::iter::repeat_n(next(256) as u8, next(3000) as usize)),
            1 => out.extend(keel_testsupport::seeded_bytes(
                next(1 << 30),
                next(6000) as usize,
            )),
            _ => {
                for _ in 0..next(200) {
                    out.extend_from_slice(format!("w{} ", next(500)).as_bytes());
                }
            }
        }
    }
    out.truncate(len);
    out
}
