//! Side by side: `veritysetup format` and keel-verity's `format` on the same file, in one
//! run, printing both times and the ratios (and checking the outputs are identical).
//!
//! ```text
//! cargo bench --bench verity_vs_veritysetup            # 1 GiB
//! KEEL_BENCH_SIZE_MIB=256 cargo bench --bench verity_vs_veritysetup
//! ```
//! Each tool runs `KEEL_BENCH_RUNS` times (default 3) on a warm page cache; the best time
//! counts. The file lives in `KEEL_BENCH_DIR` (default: the system temp dir).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench stops on any failure

#[path = "support/mod.rs"]
mod support;

use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{bench_data, best, env_u64, root_line, veritysetup};

use keel::verity::{format, parse_uuid, BuildOptions, FormatOptions, Threads, VerityParams};

const SALT: &str = "4f2a9c1be07d35a8c6e1f0b2d4a69587c3e2b1a0f9e8d7c6b5a4938271605f4e";
const UUID: &str = "4d1c0e7a-2b3c-4d5e-8f90-a1b2c3d4e5f6";

fn keel_format(data: &Path, hash: &Path, threads: Option<usize>) -> Vec<u8> {
    let _ = fs::remove_file(hash);
    let d = File::open(data).unwrap();
    let h = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(hash)
        .unwrap();
    let params = VerityParams::builder()
        .salt(hex::decode(SALT).unwrap())
        .data_blocks_for(d.metadata().unwrap().len())
        .build()
        .unwrap();
    let threads = threads.map_or(Threads::AllCores, Threads::exactly);
    let opts = FormatOptions::default()
        .superblock(parse_uuid(UUID).unwrap())
        .build(BuildOptions::default().threads(threads));
    format(&params, &d, &mut &h, &opts).unwrap().root_hash
}

fn main() {
    let size = env_u64("KEEL_BENCH_SIZE_MIB", 1024) << 20;
    let runs = env_u64("KEEL_BENCH_RUNS", 3).max(1);
    let (dir, data) = bench_data(size);
    let vs_hash = dir.path().join("vs.hash");
    let keel_hash = dir.path().join("keel.hash");

    let cores = Threads::AllCores.count();
    let keel_all = best(runs, || {
        keel_format(&data, &keel_hash, None);
    });
    let keel_one = best(runs, || {
        keel_format(&data, &keel_hash, Some(1));
    });
    let root = hex::encode(keel_format(&data, &keel_hash, None));

    let veritysetup = veritysetup();
    println!(
        "dm-verity format, {} MiB, sha256 4096/4096, format 1, superblock",
        size >> 20
    );
    println!(
        "{:<32} {:>10} {:>10} {:>14}",
        "tool", "seconds", "GB/s", "vs veritysetup"
    );
    let gbps = |d: Duration| size as f64 / d.as_secs_f64() / 1e9;
    let Some(vs) = veritysetup else {
        println!(
            "{:<32} {:>10.3} {:>10.2}",
            format!("keel ({cores} threads)"),
            keel_all.as_secs_f64(),
            gbps(keel_all)
        );
        println!(
            "{:<32} {:>10.3} {:>10.2}",
            "keel (1 thread)",
            keel_one.as_secs_f64(),
            gbps(keel_one)
        );
        println!("veritysetup not installed (apt-get install cryptsetup-bin): no comparison");
        return;
    };
    let mut vs_root = String::new();
    let vs_time = best(runs, || {
        let _ = fs::remove_file(&vs_hash);
        let out = keel_testsupport::output_ok(
            Command::new(&vs)
                .args(["format", data.to_str().unwrap(), vs_hash.to_str().unwrap()])
                .arg(format!("--salt={SALT}"))
                .arg(format!("--uuid={UUID}")),
        );
        vs_root = root_line(&out.stdout);
    });
    let ratio = |d: Duration| vs_time.as_secs_f64() / d.as_secs_f64();
    println!(
        "{:<32} {:>10.3} {:>10.2} {:>13.2}x",
        "veritysetup format",
        vs_time.as_secs_f64(),
        gbps(vs_time),
        1.0
    );
    println!(
        "{:<32} {:>10.3} {:>10.2} {:>13.2}x",
        format!("keel format ({cores} threads)"),
        keel_all.as_secs_f64(),
        gbps(keel_all),
        ratio(keel_all)
    );
    println!(
        "{:<32} {:>10.3} {:>10.2} {:>13.2}x",
        "keel format (1 thread)",
        keel_one.as_secs_f64(),
        gbps(keel_one),
        ratio(keel_one)
    );
    let same = fs::read(&vs_hash).unwrap() == fs::read(&keel_hash).unwrap();
    println!(
        "root hashes equal: {}; hash devices byte-identical: {same}",
        root == vs_root
    );
    if root != vs_root || !same {
        std::process::exit(1);
    }
}
