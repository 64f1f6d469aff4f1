//! keel-fetch: payloads streamed over HTTP(S), resumed with range requests.
//!
//! [`HttpReader`] is a `Read + Seek` over a URL. Give it to keel-payload's
//! `apply_seekable` (or keel-update's install) and a dropped connection, a stall or a
//! server error costs a reconnect, not the download: the reader asks for `Range:
//! bytes=N-` from where it stopped, checks the `206` and its `Content-Range`, and sends
//! `If-Range` with the first response's validator (ETag, else Last-Modified), so a payload
//! replaced on the server is an error ([`Error::Changed`]) rather than two files spliced
//! together. After a process restart the applier resumes from its record and seeks over
//! what it applied, so nothing applied is fetched again. Retries back off exponentially
//! with jitter up to a limit of attempts in a row; [`Stats`] counts requests and bytes.
//!
//! Given the size and SHA-256 the release index names ([`HttpReader::expect`]), the reader
//! checks the server's size before the first byte and the digest of the whole file when
//! the last byte arrives: a wrong digest is an error from that read (and every later
//! one), so a consumer that stops at the first error (keel-payload's apply, keel-update's
//! install) never finishes on a file the index did not name. A resumed download is checked too: the
//! digest's running state is saved beside the applier's record
//! ([`HttpReader::digest_state`]) and the next process continues it, fetching only what
//! lies between the saved state and the applier's resume point.
//!
//! ```no_run
//! use keel_fetch::{FetchOptions, HttpReader};
//! let mut payload = HttpReader::new("https://updates.example.com/os/2.0.payload", FetchOptions::default())?;
//! let mut bytes = Vec::new();
//! std::io::Read::read_to_end(&mut payload, &mut bytes)?;
//! println!("{} requests", payload.stats().requests);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod digest;
pub mod index;

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_io::Progress;

/// What can go wrong fetching.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a status that retrying will not change (404, 403...).
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The payload on the server is not the one the download started with (its ETag or
    /// Last-Modified changed): start over with the new one.
    #[error("{url}: the file changed on the server during the download")]
    Changed {
        /// The URL.
        url: String,
    },
    /// The server does not answer range requests as it must (no 206, a wrong
    /// Content-Range).
    #[error("{url}: {reason}")]
    BadRange {
        /// The URL.
        url: String,
        /// What the server did.
        reason: String,
    },
    /// Every attempt in a row failed; the last error.
    #[error("{url}: gave up after {attempts} attempts in a row: {last}")]
    GaveUp {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// Stopped through [`Progress::cancelled`].
    #[error("cancelled")]
    Cancelled,
    /// Not an http or https URL with a host.
    #[error("{url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// Why it cannot be fetched.
        reason: String,
    },
    /// The server's file is not the size the release index says.
    #[error("{url}: the server has {found} bytes, the release index says {expected}")]
    Size {
        /// The URL.
        url: String,
        /// The index's size.
        expected: u64,
        /// What the server says (or the bytes there were).
        found: u64,
    },
    /// The file's SHA-256 is not the one the release index says: nothing read from it
    /// may be used.
    #[error("{url}: SHA-256 {found}, the release index says {expected}")]
    Digest {
        /// The URL.
        url: String,
        /// The index's digest, hex.
        expected: String,
        /// The file's, hex.
        found: String,
    },
    /// The saved digest state cannot be read or written.
    #[error("{path}: {reason}")]
    State {
        /// The state file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// TLS: the server's certificate is not trusted, or the CA given does not parse.
    #[error("{url}: TLS: {reason}")]
    Tls {
        /// The URL (or "CA certificates").
        url: String,
        /// Why.
        reason: String,
    },
}

/// TLS trusting exactly the CA certificates in `pem` (as `curl --cacert`): an agent
/// pointed at a private update server is pinned to its CA, not to every web CA.
fn tls_config(pem: &[u8]) -> Result<ureq::tls::TlsConfig, Error> {
    use rustls_pki_types::pem::PemObject;
    let bad = |reason: String| Error::Tls {
        url: "CA certificates".into(),
        reason,
    };
    let mut roots = Vec::new();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        // ureq skips a certificate it cannot parse; a CA that would silently trust
        // nothing must be an error here instead.
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| bad(e.to_string()))?;
        roots.push(ureq::tls::Certificate::from_der(cert.as_ref()).to_owned());
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the PEM given".into()));
    }
    Ok(ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)))
        .build())
}

impl From<Error> for io::Error {
    /// Cancellation becomes keel-io's [`keel_io::Cancelled`] inside an error of kind
    /// `Other`: not `Interrupted`, which `read_exact`, `read_to_end` and `io::copy` retry
    /// at once, forever, on a reader that stays cancelled.
    fn from(e: Error) -> io::Error {
        match e {
            Error::Cancelled => io::Error::other(keel_io::Cancelled),
            Error::Status { status: 404, .. } => io::Error::new(io::ErrorKind::NotFound, e),
            _ => io::Error::other(e),
        }
    }
}

/// How to fetch.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct FetchOptions<'a> {
    /// Time to connect (default 10 s).
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes before the connection counts as stalled and is
    /// made again (default 30 s).
    pub read_timeout: Duration,
    /// Failed attempts in a row before giving up (default 10); a success resets it.
    pub max_attempts: u32,
    /// First retry delay, doubled each time up to `max_delay` (default 200 ms), with
    /// jitter.
    pub initial_delay: Duration,
    /// Longest retry delay (default 10 s).
    pub max_delay: Duration,
    /// Receives bytes delivered so far (and the length once known); can cancel.
    pub progress: Option<&'a dyn Progress>,
    /// The certificate authorities to trust instead of the web's (PEM): a private update
    /// server's CA.
    pub ca_certificates: Option<&'a [u8]>,
    /// Deliver at most this many bytes per second (default: no cap), so an update on a
    /// metered or shared link leaves room for the machine's own traffic.
    pub max_bytes_per_sec: Option<u64>,
}

impl Default for FetchOptions<'_> {
    fn default() -> Self {
        FetchOptions {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            max_attempts: 10,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            progress: None,
            ca_certificates: None,
            max_bytes_per_sec: None,
        }
    }
}

impl<'a> FetchOptions<'a> {
    /// Set [`FetchOptions::connect_timeout`].
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    /// Set [`FetchOptions::read_timeout`].
    pub fn read_timeout(mut self, t: Duration) -> Self {
        self.read_timeout = t;
        self
    }
    /// Set [`FetchOptions::max_attempts`].
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }
    /// Set [`FetchOptions::initial_delay`] and [`FetchOptions::max_delay`].
    pub fn delays(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_delay = initial;
        self.max_delay = max;
        self
    }
    /// Report to and take cancellation from `p`.
    pub fn progress(mut self, p: &'a dyn Progress) -> Self {
        self.progress = Some(p);
        self
    }
    /// Trust these CA certificates (PEM) only ([`FetchOptions::ca_certificates`]).
    pub fn ca_certificates(mut self, pem: &'a [u8]) -> Self {
        self.ca_certificates = Some(pem);
        self
    }
    /// Cap the rate ([`FetchOptions::max_bytes_per_sec`]; 0 is no cap).
    pub fn max_bytes_per_sec(mut self, rate: u64) -> Self {
        self.max_bytes_per_sec = (rate > 0).then_some(rate);
        self
    }
}

impl std::fmt::Debug for FetchOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("max_bytes_per_sec", &self.max_bytes_per_sec)
            .finish_non_exhaustive()
    }
}

/// What a download cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// HTTP requests made.
    pub requests: u64,
    /// Body bytes received.
    pub bytes: u64,
    /// Reconnections after a failure (a cut, a stall, a 5xx).
    pub retries: u64,
}

impl Stats {
    /// Requests per GiB delivered: what a CDN that limits range requests per object
    /// (hawkBit's per-action cap) would count.
    pub fn requests_per_gib(&self) -> f64 {
        self.requests as f64 / (self.bytes.max(1) as f64 / f64::from(1u32 << 30))
    }
}

/// A URL read as a seekable stream, reconnecting with range requests.
pub struct HttpReader<'a> {
    agent: ureq::Agent,
    url: String,
    opts: FetchOptions<'a>,
    pos: u64,
    len: Option<u64>,
    validator: Option<(&'static str, String)>,
    body: Option<ureq::BodyReader<'static>>,
    stats: Stats,
    rng: u64,
    /// The cap's reference: bytes delivered since this instant.
    pace: Option<(Instant, u64)>,
    /// The release index's size and digest, and the digest so far.
    check: Option<Check>,
}

/// The digest check of [`HttpReader::expect`].
struct Check {
    size: u64,
    expected: [u8; 32],
    /// The digest of the file's first `state.len()` bytes (the frontier).
    state: digest::Sha256State,
    verified: bool,
    /// The whole file's digest, when it was not the expected one.
    wrong: Option<[u8; 32]>,
    /// Where the state is saved, and when it last was.
    save: Option<(PathBuf, Instant)>,
}

/// How often the digest state is saved: a killed process costs at most this much of
/// download again (beyond the applier's own checkpoint interval).
const SAVE_EVERY: Duration = Duration::from_secs(1);

impl std::fmt::Debug for HttpReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpReader")
            .field("url", &self.url)
            .field("pos", &self.pos)
            .field("len", &self.len)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<'a> HttpReader<'a> {
    /// A reader of `url` (http or https; proxies from the environment, `HTTPS_PROXY`,
    /// `NO_PROXY`...). Nothing is fetched until the first read.
    pub fn new(url: &str, opts: FetchOptions<'a>) -> Result<Self, Error> {
        // Refused here, not retried until the attempts run out.
        let bad_url = |reason: &str| Error::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: ureq::http::Uri = url
            .parse()
            .map_err(|e: ureq::http::uri::InvalidUri| bad_url(&e.to_string()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(bad_url("not an http:// or https:// URL"));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad_url("no host"));
        }
        let mut config = ureq::Agent::config_builder()
            .timeout_connect(Some(opts.connect_timeout))
            // A stall: no byte for this long, on a new or a pooled connection alike.
            .timeout_per_read(Some(opts.read_timeout))
            // Statuses are answers here (a 416 at the end, a 5xx to retry), not errors.
            .http_status_as_error(false)
            .user_agent(concat!("keel-fetch/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = opts.ca_certificates {
            config = config.tls_config(tls_config(pem)?);
        }
        let agent = config.build().new_agent();
        // Jitter needs no cryptographic randomness: the clock seeds it.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Ok(HttpReader {
            agent,
            url: url.to_string(),
            opts,
            pos: 0,
            len: None,
            validator: None,
            body: None,
            stats: Stats::default(),
            rng: seed,
            pace: None,
            check: None,
        })
    }

    /// Check the file against the release index: `size` bytes whose SHA-256 is
    /// `sha256`. A server that says another size is an error at once ([`Error::Size`]);
    /// the read that completes the file fails with [`Error::Digest`] if the digest
    /// differs. Bytes are hashed in order once each, whatever the consumer re-reads; a
    /// seek past the bytes hashed so far (a resumed apply) first fetches the gap to hash
    /// it, which [`HttpReader::digest_state`] keeps small.
    pub fn expect(mut self, size: u64, sha256: [u8; 32]) -> Self {
        self.check = Some(Check {
            size,
            expected: sha256,
            state: digest::Sha256State::new(),
            verified: false,
            wrong: None,
            save: None,
        });
        self
    }

    /// Keep the digest's running state in `path` (about every second, and when the
    /// reader is dropped), and continue from what is there: the digest of a download
    /// resumed by another process is then checked without fetching again what the
    /// earlier one hashed. A state saved for another file, or damaged, is not used (the
    /// hashing starts over, costing a download of the skipped part, never a wrong
    /// verdict); one that cannot be read at all is an error. The file is removed once
    /// the digest is checked. Call after [`HttpReader::expect`].
    pub fn digest_state(mut self, path: &Path) -> Result<Self, Error> {
        let Some(c) = self.check.as_mut() else {
            return Ok(self);
        };
        // A state is a few hundred bytes: anything longer is not one, and is not read on.
        let read = std::fs::File::open(path).and_then(|f| {
            let mut bytes = Vec::new();
            f.take(digest::SAVED_LEN as u64 + 1)
                .read_to_end(&mut bytes)?;
            Ok(bytes)
        });
        match read {
            Ok(bytes) => {
                if let Ok(st) = digest::Sha256State::restore(&bytes, &c.expected, c.size) {
                    c.state = st;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::State {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        }
        c.save = Some((path.to_path_buf(), Instant::now()));
        Ok(self)
    }

    /// Whether the whole file was read and its digest matched [`HttpReader::expect`]'s
    /// (`None` without an expectation).
    pub fn verified(&self) -> Option<bool> {
        self.check.as_ref().map(|c| c.verified)
    }

    /// Read and hash what is left of the file after the consumer stopped (bytes past the
    /// last one it needed), so that [`HttpReader::verified`] covers the whole file.
    /// `Ok` once the digest matched; nothing to do without an expectation.
    pub fn finish(&mut self) -> Result<(), Error> {
        let Some(c) = &self.check else { return Ok(()) };
        if c.verified {
            return Ok(());
        }
        let end = c.size;
        if self.pos != end {
            self.body = None;
            self.pos = end;
        }
        self.catch_up()?;
        self.complete()?;
        match &self.check {
            Some(c) if !c.verified => Err(Error::Size {
                url: self.url.clone(),
                expected: c.size,
                found: c.state.len(),
            }),
            _ => Ok(()),
        }
    }

    /// What the download cost so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The payload's length, once a response said it.
    pub fn len(&self) -> Option<u64> {
        self.len
    }

    /// Whether the payload is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len == Some(0)
    }

    /// One request from the current position. `Ok(false)`: the position is the end.
    fn connect(&mut self) -> Result<bool, Attempt> {
        self.stats.requests += 1;
        let mut req = self.agent.get(&self.url);
        if self.pos > 0 || self.validator.is_some() {
            req = req.header("Range", &format!("bytes={}-", self.pos));
            if let Some((_, v)) = &self.validator {
                req = req.header("If-Range", v);
            }
        }
        let resp = match req.call() {
            Ok(r) => r,
            // A certificate the client does not trust will not become trusted by retrying.
            Err(e) if untrusted_certificate(&e) => {
                return Err(Attempt::Fatal(Error::Tls {
                    url: self.url.clone(),
                    reason: e.to_string(),
                }))
            }
            Err(e) => return Err(Attempt::Retry(e.to_string())),
        };
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
        let validator = header("ETag")
            .map(|v| ("ETag", v.to_string()))
            .or_else(|| header("Last-Modified").map(|v| ("Last-Modified", v.to_string())));
        let status = resp.status().as_u16();
        match status {
            416 if self.len == Some(self.pos) => return Ok(false),
            429 | 500.. => return Err(Attempt::Retry(format!("HTTP {status}"))),
            200..=299 => {}
            _ => {
                return Err(Attempt::Fatal(Error::Status {
                    url: self.url.clone(),
                    status,
                }))
            }
        }
        match status {
            206 => {
                let (start, total) = content_range(header("Content-Range")).ok_or_else(|| {
                    Attempt::Fatal(Error::BadRange {
                        url: self.url.clone(),
                        reason: format!("206 with Content-Range {:?}", header("Content-Range")),
                    })
                })?;
                if start != self.pos || self.len.is_some_and(|l| l != total) {
                    return Err(Attempt::Fatal(Error::BadRange {
                        url: self.url.clone(),
                        reason: format!(
                            "asked from byte {}, got bytes from {start} of {total}",
                            self.pos
                        ),
                    }));
                }
                if let (Some((_, old)), Some((_, new))) = (&self.validator, &validator) {
                    if old != new {
                        return Err(Attempt::Fatal(Error::Changed {
                            url: self.url.clone(),
                        }));
                    }
                }
                self.len = Some(total);
            }
            200 if self.pos == 0 && self.validator.is_none() => {
                self.len = header("Content-Length").and_then(|l| l.parse().ok());
            }
            // A full answer to a range request with If-Range: the validator no longer
            // matches, the file was replaced.
            200 if self.validator.is_some() => {
                return Err(Attempt::Fatal(Error::Changed {
                    url: self.url.clone(),
                }))
            }
            status => {
                return Err(Attempt::Fatal(Error::BadRange {
                    url: self.url.clone(),
                    reason: format!("HTTP {status} to a range request (ranges not supported?)"),
                }))
            }
        }
        if let (Some(c), Some(len)) = (&self.check, self.len) {
            if c.size != len {
                return Err(Attempt::Fatal(Error::Size {
                    url: self.url.clone(),
                    expected: c.size,
                    found: len,
                }));
            }
        }
        if self.validator.is_none() {
            self.validator = validator;
        }
        self.body = Some(resp.into_body().into_reader());
        Ok(true)
    }

    /// Wait before the next attempt: none before the first (a connection that was
    /// delivering and dropped is made again at once), then exponential backoff with
    /// jitter.
    fn back_off(&mut self, attempt: u32) {
        if attempt <= 1 {
            return;
        }
        let base = self
            .opts
            .initial_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.opts.max_delay);
        // xorshift: a jitter of 50-100% of the delay spreads a fleet's retries.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = 0.5 + (self.rng % 1000) as f64 / 2000.0;
        std::thread::sleep(base.mul_f64(frac));
    }

    /// Read at the position, hashing what extends the digest's frontier.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.complete()?;
        self.catch_up()?;
        let start = self.pos;
        let n = self.fetch(buf)?;
        self.hash(start, &buf[..n])?;
        Ok(n)
    }

    /// A seek left bytes between the digest's frontier and the position unhashed: fetch
    /// and hash them first.
    fn catch_up(&mut self) -> Result<(), Error> {
        let want = self.pos;
        let frontier = match &self.check {
            Some(c) if c.state.len() < want => c.state.len(),
            _ => return Ok(()),
        };
        self.body = None;
        self.pos = frontier;
        let mut scratch = vec![0u8; 256 << 10];
        while self.pos < want {
            let start = self.pos;
            let k = usize::try_from(want - start).map_or(scratch.len(), |w| w.min(scratch.len()));
            let n = self.fetch(&mut scratch[..k])?;
            if n == 0 {
                return Err(Error::Size {
                    url: self.url.clone(),
                    expected: self.check.as_ref().map_or(0, |c| c.size),
                    found: start,
                });
            }
            self.hash(start, &scratch[..n])?;
        }
        Ok(())
    }

    /// `bytes` were read at `start`: hash the part past the frontier; check the digest
    /// when the file is complete; save the state now and then.
    fn hash(&mut self, start: u64, bytes: &[u8]) -> Result<(), Error> {
        let Some(c) = self.check.as_mut() else {
            return Ok(());
        };
        let frontier = c.state.len();
        let end = start + bytes.len() as u64;
        if bytes.is_empty() {
            // The body ended: short of the size the index says?
            if start < c.size && !c.verified && self.len.is_none_or(|l| start >= l) {
                return Err(Error::Size {
                    url: self.url.clone(),
                    expected: c.size,
                    found: start,
                });
            }
            return Ok(());
        }
        if start > frontier || end <= frontier {
            return Ok(());
        }
        if end > c.size {
            return Err(Error::Size {
                url: self.url.clone(),
                expected: c.size,
                found: end,
            });
        }
        c.state.update(&bytes[(frontier - start) as usize..]);
        if c.state.len() == c.size {
            return self.complete();
        }
        if let Some((path, at)) = &mut c.save {
            if at.elapsed() >= SAVE_EVERY {
                *at = Instant::now();
                keel_io::replace_file(path, &c.state.save(&c.expected, c.size)).map_err(|e| {
                    Error::State {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
            }
        }
        Ok(())
    }

    /// With the whole file hashed: the verdict, kept (a wrong digest fails every read
    /// after it too).
    fn complete(&mut self) -> Result<(), Error> {
        let Some(c) = self.check.as_mut() else {
            return Ok(());
        };
        if c.state.len() == c.size && !c.verified && c.wrong.is_none() {
            let found = c.state.finish();
            if let Some((path, _)) = c.save.take() {
                let _ = std::fs::remove_file(path);
            }
            if found == c.expected {
                c.verified = true;
            } else {
                c.wrong = Some(found);
            }
        }
        match c.wrong {
            Some(found) => Err(Error::Digest {
                url: self.url.clone(),
                expected: hex::encode(c.expected),
                found: hex::encode(found),
            }),
            None => Ok(()),
        }
    }

    /// Read at the position from the network, reconnecting as needed.
    fn fetch(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut failures = 0u32;
        let mut last = String::new();
        loop {
            if self.opts.progress.is_some_and(|p| p.cancelled()) {
                return Err(Error::Cancelled);
            }
            if failures >= self.opts.max_attempts {
                return Err(Error::GaveUp {
                    url: self.url.clone(),
                    attempts: failures,
                    last,
                });
            }
            if self.len.is_some_and(|l| self.pos >= l) {
                return Ok(0);
            }
            if self.body.is_none() {
                match self.connect() {
                    Ok(true) => {}
                    Ok(false) => return Ok(0),
                    Err(Attempt::Fatal(e)) => return Err(e),
                    Err(Attempt::Retry(why)) => {
                        failures += 1;
                        self.stats.retries += 1;
                        last = why;
                        self.back_off(failures);
                        continue;
                    }
                }
            }
            let started = Instant::now();
            let r = match self.body.as_mut() {
                Some(b) => b.read(buf),
                None => continue,
            };
            match r {
                Ok(n) if n > 0 => {
                    self.pos += n as u64;
                    self.stats.bytes += n as u64;
                    if let Some(p) = self.opts.progress {
                        p.progress(self.pos, self.len.unwrap_or(self.pos));
                    }
                    return Ok(n);
                }
                // The body ended: the end of the payload, or a connection cut short.
                Ok(_) if self.len.is_none_or(|l| self.pos >= l) => return Ok(0),
                Ok(_) => last = format!("connection closed at byte {}", self.pos),
                Err(e) => last = format!("{e} after {:?} at byte {}", started.elapsed(), self.pos),
            }
            self.body = None;
            failures += 1;
            self.stats.retries += 1;
            self.back_off(failures);
        }
    }
}

/// Whether the handshake failed on the server's certificate (ureq reports rustls's
/// verdict directly, or inside the I/O error of the handshake).
fn untrusted_certificate(e: &ureq::Error) -> bool {
    let rustls = match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    matches!(rustls, Some(rustls::Error::InvalidCertificate(_)))
}

enum Attempt {
    Retry(String),
    Fatal(Error),
}

/// `bytes START-END/TOTAL` → (START, TOTAL).
fn content_range(h: Option<&str>) -> Option<(u64, u64)> {
    let rest = h?.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, total): (u64, u64, u64) =
        (start.parse().ok()?, end.parse().ok()?, total.parse().ok()?);
    (start <= end && end < total).then_some((start, total))
}

impl Read for HttpReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let Some(rate) = self.opts.max_bytes_per_sec else {
            return self.fill(buf).map_err(io::Error::from);
        };
        // Reads of a tenth of a second's worth, each delivered no sooner than the cap
        // allows: the rate holds over any second, not just on average.
        let slice = usize::try_from((rate / 10).max(1)).unwrap_or(usize::MAX);
        let limit = buf.len().min(slice);
        let n = self.fill(&mut buf[..limit]).map_err(io::Error::from)?;
        self.pace(rate, n as u64)?;
        Ok(n)
    }
}

impl HttpReader<'_> {
    /// Wait until `n` more bytes are within the cap, looking at cancellation meanwhile.
    fn pace(&mut self, rate: u64, n: u64) -> io::Result<()> {
        let now = Instant::now();
        let (since, sent) = match self.pace {
            // After a pause (the caller was busy) the allowance does not pile up into a
            // burst beyond a second's worth.
            Some((since, sent))
                if now.duration_since(since).as_secs_f64() <= sent as f64 / rate as f64 + 1.0 =>
            {
                (since, sent + n)
            }
            _ => (now, n),
        };
        self.pace = Some((since, sent));
        let due = since + Duration::from_secs_f64(sent as f64 / rate as f64);
        while Instant::now() < due {
            if self.opts.progress.is_some_and(|p| p.cancelled()) {
                return Err(Error::Cancelled.into());
            }
            std::thread::sleep((due - Instant::now()).min(Duration::from_millis(100)));
        }
        Ok(())
    }
}

impl Drop for HttpReader<'_> {
    /// Save the digest state where a cancelled or failed download left it.
    fn drop(&mut self) {
        if let Some(c) = &self.check {
            if let Some((path, _)) = &c.save {
                if c.state.len() > 0 {
                    let _ = keel_io::replace_file(path, &c.state.save(&c.expected, c.size));
                }
            }
        }
    }
}

impl Seek for HttpReader<'_> {
    /// Moving drops the connection; the next read asks for the range from there.
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.and_then(|l| l.checked_add_signed(d)),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek outside the payload"))?;
        if target != self.pos {
            self.body = None;
            self.pos = target;
        }
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_are_read_strictly() {
        assert_eq!(content_range(Some("bytes 100-199/1000")), Some((100, 1000)));
        for bad in [
            "bytes 100-99/1000",
            "bytes 0-1000/1000",
            "bytes */1000",
            "100-199/1000",
            "bytes 1-2",
        ] {
            assert_eq!(content_range(Some(bad)), None, "{bad}");
        }
        assert_eq!(content_range(None), None);
    }
}
