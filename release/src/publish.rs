//! The publisher's side of the release index: entries made from what each payload's
//! signed manifest says of itself (its system, version, the image it makes and the one a
//! delta starts from) and from its bytes (size and SHA-256), never typed by hand. The
//! facts are read by the caller (keel-update's `publish::describe` reads a payload
//! file); this module checks that they make one release and adds it to an index.

use crate::{Artifact, Delta, Index, Release};

/// An image as a payload's manifest names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image {
    /// Its size in bytes.
    pub size: u64,
    /// Its digest (keel-payload's image digest).
    pub digest: [u8; 32],
}

/// What a payload's signed manifest says of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// The system it is for.
    pub compatible: String,
    /// The version it installs.
    pub version: String,
    /// The image it makes.
    pub target: Image,
    /// The image a delta starts from (`None`: a full payload).
    pub source: Option<Image>,
}

/// A payload file as the index will name it.
#[derive(Clone, Debug)]
pub struct Published {
    /// What its signed manifest says.
    pub payload: Payload,
    /// Its URL, size and SHA-256.
    pub artifact: Artifact,
}

/// Why a release or an index cannot be made from what was given.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// A delta payload given as the full one.
    #[error("{url}: a delta payload, given as the full one")]
    DeltaAsFull {
        /// The payload's URL.
        url: String,
    },
    /// A full payload given as a delta.
    #[error("{url}: a full payload, given as a delta")]
    FullAsDelta {
        /// The payload's URL.
        url: String,
    },
    /// A rollout share above 100%.
    #[error("rollout {0}%: at most 100")]
    Rollout(u8),
    /// A delta (or a block store) that does not make the full payload's image for the
    /// same system and version.
    #[error("{url}: makes {delta}, the full payload {full}")]
    DeltaMismatch {
        /// The delta's URL.
        url: String,
        /// What the delta makes (`acme-os 2.0 (image <hex>)`).
        delta: String,
        /// What the full payload makes.
        full: String,
    },
    /// The version a delta starts from is not a version.
    #[error("{url}: from version {from:?}: {source}")]
    FromVersion {
        /// The delta's URL.
        url: String,
        /// The version given.
        from: String,
        /// Why it is not one.
        #[source]
        source: keel_version::VersionError,
    },
    /// A serial that does not grow past the index it extends.
    #[error("serial {serial}: the index it extends has {have} already (devices refuse a serial that does not grow)")]
    SerialNotGrowing {
        /// The serial asked for.
        serial: u64,
        /// The extended index's.
        have: u64,
    },
    /// A block store given where a payload goes, or a payload where a store goes.
    #[error("{url}: a {found}, given as a {expected}")]
    Kind {
        /// The file's URL.
        url: String,
        /// What it is: "payload" or "block store".
        found: &'static str,
        /// What was asked for.
        expected: &'static str,
    },
    /// The extended index has the last serial there is.
    #[error("serial {0}: the index it extends has the last serial there is")]
    SerialExhausted(u64),
}

/// What a payload makes, for messages: `acme-os 2.0 (image <hex>)`.
fn makes(m: &Payload) -> String {
    format!(
        "{} {} (image {})",
        m.compatible,
        m.version,
        hex::encode(m.target.digest)
    )
}

/// The release of a full payload and the deltas to the same image, each delta with the
/// version it starts from: every payload must be for the same system and version, the
/// full one start from nothing, each delta from an image.
pub fn release(
    full: Published,
    deltas: Vec<(String, Published)>,
    rollout_percent: u8,
) -> Result<Release, PublishError> {
    release_with_store(full, deltas, None, rollout_percent)
}

/// [`release`] with the image's block store, which must make the full payload's image
/// for the same system and version.
pub fn release_with_store(
    full: Published,
    deltas: Vec<(String, Published)>,
    store: Option<Published>,
    rollout_percent: u8,
) -> Result<Release, PublishError> {
    let m = &full.payload;
    if m.source.is_some() {
        return Err(PublishError::DeltaAsFull {
            url: full.artifact.url,
        });
    }
    if rollout_percent > 100 {
        return Err(PublishError::Rollout(rollout_percent));
    }
    let mut out = Vec::new();
    for (from, d) in deltas {
        let Some(src) = &d.payload.source else {
            return Err(PublishError::FullAsDelta {
                url: d.artifact.url,
            });
        };
        if d.payload.version != m.version
            || d.payload.compatible != m.compatible
            || d.payload.target != m.target
        {
            return Err(PublishError::DeltaMismatch {
                url: d.artifact.url.clone(),
                delta: makes(&d.payload),
                full: makes(m),
            });
        }
        if let Err(source) = keel_version::Version::parse(&from) {
            return Err(PublishError::FromVersion {
                url: d.artifact.url,
                from,
                source,
            });
        }
        out.push(Delta {
            from_version: from,
            source_digest: hex::encode(src.digest),
            source_size: src.size,
            artifact: d.artifact,
        });
    }
    let store = match store {
        None => None,
        Some(st) => {
            if st.payload.version != m.version
                || st.payload.compatible != m.compatible
                || st.payload.target != m.target
                || st.payload.source.is_some()
            {
                return Err(PublishError::DeltaMismatch {
                    url: st.artifact.url.clone(),
                    delta: makes(&st.payload),
                    full: makes(m),
                });
            }
            Some(st.artifact)
        }
    };
    Ok(Release {
        version: m.version.clone(),
        compatible: m.compatible.clone(),
        full: full.artifact,
        deltas: out,
        store,
        rollout_percent,
    })
}

/// `base` (an earlier index document, or a new one) with `release` added in place of any
/// release of the same version for the same system, the serial raised (to `serial`, or
/// by one) and the expiry set. The document is what `sign_envelope` signs.
pub fn add_release(
    base: Option<Index>,
    release: Release,
    serial: Option<u64>,
    expires: u64,
) -> Result<Index, PublishError> {
    let mut index = base.unwrap_or(Index {
        kind: "keel-index".into(),
        serial: 0,
        expires,
        timestamp: None,
        releases: Vec::new(),
    });
    let next = match serial {
        Some(s) if s <= index.serial && index.serial > 0 => {
            return Err(PublishError::SerialNotGrowing {
                serial: s,
                have: index.serial,
            })
        }
        Some(s) => s,
        // Devices keep the highest serial they accepted: one that wrapped to 0 would be
        // refused by every device, for good.
        None => index
            .serial
            .checked_add(1)
            .ok_or(PublishError::SerialExhausted(index.serial))?,
    };
    index
        .releases
        .retain(|r| !(r.version == release.version && r.compatible == release.compatible));
    index.releases.push(release);
    index.serial = next;
    index.expires = expires;
    // The devices' clock floor: never lowered by a republished index.
    index.timestamp = Some(keel_trust::unix_now().max(index.timestamp.unwrap_or(0)));
    Ok(index)
}
