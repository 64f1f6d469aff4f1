//! keel-fetch against curl on the same file from the same nginx over loopback, one run:
//! throughput as a ratio of curl's, and with connections cut every ~10 MiB, the bytes
//! fetched as a ratio of the file's size.
//!
//! ```text
//! cargo bench --bench fetch_vs_curl        # KEEL_BENCH_SIZE_MIB (default 512), KEEL_BENCH_RUNS (3)
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench stops on any failure

#[path = "support/mod.rs"]
mod support;

use std::io::Read;
use std::process::Command;
use std::time::Instant;

use keel::fetch::{FetchOptions, HttpReader};
use support::{bench_data, best, env_u64};

fn main() {
    let size = env_u64("KEEL_BENCH_SIZE_MIB", 512) << 20;
    let runs = env_u64("KEEL_BENCH_RUNS", 3).max(1);
    let (dir, data) = bench_data(size);
    let www = data.parent().unwrap().to_path_buf();
    let Some(server) = keel_testsupport::nginx::serve(&www, &dir.path().join("nginx")) else {
        eprintln!("nginx is not installed: nothing to compare");
        return;
    };
    let url = format!("{}/data.img", server.base);
    let gbps = |d: std::time::Duration| size as f64 / d.as_secs_f64() / 1e9;
    let curl = best(runs, || {
        let st = Command::new("curl")
            .args(["-s", "-o", "/dev/null", &url])
            .status()
            .unwrap();
        assert!(st.success());
    });
    let fetch = |url: &str| {
        let mut r = HttpReader::new(url, FetchOptions::default()).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = r.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        assert_eq!(n, size);
        r.stats()
    };
    let keel = best(runs, || {
        fetch(&url);
    });
    println!(
        "download of {} MiB from nginx over loopback, best of {runs}",
        size >> 20
    );
    println!(
        "{:<34} {:>9} {:>9} {:>10}",
        "tool", "seconds", "GB/s", "vs curl"
    );
    println!(
        "{:<34} {:>9.3} {:>9.3} {:>10}",
        "curl -o /dev/null",
        curl.as_secs_f64(),
        gbps(curl),
        "1.00x"
    );
    println!(
        "{:<34} {:>9.3} {:>9.3} {:>9.2}x",
        "keel-fetch HttpReader",
        keel.as_secs_f64(),
        gbps(keel),
        curl.as_secs_f64() / keel.as_secs_f64()
    );
    // Connections cut at random, about every 10 MiB.
    let proxy = keel_testsupport::faults::cutting_proxy(server.port, 3, 20 << 20);
    let t = Instant::now();
    let st = fetch(&format!("{}/data.img", proxy.base));
    println!(
        "with a cut about every 10 MiB: {} requests, {} retries, {:.3}x the file's bytes fetched, {:.3} s",
        st.requests,
        st.retries,
        st.bytes as f64 / size as f64,
        t.elapsed().as_secs_f64()
    );
}
