//! The reader: a URL as a `Read + Seek` stream over the read-ahead, reconnecting with
//! range requests.

use std::io::{self, Read, Seek, SeekFrom};
use std::time::Instant;

use crate::{stream, Error, FetchOptions, Stats};

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
    /// The length the caller expects ([`HttpReader::expect_len`]).
    expected: Option<u64>,
}

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
            // Headers dripped a byte at a time: each byte would be in time for the read
            // timeout, the response never; the headers as a whole have that long.
            .timeout_recv_response(Some(opts.read_timeout))
            // Statuses are answers here (a 416 at the end, a 5xx to retry), not errors.
            .http_status_as_error(false)
            .user_agent(
                opts.user_agent
                    .unwrap_or(concat!("keel-fetch/", env!("CARGO_PKG_VERSION"))),
            );
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
            expected: None,
        })
    }

    /// The file is `len` bytes (the size a release index gives): a server that says
    /// another length is an error at once ([`Error::Size`]), and so is a body that runs
    /// past it (endless data) or ends before it. Whether the bytes are the right ones is
    /// the consumer's to check (keel-payload checks every byte against its signed manifest).
    pub fn expect_len(mut self, len: u64) -> Self {
        self.expected = Some(len);
        self
    }

    /// What the download cost so far: bytes received include those read ahead and
    /// not delivered (the consumer stopped or moved).
    pub fn stats(&self) -> Stats {
        self.meter().stats()
    }

    /// A handle on [`HttpReader::stats`] that outlives the reader's move into its
    /// consumer (a payload that takes the reader).
    pub fn meter(&self) -> Meter {
        Meter(self.counters.clone())
    }

    /// Exactly `buf.len()` bytes at `offset`, asked for as one bounded range (`Range:
    /// bytes=offset-end`), retried from where a cut left it, with the validator of the
    /// earlier responses (a file replaced between two ranges is [`Error::Changed`]):
    /// for a consumer that picks pieces of a file (a block store's runs), nothing is read
    /// past the range. The read-ahead of [`Read`] is dropped.
    pub fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        self.start_clock()?;
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| Error::BadRange {
                url: self.url.clone(),
                reason: format!("a range of {} bytes at {offset}", buf.len()),
            })?;
        if let Some(size) = self.expected.or(self.len) {
            if end > size {
                return Err(Error::Size {
                    url: self.url.clone(),
                    expected: size,
                    found: end,
                });
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.ahead = None;
        let mut plan = self.plan();
        // Room for the whole range: it is asked for in one request.
        plan.buffer = plan.buffer.max(buf.len());
        let ranged = stream::Stream::start(plan, offset, Some(end));
        let started = self.started.unwrap_or_else(Instant::now);
        let mut done = 0usize;
        let r = loop {
            if done == buf.len() {
                break Ok(());
            }
            let (url, opts, counters) = (&self.url, &self.opts, &self.counters);
            match ranged.read(offset + done as u64, &mut buf[done..], &mut || {
                limits(url, opts, started, counters)
            }) {
                Ok(0) => {
                    break Err(Error::Size {
                        url: self.url.clone(),
                        expected: end,
                        found: offset + done as u64,
                    })
                }
                Ok(n) => done += n,
                Err(e) => break Err(e),
            }
        };
        let (len, validator) = ranged.known();
        if len.is_some() {
            self.len = len;
        }
        if self.validator.is_none() {
            self.validator = validator;
        }
        r
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
            size: self.expected,
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

    /// Read at the position from the read-ahead.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.start_clock()?;
        let start = self.pos;
        let n = self.read_ahead(start, buf)?;
        self.check_len(start, n)?;
        self.pos += n as u64;
        self.report();
        Ok(n)
    }

    /// `n` bytes were read at `start`: within the expected length, and none missing at
    /// the end of the body.
    fn check_len(&mut self, start: u64, n: usize) -> Result<(), Error> {
        let Some(size) = self.expected else {
            return Ok(());
        };
        let end = start + n as u64;
        if end > size || (n == 0 && start < size) {
            // Endless data, or a body short of the size, however the server framed it.
            self.ahead = None;
            return Err(Error::Size {
                url: self.url.clone(),
                expected: size,
                found: end,
            });
        }
        Ok(())
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

/// An [`HttpReader`] as a [`keel_io::ReadAt`]: every read is one bounded range request
/// ([`HttpReader::read_exact_at`]), so a consumer that reads pieces of a file by offset (a
/// block store's installer) fetches exactly those pieces. Reads are served one at a time.
pub struct HttpRanges<'a> {
    reader: std::sync::Mutex<HttpReader<'a>>,
    size: Option<u64>,
}

impl std::fmt::Debug for HttpRanges<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRanges")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl<'a> HttpRanges<'a> {
    /// Ranges of `reader`'s URL; give the reader the size the release index names
    /// ([`HttpReader::expect_len`]): it is then [`keel_io::ReadAt::size`], and a range past
    /// it is refused before it is asked for.
    pub fn new(reader: HttpReader<'a>) -> Self {
        let size = reader.expected;
        HttpRanges {
            reader: std::sync::Mutex::new(reader),
            size,
        }
    }

    /// What the ranges cost so far.
    pub fn stats(&self) -> Stats {
        self.meter().stats()
    }

    /// A handle on the counters.
    pub fn meter(&self) -> Meter {
        self.reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .meter()
    }
}

impl keel_io::ReadAt for HttpRanges<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .read_exact_at(buf, offset)
            .map_err(io::Error::from)
    }

    fn size(&self) -> io::Result<u64> {
        let known = self.size.or_else(|| {
            self.reader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .len()
        });
        known.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the file's size is not known before a response (give the reader expect_len)",
            )
        })
    }
}

/// The counters of one [`HttpReader`], read while another owns the reader.
#[derive(Clone, Debug)]
pub struct Meter(std::sync::Arc<stream::Counters>);

impl Meter {
    /// What the download cost so far.
    pub fn stats(&self) -> Stats {
        use std::sync::atomic::Ordering::Relaxed;
        Stats {
            requests: self.0.requests.load(Relaxed),
            bytes: self.0.bytes.load(Relaxed),
            retries: self.0.retries.load(Relaxed),
        }
    }
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
    /// Stop the read-ahead's thread.
    fn drop(&mut self) {
        self.ahead = None;
    }
}

impl Seek for HttpReader<'_> {
    /// Moving keeps the read-ahead when the target is among the bytes it holds; else the
    /// next read asks for the range from there.
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.and_then(|l| l.checked_add_signed(d)),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek outside the payload"))?;
        if !self.ahead.as_ref().is_some_and(|s| s.covers(target)) {
            // Stops the read-ahead's thread now, not at the next read.
            self.ahead = None;
        }
        self.pos = target;
        Ok(self.pos)
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
