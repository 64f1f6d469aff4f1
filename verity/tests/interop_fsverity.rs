//! fs-verity digests and Merkle trees against `fsverity digest` (fsverity-utils).

mod common;

use std::fs;

use common::{run_ok, seeded_bytes, tool};
use keel_verity::{fsverity_digest, HashAlgorithm};

#[test]
fn digests_and_trees_match_fsverity_utils() {
    let Some(fsv) = tool("fsverity", "fsverity") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for (alg, name) in [
        (HashAlgorithm::Sha256, "sha256"),
        (HashAlgorithm::Sha512, "sha512"),
    ] {
        for bs in [1024u32, 4096, 65536] {
            for (size, salt_len) in [
                (0usize, 0usize),
                (1, 0),
                (4095, 3),
                (4096, 0),
                (4097, 32),
                (300_000, 7),
                (1 << 20, 16),
            ] {
                let f = dir.path().join("file");
                fs::write(&f, seeded_bytes(size as u64 + u64::from(bs), size)).unwrap();
                let salt = seeded_bytes(9, salt_len);
                let tree_out = dir.path().join("tree");
                let desc_out = dir.path().join("desc");
                let mut args = vec![
                    "digest".to_string(),
                    f.display().to_string(),
                    format!("--hash-alg={name}"),
                    format!("--block-size={bs}"),
                    format!("--out-merkle-tree={}", tree_out.display()),
                    format!("--out-descriptor={}", desc_out.display()),
                ];
                if salt_len > 0 {
                    args.push(format!("--salt={}", hex::encode(&salt)));
                }
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = run_ok(&fsv, &argv);
                let want = out.split_whitespace().next().unwrap().to_string();
                let keel = fsverity_digest(&fs::File::open(&f).unwrap(), alg, bs, &salt).unwrap();
                let case = format!("{name} bs {bs} size {size} salt {salt_len}");
                assert_eq!(
                    format!("{name}:{}", hex::encode(&keel.digest)),
                    want,
                    "{case}"
                );
                assert_eq!(
                    fs::read(&desc_out).unwrap(),
                    keel.descriptor,
                    "{case}: descriptor"
                );
                assert_eq!(fs::read(&tree_out).unwrap(), keel.tree, "{case}: tree");
                n += 1;
            }
        }
    }
    assert_eq!(n, 42);
    // Parameters fsverity refuses are refused here too.
    assert!(fsverity_digest(&Vec::<u8>::new(), HashAlgorithm::Sha1, 4096, &[]).is_err());
    assert!(fsverity_digest(&Vec::<u8>::new(), HashAlgorithm::Sha256, 512, &[]).is_err());
    assert!(fsverity_digest(&Vec::<u8>::new(), HashAlgorithm::Sha256, 4096, &[0; 33]).is_err());
}
