//! A real nginx serving a directory on 127.0.0.1, started and stopped by the test.

use super::{free_port, spawn_server, tool};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// A running nginx; stopped when dropped.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    log: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The port.
    pub port: u16,
}

/// One request as nginx logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The path asked for.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// Body bytes sent (what reached the socket, for a request the client dropped).
    pub bytes: u64,
    /// The Range header, `-` without one.
    pub range: String,
    /// The User-Agent header, `-` without one.
    pub agent: String,
}

impl Nginx {
    /// Every request served so far, in order (nginx logs a request when it ends: one the
    /// client is still reading is not there yet).
    pub fn requests(&self) -> Vec<Logged> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                // The agent last: it may hold spaces.
                let mut f = l.splitn(5, ' ');
                Some(Logged {
                    path: f.next()?.to_string(),
                    status: f.next()?.parse().ok()?,
                    bytes: f.next()?.parse().ok()?,
                    range: f.next()?.to_string(),
                    agent: f.next().unwrap_or("-").to_string(),
                })
            })
            .collect()
    }

    /// The requests for `path` so far.
    pub fn requests_for(&self, path: &str) -> Vec<Logged> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
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
         http {{\n  log_format keel '$uri $status $body_bytes_sent $http_range $http_user_agent';\n\
           access_log {log} keel;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n\
           fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n\
           default_type application/octet-stream;\n\
           server {{ listen 127.0.0.1:{port}{ssl}; root {root}; {certs} }}\n}}\n",
        pid = w("nginx.pid").display(),
        err = w("error.log").display(),
        log = w("access.log").display(),
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
        log: w("access.log"),
        base: format!("{scheme}://127.0.0.1:{port}"),
        port,
    })
}
