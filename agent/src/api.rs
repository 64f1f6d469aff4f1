//! The local API: JSON over a Unix socket, one request per connection, as
//! `{"op": "status"}` and an answer object. Ops: `status`, `events`, `check-now`, `pause`,
//! `resume`, `metrics` (the Prometheus text format, as a string). The socket is the
//! owner's alone (0600); a client gets a second to send its request (4 KiB at most) and
//! at most 128 are served at once (more are closed at once), each on a thread of its own:
//! idle clients hold the API about a second at most, and the loop, which never waits on the
//! API, not at all. The socket's directory must be the agent's user's alone, and a second
//! agent does not take over the socket of one that answers on it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::state::Shared;

/// The longest request.
const MAX_REQUEST: u64 = 4096;
/// Connections served at once.
const MAX_CLIENTS: usize = 128;
/// How long a client has to send its request and read the answer.
const CLIENT_TIME: Duration = Duration::from_secs(1);

/// Listen on `path` (a socket left by an earlier run is replaced; anything else there is an
/// error, never removed).
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if md.file_type().is_socket() && UnixStream::connect(path).is_ok() {
            return Err(Error::io(
                format!("{}: another keel-agent answers on it", path.display()),
                std::io::Error::from(std::io::ErrorKind::AddrInUse),
            ));
        }
        if !md.file_type().is_socket() {
            return Err(Error::io(
                format!("{}: not a socket", path.display()),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        // Another user who can write the directory could put a socket of theirs in the
        // API's place: the directory must be this user's alone.
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(dir)
            .map_err(|e| Error::io(format!("inspecting {}", dir.display()), e))?;
        let me = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
        if md.uid() != me || md.mode() & 0o022 != 0 {
            return Err(Error::io(
                format!("{}: the socket's directory", dir.display()),
                std::io::Error::other(format!(
                    "owned by uid {} with mode {:o}; it must be this user's ({me}) and writable by no one else",
                    md.uid(),
                    md.mode() & 0o7777
                )),
            ));
        }
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("securing {}", path.display()), e))?;
    Ok(listener)
}

/// Serve `listener` until the process ends: each connection on a thread of its own, at most
/// 128 at once (more are closed at once).
pub fn serve(listener: UnixListener, shared: Arc<Shared>) {
    let busy = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(conn) = conn else {
            // Out of descriptors: wait it out rather than spin.
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            busy.fetch_sub(1, Ordering::SeqCst);
            drop(conn);
            continue;
        }
        // Given back when the connection's work ends, or with the closure when no thread
        // could run it.
        let seat = Seat(busy.clone());
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("keel-agent-api".into())
            .spawn(move || {
                let _seat = seat;
                let _ = answer(conn, &shared);
            });
        if spawned.is_err() {
            // No thread: the connection was dropped with the closure.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One of the [`MAX_CLIENTS`] seats, given back when dropped.
struct Seat(Arc<AtomicUsize>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn answer(conn: UnixStream, shared: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(CLIENT_TIME))?;
    conn.set_write_timeout(Some(CLIENT_TIME))?;
    let deadline = std::time::Instant::now() + CLIENT_TIME;
    let mut line = Vec::new();
    let mut reader = BufReader::new((&conn).take(MAX_REQUEST));
    // One line; a client dripping bytes is cut at the deadline, not per read.
    loop {
        let got = reader.fill_buf()?;
        if got.is_empty() {
            break;
        }
        let n = got.len();
        let end = got.iter().position(|b| *b == b'\n');
        line.extend_from_slice(&got[..end.unwrap_or(n)]);
        reader.consume(end.map_or(n, |e| e + 1));
        if end.is_some() || std::time::Instant::now() >= deadline {
            break;
        }
    }
    let reply = match serde_json::from_slice::<Value>(&line) {
        Ok(v) => handle(v.get("op").and_then(Value::as_str).unwrap_or(""), shared),
        Err(e) => json!({"error": format!("not a JSON request: {e}")}),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    (&conn).write_all(&out)
}

fn handle(op: &str, shared: &Shared) -> Value {
    let ok = |r: Result<()>| match r {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"error": e.to_string()}),
    };
    match op {
        "status" => serde_json::to_value(shared.status()).unwrap_or(Value::Null),
        "events" => json!({"events": shared.events()}),
        "check-now" => {
            shared.check_now();
            json!({"ok": true})
        }
        "pause" => ok(shared.set_paused(true)),
        "resume" => ok(shared.set_paused(false)),
        "metrics" => json!({"metrics": metrics(shared)}),
        other => {
            json!({"error": format!("unknown op {other:?} (status, events, check-now, pause, resume, metrics)")})
        }
    }
}

/// The status in the Prometheus text format.
pub fn metrics(shared: &Shared) -> String {
    let s = shared.status();
    let mut out = String::new();
    // Counters end in `_total`, as Prometheus names them; the rest are gauges.
    let mut gauge = |name: &str, help: &str, value: u64| {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    gauge(
        "keel_agent_last_check_seconds",
        "When the index was last checked (Unix time).",
        s.last_check.unwrap_or(0),
    );
    gauge("keel_agent_checks_total", "Checks of the index.", s.checks);
    gauge(
        "keel_agent_installs_total",
        "Updates installed.",
        s.installs,
    );
    gauge(
        "keel_agent_failures_total",
        "Steps that failed.",
        s.failures,
    );
    gauge(
        "keel_agent_fetched_bytes_total",
        "Bytes received for the installs.",
        s.fetched_bytes,
    );
    gauge(
        "keel_agent_install_seconds",
        "How long the last install took.",
        s.install_seconds.unwrap_or(0),
    );
    gauge(
        "keel_agent_paused",
        "1 when paused through the API.",
        u64::from(s.paused),
    );
    gauge(
        "keel_agent_group_paused",
        "1 when the group's roll is paused.",
        u64::from(s.group_paused.is_some()),
    );
    let version = s
        .version
        .unwrap_or_default()
        .replace(['\\', '"', '\n'], "_");
    out.push_str(&format!(
        "# HELP keel_agent_version_info The version running.\n# TYPE keel_agent_version_info gauge\nkeel_agent_version_info{{version=\"{version}\"}} 1\n"
    ));
    out
}

/// Ask the agent listening on `path`: the answer object, within ten seconds in all (a
/// server that does not answer, or drips its answer, is given up on).
pub fn request(path: &Path, op: &str) -> Result<Value> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (path, op) = (path.to_path_buf(), op.to_string());
    std::thread::spawn(move || {
        let _ = tx.send(ask(&path, &op));
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| {
            Err(Error::io(
                "asking keel-agent",
                std::io::Error::from(std::io::ErrorKind::TimedOut),
            ))
        })
}

fn ask(path: &Path, op: &str) -> Result<Value> {
    let mut conn = UnixStream::connect(path)
        .map_err(|e| Error::io(format!("connecting to {}", path.display()), e))?;
    let named = |e| Error::io(format!("talking to {}", path.display()), e);
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(named)?;
    conn.write_all(format!("{}\n", json!({"op": op})).as_bytes())
        .map_err(named)?;
    let mut answer = Vec::new();
    conn.take(1 << 20).read_to_end(&mut answer).map_err(named)?;
    serde_json::from_slice(&answer).map_err(|e| named(e.into()))
}
