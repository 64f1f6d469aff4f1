//! The `fleet` and `fleetlock` examples against a real three-member etcd cluster: thirty
//! node processes contending for two slots, a holder killed with SIGKILL, and a rolling
//! update of five nodes (each its own disk and keel-update agent) that stops at the first
//! node whose new version fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use keel::fleet::{Etcd, Group};
use keel::io::Cancel;

fn fleet(endpoints: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(example("fleet"));
    cmd.args(["--endpoints", endpoints]).args(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// `fleet ARGS` (a lock held on) spawned, once `group` shows its holder.
fn holding(endpoints: &str, group: &Group, args: &[&str]) -> Child {
    let child = fleet(endpoints, args).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while group.status().unwrap().holders.is_empty() {
        assert!(Instant::now() < deadline, "{args:?} never took its slot");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// The address a fleetlock server says it listens on (its first line of output).
fn listening(server: &mut Child) -> std::net::SocketAddr {
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .parse()
        .unwrap()
}

fn finish(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

fn semaphore_holders(value: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(value).unwrap();
    v["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect()
}

/// A three-member cluster, its endpoints, a client and `group` with `slots` slots.
struct Fixture {
    _dir: tempfile::TempDir,
    cluster: etcd::Cluster,
    endpoints: String,
    client: Arc<Etcd>,
    group: Group,
}

fn fixture(group: &str, slots: u64) -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let cluster = etcd::cluster(dir.path(), 3)?;
    let endpoints = cluster.endpoints();
    let client = Arc::new(Etcd::new(&[&endpoints]).unwrap());
    let group = Group::new(&client, group, slots).unwrap();
    Some(Fixture {
        _dir: dir,
        cluster,
        endpoints,
        client,
        group,
    })
}

#[test]
fn thirty_nodes_contend_for_two_slots_and_all_finish() {
    let Some(Fixture {
        _dir,
        cluster,
        endpoints,
        client,
        group,
    }) = fixture("contend", 2)
    else {
        return;
    };
    let key = group.semaphore_key().into_bytes();
    let start = client.range(b"/", false, None).unwrap().revision + 1;

    // A watcher sees every change of the semaphore as it happens.
    let seen = Arc::new(Mutex::new((0usize, BTreeSet::new(), 0i64)));
    let stop = Arc::new(Cancel::new());
    let watcher = {
        let (client, seen, stop, key) = (
            Arc::clone(&client),
            Arc::clone(&seen),
            Arc::clone(&stop),
            key.clone(),
        );
        std::thread::spawn(move || {
            client.watch(&key, false, start, &stop, |e| {
                let mut s = seen.lock().unwrap();
                let holders = semaphore_holders(&e.kv.value);
                s.0 = s.0.max(holders.len());
                s.1.extend(holders);
                s.2 = e.kv.mod_revision;
                true
            })
        })
    };

    let nodes: Vec<Child> = (0..30)
        .map(|i| {
            let id = format!("node-{i:02}");
            fleet(
                &endpoints,
                &[
                    "--group", "contend", "--id", &id, "--slots", "2", "lock", "--ttl", "10",
                    "--hold", "0.2", "--wait", "180",
                ],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    // While they contend: the leader stops for longer than an election takes, then a
    // follower is killed and restarted on its data.
    let mut cluster = cluster;
    std::thread::sleep(Duration::from_secs(2));
    let leader = cluster.leader();
    cluster.signal(leader, "STOP");
    std::thread::sleep(Duration::from_secs(3));
    cluster.signal(leader, "CONT");
    let victim = (cluster.leader() + 1) % 3;
    cluster.kill(victim);
    std::thread::sleep(Duration::from_secs(2));
    cluster.start(victim);
    cluster.wait_healthy();
    for (i, node) in nodes.into_iter().enumerate() {
        let out = finish(node);
        assert!(
            out.status.success(),
            "node {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout(&out).contains("freed its slot"), "{}", stdout(&out));
    }
    let end = client.get(&key).unwrap().unwrap().mod_revision;

    // The revision history: at no revision did more than two hold a slot, and every
    // node held one at some revision.
    let mut everyone = BTreeSet::new();
    let mut changes = 0;
    for rev in start..=end {
        let at = client.range(&key, false, Some(rev)).unwrap();
        let Some(kv) = at.kvs.first() else { continue };
        if kv.mod_revision != rev {
            continue; // another key changed at this revision
        }
        changes += 1;
        let holders = semaphore_holders(&kv.value);
        assert!(holders.len() <= 2, "revision {rev}: {holders:?}");
        everyone.extend(holders);
    }
    assert_eq!(everyone.len(), 30, "{everyone:?}");
    assert!(
        changes >= 60,
        "each node took and freed a slot: {changes} changes"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().2 < end && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.cancel();
    let (max, ids, last) = seen.lock().unwrap().clone();
    assert_eq!(last, end, "the watcher saw the last change");
    assert!(max <= 2 && max > 0, "the watcher saw {max} holders at once");
    assert_eq!(ids.len(), 30);
    assert!(group.status().unwrap().holders.is_empty());
    drop(cluster); // ends the watch's connection
    let _ = watcher.join();
}

#[test]
fn a_killed_holder_frees_its_slot_within_its_ttl() {
    // Bound by name: a field left to `..` would be dropped (the cluster stopped) here.
    let Some(Fixture {
        _dir,
        cluster: _cluster,
        endpoints,
        group,
        ..
    }) = fixture("kill", 1)
    else {
        return;
    };
    let mut holder = holding(
        &endpoints,
        &group,
        &[
            "--group", "kill", "--id", "holder", "lock", "--ttl", "3", "--hold", "600",
        ],
    );
    let waiter = fleet(
        &endpoints,
        &[
            "--group", "kill", "--id", "waiter", "lock", "--ttl", "30", "--wait", "60",
        ],
    )
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    holder.kill().unwrap(); // SIGKILL: no release, no revoke
    holder.wait().unwrap();
    let out = finish(waiter);
    let took = killed.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("waiter holds a slot"),
        "{}",
        stdout(&out)
    );
    assert!(
        took <= Duration::from_secs(3 + 2),
        "the slot was freed {took:?} after the kill"
    );
    let ids: Vec<_> = group
        .status()
        .unwrap()
        .holders
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(ids, ["waiter"]);

    // status names the holder and its lease; unlock frees it.
    let out = fleet(&endpoints, &["--group", "kill", "status"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("1 of 1 slots held") && text.contains("waiter") && text.contains("s left"),
        "{text}"
    );
    let out = fleet(&endpoints, &["--group", "kill", "--id", "waiter", "unlock"])
        .output()
        .unwrap();
    assert!(stdout(&out).contains("waiter freed its slot"));
}

/// What `fleet roll` reported for one node.
fn summary(out: &Output) -> serde_json::Value {
    let text = stdout(out);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("summary: "))
        .unwrap_or_else(|| {
            panic!(
                "no summary: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap()
}

fn roll(endpoints: &str, node: &Path, id: &str, check: &str) -> Child {
    let p = |name: &str| node.join(name).display().to_string();
    fleet(
        endpoints,
        &[
            "--group",
            "roll",
            "--slots",
            "2",
            "--id",
            id,
            "roll",
            "--config",
            &p("system.toml"),
            "--root",
            &p("root"),
            "--state",
            &p("state"),
            "--payload",
            &p("update-1-to-2.payload"),
            "--check",
            check,
            "--ttl",
            "30",
            "--wait",
            "120",
        ],
    )
    .spawn()
    .unwrap()
}

#[test]
fn a_rolling_update_stops_at_the_first_node_whose_new_version_fails() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cluster) = etcd::cluster(&dir.path().join("etcd"), 3) else {
        return;
    };
    let endpoints = cluster.endpoints();
    let nodes: Vec<_> = (0..5)
        .map(|i| dir.path().join(format!("node-{i}")))
        .collect();
    // One image builder's output, copied to each node (its description names its disk).
    ok(
        "update",
        &["demo", nodes[0].to_str().unwrap(), "--slot-mib", "24"],
    );
    let description = std::fs::read_to_string(nodes[0].join("system.toml")).unwrap();
    for n in &nodes[1..] {
        std::fs::create_dir_all(n).unwrap();
        copy_dir(&nodes[0], n);
        let own = description.replace(nodes[0].to_str().unwrap(), n.to_str().unwrap());
        assert_ne!(own, description);
        std::fs::write(n.join("system.toml"), own).unwrap();
    }
    // Two healthy nodes roll together; then a node whose version 2 fails its check; then
    // two more, which find the roll paused.
    let first: Vec<Child> = (0..2)
        .map(|i| roll(&endpoints, &nodes[i], &format!("node-{i}"), "true"))
        .collect();
    let mut results: Vec<(Output, &str)> = first.into_iter().map(|c| (finish(c), "0")).collect();
    results.push((finish(roll(&endpoints, &nodes[2], "node-2", "false")), "2"));
    let last: Vec<Child> = (3..5)
        .map(|i| roll(&endpoints, &nodes[i], &format!("node-{i}"), "true"))
        .collect();
    results.extend(last.into_iter().map(|c| (finish(c), "3")));

    println!(
        "{:<8} {:<8} {:>7} {:>10}  outcome",
        "node", "version", "reboots", "lock ms"
    );
    let mut table = Vec::new();
    for (i, (out, code)) in results.iter().enumerate() {
        assert_eq!(
            out.status.code().map(|c| c.to_string()).as_deref(),
            Some(*code),
            "node {i}: {}\n{}",
            stdout(out),
            String::from_utf8_lossy(&out.stderr)
        );
        let s = summary(out);
        let (reboots, held) = (
            s["reboots"].as_u64().unwrap(),
            s["held_ms"].as_u64().unwrap(),
        );
        println!(
            "{:<8} {:<8} {reboots:>7} {held:>10}  {}",
            s["node"].as_str().unwrap(),
            s["version"].as_str().unwrap(),
            s["outcome"].as_str().unwrap()
        );
        table.push((
            s["version"].as_str().unwrap().to_string(),
            s["reboots"].as_u64().unwrap(),
            s["outcome"].as_str().unwrap().to_string(),
        ));
    }
    let expect = |v: &str, r: u64, o: &str| (v.to_string(), r, o.to_string());
    assert_eq!(
        table,
        [
            expect("2.0", 1, "committed"),
            expect("2.0", 1, "committed"),
            expect("1.0", 2, "fell-back"),
            expect("1.0", 0, "paused"),
            expect("1.0", 0, "paused"),
        ]
    );

    // Each disk agrees: the committed nodes boot B (good), the failed one A, the paused
    // ones never left A.
    for (i, n) in nodes.iter().enumerate() {
        let (status, v) = node_status(n);
        let booted = v["slots"]
            .as_array()
            .unwrap()
            .iter()
            .position(|s| s["booted"] == true);
        assert_eq!(booted, Some(usize::from(i < 2)), "node {i}: {status}");
        assert_eq!(
            v["slots"][booted.unwrap()]["successful"],
            true,
            "node {i} runs a good slot: {status}"
        );
    }
    let client = Arc::new(Etcd::new(&[&endpoints]).unwrap());
    let st = Group::new(&client, "roll", 2).unwrap().status().unwrap();
    assert!(st.holders.is_empty(), "{st:?}");
    let pause = st.paused.unwrap();
    assert_eq!(pause.by, "node-2");
    assert!(pause.reason.contains("\"false\""), "{}", pause.reason);
}

#[test]
fn fleetlock_example_serves_zincati_style_requests() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cluster) = etcd::cluster(dir.path(), 3) else {
        return;
    };
    let endpoints = cluster.endpoints();
    let mut server = Command::new(example("fleetlock"))
        .args([
            "--endpoints",
            &endpoints,
            "--listen",
            "127.0.0.1:0",
            "--group",
            "default=1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening(&mut server);
    let client = keel::fleet::fleetlock::Client::new(&format!("http://{addr}"));
    client.pre_reboot("default", "zincati-a").unwrap();
    let e = client
        .pre_reboot("default", "zincati-b")
        .unwrap_err()
        .to_string();
    assert!(e.contains("failed_lock"), "{e}");
    // A Keel node sees the Zincati node in the same group, bound to the server's lease.
    let out = fleet(&endpoints, &["--group", "default", "status", "--json"])
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(st["holders"][0]["id"], "zincati-a");
    assert!(st["holders"][0]["binding"]["lease"].is_object(), "{st}");
    client.steady_state("default", "zincati-a").unwrap();
    client.pre_reboot("default", "zincati-b").unwrap();
    let _ = server.kill();
    let _ = server.wait();
    // Bad arguments are named.
    let out = run(&example("fleetlock"), &["--group", "default"]);
    assert!(!out.status.success());
    let out = run(
        &example("fleetlock"),
        &["--group", "nonumber", "--endpoints", &endpoints],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=SLOTS"));
}

#[test]
fn the_fleet_example_reaches_members_that_ask_for_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cluster) = etcd::cluster_tls(dir.path(), 3) else {
        return;
    };
    let pki = cluster.tls.clone().unwrap();
    let endpoints = cluster.endpoints();
    let (ca, cert, key) = (
        pki.ca.to_str().unwrap(),
        pki.client_cert.to_str().unwrap(),
        pki.client_key.to_str().unwrap(),
    );
    let tls = ["--cacert", ca, "--cert", cert, "--key", key];
    keel_testsupport::output_ok(&mut fleet(
        &endpoints,
        &[&tls[..], &["--id", "n1", "lock", "--ttl", "30"]].concat(),
    ));
    let out = fleet(&endpoints, &[&tls[..], &["status"]].concat())
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("1 of 1 slots held") && stdout(&out).contains("n1"),
        "{}",
        stdout(&out)
    );
    // Without the client certificate: a clear failure within the time limit.
    let out = fleet(&endpoints, &["--cacert", ca, "--timeout", "2", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("etcd did not answer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Send `signal` (`STOP`, `CONT`) to a child, with kill(1).
fn signal(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal}");
}

#[test]
fn a_holder_stopped_past_its_ttl_says_it_lost_the_slot() {
    let Some(Fixture {
        _dir,
        cluster: _cluster,
        endpoints,
        client,
        group,
    }) = fixture("fence", 1)
    else {
        return;
    };
    let first = holding(
        &endpoints,
        &group,
        &[
            "--group", "fence", "--id", "first", "lock", "--ttl", "5", "--hold", "15",
        ],
    );
    // Stopped (a frozen VM, a stuck process): no renewals; its lease ends and the slot
    // goes to the next node.
    signal(&first, "STOP");
    let stopped = Instant::now();
    let second = fleet(
        &endpoints,
        &[
            "--group", "fence", "--id", "second", "lock", "--ttl", "60", "--wait", "60",
        ],
    )
    .output()
    .unwrap();
    assert!(
        stdout(&second).contains("second holds a slot"),
        "{}{}",
        stdout(&second),
        String::from_utf8_lossy(&second.stderr)
    );
    std::thread::sleep(Duration::from_secs(15).saturating_sub(stopped.elapsed()));
    signal(&first, "CONT");
    let out = finish(first);
    let (text, err) = (stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
    assert!(text.contains("lost its slot"), "{text}{err}");
    assert!(!text.contains("freed its slot"), "{text}");
    let ids: Vec<_> = group
        .status()
        .unwrap()
        .holders
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(ids, ["second"], "the second node's slot is untouched");

    // What etcd answers is not trusted to be UTF-8 or cut where the group's prefix
    // ends: keys beside and inside the group with multi-byte and invalid characters.
    let base = "com.coreos.airlock/groups/fence/v1/";
    let mut straddling = base.as_bytes()[..base.len() - 1].to_vec();
    straddling.extend_from_slice("é/semaphore".as_bytes());
    client.put(&straddling, b"{}", 0).unwrap();
    let mut inside = base.as_bytes().to_vec();
    inside.extend_from_slice(b"keel/\xc3");
    client.put(&inside, b"\xff", 0).unwrap();
    client
        .put(format!("{base}keel/é").as_bytes(), b"x", 0)
        .unwrap();
    let out = fleet(&endpoints, &["--group", "fence", "status"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && stdout(&out).contains("second"),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn duration_arguments_out_of_range_are_named_not_a_panic() {
    let dummy = [
        "--config",
        "x",
        "--root",
        "x",
        "--state",
        "x",
        "--payload",
        "x",
    ];
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        ("fleet", "--wait", vec!["lock", "--wait", "1e19"]),
        ("fleet", "--hold", vec!["lock", "--hold", "NaN"]),
        ("fleet", "--ttl", vec!["lock", "--ttl=-1"]),
        ("fleet", "--ttl", vec!["lock", "--ttl", "1e19"]),
        ("fleet", "--timeout", vec!["--timeout", "inf", "status"]),
        (
            "fleet",
            "--wait",
            [&["roll", "--wait", "1e19"], &dummy[..]].concat(),
        ),
        (
            "fleet",
            "--ttl",
            [&["roll", "--ttl", "1e300"], &dummy[..]].concat(),
        ),
        (
            "fleetlock",
            "--lease-ttl",
            vec!["--group", "g=1", "--lease-ttl", "1e19"],
        ),
        (
            "fleetlock",
            "--request-timeout",
            vec!["--group", "g=1", "--request-timeout", "0"],
        ),
        (
            "fleetlock",
            "--workers",
            vec!["--group", "g=1", "--workers", "0"],
        ),
        // A lease shorter than a reboot, or than etcd's own minimum; slot counts no
        // group can mean.
        (
            "fleetlock",
            "--lease-ttl",
            vec!["--group", "g=1", "--lease-ttl", "0"],
        ),
        ("fleet", "--ttl", vec!["lock", "--ttl", "1e-300"]),
        (
            "fleetlock",
            "--group",
            vec!["--group", "g=18446744073709551615"],
        ),
        ("fleet", "<COUNT>", vec!["slots", "18446744073709551615"]),
        ("fleet", "--slots", vec!["--slots", "0", "status"]),
    ];
    for (example_name, flag, args) in cases {
        // No etcd answers at this endpoint: the arguments are refused before any call.
        let mut all = vec!["--endpoints", "http://127.0.0.1:9"];
        all.extend(args.iter());
        let out = run(&example(example_name), &all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{example_name} {args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(flag), "the argument is named: {err}");
    }
    // The longest accepted wait is ten years, and says so.
    let out = run(
        &example("fleet"),
        &[
            "--endpoints",
            "http://127.0.0.1:9",
            "lock",
            "--wait",
            "1e19",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ten years"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_roll_boots_the_right_partition_when_b_is_listed_before_a() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cluster) = etcd::cluster(&dir.path().join("etcd"), 1) else {
        return;
    };
    let endpoints = cluster.endpoints();
    let node = dir.path().join("node");
    ok(
        "update",
        &["demo", node.to_str().unwrap(), "--slot-mib", "24"],
    );
    let description = std::fs::read_to_string(node.join("system.toml")).unwrap();
    let a = "[[slot]]\nname = \"usr.a\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-A\"\n";
    let b = "[[slot]]\nname = \"usr.b\"\nclass = \"usr\"\ndevice = \"PARTLABEL=USR-B\"\n";
    let swapped = description
        .replace(&format!("{a}\n{b}"), &format!("{b}\n{a}"))
        .replace("name = \"usr.a\"\n", "name = \"usr.a\"\nbootname = \"A\"\n")
        .replace("name = \"usr.b\"\n", "name = \"usr.b\"\nbootname = \"B\"\n");
    assert!(
        swapped.find("usr.b") < swapped.find("usr.a"),
        "the demo's description changed: {description}"
    );
    std::fs::write(node.join("system.toml"), swapped).unwrap();
    let out = finish(roll(&endpoints, &node, "b-first", "true"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    assert_eq!(
        (s["version"].as_str(), s["outcome"].as_str()),
        (Some("2.0"), Some("committed")),
        "{s}"
    );
    let (status, v) = node_status(&node);
    let booted = v["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["booted"] == true)
        .unwrap_or_else(|| panic!("{status}"));
    assert!(booted.to_string().contains("usr.b"), "{status}");
    assert_eq!(booted["successful"], true, "{status}");
}

#[test]
fn the_fleetlock_example_serves_on_past_its_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    let Some(prlimit) = tool("prlimit", "util-linux") else {
        return;
    };
    let Some(cluster) = etcd::cluster(dir.path(), 3) else {
        return;
    };
    let endpoints = cluster.endpoints();
    // 64 descriptors: fewer than the default workers and queue (16 + 64) hold, so a
    // flood runs the server out of them.
    let mut server = Command::new(prlimit)
        .arg("--nofile=64:64")
        .arg(example("fleetlock"))
        .args([
            "--endpoints",
            &endpoints,
            "--listen",
            "127.0.0.1:0",
            "--group",
            "default=1",
            "--request-timeout",
            "3",
            "--timeout",
            "5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening(&mut server);
    let flood: Vec<std::net::TcpStream> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
        .collect();
    assert!(flood.len() > 64, "{} connections", flood.len());
    std::thread::sleep(Duration::from_millis(500));

    // A real request during the flood: an answer, granted or busy, within the deadline
    // of the connections ahead of it and etcd's time limit.
    let body = serde_json::json!({"client_params": {"id": "z1", "group": "default"}}).to_string();
    let ask = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "POST /v1/pre-reboot HTTP/1.1\r\nHost: x\r\nfleet-lock-protocol: true\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        Some(String::from_utf8_lossy(&out).into_owned())
    };
    let text = ask().unwrap_or_default();
    assert!(
        text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 503"),
        "{text:?}"
    );
    assert!(server.try_wait().unwrap().is_none(), "the server exited");
    drop(flood);
    // Once the flood is gone, the node gets its slot.
    let t = Instant::now();
    loop {
        let text = ask().unwrap_or_default();
        if text.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{text:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // A client changes the document's slots; the server's configuration still counts,
    // and status shows both.
    let out = fleet(&endpoints, &["--group", "default", "slots", "3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let client = keel::fleet::fleetlock::Client::new(&format!("http://{addr}"));
    let e = client.pre_reboot("default", "z2").unwrap_err().to_string();
    assert!(e.contains("failed_lock"), "{e}");
    let out = fleet(&endpoints, &["--group", "default", "status"])
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("document says 3") && stdout(&out).contains("configured with 1"),
        "{}",
        stdout(&out)
    );
    assert!(server.try_wait().unwrap().is_none(), "the server exited");
    let _ = server.kill();
    let out = server.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("accepting a connection failed"),
        "the flood did not reach the file limit: {log}"
    );
}

/// `update status --json` of a node made by `update demo`: the text and its value.
fn node_status(node: &std::path::Path) -> (String, serde_json::Value) {
    let p = |name: &str| node.join(name).display().to_string();
    let status = ok(
        "update",
        &[
            "--config",
            &p("system.toml"),
            "--root",
            &p("root"),
            "--state",
            &p("state"),
            "status",
            "--json",
        ],
    );
    let v = serde_json::from_str(&status).unwrap();
    (status, v)
}
