//! The trusted keys.

use crate::error::{Error, Result};
use crate::key::{KeyId, PublicKey};
use crate::signer::Context;

#[derive(Clone, Debug)]
struct Entry {
    key: PublicKey,
    not_after: Option<u64>,
}

/// The set of trusted public keys. Several may be trusted at once, so a new signing key
/// can be rolled out before the old one is retired; an entry may carry a not-after date
/// (seconds since the epoch) past which its signatures are refused.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    entries: Vec<Entry>,
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Keyring::default()
    }

    /// Trust `key` with no end date. Adding a key already present is an error.
    pub fn add(&mut self, key: PublicKey) -> Result<()> {
        self.add_until(key, None)
    }

    /// Trust `key` until `not_after` (seconds since the epoch, inclusive), or for ever.
    pub fn add_until(&mut self, key: PublicKey, not_after: Option<u64>) -> Result<()> {
        if self.entries.iter().any(|e| e.key.id() == key.id()) {
            return Err(Error::Duplicate(key.id()));
        }
        self.entries.push(Entry { key, not_after });
        Ok(())
    }

    /// Stop trusting the key with `id`; true if it was present.
    pub fn remove(&mut self, id: &KeyId) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.key.id() != *id);
        before != self.entries.len()
    }

    /// The key with this id, whatever its date.
    pub fn get(&self, id: &KeyId) -> Option<&PublicKey> {
        self.entries
            .iter()
            .find(|e| e.key.id() == *id)
            .map(|e| &e.key)
    }

    /// The not-after date of the key with this id (`None` for none, or no such key).
    pub fn not_after(&self, id: &KeyId) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.key.id() == *id)
            .and_then(|e| e.not_after)
    }

    /// The trusted keys.
    pub fn keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.entries.iter().map(|e| &e.key)
    }

    /// The key with this id if it is trusted at `now` (seconds since the epoch).
    pub fn trusted(&self, id: &KeyId, now: u64) -> Result<&PublicKey> {
        let e = self
            .entries
            .iter()
            .find(|e| e.key.id() == *id)
            .ok_or(Error::Untrusted(*id))?;
        match e.not_after {
            Some(not_after) if now > not_after => Err(Error::Expired {
                key_id: *id,
                not_after,
                now,
            }),
            _ => Ok(&e.key),
        }
    }

    /// Verify `signature` over `bytes` as a document of kind `context`, by the key `id`,
    /// trusted at `now`.
    pub fn verify(
        &self,
        id: &KeyId,
        context: Context,
        bytes: &[u8],
        signature: &[u8; 64],
        now: u64,
    ) -> Result<&PublicKey> {
        let key = self.trusted(id, now)?;
        key.verify_raw(&context.message(bytes), signature)?;
        Ok(key)
    }
}

/// Seconds since the epoch now (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
/// The last second (UTC) of the day `date` (`YYYY-MM-DD`, a real calendar day), as
/// seconds since the epoch: the not-after time of a key "trusted until" that day. The
/// one parser of such dates, for descriptions and agents alike.
pub fn end_of_day(date: &str) -> Result<u64> {
    let bad = || Error::Date(date.to_string());
    let p: Vec<&str> = date.split('-').collect();
    let [y, m, d] = p.as_slice() else {
        return Err(bad());
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(y, 4) && digits(m, 2) && digits(d, 2)) {
        return Err(bad());
    }
    let (y, m, d): (i64, i64, i64) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if !(1..=days_in_month).contains(&d) || y < 1970 {
        return Err(bad());
    }
    // Howard Hinnant's days_from_civil.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    u64::try_from((days + 1) * 86_400 - 1).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_end_at_the_last_second_of_a_real_calendar_day() {
        assert_eq!(end_of_day("1970-01-01").unwrap(), 86_399);
        assert_eq!(end_of_day("2000-03-01").unwrap(), 951_955_199);
        assert_eq!(end_of_day("2026-11-29").unwrap(), 1_795_996_799);
        assert!(end_of_day("2024-02-29").is_ok() && end_of_day("2000-02-29").is_ok());
        for bad in [
            "2023-02-29",
            "1900-02-29",
            "2026-13-01",
            "2026-04-31",
            "26-01-01",
            "2026-1-01",
            "2026-01-01x",
            "",
            "2026-01",
            "1969-12-31",
        ] {
            assert!(matches!(end_of_day(bad), Err(Error::Date(_))), "{bad}");
        }
    }
}
