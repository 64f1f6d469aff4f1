//! A block store served by a real nginx on 127.0.0.1: an install through
//! [`HttpRanges`] fetches exactly the plan's ranges, one request each (nginx's log
//! says so), through a proxy that cuts connections every few KiB it still fetches each
//! byte once, and a store replaced on the server between two ranges is an error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::time::Duration;

use keel_fetch::{FetchOptions, HttpRanges, HttpReader};
use keel_payload::store::{publish_store, PublishOptions, Seed, StoreOptions, StoreSession};
use keel_payload::{ApplyOptions, VersionCheck};
use keel_testsupport::{faults::cutting_proxy, nginx, seeded_bytes};
use keel_trust::{Keyring, SigningKey};
use keel_verity::VerityParams;

const BS: usize = 4096;

fn quick<'a>() -> FetchOptions<'a> {
    FetchOptions::default()
        .delays(Duration::from_millis(1), Duration::from_millis(5))
        .read_timeout(Duration::from_secs(5))
        .max_attempts(50)
}

/// An old image, and a new one with changed stretches, a moved stretch and zeros.
fn images() -> (Vec<u8>, Vec<u8>) {
    let old = seeded_bytes(41, 2048 * BS);
    let mut new = old.clone();
    for (i, at) in [100usize, 700, 701, 1500, 2000].into_iter().enumerate() {
        new[at * BS..(at + 3) * BS].copy_from_slice(&seeded_bytes(50 + i as u64, 3 * BS));
    }
    new[1000 * BS..1100 * BS].copy_from_slice(&old[300 * BS..400 * BS]);
    new[1200 * BS..1300 * BS].fill(0);
    (old, new)
}

fn store_of(new: &[u8], key: &SigningKey, seed: &[u8]) -> Vec<u8> {
    let params = VerityParams::builder()
        .data_blocks_for(new.len() as u64)
        .salt(seed.to_vec())
        .build()
        .unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    publish_store(
        new,
        &mut out,
        key,
        &PublishOptions::new("acme", "2.0", params),
    )
    .unwrap();
    out.into_inner()
}

#[test]
fn an_install_fetches_the_planned_ranges_once_each_even_through_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let Some(server) = nginx::serve(&www, &dir.path().join("nginx")) else {
        return;
    };
    let key = SigningKey::generate().unwrap();
    let (old, new) = images();
    let bytes = store_of(&new, &key, b"salt");
    std::fs::write(www.join("2.0.store"), &bytes).unwrap();
    let mut ring = Keyring::new();
    ring.add(key.public_key().clone()).unwrap();
    let opts = StoreOptions::new(ApplyOptions::new(&ring, VersionCheck::Installed("1.0")));
    let seeds = [Seed {
        image: &old,
        tree: None,
    }];

    let url = format!("{}/2.0.store", server.base);
    let ranges = HttpRanges::new(
        HttpReader::new(&url, quick())
            .unwrap()
            .expect_len(bytes.len() as u64),
    );
    let s = StoreSession::open(&ranges, &opts).unwrap();
    let plan = s.plan(&seeds, &opts).unwrap();
    assert!(plan.fetch_bytes * 5 < bytes.len() as u64, "{plan:?}");
    let mut target = vec![0u8; new.len()];
    let done = s.install(&seeds, &mut target, &opts).unwrap();
    assert!(target == new, "the installed image differs");
    let st = ranges.stats();
    assert_eq!(
        st.bytes,
        plan.fetched_so_far + plan.fetch_bytes,
        "{st:?} {plan:?}"
    );
    assert_eq!(st.requests, 3 + plan.ranges.len() as u64);
    assert_eq!(done.requests, st.requests);
    // nginx's view: one 206 per range, each exactly the range asked for.
    let log = server.requests_for("/2.0.store");
    assert_eq!(log.len() as u64, st.requests, "{log:?}");
    assert!(log.iter().all(|r| r.status == 206), "{log:?}");
    for (r, (at, len)) in log[3..].iter().zip(&plan.ranges) {
        assert_eq!(r.range, format!("bytes={at}-{}", at + len - 1));
        assert_eq!(r.bytes, *len);
    }

    // Through a proxy that cuts every connection within 8 KiB: every byte still once.
    let proxy = cutting_proxy(server.port, 3, 8 << 10);
    let ranges =
        HttpRanges::new(HttpReader::new(&format!("{}/2.0.store", proxy.base), quick()).unwrap());
    let s = StoreSession::open(&ranges, &opts).unwrap();
    let mut target = vec![0u8; new.len()];
    s.install(&seeds, &mut target, &opts).unwrap();
    assert!(target == new, "the installed image differs after cuts");
    let st = ranges.stats();
    assert_eq!(
        st.bytes,
        plan.fetched_so_far + plan.fetch_bytes,
        "bytes fetched twice: {st:?}"
    );
    assert!(proxy.cuts.load(std::sync::atomic::Ordering::Relaxed) > 10);

    // A store replaced between the open and the install: the next range is refused
    // (If-Range with the first response's validator), not spliced.
    let ranges = HttpRanges::new(HttpReader::new(&url, quick()).unwrap());
    let s = StoreSession::open(&ranges, &opts).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(www.join("2.0.store"), store_of(&new, &key, b"other")).unwrap();
    let mut target = vec![0u8; new.len()];
    let e = s.install(&seeds, &mut target, &opts).unwrap_err();
    assert!(e.to_string().contains("changed"), "{e}");
}
