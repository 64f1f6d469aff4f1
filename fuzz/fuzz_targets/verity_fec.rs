//! FEC on damaged devices: the first byte picks the roots, the rest is XORed over data,
//! hash tree and parity. Never a panic; a repair reported complete restores the original
//! bytes exactly; every data block ends as its original or its damaged content, never a
//! third value. The Android header parser runs on the raw input too.
#![no_main]

use keel_verity::{
    fec_encode, fec_repair, format, AndroidFecHeader, BuildOptions, FecGeometry, FormatOptions,
    RepairTarget, VerityParams,
};
use libfuzzer_sys::fuzz_target;

const BS: usize = 512;
const BLOCKS: usize = 300;

fuzz_target!(|input: &[u8]| {
    if let Ok(h) = AndroidFecHeader::parse(input) {
        assert_eq!(AndroidFecHeader::parse(&h.to_bytes()).ok(), Some(h));
    }
    let Some((&head, damage)) = input.split_first() else { return };
    let roots = 2 + head % 23;
    let params = VerityParams::builder()
        .data_block_size(BS as u32)
        .hash_block_size(BS as u32)
        .salt(vec![1, 2, 3])
        .data_blocks(BLOCKS as u64)
        .build()
        .unwrap();
    let data: Vec<u8> = (0..BS * BLOCKS).map(|i| (i * 31 + i / 512) as u8).collect();
    let mut hash = Vec::new();
    let f = format(&params, &data, &mut hash, &FormatOptions::default()).unwrap();
    let g = FecGeometry::separate(&params, &f.geometry, roots, hash.len() as u64, 0).unwrap();
    let mut parity = Vec::new();
    let opts = BuildOptions { threads: std::num::NonZeroUsize::new(1), progress: None };
    fec_encode(&g, &data, &hash, &mut parity, &opts).unwrap();
    let (clean_d, clean_h, clean_p) = (data.clone(), hash.clone(), parity.clone());

    // Damage: pairs of (position high, position low, xor) spread over the three devices.
    let (mut d, mut h, mut p) = (data, hash, parity);
    let total = d.len() + h.len() + p.len();
    for c in damage.chunks_exact(3) {
        let pos = (usize::from(c[0]) << 8 | usize::from(c[1])) * 97 % total;
        if pos < d.len() {
            d[pos] ^= c[2];
        } else if pos < d.len() + h.len() {
            h[pos - d.len()] ^= c[2];
        } else {
            p[pos - d.len() - h.len()] ^= c[2];
        }
    }
    let damaged = d.clone();
    let target = RepairTarget { params: &params, tree: &f.geometry, root: &f.root_hash };
    let r = fec_repair(&g, &target, &mut d, &mut h, &mut p, &opts).unwrap();
    if r.is_complete() {
        assert!(d == clean_d && h == clean_h && p == clean_p, "complete repair differs");
    }
    for (i, ((a, c), x)) in d.chunks(BS).zip(clean_d.chunks(BS)).zip(damaged.chunks(BS)).enumerate() {
        assert!(a == c || a == x, "block {i} is neither original nor as damaged");
        if a != c {
            assert!(r.unrepairable_data_blocks.contains(&(i as u64)) || r.unverifiable_blocks > 0);
        }
    }
});
