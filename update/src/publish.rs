//! The publisher's side of the release index: index entries made from the payload files
//! themselves, so that what the index says of a payload (its version, system, the image a
//! delta starts from, its size and SHA-256) is read from the payload's signed manifest
//! and its bytes, never typed by hand.

use std::io::Read;
use std::path::Path;

use keel_fetch::index::{Artifact, Delta, Index, Release};
use keel_payload::Manifest;
use keel_trust::Keyring;
use sha2::Digest;

use crate::error::{Error, Result};

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
    /// A delta that does not make the full payload's image for the same system and
    /// version.
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
    /// The extended index has the last serial there is.
    #[error("serial {0}: the index it extends has the last serial there is")]
    SerialExhausted(u64),
}

/// A payload file as the index will name it.
#[derive(Clone, Debug)]
pub struct Published {
    /// Its signed manifest (checked under the keyring given).
    pub manifest: Manifest,
    /// Its URL, size and SHA-256.
    pub artifact: Artifact,
}

/// Read the payload at `path` (its signature checked under `keyring`) and hash it whole,
/// streamed: the index entry for it published at `url`.
pub fn describe(path: &Path, url: &str, keyring: &Keyring) -> Result<Published> {
    let named = |e: std::io::Error| Error::io(format!("reading {}", path.display()), e);
    let (mut file, _) = keel_io::open_device(path, false).map_err(named)?;
    let (_, manifest, _) = keel_payload::read_manifest(&mut file, keyring)?;
    let (mut file, _) = keel_io::open_device(path, false).map_err(named)?;
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(named)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Published {
        manifest,
        artifact: Artifact {
            url: url.to_string(),
            size,
            sha256: hex::encode(sha.finalize()),
        },
    })
}

/// The release of a full payload and the deltas to the same image, each delta with the
/// version it starts from: every payload must be for the same system and version, the
/// full one start from nothing, each delta from an image.
pub fn release(
    full: Published,
    deltas: Vec<(String, Published)>,
    rollout_percent: u8,
) -> Result<Release> {
    let m = &full.manifest;
    if m.source.is_some() {
        return Err(PublishError::DeltaAsFull {
            url: full.artifact.url,
        }
        .into());
    }
    if rollout_percent > 100 {
        return Err(PublishError::Rollout(rollout_percent).into());
    }
    let mut out = Vec::new();
    for (from, d) in deltas {
        let Some(src) = &d.manifest.source else {
            return Err(PublishError::FullAsDelta {
                url: d.artifact.url,
            }
            .into());
        };
        if d.manifest.version != m.version
            || d.manifest.compatible != m.compatible
            || d.manifest.target != m.target
        {
            let makes = |m: &Manifest| {
                format!(
                    "{} {} (image {})",
                    m.compatible,
                    m.version,
                    hex::encode(m.target.digest)
                )
            };
            return Err(PublishError::DeltaMismatch {
                url: d.artifact.url.clone(),
                delta: makes(&d.manifest),
                full: makes(m),
            }
            .into());
        }
        if let Err(source) = keel_version::Version::parse(&from) {
            return Err(PublishError::FromVersion {
                url: d.artifact.url,
                from,
                source,
            }
            .into());
        }
        out.push(Delta {
            from_version: from,
            source_digest: hex::encode(src.digest),
            source_size: src.size,
            artifact: d.artifact,
        });
    }
    Ok(Release {
        version: m.version.clone(),
        compatible: m.compatible.clone(),
        full: full.artifact,
        deltas: out,
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
) -> Result<Index> {
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
            }
            .into())
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use keel_payload::{generate, GenerateOptions};
    use keel_trust::SigningKey;

    fn image(seed: u8) -> Vec<u8> {
        let mut v = vec![0u8; 64 << 10];
        for (i, b) in v.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(seed) ^ seed;
        }
        v
    }

    #[test]
    fn entries_come_from_the_payloads_and_mismatches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let mut ring = Keyring::new();
        ring.add(key.public_key().clone()).unwrap();
        let (v1, v2, v3) = (image(3), image(5), image(7));
        let write = |name: &str, src: Option<&[u8]>, tgt: &[u8], version: &str| {
            let p = generate(
                src,
                tgt,
                &key,
                &GenerateOptions::new("acme", version).level(1),
            )
            .unwrap();
            std::fs::write(dir.path().join(name), &p).unwrap();
            describe(&dir.path().join(name), name, &ring).unwrap()
        };
        let full = write("full", None, &v2, "2.0");
        let delta = write("delta", Some(&v1), &v2, "2.0");
        let r = release(full.clone(), vec![("1.0".into(), delta.clone())], 50).unwrap();
        assert_eq!(
            (r.version.as_str(), r.compatible.as_str(), r.rollout_percent),
            ("2.0", "acme", 50)
        );
        let bytes = std::fs::read(dir.path().join("delta")).unwrap();
        assert_eq!(r.deltas[0].artifact.size, bytes.len() as u64);
        assert_eq!(
            r.deltas[0].artifact.sha256,
            hex::encode(sha2::Sha256::digest(&bytes))
        );
        assert_eq!(
            r.deltas[0].source_digest,
            hex::encode(keel_payload::format::image_digest(&v1[..], v1.len() as u64).unwrap())
        );

        // A delta to another image, a delta as the full payload, a full one as a delta.
        let other = write("other", Some(&v1), &v3, "2.0");
        let e = release(full.clone(), vec![("1.0".into(), other)], 100).unwrap_err();
        assert!(e.to_string().contains("other: makes"), "{e}");
        let e = release(delta.clone(), vec![], 100).unwrap_err();
        assert!(e.to_string().contains("delta: a delta payload"), "{e}");
        let e = release(full.clone(), vec![("1.0".into(), full.clone())], 100).unwrap_err();
        assert!(e.to_string().contains("full: a full payload"), "{e}");
        assert!(release(full.clone(), vec![("x.y".into(), delta.clone())], 100).is_err());
        assert!(release(full.clone(), vec![], 101).is_err());
        // Signed by a key the ring does not hold: refused before anything is read.
        let stranger = Keyring::new();
        assert!(describe(&dir.path().join("full"), "full", &stranger).is_err());
        // Not a payload, and not a file.
        std::fs::write(dir.path().join("junk"), b"junk").unwrap();
        assert!(describe(&dir.path().join("junk"), "junk", &ring).is_err());
        assert!(describe(dir.path(), "d", &ring).is_err());

        // The last serial cannot grow: refused, not wrapped to 0.
        let last = Index {
            kind: "keel-index".into(),
            serial: u64::MAX,
            expires: 1,
            timestamp: None,
            releases: Vec::new(),
        };
        let e = add_release(Some(last), r.clone(), None, 1).unwrap_err();
        assert!(e.to_string().contains("last serial"), "{e}");
        // The index: serial grows, the same version is replaced, an older serial refused.
        let i = add_release(None, r.clone(), None, 1000).unwrap();
        assert_eq!((i.serial, i.releases.len(), i.expires), (1, 1, 1000));
        let i = add_release(Some(i), r.clone(), None, 2000).unwrap();
        assert_eq!((i.serial, i.releases.len(), i.expires), (2, 1, 2000));
        let three = write("full3", None, &v3, "3.0");
        let i = add_release(
            Some(i),
            release(three, vec![], 100).unwrap(),
            Some(10),
            3000,
        )
        .unwrap();
        assert_eq!((i.serial, i.releases.len()), (10, 2));
        let e = add_release(Some(i), r, Some(10), 4000).unwrap_err();
        assert!(e.to_string().contains("does not grow"), "{e}");
    }
}
