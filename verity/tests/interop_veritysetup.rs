//! Keel against cryptsetup's veritysetup, in both directions: Keel's hash device is
//! byte-identical to veritysetup's and passes `veritysetup verify`; veritysetup's passes
//! Keel's verify (with the parameters read from its superblock where it has one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use common::{run, run_ok, seeded_bytes, tool};
use keel_verity::{
    format, open_hash_device, verify, BlockVerifier, BuildOptions, Error, FormatOptions,
    HashAlgorithm, HashType, TreeGeometry, VerityParams,
};

const UUID: &str = "4d1c0e7a-2b3c-4d5e-8f90-a1b2c3d4e5f6";

#[derive(Clone, Debug)]
struct Case {
    hash_type: HashType,
    alg: HashAlgorithm,
    dbs: u32,
    hbs: u32,
    blocks: u64,
    /// Bytes of a trailing partial block (not covered by the tree).
    tail: usize,
    salt_len: usize,
    superblock: bool,
    hash_offset: u64,
    /// Tree on the data device after the data, at `hash_offset`.
    same_device: bool,
    /// Pass `--data-blocks` with this many blocks (fewer than the file holds).
    data_blocks: Option<u64>,
}

impl Default for Case {
    fn default() -> Self {
        Case {
            hash_type: HashType::Normal,
            alg: HashAlgorithm::Sha256,
            dbs: 4096,
            hbs: 4096,
            blocks: 129,
            tail: 0,
            salt_len: 32,
            superblock: true,
            hash_offset: 0,
            same_device: false,
            data_blocks: None,
        }
    }
}

impl Case {
    fn salt(&self) -> Vec<u8> {
        seeded_bytes(self.salt_len as u64 + 1000, self.salt_len)
    }

    fn covered_blocks(&self) -> u64 {
        self.data_blocks.unwrap_or(self.blocks)
    }

    fn params(&self) -> VerityParams {
        VerityParams::builder()
            .hash_type(self.hash_type)
            .algorithm(self.alg)
            .data_block_size(self.dbs)
            .hash_block_size(self.hbs)
            .salt(self.salt())
            .data_blocks(self.covered_blocks())
            .build()
            .unwrap()
    }

    fn veritysetup_args(&self) -> Vec<String> {
        let mut a = vec![
            format!("--hash={}", self.alg.name()),
            format!("--format={}", self.hash_type.as_u32()),
            format!("--data-block-size={}", self.dbs),
            format!("--hash-block-size={}", self.hbs),
            format!(
                "--salt={}",
                if self.salt_len == 0 {
                    "-".to_string()
                } else {
                    hex::encode(self.salt())
                }
            ),
        ];
        if self.superblock {
            a.push(format!("--uuid={UUID}"));
        } else {
            a.push("--no-superblock".into());
        }
        if self.hash_offset != 0 {
            a.push(format!("--hash-offset={}", self.hash_offset));
        }
        if self.same_device || self.data_blocks.is_some() {
            a.push(format!("--data-blocks={}", self.covered_blocks()));
        }
        a
    }
}

fn root_from_output(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|| panic!("no root hash in veritysetup output:\n{out}"))
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .unwrap()
}

/// Run one case in both directions; returns the directory for further checks.
fn check_case(vs: &Path, case: &Case, seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data_len = case.blocks as usize * case.dbs as usize + case.tail;
    let data = seeded_bytes(seed, data_len);
    let data_path = dir.path().join("data");
    fs::write(&data_path, &data).unwrap();
    let (keel_hash, vs_hash): (PathBuf, PathBuf) = if case.same_device {
        let k = dir.path().join("keel-dev");
        let v = dir.path().join("vs-dev");
        fs::write(&k, &data).unwrap();
        fs::write(&v, &data).unwrap();
        (k, v)
    } else {
        (dir.path().join("keel-hash"), dir.path().join("vs-hash"))
    };

    // Keel writes.
    let params = case.params();
    let uuid = keel_verity::parse_uuid(UUID).unwrap();
    let opts = FormatOptions::default()
        .hash_offset(case.hash_offset)
        .superblock(case.superblock.then_some(uuid));
    let keel_root = if case.same_device {
        let f = open_rw(&keel_hash);
        format(&params, &f, &mut &f, &opts).unwrap().root_hash
    } else {
        let f = open_rw(&keel_hash);
        let d = File::open(&data_path).unwrap();
        format(&params, &d, &mut &f, &opts).unwrap().root_hash
    };
    let keel_root = hex::encode(keel_root);

    // veritysetup writes.
    let vs_data = if case.same_device {
        vs_hash.clone()
    } else {
        data_path.clone()
    };
    let mut args: Vec<String> = vec![
        "format".into(),
        vs_data.to_str().unwrap().into(),
        vs_hash.to_str().unwrap().into(),
    ];
    args.extend(case.veritysetup_args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let vs_root = root_from_output(&run_ok(vs, &argv));

    assert_eq!(keel_root, vs_root, "root hash differs for {case:?}");
    let kb = fs::read(&keel_hash).unwrap();
    let vb = fs::read(&vs_hash).unwrap();
    assert_eq!(
        kb.len(),
        vb.len(),
        "hash device length differs for {case:?}"
    );
    if let Some(i) = kb.iter().zip(&vb).position(|(a, b)| a != b) {
        panic!("hash device differs at byte {i} for {case:?}");
    }

    // veritysetup reads what Keel wrote.
    let keel_data = if case.same_device {
        keel_hash.clone()
    } else {
        data_path.clone()
    };
    let mut args: Vec<String> = vec![
        "verify".into(),
        keel_data.to_str().unwrap().into(),
        keel_hash.to_str().unwrap().into(),
        keel_root.clone(),
    ];
    args.extend(
        case.veritysetup_args()
            .into_iter()
            .filter(|a| !a.starts_with("--uuid")),
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(vs, &argv);

    // Keel reads what veritysetup wrote.
    let hash_f = File::open(&vs_hash).unwrap();
    let data_f = File::open(&vs_data).unwrap();
    let (params, geometry) = if case.superblock {
        let (sb, g) = open_hash_device(&hash_f, case.hash_offset).unwrap();
        assert_eq!(sb.uuid, uuid);
        (sb.params, g)
    } else {
        let p = case.params();
        let g = TreeGeometry::new(&p, case.hash_offset, false).unwrap();
        (p, g)
    };
    assert_eq!(params, case.params(), "superblock parameters for {case:?}");
    let root = hex::decode(&vs_root).unwrap();
    verify(
        &params,
        &geometry,
        &data_f,
        &hash_f,
        &root,
        &BuildOptions::default(),
    )
    .unwrap();
    // Lazy verification of the first and last blocks.
    let mut bv = BlockVerifier::new(&params, &geometry, &hash_f, &root).unwrap();
    let mut buf = vec![0u8; case.dbs as usize];
    for b in [0, params.data_blocks() - 1] {
        bv.read_block(&data_f, b, &mut buf).unwrap();
    }
    dir
}

fn veritysetup() -> Option<PathBuf> {
    tool("veritysetup", "cryptsetup-bin")
}

#[test]
fn algorithms_and_formats() {
    let Some(vs) = veritysetup() else { return };
    for (i, alg) in HashAlgorithm::ALL.into_iter().enumerate() {
        for ht in [HashType::Normal, HashType::ChromeOs] {
            let case = Case {
                alg,
                hash_type: ht,
                ..Case::default()
            };
            check_case(&vs, &case, i as u64);
        }
    }
}

#[test]
fn block_sizes() {
    let Some(vs) = veritysetup() else { return };
    let sizes: [(u32, u32, u64); 9] = [
        (512, 512, 300),
        (4096, 512, 40),
        (512, 4096, 300),
        (1024, 2048, 200),
        (2048, 1024, 200),
        (8192, 8192, 20),
        (65536, 65536, 5),
        (524288, 4096, 3),
        (4096, 524288, 20),
    ];
    for (dbs, hbs, blocks) in sizes {
        for ht in [HashType::Normal, HashType::ChromeOs] {
            for alg in [HashAlgorithm::Sha1, HashAlgorithm::Sha512] {
                let case = Case {
                    dbs,
                    hbs,
                    blocks,
                    hash_type: ht,
                    alg,
                    ..Case::default()
                };
                check_case(&vs, &case, u64::from(dbs ^ hbs));
            }
        }
    }
    // The largest block size, both sides.
    let case = Case {
        dbs: 524288,
        hbs: 524288,
        blocks: 2,
        ..Case::default()
    };
    check_case(&vs, &case, 7);
}

#[test]
fn salts() {
    let Some(vs) = veritysetup() else { return };
    for salt_len in [0usize, 1, 31, 63, 64, 65, 127, 128, 129, 200, 256] {
        for ht in [HashType::Normal, HashType::ChromeOs] {
            let case = Case {
                salt_len,
                hash_type: ht,
                blocks: 20,
                ..Case::default()
            };
            check_case(&vs, &case, salt_len as u64);
        }
    }
}

#[test]
fn block_counts() {
    let Some(vs) = veritysetup() else { return };
    for blocks in [1u64, 2, 127, 128, 129, 16384, 16385] {
        for superblock in [true, false] {
            let case = Case {
                blocks,
                superblock,
                ..Case::default()
            };
            check_case(&vs, &case, blocks);
        }
    }
    // Format 0 with packed sha1 digests at the level boundaries too.
    for blocks in [1u64, 127, 128, 129] {
        let case = Case {
            blocks,
            hash_type: HashType::ChromeOs,
            alg: HashAlgorithm::Sha1,
            ..Case::default()
        };
        check_case(&vs, &case, blocks + 1);
    }
}

#[test]
fn offsets_superblock_and_data_blocks() {
    let Some(vs) = veritysetup() else { return };
    let cases = [
        // Separate hash file with the hash area at an offset.
        Case {
            hash_offset: 4096,
            ..Case::default()
        },
        Case {
            hash_offset: 1536,
            ..Case::default()
        },
        Case {
            hash_offset: 8192,
            superblock: false,
            ..Case::default()
        },
        Case {
            hash_offset: 1024,
            hbs: 512,
            superblock: false,
            ..Case::default()
        },
        // Tree on the data device after the data.
        Case {
            same_device: true,
            hash_offset: 129 * 4096,
            ..Case::default()
        },
        Case {
            same_device: true,
            hash_offset: 129 * 4096 + 512,
            ..Case::default()
        },
        Case {
            same_device: true,
            hash_offset: 129 * 4096,
            superblock: false,
            ..Case::default()
        },
        // --data-blocks smaller than the device, and a trailing partial block.
        Case {
            data_blocks: Some(100),
            ..Case::default()
        },
        Case {
            tail: 1000,
            ..Case::default()
        },
        Case {
            tail: 300,
            dbs: 512,
            hbs: 512,
            blocks: 33,
            superblock: false,
            ..Case::default()
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        check_case(&vs, case, 100 + i as u64);
    }
}

/// Both verifiers agree on corruption: a flipped data byte is found at the same block by
/// veritysetup (exit 2, its position) and by Keel, and a wrong root is exit 1 and a
/// root mismatch.
#[test]
fn corruption_is_reported_like_veritysetup() {
    let Some(vs) = veritysetup() else { return };
    let case = Case {
        blocks: 300,
        ..Case::default()
    };
    let dir = check_case(&vs, &case, 42);
    let data_path = dir.path().join("data");
    let hash_path = dir.path().join("keel-hash");
    let hash_f = File::open(&hash_path).unwrap();
    let (sb, geometry) = open_hash_device(&hash_f, 0).unwrap();
    let data0 = fs::read(&data_path).unwrap();
    let root = keel_verity::HashTree::build(&sb.params, &data0)
        .unwrap()
        .root_hash()
        .to_vec();
    let root_hex = hex::encode(&root);

    let mut data = data0.clone();
    data[4096 * 201 + 17] ^= 0x10;
    fs::write(&data_path, &data).unwrap();
    let out = run(
        &vs,
        &[
            "verify",
            data_path.to_str().unwrap(),
            hash_path.to_str().unwrap(),
            &root_hex,
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("position {}", 4096 * 201)));
    let e = verify(
        sb.params(),
        &geometry,
        &File::open(&data_path).unwrap(),
        &hash_f,
        &root,
        &BuildOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::DataBlockCorrupt { block: 201, offset, count: 1 } if offset == 4096 * 201),
        "{e}"
    );

    fs::write(&data_path, &data0).unwrap();
    let mut wrong = root.clone();
    wrong[0] ^= 1;
    let out = run(
        &vs,
        &[
            "verify",
            data_path.to_str().unwrap(),
            hash_path.to_str().unwrap(),
            &hex::encode(&wrong),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let e = verify(
        sb.params(),
        &geometry,
        &File::open(&data_path).unwrap(),
        &hash_f,
        &wrong,
        &BuildOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::RootHashMismatch { .. }), "{e}");
}

/// The AVB hashtree equals the tree veritysetup builds for the zero-padded image.
#[test]
fn avb_hashtree_matches_veritysetup_on_the_padded_image() {
    let Some(vs) = veritysetup() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (size, bs, alg) in [
        (10_000usize, 4096u32, HashAlgorithm::Sha1),
        (1 << 20, 4096, HashAlgorithm::Sha256),
        (300_001, 1024, HashAlgorithm::Sha256),
    ] {
        let image = seeded_bytes(size as u64, size);
        let salt = seeded_bytes(5, alg.digest_size());
        let avb = keel_verity::avb_hashtree(&image, alg, bs, &salt, "system").unwrap();
        let padded = dir.path().join("padded");
        let mut p = image.clone();
        p.resize(avb.image_size as usize, 0);
        fs::write(&padded, &p).unwrap();
        let hash = dir.path().join("tree");
        let _ = fs::remove_file(&hash);
        let out = run_ok(
            &vs,
            &[
                "format",
                padded.to_str().unwrap(),
                hash.to_str().unwrap(),
                "--no-superblock",
                &format!("--hash={}", alg.name()),
                &format!("--data-block-size={bs}"),
                &format!("--hash-block-size={bs}"),
                &format!("--salt={}", hex::encode(&salt)),
            ],
        );
        assert_eq!(
            root_from_output(&out),
            hex::encode(&avb.root_digest),
            "size {size}"
        );
        assert_eq!(fs::read(&hash).unwrap(), avb.tree, "size {size}");
        assert_eq!(avb.image_size % u64::from(bs), 0);
        assert!(avb.image_size >= size as u64 && avb.image_size < size as u64 + u64::from(bs));
    }
}

/// `FormatOptions::veritysetup()` writes what `veritysetup format DATA HASH` writes with
/// no options: `veritysetup verify DATA HASH ROOT`, given nothing else, reads its
/// superblock and accepts it; the default options write the bare tree, which veritysetup
/// reads only when told `--no-superblock` and the salt.
#[test]
fn the_veritysetup_options_write_what_veritysetup_verify_reads_without_options() {
    let Some(vs) = veritysetup() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::write(&data, seeded_bytes(9, 4096 * 50)).unwrap();
    let params = VerityParams::builder()
        .data_blocks_for(4096 * 50)
        .build()
        .unwrap();
    let f = File::open(&data).unwrap();
    for (name, opts, extra) in [
        ("vs", FormatOptions::veritysetup().unwrap(), vec![]),
        (
            "bare",
            FormatOptions::default(),
            vec![
                "--no-superblock".to_string(),
                format!("--salt={}", hex::encode(params.salt())),
            ],
        ),
    ] {
        let hash = dir.path().join(name);
        let out = format(&params, &f, &mut open_rw(&hash), &opts).unwrap();
        assert_eq!(out.superblock.is_some(), name == "vs");
        let root = hex::encode(&out.root_hash);
        let mut args = vec![
            "verify".to_string(),
            data.display().to_string(),
            hash.display().to_string(),
            root,
        ];
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ok(&vs, &args);
    }
}
