//! Incremental tree updates equal a full rebuild.

mod common;

use common::seeded_bytes;
use keel_verity::{HashAlgorithm, HashTree, HashType, VerityParams};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn update_equals_rebuild(
        blocks in 1u64..3000,
        dbs in prop::sample::select(vec![512u32, 1024, 4096]),
        hbs in prop::sample::select(vec![512u32, 4096]),
        alg in prop::sample::select(HashAlgorithm::ALL.to_vec()),
        chromeos in any::<bool>(),
        seed in any::<u64>(),
        ranges in prop::collection::vec((any::<u64>(), 0u64..20_000), 0..6),
    ) {
        let ht = if chromeos { HashType::ChromeOs } else { HashType::Normal };
        let p = VerityParams::builder().algorithm(alg).hash_type(ht).data_block_size(dbs).hash_block_size(hbs)
            .data_blocks(blocks).salt(seeded_bytes(seed ^ 1, (seed % 70) as usize)).build().unwrap();
        let mut data = seeded_bytes(seed, p.data_size() as usize);
        let mut tree = HashTree::build(&p, &data).unwrap();
        let len = data.len() as u64;
        let mut changed = Vec::new();
        for (i, (start, n)) in ranges.into_iter().enumerate() {
            let start = start % len;
            let end = (start + n).min(len);
            for (j, b) in data[start as usize..end as usize].iter_mut().enumerate() {
                *b ^= (i + j) as u8 | 1;
            }
            changed.push(start..end);
        }
        tree.update(&data, &changed).unwrap();
        let full = HashTree::build(&p, &data).unwrap();
        prop_assert_eq!(tree.root_hash(), full.root_hash());
        prop_assert_eq!(tree.as_bytes(), full.as_bytes());
    }
}
