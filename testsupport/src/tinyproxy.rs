//! tinyproxy (Debian's package) on 127.0.0.1: the forward proxy a machine's
//! `http_proxy`/`https_proxy` names, tunnelling with CONNECT as clients ask.

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
