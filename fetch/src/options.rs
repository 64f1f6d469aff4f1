//! How to fetch, and what a fetch cost.

use std::time::Duration;

use keel_io::Progress;

use crate::stream;
#[allow(unused_imports)] // named in the docs
use crate::Error;

/// How to fetch.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct FetchOptions<'a> {
    /// Time to connect (default 10 s).
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes before the connection counts as stalled and is
    /// made again (default 30 s); also the most a response's headers may take in all (a
    /// server that drips them a byte at a time is a stall).
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
    /// The `User-Agent` header (default `keel-fetch/VERSION`): an agent names itself and
    /// the node, as update_engine and Zincati identify their clients to the server, so
    /// the server's log tells one node's downloads from another's.
    pub user_agent: Option<&'a str>,
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
            user_agent: None,
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
    /// Set [`FetchOptions::user_agent`].
    pub fn user_agent(mut self, agent: &'a str) -> Self {
        self.user_agent = Some(agent);
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
            .field("user_agent", &self.user_agent)
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
