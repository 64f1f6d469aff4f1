//! Helpers shared by the side-by-side benches (included with `#[path]`).
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench stops on any failure

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An environment variable as a number, or `default`.
pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `size` bytes of seeded pseudo-random data, synced.
pub(crate) fn write_data(path: &Path, size: u64) {
    let mut f = File::create(path).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            w.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
}

/// The fastest of `runs` runs of `f`.
pub(crate) fn best<F: FnMut()>(runs: u64, mut f: F) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

/// The fastest of `runs` runs of each tool, the tools taking turns within each run, so
/// that a slow spell of the machine (another tenant, a frequency change) falls on all of
/// them rather than on whichever ran then.
pub(crate) fn best_interleaved(runs: u64, tools: &mut [&mut dyn FnMut()]) -> Vec<Duration> {
    let mut best = vec![Duration::MAX; tools.len()];
    for _ in 0..runs {
        for (b, f) in best.iter_mut().zip(tools.iter_mut()) {
            let t = Instant::now();
            f();
            *b = (*b).min(t.elapsed());
        }
    }
    best
}

/// veritysetup, where Debian puts it.
pub(crate) fn veritysetup() -> Option<PathBuf> {
    [
        "/usr/sbin/veritysetup",
        "/sbin/veritysetup",
        "/usr/bin/veritysetup",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// The `Root hash:` line of veritysetup's output.
pub(crate) fn root_line(stdout: &[u8]) -> String {
    String::from_utf8_lossy(stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:").map(|r| r.trim().to_string()))
        .unwrap_or_default()
}

/// A temporary directory (under `KEEL_BENCH_DIR` if set) holding `data.img`: `size`
/// bytes of seeded data, read once so every tool starts from the page cache.
pub(crate) fn bench_data(size: u64) -> (tempfile::TempDir, PathBuf) {
    let base = std::env::var_os("KEEL_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    let data = dir.path().join("data.img");
    eprintln!(
        "writing {} MiB of test data to {}",
        size >> 20,
        data.display()
    );
    write_data(&data, size);
    let _ = std::fs::read(&data).map(|v| v.len());
    (dir, data)
}
