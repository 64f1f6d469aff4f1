//! Verification against an untrusted hash device: the first bytes choose the parameters,
//! the rest is the hash device. Never a panic, never an allocation the device size does
//! not justify, and a damaged tree is never accepted for data it does not describe.
#![no_main]

use keel_verity::{
    open_hash_device, verify, BlockVerifier, BuildOptions, HashAlgorithm, HashType, TreeGeometry,
    VerityParams,
};
use libfuzzer_sys::fuzz_target;

fn data_for(p: &VerityParams) -> Vec<u8> {
    (0..p.data_size() as usize)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect()
}

fuzz_target!(|input: &[u8]| {
    let Some((&head, rest)) = input.split_first() else {
        return;
    };
    let Some((&blocks, rest)) = rest.split_first() else {
        return;
    };
    let sizes = [512u32, 1024, 4096];
    let dbs = sizes[usize::from(head & 3) % 3];
    let hbs = sizes[usize::from((head >> 2) & 3) % 3];
    let alg = HashAlgorithm::ALL[usize::from(head >> 4) % 5];
    let ht = if head & 0x80 != 0 {
        HashType::ChromeOs
    } else {
        HashType::Normal
    };
    let salt_len = usize::from(blocks >> 6) * 11;
    let Ok(p) = VerityParams::new(
        ht,
        alg,
        dbs,
        hbs,
        u64::from(blocks & 63) + 1,
        vec![0x42; salt_len],
    ) else {
        return;
    };
    let data = data_for(&p);
    let root: Vec<u8> = rest.iter().take(alg.digest_size()).copied().collect();
    if root.len() != alg.digest_size() {
        return;
    }
    let hash = &rest[root.len()..];
    let g = TreeGeometry::new(&p, 0, false).expect("valid geometry");
    let opts = BuildOptions::default();
    let full = verify(&p, &g, &data, hash, &root, &opts);
    if let Ok(mut bv) = BlockVerifier::new(&p, &g, hash, &root) {
        let dbs = dbs as usize;
        let lazy_all = (0..p.data_blocks()).all(|b| {
            bv.verify_block(b, &data[b as usize * dbs..(b as usize + 1) * dbs])
                .is_ok()
        });
        // Both verifiers accept only a tree that vouches for every block.
        if full.is_ok() {
            assert!(lazy_all);
        }
    }
    // The same bytes read as a device with a superblock (parameters untrusted).
    if let Ok((sb, g)) = open_hash_device(hash, 0) {
        let small = vec![0u8; 64 * 1024];
        let _ = verify(sb.params(), &g, &small, hash, &root, &opts);
    }
});
