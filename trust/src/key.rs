//! Ed25519 keys and their ids, in the PEM forms openssl reads and writes.

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _};
use sha2::Digest;

use crate::error::{Error, Result};

/// Identifies a public key: SHA-256 of its DER `SubjectPublicKeyInfo`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 32]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An Ed25519 public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
    id: KeyId,
}

impl PublicKey {
    fn from_dalek(key: ed25519_dalek::VerifyingKey) -> Result<Self> {
        let der = key.to_public_key_der().map_err(|e| Error::Key {
            action: "encoding the public key",
            source: Box::new(e),
        })?;
        let id = KeyId(sha2::Sha256::digest(der.as_bytes()).into());
        Ok(PublicKey { key, id })
    }

    /// From a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as `openssl pkey -pubout` writes.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let key =
            ed25519_dalek::VerifyingKey::from_public_key_pem(pem).map_err(|e| Error::Key {
                action: "reading an Ed25519 public key PEM",
                source: Box::new(e),
            })?;
        Self::from_dalek(key)
    }

    /// From the 32 raw key bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|e| Error::Key {
            action: "not an Ed25519 public key",
            source: Box::new(e),
        })?;
        Self::from_dalek(key)
    }

    /// The 32 raw key bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// As PEM `PUBLIC KEY`.
    pub fn to_pem(&self) -> Result<String> {
        self.key
            .to_public_key_pem(Default::default())
            .map_err(|e| Error::Key {
                action: "encoding the public key",
                source: Box::new(e),
            })
    }

    /// The key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Verify a signature over exactly `message` (strict: no malleable encodings). Keel's
    /// own documents are signed with a [`Context`](crate::Context): see
    /// [`Keyring::verify`](crate::Keyring::verify).
    pub fn verify_raw(&self, message: &[u8], signature: &[u8; 64]) -> Result<()> {
        let sig = Signature::from_bytes(signature);
        self.key
            .verify_strict(message, &sig)
            .map_err(|_| Error::BadSignature(self.id))
    }
}

/// An Ed25519 private key held in memory.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.public.id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    fn from_dalek(key: ed25519_dalek::SigningKey) -> Result<Self> {
        let public = PublicKey::from_dalek(key.verifying_key())?;
        Ok(SigningKey { key, public })
    }

    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| Error::Io {
            context: "reading the system random source".into(),
            source: e.into(),
        })?;
        Self::from_dalek(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// From PEM PKCS#8 `PRIVATE KEY`, as `openssl genpkey -algorithm ed25519` writes.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|e| Error::Key {
            action: "reading an Ed25519 PKCS#8 private key PEM",
            source: Box::new(e),
        })?;
        Self::from_dalek(key)
    }

    /// As PEM PKCS#8 `PRIVATE KEY`, the v1 form `openssl genpkey` writes (OpenSSL 3.0
    /// cannot read the v2 form that embeds the public key).
    pub fn to_pkcs8_pem(&self) -> Result<String> {
        let pair = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        };
        pair.to_pkcs8_pem(Default::default())
            .map(|s| s.to_string())
            .map_err(|e| Error::Key {
                action: "encoding the private key",
                source: Box::new(e),
            })
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Sign exactly `message` (what `openssl pkeyutl -sign -rawin` does). Keel's own
    /// documents are signed through [`Signer::sign`](crate::Signer::sign) with a [`Context`](crate::Context).
    pub fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}
