//! What a client of the FleetLock server, or a stopped holder, must not be able to do:
//! exhaust the server with idle or slow connections, make it pile up leases, give out
//! more slots than the operator configured, or keep acting on a slot whose lease ended.
//! Against a real three-member etcd cluster on loopback; the floods are plain sockets on
//! 127.0.0.1, bounded in count and time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::start;
use keel_fleet::fleetlock::{Client, Limits, Server};
use keel_fleet::{Acquire, Error, Etcd, Group, Lease, Node, Wait, Windows};
use keel_io::Cancel;
use keel_testsupport::etcd::Cluster;
use keel_testsupport::tool;

/// A server on a free port, serving until the returned switch is cancelled.
struct Serving {
    addr: SocketAddr,
    stop: Arc<Cancel>,
    thread: Option<JoinHandle<keel_fleet::Result<()>>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

fn serve(etcd: &Arc<Etcd>, groups: &[(&str, u64)], limits: Limits) -> Serving {
    let groups: BTreeMap<String, u64> = groups.iter().map(|(g, n)| (g.to_string(), *n)).collect();
    let server = Arc::new(
        Server::new(Arc::clone(etcd), groups, Duration::from_secs(600)).with_limits(limits),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(Cancel::new());
    let thread = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || server.serve(&listener, &stop))
    };
    Serving {
        addr,
        stop,
        thread: Some(thread),
    }
}

/// One request, its whole answer (or what arrived before `limit`).
fn raw_post(addr: SocketAddr, path: &str, body: &str, limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nfleet-lock-protocol: true\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn pre_reboot_body(group: &str, id: &str) -> String {
    serde_json::json!({"client_params": {"id": id, "group": group}}).to_string()
}

/// Whether the server closed `s` by `deadline` (an answer before the end is fine).
fn closed_by(s: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true, // reset
        }
    }
}

#[test]
fn an_idle_connection_flood_neither_kills_nor_blocks_the_server() {
    let Some((_dir, _c, etcd)) = start() else {
        return;
    };
    let limits = Limits::default()
        .workers(2)
        .queue(3)
        .request_timeout(Duration::from_secs(3));
    let server = serve(&etcd, &[("default", 1)], limits);
    // Ten times the workers and the queue: connections that never send a byte.
    let flooded = Instant::now();
    let mut flood: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // A real node still gets an answer, at once: granted, or busy (try again).
    let asked = Instant::now();
    let text = raw_post(
        server.addr,
        "/v1/pre-reboot",
        &pre_reboot_body("default", "real"),
        Duration::from_secs(20),
    );
    assert!(
        text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 503"),
        "{text:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );

    // Every flooding connection is closed by the request deadline (plus a margin for a
    // loaded machine), none is left open.
    let deadline = flooded + Duration::from_secs(3 + 3);
    let open = flood
        .iter_mut()
        .filter_map(|s| (!closed_by(s, deadline)).then_some(()))
        .count();
    assert_eq!(open, 0, "{open} of 50 idle connections still open");
    drop(flood);

    // And the server serves on.
    let t = Instant::now();
    loop {
        let text = raw_post(
            server.addr,
            "/v1/pre-reboot",
            &pre_reboot_body("default", "real"),
            Duration::from_secs(20),
        );
        if text.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "{text:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_slow_sender_is_cut_at_the_request_deadline() {
    let Some((_dir, _c, etcd)) = start() else {
        return;
    };
    let limits = Limits::default().request_timeout(Duration::from_secs(3));
    let server = serve(&etcd, &[("default", 1)], limits);
    let request = format!(
        "POST /v1/pre-reboot HTTP/1.1\r\nHost: x\r\nfleet-lock-protocol: true\r\nX-Padding: {}\r\n",
        "a".repeat(64)
    );
    let mut s = TcpStream::connect(server.addr).unwrap();
    let started = Instant::now();
    let mut cut = None;
    // One byte a second, each one well inside any per-read timeout.
    for b in request.bytes() {
        if s.write_all(&[b]).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        if closed_by(&mut s, Instant::now() + Duration::from_secs(1)) {
            cut = Some(started.elapsed());
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(12), "never cut");
    }
    let cut = cut.expect("the request was sent whole without being cut");
    assert!(
        cut >= Duration::from_millis(2500) && cut <= Duration::from_secs(3 + 2),
        "cut after {cut:?}, the deadline is 3 s"
    );
}

/// How many leases etcd has, as etcdctl lists them.
fn leases(c: &Cluster) -> usize {
    let etcdctl = tool("etcdctl", "etcd-client").unwrap();
    let out = keel_testsupport::output_ok(
        std::process::Command::new(etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", c.endpoints()))
            .args(["lease", "list"]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // "found N leases" and one id a line.
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[test]
fn a_node_asking_again_and_again_holds_one_lease() {
    let Some((_dir, c, etcd)) = start() else {
        return;
    };
    let server = serve(&etcd, &[("default", 1)], Limits::default());
    let client = Client::new(&format!("http://{}", server.addr));
    for _ in 0..20 {
        client.pre_reboot("default", "zincati-a").unwrap();
    }
    assert_eq!(leases(&c), 1, "one lease for the one holding");
    // The lease is the holder's, renewed to its full TTL by each request.
    let g = Group::new(&etcd, "default", 1).unwrap();
    let st = g.status().unwrap();
    assert!(
        matches!(st.holders[0].binding, keel_fleet::Binding::Lease { ttl_left, .. } if ttl_left > 590),
        "{st:?}"
    );
    // A node that finds the group full, again and again, is left no lease either.
    for _ in 0..5 {
        let e = client.pre_reboot("default", "zincati-b").unwrap_err();
        assert!(
            matches!(&e, Error::FleetLock { kind, .. } if kind == "failed_lock"),
            "{e}"
        );
    }
    assert_eq!(leases(&c), 1);
    // Giving the slot back ends its lease.
    client.steady_state("default", "zincati-a").unwrap();
    assert_eq!(leases(&c), 0);
    client.pre_reboot("default", "zincati-b").unwrap();
    client.pre_reboot("default", "zincati-b").unwrap();
    assert_eq!(leases(&c), 1);
}

/// Two FleetLock servers on one cluster (a fleet runs several behind a balancer): one
/// node's requests through both move its holding from one server's lease to the other's,
/// and the lease left behind ends at once instead of living out its TTL bound to nothing.
#[test]
fn a_holding_moved_to_another_lease_ends_the_old_one() {
    let Some((_dir, c, etcd)) = start() else {
        return;
    };
    let one = serve(&etcd, &[("default", 1)], Limits::default());
    let two = serve(&etcd, &[("default", 1)], Limits::default());
    let clients = [one.addr, two.addr].map(|a| Client::new(&format!("http://{a}")));
    // Concurrent requests for one id, through both servers, round after round.
    for _ in 0..5 {
        std::thread::scope(|s| {
            for i in 0..4 {
                let client = &clients[i % 2];
                s.spawn(move || {
                    let _ = client.pre_reboot("default", "racer");
                });
            }
        });
        assert!(leases(&c) <= 1, "{} leases for one holding", leases(&c));
    }
    clients[0].steady_state("default", "racer").unwrap();
    assert_eq!(leases(&c), 0);
    // Pre-reboot and steady-state racing through both servers: a release revokes the
    // lease it found the holding bound to in its own transaction, so none is left behind.
    for _ in 0..10 {
        std::thread::scope(|s| {
            for i in 0..8 {
                let client = &clients[i % 2];
                s.spawn(move || {
                    let _ = if i % 4 < 2 {
                        client.pre_reboot("default", "racer")
                    } else {
                        client.steady_state("default", "racer")
                    };
                });
            }
        });
        clients[1].steady_state("default", "racer").unwrap();
        assert_eq!(leases(&c), 0, "a lease outlived its holding");
    }
    // The same with the group API: a holding rebound to a second lease ends the first.
    let g = Group::new(&etcd, "direct", 1).unwrap();
    let (a, b) = (
        Lease::grant(&etcd, Duration::from_secs(60)).unwrap(),
        Lease::grant(&etcd, Duration::from_secs(60)).unwrap(),
    );
    g.try_acquire("n", &a).unwrap();
    g.try_acquire("n", &b).unwrap();
    assert!(
        etcd.lease_keepalive(a.id()).unwrap().is_none(),
        "the first lease outlived its holding"
    );
    b.revoke().unwrap();
    drop(a);
    assert_eq!(leases(&c), 0);
}

#[test]
fn the_operators_slot_count_wins_and_bad_ids_are_bad_requests() {
    let Some((_dir, _c, etcd)) = start() else {
        return;
    };
    let server = serve(&etcd, &[("workers", 2)], Limits::default());
    let client = Client::new(&format!("http://{}", server.addr));
    client.pre_reboot("workers", "w1").unwrap();
    // A client rewrites the document to six slots: the server still gives out two.
    let g = Group::new(&etcd, "workers", 2).unwrap();
    g.set_slots(6).unwrap();
    client.pre_reboot("workers", "w2").unwrap();
    for id in ["w3", "w4"] {
        match client.pre_reboot("workers", id) {
            Err(Error::FleetLock { kind, value }) => {
                assert_eq!(kind, "failed_lock");
                assert!(value.contains("all 2 semaphore slots"), "{value}");
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    // status shows both numbers.
    let st = g.status().unwrap();
    assert_eq!(
        (st.total_slots, st.configured_slots),
        (6, Some(2)),
        "{st:?}"
    );
    assert_eq!(st.holders.len(), 2);
    // A Keel node that goes to etcd directly is held to the operator's count too: the
    // document's six do not let a third node past the two configured.
    let lease = Lease::grant(&etcd, Duration::from_secs(30)).unwrap();
    assert!(
        matches!(
            g.try_acquire("direct", &lease).unwrap(),
            Acquire::Full { .. }
        ),
        "a direct client took a third slot of two"
    );
    lease.revoke().unwrap();

    // An id the group refuses, or a body that is not the protocol's: 400, not 500.
    let long = "x".repeat(300);
    for id in ["bad\u{1}id", long.as_str()] {
        let text = raw_post(
            server.addr,
            "/v1/pre-reboot",
            &pre_reboot_body("workers", id),
            Duration::from_secs(20),
        );
        assert!(
            text.starts_with("HTTP/1.1 400") && text.contains("invalid_client_identity"),
            "{id:?}: {text}"
        );
        let text = raw_post(
            server.addr,
            "/v1/steady-state",
            &pre_reboot_body("workers", id),
            Duration::from_secs(20),
        );
        assert!(text.starts_with("HTTP/1.1 400"), "{id:?}: {text}");
    }
    for body in [
        "not json",
        "{\"client_params\":{\"id\":7,\"group\":\"workers\"}}",
        "\u{ff}",
    ] {
        let text = raw_post(server.addr, "/v1/pre-reboot", body, Duration::from_secs(20));
        assert!(text.starts_with("HTTP/1.1 400"), "{body:?}: {text}");
    }
}

#[test]
fn a_lease_knows_its_deadline_and_is_lost_past_it_without_etcd() {
    let Some((_dir, c, etcd)) = start() else {
        return;
    };
    let before = Instant::now();
    let lease = Lease::grant(&etcd, Duration::from_secs(3)).unwrap();
    let after = Instant::now();
    let ttl = Duration::from_secs(lease.ttl() as u64);
    assert!(lease.deadline() >= before + ttl && lease.deadline() <= after + ttl);
    assert!(lease.remaining() <= ttl && !lease.is_lost());

    // A node holds the only slot: pre_reboot says by when it must reboot.
    let g = Group::new(&etcd, "fence", 1).unwrap();
    let node = Node::new(&g, "n1", Windows::default());
    let by = node.pre_reboot(&lease, &Wait::default()).unwrap();
    assert!(by <= lease.deadline() && by > Instant::now(), "{by:?}");
    assert!(node.holding(&lease).is_ok());

    // No member answers: no renewal is confirmed, and past the deadline the lease is
    // lost although nobody said so.
    for i in 0..3 {
        c.signal(i, "STOP");
    }
    std::thread::sleep(ttl + Duration::from_millis(500));
    let lost = lease.is_lost();
    let remaining = lease.remaining();
    for i in 0..3 {
        c.signal(i, "CONT");
    }
    c.wait_healthy();
    assert!(lost, "the deadline passed without a renewal");
    assert_eq!(remaining, Duration::ZERO);
    assert!(lease.is_lost(), "lost for good");
    let e = node.holding(&lease).unwrap_err();
    assert!(e.is_slot_lost(), "{e}");
    assert!(matches!(
        g.try_acquire("n1", &lease),
        Err(Error::LeaseExpired(_))
    ));

    // A slot taken over by another node while the holder still has its lease value:
    // the holding check sees it in etcd.
    let g2 = Group::new(&etcd, "fence2", 1).unwrap();
    let (l1, l2) = (
        Lease::grant(&etcd, Duration::from_secs(30)).unwrap(),
        Lease::grant(&etcd, Duration::from_secs(30)).unwrap(),
    );
    let n1 = Node::new(&g2, "n1", Windows::default());
    n1.pre_reboot(&l1, &Wait::default()).unwrap();
    etcd.lease_revoke(l1.id()).unwrap(); // as etcd would end it
    assert_eq!(
        g2.try_acquire("n2", &l2).unwrap(),
        Acquire::Held { already: false }
    );
    match n1.holding(&l1) {
        Err(Error::SlotLost { id, .. }) => assert_eq!(id, "n1"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_client_of_etcd_with_an_absurd_time_limit_does_not_panic() {
    // No cluster needed: port 9 refuses at once, and the time limit's arithmetic runs
    // before the first request. The call then tries until its (far) deadline, so the
    // thread is left behind; a panic would have ended it at once.
    let far = Etcd::new(&["http://127.0.0.1:9"])
        .unwrap()
        .op_timeout(Duration::MAX);
    let t = std::thread::spawn(move || far.get(b"x").map(|_| ()));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!t.is_finished() || t.join().is_ok_and(|r| r.is_err()));
}
