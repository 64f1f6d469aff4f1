//! Test support for the Keel crates (a dev-dependency, never published): finding the real
//! tools (a missing one is a visible skip, or a failure with `KEEL_REQUIRE_INTEROP=1`),
//! running them, and seeded test data.

// Test support: a failed unwrap here is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The path of a real tool, or `None` after printing a skip notice. With
/// `KEEL_REQUIRE_INTEROP=1` a missing tool fails the test instead.
pub fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert_ne!(
            std::env::var("KEEL_REQUIRE_INTEROP").as_deref(),
            Ok("1"),
            "{name} is missing and KEEL_REQUIRE_INTEROP=1: apt-get install {package}"
        );
        skipped(&format!(
            "SKIPPED: {name} not installed (apt-get install {package}); interop check not run\n"
        ));
    }
    found
}

/// A file a package installs outside PATH (firmware, boot loader binaries), or `None`
/// after a skip notice; with `KEEL_REQUIRE_INTEROP=1` a missing file fails the test.
pub fn file(path: &str, package: &str) -> Option<PathBuf> {
    let p = PathBuf::from(path);
    if p.is_file() {
        return Some(p);
    }
    assert_ne!(
        std::env::var("KEEL_REQUIRE_INTEROP").as_deref(),
        Ok("1"),
        "{path} is missing and KEEL_REQUIRE_INTEROP=1: apt-get install {package}"
    );
    skipped(&format!(
        "SKIPPED: {path} not installed (apt-get install {package}); interop check not run\n"
    ));
    None
}

/// Say that a check was skipped where a person running `cargo test` sees it: the test
/// harness captures what a passing test prints, so the notice goes to the terminal's
/// standard error directly (and to the captured output when that cannot be opened).
fn skipped(notice: &str) {
    use std::io::Write;
    let direct = std::fs::OpenOptions::new()
        .append(true)
        .open("/dev/stderr")
        .and_then(|mut tty| tty.write_all(notice.as_bytes()));
    if direct.is_err() {
        eprint!("{notice}");
    }
}

/// Run a command, returning its output; panics only if it cannot be started.
pub fn run(cmd: &Path, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cmd.display()))
}

/// Run a command that must succeed; returns its standard output.
pub fn run_ok(cmd: &Path, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{} {:?} failed: {}\n{}",
        cmd.display(),
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Its standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift64*), so test data is generated, not stored.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `mksquashfs ROOT IMG -comp COMP EXTRA...`, quiet and reproducible (every time 0, every
/// file root's): the image's bytes; `None` (after a skip notice) without mksquashfs.
pub fn mksquashfs(root: &Path, img: &Path, comp: &str, extra: &[&str]) -> Option<Vec<u8>> {
    let mk = tool("mksquashfs", "squashfs-tools")?;
    let mut args = vec![
        root.to_str().unwrap(),
        img.to_str().unwrap(),
        "-noappend",
        "-quiet",
        "-no-progress",
        "-all-root",
        "-mkfs-time",
        "0",
        "-all-time",
        "0",
        "-comp",
        comp,
    ];
    args.extend_from_slice(extra);
    run_ok(&mk, &args);
    Some(std::fs::read(img).unwrap())
}

/// A seeded pseudo-random choice (xorshift64): each call gives a number below its argument
/// (which must not be 0), for tests that build random trees from a seed.
pub fn seeded_choice(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut rng = seed | 1;
    move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    }
}

/// Start `cmd` with `input` as its whole standard input (written, then closed).
pub fn spawn_with_input(cmd: &mut Command, input: &[u8]) -> Child {
    let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    child
}

/// Loop devices: real block devices over image files, for tests run as root.
pub mod loopdev {
    use super::{run, run_ok, tool};
    use std::path::{Path, PathBuf};

    /// An attached loop device, detached when dropped.
    #[derive(Debug)]
    pub struct Loop {
        losetup: PathBuf,
        /// The device, `/dev/loopN`.
        pub dev: String,
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = run(&self.losetup, &["-d", &self.dev]);
        }
    }

    /// Attach `img` with `sector_size`-byte logical sectors and partition scanning; `None`
    /// (a visible skip) when not root.
    pub fn attach(img: &Path, sector_size: u32) -> Option<Loop> {
        let running_as_root = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        if !running_as_root {
            eprintln!("SKIPPED: loop-device test needs root");
            return None;
        }
        let losetup = tool("losetup", "mount")?;
        let ss = sector_size.to_string();
        let img = img.to_str()?;
        let dev = run_ok(&losetup, &["-f", "--show", "-P", "--sector-size", &ss, img])
            .trim()
            .to_string();
        Some(Loop { losetup, dev })
    }
}

/// A test certificate authority made with openssl: a server certificate for 127.0.0.1
/// and a client certificate, both signed by it.
pub mod pki {
    use super::tool;
    use std::path::{Path, PathBuf};

    /// The files (PEM) made in the work directory.
    #[derive(Debug, Clone)]
    pub struct Pki {
        /// The CA's certificate.
        pub ca: PathBuf,
        /// The server's certificate (subjectAltName IP:127.0.0.1).
        pub server_cert: PathBuf,
        /// The server's key.
        pub server_key: PathBuf,
        /// A client certificate (for servers that ask for one).
        pub client_cert: PathBuf,
        /// Its key.
        pub client_key: PathBuf,
    }

    /// Make the CA and both certificates in `work`. `None` (a visible skip) without openssl.
    pub fn make(work: &Path) -> Option<Pki> {
        let openssl = tool("openssl", "openssl")?;
        std::fs::create_dir_all(work).unwrap();
        let w = |p: &str| work.join(p).display().to_string();
        let run = |args: &[&str]| {
            super::run_ok(&openssl, args);
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=keel test CA",
            "-keyout",
            &w("ca.key"),
            "-out",
            &w("ca.pem"),
        ]);
        for (name, cn, ext) in [
            (
                "srv",
                "127.0.0.1",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
            ),
            ("client", "keel-node", "extendedKeyUsage=clientAuth\n"),
        ] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &w(&format!("{name}.key")),
                "-out",
                &w(&format!("{name}.csr")),
            ]);
            std::fs::write(work.join(format!("{name}.ext")), ext).unwrap();
            run(&[
                "x509",
                "-req",
                "-in",
                &w(&format!("{name}.csr")),
                "-CA",
                &w("ca.pem"),
                "-CAkey",
                &w("ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &w(&format!("{name}.ext")),
                "-out",
                &w(&format!("{name}.pem")),
            ]);
        }
        Some(Pki {
            ca: work.join("ca.pem"),
            server_cert: work.join("srv.pem"),
            server_key: work.join("srv.key"),
            client_cert: work.join("client.pem"),
            client_key: work.join("client.key"),
        })
    }
}

/// A port on 127.0.0.1 free a moment ago, for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Start a server (its output discarded) and wait until it accepts connections on
/// `port`; a server that does not within 10 s fails the test, pointing at `log`.
pub fn spawn_server(cmd: &mut Command, port: u16, log: &Path) -> Child {
    use std::time::{Duration, Instant};
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{:?} did not start: see {}",
            cmd.get_program(),
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// A real nginx serving a directory on 127.0.0.1, started and stopped by the test.
pub mod nginx {
    use super::{free_port, spawn_server, tool};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command};

    /// A running nginx; stopped when dropped.
    #[derive(Debug)]
    pub struct Nginx {
        child: Child,
        /// `http://127.0.0.1:PORT`.
        pub base: String,
        /// The port.
        pub port: u16,
    }

    impl Drop for Nginx {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Serve `root` (static files, with ETags and range requests as nginx does), keeping
    /// nginx's own files in `work`. `None` (a visible skip) without nginx.
    pub fn serve(root: &Path, work: &Path) -> Option<Nginx> {
        serve_with(root, work, None)
    }

    /// As [`serve`], over HTTPS with a certificate for 127.0.0.1 signed by a test CA made
    /// with openssl; returns the server and the CA certificate (PEM) a client must trust.
    pub fn serve_tls(root: &Path, work: &Path) -> Option<(Nginx, Vec<u8>)> {
        let pki = super::pki::make(work)?;
        let server = serve_with(root, work, Some((pki.server_cert.clone(), pki.server_key)))?;
        Some((server, std::fs::read(&pki.ca).unwrap()))
    }

    fn serve_with(root: &Path, work: &Path, tls: Option<(PathBuf, PathBuf)>) -> Option<Nginx> {
        let nginx = tool("nginx", "nginx")?;
        let port = free_port();
        let w = |p: &str| -> PathBuf { work.join(p) };
        std::fs::create_dir_all(w("tmp")).unwrap();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {pid};\nerror_log {err} info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n\
               fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n\
               default_type application/octet-stream;\n\
               server {{ listen 127.0.0.1:{port}{ssl}; root {root}; {certs} }}\n}}\n",
            pid = w("nginx.pid").display(),
            err = w("error.log").display(),
            tmp = w("tmp").display(),
            root = root.display(),
            ssl = if tls.is_some() { " ssl" } else { "" },
            certs = tls.as_ref().map_or(String::new(), |(c, k)| format!(
                "ssl_certificate {}; ssl_certificate_key {};",
                c.display(),
                k.display()
            )),
        );
        std::fs::write(w("nginx.conf"), conf).unwrap();
        let child = spawn_server(
            Command::new(nginx)
                .arg("-c")
                .arg(w("nginx.conf"))
                .arg("-p")
                .arg(work),
            port,
            &w("error.log"),
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        Some(Nginx {
            child,
            base: format!("{scheme}://127.0.0.1:{port}"),
            port,
        })
    }
}

/// tinyproxy (Debian's package) on 127.0.0.1: the forward proxy a machine's
/// `http_proxy`/`https_proxy` names, tunnelling with CONNECT as clients ask.
pub mod tinyproxy {
    use super::{free_port, spawn_server, tool};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command};

    /// A running tinyproxy; stopped when dropped.
    #[derive(Debug)]
    pub struct Proxy {
        child: Child,
        /// `http://127.0.0.1:PORT`, what `http_proxy` is set to.
        pub url: String,
        log: PathBuf,
    }

    impl Proxy {
        /// The requests the proxy logged (`CONNECT 127.0.0.1:8080 HTTP/1.1`...).
        pub fn requests(&self) -> Vec<String> {
            std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_once("Request (file descriptor ").map(|(_, r)| r))
                .filter_map(|r| r.split_once("): ").map(|(_, req)| req.to_string()))
                .collect()
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Start tinyproxy with its files in `work`, allowing CONNECT to any port of any
    /// host from 127.0.0.1. `None` (a visible skip) without tinyproxy.
    pub fn start(work: &Path) -> Option<Proxy> {
        let bin = tool("tinyproxy", "tinyproxy")?;
        std::fs::create_dir_all(work).unwrap();
        let port = free_port();
        let log = work.join("tinyproxy.log");
        // No ConnectPort line: CONNECT is allowed to every port (Debian's default
        // configuration allows only 443 and 563).
        let conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{log}\"\nLogLevel Connect\n\
             PidFile \"{pid}\"\nMaxClients 32\nAllow 127.0.0.1\n",
            log = log.display(),
            pid = work.join("tinyproxy.pid").display(),
        );
        std::fs::write(work.join("tinyproxy.conf"), conf).unwrap();
        let child = spawn_server(
            Command::new(bin)
                .arg("-d")
                .arg("-c")
                .arg(work.join("tinyproxy.conf")),
            port,
            &log,
        );
        Some(Proxy {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        })
    }
}

/// A TCP proxy in front of a server that cuts connections: each response is cut after a
/// number of bytes drawn from a seeded generator, so a download meets dropped connections
/// at random offsets, as a flaky network gives them.
pub mod faults {
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
                std::thread::spawn(move || {
                    reset_after(client, server, &budget, &counted, &carried)
                });
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
}

/// A real etcd cluster on loopback ports, started and stopped by the test.
pub mod etcd {
    use super::{free_port, tool};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// One member: its process (while running), its URLs and data directory.
    #[derive(Debug)]
    pub struct Member {
        child: Option<Child>,
        /// The member's name (`m0`, `m1`...).
        pub name: String,
        /// `http://127.0.0.1:PORT` for clients.
        pub client_url: String,
        /// The URL of its peer port.
        pub peer_url: String,
        /// Its data directory.
        pub data_dir: PathBuf,
        log: PathBuf,
    }

    /// A running cluster; every member is killed when dropped.
    #[derive(Debug)]
    pub struct Cluster {
        /// The members.
        pub members: Vec<Member>,
        etcd: PathBuf,
        initial: String,
        /// With [`cluster_tls`]: the certificates clients use.
        pub tls: Option<super::pki::Pki>,
    }

    /// Start `n` members with their data under `work`; returns when every member answers
    /// its health check. `None` (a visible skip) without etcd.
    pub fn cluster(work: &Path, n: usize) -> Option<Cluster> {
        start_cluster(work, n, None)
    }

    /// As [`cluster`], with clients served over HTTPS by a certificate of a test CA and
    /// required to show a client certificate of that CA (etcd's `--client-cert-auth`, as
    /// airlock's deployments run it).
    pub fn cluster_tls(work: &Path, n: usize) -> Option<Cluster> {
        let pki = super::pki::make(&work.join("pki"))?;
        start_cluster(work, n, Some(pki))
    }

    fn start_cluster(work: &Path, n: usize, tls: Option<super::pki::Pki>) -> Option<Cluster> {
        let etcd = tool("etcd", "etcd-server")?;
        std::fs::create_dir_all(work).unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                child: None,
                name: format!("m{i}"),
                client_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                data_dir: work.join(format!("m{i}")),
                log: work.join(format!("m{i}.log")),
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            members,
            etcd,
            initial,
            tls,
        };
        for i in 0..n {
            c.start(i);
        }
        c.wait_healthy();
        Some(c)
    }

    impl Cluster {
        /// Every member's client URL, comma-separated.
        pub fn endpoints(&self) -> String {
            self.members
                .iter()
                .map(|m| m.client_url.as_str())
                .collect::<Vec<_>>()
                .join(",")
        }

        /// Start (or restart, with its data) member `i`.
        pub fn start(&mut self, i: usize) {
            let m = &mut self.members[i];
            assert!(m.child.is_none(), "{} is running", m.name);
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&m.log)
                .unwrap();
            let mut cmd = Command::new(&self.etcd);
            if let Some(pki) = &self.tls {
                cmd.arg("--cert-file")
                    .arg(&pki.server_cert)
                    .arg("--key-file")
                    .arg(&pki.server_key)
                    .arg("--trusted-ca-file")
                    .arg(&pki.ca)
                    .arg("--client-cert-auth");
            }
            let child = cmd
                .args(["--name", &m.name])
                .arg("--data-dir")
                .arg(&m.data_dir)
                .args(["--listen-client-urls", &m.client_url])
                .args(["--advertise-client-urls", &m.client_url])
                .args(["--listen-peer-urls", &m.peer_url])
                .args(["--initial-advertise-peer-urls", &m.peer_url])
                .args(["--initial-cluster", &self.initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "keel-test"])
                .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            m.child = Some(child);
        }

        /// Kill member `i` (SIGKILL), keeping its data.
        pub fn kill(&mut self, i: usize) {
            if let Some(mut c) = self.members[i].child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        /// Send `signal` (`"STOP"`, `"CONT"`) to member `i`.
        pub fn signal(&self, i: usize, signal: &str) {
            let pid = self.members[i].child.as_ref().unwrap().id();
            let ok = Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -{signal} {pid}");
        }

        /// The index of the member that leads now (asked of the running members).
        pub fn leader(&self) -> usize {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let ids: Vec<Option<(u64, u64)>> =
                    self.members.iter().map(|m| status(&m.client_url)).collect();
                let leader = ids.iter().flatten().map(|s| s.1).find(|&l| l != 0);
                if let Some(l) = leader {
                    if let Some(i) = ids.iter().position(|s| s.is_some_and(|s| s.0 == l)) {
                        return i;
                    }
                }
                assert!(Instant::now() < deadline, "no leader: see {}", self.logs());
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        /// Wait until every running member reports itself healthy.
        pub fn wait_healthy(&self) {
            let deadline = Instant::now() + Duration::from_secs(30);
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                loop {
                    let healthy = match &self.tls {
                        None => ureq_free_get(&format!("{}/health", m.client_url))
                            .is_some_and(|b| b.contains("\"health\":\"true\"")),
                        Some(pki) => {
                            let etcdctl = tool("etcdctl", "etcd-client").unwrap();
                            Command::new(etcdctl)
                                .env("ETCDCTL_API", "3")
                                .arg(format!("--endpoints={}", m.client_url))
                                .arg(format!("--cacert={}", pki.ca.display()))
                                .arg(format!("--cert={}", pki.client_cert.display()))
                                .arg(format!("--key={}", pki.client_key.display()))
                                .args(["endpoint", "health"])
                                .output()
                                .is_ok_and(|o| o.status.success())
                        }
                    };
                    if healthy {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "etcd member {} did not become healthy: see {}",
                        m.name,
                        m.log.display()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }

        fn logs(&self) -> String {
            self.members
                .iter()
                .map(|m| m.log.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            for i in 0..self.members.len() {
                if self.members[i].child.is_some() {
                    // A stopped process must be continued to die promptly.
                    let _ = Command::new("kill")
                        .args([
                            "-CONT",
                            &self.members[i].child.as_ref().unwrap().id().to_string(),
                        ])
                        .status();
                }
                self.kill(i);
            }
        }
    }

    /// `(member_id, leader)` from a member's status, `None` when it does not answer.
    fn status(url: &str) -> Option<(u64, u64)> {
        let body = http(url, "POST", "/v3/maintenance/status", "{}")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let num = |x: &serde_json::Value| x.as_str().and_then(|s| s.parse().ok());
        Some((num(&v["header"]["member_id"])?, num(&v["leader"])?))
    }

    fn ureq_free_get(url: &str) -> Option<String> {
        let (base, path) = url.split_at(url.find("/health")?);
        http(base, "GET", path, "")
    }

    /// A one-shot HTTP/1.0 request with a short timeout (a stopped member must not hang
    /// the test's own checks).
    fn http(base: &str, method: &str, path: &str, body: &str) -> Option<String> {
        use std::io::{Read, Write};
        let addr = base.strip_prefix("http://")?;
        let sock: std::net::SocketAddr = addr.parse().ok()?;
        let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(1500))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out.split_once("\r\n\r\n")?.1.to_string())
    }
}

/// Debian's kernel under qemu: finding it, and building initramfs archives around it.
pub mod kernel {
    use super::tool;
    use std::collections::BTreeSet;
    use std::fmt::Write as _;
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Debian's kernel and what an initramfs around it needs.
    #[derive(Debug)]
    pub struct Kernel {
        /// The qemu path.
        pub qemu: PathBuf,
        /// The vmlinuz path.
        pub vmlinuz: PathBuf,
        /// The modules path.
        pub modules: PathBuf,
        /// The busybox path.
        pub busybox: PathBuf,
        /// The dmsetup path.
        pub dmsetup: PathBuf,
        /// The cpio path.
        pub cpio: PathBuf,
    }

    /// The newest kernel in /boot with its modules, and the tools; `None` (a visible skip)
    /// when one is missing.
    pub fn kernel() -> Option<Kernel> {
        let qemu = tool("qemu-system-x86_64", "qemu-system-x86")?;
        let busybox = tool("busybox", "busybox-static")?;
        let dmsetup = tool("dmsetup", "dmsetup")?;
        let cpio = tool("cpio", "cpio")?;
        let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .collect();
        kernels.sort();
        let Some(vmlinuz) = kernels.pop() else {
            // The package is what provides the kernel: report it as the missing tool.
            tool("/boot/vmlinuz-*", "linux-image-amd64");
            return None;
        };
        let version = vmlinuz
            .file_name()?
            .to_string_lossy()
            .trim_start_matches("vmlinuz-")
            .to_string();
        let modules = PathBuf::from("/lib/modules").join(&version);
        if !modules.join("modules.dep").exists() {
            tool(&format!("/lib/modules/{version}"), "linux-image-amd64");
            return None;
        }
        Some(Kernel {
            qemu,
            vmlinuz,
            modules,
            busybox,
            dmsetup,
            cpio,
        })
    }

    /// Modules with their dependencies, dependencies first (modules.dep order).
    pub fn module_order(modules: &Path, wanted: &[&str]) -> Vec<PathBuf> {
        let dep = fs::read_to_string(modules.join("modules.dep")).unwrap();
        let deps: Vec<(String, Vec<String>)> = dep
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(m, d)| {
                (
                    m.to_string(),
                    d.split_whitespace().map(str::to_string).collect(),
                )
            })
            .collect();
        let find = |name: &str| {
            deps.iter().find(|(m, _)| {
                Path::new(m).file_stem().is_some_and(|s| {
                    s.to_string_lossy().replace('_', "-") == name.replace('_', "-")
                })
            })
        };
        let mut out: Vec<String> = Vec::new();
        fn add(m: &str, deps: &[(String, Vec<String>)], out: &mut Vec<String>) {
            if out.iter().any(|o| o == m) {
                return;
            }
            if let Some((_, d)) = deps.iter().find(|(x, _)| x == m) {
                // modules.dep lists dependencies so that the last must load first.
                for x in d.iter().rev() {
                    add(x, deps, out);
                }
            }
            out.push(m.to_string());
        }
        for w in wanted {
            let (m, _) = find(w).unwrap_or_else(|| panic!("module {w} not in modules.dep"));
            add(m, &deps, &mut out);
        }
        out.into_iter().map(|m| modules.join(m)).collect()
    }

    /// The shared libraries `bin` loads (ldd).
    pub fn shared_libraries(bin: &Path) -> BTreeSet<PathBuf> {
        let out = Command::new("ldd").arg(bin).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(PathBuf::from)
            .collect()
    }

    /// `root` as a newc cpio archive at `out`.
    pub fn cpio_of(cpio: &Path, root: &Path, out: &Path) {
        let list: Vec<String> = walk(root)
            .into_iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        let mut child = super::spawn_with_input(
            Command::new(cpio)
                .args(["-o", "-H", "newc", "--quiet"])
                .current_dir(root)
                .stdout(fs::File::create(out).unwrap()),
            list.join("\n").as_bytes(),
        );
        assert!(child.wait().unwrap().success());
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut v = vec![dir.to_path_buf()];
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                v.extend(walk(&p));
            } else {
                v.push(p);
            }
        }
        v
    }

    /// Lay out an initramfs in `root`: busybox and dmsetup (with their libraries),
    /// `extra` programs (path in the host, path in the archive; with their libraries), the
    /// kernel modules `wanted` with their dependencies in load order (`/modules.order`),
    /// and `init`.
    pub fn populate_initramfs(
        k: &Kernel,
        root: &Path,
        extra: &[(&Path, &str)],
        wanted: &[&str],
        init: &str,
    ) {
        for d in [
            "bin",
            "sbin",
            "proc",
            "sys",
            "dev",
            "lib/modules",
            "tmp",
            "mnt",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let mut programs = vec![
            (k.busybox.as_path(), "bin/busybox"),
            (k.dmsetup.as_path(), "sbin/dmsetup"),
        ];
        programs.extend_from_slice(extra);
        for (from, to) in programs {
            let dest = root.join(to);
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::copy(from, &dest).unwrap();
            for lib in shared_libraries(from) {
                let dest = root.join(lib.strip_prefix("/").unwrap());
                fs::create_dir_all(dest.parent().unwrap()).unwrap();
                fs::copy(fs::canonicalize(&lib).unwrap(), &dest).unwrap();
            }
        }
        let mut order = String::new();
        for m in module_order(&k.modules, wanted) {
            let name = m.file_name().unwrap().to_string_lossy().to_string();
            fs::copy(&m, root.join("lib/modules").join(&name)).unwrap();
            writeln!(order, "{name}").unwrap();
        }
        fs::write(root.join("modules.order"), order).unwrap();
        fs::write(root.join("init"), init).unwrap();
        fs::set_permissions(
            root.join("init"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
}
