//! `fleetlock`: a FleetLock server (Zincati's reboot manager protocol) over keel-fleet's
//! etcd semaphore, so Fedora CoreOS / Flatcar nodes running Zincati share groups with
//! Keel nodes and airlock.
//!
//! ```text
//! cargo run --example fleetlock -- --endpoints URLS [--cacert CA --cert CERT --key KEY] \
//!     --listen 127.0.0.1:3333 \
//!     --group default=1 [--group workers=3]... [--lease-ttl SECS] \
//!     [--workers N] [--queue N] [--request-timeout SECS]
//! ```
//! Each slot it grants is bound to a lease of `--lease-ttl` seconds (the longest a
//! reboot may take): a node that never comes back to call `/v1/steady-state` frees its
//! slot when the lease ends. It prints `listening on ADDR` once it accepts requests.
//!
//! Anyone who can connect reaches it, so it serves `--workers` connections at once with
//! `--queue` more waiting (beyond them: `503` at once), gives each request
//! `--request-timeout` seconds from connecting to its last byte, and rides out running
//! out of file descriptors (logged to standard error) instead of exiting.

#[macro_use]
#[path = "support/cli.rs"]
mod cli;
#[path = "support/etcd.rs"]
mod etcd;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use keel::fleet::fleetlock::{Limits, Server};
use keel::io::Cancel;

#[derive(Parser)]
#[command(
    name = "fleetlock",
    about = "A FleetLock server over etcd (keel-fleet)"
)]
struct Cli {
    #[command(flatten)]
    etcd: etcd::EtcdArgs,
    /// Address to listen on (port 0: any free port, printed).
    #[arg(long, default_value = "127.0.0.1:3333")]
    listen: String,
    /// A group and its slots, as NAME=SLOTS; repeatable. Requests for other groups are
    /// refused (as airlock does).
    #[arg(long = "group", value_parser = group, required = true)]
    groups: Vec<(String, u64)>,
    /// Lease TTL in seconds of each granted slot.
    #[arg(long, default_value = "3600", value_parser = etcd::reboot_lease_seconds)]
    lease_ttl: Duration,
    /// Connections served at once (a fixed pool of threads).
    #[arg(long, default_value_t = Limits::default().workers as u64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    workers: u64,
    /// Connections waiting for a worker; beyond them a connection is answered 503.
    #[arg(long, default_value_t = Limits::default().queue as u64,
          value_parser = clap::value_parser!(u64).range(0..=65536))]
    queue: u64,
    /// Seconds a client has from connecting to the end of its request.
    #[arg(long, default_value = "10", value_parser = etcd::positive_seconds)]
    request_timeout: Duration,
}

fn group(s: &str) -> Result<(String, u64), String> {
    let (name, slots) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=SLOTS, as default=1"))?;
    match etcd::slot_count(slots) {
        Ok(n) if !name.is_empty() => Ok((name.to_string(), n)),
        _ => Err(format!(
            "{s:?}: SLOTS is a whole number from 1 to 10000, NAME is not empty"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        let etcd = cli.etcd.connect()?;
        let groups: BTreeMap<String, u64> = cli.groups.iter().cloned().collect();
        let listener =
            TcpListener::bind(&cli.listen).map_err(|e| format!("--listen {}: {e}", cli.listen))?;
        println!("listening on {}", listener.local_addr()?);
        let limits = Limits::default()
            .workers(usize::try_from(cli.workers)?)
            .queue(usize::try_from(cli.queue)?)
            .request_timeout(cli.request_timeout);
        let server = Arc::new(Server::new(etcd, groups, cli.lease_ttl).with_limits(limits));
        server.serve(&listener, &Cancel::new())?;
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetlock: {e}");
            ExitCode::FAILURE
        }
    }
}
