//! Ed25519-signed root hashes.
//!
//! A root hash alone proves nothing without the parameters it was computed with: the same
//! root with another salt, block size or block count describes other data (or a shorter
//! prefix of it). Keel therefore signs a *root descriptor* that binds the root hash to
//! every parameter, and verifies the signature over the exact descriptor bytes before it
//! parses them.
//!
//! # Root descriptor, version 1 (396 bytes, integers little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `"KEELVRTY"` |
//! | 8 | 4 | descriptor version, 1 |
//! | 12 | 4 | hash type (veritysetup `--format`): 0 or 1 |
//! | 16 | 32 | algorithm name, lower case ASCII, NUL padded (`"sha256"`) |
//! | 48 | 4 | data block size |
//! | 52 | 4 | hash block size |
//! | 56 | 8 | data blocks |
//! | 64 | 8 | data size in bytes, = data blocks x data block size |
//! | 72 | 2 | salt size, 0 to 256 |
//! | 74 | 2 | root hash size, = the algorithm's digest size |
//! | 76 | 256 | salt, zero padded |
//! | 332 | 64 | root hash, zero padded |
//!
//! Every byte is checked on parse: padding must be zero and sizes consistent.
//!
//! # Signed root (492 bytes)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 396 | root descriptor |
//! | 396 | 32 | key id of the signing key |
//! | 428 | 64 | Ed25519 signature (RFC 8032, pure) over the context tag, then bytes 0..396 |
//!
//! The signed message is keel-trust's [`Context::RootDescriptor`] tag
//! (`"keel signature v1\0root descriptor\0"`) followed by the descriptor, so no other
//! kind of Keel signature can pass for a root's; `openssl pkeyutl -sign -rawin -inkey
//! KEY.pem -in MESSAGE` makes the same signature over that message. The key id is the
//! SHA-256 of the public key's DER `SubjectPublicKeyInfo`, the same as `openssl pkey -in
//! KEY.pem -pubout -outform DER | sha256sum`.

use keel_trust::{Context, KeyId, Keyring, Signer};

use crate::algorithm::MAX_DIGEST_SIZE;
use crate::error::{Error, Result};
use crate::layout::{Fields, Put, UnknownAlgorithm};
use crate::params::{VerityParams, MAX_SALT_SIZE};

/// Size of a version 1 root descriptor.
pub const DESCRIPTOR_SIZE: usize = 396;
/// Size of a signed root.
pub const SIGNED_ROOT_SIZE: usize = DESCRIPTOR_SIZE + 32 + 64;
/// The descriptor's magic.
pub const DESCRIPTOR_MAGIC: [u8; 8] = *b"KEELVRTY";

/// A root hash bound to the parameters of its tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootDescriptor {
    params: VerityParams,
    root_hash: Vec<u8>,
}

impl RootDescriptor {
    /// Bind `root_hash` to `params`.
    pub fn new(params: VerityParams, root_hash: &[u8]) -> Result<Self> {
        let ds = params.algorithm().digest_size();
        if root_hash.len() != ds {
            return Err(Error::param(
                "root hash",
                format!(
                    "{} bytes, {} has {ds}-byte digests",
                    root_hash.len(),
                    params.algorithm()
                ),
            ));
        }
        Ok(RootDescriptor {
            params,
            root_hash: root_hash.to_vec(),
        })
    }

    /// The tree parameters.
    pub fn params(&self) -> &VerityParams {
        &self.params
    }

    /// The root hash.
    pub fn root_hash(&self) -> &[u8] {
        &self.root_hash
    }

    /// The exact bytes that are signed.
    pub fn to_bytes(&self) -> [u8; DESCRIPTOR_SIZE] {
        let p = &self.params;
        let mut b = [0u8; DESCRIPTOR_SIZE];
        let mut w = Put::new(&mut b);
        w.bytes(&DESCRIPTOR_MAGIC)
            .u32(1)
            .u32(p.hash_type().as_u32())
            .padded(p.algorithm().name().as_bytes(), 32)
            .u32(p.data_block_size())
            .u32(p.hash_block_size())
            .u64(p.data_blocks())
            .u64(p.data_size())
            // At most 256 and 64 bytes, so both lengths fit their u16 fields.
            .u16(p.salt().len() as u16)
            .u16(self.root_hash.len() as u16)
            .padded(p.salt(), MAX_SALT_SIZE)
            .padded(&self.root_hash, MAX_DIGEST_SIZE);
        debug_assert_eq!(w.position(), DESCRIPTOR_SIZE);
        b
    }

    /// Decode and check every byte. Only call this on bytes whose signature has been
    /// verified ([`Keyring::verify`] does both).
    pub fn parse(b: &[u8]) -> Result<Self> {
        let mut f = Fields::new(b, "root descriptor");
        if b.len() != DESCRIPTOR_SIZE {
            return Err(f.bad(
                "length",
                0,
                format!("expected {DESCRIPTOR_SIZE} bytes, found {}", b.len()),
            ));
        }
        // Read in the order of the table at the top of this file.
        f.magic("magic", &DESCRIPTOR_MAGIC, "\"KEELVRTY\"")?;
        f.expect_u32("version", 1)?;
        let hash_type = f.hash_type()?;
        let algorithm = f.algorithm(UnknownAlgorithm::BadField)?;
        let params_at = f.offset();
        let dbs = f.u32("data_block_size")?;
        let hbs = f.u32("hash_block_size")?;
        let data_blocks = f.u64("data_blocks")?;
        let size_at = f.offset();
        let data_size = f.u64("data_size")?;
        let salt_size = f.salt_size()?;
        let root_at = f.offset();
        let root_size = usize::from(f.u16("root_hash_size")?);
        if root_size != algorithm.digest_size() {
            return Err(f.bad(
                "root_hash_size",
                root_at,
                format!(
                    "expected {} for {algorithm}, found {root_size}",
                    algorithm.digest_size()
                ),
            ));
        }
        let salt = f.padded(
            MAX_SALT_SIZE,
            salt_size,
            "salt",
            "bytes past salt_size are not zero",
        )?;
        let root = f.padded(
            MAX_DIGEST_SIZE,
            root_size,
            "root_hash",
            "bytes past the digest are not zero",
        )?;
        let params = VerityParams::new(hash_type, algorithm, dbs, hbs, data_blocks, salt.to_vec())
            .map_err(|e| f.bad("parameters", params_at, e.to_string()))?;
        if data_size != params.data_size() {
            return Err(f.bad(
                "data_size",
                size_at,
                format!(
                    "expected data blocks x block size = {}, found {data_size}",
                    params.data_size()
                ),
            ));
        }
        Ok(RootDescriptor {
            params,
            root_hash: root.to_vec(),
        })
    }
}

/// A root descriptor with the id of its signer and the signature, as stored in a file.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedRoot {
    descriptor: [u8; DESCRIPTOR_SIZE],
    key_id: KeyId,
    signature: [u8; 64],
}

impl std::fmt::Debug for SignedRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedRoot")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SignedRoot {
    /// Assemble from descriptor bytes and a signature made elsewhere over
    /// `Context::RootDescriptor.message(descriptor)` (an HSM, `openssl pkeyutl`). Nothing
    /// is checked until [`VerifyRoot::verify_root`].
    pub fn from_parts(
        descriptor: [u8; DESCRIPTOR_SIZE],
        key_id: KeyId,
        signature: [u8; 64],
    ) -> Self {
        SignedRoot {
            descriptor,
            key_id,
            signature,
        }
    }

    /// Split a stored signed root into its parts; only the length is checked here.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.len() != SIGNED_ROOT_SIZE {
            return Err(Error::BadField {
                structure: "signed root",
                field: "length",
                offset: 0,
                reason: format!("expected {SIGNED_ROOT_SIZE} bytes, found {}", b.len()),
            });
        }
        let mut descriptor = [0u8; DESCRIPTOR_SIZE];
        descriptor.copy_from_slice(&b[..DESCRIPTOR_SIZE]);
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[DESCRIPTOR_SIZE..DESCRIPTOR_SIZE + 32]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&b[DESCRIPTOR_SIZE + 32..]);
        Ok(SignedRoot {
            descriptor,
            key_id: KeyId(id),
            signature,
        })
    }

    /// The stored form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(SIGNED_ROOT_SIZE);
        v.extend_from_slice(&self.descriptor);
        v.extend_from_slice(&self.key_id.0);
        v.extend_from_slice(&self.signature);
        v
    }

    /// The signer's key id as claimed (not yet verified).
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The signed bytes.
    pub fn descriptor_bytes(&self) -> &[u8; DESCRIPTOR_SIZE] {
        &self.descriptor
    }

    /// The raw signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
}

/// A root descriptor whose signature verified, with the key that signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedRoot {
    /// The descriptor.
    pub descriptor: RootDescriptor,
    /// The key that signed it.
    pub key_id: KeyId,
}

impl VerifiedRoot {
    /// Verify a device against this signed root, as a device mapping it would: with
    /// `superblock`, the hash device's superblock at `hash_offset` must name exactly the
    /// signed parameters; then the tree on `hash` must give the signed root hash and every
    /// data block its leaf ([`crate::verify`]: the error names the first corrupt block).
    pub fn verify_device<D, H>(
        &self,
        data: &D,
        hash: &H,
        hash_offset: u64,
        superblock: bool,
        opts: &crate::BuildOptions<'_>,
    ) -> Result<()>
    where
        D: crate::ReadAt + ?Sized,
        H: crate::ReadAt + ?Sized,
    {
        let p = self.descriptor.params();
        if superblock {
            let (sb, _) = crate::open_hash_device(hash, hash_offset)?;
            if sb.params != *p {
                return Err(Error::param(
                    "superblock",
                    "the superblock's parameters differ from the signed ones",
                ));
            }
        }
        let g = crate::TreeGeometry::new(p, hash_offset, superblock)?;
        crate::verify(p, &g, data, hash, self.descriptor.root_hash(), opts)
    }
}

/// Signing root descriptors, for every [`Signer`] (a key in memory, an HSM callback,
/// openssl as a process).
pub trait SignRoot {
    /// Sign `descriptor` in the [`Context::RootDescriptor`] context.
    fn sign_root(&self, descriptor: &RootDescriptor) -> Result<SignedRoot>;
}

impl<S: Signer + ?Sized> SignRoot for S {
    fn sign_root(&self, descriptor: &RootDescriptor) -> Result<SignedRoot> {
        let bytes = descriptor.to_bytes();
        let signature = self.sign(Context::RootDescriptor, &bytes)?;
        Ok(SignedRoot {
            descriptor: bytes,
            key_id: self.key_id(),
            signature,
        })
    }
}

/// Verifying signed roots against a [`Keyring`].
pub trait VerifyRoot {
    /// Verify a stored signed root now: its length, that its key is trusted (and not
    /// expired), and the signature over the exact descriptor bytes; only then parse and
    /// check the descriptor.
    fn verify_root(&self, signed: &[u8]) -> Result<VerifiedRoot> {
        self.verify_root_at(signed, keel_trust::unix_now())
    }
    /// As [`verify_root`](Self::verify_root), with the time of the check (seconds since
    /// the epoch) for the keys' not-after dates.
    fn verify_root_at(&self, signed: &[u8], now: u64) -> Result<VerifiedRoot>;
}

impl VerifyRoot for Keyring {
    fn verify_root_at(&self, signed: &[u8], now: u64) -> Result<VerifiedRoot> {
        let s = SignedRoot::from_bytes(signed)?;
        self.verify(
            &s.key_id,
            Context::RootDescriptor,
            &s.descriptor,
            &s.signature,
            now,
        )?;
        let descriptor = RootDescriptor::parse(&s.descriptor)?;
        Ok(VerifiedRoot {
            descriptor,
            key_id: s.key_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor() -> RootDescriptor {
        let p = VerityParams::builder()
            .data_blocks(10)
            .salt(vec![1, 2, 3])
            .build()
            .unwrap();
        RootDescriptor::new(p, &[9u8; 32]).unwrap()
    }

    /// A device checked against a signed root: good; a flipped data byte names its
    /// block; a superblock naming other parameters than the signed ones is refused.
    #[test]
    fn a_device_verifies_against_its_signed_root() {
        let key = keel_trust::SigningKey::generate().unwrap();
        let mut ring = Keyring::new();
        ring.add(key.public_key().clone()).unwrap();
        let mut data = vec![0u8; 8 * 4096];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let params = VerityParams::builder()
            .data_blocks(8)
            .salt(vec![5; 4])
            .build()
            .unwrap();
        let mut hash = Vec::new();
        let opts = crate::FormatOptions::default().superblock([3u8; 16]);
        let formatted = crate::format(&params, &data, &mut hash, &opts).unwrap();
        let root = RootDescriptor::new(params, &formatted.root_hash).unwrap();
        let v = ring
            .verify_root(&key.sign_root(&root).unwrap().to_bytes())
            .unwrap();
        let build = crate::BuildOptions::default();
        v.verify_device(&data, &hash, 0, true, &build).unwrap();
        let mut bad = data.clone();
        bad[3 * 4096 + 1] ^= 1;
        assert!(matches!(
            v.verify_device(&bad, &hash, 0, true, &build),
            Err(Error::DataBlockCorrupt { block: 3, .. })
        ));
        // Signed for a salt the superblock does not name.
        let other = VerityParams::builder()
            .data_blocks(8)
            .salt(vec![6; 4])
            .build()
            .unwrap();
        let v2 = ring
            .verify_root(
                &key.sign_root(&RootDescriptor::new(other, &formatted.root_hash).unwrap())
                    .unwrap()
                    .to_bytes(),
            )
            .unwrap();
        let e = v2.verify_device(&data, &hash, 0, true, &build).unwrap_err();
        assert!(e.to_string().contains("differ from the signed"), "{e}");
    }

    #[test]
    fn descriptor_offsets_are_pinned() {
        let b = descriptor().to_bytes();
        let c = keel_io::Cursor::new(&b, 0);
        let u32_at = |_: &[u8], at| c.u32_at(at, "").unwrap();
        let u64_at = |_: &[u8], at| c.u64_at(at, "").unwrap();
        let u16_at = |_: &[u8], at| c.u16_at(at, "").unwrap();
        assert_eq!(&b[0..8], b"KEELVRTY");
        assert_eq!(u32_at(&b, 8), 1);
        assert_eq!(u32_at(&b, 12), 1);
        assert_eq!(&b[16..22], b"sha256");
        assert_eq!(u32_at(&b, 48), 4096);
        assert_eq!(u32_at(&b, 52), 4096);
        assert_eq!(u64_at(&b, 56), 10);
        assert_eq!(u64_at(&b, 64), 40960);
        assert_eq!(u16_at(&b, 72), 3);
        assert_eq!(u16_at(&b, 74), 32);
        assert_eq!(&b[76..79], &[1, 2, 3]);
        assert_eq!(&b[332..364], &[9u8; 32]);
        assert!(b[364..].iter().all(|&c| c == 0));
        assert_eq!(RootDescriptor::parse(&b).unwrap(), descriptor());
    }

    #[test]
    fn every_descriptor_field_is_checked() {
        let good = descriptor().to_bytes();
        for (at, val, field) in [
            (0usize, b'X', "magic"),
            (8, 2, "version"),
            (12, 7, "hash_type"),
            (16, b'x', "algorithm"),
            (30, b'x', "algorithm"),
            (65, 1, "data_size"),
            (73, 2, "salt_size"),
            (74, 20, "root_hash_size"),
            (80, 1, "salt"),
            (370, 1, "root_hash"),
            (49, 3, "parameters"),
        ] {
            let mut b = good;
            b[at] = val;
            match RootDescriptor::parse(&b) {
                Err(Error::BadField { field: f, .. }) => assert_eq!(f, field, "byte {at}"),
                other => panic!("byte {at}: expected {field} error, got {other:?}"),
            }
        }
    }

    #[test]
    fn sign_verify_and_rotation() {
        use keel_trust::SigningKey;
        let k1 = SigningKey::generate().unwrap();
        let k2 = SigningKey::generate().unwrap();
        let signed = k2.sign_root(&descriptor()).unwrap().to_bytes();
        let mut ring = Keyring::new();
        ring.add(k1.public_key().clone()).unwrap();
        assert!(matches!(
            ring.verify_root(&signed),
            Err(Error::Trust(keel_trust::Error::Untrusted(_)))
        ));
        ring.add(k2.public_key().clone()).unwrap();
        let v = ring.verify_root(&signed).unwrap();
        assert_eq!(v.descriptor, descriptor());
        assert_eq!(v.key_id, k2.public_key().id());
        // Any change to the signed bytes is refused before parsing.
        for at in [0usize, 56, 80, 340, 395, 430, 491] {
            let mut t = signed.clone();
            t[at] ^= 1;
            assert!(ring.verify_root(&t).is_err(), "byte {at}");
        }
        // A signature over the bare descriptor (no context) is not a root signature.
        let mut bare = signed.clone();
        let sig = k2.sign_raw(&descriptor().to_bytes());
        bare[DESCRIPTOR_SIZE + 32..].copy_from_slice(&sig);
        assert!(ring.verify_root(&bare).is_err());
        // Nor is one made for a payload over the same bytes.
        let sig = k2.sign(Context::Payload, &descriptor().to_bytes()).unwrap();
        bare[DESCRIPTOR_SIZE + 32..].copy_from_slice(&sig);
        assert!(ring.verify_root(&bare).is_err());
        assert!(ring.remove(&k2.public_key().id()));
        assert!(ring.verify_root(&signed).is_err());
    }
}
