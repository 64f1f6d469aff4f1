//! keel-fleet: rolling reboots across a fleet, coordinated through etcd.
//!
//! A new OS version rolls through a group of nodes a few at a time: each node stages the
//! update, takes one of the group's slots, reboots, commits, and gives the slot back. The
//! slots are a semaphore kept in etcd where airlock keeps it ([`Group`]), so airlock,
//! Zincati (through [`fleetlock`]) and Keel nodes can share a group. Unlike airlock's,
//! every Keel holder is bound to an etcd [`Lease`]: a node that dies or is deleted frees
//! its slot when its lease runs out, with nobody to clean up after it. [`Group::status`]
//! shows who holds each slot, since when, and how long their lease has left; a pause
//! switch ([`Group::pause`]) stops the roll, and reboot [`Windows`] say when a node may
//! take a slot. [`Node`] is a node's side of the roll, as Zincati's.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use keel_fleet::{Etcd, Group, Lease, Node, Wait, Windows};
//!
//! # fn main() -> Result<(), keel_fleet::Error> {
//! let etcd = Arc::new(Etcd::new(&["http://10.0.0.1:2379,http://10.0.0.2:2379"])?);
//! let group = Group::new(&etcd, "workers", 2)?;
//! let node = Node::new(&group, "node-17", Windows::parse(&["Mon-Fri 02:00-05:00"])?);
//! node.steady_state()?; // booted and committed: give back a slot held across the reboot
//! // ... stage the update (keel-update), then:
//! let lease = Lease::grant(&etcd, Duration::from_secs(900))?; // the longest reboot
//! let reboot_by = node.pre_reboot(&lease, &Wait::default())?;
//! // ... reboot before `reboot_by` (past it the lease may have ended and the slot gone to
//! // another node); after the boot, commit and `steady_state` again.
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod error;
pub mod etcd;
pub mod fleetlock;
mod group;
mod lease;
mod policy;
mod roll;

pub use error::{Error, Result};
pub use etcd::{Etcd, TlsOptions};
pub use group::{query_escape, Acquire, Binding, Group, Holder, Pause, Semaphore, Status, Wait};
pub use lease::Lease;
pub use policy::{Window, Windows};
pub use roll::{Event, Host, Node, Outcome, Roll, RollError};
