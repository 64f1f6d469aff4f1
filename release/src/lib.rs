//! keel-release: the signed release index and the trust root that signs it.
//!
//! # Envelope
//!
//! Both documents travel in one JSON envelope, so that the bytes signed are the bytes
//! verified, before any of them is parsed:
//!
//! ```json
//! { "signed": "<hex of the document's exact bytes>",
//!   "signatures": [ { "keyid": "<64 hex: SHA-256 of the key's DER>", "sig": "<128 hex>" } ] }
//! ```
//!
//! Each signature is keel-trust's Ed25519 signature in the document's context
//! ([`Context::TrustRoot`] or [`Context::ReleaseIndex`]) over exactly the decoded bytes.
//! Only once a threshold of distinct trusted keys has signed are the bytes parsed.
//!
//! # Trust root
//!
//! ```json
//! { "type": "keel-root", "version": 1, "expires": 1893456000, "threshold": 2,
//!   "keys": ["<64 hex: raw Ed25519 public key>", ...] }
//! ```
//!
//! The first root is shipped in the image ([`TrustedRoot::initial`]: it must be signed by
//! its own threshold). A new root ([`TrustedRoot::rotate`]) must have the next version and
//! be signed by the threshold of the old root's keys and by its own (as TUF's roots).
//!
//! # Release index
//!
//! ```json
//! { "type": "keel-index", "serial": 42, "expires": 1767225600, "timestamp": 1766620800,
//!   "releases": [ { "version": "2.1", "compatible": "acme-os",
//!       "full": { "url": "...", "size": 123, "sha256": "<hex>", "manifest_sha256": "<hex>" },
//!       "deltas": [ { "from_version": "2.0", "source_digest": "<hex>", "source_size": 123,
//!                     "url": "...", "size": 45, "sha256": "<hex>",
//!                     "manifest_sha256": "<hex>" } ],
//!       "store": { "url": "...", "size": 67, "sha256": "<hex>", "manifest_sha256": "<hex>" },
//!       "rollout_percent": 100 } ] }
//! ```
//!
//! [`TrustedRoot::verify_index`] refuses an index signed below the root's threshold, one
//! whose serial is below the last accepted (rollback; the same index again is fine, so a
//! failed install can be retried), and one past its expiry
//! (freeze). [`Index::choose`] picks the newest release for the system: the delta from
//! the booted slot's image when there is one, else the full payload (and the block store,
//! when the release has one, for a device that fetches only the blocks it lacks); a downgrade only
//! when allowed; a staged release only on the machines its rollout includes.

#![doc = include_str!("../README.md")]

pub mod publish;

use std::collections::HashSet;

use keel_trust::{Context, KeyId, PublicKey, Signer};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// What can go wrong with a root or an index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The envelope or document does not parse (the reason names the field).
    #[error("{what}: {reason}")]
    Malformed {
        /// "envelope", "trust root", "release index".
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Fewer distinct trusted keys signed than the threshold asks.
    #[error("{what}: signed by {valid} trusted key(s), {threshold} needed")]
    Threshold {
        /// The document.
        what: &'static str,
        /// Valid signatures from distinct trusted keys.
        valid: usize,
        /// The threshold.
        threshold: usize,
    },
    /// The serial is below the last accepted one: an old index replayed.
    #[error("release index serial {serial} is below the last accepted {last} (rollback)")]
    Rollback {
        /// This index's serial.
        serial: u64,
        /// The last accepted.
        last: u64,
    },
    /// The document's expiry has passed: an attacker may be freezing the device on it.
    #[error("{what} expired at {expires} (unix time), it is now {now}")]
    Expired {
        /// The document.
        what: &'static str,
        /// Its expiry.
        expires: u64,
        /// The time of the check.
        now: u64,
    },
    /// A new root that is not the next version.
    #[error("trust root version {found}: expected {expected}")]
    RootVersion {
        /// What it says.
        found: u64,
        /// The current version + 1.
        expected: u64,
    },
}

type Result<T> = std::result::Result<T, IndexError>;

/// The largest envelope read (an index lists releases, not files).
pub const MAX_ENVELOPE: usize = 4 << 20;

#[derive(Serialize, Deserialize)]
struct Envelope {
    signed: String,
    signatures: Vec<Sig>,
}

#[derive(Serialize, Deserialize)]
struct Sig {
    keyid: String,
    sig: String,
}

/// A trust root document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    /// `keel-root`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Grows by one with each rotation.
    pub version: u64,
    /// Unix time after which the root is not trusted.
    pub expires: u64,
    /// Signatures needed.
    pub threshold: usize,
    /// Raw Ed25519 public keys, hex.
    pub keys: Vec<String>,
}

/// One payload to fetch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Where it is (absolute, or relative to the index's URL).
    pub url: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, hex (for mirrors and tools that check whole files; a Keel agent
    /// checks [`Artifact::manifest_sha256`] instead).
    pub sha256: String,
    /// The SHA-256 of its signed header and manifest (keel-payload's payload id), hex.
    /// The manifest binds every data byte by its digest, so this pins the whole payload:
    /// an agent checks it as soon as the manifest is read and streams the rest once,
    /// without a whole-file digest to keep across a resumed download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
}

/// A delta payload and the image it applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delta {
    /// The version it starts from.
    pub from_version: String,
    /// The digest of the image it starts from (keel-payload's image digest), hex.
    pub source_digest: String,
    /// The size of that image in bytes (the digest covers exactly these bytes).
    pub source_size: u64,
    /// The payload.
    #[serde(flatten)]
    pub artifact: Artifact,
}

/// One release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Its version (dotted numbers).
    pub version: String,
    /// The system it is for.
    pub compatible: String,
    /// The full payload.
    pub full: Artifact,
    /// Delta payloads from earlier images.
    #[serde(default)]
    pub deltas: Vec<Delta>,
    /// The image's block store (keel-payload's `store`): a device whose image has no delta
    /// fetches only the blocks it lacks from it. Its `manifest_sha256` pins the store's
    /// signed header and index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<Artifact>,
    /// The share of machines offered it, 0 to 100 (default 100).
    #[serde(default = "all")]
    pub rollout_percent: u8,
}

fn all() -> u8 {
    100
}

/// A release index document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// `keel-index`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Grows with every index published.
    pub serial: u64,
    /// Unix time after which the index is not trusted.
    pub expires: u64,
    /// Unix time the index was published. A device keeps the newest it accepted as a
    /// floor for its clock: a clock set back before it (to 1970) is refused rather than
    /// trusted to judge expiry dates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// The releases.
    pub releases: Vec<Release>,
}

impl Root {
    /// The first root (version 1) of `keys`, `threshold` of them needed to sign, trusted
    /// until `expires` (Unix time).
    pub fn first(keys: &[&PublicKey], threshold: usize, expires: u64) -> Root {
        Root {
            kind: "keel-root".into(),
            version: 1,
            expires,
            threshold,
            keys: keys.iter().map(|k| hex::encode(k.to_bytes())).collect(),
        }
    }

    /// The document signed by `signers` into an envelope ([`TrustedRoot::initial`]
    /// accepts it when its own threshold of its keys are among them).
    pub fn sign(&self, signers: &[&dyn Signer]) -> std::result::Result<Vec<u8>, keel_trust::Error> {
        sign_document(self, Context::TrustRoot, signers)
    }
}

impl Index {
    /// The document signed by `signers` into an envelope, as a device checks it against
    /// its trusted root ([`TrustedRoot::verify_index`]).
    pub fn sign(&self, signers: &[&dyn Signer]) -> std::result::Result<Vec<u8>, keel_trust::Error> {
        sign_document(self, Context::ReleaseIndex, signers)
    }
}

fn sign_document<T: Serialize>(
    doc: &T,
    context: Context,
    signers: &[&dyn Signer],
) -> std::result::Result<Vec<u8>, keel_trust::Error> {
    let bytes = serde_json::to_vec(doc).map_err(|e| keel_trust::Error::Signer(Box::new(e)))?;
    sign_envelope(&bytes, context, signers)
}

/// What the device should fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The release's version.
    pub version: String,
    /// The payload to fetch.
    pub artifact: Artifact,
    /// Whether it is a delta from the booted image.
    pub delta: bool,
    /// When no delta fits: the release's block store, if the index names one. A device
    /// that can install a single image from it fetches only the blocks it lacks instead
    /// of `artifact` (the full payload), which stays the fallback.
    pub store: Option<Artifact>,
}

/// Sign `document` with each of `signers` in `context` into an envelope.
pub fn sign_envelope(
    document: &[u8],
    context: Context,
    signers: &[&dyn Signer],
) -> std::result::Result<Vec<u8>, keel_trust::Error> {
    let mut signatures = Vec::new();
    for s in signers {
        let sig = s.sign(context, document)?;
        signatures.push(Sig {
            keyid: s.key_id().to_string(),
            sig: hex::encode(sig),
        });
    }
    let env = Envelope {
        signed: hex::encode(document),
        signatures,
    };
    serde_json::to_vec_pretty(&env).map_err(|e| keel_trust::Error::Signer(Box::new(e)))
}

/// Signatures of an envelope: the key that says it signed, and the signature.
type Signatures = Vec<(KeyId, [u8; 64])>;

/// The envelope's document bytes and signatures, nothing of the document parsed.
fn open_envelope(bytes: &[u8]) -> Result<(Vec<u8>, Signatures)> {
    let bad = |reason: String| IndexError::Malformed {
        what: "envelope",
        reason,
    };
    if bytes.len() > MAX_ENVELOPE {
        return Err(bad(format!(
            "{} bytes, at most {MAX_ENVELOPE}",
            bytes.len()
        )));
    }
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let doc = hex::decode(&env.signed).map_err(|e| bad(format!("signed: {e}")))?;
    let mut sigs = Vec::new();
    for (i, s) in env.signatures.iter().enumerate() {
        let mut id = [0u8; 32];
        hex::decode_to_slice(&s.keyid, &mut id)
            .map_err(|e| bad(format!("signatures[{i}].keyid: {e}")))?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&s.sig, &mut sig)
            .map_err(|e| bad(format!("signatures[{i}].sig: {e}")))?;
        sigs.push((KeyId(id), sig));
    }
    Ok((doc, sigs))
}

/// How many distinct `keys` made a valid signature over `doc` in `context`.
fn count_valid(
    keys: &[PublicKey],
    context: Context,
    doc: &[u8],
    sigs: &[(KeyId, [u8; 64])],
) -> usize {
    let message = context.message(doc);
    let mut seen: HashSet<KeyId> = HashSet::new();
    for (id, sig) in sigs {
        if let Some(k) = keys.iter().find(|k| k.id() == *id) {
            if k.verify_raw(&message, sig).is_ok() {
                seen.insert(*id);
            }
        }
    }
    seen.len()
}

fn root_keys(r: &Root) -> Result<Vec<PublicKey>> {
    let bad = |reason: String| IndexError::Malformed {
        what: "trust root",
        reason,
    };
    if r.kind != "keel-root" {
        return Err(bad(format!("type {:?}, expected \"keel-root\"", r.kind)));
    }
    let mut keys = Vec::new();
    for (i, k) in r.keys.iter().enumerate() {
        let mut raw = [0u8; 32];
        hex::decode_to_slice(k, &mut raw).map_err(|e| bad(format!("keys[{i}]: {e}")))?;
        keys.push(PublicKey::from_bytes(&raw).map_err(|e| bad(format!("keys[{i}]: {e}")))?);
    }
    let distinct: HashSet<KeyId> = keys.iter().map(PublicKey::id).collect();
    if r.threshold == 0 || r.threshold > distinct.len() {
        return Err(bad(format!(
            "threshold {} of {} distinct keys",
            r.threshold,
            distinct.len()
        )));
    }
    Ok(keys)
}

/// A trust root whose signatures checked out.
#[derive(Clone, Debug)]
pub struct TrustedRoot {
    root: Root,
    keys: Vec<PublicKey>,
}

impl TrustedRoot {
    /// The root shipped with the system: signed by its own threshold, not expired.
    pub fn initial(envelope: &[u8], now: u64) -> Result<TrustedRoot> {
        let (doc, sigs) = open_envelope(envelope)?;
        // The keys are in the document: it is parsed to learn them, then nothing in it
        // is trusted before their threshold has signed it.
        accept(&doc, &sigs, now)
    }

    /// Move to a new root: the next version, signed by this root's threshold of its keys
    /// and by the new root's threshold of its own.
    pub fn rotate(&self, envelope: &[u8], now: u64) -> Result<TrustedRoot> {
        let (doc, sigs) = open_envelope(envelope)?;
        // The old keys vouch for the bytes before they are parsed.
        let (keys, threshold) = (&self.keys, self.root.threshold);
        check_threshold(
            "trust root",
            keys,
            threshold,
            Context::TrustRoot,
            &doc,
            &sigs,
        )?;
        let new = accept(&doc, &sigs, now)?;
        if new.root.version != self.root.version + 1 {
            return Err(IndexError::RootVersion {
                found: new.root.version,
                expected: self.root.version + 1,
            });
        }
        Ok(new)
    }

    /// The root document.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// Verify an index: the threshold of this root's keys signed exactly these bytes, its
    /// serial is not below `last_serial` (the last one this device accepted), it has not
    /// expired. The caller stores the serial of the index it accepts.
    pub fn verify_index(
        &self,
        envelope: &[u8],
        last_serial: Option<u64>,
        now: u64,
    ) -> Result<Index> {
        check_expiry("trust root", self.root.expires, now)?;
        let (doc, sigs) = open_envelope(envelope)?;
        check_threshold(
            "release index",
            &self.keys,
            self.root.threshold,
            Context::ReleaseIndex,
            &doc,
            &sigs,
        )?;
        let index: Index = parse(&doc, "release index")?;
        if index.kind != "keel-index" {
            return Err(IndexError::Malformed {
                what: "release index",
                reason: format!("type {:?}, expected \"keel-index\"", index.kind),
            });
        }
        if let Some(last) = last_serial.filter(|&l| index.serial < l) {
            return Err(IndexError::Rollback {
                serial: index.serial,
                last,
            });
        }
        check_expiry("release index", index.expires, now)?;
        index.check_digests()?;
        Ok(index)
    }
}

impl Artifact {
    /// [`Artifact::sha256`] as bytes (`None` if it is not 64 hex digits, which
    /// [`TrustedRoot::verify_index`] refuses).
    pub fn digest(&self) -> Option<[u8; 32]> {
        let mut d = [0u8; 32];
        hex::decode_to_slice(&self.sha256, &mut d).ok().map(|()| d)
    }

    /// [`Artifact::manifest_sha256`] as bytes (`None` when the index names none; one that
    /// is not 64 hex digits is refused by [`TrustedRoot::verify_index`]).
    pub fn manifest_digest(&self) -> Option<[u8; 32]> {
        let mut d = [0u8; 32];
        let h = self.manifest_sha256.as_deref()?;
        hex::decode_to_slice(h, &mut d).ok().map(|()| d)
    }

    /// Each digest is 64 hex digits, or the field named in `at` is.
    fn check_digests(&self, at: &str) -> Result<()> {
        check_sha(&format!("{at}.sha256"), &self.sha256)?;
        match &self.manifest_sha256 {
            Some(m) => check_sha(&format!("{at}.manifest_sha256"), m),
            None => Ok(()),
        }
    }
}

/// `value` is 64 hex digits, or an error naming `field`.
fn check_sha(field: &str, value: &str) -> Result<()> {
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    Err(IndexError::Malformed {
        what: "release index",
        reason: format!("{field}: {value:?} is not a SHA-256 (64 hex digits)"),
    })
}

impl Index {
    /// Every digest is 64 hex digits: one that is not is named by its place.
    fn check_digests(&self) -> Result<()> {
        for (i, r) in self.releases.iter().enumerate() {
            r.full.check_digests(&format!("releases[{i}].full"))?;
            for (j, d) in r.deltas.iter().enumerate() {
                let at = format!("releases[{i}].deltas[{j}]");
                d.artifact.check_digests(&at)?;
                check_sha(&format!("{at}.source_digest"), &d.source_digest)?;
            }
        }
        Ok(())
    }
}

/// A root document signed by its own threshold and not expired.
fn accept(doc: &[u8], sigs: &Signatures, now: u64) -> Result<TrustedRoot> {
    let root: Root = parse(doc, "trust root")?;
    let keys = root_keys(&root)?;
    check_threshold(
        "trust root",
        &keys,
        root.threshold,
        Context::TrustRoot,
        doc,
        sigs,
    )?;
    check_expiry("trust root", root.expires, now)?;
    Ok(TrustedRoot { root, keys })
}

fn parse<T: for<'de> Deserialize<'de>>(doc: &[u8], what: &'static str) -> Result<T> {
    serde_json::from_slice(doc).map_err(|e| IndexError::Malformed {
        what,
        reason: e.to_string(),
    })
}

fn check_threshold(
    what: &'static str,
    keys: &[PublicKey],
    threshold: usize,
    context: Context,
    doc: &[u8],
    sigs: &[(KeyId, [u8; 64])],
) -> Result<()> {
    let valid = count_valid(keys, context, doc, sigs);
    if valid < threshold {
        return Err(IndexError::Threshold {
            what,
            valid,
            threshold,
        });
    }
    Ok(())
}

fn check_expiry(what: &'static str, expires: u64, now: u64) -> Result<()> {
    if now > expires {
        return Err(IndexError::Expired { what, expires, now });
    }
    Ok(())
}

impl Index {
    /// The release for this machine: the newest release for `compatible` above the
    /// installed version (or any other version when `allow_downgrade`), offered to this
    /// machine by its rollout; its delta from `source_digest` when the index has one,
    /// else its full payload. `None`: nothing to do.
    pub fn choose(
        &self,
        compatible: &str,
        installed: &str,
        source_digest: Option<&[u8; 32]>,
        machine_id: &str,
        allow_downgrade: bool,
    ) -> Option<Choice> {
        let cmp = |a: &str, b: &str| keel_version::Version::compare(a, b).ok();
        let mut candidates: Vec<&Release> = self
            .releases
            .iter()
            .filter(|r| r.compatible == compatible)
            .filter(|r| match cmp(&r.version, installed) {
                Some(std::cmp::Ordering::Greater) => true,
                Some(std::cmp::Ordering::Less) => allow_downgrade,
                _ => false,
            })
            .filter(|r| in_rollout(machine_id, &r.version, r.rollout_percent))
            .collect();
        candidates.sort_by(|a, b| cmp(&a.version, &b.version).unwrap_or(std::cmp::Ordering::Equal));
        // The newest on offer (with downgrades allowed, that may be below the installed).
        let r = candidates.last()?;
        let delta = source_digest.and_then(|d| {
            r.deltas.iter().find(|x| {
                x.from_version == installed && x.source_digest.eq_ignore_ascii_case(&hex::encode(d))
            })
        });
        Some(match delta {
            Some(d) => Choice {
                version: r.version.clone(),
                artifact: d.artifact.clone(),
                delta: true,
                store: None,
            },
            None => Choice {
                version: r.version.clone(),
                artifact: r.full.clone(),
                delta: false,
                store: r.store.clone(),
            },
        })
    }
}

/// Whether `machine_id` is among the `percent` of machines offered `version`: the first
/// bytes of SHA-256(machine id, version) decide, so each release picks its own machines
/// and a machine's answer does not change between checks.
pub fn in_rollout(machine_id: &str, version: &str, percent: u8) -> bool {
    if percent >= 100 {
        return true;
    }
    let h = sha2::Sha256::new()
        .chain_update(machine_id.as_bytes())
        .chain_update([0u8])
        .chain_update(version.as_bytes())
        .finalize();
    u16::from_be_bytes([h[0], h[1]]) % 100 < u16::from(percent)
}

/// `url` as given, or relative to the index's URL (`payloads/x` next to
/// `https://host/os/index.json` is `https://host/os/payloads/x`).
pub fn resolve(index_url: &str, url: &str) -> String {
    if url.contains("://") {
        return url.to_string();
    }
    match index_url.rfind('/') {
        Some(i) => format!("{}/{}", &index_url[..i], url.trim_start_matches('/')),
        None => url.to_string(),
    }
}
