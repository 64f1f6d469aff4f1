//! What the fleet tests share: a three-member etcd cluster on loopback and a client of it.

use std::sync::Arc;

use keel_fleet::Etcd;
use keel_testsupport::etcd::{cluster, Cluster};

/// A cluster in a temporary directory (stopped when dropped) and a client of it; `None`
/// (a visible skip) without etcd.
pub(crate) fn start() -> Option<(tempfile::TempDir, Cluster, Arc<Etcd>)> {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path(), 3)?;
    let etcd = Arc::new(Etcd::new(&[c.endpoints()]).unwrap());
    Some((dir, c, etcd))
}
