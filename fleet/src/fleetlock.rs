//! The FleetLock protocol (Zincati's reboot manager protocol, as airlock serves it): a
//! client for agents, and a server over the etcd semaphore for Zincati nodes.
//!
//! `POST /v1/pre-reboot` and `POST /v1/steady-state`, header `fleet-lock-protocol: true`,
//! body `{"client_params": {"id": ID, "group": GROUP}}`; `200` means granted, anything
//! else carries `{"kind": .., "value": ..}`.
//!
//! FleetLock clients do not renew anything, so the server binds each slot it grants to a
//! lease of its own with a long TTL (the longest a reboot may take): a node that never
//! comes back frees its slot when that lease ends. A node asks again and again (Zincati
//! repeats pre-reboot until granted, and after): a node that already holds its slot has
//! that one lease renewed to the full TTL, never a second one granted, and a lease
//! granted for a request that did not end up holding is revoked at once.
//!
//! The server is one process for a whole fleet, reachable by anyone who can connect, so
//! what one client can take from it is bounded ([`Limits`]): a fixed pool of workers fed
//! by a bounded queue of connections (beyond it a connection gets an immediate `503` and
//! is closed), a deadline for each whole request rather than for each read (a client that
//! sends a byte a second is cut at it), and errors of `accept` (out of file descriptors)
//! waited out and logged rather than ending the server.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_io::Cancel;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, Result};
use crate::etcd::Etcd;
use crate::group::{check_id, Acquire, Group};
use crate::lease::later;

#[derive(Debug, Serialize, Deserialize)]
struct Params {
    id: String,
    group: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Body {
    client_params: Params,
}

/// A FleetLock client.
#[derive(Debug)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the server at `base` (`http://host:port`).
    pub fn new(base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(30)))
                // The server's refusals carry a kind and a value to report.
                .http_status_as_error(false)
                .build()
                .new_agent(),
        }
    }

    fn post(&self, path: &str, group: &str, id: &str) -> Result<()> {
        let body = json!({"client_params": {"id": id, "group": group}});
        let unavailable = |e: ureq::Error| Error::Unavailable {
            endpoints: self.base.clone(),
            seconds: 30,
            last: e.to_string(),
        };
        let mut resp = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("fleet-lock-protocol", "true")
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(unavailable)?;
        if resp.status().is_success() {
            return Ok(());
        }
        let code = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(unavailable)?;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let field = |f: &str| v.get(f).and_then(|x| x.as_str()).map(str::to_string);
        Err(Error::FleetLock {
            kind: field("kind").unwrap_or_else(|| format!("http_{code}")),
            value: field("value").unwrap_or(text),
        })
    }

    /// Ask for a reboot slot for `id` in `group`.
    pub fn pre_reboot(&self, group: &str, id: &str) -> Result<()> {
        self.post("/v1/pre-reboot", group, id)
    }

    /// Give the slot back after the boot.
    pub fn steady_state(&self, group: &str, id: &str) -> Result<()> {
        self.post("/v1/steady-state", group, id)
    }
}

/// What one client may take from a [`Server`]: threads, queue places, time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Connections served at once, each by a thread of a fixed pool (default 16).
    pub workers: usize,
    /// Accepted connections waiting for a worker (default 64); beyond them a connection
    /// is answered `503` at once and closed.
    pub queue: usize,
    /// The longest a connection may take from its acceptance to the end of its request,
    /// head and body, waiting in the queue included (default 10 s).
    pub request_timeout: Duration,
    /// The longest one write of the answer may wait for the client (default 5 s).
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            workers: 16,
            queue: 64,
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
        }
    }
}

impl Limits {
    /// Serve `workers` connections at once (at least one).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Let `queue` accepted connections wait for a worker.
    pub fn queue(mut self, queue: usize) -> Self {
        self.queue = queue;
        self
    }

    /// Give each request this long from its acceptance (at least a millisecond).
    pub fn request_timeout(mut self, limit: Duration) -> Self {
        self.request_timeout = limit.max(Duration::from_millis(1));
        self
    }

    /// Give each write of an answer this long (at least a millisecond).
    pub fn write_timeout(mut self, limit: Duration) -> Self {
        self.write_timeout = limit.max(Duration::from_millis(1));
        self
    }
}

/// A FleetLock server over the etcd semaphore.
#[derive(Debug)]
pub struct Server {
    etcd: Arc<Etcd>,
    groups: BTreeMap<String, u64>,
    lease_ttl: Duration,
    limits: Limits,
    /// Requests change the groups one at a time: two requests of one node at once must
    /// not each grant a lease and leave one behind unused.
    serial: Mutex<()>,
}

/// An answer: status and JSON body.
type Answer = (u16, String);

fn error(code: u16, kind: &str, value: &str) -> Answer {
    (code, json!({"kind": kind, "value": value}).to_string())
}

/// The status for an error of etcd or of the group: a cluster that did not answer is a
/// `503` (the node asks again later), a refused id a `400`, anything else a `500`.
fn failure(kind: &str, e: &Error) -> Answer {
    let code = match e {
        Error::Unavailable { .. } => 503,
        Error::Invalid { .. } => 400,
        _ => 500,
    };
    error(code, kind, &e.to_string())
}

/// A connection accepted, and when.
struct Pending {
    stream: TcpStream,
    accepted: Instant,
}

/// Reads of a stream that all end by one deadline: each read may wait only for the
/// time left, so a client that trickles bytes cannot stretch the request.
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request's deadline passed",
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

fn response(answer: &Answer) -> String {
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        answer.0,
        reason(answer.0),
        answer.1.len(),
        answer.1
    )
}

/// Answer `answer` without waiting for the client, and close: what fits the socket's
/// buffer is sent (a short answer always fits a fresh connection's), the rest dropped.
fn answer_and_close(stream: TcpStream, answer: &Answer) {
    if stream.set_nonblocking(true).is_ok() {
        // What the client already sent is read first: closing a socket with unread
        // bytes resets the connection, and the client would not see the answer.
        let mut sink = [0u8; 4096];
        let mut s = &stream;
        let _ = s.read(&mut sink);
        let _ = s.write_all(response(answer).as_bytes());
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn busy() -> Answer {
    error(503, "server_busy", "too many connections; try again later")
}

/// Logs errors of `accept` to standard error, at most one line every ten seconds (a
/// server out of file descriptors fails every accept until connections close).
#[derive(Default)]
struct AcceptLog {
    last: Option<Instant>,
    quiet: u64,
}

impl AcceptLog {
    fn failed(&mut self, e: &std::io::Error, backoff: Duration) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) < Duration::from_secs(10))
        {
            self.quiet += 1;
            return;
        }
        let more = match self.quiet {
            0 => String::new(),
            n => format!(" ({n} more since the last report)"),
        };
        eprintln!(
            "fleetlock: accepting a connection failed: {e}{more}; trying again in {} ms",
            backoff.as_millis()
        );
        self.last = Some(now);
        self.quiet = 0;
    }
}

impl Server {
    /// Serve `groups` (name and slots; other groups are refused as airlock refuses them),
    /// binding each granted slot to a lease of `lease_ttl`. Each group gives out its
    /// configured number of slots whatever the semaphore document says (see
    /// [`Group::enforce_slots`]).
    pub fn new(etcd: Arc<Etcd>, groups: BTreeMap<String, u64>, lease_ttl: Duration) -> Server {
        Server {
            etcd,
            groups,
            lease_ttl,
            limits: Limits::default(),
            serial: Mutex::new(()),
        }
    }

    /// Serve within `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: Limits) -> Server {
        self.limits = limits;
        self
    }

    /// The limits the server keeps to.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Answer one request.
    pub fn handle(&self, method: &str, path: &str, protocol_header: bool, body: &[u8]) -> Answer {
        let pre = match (method, path) {
            ("POST", "/v1/pre-reboot") => true,
            ("POST", "/v1/steady-state") => false,
            _ => return error(404, "not_found", &format!("no endpoint {method} {path}")),
        };
        if !protocol_header {
            return error(
                400,
                "invalid_client_identity",
                "failed to validate client identity: wrong 'fleet-lock-protocol' header",
            );
        }
        let params = match serde_json::from_slice::<Body>(body) {
            Ok(b) if !b.client_params.id.is_empty() && !b.client_params.group.is_empty() => {
                b.client_params
            }
            Ok(_) => {
                return error(400, "invalid_client_identity", "empty client group or ID");
            }
            Err(e) => {
                return error(400, "invalid_client_identity", &format!("bad body: {e}"));
            }
        };
        let Some(&slots) = self.groups.get(&params.group) else {
            return error(
                400,
                "unknown_group",
                &format!("unknown group {:?}", params.group),
            );
        };
        let group = match Group::new(&self.etcd, &params.group, slots) {
            Ok(g) => g.enforce_slots(),
            Err(e) => return error(400, "invalid_client_identity", &e.to_string()),
        };
        if let Err(e) = check_id(&params.id) {
            return error(400, "invalid_client_identity", &e.to_string());
        }
        let _serial = match self.serial.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if pre {
            self.pre_reboot(&group, slots, &params.id)
        } else {
            self.steady_state(&group, &params.id)
        }
    }

    fn pre_reboot(&self, group: &Group, slots: u64, id: &str) -> Answer {
        // A node that holds its slot already keeps it, and its one lease is renewed.
        match group.held_lease(id) {
            Ok(Some(lease)) => match self.etcd.lease_keepalive(lease) {
                Ok(Some(_)) => return (200, String::new()),
                // It ended between the read and the renewal: a new holding follows.
                Ok(None) => {}
                Err(e) => return failure("failed_lock", &e),
            },
            Ok(None) => {}
            Err(e) => return failure("failed_lock", &e),
        }
        let lease = match self.etcd.lease_grant(self.lease_ttl) {
            Ok((lease, _)) => lease,
            Err(e) => return failure("failed_sem_init", &e),
        };
        let refused = |answer: Answer| {
            // No holding is bound to it: it would only linger for its TTL.
            let _ = self.etcd.lease_revoke(lease);
            answer
        };
        match group.try_acquire_bound(id, lease) {
            Ok(Acquire::Held { .. }) => (200, String::new()),
            Ok(Acquire::Full { holders }) => refused(error(
                500,
                "failed_lock",
                &format!("all {slots} semaphore slots currently locked (by {holders:?})"),
            )),
            Err(e) => refused(failure("failed_lock", &e)),
        }
    }

    fn steady_state(&self, group: &Group, id: &str) -> Answer {
        match group.release_bound(id) {
            Ok((_, lease)) => {
                // The lease was granted for this holding alone.
                if let Some(l) = lease {
                    let _ = self.etcd.lease_revoke(l);
                }
                (200, String::new())
            }
            Err(e) => failure("failed_unlock", &e),
        }
    }

    /// Serve HTTP/1.1 on `listener` until `stop` is cancelled (looked at between
    /// connections and every 50 ms), within the server's [`Limits`]. Errors of the
    /// network never end it: a failed `accept` (no file descriptor left) is logged to
    /// standard error and tried again after a pause that grows to a second. Returns an
    /// error only when the listener cannot be set up or no worker thread can be started.
    pub fn serve(self: &Arc<Self>, listener: &TcpListener, stop: &Cancel) -> Result<()> {
        listener.set_nonblocking(true).map_err(io_invalid)?;
        let (tx, rx) = sync_channel::<Pending>(self.limits.queue);
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        for i in 0..self.limits.workers.max(1) {
            let (me, rx) = (Arc::clone(self), Arc::clone(&rx));
            match std::thread::Builder::new()
                .name(format!("fleetlock-{i}"))
                .spawn(move || me.work(&rx))
            {
                Ok(t) => workers.push(t),
                Err(e) if workers.is_empty() => return Err(io_invalid(e)),
                Err(e) => {
                    eprintln!("fleetlock: serving with {i} workers: no thread for more: {e}");
                    break;
                }
            }
        }
        let mut backoff = Duration::ZERO;
        let mut log = AcceptLog::default();
        while !stop.is_cancelled() {
            match listener.accept() {
                Ok((stream, _)) => {
                    backoff = Duration::ZERO;
                    let pending = Pending {
                        stream,
                        accepted: Instant::now(),
                    };
                    match tx.try_send(pending) {
                        Ok(()) => {}
                        Err(TrySendError::Full(p) | TrySendError::Disconnected(p)) => {
                            answer_and_close(p.stream, &busy());
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS...: the pending connection stays queued in
                    // the kernel until a worker closes one; a pause spares the CPU.
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    log.failed(&e, backoff);
                    std::thread::sleep(backoff);
                }
            }
        }
        drop(tx);
        for t in workers {
            let _ = t.join();
        }
        Ok(())
    }

    /// A worker: serve connections from the queue until it closes.
    fn work(&self, rx: &Mutex<Receiver<Pending>>) {
        loop {
            let next = match rx.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            let Ok(p) = next else { return };
            let deadline = later(p.accepted, self.limits.request_timeout);
            if Instant::now() >= deadline {
                // It waited its whole time in the queue: an answer, not a request.
                answer_and_close(p.stream, &busy());
                continue;
            }
            // A panic would take a worker from the pool for good.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.connection(p.stream, deadline)
            }));
        }
    }

    fn connection(&self, stream: TcpStream, deadline: Instant) -> std::io::Result<()> {
        stream.set_nonblocking(false)?;
        let request = self.request(&stream, deadline);
        let answer = match request {
            Ok(answer) => answer,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                answer_and_close(
                    stream,
                    &error(
                        408,
                        "request_timeout",
                        "the request took longer than its deadline",
                    ),
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        stream.set_write_timeout(Some(self.limits.write_timeout))?;
        let mut out = &stream;
        out.write_all(response(&answer).as_bytes())?;
        out.flush()?;
        let _ = stream.shutdown(Shutdown::Both);
        Ok(())
    }

    /// Read one request by `deadline` and answer it.
    fn request(&self, stream: &TcpStream, deadline: Instant) -> std::io::Result<Answer> {
        let mut reader = BufReader::new(DeadlineReader { stream, deadline }).take(16 << 10);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (method, path) = (method.to_string(), path.to_string());
        let (mut length, mut protocol) = (0usize, false);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                let value = value.trim();
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.parse().unwrap_or(usize::MAX),
                    "fleet-lock-protocol" => protocol = value == "true",
                    _ => {}
                }
            }
        }
        if length > 64 << 10 {
            return Ok(error(
                413,
                "bad_request",
                "a FleetLock request body is small",
            ));
        }
        let mut body = vec![0u8; length];
        let mut reader = reader.into_inner();
        reader.read_exact(&mut body)?;
        Ok(self.handle(&method, &path, protocol, &body))
    }
}

fn io_invalid(e: std::io::Error) -> Error {
    Error::Invalid {
        what: "FleetLock listener".into(),
        reason: e.to_string(),
    }
}
