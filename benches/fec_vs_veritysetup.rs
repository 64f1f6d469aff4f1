//! Side by side: `veritysetup format --fec-device --fec-roots N` and keel-verity's
//! `format` + `fec_encode` on the same file, in one run; prints times, the ratio, and
//! checks that the hash devices and the parity are byte-identical.
//!
//! ```text
//! cargo bench --bench fec_vs_veritysetup                    # 1 GiB, roots 2 and 24
//! KEEL_BENCH_SIZE_MIB=256 KEEL_BENCH_ROOTS=2,8 cargo bench --bench fec_vs_veritysetup
//! ```
//! Keel runs `KEEL_BENCH_RUNS` times (default 3, best counts); veritysetup, at about
//! 30 MB/s, once. Warm page cache; files in `KEEL_BENCH_DIR` (default: the temp dir).
//! Then Keel's tree alone, tree then parity, and both from one read of the data
//! (`format_with_fec`) side by side; `KEEL_BENCH_COLD=1` drops the data's pages before each
//! of those runs (the disk read as on a device).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench stops on any failure

#[path = "support/mod.rs"]
mod support;

use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keel::verity::{
    fec_encode, format, format_with_fec, BuildOptions, FecGeometry, FormatOptions, Formatted,
    Threads, VerityParams,
};
use support::{bench_data, best, best_interleaved, env_u64, root_line, veritysetup};

const SALT: &str = "4f2a9c1be07d35a8c6e1f0b2d4a69587c3e2b1a0f9e8d7c6b5a4938271605f4e";

fn params(size: u64) -> VerityParams {
    VerityParams::builder()
        .salt(hex::decode(SALT).unwrap())
        .data_blocks_for(size)
        .build()
        .unwrap()
}

fn create(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap()
}

/// Keel's whole job (tree, then parity), timing the parity part too.
fn keel(
    data: &Path,
    hash: &Path,
    fec: &Path,
    roots: u8,
    threads: Option<usize>,
    cold: bool,
) -> (Duration, Formatted) {
    let d = File::open(data).unwrap();
    let h = create(hash);
    let f = create(fec);
    let params = params(d.metadata().unwrap().len());
    let threads = threads.map_or(Threads::AllCores, Threads::exactly);
    let build = BuildOptions::default().threads(threads);
    let opts = FormatOptions::default().build(build);
    let formatted = format(&params, &d, &mut &h, &opts).unwrap();
    if cold {
        // On a device the slot is larger than what the cache keeps between two passes.
        evict(data);
    }
    let t = Instant::now();
    let g = FecGeometry::separate(
        &params,
        &formatted.geometry,
        roots,
        h.metadata().unwrap().len(),
        0,
    )
    .unwrap();
    fec_encode(&g, &d, &h, &mut &f, &build).unwrap();
    (t.elapsed(), formatted)
}

/// Keel's tree alone, and tree and parity from one read of the data (`format_with_fec`).
fn keel_one_pass(data: &Path, hash: &Path, fec: Option<(&Path, u8)>) {
    let d = File::open(data).unwrap();
    let h = create(hash);
    let params = params(d.metadata().unwrap().len());
    let opts = FormatOptions::default();
    match fec {
        None => {
            format(&params, &d, &mut &h, &opts).unwrap();
        }
        Some((fec, roots)) => {
            let f = create(fec);
            format_with_fec(&params, &d, &mut &h, &mut &f, &opts, |tree| {
                FecGeometry::separate(&params, tree, roots, tree.hash_device_size(), 0)
            })
            .unwrap();
        }
    }
}

/// Drop the file's pages from the page cache, so that the next run reads the disk (GNU
/// dd's `iflag=nocache` with nothing to copy advises the kernel to drop the whole file).
fn evict(path: &Path) {
    let ok = Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "dd could not drop {} from the cache", path.display());
}

/// Keel's tree alone, tree then parity (two reads of the data), and both from one read
/// (`format_with_fec`), taking turns in each run; with `cold`, from the disk each time.
fn one_read_against_two(
    dir: &tempfile::TempDir,
    data: &Path,
    roots_list: &[u8],
    runs: u64,
    cold: bool,
) {
    let cache = if cold { "cold" } else { "warm" };
    println!("\none read of the data against two ({cache} page cache), every core");
    println!("{:<44} {:>9} {:>15}", "keel", "seconds", "vs tree alone");
    let (h, f) = (dir.path().join("r.hash"), dir.path().join("r.fec"));
    for &roots in roots_list {
        let mut tree = || {
            if cold {
                evict(data);
            }
            keel_one_pass(data, &h, None);
        };
        let mut two = || {
            if cold {
                evict(data);
            }
            keel(data, &h, &f, roots, None, cold);
        };
        let mut one = || {
            if cold {
                evict(data);
            }
            keel_one_pass(data, &h, Some((&f, roots)));
        };
        let t = best_interleaved(runs, &mut [&mut tree, &mut two, &mut one]);
        for (name, d) in [
            ("tree alone".to_string(), t[0]),
            (format!("tree, then parity (roots {roots})"), t[1]),
            (format!("one pass: tree and parity (roots {roots})"), t[2]),
        ] {
            println!(
                "{:<44} {:>9.3} {:>14.2}x",
                name,
                d.as_secs_f64(),
                d.as_secs_f64() / t[0].as_secs_f64()
            );
        }
    }
}

/// `veritysetup format --no-superblock DATA HASH --salt=SALT EXTRA...`.
fn vs_format(vs: &Path, data: &Path, hash: &Path, extra: &[String]) -> std::process::Output {
    Command::new(vs)
        .args(["format", "--no-superblock"])
        .arg(data)
        .arg(hash)
        .arg(format!("--salt={SALT}"))
        .args(extra)
        .output()
        .unwrap()
}

fn main() {
    let size = env_u64("KEEL_BENCH_SIZE_MIB", 1024) << 20;
    let runs = env_u64("KEEL_BENCH_RUNS", 3).max(1);
    let cold = env_u64("KEEL_BENCH_COLD", 0) == 1;
    let roots_list: Vec<u8> = std::env::var("KEEL_BENCH_ROOTS")
        .unwrap_or_else(|_| "2,24".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let (dir, data) = bench_data(size);
    let cores = Threads::AllCores.count();
    let vs = veritysetup();
    let gbps = |d: Duration| size as f64 / d.as_secs_f64() / 1e9;
    println!(
        "dm-verity format with FEC, {} MiB, sha256 4096, no superblock",
        size >> 20
    );
    println!(
        "{:<44} {:>9} {:>9} {:>15}",
        "tool", "seconds", "GB/s", "vs veritysetup"
    );
    let mut identical = true;
    // veritysetup's tree alone, to tell its parity time from its total.
    let vs_tree = vs.as_ref().map(|vs| {
        let vh = dir.path().join("v0.hash");
        let t = Instant::now();
        let out = vs_format(vs, &data, &vh, &[]);
        assert!(out.status.success());
        let t = t.elapsed();
        println!(
            "{:<44} {:>9.3} {:>9.3}",
            "veritysetup format (no FEC)",
            t.as_secs_f64(),
            gbps(t)
        );
        t
    });
    for &roots in &roots_list {
        let (kh, kf) = (dir.path().join("k.hash"), dir.path().join("k.fec"));
        let (oh, of) = (dir.path().join("o.hash"), dir.path().join("o.fec"));
        keel_one_pass(&data, &oh, Some((&of, roots)));
        let mut fec_only = Duration::MAX;
        let total = best(runs, || {
            let (t, _) = keel(&data, &kh, &kf, roots, None, false);
            fec_only = fec_only.min(t);
        });
        let mut fec_one = Duration::MAX;
        let total_one = best(runs, || {
            let (t, _) = keel(&data, &kh, &kf, roots, Some(1), false);
            fec_one = fec_one.min(t);
        });
        let (_, formatted) = keel(&data, &kh, &kf, roots, None, false);
        let vs_time = vs.as_ref().map(|vs| {
            let (vh, vf) = (dir.path().join("v.hash"), dir.path().join("v.fec"));
            let _ = (fs::remove_file(&vh), fs::remove_file(&vf));
            let t = Instant::now();
            let out = vs_format(
                vs,
                &data,
                &vh,
                &[
                    format!("--fec-device={}", vf.display()),
                    format!("--fec-roots={roots}"),
                ],
            );
            let t = t.elapsed();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let same = root_line(&out.stdout) == hex::encode(&formatted.root_hash)
                && fs::read(&vh).unwrap() == fs::read(&kh).unwrap()
                && fs::read(&vf).unwrap() == fs::read(&kf).unwrap()
                && fs::read(&vh).unwrap() == fs::read(&oh).unwrap()
                && fs::read(&vf).unwrap() == fs::read(&of).unwrap();
            identical &= same;
            println!(
                "{:<44} {:>9.3} {:>9.3} {:>14.2}x   (outputs identical: {same})",
                format!("veritysetup format --fec-roots={roots}"),
                t.as_secs_f64(),
                gbps(t),
                1.0
            );
            t
        });
        // Parity rows compare with veritysetup's parity share: its total minus its tree.
        let vs_parity = vs_time.zip(vs_tree).map(|(a, b)| a.saturating_sub(b));
        if let Some(p) = vs_parity {
            println!(
                "{:<44} {:>9.3} {:>9.3} {:>15}",
                format!("veritysetup parity share, roots {roots}"),
                p.as_secs_f64(),
                gbps(p),
                "1.00x"
            );
        }
        let row = |name: String, d: Duration| {
            let against = if name.contains("parity only") {
                vs_parity
            } else {
                vs_time
            };
            let ratio = against.map_or(String::from("-"), |v| {
                format!("{:.1}x", v.as_secs_f64() / d.as_secs_f64())
            });
            println!(
                "{:<44} {:>9.3} {:>9.3} {:>15}",
                name,
                d.as_secs_f64(),
                gbps(d),
                ratio
            );
        };
        row(
            format!("keel tree + parity, roots {roots}, {cores} threads"),
            total,
        );

        row(
            format!("keel parity only, roots {roots}, {cores} threads"),
            fec_only,
        );
        row(
            format!("keel tree + parity, roots {roots}, 1 thread"),
            total_one,
        );
        row(
            format!("keel parity only, roots {roots}, 1 thread"),
            fec_one,
        );
    }
    one_read_against_two(&dir, &data, &roots_list, runs, cold);
    if vs.is_none() {
        println!("veritysetup not installed (apt-get install cryptsetup-bin): no comparison");
    }
    if !identical {
        std::process::exit(1);
    }
}
