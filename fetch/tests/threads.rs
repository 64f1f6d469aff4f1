//! The read-ahead's threads end with their use: a seek away from what one read ahead
//! ends it, and so does dropping the reader (after a whole download, part of one, or a
//! cancellation). A test binary of its own, so that no other test's threads are counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use keel_fetch::{FetchOptions, HttpReader, READ_AHEAD};
use keel_testsupport::{nginx, seeded_bytes};

/// Threads of this process named as keel-fetch names its read-ahead.
fn read_ahead_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "keel-fetch")
        .count()
}

/// Wait up to 3 s for the count to be `n`.
fn settles_at(n: usize) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        if read_ahead_threads() == n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn read_ahead_threads_end_with_their_reader() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let Some(server) = nginx::serve(&www, &dir.path().join("nginx")) else {
        return;
    };
    let body = seeded_bytes(5, 16 << 20);
    std::fs::write(www.join("t.bin"), &body).unwrap();
    let url = format!("{}/t.bin", server.base);
    let quick = || FetchOptions::default().read_timeout(Duration::from_secs(5));
    assert_eq!(read_ahead_threads(), 0);

    // Part way, then a seek far ahead: the first stream's thread ends, one runs.
    let mut r = HttpReader::new(&url, quick()).unwrap();
    let mut part = vec![0u8; 1 << 20];
    r.read_exact(&mut part).unwrap();
    assert!(part[..] == body[..1 << 20]);
    assert_eq!(read_ahead_threads(), 1);
    r.seek(SeekFrom::Start(12 << 20)).unwrap();
    r.read_exact(&mut part).unwrap();
    assert!(part[..] == body[12 << 20..13 << 20]);
    assert!(
        settles_at(1),
        "{} threads after a seek",
        read_ahead_threads()
    );
    // Bounded: what was fetched is what was read plus at most a read-ahead per stream.
    assert!(
        r.stats().bytes <= (2 << 20) + 2 * READ_AHEAD as u64,
        "{:?}",
        r.stats()
    );
    drop(r);
    assert!(
        settles_at(0),
        "{} threads after a drop",
        read_ahead_threads()
    );

    // A whole download.
    let mut r = HttpReader::new(&url, quick()).unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert!(got == body);
    drop(r);
    assert!(
        settles_at(0),
        "{} threads after a drop",
        read_ahead_threads()
    );

    // Cancelled while the consumer was away: the thread was waiting for room.
    let stop = keel_io::Cancel::new();
    let mut r = HttpReader::new(&url, quick().progress(&stop)).unwrap();
    r.read_exact(&mut part).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stop.cancel();
    let e = r.read(&mut part).unwrap_err();
    assert!(e.get_ref().unwrap().is::<keel_io::Cancelled>(), "{e}");
    drop(r);
    assert!(
        settles_at(0),
        "{} threads after a drop",
        read_ahead_threads()
    );
}
