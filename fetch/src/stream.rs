//! The read-ahead: a thread per stream reads the socket as fast as the network delivers
//! into a bounded buffer, and asks the server for no more than that buffer has room
//! for. Bytes that arrived are then in the buffer, not in the kernel's queues (which a
//! connection reset empties), however slow the consumer (an applier writing to disk),
//! and the reconnect asks only for the bytes after them.
//!
//! The thread owns the connection, the retries, the rate cap (paced on the network, not
//! on delivery, so a metered link sees the cap) and the slow-retrieval floor. It stops
//! when its [`Stream`] is dropped: at once when it waits (for room, for the cap, before a
//! retry), else as soon as the read under way returns (bytes, or the read timeout).

use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::Error;

/// The most bytes read ahead of the consumer, by default.
pub(crate) const BUFFER: usize = 2 << 20;
/// The read-ahead of a new stream: it grows by what the consumer takes, up to the
/// buffer's size, so a stream left after a few reads (a header read before a seek) has
/// cost little more than those.
const FIRST: usize = 256 << 10;
/// The most bytes one socket read asks for.
pub(crate) const READ: usize = 64 << 10;
/// How often a waiting consumer looks at cancellation and its deadline.
const POLL: Duration = Duration::from_millis(100);

/// What a reader's streams fetched, together.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) retries: AtomicU64,
}

/// The response's validator: the header's name and value.
pub(crate) type Validator = Option<(&'static str, String)>;

/// What a stream needs to fetch, owned by its thread.
#[derive(Clone)]
pub(crate) struct Plan {
    pub(crate) agent: ureq::Agent,
    pub(crate) url: String,
    pub(crate) max_attempts: u32,
    pub(crate) initial_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) max_rate: Option<u64>,
    pub(crate) min_rate: Option<u64>,
    pub(crate) rate_window: Duration,
    /// The most bytes read ahead.
    pub(crate) buffer: usize,
    /// The size the release index says, checked against the server's.
    pub(crate) size: Option<u64>,
    /// What the server said so far.
    pub(crate) len: Option<u64>,
    pub(crate) validator: Validator,
    pub(crate) counters: Arc<Counters>,
    pub(crate) seed: u64,
}

struct Inner {
    /// Bytes `start .. start + buf.len()`.
    buf: Chunks,
    start: u64,
    /// The stream is over: `Ok` at the end of its range, else why it failed.
    end: Option<Result<(), Error>>,
    stop: bool,
    /// Bytes the consumer took.
    taken: u64,
    /// The most bytes buffered.
    cap: usize,
    len: Option<u64>,
    validator: Validator,
}

/// The buffered bytes, as the socket reads brought them: nothing is copied on the way
/// in, once on the way out.
#[derive(Default)]
struct Chunks {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the first chunk already taken.
    skip: usize,
    len: usize,
}

impl Chunks {
    fn len(&self) -> usize {
        self.len
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn push(&mut self, c: Vec<u8>) {
        self.len += c.len();
        self.chunks.push_back(c);
    }
    /// Drop the first `n` bytes (at most all).
    fn drain(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(first) = self.chunks.front() else {
                break;
            };
            let left = first.len() - self.skip;
            if n < left {
                self.skip += n;
                return;
            }
            n -= left;
            self.skip = 0;
            self.chunks.pop_front();
        }
    }
    /// Copy the first bytes into `out`; how many.
    fn copy_to(&self, out: &mut [u8]) -> usize {
        let mut done = 0;
        let mut skip = self.skip;
        for c in &self.chunks {
            if done == out.len() {
                break;
            }
            let have = c.get(skip..).unwrap_or_default();
            skip = 0;
            let n = have.len().min(out.len() - done);
            out[done..done + n].copy_from_slice(&have[..n]);
            done += n;
        }
        done
    }
}

impl Inner {
    fn window(&self) -> usize {
        usize::try_from(self.taken)
            .unwrap_or(usize::MAX)
            .saturating_add(FIRST)
            .min(self.cap)
    }
}

struct Shared {
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing here panics while holding the lock; were it poisoned, its data is
        // still consistent (each update is one assignment).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'g>(&self, g: MutexGuard<'g, Inner>, t: Duration) -> MutexGuard<'g, Inner> {
        match self.cv.wait_timeout(g, t) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        }
    }

    /// Sleep for `t` unless told to stop; whether to go on.
    fn sleep(&self, t: Duration) -> bool {
        // A wait too long to represent is a day's: the caller looks again after it.
        let now = Instant::now();
        let until = now
            .checked_add(t)
            .or_else(|| now.checked_add(Duration::from_secs(86_400)))
            .unwrap_or(now);
        let mut g = self.lock();
        loop {
            if g.stop {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            g = self.wait(g, until - now);
        }
    }
}

/// One response stream read ahead from `from` (up to `to`, exclusive, when given).
pub(crate) struct Stream {
    shared: Arc<Shared>,
}

impl Stream {
    pub(crate) fn start(plan: Plan, from: u64, to: Option<u64>) -> Stream {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                buf: Chunks::default(),
                start: from,
                end: None,
                stop: false,
                // A bounded fetch (bytes to check again) is wanted whole at once.
                taken: if to.is_some() { u64::MAX } else { 0 },
                cap: plan.buffer,
                len: plan.len,
                validator: plan.validator.clone(),
            }),
            cv: Condvar::new(),
        });
        let theirs = shared.clone();
        let url = plan.url.clone();
        let spawned = std::thread::Builder::new()
            .name("keel-fetch".into())
            .spawn(move || {
                let mut w = Worker {
                    shared: theirs,
                    plan,
                    pos: from,
                    to,
                    clock: Clock::new(),
                };
                let r = w.run();
                let mut g = w.shared.lock();
                if g.end.is_none() {
                    g.end = Some(r);
                }
                w.shared.cv.notify_all();
            });
        if let Err(e) = spawned {
            shared.lock().end = Some(Err(Error::GaveUp {
                url,
                attempts: 0,
                last: format!("cannot start the read-ahead thread: {e}"),
            }));
        }
        Stream { shared }
    }

    /// Whether the next read at `pos` comes from this stream: `pos` is among the bytes
    /// buffered or the next one.
    pub(crate) fn covers(&self, pos: u64) -> bool {
        let g = self.shared.lock();
        g.start <= pos && pos <= g.start + g.buf.len() as u64
    }

    /// The length and validator the server's responses gave.
    pub(crate) fn known(&self) -> (Option<u64>, Validator) {
        let g = self.shared.lock();
        (g.len, g.validator.clone())
    }

    /// Bytes at `pos` (which [`Stream::covers`]), waiting for them; `Ok(0)` at the end of
    /// the stream's range. `poll` is asked now and then while waiting whether to give up.
    pub(crate) fn read(
        &self,
        pos: u64,
        out: &mut [u8],
        poll: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<usize, Error> {
        let mut g = self.shared.lock();
        if pos < g.start || pos > g.start + g.buf.len() as u64 {
            return Err(Error::BadRange {
                url: String::new(),
                reason: format!("read at {pos} outside the read-ahead from {}", g.start),
            });
        }
        let skip = usize::try_from(pos - g.start).unwrap_or(usize::MAX);
        if skip > 0 {
            g.buf.drain(skip);
            g.start = pos;
            self.shared.cv.notify_all();
        }
        loop {
            if !g.buf.is_empty() {
                let n = g.buf.copy_to(out);
                g.buf.drain(n);
                g.start += n as u64;
                g.taken = g.taken.saturating_add(n as u64);
                self.shared.cv.notify_all();
                return Ok(n);
            }
            match &mut g.end {
                Some(Ok(())) => return Ok(0),
                Some(Err(_)) => {
                    return match g.end.take() {
                        Some(Err(e)) => Err(e),
                        _ => Ok(0),
                    }
                }
                None => {}
            }
            drop(g);
            poll()?;
            g = self.shared.lock();
            if g.buf.is_empty() && g.end.is_none() {
                g = self.shared.wait(g, POLL);
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut g = self.shared.lock();
        g.stop = true;
        g.buf = Chunks::default();
        self.shared.cv.notify_all();
    }
}

/// The slow-retrieval clock: time spent wanting bytes (connecting, reading, backing off;
/// not waiting for the consumer to make room, nor for the cap), and the bytes received.
struct Clock {
    started: Instant,
    idle: Duration,
    window_at: Duration,
    window_bytes: u64,
    received: u64,
}

impl Clock {
    fn new() -> Self {
        Clock {
            started: Instant::now(),
            idle: Duration::ZERO,
            window_at: Duration::ZERO,
            window_bytes: 0,
            received: 0,
        }
    }

    fn active(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.idle)
    }
}

enum Attempt {
    Retry(String),
    Fatal(Error),
}

struct Worker {
    shared: Arc<Shared>,
    plan: Plan,
    pos: u64,
    to: Option<u64>,
    clock: Clock,
}

impl Worker {
    /// Where the stream ends, once known: its bound, else the file's length.
    fn end(&self) -> Option<u64> {
        match (self.to, self.plan.len) {
            (Some(t), Some(l)) => Some(t.min(l)),
            (t, l) => t.or(l),
        }
    }

    fn run(&mut self) -> Result<(), Error> {
        let mut failures = 0u32;
        let mut last = String::new();
        // The response being read, and the end it was asked to stop at (`None`: the
        // stream's end).
        let mut body: Option<(ureq::BodyReader<'static>, Option<u64>)> = None;
        let mut pace: Option<(Instant, u64)> = None;
        loop {
            if self.shared.lock().stop {
                return Ok(());
            }
            if self.end().is_some_and(|e| self.pos >= e) {
                return Ok(());
            }
            if failures >= self.plan.max_attempts {
                return Err(Error::GaveUp {
                    url: self.plan.url.clone(),
                    attempts: failures,
                    last,
                });
            }
            if body.is_none() {
                let Some(ask) = self.ask() else {
                    return Ok(());
                };
                match self.connect(ask) {
                    Ok(Some((b, ask))) => body = Some((b, ask)),
                    Ok(None) => return Ok(()),
                    Err(Attempt::Fatal(e)) => return Err(e),
                    Err(Attempt::Retry(why)) => {
                        failures += 1;
                        last = why;
                        self.plan.counters.retries.fetch_add(1, Ordering::Relaxed);
                        if !self.back_off(failures) {
                            return Ok(());
                        }
                    }
                }
                continue;
            }
            let Some((reader, ask)) = body.as_mut() else {
                continue;
            };
            let ask = *ask;
            let Some(room) = self.room() else {
                return Ok(());
            };
            let mut want = room.min(READ);
            if let Some(e) = [self.end(), ask].into_iter().flatten().min() {
                want = want.min(usize::try_from(e.saturating_sub(self.pos)).unwrap_or(usize::MAX));
            }
            if let Some(rate) = self.plan.max_rate {
                // A tenth of a second's worth at a time: the cap holds over any second.
                want = want.min(usize::try_from((rate / 10).max(1)).unwrap_or(usize::MAX));
            }
            let started = Instant::now();
            let mut tmp = vec![0u8; want.max(1)];
            let r = reader.read(&mut tmp);
            match r {
                Ok(n) if n > 0 => {
                    failures = 0;
                    self.plan
                        .counters
                        .bytes
                        .fetch_add(n as u64, Ordering::Relaxed);
                    self.clock.received += n as u64;
                    {
                        let mut g = self.shared.lock();
                        if g.stop {
                            return Ok(());
                        }
                        tmp.truncate(n);
                        if n < READ / 4 {
                            // What is held stays near what is buffered.
                            tmp.shrink_to_fit();
                        }
                        g.buf.push(tmp);
                        self.shared.cv.notify_all();
                    }
                    self.pos += n as u64;
                    // Looked at when bytes come: a server that sends nothing at all runs
                    // into the read timeout and the attempts instead.
                    self.check_rate()?;
                    if let Some(rate) = self.plan.max_rate {
                        if !self.pace(&mut pace, rate, n as u64) {
                            return Ok(());
                        }
                    }
                    let at_end = self.end().is_some_and(|e| self.pos >= e);
                    if ask.is_some_and(|a| self.pos >= a) && !at_end {
                        // The range asked for is here: one more read lets the client see
                        // the body's end and keep the connection for the next request.
                        let _ = reader.read(&mut [0u8; 1]);
                        body = None;
                    }
                    continue;
                }
                // The body ended: the end of the payload, or a connection cut short.
                Ok(_) if self.end().is_none() && ask.is_none() => return Ok(()),
                Ok(_) => last = format!("connection closed at byte {}", self.pos),
                Err(e) => last = format!("{e} after {:?} at byte {}", started.elapsed(), self.pos),
            }
            body = None;
            failures += 1;
            self.plan.counters.retries.fetch_add(1, Ordering::Relaxed);
            if !self.back_off(failures) {
                return Ok(());
            }
        }
    }

    /// Where the next request stops. Bytes the server sent that this thread has not
    /// read yet wait in the kernel's queues, and a reset throws them away; so a request
    /// asks for no more than the buffer has room for, and this thread reads them as they
    /// come. Requests ask for a quarter of the buffer: where the network outruns this
    /// thread, what a reset loses is about half a request; the next request is made
    /// while the consumer still has three quarters of a buffer to read. `None`: told to
    /// stop.
    fn ask(&mut self) -> Option<Option<u64>> {
        let room = self.wait_for_room(|window| window / 4)?;
        // A bounded stream whose rest fits in the room is asked for whole: one request
        // per range a consumer picks, not one per quarter buffer.
        if let Some(to) = self.to {
            if to.saturating_sub(self.pos) <= room as u64 {
                return Some(Some(to));
            }
        }
        Some(Some(self.pos + room.min(self.plan.buffer / 4) as u64))
    }

    /// Wait for room in the buffer (time that does not count against the server's
    /// rate); `None`: told to stop.
    fn room(&mut self) -> Option<usize> {
        self.wait_for_room(|_| 1)
    }

    /// Wait until the buffer has at least `enough(window)` bytes of room (time that does
    /// not count against the server's rate), and say how much; `None`: told to stop.
    fn wait_for_room(&mut self, enough: impl Fn(usize) -> usize) -> Option<usize> {
        let t = Instant::now();
        let mut g = self.shared.lock();
        let room = loop {
            if g.stop {
                return None;
            }
            let window = g.window();
            let room = window.saturating_sub(g.buf.len());
            if room > 0 && room >= enough(window) {
                break room;
            }
            g = self.shared.wait(g, POLL);
        };
        drop(g);
        self.clock.idle += t.elapsed();
        Some(room)
    }

    /// Slow retrieval (TUF): over each window of time spent wanting bytes, at least the
    /// floor's average. A stall shorter than the window is absorbed by the bytes around
    /// it; a sustained drip is not.
    fn check_rate(&mut self) -> Result<(), Error> {
        let Some(min) = self.plan.min_rate else {
            return Ok(());
        };
        let active = self.clock.active();
        let span = active.saturating_sub(self.clock.window_at);
        if span < self.plan.rate_window {
            return Ok(());
        }
        let got = self.clock.received - self.clock.window_bytes;
        if (got as f64) < min as f64 * span.as_secs_f64() {
            return Err(Error::TooSlow {
                url: self.plan.url.clone(),
                received: got,
                window: span,
                min_bytes_per_sec: min,
            });
        }
        self.clock.window_at = active;
        self.clock.window_bytes = self.clock.received;
        Ok(())
    }

    /// Wait until `n` more bytes are within the cap; whether to go on.
    fn pace(&mut self, pace: &mut Option<(Instant, u64)>, rate: u64, n: u64) -> bool {
        let now = Instant::now();
        let (since, sent) = match *pace {
            // After a pause (the consumer was busy) the allowance does not pile up into a
            // burst beyond a second's worth.
            Some((since, sent))
                if now.duration_since(since).as_secs_f64() <= sent as f64 / rate as f64 + 1.0 =>
            {
                (since, sent + n)
            }
            _ => (now, n),
        };
        *pace = Some((since, sent));
        let wait = Duration::try_from_secs_f64(sent as f64 / rate as f64)
            .ok()
            .and_then(|d| since.checked_add(d))
            .map_or(Duration::ZERO, |due| due.saturating_duration_since(now));
        let go_on = self.shared.sleep(wait);
        self.clock.idle += now.elapsed();
        go_on
    }

    /// Wait before the next attempt: none before the first (a connection that was
    /// delivering and dropped is made again at once), then exponential backoff with
    /// jitter. Whether to go on.
    fn back_off(&mut self, attempt: u32) -> bool {
        if attempt <= 1 {
            return true;
        }
        let base = self
            .plan
            .initial_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.plan.max_delay);
        // xorshift: a jitter of 50-100% of the delay spreads a fleet's retries.
        let mut x = self.plan.seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.plan.seed = x;
        let frac = 0.5 + (x % 1000) as f64 / 2000.0;
        self.shared.sleep(base.mul_f64(frac))
    }

    /// One request from the position. `Ok(None)`: the position is the end.
    #[allow(clippy::type_complexity)]
    fn connect(
        &mut self,
        ask: Option<u64>,
    ) -> Result<Option<(ureq::BodyReader<'static>, Option<u64>)>, Attempt> {
        self.plan.counters.requests.fetch_add(1, Ordering::Relaxed);
        let url = &self.plan.url;
        let mut req = self.plan.agent.get(url);
        let to = [self.to, ask].into_iter().flatten().min();
        if self.pos > 0 || self.plan.validator.is_some() || to.is_some() {
            let range = match to {
                Some(to) => format!("bytes={}-{}", self.pos, to.saturating_sub(1)),
                None => format!("bytes={}-", self.pos),
            };
            req = req.header("Range", &range);
            if let Some((_, v)) = &self.plan.validator {
                req = req.header("If-Range", v);
            }
        }
        let resp = match req.call() {
            Ok(r) => r,
            // A certificate the client does not trust will not become trusted by retrying.
            Err(e) if untrusted_certificate(&e) => {
                return Err(Attempt::Fatal(Error::Tls {
                    url: url.clone(),
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
        let fatal = |e: Error| Err(Attempt::Fatal(e));
        let mut open = false;
        let mut skip = 0u64;
        match status {
            416 if self.plan.len == Some(self.pos) => return Ok(None),
            429 | 500.. => return Err(Attempt::Retry(format!("HTTP {status}"))),
            200..=299 => {}
            _ => {
                return fatal(Error::Status {
                    url: url.clone(),
                    status,
                })
            }
        }
        let len = match status {
            206 => {
                let Some((start, total)) = content_range(header("Content-Range")) else {
                    return fatal(Error::BadRange {
                        url: url.clone(),
                        reason: format!("206 with Content-Range {:?}", header("Content-Range")),
                    });
                };
                if start != self.pos || self.plan.len.is_some_and(|l| l != total) {
                    return fatal(Error::BadRange {
                        url: url.clone(),
                        reason: format!(
                            "asked from byte {}, got bytes from {start} of {total}",
                            self.pos
                        ),
                    });
                }
                if let (Some((_, old)), Some((_, new))) = (&self.plan.validator, &validator) {
                    if old != new {
                        return fatal(Error::Changed { url: url.clone() });
                    }
                }
                Some(total)
            }
            200 if self.pos == 0 && self.plan.validator.is_none() => {
                // The whole file to a range request (a server without ranges): read on
                // past the range asked for, this response is the only way to the rest.
                open = true;
                header("Content-Length").and_then(|l| l.parse().ok())
            }
            // The whole file again, the same by its validator: a server (or a proxy) that
            // ignores Range. The bytes before the position are read past below; what
            // they are is the consumer's to check, as every byte is.
            200 if self.plan.validator.is_some() && self.plan.validator == validator => {
                open = true;
                skip = self.pos;
                header("Content-Length").and_then(|l| l.parse().ok())
            }
            // A full answer to a range request with If-Range: the validator no longer
            // matches, the file was replaced.
            200 if self.plan.validator.is_some() => {
                return fatal(Error::Changed { url: url.clone() })
            }
            status => {
                return fatal(Error::BadRange {
                    url: url.clone(),
                    reason: format!("HTTP {status} to a range request (ranges not supported?)"),
                })
            }
        };
        if let (Some(size), Some(len)) = (self.plan.size, len) {
            if size != len {
                return fatal(Error::Size {
                    url: url.clone(),
                    expected: size,
                    found: len,
                });
            }
        }
        if len.is_some() {
            self.plan.len = len;
        }
        if self.plan.validator.is_none() {
            self.plan.validator = validator;
        }
        {
            let mut g = self.shared.lock();
            g.len = self.plan.len;
            g.validator = self.plan.validator.clone();
        }
        let ask = if open { self.to } else { ask };
        let mut body = resp.into_body().into_reader();
        if skip > 0 {
            // Each read within the read timeout, as any read of the body.
            let got = std::io::copy(&mut (&mut body).take(skip), &mut std::io::sink())
                .map_err(|e| Attempt::Retry(e.to_string()))?;
            self.plan.counters.bytes.fetch_add(got, Ordering::Relaxed);
            if got < skip {
                return Err(Attempt::Retry(format!(
                    "the body ended at byte {got}, before the position {skip}"
                )));
            }
        }
        Ok(Some((body, ask)))
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

/// `bytes START-END/TOTAL` → (START, TOTAL).
pub(crate) fn content_range(h: Option<&str>) -> Option<(u64, u64)> {
    let rest = h?.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, total): (u64, u64, u64) =
        (start.parse().ok()?, end.parse().ok()?, total.parse().ok()?);
    (start <= end && end < total).then_some((start, total))
}
