//! Signing through anything that can: a key in memory, a callback to an HSM or KMS, or
//! openssl run as a process; each signature bound to the kind of document it is for.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::key::{KeyId, PublicKey, SigningKey};

/// The kind of document a signature is for. The signed message is a fixed tag naming the
/// context, then the document's bytes, so a signature over one kind of document never
/// verifies as another (a payload header crafted to look like a root descriptor, say),
/// whatever magic the documents carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Context {
    /// A dm-verity root descriptor (keel-verity).
    RootDescriptor,
    /// A delta or full update payload's header and manifest (keel-payload).
    Payload,
    /// A release index (keel-fetch).
    ReleaseIndex,
    /// A trust root: the keys and threshold that sign release indexes (keel-fetch).
    TrustRoot,
}

impl Context {
    /// The tag signed before the document's bytes.
    pub fn tag(self) -> &'static [u8] {
        match self {
            Context::RootDescriptor => b"keel signature v1\0root descriptor\0",
            Context::Payload => b"keel signature v1\0payload\0",
            Context::ReleaseIndex => b"keel signature v1\0release index\0",
            Context::TrustRoot => b"keel signature v1\0trust root\0",
        }
    }

    /// The message actually signed for `bytes`: the tag, then the bytes. What an external
    /// signer (`openssl pkeyutl -sign -rawin`) must be given.
    pub fn message(self, bytes: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.tag().len() + bytes.len());
        m.extend_from_slice(self.tag());
        m.extend_from_slice(bytes);
        m
    }
}

/// Anything that holds, or can use, an Ed25519 private key.
pub trait Signer {
    /// The public half of the key it signs with.
    fn public_key(&self) -> &PublicKey;

    /// Sign exactly `message` (no context added).
    fn sign_message(&self, message: &[u8]) -> Result<[u8; 64]>;

    /// The key id its signatures carry.
    fn key_id(&self) -> KeyId {
        self.public_key().id()
    }

    /// Sign `bytes` as a document of kind `context`. The signature is checked against
    /// the public key before it is returned, so a signer using the wrong key, or a
    /// broken one, fails here rather than in the field.
    fn sign(&self, context: Context, bytes: &[u8]) -> Result<[u8; 64]> {
        let message = context.message(bytes);
        let sig = self.sign_message(&message)?;
        self.public_key()
            .verify_raw(&message, &sig)
            .map_err(|_| Error::SignerKeyMismatch(self.key_id()))?;
        Ok(sig)
    }
}

impl<S: Signer + ?Sized> Signer for &S {
    fn public_key(&self) -> &PublicKey {
        (**self).public_key()
    }
    fn sign_message(&self, message: &[u8]) -> Result<[u8; 64]> {
        (**self).sign_message(message)
    }
}

/// What a [`CallbackSigner`]'s function gives back when it fails: any error (a string
/// converts into it with `.into()`).
pub type SignError = Box<dyn std::error::Error + Send + Sync>;

/// The signing function of a [`CallbackSigner`]: the message in, the 64-byte signature
/// or an error out.
pub(crate) type SignFn = dyn Fn(&[u8]) -> std::result::Result<[u8; 64], SignError> + Send + Sync;

/// A signer whose key lives elsewhere (an HSM through PKCS#11, a cloud KMS): a function
/// gets the message and returns the signature.
pub struct CallbackSigner {
    public: PublicKey,
    sign: Box<SignFn>,
}

impl std::fmt::Debug for CallbackSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackSigner")
            .field("key_id", &self.public.id())
            .finish_non_exhaustive()
    }
}

impl CallbackSigner {
    /// A signer for `public`'s key that calls `sign`.
    pub fn new(
        public: PublicKey,
        sign: impl Fn(&[u8]) -> std::result::Result<[u8; 64], SignError> + Send + Sync + 'static,
    ) -> Self {
        CallbackSigner {
            public,
            sign: Box::new(sign),
        }
    }
}

impl Signer for CallbackSigner {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }
    fn sign_message(&self, message: &[u8]) -> Result<[u8; 64]> {
        (self.sign)(message).map_err(Error::Signer)
    }
}

/// A signer that runs `openssl pkeyutl -sign -rawin -inkey KEY`: the key may be a PEM
/// file or anything openssl's `-inkey` accepts (a provider or engine URI), so the private
/// key never enters this process.
#[derive(Debug, Clone)]
pub struct OpensslSigner {
    openssl: PathBuf,
    key: OsString,
    public: PublicKey,
}

impl OpensslSigner {
    /// Sign with `key` (what `-inkey` takes), whose public half is `public`, running the
    /// `openssl` found on the PATH.
    pub fn new(key: impl Into<OsString>, public: PublicKey) -> Self {
        OpensslSigner {
            openssl: PathBuf::from("openssl"),
            key: key.into(),
            public,
        }
    }

    /// Run this openssl binary instead.
    pub fn with_openssl(mut self, path: impl Into<PathBuf>) -> Self {
        self.openssl = path.into();
        self
    }
}

impl Signer for OpensslSigner {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }
    fn sign_message(&self, message: &[u8]) -> Result<[u8; 64]> {
        // pkeyutl's one-shot Ed25519 signing needs the message in a file.
        let dir = std::env::temp_dir();
        let mut n = 0u32;
        let (path, mut file) = loop {
            let p = dir.join(format!("keel-sign-{}-{n}", std::process::id()));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
            {
                Ok(f) => break (p, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => {
                    return Err(Error::Io {
                        context: format!("creating {}", p.display()),
                        source: e,
                    })
                }
            }
        };
        let mut run = || -> Result<std::process::Output> {
            std::io::Write::write_all(&mut file, message).map_err(|e| Error::Io {
                context: format!("writing {}", path.display()),
                source: e,
            })?;
            std::process::Command::new(&self.openssl)
                .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
                .arg(&self.key)
                .arg("-in")
                .arg(&path)
                .output()
                .map_err(|e| Error::Io {
                    context: format!("running {}", self.openssl.display()),
                    source: e,
                })
        };
        let out = run();
        let _ = std::fs::remove_file(&path);
        let out = out?;
        if !out.status.success() {
            return Err(Error::SignerProcess {
                program: self.openssl.clone(),
                reason: format!(
                    "pkeyutl failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        <[u8; 64]>::try_from(out.stdout.as_slice()).map_err(|_| Error::SignerProcess {
            program: self.openssl.clone(),
            reason: format!(
                "pkeyutl gave {} bytes, not a 64-byte Ed25519 signature",
                out.stdout.len()
            ),
        })
    }
}

/// A key in memory signs directly.
impl Signer for SigningKey {
    fn public_key(&self) -> &PublicKey {
        SigningKey::public_key(self)
    }
    fn sign_message(&self, message: &[u8]) -> Result<[u8; 64]> {
        Ok(self.sign_raw(message))
    }
}
