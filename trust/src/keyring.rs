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
