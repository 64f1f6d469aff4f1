//! The FleetLock protocol (Zincati's reboot manager protocol, as airlock serves it): a
//! client for agents, and a server over the etcd semaphore for Zincati nodes.
//!
//! `POST /v1/pre-reboot` and `POST /v1/steady-state`, header `fleet-lock-protocol: true`,
//! body `{"client_params": {"id": ID, "group": GROUP}}`; `200` means granted, anything
//! else carries `{"kind": .., "value": ..}`.
//!
//! FleetLock clients do not renew anything, so the server binds each slot it grants to a
//! lease of its own with a long TTL (the longest a reboot may take): a node that never
//! comes back frees its slot when that lease ends, and a node that asks again (Zincati
//! repeats pre-reboot until granted) is given a fresh one.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use keel_io::Cancel;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, Result};
use crate::etcd::Etcd;
use crate::group::{Acquire, Group};
use crate::lease::Lease;

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

/// A FleetLock server over the etcd semaphore.
#[derive(Debug)]
pub struct Server {
    etcd: Arc<Etcd>,
    groups: BTreeMap<String, u64>,
    lease_ttl: Duration,
}

/// An answer: status and JSON body.
type Answer = (u16, String);

fn error(code: u16, kind: &str, value: &str) -> Answer {
    (code, json!({"kind": kind, "value": value}).to_string())
}

impl Server {
    /// Serve `groups` (name and slots; other groups are refused as airlock refuses them),
    /// binding each granted slot to a lease of `lease_ttl`.
    pub fn new(etcd: Arc<Etcd>, groups: BTreeMap<String, u64>, lease_ttl: Duration) -> Server {
        Server {
            etcd,
            groups,
            lease_ttl,
        }
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
            Ok(g) => g,
            Err(e) => return error(400, "invalid_client_identity", &e.to_string()),
        };
        if !pre {
            return match group.release(&params.id) {
                Ok(_) => (200, String::new()),
                Err(e) => error(500, "failed_unlock", &e.to_string()),
            };
        }
        let lease = match Lease::grant(&self.etcd, self.lease_ttl) {
            Ok(l) => l,
            Err(e) => return error(500, "failed_sem_init", &e.to_string()),
        };
        match group.try_acquire(&params.id, &lease) {
            Ok(Acquire::Held { .. }) => (200, String::new()),
            Ok(Acquire::Full { holders }) => {
                let _ = lease.revoke();
                error(
                    500,
                    "failed_lock",
                    &format!("all {slots} semaphore slots currently locked (by {holders:?})"),
                )
            }
            Err(e) => {
                let _ = lease.revoke();
                error(500, "failed_lock", &e.to_string())
            }
        }
    }

    /// Serve HTTP/1.1 on `listener` until `stop` is cancelled (looked at between
    /// connections and every 200 ms), one thread per connection.
    pub fn serve(self: &Arc<Self>, listener: &TcpListener, stop: &Cancel) -> Result<()> {
        listener.set_nonblocking(true).map_err(io_invalid)?;
        while !stop.is_cancelled() {
            match listener.accept() {
                Ok((stream, _)) => {
                    let me = Arc::clone(self);
                    std::thread::spawn(move || {
                        let _ = me.connection(stream);
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(io_invalid(e)),
            }
        }
        Ok(())
    }

    fn connection(&self, stream: TcpStream) -> std::io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?).take(16 << 10);
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
        let answer = if length > 64 << 10 {
            error(413, "bad_request", "a FleetLock request body is small")
        } else {
            let mut body = vec![0u8; length];
            let mut reader = reader.into_inner();
            reader.read_exact(&mut body)?;
            self.handle(&method, &path, protocol, &body)
        };
        let reason = match answer.0 {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            413 => "Payload Too Large",
            _ => "Internal Server Error",
        };
        let mut out = stream;
        write!(
            out,
            "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            answer.0,
            answer.1.len(),
            answer.1
        )?;
        out.flush()
    }
}

fn io_invalid(e: std::io::Error) -> Error {
    Error::Invalid {
        what: "FleetLock listener".into(),
        reason: e.to_string(),
    }
}
