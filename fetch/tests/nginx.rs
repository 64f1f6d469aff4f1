//! keel-fetch against a real nginx on 127.0.0.1, through a proxy that cuts connections at
//! random offsets: payloads stream into the applier and end as the identical target;
//! a process restart fetches only what was not applied; a payload replaced on the server
//! is noticed; errors are clear.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::io::Read;
use std::time::Duration;

use keel_fetch::{Error, FetchOptions, HttpReader, READ_AHEAD};
use keel_payload::{
    generate, ApplyOptions, GenerateOptions, Payload, VersionCheck, APPLY_READ_AHEAD,
};
use keel_testsupport::{faults::cutting_proxy, nginx, seeded_bytes};
use keel_trust::{Keyring, SigningKey};

fn quick<'a>() -> FetchOptions<'a> {
    FetchOptions::default()
        .delays(Duration::from_millis(1), Duration::from_millis(5))
        .read_timeout(Duration::from_secs(5))
        .max_attempts(50)
}

struct Site {
    _dir: tempfile::TempDir,
    www: std::path::PathBuf,
    server: nginx::Nginx,
}

fn site() -> Option<Site> {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let server = nginx::serve(&www, &dir.path().join("nginx"))?;
    Some(Site {
        _dir: dir,
        www,
        server,
    })
}

/// 200 connections cut at random offsets: the reader reconnects each time from where it
/// stopped and delivers exactly the file, fetching each byte once.
#[test]
fn a_download_cut_two_hundred_times_is_whole() {
    let Some(s) = site() else { return };
    let body = seeded_bytes(1, 8 << 20);
    std::fs::write(s.www.join("big.bin"), &body).unwrap();
    // Cuts every ~40 KiB on average over 8 MiB: about 200 of them.
    let proxy = cutting_proxy(s.server.port, 7, 80 << 10);
    let mut r = HttpReader::new(&format!("{}/big.bin", proxy.base), quick()).unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert!(got == body, "the download differs from the file");
    let st = r.stats();
    let cuts = proxy.cuts.load(std::sync::atomic::Ordering::Relaxed);
    assert!(cuts >= 150, "only {cuts} cuts");
    assert_eq!(st.bytes, body.len() as u64, "bytes fetched twice: {st:?}");
    assert!(st.requests > cuts, "{st:?}");
}

/// Open `r` as a payload that seeks and apply it from `src` to `target`.
fn seekable(
    r: &mut HttpReader<'_>,
    src: &[u8],
    target: &mut Vec<u8>,
    opts: &ApplyOptions<'_>,
) -> keel_payload::Result<keel_payload::Applied> {
    Payload::open_seekable(r, opts.keyring)?.apply(Some(src), target, opts)
}

/// A signed 6 MiB delta published on the site as `name`: the keyring that trusts it, its
/// source and target images, its bytes.
fn delta_on(s: &Site, name: &str) -> (Keyring, Vec<u8>, Vec<u8>, Vec<u8>) {
    let key = SigningKey::generate().unwrap();
    let mut keys = Keyring::new();
    keys.add(key.public_key().clone()).unwrap();
    let src = seeded_bytes(2, 6 << 20);
    let tgt = seeded_bytes(3, 6 << 20);
    let opts = GenerateOptions::new("acme", "2.0").level(1);
    let payload = generate(Some(&src), &tgt, &key, &opts).unwrap();
    std::fs::write(s.www.join(name), &payload).unwrap();
    (keys, src, tgt, payload)
}

/// A payload streamed from nginx into the applier, the connection cut at random places;
/// then a "process restart" (a new reader and a new apply after a power cut of the
/// target) fetches only what the applier had not applied.
#[test]
fn a_payload_streams_into_the_applier_and_resumes_without_fetching_again() {
    let Some(s) = site() else { return };
    let (keys, src, tgt, payload) = delta_on(&s, "update.payload");
    let proxy = cutting_proxy(s.server.port, 11, 256 << 10);
    let url = format!("{}/update.payload", proxy.base);
    let state = s.www.parent().unwrap().join("resume");
    let aopts = ApplyOptions::new(&keys, VersionCheck::Unchecked)
        .state(&state)
        .checkpoint_bytes(256 << 10);

    // The first run stops half way (the applier is cancelled, as by a shutdown).
    let half = keel_io::testing::StopHalfWay::default();
    let stopping = aopts.progress(&half);
    let mut target = vec![0u8; tgt.len()];
    let mut first = HttpReader::new(&url, quick()).unwrap();
    let e = seekable(&mut first, &src, &mut target, &stopping).unwrap_err();
    assert!(e.is_retryable(), "{e}");

    // The next run resumes from the record and asks only for the rest.
    let mut second = HttpReader::new(&url, quick()).unwrap();
    let done = seekable(&mut second, &src, &mut target, &aopts).unwrap();
    assert!(target == tgt, "the target differs");
    assert!(done.resumed_at > 0);
    let skipped: u64 = done.manifest.operations[..done.resumed_at]
        .iter()
        .map(|o| o.data_length)
        .sum();
    let fetched = first.stats().bytes + second.stats().bytes;
    // Everything once, plus at most one checkpoint interval of data fetched again, plus
    // the header and manifest read again by the second run, plus what the first run had
    // read ahead when it stopped.
    let header_and_manifest = payload.len() as u64
        - done
            .manifest
            .operations
            .iter()
            .map(|o| o.data_length)
            .sum::<u64>();
    assert!(
        fetched <= payload.len() as u64 + (256 << 10) + header_and_manifest + READ_AHEAD as u64,
        "fetched {fetched} bytes for a {} byte payload",
        payload.len()
    );
    // The second run reads ahead of the header a little before it seeks to its resume
    // point.
    assert!(
        second.stats().bytes
            <= payload.len() as u64 - skipped + header_and_manifest + READ_AHEAD as u64
    );
}

/// The size a release index gives is checked: a server that says another size is refused
/// on the first response, before any byte is delivered; the right size reads whole
/// through cuts.
#[test]
fn the_expected_length_is_checked_before_any_byte() {
    let Some(s) = site() else { return };
    let (_, _, _, payload) = delta_on(&s, "u.payload");
    let size = payload.len() as u64;
    let proxy = cutting_proxy(s.server.port, 5, 512 << 10);
    let url = format!("{}/u.payload", proxy.base);
    for expected in [size + 1, size - 1] {
        let mut r = HttpReader::new(&url, quick()).unwrap().expect_len(expected);
        let e = r.read(&mut [0u8; 100]).unwrap_err();
        let inner = e.into_inner().unwrap().downcast::<Error>().unwrap();
        assert!(
            matches!(*inner, Error::Size { expected: x, found, .. } if x == expected && found == size),
            "{inner}"
        );
        assert!(!inner.is_retryable());
        assert_eq!(r.stats().requests, 1);
    }
    let mut r = HttpReader::new(&url, quick()).unwrap().expect_len(size);
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert!(got == payload);
}

/// The file replaced on the server between two connections: the reader says so instead
/// of splicing two files.
#[test]
fn a_payload_replaced_on_the_server_is_noticed() {
    let Some(s) = site() else { return };
    let path = s.www.join("p.bin");
    std::fs::write(&path, seeded_bytes(4, 16 << 20)).unwrap();
    let url = format!("{}/p.bin", s.server.base);
    let mut r = HttpReader::new(&url, quick()).unwrap();
    let mut head = vec![0u8; 100_000];
    r.read_exact(&mut head).unwrap();
    // A new file (new ETag), then the reader must reconnect: a seek past what it read
    // ahead drops the connection.
    std::thread::sleep(Duration::from_millis(1100)); // a different Last-Modified second too
    std::fs::write(&path, seeded_bytes(5, 16 << 20)).unwrap();
    std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(12 << 20)).unwrap();
    let e = r.read(&mut head).unwrap_err();
    let inner = e.into_inner().unwrap().downcast::<Error>().unwrap();
    assert!(matches!(*inner, Error::Changed { .. }), "{inner}");
}

/// What is not an http(s) URL with a host is refused when the reader is made, naming it.
#[test]
fn urls_that_cannot_be_fetched_are_refused_at_once() {
    for bad in [
        "ftp://example.com/p",
        "updates/p.payload",
        "http://",
        "http://a b/",
    ] {
        let e = HttpReader::new(bad, quick()).unwrap_err();
        assert!(
            matches!(&e, Error::Url { url, .. } if url == bad),
            "{bad}: {e}"
        );
        assert!(e.to_string().contains(bad), "{e}");
    }
    assert!(HttpReader::new("https://updates.example.com:8443/os/2.payload", quick()).is_ok());
}

/// The reader reports its progress (bytes delivered, with the length once a response
/// said it) and stops with `Cancelled` when asked: between reads, and inside the cap's
/// pacing wait, not after the whole file.
#[test]
fn progress_is_reported_and_cancellation_stops_the_reader() {
    let Some(s) = site() else { return };
    // Larger than the read-ahead several times over, so "the rest is not fetched" means
    // something.
    let body = seeded_bytes(21, 16 << 20);
    let len = body.len() as u64;
    std::fs::write(s.www.join("pc.bin"), &body).unwrap();
    let url = format!("{}/pc.bin", s.server.base);

    let seen = std::sync::Mutex::new(Vec::new());
    let record = |done: u64, total: u64| seen.lock().unwrap().push((done, total));
    let mut r = HttpReader::new(&url, quick().progress(&record)).unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert!(got == body);
    drop(r);
    let seen = seen.into_inner().unwrap();
    assert!(seen.len() > 1, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
    assert!(seen.iter().all(|&(_, total)| total == len), "{seen:?}");
    assert_eq!(seen.last(), Some(&(len, len)));

    // Cancelled once half is reported: the next read says so, the rest is not fetched.
    let half = keel_io::testing::StopHalfWay::default();
    let mut r = HttpReader::new(&url, quick().progress(&half)).unwrap();
    let e = r.read_to_end(&mut Vec::new()).unwrap_err();
    assert!(e.get_ref().unwrap().is::<keel_io::Cancelled>(), "{e}");
    assert!(r.stats().bytes < len, "{:?}", r.stats());

    // Under a cap of 256 KiB/s (64 s for the file), a cancel from another thread after
    // 0.3 s is taken inside the pacing wait.
    let stop = keel_io::Cancel::new();
    let mut r =
        HttpReader::new(&url, quick().max_bytes_per_sec(256 << 10).progress(&stop)).unwrap();
    let e = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            stop.cancel();
        });
        r.read_to_end(&mut Vec::new()).unwrap_err()
    });
    assert!(e.get_ref().unwrap().is::<keel_io::Cancelled>(), "{e}");
    assert!(r.stats().bytes < len / 2, "{:?}", r.stats());

    // The applier reading a reader cancelled through its own progress stops with its
    // Cancelled (retryable), instead of retrying the read forever as it would an
    // interrupted one.
    let (keys, src, tgt, _) = delta_on(&s, "cancelled.payload");
    let half = keel_io::testing::StopHalfWay::default();
    let mut r = HttpReader::new(
        &format!("{}/cancelled.payload", s.server.base),
        quick().progress(&half),
    )
    .unwrap();
    let mut target = vec![0u8; tgt.len()];
    let opts = ApplyOptions::new(&keys, VersionCheck::Unchecked);
    let e = seekable(&mut r, &src, &mut target, &opts).unwrap_err();
    assert!(matches!(e, keel_payload::Error::Cancelled), "{e}");
    assert!(e.is_retryable());
}

/// A missing file is a clear error at once, not a retry loop.
#[test]
fn not_found_is_an_error_at_once() {
    let Some(s) = site() else { return };
    let mut r = HttpReader::new(&format!("{}/missing.payload", s.server.base), quick()).unwrap();
    let e = r.read(&mut [0u8; 10]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("HTTP 404"), "{e}");
    assert_eq!(r.stats().requests, 1);
}

/// Over HTTPS with a private CA: trusted when the CA is given, a clear TLS error (at
/// once, not after retries) when it is not.
#[test]
fn https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let Some((server, ca)) = nginx::serve_tls(&www, &dir.path().join("nginx")) else {
        return;
    };
    let body = seeded_bytes(9, 3 << 20);
    std::fs::write(www.join("p.bin"), &body).unwrap();
    let url = format!("{}/p.bin", server.base);
    assert!(url.starts_with("https://"));
    let mut r = HttpReader::new(&url, quick().ca_certificates(&ca)).unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert!(got == body);
    // A CA that would trust nothing is refused when the reader is made, by name.
    // The first base64 character holds the DER's outer SEQUENCE tag.
    let mut damaged = ca.clone();
    let first = damaged.iter().position(|&b| b == b'\n').unwrap() + 1;
    damaged[first] = if damaged[first] == b'A' { b'B' } else { b'A' };
    for bad in [&b"not a certificate"[..], &damaged] {
        let e = HttpReader::new(&url, quick().ca_certificates(bad)).unwrap_err();
        assert!(
            matches!(&e, Error::Tls { url, .. } if url == "CA certificates"),
            "{e}"
        );
    }
    let mut untrusted = HttpReader::new(&url, quick()).unwrap();
    let e = untrusted.read(&mut [0u8; 10]).unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
    assert_eq!(
        untrusted.stats().requests,
        1,
        "retried an untrusted certificate"
    );
}

/// A server whose connections never complete (its accept queue is full, so the kernel
/// drops the SYNs) costs the connect timeout per attempt, then a clear error: the reader
/// does not hang on it.
#[test]
fn connections_that_never_complete_time_out() {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    while let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        held.push(s);
        assert!(held.len() < 100_000, "the accept queue never filled");
    }
    let opts = quick()
        .connect_timeout(Duration::from_millis(300))
        .max_attempts(2);
    let mut r = HttpReader::new(&format!("http://{addr}/p.bin"), opts).unwrap();
    let e = r.read(&mut [0u8; 10]).unwrap_err();
    let inner = e.into_inner().unwrap().downcast::<Error>().unwrap();
    match *inner {
        Error::GaveUp {
            attempts, ref last, ..
        } => {
            assert_eq!(attempts, 2);
            assert!(last.contains("timeout"), "{last}");
        }
        ref other => panic!("{other}"),
    }
    assert_eq!(r.stats().requests, 2);
    drop(listener);
}

/// Connections that stall (open, silent) are given up after the read timeout and made
/// again from where they stopped.
#[test]
fn stalled_connections_are_made_again() {
    let Some(s) = site() else { return };
    let body = seeded_bytes(12, 2 << 20);
    std::fs::write(s.www.join("s.bin"), &body).unwrap();
    let proxy = keel_testsupport::faults::stalling_proxy(s.server.port, 3, 512 << 10);
    let opts = quick().read_timeout(Duration::from_millis(300));
    let mut r = HttpReader::new(&format!("{}/s.bin", proxy.base), opts).unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert!(got == body);
    let stalls = proxy.cuts.load(std::sync::atomic::Ordering::Relaxed);
    assert!(stalls >= 2, "only {stalls} stalls");
    assert!(r.stats().retries >= stalls, "{:?}", r.stats());
    assert_eq!(r.stats().bytes, body.len() as u64);
}

/// A capped download takes at least as long as the cap allows, and is whole.
#[test]
fn a_bandwidth_cap_holds() {
    let Some(s) = site() else { return };
    let body = seeded_bytes(3, 3 << 20);
    std::fs::write(s.www.join("capped.bin"), &body).unwrap();
    let url = format!("{}/capped.bin", s.server.base);
    let mut r = HttpReader::new(&url, quick().max_bytes_per_sec(1 << 20)).unwrap();
    let t = std::time::Instant::now();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    // 3 MiB at 1 MiB/s: the first tenth of a second's slice is free, the rest is paced.
    let took = t.elapsed();
    assert!(got == body);
    assert!(
        took >= Duration::from_millis(2800),
        "3 MiB in {took:?} under a 1 MiB/s cap"
    );
    // Uncapped, the same download is not held back (the cap is what slowed it).
    let mut r = HttpReader::new(&url, quick()).unwrap();
    let t = std::time::Instant::now();
    r.read_to_end(&mut Vec::new()).unwrap();
    assert!(
        t.elapsed() < took,
        "uncapped {:?} vs capped {took:?}",
        t.elapsed()
    );
}

/// What a full payload costs through a network that resets the connection every 8 to 12
/// MiB (an RST: what the client had received and not read is lost), applied as the agent
/// does (opened once, checked, applied on from there), counted by the proxy: the bytes
/// the network carried. Without an interruption, at most 5% more than the payload (the
/// issue measured 1.29x before the one-pass open); with one kill -9 part way and a rerun
/// from the record, at most one checkpoint interval and the read-ahead it lost on top
/// (the issue measured 1.67x).
#[test]
fn a_payload_through_resets_and_a_kill_costs_little_more_than_its_size() {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(s) = site() else { return };
    let key = SigningKey::generate().unwrap();
    let mut keys = Keyring::new();
    keys.add(key.public_key().clone()).unwrap();
    // The size: 61 MB.
    let tgt = seeded_bytes(41, 58 << 20);
    let payload = generate(
        None,
        &tgt,
        &key,
        &GenerateOptions::new("acme", "2.0").level(1),
    )
    .unwrap();
    std::fs::write(s.www.join("full.payload"), &payload).unwrap();
    let size = payload.len() as u64;
    let checkpoint: u64 = 4 << 20;
    let work = s.www.parent().unwrap().to_path_buf();

    for killed in [false, true] {
        let proxy = keel_testsupport::faults::resetting_proxy(s.server.port, 13, 8 << 20, 12 << 20);
        let url = format!("{}/full.payload", proxy.base);
        let record = work.join(format!("cost-record-{killed}"));
        let aopts = ApplyOptions::new(&keys, VersionCheck::Unchecked)
            .state(&record)
            .checkpoint_bytes(checkpoint);
        let mut target = vec![0u8; tgt.len()];
        let open = || HttpReader::new(&url, quick()).unwrap().expect_len(size);
        let mut reader_bytes = 0;
        if killed {
            // Killed 60% of the way: no record written beyond the last checkpoint,
            // nothing dropped.
            let kill = |done: u64, total: u64| {
                if done * 10 >= total * 6 {
                    panic!("simulated kill -9");
                }
            };
            let mut first = open();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Payload::open_seekable(&mut first, &keys).unwrap().apply(
                    None::<&[u8]>,
                    &mut target,
                    &aopts.progress(&kill),
                )
            }));
            assert!(r.is_err(), "the first run was not killed");
            reader_bytes += first.stats().bytes;
            std::mem::forget(first);
        }
        let mut second = open();
        let done = Payload::open_seekable(&mut second, &keys)
            .unwrap()
            .apply(None::<&[u8]>, &mut target, &aopts)
            .unwrap();
        assert!(target == tgt, "the target differs");
        assert_eq!(done.resumed_at > 0, killed);
        reader_bytes += second.stats().bytes;
        drop(second);
        let carried = proxy.sent.load(Relaxed);
        let resets = proxy.cuts.load(Relaxed);
        let ratio = carried as f64 / size as f64;
        eprintln!(
            "killed {killed}: {size} byte payload, {resets} resets, the network carried {carried} \
             ({ratio:.3}x), the readers received {reader_bytes} ({:.3}x)",
            reader_bytes as f64 / size as f64
        );
        assert!(resets >= 3, "only {resets} resets");
        // A kill costs what was fetched after the last checkpoint, which includes what
        // had been read ahead of the applier (the reader's buffer and the operations
        // decoding ahead); the next run reads the header and manifest again and nothing
        // else twice.
        let bound = if killed {
            1.05 + (checkpoint + READ_AHEAD as u64 + APPLY_READ_AHEAD) as f64 / size as f64
        } else {
            1.05
        };
        assert!(ratio <= bound, "{ratio:.3}x, more than {bound:.3}x");
    }
}
