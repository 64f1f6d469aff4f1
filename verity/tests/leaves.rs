//! A tree from a published leaf level, checked against a trusted root: the same tree as
//! one built from the data; a changed digest, a short level or another salt refused;
//! each leaf the digest the kernel computes of its block.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use keel_testsupport::seeded_bytes;
use keel_verity::{BlockHasher, Error, HashTree, VerityParams};

fn params(blocks: u64, salt: &[u8]) -> VerityParams {
    VerityParams::builder()
        .data_blocks(blocks)
        .salt(salt.to_vec())
        .build()
        .unwrap()
}

#[test]
fn a_leaf_level_gives_the_tree_its_root_vouches_for() {
    for blocks in [1u64, 2, 127, 128, 129, 5000] {
        let data = seeded_bytes(blocks, blocks as usize * 4096);
        let p = params(blocks, b"salt");
        let tree = HashTree::build(&p, &data).unwrap();
        let again = HashTree::from_leaf_level(&p, tree.leaf_level(), tree.root_hash()).unwrap();
        assert_eq!(again, tree, "{blocks} blocks");
        let h = BlockHasher::new(&p);
        for b in [0, blocks / 2, blocks - 1] {
            let block = &data[b as usize * 4096..(b as usize + 1) * 4096];
            assert_eq!(Some(h.hash(block).as_bytes()), tree.leaf(b));
        }
        assert_eq!(tree.leaf(blocks), None);
        // Many at once, packed.
        let mut out = vec![0u8; blocks as usize * 32];
        h.hash_many(&data, &mut out);
        for b in 0..blocks {
            assert_eq!(
                Some(&out[b as usize * 32..(b as usize + 1) * 32]),
                tree.leaf(b)
            );
        }
        // One digest changed: the root does not vouch for it.
        let mut bad = tree.leaf_level().to_vec();
        let at = (blocks as usize - 1) * 32 % bad.len();
        bad[at] ^= 1;
        let e = HashTree::from_leaf_level(&p, &bad, tree.root_hash()).unwrap_err();
        assert!(matches!(e, Error::RootHashMismatch { .. }), "{e}");
        // A level of another length, or the leaves under another salt (the levels above
        // are hashed with it; one block's leaf is the root itself).
        let short = &tree.leaf_level()[..tree.leaf_level().len() - 1];
        assert!(HashTree::from_leaf_level(&p, short, tree.root_hash()).is_err());
        let other = params(blocks, b"other");
        let salted = HashTree::from_leaf_level(&other, tree.leaf_level(), tree.root_hash());
        assert_eq!(salted.is_err(), blocks > 1);
    }
}
