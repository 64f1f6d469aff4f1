//! keel-trust: the keys behind every signature in Keel.
//!
//! - [`KeyId`]: the SHA-256 of a public key's DER `SubjectPublicKeyInfo`, what
//!   `openssl pkey -pubout -outform DER | sha256sum` prints.
//! - [`PublicKey`] and [`SigningKey`]: Ed25519 keys in the PEM files openssl reads and
//!   writes (PKCS#8 v1 for private keys, which OpenSSL 3.0 needs).
//! - [`Signer`]: anything that can sign: a key in memory, an HSM or KMS behind a
//!   callback ([`CallbackSigner`]), or `openssl pkeyutl` run as a process
//!   ([`OpensslSigner`]). Build pipelines sign without the key in their memory.
//! - [`Context`]: every signature is over a context tag and the signed bytes, so a
//!   signature made for one kind of document can never be replayed as another.
//! - [`Keyring`]: the trusted keys, each optionally with a not-after date.
//!
//! ```
//! use keel_trust::{Context, Keyring, Signer, SigningKey};
//!
//! let key = SigningKey::generate()?;
//! let sig = key.sign(Context::Payload, b"header and manifest")?;
//! let mut ring = Keyring::new();
//! ring.add_until(key.public_key().clone(), Some(4_102_444_800))?; // until 2100
//! let now = 1_800_000_000;
//! ring.verify(&key.key_id(), Context::Payload, b"header and manifest", &sig, now)?;
//! // The same signature does not verify as another kind of document.
//! assert!(ring.verify(&key.key_id(), Context::RootDescriptor, b"header and manifest", &sig, now).is_err());
//! # Ok::<(), keel_trust::Error>(())
//! ```

mod error;
mod key;
mod keyring;
mod signer;

pub use error::{Error, Result};
pub use key::{KeyId, PublicKey, SigningKey};
pub use keyring::{end_of_day, unix_now, Keyring};
pub use signer::{CallbackSigner, Context, OpensslSigner, SignError, Signer};
