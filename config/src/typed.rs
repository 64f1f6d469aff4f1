//! The description's values as the types the crates act on: each setting parsed by the
//! crate that owns its rule, here once, for keel-config's own checks and for agents alike
//! (keel-update takes them as they are).

use keel_trust::PublicKey;
use keel_verity::{HashAlgorithm, HashType};
use keel_version::Version;

use crate::model::{SlotConfig, Trust, TrustedKey, Verity};
use crate::DeviceRef;

/// A setting whose text does not make the value its rule asks for (a description that was
/// validated has none).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// `ed25519`: not 64 hex digits.
    #[error("expected 64 hex digits (a raw Ed25519 public key)")]
    KeyHex,
    /// `ed25519`: not a key keel-trust accepts.
    #[error(transparent)]
    Key(keel_trust::Error),
    /// `not-after`: not a date.
    #[error(transparent)]
    Date(keel_trust::Error),
    /// A version.
    #[error(transparent)]
    Version(#[from] keel_version::VersionError),
    /// A device reference.
    #[error(transparent)]
    Device(#[from] crate::DeviceRefError),
    /// A dm-verity setting.
    #[error(transparent)]
    Verity(#[from] keel_verity::Error),
    /// `format`: not 0 or 1.
    #[error("{0}: expected 0 or 1")]
    HashFormat(u8),
    /// `salt`: not hex.
    #[error("expected an even number of hex digits")]
    SaltHex,
    /// `salt`: longer than veritysetup takes.
    #[error("{0} bytes: at most 256")]
    SaltLength(usize),
    /// `partition-type`: neither a known name nor a GUID.
    #[error("{text:?}: expected {names} or a GUID ({source})")]
    PartitionType {
        /// The text.
        text: String,
        /// The names keel-partition knows.
        names: String,
        /// Why it is not a GUID.
        #[source]
        source: keel_partition::Error,
    },
}

impl TrustedKey {
    /// `ed25519` as a key.
    pub fn public_key(&self) -> Result<PublicKey, ValueError> {
        let mut raw = [0u8; 32];
        hex::decode_to_slice(&self.ed25519, &mut raw).map_err(|_| ValueError::KeyHex)?;
        PublicKey::from_bytes(&raw).map_err(ValueError::Key)
    }

    /// `not-after` as the last second of that day (UTC), unix time.
    pub fn not_after_time(&self) -> Result<Option<u64>, ValueError> {
        self.not_after
            .as_deref()
            .map(|d| keel_trust::end_of_day(d).map_err(ValueError::Date))
            .transpose()
    }
}

impl Trust {
    /// `minimum-version` as a version.
    pub fn minimum(&self) -> Result<Option<Version>, ValueError> {
        Ok(self
            .minimum_version
            .as_deref()
            .map(Version::parse)
            .transpose()?)
    }
}

impl SlotConfig {
    /// `device` as a reference.
    pub fn device_ref(&self) -> Result<DeviceRef, ValueError> {
        Ok(DeviceRef::parse(&self.device)?)
    }

    /// `hash-device` as a reference.
    pub fn hash_device_ref(&self) -> Result<Option<DeviceRef>, ValueError> {
        Ok(self
            .hash_device
            .as_deref()
            .map(DeviceRef::parse)
            .transpose()?)
    }

    /// `partition-type` as the GUID it names.
    pub fn partition_type_guid(&self) -> Result<Option<keel_partition::Guid>, ValueError> {
        self.partition_type
            .as_deref()
            .map(|t| {
                keel_partition::types::parse(t).map_err(|source| ValueError::PartitionType {
                    text: t.to_string(),
                    names: keel_partition::types::NAMES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                    source,
                })
            })
            .transpose()
    }
}

impl Verity {
    /// `algorithm`.
    pub fn hash_algorithm(&self) -> Result<HashAlgorithm, ValueError> {
        Ok(HashAlgorithm::from_name(&self.algorithm)?)
    }

    /// `format`.
    pub fn hash_type(&self) -> Result<HashType, ValueError> {
        HashType::from_u32(u32::from(self.format)).ok_or(ValueError::HashFormat(self.format))
    }

    /// `salt` as bytes (`None`: a random salt per image; empty: no salt).
    pub fn salt_bytes(&self) -> Result<Option<Vec<u8>>, ValueError> {
        let Some(s) = self.salt.as_deref() else {
            return Ok(None);
        };
        let bytes = hex::decode(s).map_err(|_| ValueError::SaltHex)?;
        if bytes.len() > 256 {
            return Err(ValueError::SaltLength(bytes.len()));
        }
        Ok(Some(bytes))
    }
}
