//! FEC on damaged devices: the first byte picks the roots, the rest is XORed over data,
//! hash tree and parity. Never a panic; a repair reported complete restores the original
//! bytes exactly; every data block ends as its original or its damaged content, never a
//! third value. The Android header parser runs on the raw input too.
#![no_main]

use keel_verity::{
    fec_encode, fec_repair, format, AndroidFecHeader, BuildOptions, FecGeometry, FormatOptions,
    ReadAt, RepairTarget, VerityParams, WriteAt,
};
use libfuzzer_sys::fuzz_target;
use std::sync::Mutex;

const BS: usize = 512;
const BLOCKS: usize = 300;

/// The hash device and the FEC device as one file: two handles on the same bytes.
struct Shared<'a>(&'a Mutex<Vec<u8>>);

impl ReadAt for Shared<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.lock().unwrap().read_exact_at(buf, offset)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.0.lock().unwrap().len() as u64)
    }
}

impl WriteAt for Shared<'_> {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.lock().unwrap().write_all_at(buf, offset)
    }
}

fuzz_target!(|input: &[u8]| {
    if let Ok(h) = AndroidFecHeader::parse(input) {
        assert_eq!(AndroidFecHeader::parse(&h.to_bytes()).ok(), Some(h));
    }
    let Some((&head, damage)) = input.split_first() else {
        return;
    };
    let roots = 2 + (head & 0x7f) % 23;
    // High bit: the parity on the hash device, after the tree and two foreign blocks
    // (covered by the parity, checked by no tree).
    let on_hash = head & 0x80 != 0;
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
    let tree_end = hash.len();
    let opts = BuildOptions::default().threads(keel_verity::Threads::exactly(1));
    let (g, mut parity) = if on_hash {
        hash.extend((0..2 * BS).map(|i| (i * 7) as u8));
        let g =
            FecGeometry::on_hash_device(&params, &f.geometry, roots, hash.len() as u64).unwrap();
        let mut dev = hash.clone();
        fec_encode(&g, &data, &hash, &mut dev, &opts).unwrap();
        (g, dev[hash.len()..].to_vec())
    } else {
        let g = FecGeometry::separate(&params, &f.geometry, roots, hash.len() as u64, 0).unwrap();
        let mut p = Vec::new();
        fec_encode(&g, &data, &hash, &mut p, &opts).unwrap();
        (g, p)
    };
    let (clean_d, clean_h, clean_p) = (data.clone(), hash.clone(), parity.clone());

    // Damage: (position high, position low, xor) spread over data, hash device and parity.
    let (mut d, mut h) = (data, hash);
    let total = d.len() + h.len() + parity.len();
    for c in damage.chunks_exact(3) {
        let pos = (usize::from(c[0]) << 8 | usize::from(c[1])) * 97 % total;
        if pos < d.len() {
            d[pos] ^= c[2];
        } else if pos < d.len() + h.len() {
            h[pos - d.len()] ^= c[2];
        } else {
            parity[pos - d.len() - h.len()] ^= c[2];
        }
    }
    let damaged = d.clone();
    let damaged_gap = h[tree_end..].to_vec();
    let (damaged_h, damaged_p) = (h.clone(), parity.clone());
    let target = RepairTarget {
        params: &params,
        tree: &f.geometry,
        root: &f.root_hash,
    };
    let (h, p, r) = if on_hash {
        let mut all = h.clone();
        all.extend_from_slice(&parity);
        let dev = Mutex::new(all);
        let r = fec_repair(
            &g,
            &target,
            &mut d,
            &mut Shared(&dev),
            &mut Shared(&dev),
            &opts,
        );
        let all = dev.into_inner().unwrap();
        let (h, p) = all.split_at(clean_h.len());
        (h.to_vec(), p.to_vec(), r)
    } else {
        let mut h = h;
        let r = fec_repair(&g, &target, &mut d, &mut h, &mut parity, &opts);
        (h, parity, r)
    };
    // Refused (damage in more than half of the codewords): nothing was written.
    let Ok(r) = r else {
        assert!(
            d == damaged && h == damaged_h && p == damaged_p,
            "a refused repair wrote"
        );
        return;
    };
    // Blocks outside the tree are never written, whatever the parity says.
    assert_eq!(
        h[tree_end..],
        damaged_gap[..],
        "a block no tree checks was written"
    );
    if r.is_complete() {
        assert!(
            d == clean_d && h[..tree_end] == clean_h[..tree_end],
            "complete repair differs"
        );
        if r.unchecked_hash_blocks.is_empty() && damaged_gap == clean_h[tree_end..] {
            assert!(p == clean_p, "complete repair left parity differing");
        }
    }
    for (i, ((a, c), x)) in d
        .chunks(BS)
        .zip(clean_d.chunks(BS))
        .zip(damaged.chunks(BS))
        .enumerate()
    {
        assert!(
            a == c || a == x,
            "block {i} is neither original nor as damaged"
        );
        if a != c {
            assert!(r.unrepairable_data_blocks.contains(&(i as u64)) || r.unverifiable_blocks > 0);
        }
    }
});
