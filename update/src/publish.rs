//! The publisher's side of the release index (keel-release's `publish`), with the payload
//! files read here: what the index says of a payload (its version, system, the image a
//! delta starts from, its size, SHA-256 and the digest of its signed manifest) comes from the payload's signed manifest and
//! its bytes, never typed by hand.

use std::io::Read;
use std::path::Path;

use keel_payload::Manifest;
use keel_trust::Keyring;
use sha2::Digest;

pub use keel_release::publish::{
    add_release, release, release_with_store, Image, Payload, PublishError, Published,
};
use keel_release::Artifact;

use crate::error::{Error, Result};

/// What `m` says of its payload.
pub fn payload_of(m: &Manifest) -> Payload {
    let image = |i: &keel_payload::format::ImageId| Image {
        size: i.size,
        digest: i.digest,
    };
    Payload {
        compatible: m.compatible.clone(),
        version: m.version.clone(),
        target: image(&m.target),
        source: m.source.as_ref().map(image),
    }
}

/// What a published file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A payload (full, delta or bundle).
    Payload,
    /// A block store.
    Store,
}

/// [`describe`] of a file that must be of `kind`: a store given as a payload (or the
/// reverse) is refused, naming it.
pub fn describe_as(path: &Path, url: &str, keyring: &Keyring, kind: Kind) -> Result<Published> {
    let (found, p) = describe_kind(path, url, keyring)?;
    if found != kind {
        let name = |k| match k {
            Kind::Payload => "payload",
            Kind::Store => "block store",
        };
        return Err(PublishError::Kind {
            url: url.to_string(),
            found: name(found),
            expected: name(kind),
        }
        .into());
    }
    Ok(p)
}

/// Read the payload (or block store) at `path` (its signature checked under `keyring`)
/// and hash it whole, streamed: the index entry for it published at `url`. A block store
/// is told by its magic; its leaves are checked against its signed root too.
pub fn describe(path: &Path, url: &str, keyring: &Keyring) -> Result<Published> {
    describe_kind(path, url, keyring).map(|(_, p)| p)
}

fn describe_kind(path: &Path, url: &str, keyring: &Keyring) -> Result<(Kind, Published)> {
    let named = |e: std::io::Error| Error::io(format!("reading {}", path.display()), e);
    let (mut file, _) = keel_io::open_device(path, false).map_err(named)?;
    let mut magic = [0u8; 8];
    let is_store = std::io::Read::read_exact(&mut file, &mut magic).is_ok()
        && magic == keel_payload::store::STORE_MAGIC;
    let expected;
    let (payload, id) = if is_store {
        let opts = keel_payload::store::StoreOptions::new(keel_payload::ApplyOptions::new(
            keyring,
            keel_payload::VersionCheck::Unchecked,
        ));
        let s = keel_payload::store::StoreSession::open(&file, &opts)?;
        let i = s.index();
        expected = i.file_size();
        let p = Payload {
            compatible: i.compatible.clone(),
            version: i.version.clone(),
            target: Image {
                size: i.image.size,
                digest: i.image.digest,
            },
            source: None,
        };
        (p, s.id())
    } else {
        let (mut file, _) = keel_io::open_device(path, false).map_err(named)?;
        let (header, manifest, id) = keel_payload::read_manifest(&mut file, keyring)?;
        expected = (keel_payload::format::HEADER_SIZE + keel_payload::format::SIGNATURE_SIZE)
            as u64
            + header.manifest_len
            + header.data_len;
        (payload_of(&manifest), id)
    };
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
    // A file cut short (or with bytes after its data) would be pinned as it is and fail
    // on every device that needs its end.
    if size != expected {
        return Err(Error::io(
            format!("reading {}", path.display()),
            std::io::Error::other(format!(
                "{size} bytes, its header says {expected}: not a whole payload or store"
            )),
        ));
    }
    let kind = if is_store { Kind::Store } else { Kind::Payload };
    Ok((
        kind,
        Published {
            payload,
            artifact: Artifact {
                url: url.to_string(),
                size,
                sha256: hex::encode(sha.finalize()),
                manifest_sha256: Some(hex::encode(id)),
            },
        },
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use keel_payload::{generate, GenerateOptions};
    use keel_release::Index;
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
