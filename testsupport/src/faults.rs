//! A TCP proxy in front of a server that cuts connections: each response is cut after a
//! number of bytes drawn from a seeded generator, so a download meets dropped connections
//! at random offsets, as a flaky network gives them.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A running proxy (its thread ends with the test process).
#[derive(Debug)]
pub struct CuttingProxy {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Connections cut so far.
    pub cuts: Arc<AtomicU64>,
    /// Bytes written towards the clients (responses with their headers): what the
    /// network carried, whether or not a client got to read it.
    pub sent: Arc<AtomicU64>,
}

/// Forward 127.0.0.1:(new port) to `upstream_port`; each connection's response is cut
/// after `1..=max_bytes` bytes (drawn from `seed`), or passes whole when the draw
/// falls past its end.
pub fn cutting_proxy(upstream_port: u16, seed: u64, max_bytes: u64) -> CuttingProxy {
    proxy(upstream_port, seed, max_bytes, false)
}

/// As [`cutting_proxy`], but at the drawn offset the connection stalls (stays open,
/// sends nothing more) instead of closing: what a client's read timeout is for.
pub fn stalling_proxy(upstream_port: u16, seed: u64, max_bytes: u64) -> CuttingProxy {
    proxy(upstream_port, seed, max_bytes, true)
}

/// As [`cutting_proxy`], but the connection under way is reset (RST, not FIN) each
/// time the responses together have carried a number of bytes drawn from
/// `min_bytes..=max_bytes` since the last reset: the client's kernel then drops what
/// it had received and the client had not read yet, as a reset on a real network
/// does. Each request is forwarded with `Connection: close`.
pub fn resetting_proxy(
    upstream_port: u16,
    seed: u64,
    min_bytes: u64,
    max_bytes: u64,
) -> CuttingProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cuts = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let (counted, carried) = (cuts.clone(), sent.clone());
    let budget = Arc::new(std::sync::Mutex::new(Budget {
        left: 0,
        x: seed | 1,
        min: min_bytes,
        max: max_bytes,
    }));
    budget.lock().unwrap().draw();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                continue;
            };
            let (counted, carried, budget) = (counted.clone(), carried.clone(), budget.clone());
            std::thread::spawn(move || reset_after(client, server, &budget, &counted, &carried));
        }
    });
    CuttingProxy {
        base: format!("http://127.0.0.1:{port}"),
        cuts,
        sent,
    }
}

/// Bytes left before the next reset.
struct Budget {
    left: u64,
    x: u64,
    min: u64,
    max: u64,
}

impl Budget {
    fn draw(&mut self) {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        self.left = self.min + self.x % (self.max.saturating_sub(self.min) + 1);
    }
}

/// The request is only peeked at, never read: closing a socket with unread bytes
/// is what makes the kernel send a reset (std has no SO_LINGER).
fn reset_after(
    client: TcpStream,
    mut server: TcpStream,
    budget: &std::sync::Mutex<Budget>,
    cuts: &AtomicU64,
    sent_total: &AtomicU64,
) {
    let mut client = client;
    let mut head = vec![0u8; 64 << 10];
    let _ = client.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let n = loop {
        let Ok(n) = client.peek(&mut head) else {
            return;
        };
        if n == 0 {
            return;
        }
        if head[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == head.len() {
            break n;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    let text = String::from_utf8_lossy(&head[..n]).into_owned();
    let Some((request, _)) = text.split_once("\r\n\r\n") else {
        return;
    };
    let request = format!("{request}\r\nConnection: close\r\n\r\n");
    if server.write_all(request.as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let room = {
            let b = budget.lock().unwrap();
            b.left.min(n as u64) as usize
        };
        if client.write_all(&buf[..room]).is_err() {
            return;
        }
        sent_total.fetch_add(room as u64, Ordering::Relaxed);
        let mut b = budget.lock().unwrap();
        b.left = b.left.saturating_sub(room as u64);
        if b.left == 0 {
            b.draw();
            cuts.fetch_add(1, Ordering::Relaxed);
            // Dropped with the request unread: a reset.
            return;
        }
    }
    // The whole response went through: read the request so the close is a FIN.
    let _ = client.read(&mut head[..n]);
    let _ = client.shutdown(Shutdown::Both);
}

fn proxy(upstream_port: u16, seed: u64, max_bytes: u64, stall: bool) -> CuttingProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cuts = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let (counted, carried) = (cuts.clone(), sent.clone());
    std::thread::spawn(move || {
        let mut x = seed | 1;
        for client in listener.incoming().flatten() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let limit = 1 + x % max_bytes.max(1);
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                continue;
            };
            let (counted, carried) = (counted.clone(), carried.clone());
            std::thread::spawn(move || relay(client, server, limit, &counted, &carried, stall));
        }
    });
    CuttingProxy {
        base: format!("http://127.0.0.1:{port}"),
        cuts,
        sent,
    }
}

fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    limit: u64,
    cuts: &AtomicU64,
    sent_total: &AtomicU64,
    stall: bool,
) {
    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // Requests go through whole.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut s2);
        let _ = s2.shutdown(Shutdown::Write);
    });
    let mut sent = 0u64;
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let room = (limit - sent).min(n as u64) as usize;
        if client.write_all(&buf[..room]).is_err() {
            break;
        }
        sent += room as u64;
        sent_total.fetch_add(room as u64, Ordering::Relaxed);
        if sent >= limit {
            cuts.fetch_add(1, Ordering::Relaxed);
            if stall {
                // Hold the connection open, silent, until the client gives up on it.
                let mut probe = [0u8; 1];
                let _ = client.set_read_timeout(Some(std::time::Duration::from_secs(60)));
                let _ = client.read(&mut probe);
            }
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// A proxy that passes everything, except that the first response to a request whose
/// line contains `pattern` (say, a bundle's name) is cut `after` bytes into it: one
/// dropped connection in the middle of one download, for a client to resume.
pub fn cut_first(upstream_port: u16, pattern: &str, after: u64) -> CuttingProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cuts = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let (counted, carried) = (cuts.clone(), sent.clone());
    let pattern = pattern.as_bytes().to_vec();
    let taken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                continue;
            };
            let (counted, carried) = (counted.clone(), carried.clone());
            let (pattern, taken) = (pattern.clone(), taken.clone());
            std::thread::spawn(move || {
                cut_when_asked(client, server, &pattern, after, taken, &counted, &carried);
            });
        }
    });
    CuttingProxy {
        base: format!("http://127.0.0.1:{port}"),
        cuts,
        sent,
    }
}

fn cut_when_asked(
    mut client: TcpStream,
    mut server: TcpStream,
    pattern: &[u8],
    after: u64,
    taken: Arc<std::sync::atomic::AtomicBool>,
    cuts: &AtomicU64,
    sent_total: &AtomicU64,
) {
    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // The response's bytes so far, and where this connection is to be cut.
    let sent = Arc::new(AtomicU64::new(0));
    let limit = Arc::new(AtomicU64::new(u64::MAX));
    let (sent2, limit2) = (sent.clone(), limit.clone());
    let pattern = pattern.to_vec();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        loop {
            let n = match c2.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let asked = buf[..n].windows(pattern.len()).any(|w| w == pattern);
            if asked && !taken.swap(true, Ordering::SeqCst) {
                limit2.store(sent2.load(Ordering::SeqCst) + after, Ordering::SeqCst);
            }
            if s2.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s2.shutdown(Shutdown::Write);
    });
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let done = sent.load(Ordering::SeqCst);
        let room = limit
            .load(Ordering::SeqCst)
            .saturating_sub(done)
            .min(n as u64) as usize;
        if client.write_all(&buf[..room]).is_err() {
            break;
        }
        sent.fetch_add(room as u64, Ordering::SeqCst);
        sent_total.fetch_add(room as u64, Ordering::Relaxed);
        if room < n {
            cuts.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}
