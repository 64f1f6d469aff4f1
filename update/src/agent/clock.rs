//! The clock, and the floor it must not read below.

use keel_io::{ReadAt, WriteAt};

use super::Agent;
use crate::error::{Error, Result};
use crate::record;

/// No clock of a device running this agent can read earlier than this (2026-12-01, when
/// this version was written): a clock reset to 1970 would otherwise make expired indexes
/// and keys past their not-after dates look valid.
pub const BUILD_TIME_FLOOR: u64 = 1_796_083_200;

/// How far behind the floor a clock may read and still be trusted (seconds).
const CLOCK_GRACE: u64 = 3600;

impl<'d, D> Agent<'d, D>
where
    D: ReadAt,
    &'d D: WriteAt,
{
    /// The clock, checked against the time floor: the newest of [`BUILD_TIME_FLOOR`] and
    /// the timestamp of the last release index this agent accepted (kept in the state
    /// directory). A clock more than an hour behind it is refused ([`Error::ClockBehind`]): expiry dates
    /// and keys' not-after dates mean nothing on a clock that was set back.
    pub fn trusted_now(&self) -> Result<u64> {
        let floor = self.time_floor()?;
        let now = keel_trust::unix_now();
        // An hour's grace: a device whose clock trails the publisher's by minutes (not yet
        // synchronised) is not a clock set back to replay an expired index.
        if now.saturating_add(CLOCK_GRACE) < floor {
            return Err(Error::ClockBehind { now, floor });
        }
        Ok(now)
    }

    pub(super) fn time_floor(&self) -> Result<u64> {
        let path = self.state_dir.join("time-floor");
        let stored = record::read_small(&path)?
            .map(|t| {
                t.trim().parse::<u64>().map_err(|_| {
                    Error::io(
                        format!("reading {}", path.display()),
                        std::io::Error::other("not a unix time"),
                    )
                })
            })
            .transpose()?;
        Ok(stored.unwrap_or(0).max(BUILD_TIME_FLOOR))
    }

    /// Raise the time floor to `t` (an accepted index's signed timestamp).
    pub(super) fn raise_time_floor(&self, t: u64) -> Result<()> {
        if t > self.time_floor()? {
            std::fs::create_dir_all(&self.state_dir)
                .map_err(|e| Error::io(format!("creating {}", self.state_dir.display()), e))?;
            record::replace(
                &self.state_dir.join("time-floor"),
                format!("{t}\n").as_bytes(),
            )?;
        }
        Ok(())
    }
}
