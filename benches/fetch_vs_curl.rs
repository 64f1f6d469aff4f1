//! keel-fetch against curl on the same file from the same nginx over loopback, one run:
//! throughput as a ratio of curl's (and, with the release index's SHA-256 checked, of
//! `curl | openssl dgst -sha256`'s; the tools take turns), and with connections cut every ~10 MiB, the bytes
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
use support::{bench_data, best_interleaved, env_u64};

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
    let sha: [u8; 32] = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut f = std::fs::File::open(&data).unwrap();
        std::io::copy(&mut f, &mut h).unwrap();
        h.finalize().into()
    };
    let mut curl_run = || {
        let st = Command::new("curl")
            .args(["-s", "-o", "/dev/null", &url])
            .status()
            .unwrap();
        assert!(st.success());
    };
    let fetch_checked = |url: &str, check: bool| {
        use sha2::Digest;
        let mut r = HttpReader::new(url, FetchOptions::default())
            .unwrap()
            .expect_len(size);
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = r.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            if check {
                h.update(&buf[..k]);
            }
            n += k as u64;
        }
        assert_eq!(n, size);
        if check {
            assert_eq!(<[u8; 32]>::from(h.finalize()), sha);
        }
        r.stats()
    };
    let fetch = |url: &str| fetch_checked(url, false);
    let mut keel_run = || {
        fetch(&url);
    };
    // The peer of a checked download: curl piped into openssl's SHA-256 (two processes,
    // so both cores).
    let mut curl_sha_run = || {
        let out = Command::new("sh")
            .args(["-c", &format!("curl -s '{url}' | openssl dgst -sha256 -r")])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(&hex::encode(sha)));
    };
    let mut checked_run = || {
        fetch_checked(&url, true);
    };
    let times = best_interleaved(
        runs,
        &mut [
            &mut curl_run,
            &mut keel_run,
            &mut curl_sha_run,
            &mut checked_run,
        ],
    );
    let (curl, keel, curl_sha, checked) = (times[0], times[1], times[2], times[3]);
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
    println!(
        "{:<34} {:>9.3} {:>9.3} {:>10}",
        "curl | openssl dgst -sha256",
        curl_sha.as_secs_f64(),
        gbps(curl_sha),
        "1.00x"
    );
    println!(
        "{:<34} {:>9.3} {:>9.3} {:>9.2}x",
        "keel-fetch + SHA-256 by the reader",
        checked.as_secs_f64(),
        gbps(checked),
        curl_sha.as_secs_f64() / checked.as_secs_f64()
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
