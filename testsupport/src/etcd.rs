//! A real etcd cluster on loopback ports, started and stopped by the test.

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
                    "etcd member {} did not become healthy; the end of {}:\n{}",
                    m.name,
                    m.log.display(),
                    log_tail(&m.log)
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

/// The last lines of a member's log, for a failure's message (CI keeps no files).
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
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
