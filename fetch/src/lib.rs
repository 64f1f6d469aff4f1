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
//! lies between the saved state and the applier's resume point. Bytes delivered a
//! second time (a seek back behind what was hashed) are fetched again a chunk (1 MiB)
//! at a time and checked against the digest of the chunk the first time, so a server
//! cannot serve other bytes the second time.
//!
//! A thread reads the socket ahead of the consumer into a bounded buffer
//! ([`READ_AHEAD`]), with requests for no more than the buffer has room for: what
//! arrived is kept when a connection is reset, and the reconnect asks only for what
//! follows it. Against a server that drips ([TUF]'s slow retrieval attack) a deadline
//! ([`FetchOptions::deadline`], for metadata) and a floor on the average rate
//! ([`FetchOptions::min_bytes_per_sec`]) end the download; against endless data, a body
//! longer than the length the server or the release index gave is cut off or refused.
//!
//! [TUF]: https://theupdateframework.github.io/specification/latest/
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
mod stream;

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_io::Progress;

/// The most bytes [`HttpReader`] reads ahead of its consumer by default
/// ([`FetchOptions::read_ahead`]), with what one socket read brings: what a consumer
/// that stops may have cost without using.
pub const READ_AHEAD: usize = stream::BUFFER + stream::READ;

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
    /// The file's SHA-256 is not the one the release index says, or bytes fetched a
    /// second time differ from the first time's: nothing read from it may be used.
    #[error("{url}: {}SHA-256 {found}, {}", refetched(.range), expected_from(.range, .expected))]
    Digest {
        /// The URL.
        url: String,
        /// The index's digest (or the first delivery's, for bytes fetched again), hex.
        expected: String,
        /// The file's (or the bytes fetched again), hex.
        found: String,
        /// `None`: the whole file. Else the bytes fetched again, `start..end`: the server
        /// served other bytes there the second time.
        range: Option<std::ops::Range<u64>>,
    },
    /// The download ran past its deadline ([`FetchOptions::deadline`]): a server that
    /// drips the bytes (TUF's slow retrieval attack) cannot hold the reader for good.
    #[error("{url}: not done within {deadline:?} ({received} bytes received)")]
    Deadline {
        /// The URL.
        url: String,
        /// Body bytes received by then.
        received: u64,
        /// The deadline.
        deadline: Duration,
    },
    /// The server sent fewer bytes over `window` than
    /// [`FetchOptions::min_bytes_per_sec`] asks (TUF's slow retrieval attack, or a link
    /// too poor to finish).
    #[error(
        "{url}: {received} bytes in {window:?}, below the floor of {min_bytes_per_sec} bytes/s"
    )]
    TooSlow {
        /// The URL.
        url: String,
        /// Body bytes received over the window.
        received: u64,
        /// The span measured (time spent waiting for the server, not for the consumer).
        window: Duration,
        /// The floor.
        min_bytes_per_sec: u64,
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

fn refetched(range: &Option<std::ops::Range<u64>>) -> String {
    match range {
        Some(r) => format!("bytes {}..{} fetched again have ", r.start, r.end),
        None => String::new(),
    }
}

fn expected_from(range: &Option<std::ops::Range<u64>>, expected: &str) -> String {
    match range {
        Some(_) => format!("the first time they had {expected}"),
        None => format!("the release index says {expected}"),
    }
}

impl Error {
    /// Whether the same download may succeed later (another attempt, another mirror,
    /// a better link): a stall, a drip, a cancellation, a file replaced mid-way (fetch
    /// the new index). A wrong file (size, digest), a refused URL, status or certificate
    /// will not change by trying again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            Error::GaveUp { .. }
            | Error::Cancelled
            | Error::Changed { .. }
            | Error::Deadline { .. }
            | Error::TooSlow { .. } => true,
            Error::BadRange { .. }
            | Error::Url { .. }
            | Error::Size { .. }
            | Error::Digest { .. }
            | Error::State { .. }
            | Error::Tls { .. } => false,
        }
    }
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
    /// The whole download must be done within this long of the first read (default: no
    /// deadline). For metadata such as the release index, whose size is small and known
    /// only as a bound: TUF's slow retrieval attack drips it a byte at a time, each read
    /// well within `read_timeout`.
    pub deadline: Option<Duration>,
    /// The slowest average the server may send at, over each [`FetchOptions::rate_window`]
    /// of time spent waiting for it (time waiting for the consumer, or for
    /// [`FetchOptions::max_bytes_per_sec`], does not count). A transient stall passes, a
    /// sustained drip fails with [`Error::TooSlow`] (TUF's slow retrieval attack). The
    /// default, 1 KiB/s, is far below any link an update runs over and only ends a drip
    /// that would otherwise hold the reader for good; set it from the link's real speed
    /// to bound a payload's download.
    pub min_bytes_per_sec: Option<u64>,
    /// The span [`FetchOptions::min_bytes_per_sec`] is averaged over (default 30 s).
    pub rate_window: Duration,
    /// The most bytes read ahead of the consumer (default 2 MiB). Each request asks for
    /// a quarter of it at most, so that what the server sends is read from the socket
    /// as it comes, and kept when the connection is reset. The round trip between two
    /// requests costs a share of the throughput: about 20% at 20 Mbit/s and 50 ms with
    /// the default. On a link with much in flight (bandwidth x round trip: 100 Mbit/s at
    /// 100 ms is 1.25 MB) raise it to several times that.
    pub read_ahead: usize,
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
            deadline: None,
            min_bytes_per_sec: Some(1024),
            rate_window: Duration::from_secs(30),
            read_ahead: stream::BUFFER,
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
    /// Set [`FetchOptions::deadline`].
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }
    /// Set [`FetchOptions::read_ahead`] (at least 128 KiB).
    pub fn read_ahead(mut self, bytes: usize) -> Self {
        self.read_ahead = bytes.max(128 << 10);
        self
    }
    /// Set the floor [`FetchOptions::min_bytes_per_sec`] (0 is none) averaged over
    /// `window` ([`FetchOptions::rate_window`]).
    pub fn min_bytes_per_sec(mut self, rate: u64, window: Duration) -> Self {
        self.min_bytes_per_sec = (rate > 0).then_some(rate);
        self.rate_window = window;
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
            .field("deadline", &self.deadline)
            .field("min_bytes_per_sec", &self.min_bytes_per_sec)
            .field("rate_window", &self.rate_window)
            .field("read_ahead", &self.read_ahead)
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
    validator: stream::Validator,
    /// The response stream read ahead, when there is one.
    ahead: Option<stream::Stream>,
    counters: std::sync::Arc<stream::Counters>,
    rng: u64,
    /// When the first read was made ([`FetchOptions::deadline`] counts from it).
    started: Option<Instant>,
    /// The release index's size and digest, and the digests so far.
    check: Option<Check>,
    /// Bytes fetched again and checked against their first delivery, at an offset.
    again: Option<(u64, Vec<u8>)>,
}

/// The digest check of [`HttpReader::expect`].
struct Check {
    size: u64,
    expected: [u8; 32],
    /// The digests of the file's first `digests.len()` bytes (the frontier).
    digests: digest::Digests,
    verified: bool,
    /// The whole file's digest, when it was not the expected one.
    wrong: Option<[u8; 32]>,
    /// Where the state is saved, and when it last was, at which frontier.
    save: Option<(PathBuf, (Instant, u64))>,
}

/// How often the digest state is saved: a killed process costs at most this much of
/// download again (beyond the applier's own checkpoint interval), once a 1024th of the
/// file was hashed since the last save (the state grows with the file: a slow link does
/// not rewrite it every second)...
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// ...and at the latest each time this share of the file (at least a MiB) was hashed:
/// on a fast link a second is many MiB, and a kill before the first save would cost a
/// download of everything applied so far, to hash it again.
const SAVE_SHARE: u64 = 64;

impl std::fmt::Debug for HttpReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpReader")
            .field("url", &self.url)
            .field("pos", &self.pos)
            .field("len", &self.len)
            .field("stats", &self.stats())
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
            ahead: None,
            counters: Default::default(),
            rng: seed,
            started: None,
            check: None,
            again: None,
        })
    }

    /// Check the file against the release index: `size` bytes whose SHA-256 is
    /// `sha256`. A server that says another size is an error at once ([`Error::Size`]),
    /// and so is a body longer than `size` (endless data); the read that completes the
    /// file fails with [`Error::Digest`] if the digest differs. Bytes are hashed in order
    /// once each; a seek past the bytes hashed so far (a resumed apply) first fetches the
    /// gap to hash it, which [`HttpReader::digest_state`] keeps small. Bytes read again
    /// behind that frontier are fetched again a chunk (1 MiB; 64 KiB in the first MiB,
    /// where a resumed apply reads the header again) at a time and checked against the
    /// first delivery's digest of the chunk before any is delivered, so a server cannot
    /// serve other bytes the second time.
    pub fn expect(mut self, size: u64, sha256: [u8; 32]) -> Self {
        self.check = Some(Check {
            size,
            expected: sha256,
            digests: digest::Digests::new(),
            verified: false,
            wrong: None,
            save: None,
        });
        self
    }

    /// Keep the digests' running state in `path` (about every second, and when the
    /// reader is dropped), and continue from what is there: the digest of a download
    /// resumed by another process is then checked without fetching again what the
    /// earlier one hashed, and what it fetches again is checked against what the earlier
    /// one hashed. The file holds 32 bytes per MiB of the payload besides under a KiB,
    /// so its size is bounded by the expected size. A state saved for another file, or
    /// damaged, is not used (the hashing starts over, costing a download of the skipped
    /// part, never a wrong verdict); one that cannot be read at all is an error. The
    /// file is removed once the digest is checked. Call after [`HttpReader::expect`].
    pub fn digest_state(mut self, path: &Path) -> Result<Self, Error> {
        let Some(c) = self.check.as_mut() else {
            return Ok(self);
        };
        // Anything longer than a state for this size is not one, and is not read on.
        let bound = digest::Digests::max_saved_len(c.size);
        let read = std::fs::File::open(path).and_then(|f| {
            let mut bytes = Vec::new();
            f.take(bound + 1).read_to_end(&mut bytes)?;
            Ok(bytes)
        });
        match read {
            Ok(bytes) => {
                if let Ok(st) = digest::Digests::restore(&bytes, &c.expected, c.size) {
                    c.digests = st;
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
        let hashed = c.digests.len();
        c.save = Some((path.to_path_buf(), (Instant::now(), hashed)));
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
        self.pos = c.size;
        self.start_clock()?;
        self.catch_up()?;
        self.complete()?;
        match &self.check {
            Some(c) if !c.verified => Err(Error::Size {
                url: self.url.clone(),
                expected: c.size,
                found: c.digests.len(),
            }),
            _ => Ok(()),
        }
    }

    /// What the download cost so far: bytes received include those read ahead and
    /// not delivered (the consumer stopped or moved).
    pub fn stats(&self) -> Stats {
        use std::sync::atomic::Ordering::Relaxed;
        Stats {
            requests: self.counters.requests.load(Relaxed),
            bytes: self.counters.bytes.load(Relaxed),
            retries: self.counters.retries.load(Relaxed),
        }
    }

    /// The payload's length, once a response said it.
    pub fn len(&self) -> Option<u64> {
        self.len
    }

    /// Whether the payload is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len == Some(0)
    }

    fn plan(&mut self) -> stream::Plan {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        stream::Plan {
            agent: self.agent.clone(),
            url: self.url.clone(),
            max_attempts: self.opts.max_attempts,
            initial_delay: self.opts.initial_delay,
            max_delay: self.opts.max_delay,
            max_rate: self.opts.max_bytes_per_sec,
            min_rate: self.opts.min_bytes_per_sec,
            rate_window: self.opts.rate_window,
            buffer: self.opts.read_ahead.max(128 << 10),
            size: self.check.as_ref().map(|c| c.size),
            len: self.len,
            validator: self.validator.clone(),
            counters: self.counters.clone(),
            seed: self.rng | 1,
        }
    }

    /// The deadline counts from the first read.
    fn start_clock(&mut self) -> Result<(), Error> {
        let started = *self.started.get_or_insert_with(Instant::now);
        limits(&self.url, &self.opts, started, &self.counters)
    }

    /// Read at the position: bytes behind the digest's frontier fetched again and
    /// checked, else from the read-ahead, hashing what extends the frontier.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.start_clock()?;
        self.complete()?;
        let frontier = self.check.as_ref().map(|c| c.digests.len());
        if frontier.is_some_and(|f| self.pos < f) {
            let n = self.fill_again(buf)?;
            self.pos += n as u64;
            self.report();
            return Ok(n);
        }
        self.catch_up()?;
        let start = self.pos;
        let n = self.read_ahead(start, buf)?;
        self.pos += n as u64;
        self.hash(start, &buf[..n])?;
        self.report();
        Ok(n)
    }

    fn report(&self) {
        if let Some(p) = self.opts.progress {
            p.progress(self.pos, self.len.unwrap_or(self.pos));
        }
    }

    /// Bytes at `at` from the read-ahead, started there when it is elsewhere.
    fn read_ahead(&mut self, at: u64, buf: &mut [u8]) -> Result<usize, Error> {
        if self.len.is_some_and(|l| at >= l) {
            return Ok(0);
        }
        if !self.ahead.as_ref().is_some_and(|s| s.covers(at)) {
            // Dropping the old stream stops its thread.
            self.ahead = None;
            let plan = self.plan();
            self.ahead = Some(stream::Stream::start(plan, at, None));
        }
        let Some(ahead) = self.ahead.as_ref() else {
            return Ok(0);
        };
        let started = self.started.unwrap_or_else(Instant::now);
        let (url, opts, counters) = (&self.url, &self.opts, &self.counters);
        let r = ahead.read(at, buf, &mut || limits(url, opts, started, counters));
        let (len, validator) = ahead.known();
        if len.is_some() {
            self.len = len;
        }
        if self.validator.is_none() {
            self.validator = validator;
        }
        if r.is_err() {
            // Failed, cancelled or out of time: the thread stops; a later read starts over.
            self.ahead = None;
        }
        r
    }

    /// Bytes at the position, behind the digest's frontier: from the chunk fetched again
    /// and checked, fetching (and checking) it first if need be.
    fn fill_again(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let pos = self.pos;
        let cached = |a: &Option<(u64, Vec<u8>)>| {
            a.as_ref()
                .is_some_and(|(at, b)| *at <= pos && pos < at + b.len() as u64)
        };
        if !cached(&self.again) {
            self.again = None;
            let Some((start, end, want)) =
                self.check.as_ref().and_then(|c| c.digests.chunk_at(pos))
            else {
                return Ok(0);
            };
            let bytes = self.fetch_range(start, end)?;
            let found: [u8; 32] = {
                use sha2::Digest;
                sha2::Sha256::digest(&bytes).into()
            };
            if found != want {
                return Err(Error::Digest {
                    url: self.url.clone(),
                    expected: hex::encode(want),
                    found: hex::encode(found),
                    range: Some(start..end),
                });
            }
            self.again = Some((start, bytes));
        }
        let Some((at, bytes)) = &self.again else {
            return Ok(0);
        };
        let from = usize::try_from(pos - at).unwrap_or(usize::MAX);
        let have = bytes.get(from..).unwrap_or_default();
        let n = have.len().min(buf.len());
        buf[..n].copy_from_slice(&have[..n]);
        Ok(n)
    }

    /// Exactly the bytes `start..end`, with a bounded range request (the read-ahead, a
    /// stream of its own, goes on meanwhile).
    fn fetch_range(&mut self, start: u64, end: u64) -> Result<Vec<u8>, Error> {
        let plan = self.plan();
        let s = stream::Stream::start(plan, start, Some(end));
        let mut out = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
        let mut got = 0;
        let started = self.started.unwrap_or_else(Instant::now);
        let (url, opts, counters) = (&self.url, &self.opts, &self.counters);
        while got < out.len() {
            let at = start + got as u64;
            let n = s.read(at, &mut out[got..], &mut || {
                limits(url, opts, started, counters)
            })?;
            if n == 0 {
                return Err(Error::Size {
                    url: self.url.clone(),
                    expected: self.check.as_ref().map_or(end, |c| c.size),
                    found: at,
                });
            }
            got += n;
        }
        Ok(out)
    }

    /// A seek left bytes between the digest's frontier and the position unhashed: fetch
    /// and hash them first (from the read-ahead, which goes on past them).
    fn catch_up(&mut self) -> Result<(), Error> {
        let want = self.pos;
        let mut at = match &self.check {
            Some(c) if c.digests.len() < want => c.digests.len(),
            _ => return Ok(()),
        };
        let mut scratch = vec![0u8; 256 << 10];
        while at < want {
            let k = usize::try_from(want - at).map_or(scratch.len(), |w| w.min(scratch.len()));
            let n = self.read_ahead(at, &mut scratch[..k])?;
            if n == 0 {
                return Err(Error::Size {
                    url: self.url.clone(),
                    expected: self.check.as_ref().map_or(0, |c| c.size),
                    found: at,
                });
            }
            self.hash(at, &scratch[..n])?;
            at += n as u64;
            if let Some(p) = self.opts.progress {
                p.progress(at, self.len.unwrap_or(at));
            }
        }
        Ok(())
    }

    /// `bytes` were read at `start`: hash the part past the frontier; check the digest
    /// when the file is complete; save the state now and then.
    fn hash(&mut self, start: u64, bytes: &[u8]) -> Result<(), Error> {
        let Some(c) = self.check.as_mut() else {
            return Ok(());
        };
        let frontier = c.digests.len();
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
            // Endless data: more than the index says, however the server framed it.
            self.ahead = None;
            return Err(Error::Size {
                url: self.url.clone(),
                expected: c.size,
                found: end,
            });
        }
        c.digests
            .update(bytes.get((frontier - start) as usize..).unwrap_or_default());
        if c.digests.len() == c.size {
            return self.complete();
        }
        let by_bytes = (c.size / SAVE_SHARE).max(digest::CHUNK);
        let by_time = (c.size / 1024).max(digest::CHUNK);
        let hashed = c.digests.len();
        if let Some((path, (at, saved))) = &mut c.save {
            if (at.elapsed() >= SAVE_EVERY && hashed - *saved >= by_time)
                || hashed - *saved >= by_bytes
            {
                *at = Instant::now();
                *saved = hashed;
                keel_io::replace_file(path, &c.digests.save(&c.expected, c.size)).map_err(|e| {
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
        if c.digests.len() == c.size && !c.verified && c.wrong.is_none() {
            let found = c.digests.finish();
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
                range: None,
            }),
            None => Ok(()),
        }
    }
}

/// Cancellation and the deadline, looked at before each read and while one waits.
fn limits(
    url: &str,
    opts: &FetchOptions<'_>,
    started: Instant,
    counters: &stream::Counters,
) -> Result<(), Error> {
    if opts.progress.is_some_and(|p| p.cancelled()) {
        return Err(Error::Cancelled);
    }
    if let Some(d) = opts.deadline {
        if started.elapsed() >= d {
            return Err(Error::Deadline {
                url: url.to_string(),
                received: counters.bytes.load(std::sync::atomic::Ordering::Relaxed),
                deadline: d,
            });
        }
    }
    Ok(())
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
        self.fill(buf).map_err(io::Error::from)
    }
}

impl Drop for HttpReader<'_> {
    /// Stop the read-ahead; save the digest state where a cancelled or failed download
    /// left it.
    fn drop(&mut self) {
        self.ahead = None;
        if let Some(c) = &self.check {
            if let Some((path, _)) = &c.save {
                if c.digests.len() > 0 {
                    let _ = keel_io::replace_file(path, &c.digests.save(&c.expected, c.size));
                }
            }
        }
    }
}

impl Seek for HttpReader<'_> {
    /// Moving keeps the read-ahead when the target is among the bytes it holds (or
    /// behind the digest's frontier, which is fetched apart); else the next read asks for
    /// the range from there.
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.and_then(|l| l.checked_add_signed(d)),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek outside the payload"))?;
        // Where the next read from the read-ahead will be: the digest's frontier when the
        // target is past it (the gap is hashed first), none when it is behind it (those
        // bytes are fetched apart).
        let next = match &self.check {
            Some(c) if target < c.digests.len() => None,
            Some(c) => Some(c.digests.len()),
            None => Some(target),
        };
        if next.is_some_and(|n| !self.ahead.as_ref().is_some_and(|s| s.covers(n))) {
            // Stops the read-ahead's thread now, not at the next read.
            self.ahead = None;
        }
        self.pos = target;
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
