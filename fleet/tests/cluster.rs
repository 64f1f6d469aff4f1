//! keel-fleet against a real three-member etcd cluster on loopback: the semaphore shared
//! with airlock's document and etcdctl, leases that free the slots of dead nodes, a
//! stopped leader and a restarted member, the FleetLock server and client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::start;
use keel_fleet::fleetlock::{Client, Server};
use keel_fleet::{Acquire, Binding, Error, Etcd, Group, Lease, Node, Wait, Windows};
use keel_io::Cancel;
use keel_testsupport::etcd::Cluster;
use keel_testsupport::tool;

fn lease(etcd: &Arc<Etcd>, secs: u64) -> Lease {
    Lease::grant(etcd, Duration::from_secs(secs)).unwrap()
}

fn holders(g: &Group) -> Vec<String> {
    g.status()
        .unwrap()
        .holders
        .into_iter()
        .map(|h| h.id)
        .collect()
}

fn etcdctl(c: &Cluster, args: &[&str]) -> std::process::Output {
    let etcdctl = tool("etcdctl", "etcd-client").unwrap();
    let endpoints = format!("--endpoints={}", c.endpoints());
    let mut all = vec![endpoints.as_str()];
    all.extend_from_slice(args);
    let mut cmd = std::process::Command::new(etcdctl);
    cmd.env("ETCDCTL_API", "3").args(&all);
    cmd.output().unwrap()
}

#[test]
fn the_semaphore_is_airlocks_document_and_shared_with_etcdctl() {
    let Some((_dir, c, etcd)) = start() else {
        return;
    };
    let g = Group::new(&etcd, "web servers", 2).unwrap();
    let (la, lb, lc) = (lease(&etcd, 30), lease(&etcd, 30), lease(&etcd, 30));
    assert_eq!(
        g.try_acquire("b", &lb).unwrap(),
        Acquire::Held { already: false }
    );
    assert_eq!(
        g.try_acquire("a", &la).unwrap(),
        Acquire::Held { already: false }
    );
    assert_eq!(
        g.try_acquire("c", &lc).unwrap(),
        Acquire::Full {
            holders: vec!["a".into(), "b".into()]
        }
    );
    // What Keel wrote, etcdctl reads: airlock's key (group escaped as Go escapes a query
    // value) and document.
    let got = etcdctl(
        &c,
        &[
            "get",
            "--print-value-only",
            "com.coreos.airlock/groups/web+servers/v1/semaphore",
        ],
    );
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        r#"{"total_slots":2,"holders":["a","b"]}"#
    );
    let st = g.status().unwrap();
    assert_eq!(st.total_slots, 2);
    for h in &st.holders {
        assert!(
            matches!(h.binding, Binding::Lease { ttl_left, .. } if ttl_left > 20),
            "{h:?}"
        );
        assert!(h.acquired.is_some());
    }

    // A holder airlock added (it rewrites the whole document) has no lease: Keel keeps it.
    // What etcdctl writes, Keel reads.
    let doc = r#"{"total_slots":3,"holders":["a","b","zincati-node"]}"#;
    let put = etcdctl(
        &c,
        &[
            "put",
            "com.coreos.airlock/groups/web+servers/v1/semaphore",
            doc,
        ],
    );
    assert!(put.status.success());
    assert_eq!(
        g.try_acquire("c", &lc).unwrap(),
        Acquire::Full {
            holders: vec!["a".into(), "b".into(), "zincati-node".into()]
        }
    );
    let st = g.status().unwrap();
    assert_eq!(st.total_slots, 3);
    assert_eq!(st.holders[2].binding, Binding::Unleased);

    // Releasing frees the slot; taking it up again with a new lease is recursive.
    assert!(g.release("b").unwrap());
    assert!(!g.release("b").unwrap(), "released twice");
    assert_eq!(
        g.try_acquire("c", &lc).unwrap(),
        Acquire::Held { already: false }
    );
    let la2 = lease(&etcd, 30);
    assert_eq!(
        g.try_acquire("a", &la2).unwrap(),
        Acquire::Held { already: true }
    );
    la.revoke().unwrap(); // the old lease no longer backs a's slot
    assert_eq!(holders(&g), ["a", "c", "zincati-node"]);

    // Paused: nobody takes a slot, releasing still works; the first pause stands.
    let p = g.pause("operator", "bad kernel in 2.0").unwrap();
    assert_eq!(g.pause("node-9", "another").unwrap(), p);
    assert!(g.release("zincati-node").unwrap());
    let ld = lease(&etcd, 30);
    match g.try_acquire("d", &ld) {
        Err(Error::Paused { by, reason, .. }) => assert_eq!(
            (by.as_str(), reason.as_str()),
            ("operator", "bad kernel in 2.0")
        ),
        other => panic!("{other:?}"),
    }
    g.resume().unwrap();
    assert_eq!(
        g.try_acquire("d", &ld).unwrap(),
        Acquire::Held { already: false }
    );

    // A document that is not airlock's is named, not guessed at.
    etcdctl(
        &c,
        &[
            "put",
            "com.coreos.airlock/groups/broken/v1/semaphore",
            "{\"total_slots\":\"x\"}",
        ],
    );
    let e = Group::new(&etcd, "broken", 1)
        .unwrap()
        .status()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("groups/broken/v1/semaphore") && e.contains("total_slots"),
        "{e}"
    );
}

#[test]
fn an_ended_lease_frees_the_slot_without_anyone_releasing_it() {
    let Some((_dir, _c, etcd)) = start() else {
        return;
    };
    let g = Group::new(&etcd, "ttl", 1).unwrap();
    let dying = lease(&etcd, 2);
    assert_eq!(
        g.try_acquire("dying", &dying).unwrap(),
        Acquire::Held { already: false }
    );
    let ttl = dying.ttl();
    drop(dying); // no more renewals: the node is gone
    let waiter = lease(&etcd, 30);
    let t = Instant::now();
    g.acquire(
        "waiter",
        &waiter,
        &Wait {
            poll: Duration::from_millis(200),
            ..Wait::default()
        },
    )
    .unwrap();
    let took = t.elapsed();
    assert!(
        took <= Duration::from_secs(ttl as u64 + 2),
        "freed after {took:?}, TTL {ttl} s"
    );
    assert_eq!(
        holders(&g),
        ["waiter"],
        "the dead holder was dropped from the document"
    );
    // A renewed lease keeps its slot past several TTLs.
    let kept = lease(&etcd, 2);
    let g2 = Group::new(&etcd, "kept", 1).unwrap();
    g2.try_acquire("kept", &kept).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert!(!kept.is_lost());
    assert!(matches!(
        g2.status().unwrap().holders[0].binding,
        Binding::Lease { .. }
    ));
    // Resuming an ended lease says so.
    let gone = lease(&etcd, 2);
    let id = gone.id();
    gone.revoke().unwrap();
    assert!(matches!(Lease::resume(&etcd, id), Err(Error::LeaseExpired(i)) if i == id));
}

#[test]
fn a_stopped_leader_and_a_restarted_member_lose_and_duplicate_nothing() {
    let Some((_dir, mut c, etcd)) = start() else {
        return;
    };
    let g = Group::new(&etcd, "elections", 2).unwrap();
    // TTLs above one member's request limit (3 s) plus an election on a loaded machine:
    // a renewal that first meets the stopped leader still lands in time.
    let l1 = lease(&etcd, 10);
    g.try_acquire("h1", &l1).unwrap();

    // SIGSTOP the leader: the others elect a new one; the client moves on to them.
    let leader = c.leader();
    c.signal(leader, "STOP");
    let l2 = lease(&etcd, 10);
    assert_eq!(
        g.try_acquire("h2", &l2).unwrap(),
        Acquire::Held { already: false }
    );
    let l3 = lease(&etcd, 10);
    assert!(matches!(
        g.try_acquire("h3", &l3).unwrap(),
        Acquire::Full { .. }
    ));
    // Longer than the TTL: the leases were kept alive through the election.
    std::thread::sleep(Duration::from_secs(12));
    assert!(!l1.is_lost() && !l2.is_lost());
    assert_eq!(holders(&g), ["h1", "h2"]);
    c.signal(leader, "CONT");
    c.wait_healthy();
    let new_leader = c.leader();

    // Kill a member and start it again on its data: same holders, no duplicates.
    let victim = (new_leader + 1) % 3;
    c.kill(victim);
    assert!(g.release("h1").unwrap());
    assert_eq!(
        g.try_acquire("h3", &l3).unwrap(),
        Acquire::Held { already: false }
    );
    c.start(victim);
    c.wait_healthy();
    // Ask the restarted member alone.
    let only = Arc::new(Etcd::new(&[&c.members[victim].client_url]).unwrap());
    let seen = Group::new(&only, "elections", 2).unwrap().status().unwrap();
    let ids: Vec<_> = seen.holders.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["h2", "h3"], "{seen:?}");
    assert!(seen
        .holders
        .iter()
        .all(|h| matches!(h.binding, Binding::Lease { .. })));
}

#[test]
fn a_node_takes_a_slot_only_inside_its_window_and_a_failure_pauses_the_roll() {
    let Some((_dir, _c, etcd)) = start() else {
        return;
    };
    let g = Group::new(&etcd, "windows", 1).unwrap();
    // A window that excludes now: one an hour ago, for a minute, today.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ago = (now - 3600) % 86_400;
    let w = format!(
        "* {:02}:{:02}-{:02}:{:02}",
        ago / 3600,
        ago / 60 % 60,
        (ago + 60) / 3600 % 24,
        (ago + 60) / 60 % 60
    );
    let closed = Node::new(&g, "n1", Windows::parse(&[w]).unwrap());
    let l = lease(&etcd, 30);
    let soon = Wait {
        deadline: Some(Instant::now() + Duration::from_secs(2)),
        ..Wait::default()
    };
    let e = closed.pre_reboot(&l, &soon).unwrap_err();
    assert!(matches!(e, Error::Stopped { .. }), "{e}");
    assert!(holders(&g).is_empty(), "no slot taken outside the window");

    let open = Node::new(&g, "n1", Windows::default());
    open.pre_reboot(&l, &soon).unwrap();
    let p = open.report_failure("health check failed on 2.0").unwrap();
    assert_eq!(p.by, "n1");
    let st = g.status().unwrap();
    assert!(st.holders.is_empty() && st.paused.is_some(), "{st:?}");
    let other = Node::new(&g, "n2", Windows::default());
    assert!(matches!(
        other.pre_reboot(&lease(&etcd, 30), &soon),
        Err(Error::Paused { .. })
    ));
    assert!(!other.steady_state().unwrap());
}

#[test]
fn fleetlock_server_and_client_speak_the_protocol() {
    let Some((_dir, _c, etcd)) = start() else {
        return;
    };
    let groups = BTreeMap::from([("default".to_string(), 2u64)]);
    let server = Arc::new(Server::new(
        Arc::clone(&etcd),
        groups,
        Duration::from_secs(60),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = Arc::new(Cancel::new());
    let serving = {
        let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
        std::thread::spawn(move || server.serve(&listener, &stop))
    };
    let client = Client::new(&base);
    client.pre_reboot("default", "n1").unwrap();
    client.pre_reboot("default", "n1").unwrap(); // recursive
    client.pre_reboot("default", "n2").unwrap();
    match client.pre_reboot("default", "n3") {
        Err(Error::FleetLock { kind, value }) => {
            assert_eq!(kind, "failed_lock");
            assert!(value.contains("all 2 semaphore slots"), "{value}");
        }
        other => panic!("{other:?}"),
    }
    match client.pre_reboot("elsewhere", "n3") {
        Err(Error::FleetLock { kind, .. }) => assert_eq!(kind, "unknown_group"),
        other => panic!("{other:?}"),
    }
    let g = Group::new(&etcd, "default", 2).unwrap();
    let st = g.status().unwrap();
    assert_eq!(st.holders.len(), 2);
    assert!(st
        .holders
        .iter()
        .all(|h| matches!(h.binding, Binding::Lease { ttl_left, .. } if ttl_left > 30)));
    client.steady_state("default", "n1").unwrap();
    client.steady_state("default", "n1").unwrap(); // not held: still fine
    client.pre_reboot("default", "n3").unwrap();
    assert_eq!(holders(&g), ["n2", "n3"]);

    // Without the protocol header, or with a bad body: 400 with the protocol's error.
    let addr = base.trim_start_matches("http://");
    let text = raw_post(addr, "/v1/pre-reboot", "", "{}");
    assert!(
        text.starts_with("HTTP/1.1 400") && text.contains("invalid_client_identity"),
        "{text}"
    );
    let text = raw_post(
        addr,
        "/v1/steady-state",
        "fleet-lock-protocol: true\r\n",
        "{\"client_params\":{}}",
    );
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let text = raw_post(addr, "/v2/other", "fleet-lock-protocol: true\r\n", "{}");
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    stop.cancel();
    serving.join().unwrap().unwrap();
}

/// One request as a client without the protocol's manners sends it; the whole answer.
fn raw_post(addr: &str, path: &str, headers: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn members_that_ask_for_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let Some(c) = keel_testsupport::etcd::cluster_tls(dir.path(), 3) else {
        return;
    };
    let pki = c.tls.clone().unwrap();
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let tls = keel_fleet::TlsOptions::default()
        .ca(read(&pki.ca))
        .client_cert(read(&pki.client_cert), read(&pki.client_key));
    let etcd = Arc::new(Etcd::with_tls(&[c.endpoints()], &tls).unwrap());
    let g = Group::new(&etcd, "tls", 1).unwrap();
    g.try_acquire("n1", &lease(&etcd, 30)).unwrap();
    assert_eq!(holders(&g), ["n1"]);

    // Without a client certificate the members refuse; without the CA the client does.
    let quick = |tls: &keel_fleet::TlsOptions| {
        let e = Etcd::with_tls(&[c.endpoints()], tls)
            .unwrap()
            .op_timeout(Duration::from_secs(2));
        e.get(b"x").unwrap_err()
    };
    let no_cert = quick(&keel_fleet::TlsOptions::default().ca(read(&pki.ca)));
    assert!(matches!(no_cert, Error::Unavailable { .. }), "{no_cert}");
    let no_ca = quick(
        &keel_fleet::TlsOptions::default()
            .client_cert(read(&pki.client_cert), read(&pki.client_key)),
    );
    assert!(
        no_ca.to_string().to_lowercase().contains("certificate"),
        "{no_ca}"
    );
    // A key without its certificate is named.
    let mut half = keel_fleet::TlsOptions::default();
    half.client_key_pem = Some(read(&pki.client_key));
    let e = Etcd::with_tls(&[c.endpoints()], &half)
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs its key"), "{e}");
    // A key that is not the certificate's is named when the client is made (ureq would
    // stop the process on it), and so is a CA file without a certificate.
    let wrong_key = keel_fleet::TlsOptions::default()
        .ca(read(&pki.ca))
        .client_cert(read(&pki.client_cert), read(&pki.server_key));
    let e = Etcd::with_tls(&[c.endpoints()], &wrong_key).unwrap_err();
    assert!(
        matches!(&e, Error::Invalid { what, .. } if what == "client certificate"),
        "{e}"
    );
    let e = Etcd::with_tls(
        &[c.endpoints()],
        &keel_fleet::TlsOptions::default().ca(b"no PEM here".to_vec()),
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::Invalid { what, .. } if what == "CA certificates"),
        "{e}"
    );
}
