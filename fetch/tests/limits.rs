//! A server that drips, one that never stops, and one that serves other bytes the second
//! time: each a plain HTTP/1.1 server on 127.0.0.1 written here (what they do is what an
//! attacker's server does, not what nginx does), each bounded in time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_fetch::{Error, FetchOptions, HttpReader};
use keel_testsupport::seeded_bytes;

/// How long any server here lives: a test that hangs fails instead of holding the run.
const SERVER_LIFE: Duration = Duration::from_secs(30);

fn quick<'a>() -> FetchOptions<'a> {
    FetchOptions::default()
        .delays(Duration::from_millis(1), Duration::from_millis(5))
        .read_timeout(Duration::from_secs(5))
        .max_attempts(5)
}

/// A server on 127.0.0.1 that hands each connection, with its request head, to
/// `answer`; it stops accepting after [`SERVER_LIFE`]. Returns its base URL.
fn serve<F>(answer: F) -> String
where
    F: Fn(TcpStream, String) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        let until = Instant::now() + SERVER_LIFE;
        while Instant::now() < until {
            match listener.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let answer = answer.clone();
                    std::thread::spawn(move || {
                        let mut head = Vec::new();
                        let mut b = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") && head.len() < 16 << 10 {
                            match c.read(&mut b) {
                                Ok(1) => head.push(b[0]),
                                _ => return,
                            }
                        }
                        answer(c, String::from_utf8_lossy(&head).into_owned());
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// Send `head`, then one byte each `every` until the peer goes or the server's life ends.
fn drip(mut c: TcpStream, head: &str, every: Duration) {
    if c.write_all(head.as_bytes()).is_err() {
        return;
    }
    let until = Instant::now() + SERVER_LIFE;
    while Instant::now() < until {
        if c.write_all(b"x").is_err() {
            return;
        }
        std::thread::sleep(every);
    }
}

fn inner(e: std::io::Error) -> Error {
    *e.into_inner().unwrap().downcast::<Error>().unwrap()
}

/// An index dripped a byte a second (each read well within the read timeout): the
/// deadline ends it, naming the URL, the bytes received and the deadline.
#[test]
fn a_dripped_index_fails_at_the_deadline() {
    let base = serve(|c, _| {
        drip(
            c,
            "HTTP/1.1 200 OK\r\nContent-Length: 4000000\r\n\r\n",
            Duration::from_secs(1),
        )
    });
    let url = format!("{base}/index.json");
    let deadline = Duration::from_secs(3);
    let mut r = HttpReader::new(&url, quick().deadline(deadline)).unwrap();
    let t = Instant::now();
    let e = (&mut r)
        .take(4 << 20)
        .read_to_end(&mut Vec::new())
        .unwrap_err();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(6), "failed only after {took:?}");
    assert!(
        took >= deadline,
        "failed after {took:?}, before the deadline"
    );
    match inner(e) {
        e @ Error::Deadline { .. } => {
            assert!(e.is_retryable());
            let Error::Deadline {
                url: u,
                received,
                deadline: d,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(u, url);
            assert_eq!(d, deadline);
            assert!((1..10).contains(&received), "{received} bytes");
        }
        other => panic!("{other}"),
    }
}

/// A payload dripped below the floor fails with the rate error; one that stalls a while
/// between fast bursts (a transient stall) does not.
#[test]
fn a_drip_below_the_floor_fails_and_a_transient_stall_does_not() {
    let base = serve(|c, _| {
        drip(
            c,
            "HTTP/1.1 200 OK\r\nContent-Length: 4000000\r\n\r\n",
            Duration::from_millis(200),
        )
    });
    let url = format!("{base}/p.payload");
    let window = Duration::from_secs(2);
    let mut r = HttpReader::new(&url, quick().min_bytes_per_sec(1000, window)).unwrap();
    let t = Instant::now();
    let e = r.read_to_end(&mut Vec::new()).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "after {:?}",
        t.elapsed()
    );
    match inner(e) {
        Error::TooSlow {
            url: u,
            received,
            window: w,
            min_bytes_per_sec,
        } => {
            assert_eq!(u, url);
            assert_eq!(min_bytes_per_sec, 1000);
            assert!(w >= window, "{w:?}");
            assert!(received < 1000 * w.as_secs(), "{received} bytes in {w:?}");
        }
        other => panic!("{other}"),
    }

    // 3 x 256 KiB with 1.5 s of silence between: 3 s of stalls, yet far above the floor
    // over any 2 s.
    let body = seeded_bytes(7, 3 << 18);
    let served = body.clone();
    let base = serve(move |mut c, _| {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            served.len()
        );
        let _ = c.write_all(head.as_bytes());
        for (i, part) in served.chunks(1 << 18).enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(1500));
            }
            if c.write_all(part).is_err() {
                return;
            }
        }
    });
    let mut r = HttpReader::new(
        &format!("{base}/p.payload"),
        quick().min_bytes_per_sec(16 << 10, window),
    )
    .unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert!(got == body);
}

/// Endless data: a body with no length that never ends is bounded by the caller's
/// `take()`, a body longer than its Content-Length by the length, and a body longer than
/// the release index says fails; the reader's connection is closed once it is dropped
/// (its read-ahead thread does not run on).
#[test]
fn endless_data_is_bounded() {
    let written = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicBool::new(false));
    let (w, cl) = (written.clone(), closed.clone());
    let base = serve(move |mut c, head| {
        let first = head.lines().next().unwrap_or_default().to_string();
        let chunk = vec![0x5au8; 64 << 10];
        let header = if first.contains("/framed") {
            "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        } else {
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
        };
        let _ = c.write_all(header.as_bytes());
        let until = Instant::now() + SERVER_LIFE;
        while Instant::now() < until {
            if c.write_all(&chunk).is_err() {
                cl.store(true, Ordering::Relaxed);
                return;
            }
            w.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });

    let mut r = HttpReader::new(&format!("{base}/endless"), quick()).unwrap();
    let mut got = Vec::new();
    (&mut r).take(3 << 20).read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 3 << 20);
    // Bounded memory: the reader holds at most its read-ahead beyond what was taken.
    assert!(
        r.stats().bytes <= (3 << 20) + keel_fetch::READ_AHEAD as u64,
        "{:?}",
        r.stats()
    );
    drop(r);
    let t = Instant::now();
    while !closed.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        closed.load(Ordering::Relaxed),
        "the connection stayed open after the reader was dropped"
    );
    let after = written.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(written.load(Ordering::Relaxed), after, "still sending");

    // More than the Content-Length: the length is what is read.
    let mut r = HttpReader::new(&format!("{base}/framed"), quick()).unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 1000);

    // More than the release index says: an error, not a longer payload, even though
    // the first `size` bytes are the ones the index names.
    let size = 1 << 20;
    let mut r = HttpReader::new(&format!("{base}/endless"), quick())
        .unwrap()
        .expect_len(size);
    let e = r.read_to_end(&mut Vec::new()).unwrap_err();
    match inner(e) {
        Error::Size {
            expected, found, ..
        } => {
            assert_eq!(expected, size);
            assert!(found > size);
        }
        other => panic!("{other}"),
    }
}

/// A server that answers range requests with an ETag that never changes, and serves
/// `first` until it is turned (the flag returned), `later` after; and the requests it
/// answered.
fn two_faced(first: Vec<u8>, later: Vec<u8>) -> (String, Arc<AtomicBool>, Arc<AtomicU64>) {
    let requests = Arc::new(AtomicU64::new(0));
    let turned = Arc::new(AtomicBool::new(false));
    let (counted, turn) = (requests.clone(), turned.clone());
    let base = serve(move |mut c, head| {
        counted.fetch_add(1, Ordering::Relaxed);
        let body = if turn.load(Ordering::Relaxed) {
            &later
        } else {
            &first
        };
        let len = body.len() as u64;
        let range = head.lines().find_map(|l| {
            let v = l
                .strip_prefix("Range: bytes=")
                .or(l.strip_prefix("range: bytes="))?;
            let (a, b) = v.trim().split_once('-')?;
            let a: u64 = a.parse().ok()?;
            let b: u64 = if b.is_empty() {
                len - 1
            } else {
                b.parse().ok()?
            };
            Some((a, b.min(len - 1)))
        });
        let (status, start, end) = match range {
            Some((a, b)) => ("206 Partial Content", a, b + 1),
            None => ("200 OK", 0, len),
        };
        let mut out = format!(
            "HTTP/1.1 {status}\r\nETag: \"same\"\r\nContent-Length: {}\r\nConnection: close\r\n",
            end - start
        );
        if range.is_some() {
            out += &format!("Content-Range: bytes {start}-{}/{len}\r\n", end - 1);
        }
        out += "\r\n";
        let _ = c.write_all(out.as_bytes());
        let _ = c.write_all(&body[start as usize..end as usize]);
    });
    (base, turned, requests)
}

/// A server that serves other bytes the second time (a resumed download, the ETag the
/// same): the transport cannot tell, the signed manifest does. Bytes changed in the data a
/// resumed apply reads are refused by their operation's digest; bytes changed in the
/// header or manifest by the signature, before anything is written.
#[test]
fn bytes_served_differently_the_second_time_are_refused_by_the_manifest() {
    use keel_payload::{ApplyOptions, GenerateOptions, Payload, VersionCheck};
    let key = keel_trust::SigningKey::generate().unwrap();
    let mut keys = keel_trust::Keyring::new();
    keys.add(key.public_key().clone()).unwrap();
    let image = seeded_bytes(3, 3 << 20);
    let opts = GenerateOptions::new("acme", "2.0").level(1);
    let good = keel_payload::generate(None, &image, &key, &opts).unwrap();
    let data_start = good.len() as u64
        - Payload::open(&good[..], &keys)
            .unwrap()
            .manifest()
            .operations
            .iter()
            .map(|o| o.data_length)
            .sum::<u64>();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("resume");
    let aopts = ApplyOptions::new(&keys, VersionCheck::Unchecked)
        .state(&state)
        .checkpoint_bytes(256 << 10);

    for (what, at) in [
        ("data", good.len() - 100),
        ("manifest", data_start as usize - 80),
    ] {
        let mut evil = good.clone();
        evil[at] ^= 1;
        let (base, turned, _) = two_faced(good.clone(), evil);
        let url = format!("{base}/p");
        let mut target = vec![0u8; image.len()];
        let half = keel_io::testing::StopHalfWay::default();
        let mut first = HttpReader::new(&url, quick()).unwrap();
        let e = Payload::open_seekable(&mut first, &keys)
            .unwrap()
            .apply(None::<&[u8]>, &mut target, &aopts.progress(&half))
            .unwrap_err();
        assert!(e.is_retryable(), "{e}");
        turned.store(true, Ordering::Relaxed);
        let before = target.clone();
        let mut second = HttpReader::new(&url, quick()).unwrap();
        let e = Payload::open_seekable(&mut second, &keys)
            .and_then(|p| p.apply(None::<&[u8]>, &mut target, &aopts))
            .unwrap_err();
        match what {
            "data" => assert!(
                matches!(e, keel_payload::Error::BlobMismatch { .. }),
                "{what}: {e}"
            ),
            _ => {
                assert!(
                    matches!(e, keel_payload::Error::BadSignature),
                    "{what}: {e}"
                );
                assert!(target == before, "written before the signature was checked");
            }
        }
        assert!(target != image, "{what}: the target was completed");
        let _ = std::fs::remove_file(&state);
    }
}

/// A server (or a proxy) that ignores Range and answers every request with the whole file
/// and the same ETag: a move forward (a resumed apply) reads past the bytes before the
/// position on that answer instead of taking the file for a replaced one; a server whose
/// ETag changed is still "changed".
#[test]
fn a_server_without_ranges_is_read_past_not_taken_for_a_changed_file() {
    use std::io::{Seek, SeekFrom};
    let body = seeded_bytes(5, 3 << 20);
    let etag = Arc::new(std::sync::Mutex::new("\"same\"".to_string()));
    let requests = Arc::new(AtomicU64::new(0));
    let (b, e, n) = (body.clone(), etag.clone(), requests.clone());
    let base = serve(move |mut c, _head| {
        n.fetch_add(1, Ordering::Relaxed);
        let tag = e.lock().unwrap().clone();
        let head = format!(
            "HTTP/1.1 200 OK\r\nETag: {tag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            b.len()
        );
        let _ = c.write_all(head.as_bytes());
        let _ = c.write_all(&b);
    });
    let url = format!("{base}/p");
    let opts = quick().read_ahead(128 << 10);
    let mut r = HttpReader::new(&url, opts)
        .unwrap()
        .expect_len(body.len() as u64);
    let mut head = vec![0u8; 1000];
    r.read_exact(&mut head).unwrap();
    assert!(head[..] == body[..1000]);
    // Read on to 2.5 MiB, then back to 1 MiB, which the read-ahead no longer holds: a
    // new request from there, answered with the whole file.
    let mut skip = vec![0u8; (5 << 19) - 1000];
    r.read_exact(&mut skip).unwrap();
    let at = 1 << 20;
    r.seek(SeekFrom::Start(at)).unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(
        rest[..] == body[at as usize..],
        "the bytes after the move differ"
    );
    assert_eq!(requests.load(Ordering::Relaxed), 2);
    // The bytes read past are counted: what the network carried.
    assert!(r.stats().bytes >= body.len() as u64 + at, "{:?}", r.stats());

    // The same server with another ETag for the next request: the file was replaced.
    let mut r = HttpReader::new(&url, opts).unwrap();
    r.read_exact(&mut skip).unwrap();
    *etag.lock().unwrap() = "\"other\"".into();
    r.seek(SeekFrom::Start(at)).unwrap();
    let e = r.read(&mut [0u8; 100]).unwrap_err();
    assert!(matches!(inner(e), Error::Changed { .. }));
}

/// Response headers dripped a byte at a time (each byte within the read timeout): the
/// headers as a whole have the read timeout, each attempt ends there, and the reader
/// gives up after its attempts instead of waiting for ever; a range read the same.
#[test]
fn response_headers_dripped_a_byte_at_a_time_time_out() {
    let base = serve(|c, _| {
        drip(
            c,
            "HTTP/1.1 206 Partial Content\r\nX-Slow: ",
            Duration::from_millis(100),
        )
    });
    let opts = FetchOptions::default()
        .delays(Duration::from_millis(1), Duration::from_millis(5))
        .read_timeout(Duration::from_secs(1))
        .max_attempts(2);
    let t = Instant::now();
    let mut r = HttpReader::new(&format!("{base}/slow"), opts).unwrap();
    let mut buf = [0u8; 16];
    let e = inner(r.read(&mut buf).unwrap_err());
    assert!(matches!(e, Error::GaveUp { .. }), "{e}");
    let ranges =
        keel_fetch::HttpRanges::new(HttpReader::new(&format!("{base}/slow"), opts).unwrap());
    let e = keel_io::ReadAt::read_exact_at(&ranges, &mut buf, 100).unwrap_err();
    assert!(matches!(inner(e), Error::GaveUp { .. }));
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}
