//! A small synchronous client of etcd's v3 API, through the JSON gateway that every etcd
//! since 3.4 serves on its client port (`/v3/kv/range`, `/v3/kv/txn`, `/v3/lease/...`).
//!
//! Why the gateway and not gRPC: the gRPC crates (tonic, etcd-client) bring an async
//! runtime, protobuf code generation and their own HTTP/2 stack into every agent that
//! only needs a handful of calls a minute; the gateway is part of etcd's stable API, its
//! JSON is the protobuf's canonical mapping, and a blocking HTTP client (ureq, already
//! used by keel-fetch) keeps the library usable from a plain thread.
//!
//! The client is given every member's URL. A request that meets a dead or stopped
//! member, a member without a leader, or an election in progress is sent to the next
//! member until the operation's time limit; a write whose answer was lost may have been
//! applied, so the callers' writes are compare-and-swap transactions that are safe to
//! repeat.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use keel_io::Cancel;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The longest one request to one member may take: longer than an election (about a
/// second here, a few in slow networks), so a healthy member is never given up on.
const CALL_LIMIT: Duration = Duration::from_secs(3);

/// How long a watch stream may stay silent before it is reopened (at the next revision,
/// so nothing is missed): a member that died without closing the connection is noticed.
const WATCH_IDLE: Duration = Duration::from_secs(3);

/// A client of an etcd cluster.
#[derive(Debug)]
pub struct Etcd {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    /// The member that answered last; requests go there first.
    preferred: AtomicUsize,
    op_timeout: Duration,
}

/// One key and its value, with etcd's revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created the key.
    pub create_revision: i64,
    /// The revision of its last change.
    pub mod_revision: i64,
    /// How many times it was written since it was created.
    pub version: i64,
    /// The lease it is bound to (0: none).
    pub lease: i64,
}

/// The keys a range read found, at one revision of the store.
#[derive(Debug, Clone)]
pub struct Range {
    /// The keys, in key order.
    pub kvs: Vec<Kv>,
    /// The store's revision the read saw.
    pub revision: i64,
}

/// A condition of a transaction.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key's last change was at this revision (0: the key does not exist).
    ModRevision(Vec<u8>, i64),
    /// The key was written this many times (0: it does not exist).
    Version(Vec<u8>, i64),
}

/// A write of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// Put a value, bound to a lease when `lease` is not 0.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease (0: none).
        lease: i64,
    },
    /// Delete a key.
    Delete(Vec<u8>),
}

/// A change seen by [`Etcd::watch`].
#[derive(Debug, Clone)]
pub struct Event {
    /// A deletion (else a put).
    pub deleted: bool,
    /// The key after the change (for a deletion, only the key and revision).
    pub kv: Kv,
}

/// TLS settings for a cluster with a private CA and client certificates.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TlsOptions {
    /// CA certificates (PEM) trusted instead of the web's roots: a cluster with a private
    /// CA is reached only through certificates that CA signed.
    pub ca_pem: Option<Vec<u8>>,
    /// The client's certificate chain (PEM), shown to members that ask for one.
    pub client_cert_pem: Option<Vec<u8>>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub client_key_pem: Option<Vec<u8>>,
}

impl TlsOptions {
    /// Trust the CA certificates in `pem`.
    pub fn ca(mut self, pem: Vec<u8>) -> Self {
        self.ca_pem = Some(pem);
        self
    }

    /// Show this client certificate (chain and key, PEM).
    pub fn client_cert(mut self, chain: Vec<u8>, key: Vec<u8>) -> Self {
        self.client_cert_pem = Some(chain);
        self.client_key_pem = Some(key);
        self
    }

    /// The TLS configuration, or `None` when nothing differs from ureq's default. Every
    /// certificate and the key are checked here, by building the rustls configuration
    /// they make: ureq skips a CA certificate it cannot parse, and stops the process on a
    /// key that does not fit its certificate.
    fn client_config(&self) -> Result<Option<ureq::tls::TlsConfig>> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
        if self.ca_pem.is_none() && self.client_cert_pem.is_none() && self.client_key_pem.is_none()
        {
            return Ok(None);
        }
        let bad = |what: &str, reason: String| Error::Invalid {
            what: what.into(),
            reason,
        };
        let mut tls = TlsConfig::builder();
        let mut roots = rustls::RootCertStore::empty();
        if let Some(pem) = &self.ca_pem {
            let mut certs = Vec::new();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| bad("CA certificates", e.to_string()))?;
                roots
                    .add(cert.clone())
                    .map_err(|e| bad("CA certificates", e.to_string()))?;
                certs.push(Certificate::from_der(cert.as_ref()).to_owned());
            }
            if certs.is_empty() {
                return Err(bad("CA certificates", "no certificate in the PEM".into()));
            }
            tls = tls.root_certs(RootCerts::Specific(std::sync::Arc::new(certs)));
        }
        // Built only to check the client certificate and key: the roots in it do not
        // matter, the connections use ureq's configuration.
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS", e.to_string()))?
        .with_root_certificates(roots);
        match (&self.client_cert_pem, &self.client_key_pem) {
            (Some(chain), Some(key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(chain)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| bad("client certificate", e.to_string()))?;
                if chain.is_empty() {
                    return Err(bad(
                        "client certificate",
                        "no certificate in the PEM".into(),
                    ));
                }
                let key = PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|e| bad("client key", e.to_string()))?;
                let ureq_chain: Vec<_> = chain
                    .iter()
                    .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                    .collect();
                let ureq_key =
                    PrivateKey::from_pem(key_pem).map_err(|e| bad("client key", e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad("client certificate", e.to_string()))?;
                tls = tls.client_cert(Some(ClientCert::new_with_certs(&ureq_chain, ureq_key)));
                Ok(Some(tls.build()))
            }
            (None, None) => Ok(Some(tls.build())),
            _ => Err(bad(
                "client certificate",
                "a certificate needs its key, and a key its certificate".into(),
            )),
        }
    }
}

/// Where an etcd answer says the cluster is busy electing or a member is cut off: worth
/// sending again, to another member.
fn transient(message: &str) -> bool {
    const RETRY: [&str; 7] = [
        "leader changed",
        "no leader",
        "request timed out",
        "too many requests",
        "not capable",
        "unhealthy cluster",
        "server is stopping",
    ];
    RETRY.iter().any(|m| message.contains(m))
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The first key after every key that starts with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// An int64 of the JSON mapping: a string, a number, or absent (0).
fn int(v: &Value, field: &str, request: &'static str) -> Result<i64> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| malformed(request, field)),
        Some(Value::String(s)) => s.parse().map_err(|_| malformed(request, field)),
        Some(_) => Err(malformed(request, field)),
    }
}

fn bytes(v: &Value, field: &str, request: &'static str) -> Result<Vec<u8>> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => B64.decode(s).map_err(|_| malformed(request, field)),
        Some(_) => Err(malformed(request, field)),
    }
}

fn malformed(request: &'static str, field: &str) -> Error {
    Error::Malformed {
        request,
        reason: format!("field {field:?} is not what the API defines"),
    }
}

fn kv(v: &Value, request: &'static str) -> Result<Kv> {
    Ok(Kv {
        key: bytes(v, "key", request)?,
        value: bytes(v, "value", request)?,
        create_revision: int(v, "create_revision", request)?,
        mod_revision: int(v, "mod_revision", request)?,
        version: int(v, "version", request)?,
        lease: int(v, "lease", request)?,
    })
}

fn header_revision(v: &Value, request: &'static str) -> Result<i64> {
    let header = v
        .get("header")
        .ok_or_else(|| malformed(request, "header"))?;
    int(header, "revision", request)
}

impl Op {
    fn to_json(&self) -> Value {
        match self {
            Op::Put { key, value, lease } => {
                json!({"request_put": {"key": b64(key), "value": b64(value), "lease": lease.to_string()}})
            }
            Op::Delete(key) => json!({"request_delete_range": {"key": b64(key)}}),
        }
    }
}

impl Compare {
    fn to_json(&self) -> Value {
        match self {
            Compare::ModRevision(key, rev) => json!({
                "key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string()
            }),
            Compare::Version(key, version) => json!({
                "key": b64(key), "target": "VERSION", "result": "EQUAL", "version": version.to_string()
            }),
        }
    }
}

impl Etcd {
    /// A client of the cluster whose members answer at `endpoints`
    /// (`http://host:port`, or `https://` for a member with a certificate the web's roots
    /// trust). Nothing is sent until the first call.
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Result<Etcd> {
        Etcd::with_tls(endpoints, &TlsOptions::default())
    }

    /// As [`Etcd::new`], for members whose certificates a private CA signed and that ask
    /// clients for a certificate (etcd's `--client-cert-auth`).
    pub fn with_tls<S: AsRef<str>>(endpoints: &[S], tls: &TlsOptions) -> Result<Etcd> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .flat_map(|e| e.as_ref().split(','))
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(Error::Invalid {
                what: "endpoints".into(),
                reason: "at least one etcd URL is needed".into(),
            });
        }
        for e in &endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(Error::Invalid {
                    what: format!("endpoint {e:?}"),
                    reason: "an etcd client URL starts with http:// or https://".into(),
                });
            }
        }
        // A member that stopped mid-request must not hold a call longer than an election
        // takes: each call has a deadline (CALL_LIMIT), each watch a limit on silence
        // (WATCH_IDLE), set per request; ureq 3 keeps them on pooled connections too.
        let mut config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(2)))
            // etcd's refusals are answers to read (a message to match), not errors.
            .http_status_as_error(false)
            .user_agent(concat!("keel-fleet/", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = tls.client_config()? {
            config = config.tls_config(tls);
        }
        Ok(Etcd {
            endpoints,
            agent: config.build().new_agent(),
            preferred: AtomicUsize::new(0),
            op_timeout: Duration::from_secs(30),
        })
    }

    /// How long one operation keeps trying members before it fails with
    /// [`Error::Unavailable`] (default 30 s).
    pub fn op_timeout(mut self, limit: Duration) -> Etcd {
        self.op_timeout = limit;
        self
    }

    /// The members' URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// POST `body` as JSON to `url`, with `limit` as the call's deadline or, for a
    /// stream, as the longest silence.
    fn post(
        &self,
        url: &str,
        body: &Value,
        limit: Limit,
    ) -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let request = self.agent.post(url).config();
        let request = match limit {
            Limit::Call(d) => request.timeout_per_call(Some(d)),
            Limit::Silence(d) => request.timeout_per_read(Some(d)),
        };
        request
            .build()
            .header("Content-Type", "application/json")
            .send(body.to_string())
    }

    /// One request to one member: its JSON answer, its refusal, or why there was none.
    fn answer(&self, url: &str, path: &'static str, body: &Value) -> Result<Answer> {
        let mut resp = match self.post(url, body, Limit::Call(CALL_LIMIT)) {
            Ok(r) => r,
            Err(e) => return Ok(Answer::Failed(format!("{url}: {e}"))),
        };
        let code = resp.status().as_u16();
        let text = match resp.body_mut().read_to_vec() {
            Ok(t) => t,
            Err(e @ ureq::Error::BodyExceedsLimit(_)) => {
                return Err(Error::Malformed {
                    request: path,
                    reason: e.to_string(),
                })
            }
            // Cut or timed out mid-answer: another member may answer.
            Err(e) => return Ok(Answer::Failed(format!("{url}: {e}"))),
        };
        if resp.status().is_success() {
            return serde_json::from_slice(&text)
                .map(Answer::Ok)
                .map_err(|e| Error::Malformed {
                    request: path,
                    reason: e.to_string(),
                });
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .or_else(|| v.get("error"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or(text);
        Ok(Answer::Status(code, message))
    }

    /// POST `body` to `path`, member after member, until one answers or the time limit.
    fn call(&self, path: &'static str, body: &Value) -> Result<Value> {
        let deadline = crate::lease::later(Instant::now(), self.op_timeout);
        let n = self.endpoints.len();
        let mut attempt = 0usize;
        loop {
            let index = (self.preferred.load(Ordering::Relaxed) + attempt) % n;
            let url = format!("{}{}", self.endpoints[index], path);
            let failure = match self.answer(&url, path, body)? {
                Answer::Ok(v) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(v);
                }
                Answer::Status(code, message) => {
                    if !(matches!(code, 429 | 503 | 504) || code >= 500 && transient(&message)) {
                        return Err(Error::Refused {
                            request: path,
                            message: format!("HTTP {code}: {message}"),
                        });
                    }
                    format!("{url}: HTTP {code}: {message}")
                }
                Answer::Failed(why) => why,
            };
            attempt += 1;
            if Instant::now() >= deadline {
                return Err(Error::Unavailable {
                    endpoints: self.endpoints.join(","),
                    seconds: self.op_timeout.as_secs(),
                    last: failure,
                });
            }
            // Once every member was tried, wait a little: an election takes about a
            // second.
            if attempt.is_multiple_of(n) {
                std::thread::sleep(Duration::from_millis(100 * (attempt / n).min(5) as u64));
            }
        }
    }

    /// The key `key`, or (with `prefix`) every key starting with it; at `revision` when
    /// given (an older state of the store, as long as it is not compacted).
    pub fn range(&self, key: &[u8], prefix: bool, revision: Option<i64>) -> Result<Range> {
        const REQ: &str = "/v3/kv/range";
        let mut body = json!({"key": b64(key)});
        if prefix {
            body["range_end"] = Value::String(b64(&prefix_end(key)));
        }
        if let Some(r) = revision {
            body["revision"] = Value::String(r.to_string());
        }
        let v = self.call(REQ, &body)?;
        let kvs = match v.get("kvs") {
            None => Vec::new(),
            Some(Value::Array(items)) => items.iter().map(|i| kv(i, REQ)).collect::<Result<_>>()?,
            Some(_) => return Err(malformed(REQ, "kvs")),
        };
        Ok(Range {
            kvs,
            revision: header_revision(&v, REQ)?,
        })
    }

    /// One key's current value, if it exists.
    pub fn get(&self, key: &[u8]) -> Result<Option<Kv>> {
        Ok(self.range(key, false, None)?.kvs.into_iter().next())
    }

    /// Put `value` under `key` (bound to `lease` when not 0); returns the new revision.
    pub fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64> {
        let v = self.call(
            "/v3/kv/put",
            &json!({"key": b64(key), "value": b64(value), "lease": lease.to_string()}),
        )?;
        header_revision(&v, "/v3/kv/put")
    }

    /// Delete `key`; returns the new revision.
    pub fn delete(&self, key: &[u8]) -> Result<i64> {
        let v = self.call("/v3/kv/deleterange", &json!({"key": b64(key)}))?;
        header_revision(&v, "/v3/kv/deleterange")
    }

    /// If every comparison holds, do `then`, all at one revision; returns whether they
    /// held, and the store's revision after.
    pub fn txn(&self, compare: &[Compare], then: &[Op]) -> Result<(bool, i64)> {
        const REQ: &str = "/v3/kv/txn";
        let body = json!({
            "compare": compare.iter().map(Compare::to_json).collect::<Vec<_>>(),
            "success": then.iter().map(Op::to_json).collect::<Vec<_>>(),
        });
        let v = self.call(REQ, &body)?;
        let ok = match v.get("succeeded") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(malformed(REQ, "succeeded")),
        };
        Ok((ok, header_revision(&v, REQ)?))
    }

    /// A new lease that lives `ttl` unless kept alive; returns its id and the TTL etcd
    /// granted (etcd raises a TTL below its minimum).
    pub fn lease_grant(&self, ttl: Duration) -> Result<(i64, i64)> {
        const REQ: &str = "/v3/lease/grant";
        let v = self.call(REQ, &json!({"TTL": ttl.as_secs().max(1).to_string()}))?;
        if let Some(Value::String(e)) = v.get("error") {
            return Err(Error::Refused {
                request: REQ,
                message: e.clone(),
            });
        }
        Ok((int(&v, "ID", REQ)?, int(&v, "TTL", REQ)?))
    }

    /// Renew a lease to its full TTL; `None` when it has expired (or never existed).
    pub fn lease_keepalive(&self, id: i64) -> Result<Option<i64>> {
        const REQ: &str = "/v3/lease/keepalive";
        let v = self.call(REQ, &json!({"ID": id.to_string()}))?;
        let result = v.get("result").ok_or_else(|| malformed(REQ, "result"))?;
        let ttl = int(result, "TTL", REQ)?;
        Ok((ttl > 0).then_some(ttl))
    }

    /// The seconds a lease has left; `None` when it has expired.
    pub fn lease_time_to_live(&self, id: i64) -> Result<Option<i64>> {
        const REQ: &str = "/v3/lease/timetolive";
        let v = self.call(REQ, &json!({"ID": id.to_string()}))?;
        let ttl = int(&v, "TTL", REQ)?;
        Ok((ttl >= 0 && int(&v, "grantedTTL", REQ)? > 0).then_some(ttl))
    }

    /// End a lease now: the keys bound to it are deleted. Revoking an expired lease is
    /// not an error.
    pub fn lease_revoke(&self, id: i64) -> Result<()> {
        match self.call("/v3/lease/revoke", &json!({"ID": id.to_string()})) {
            Ok(_) => Ok(()),
            Err(Error::Refused { message, .. }) if message.contains("lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Which member answered at `endpoint` and which member leads: `(member, leader)`.
    pub fn member_status(&self, endpoint: &str) -> Result<(u64, u64)> {
        const REQ: &str = "/v3/maintenance/status";
        let url = format!("{}{}", endpoint.trim_end_matches('/'), REQ);
        let unavailable = |last: String| Error::Unavailable {
            endpoints: endpoint.to_string(),
            seconds: CALL_LIMIT.as_secs(),
            last,
        };
        let v = match self.answer(&url, REQ, &json!({}))? {
            Answer::Ok(v) => v,
            Answer::Status(code, message) => {
                return Err(unavailable(format!("{url}: HTTP {code}: {message}")))
            }
            Answer::Failed(why) => return Err(unavailable(why)),
        };
        let header = v.get("header").ok_or_else(|| malformed(REQ, "header"))?;
        let id = |v: &Value, f: &str| -> Result<u64> {
            match v.get(f) {
                Some(Value::String(s)) => s.parse().map_err(|_| malformed(REQ, f)),
                Some(Value::Number(n)) => n.as_u64().ok_or_else(|| malformed(REQ, f)),
                _ => Err(malformed(REQ, f)),
            }
        };
        Ok((id(header, "member_id")?, id(&v, "leader")?))
    }

    /// Watch `key` (or every key under it, with `prefix`) from `start_revision` (older
    /// changes are replayed first, as long as they are not compacted), calling `seen` for
    /// each change with the revision it made, until `seen` returns false or `stop` is
    /// cancelled. A broken or idle connection is reopened at the next revision, on the
    /// next member when one has gone, so no change is missed or seen twice.
    pub fn watch(
        &self,
        key: &[u8],
        prefix: bool,
        start_revision: i64,
        stop: &Cancel,
        mut seen: impl FnMut(&Event) -> bool,
    ) -> Result<()> {
        const REQ: &str = "/v3/watch";
        let mut next = start_revision;
        let mut failures = 0u32;
        let mut member = self.preferred.load(Ordering::Relaxed);
        while !stop.is_cancelled() {
            let mut create = json!({"key": b64(key), "start_revision": next.to_string()});
            if prefix {
                create["range_end"] = Value::String(b64(&prefix_end(key)));
            }
            let url = format!("{}{REQ}", self.endpoints[member % self.endpoints.len()]);
            let opened = self
                .post(
                    &url,
                    &json!({"create_request": create}),
                    Limit::Silence(WATCH_IDLE),
                )
                .map_err(|e| format!("{url}: {e}"))
                .and_then(|resp| {
                    if resp.status().is_success() {
                        Ok(resp.into_body().into_reader())
                    } else {
                        Err(format!("{url}: HTTP {}", resp.status().as_u16()))
                    }
                });
            let reader = match opened {
                Ok(reader) => reader,
                Err(e) => {
                    failures += 1;
                    member += 1;
                    if failures as usize > 10 * self.endpoints.len() + 30 {
                        return Err(Error::Unavailable {
                            endpoints: self.endpoints.join(","),
                            seconds: self.op_timeout.as_secs(),
                            last: e,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            // The stream ends with an error when the connection breaks or stays idle
            // past the read timeout: both reopen the watch where it stopped.
            for message in serde_json::Deserializer::from_reader(reader).into_iter::<Value>() {
                let Ok(message) = message else { break };
                let result = message.get("result").unwrap_or(&message);
                if int(result, "compact_revision", REQ)? > 0 {
                    return Err(Error::Refused {
                        request: REQ,
                        message: format!(
                            "revision {next} is compacted (the oldest kept is {})",
                            int(result, "compact_revision", REQ)?
                        ),
                    });
                }
                failures = 0;
                let events = match result.get("events") {
                    Some(Value::Array(events)) => events.as_slice(),
                    _ => &[],
                };
                for e in events {
                    let event = Event {
                        deleted: e.get("type").and_then(Value::as_str) == Some("DELETE"),
                        kv: kv(e.get("kv").ok_or_else(|| malformed(REQ, "kv"))?, REQ)?,
                    };
                    next = event.kv.mod_revision + 1;
                    if !seen(&event) {
                        return Ok(());
                    }
                }
                if stop.is_cancelled() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// A request's time limit.
enum Limit {
    /// The whole call.
    Call(Duration),
    /// The longest wait for the next bytes (a stream).
    Silence(Duration),
}

/// What one member said.
enum Answer {
    /// A success, and its JSON.
    Ok(Value),
    /// A refusal: the status and etcd's message.
    Status(u16, String),
    /// No answer (connection, timeout): why.
    Failed(String),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"a/b/"), b"a/b0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(matches!(
            Etcd::new(&["127.0.0.1:2379"]),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(Etcd::new::<&str>(&[]), Err(Error::Invalid { .. })));
        let e = Etcd::new(&["http://a:1,http://b:2/", "http://c:3"]).unwrap();
        assert_eq!(e.endpoints(), ["http://a:1", "http://b:2", "http://c:3"]);
    }

    #[test]
    fn int64_fields_as_strings_numbers_or_absent() {
        let v = json!({"a": "12", "b": 7, "c": true});
        assert_eq!(int(&v, "a", "t").unwrap(), 12);
        assert_eq!(int(&v, "b", "t").unwrap(), 7);
        assert_eq!(int(&v, "z", "t").unwrap(), 0);
        assert!(int(&v, "c", "t").is_err());
    }
}
