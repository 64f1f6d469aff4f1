//! How the fleet examples reach etcd: the members' URLs and, as etcdctl takes them, the
//! CA, client certificate and key. Included with `#[path = "support/etcd.rs"] mod etcd;`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel::fleet::{Etcd, TlsOptions};

/// The etcd connection options.
#[derive(clap::Args)]
pub(crate) struct EtcdArgs {
    /// The etcd members' client URLs, comma-separated (http://host:2379,...).
    #[arg(long, global = true, default_value = "http://127.0.0.1:2379")]
    pub(crate) endpoints: String,
    /// CA certificates (PEM) that signed the members' certificates.
    #[arg(long, global = true)]
    pub(crate) cacert: Option<PathBuf>,
    /// This client's certificate (PEM), for members run with --client-cert-auth.
    #[arg(long, global = true, requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// Seconds one etcd operation keeps trying the members (through an election) before
    /// it fails.
    #[arg(long, global = true, default_value = "15", value_parser = seconds)]
    pub(crate) timeout: Duration,
}

/// The longest duration an argument takes: ten years. Longer is a typing error, and
/// would not fit the clock's arithmetic.
pub(crate) const LONGEST: Duration = Duration::from_secs(10 * 365 * 86_400);

/// A number of seconds (fractions allowed) from 0 to ten years, as clap parses an
/// argument: NaN, a negative number or a longer time is refused with a message.
pub(crate) fn seconds(s: &str) -> Result<Duration, String> {
    let refused = || {
        format!(
            "{s:?} is not a number of seconds from 0 to {} (ten years)",
            LONGEST.as_secs()
        )
    };
    let v: f64 = s.trim().parse().map_err(|_| refused())?;
    match Duration::try_from_secs_f64(v) {
        Ok(d) if d <= LONGEST => Ok(d),
        _ => Err(refused()),
    }
}

/// As [`seconds`], and more than zero.
#[allow(dead_code)] // used by one of the two examples that include this file
pub(crate) fn positive_seconds(s: &str) -> Result<Duration, String> {
    match seconds(s)? {
        d if d.is_zero() => Err(format!("{s:?}: more than 0 seconds are needed")),
        d => Ok(d),
    }
}

/// A lease's TTL, renewed while its holder runs: at least 2 s (etcd would silently raise
/// anything shorter to its own minimum), at most ten years.
#[allow(dead_code)] // used by both examples that include this file, not by every one
pub(crate) fn lease_seconds(s: &str) -> Result<Duration, String> {
    at_least(s, 2, "etcd's shortest lease")
}

/// A lease nobody renews while its node reboots: the longest a reboot may take. At least
/// 10 s (a slot held more briefly frees itself in the middle of any reboot), at most ten
/// years.
#[allow(dead_code)] // used by both examples that include this file, not by every one
pub(crate) fn reboot_lease_seconds(s: &str) -> Result<Duration, String> {
    at_least(s, 10, "no reboot is shorter")
}

fn at_least(s: &str, min: u64, why: &str) -> Result<Duration, String> {
    match seconds(s)? {
        d if d < Duration::from_secs(min) => Err(format!("{s:?}: at least {min} seconds ({why})")),
        d => Ok(d),
    }
}

/// How many nodes may reboot at once: 1 to 10,000.
#[allow(dead_code)] // used by both examples that include this file, not by every one
pub(crate) fn slot_count(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: a number of slots from 1 to 10000")),
    }
}

impl EtcdArgs {
    /// A client of the cluster.
    pub(crate) fn connect(&self) -> Result<Arc<Etcd>, Box<dyn std::error::Error>> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut tls = TlsOptions::default();
        if let Some(ca) = &self.cacert {
            tls = tls.ca(read(ca)?);
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.client_cert(read(cert)?, read(key)?);
        }
        let etcd = Etcd::with_tls(&[&self.endpoints], &tls)?;
        Ok(Arc::new(etcd.op_timeout(self.timeout)))
    }
}
