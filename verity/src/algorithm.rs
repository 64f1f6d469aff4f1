//! Hash algorithms and the salted block hash of both dm-verity formats.

use crate::error::{Error, Result};
use sha2::Digest;

/// The on-disk hash format (veritysetup `--format`, the kernel table's version field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashType {
    /// Format 0, the original Chrome OS layout: `H(block || salt)`, digests packed.
    ChromeOs = 0,
    /// Format 1, the default: `H(salt || block)`, each digest padded to a power of two.
    Normal = 1,
}

impl HashType {
    /// The number veritysetup and the kernel use.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// From veritysetup's number.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(HashType::ChromeOs),
            1 => Some(HashType::Normal),
            _ => None,
        }
    }
}

/// A digest algorithm for the hash tree, named as veritysetup and the kernel name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HashAlgorithm {
    /// SHA-1 (20-byte digests).
    Sha1,
    /// SHA-224 (28-byte digests).
    Sha224,
    /// SHA-256 (32-byte digests), veritysetup's default.
    Sha256,
    /// SHA-384 (48-byte digests).
    Sha384,
    /// SHA-512 (64-byte digests).
    Sha512,
}

/// The largest digest of any supported algorithm.
pub const MAX_DIGEST_SIZE: usize = 64;

impl HashAlgorithm {
    /// Every supported algorithm.
    pub const ALL: [HashAlgorithm; 5] = [
        HashAlgorithm::Sha1,
        HashAlgorithm::Sha224,
        HashAlgorithm::Sha256,
        HashAlgorithm::Sha384,
        HashAlgorithm::Sha512,
    ];

    /// The name used by veritysetup, the superblock and the kernel table.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha1 => "sha1",
            HashAlgorithm::Sha224 => "sha224",
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha384 => "sha384",
            HashAlgorithm::Sha512 => "sha512",
        }
    }

    /// Parse a name as veritysetup accepts it (case-insensitive).
    pub fn from_name(name: &str) -> Result<Self> {
        let lower = name.to_ascii_lowercase();
        HashAlgorithm::ALL
            .into_iter()
            .find(|a| a.name() == lower)
            .ok_or_else(|| Error::UnsupportedAlgorithm {
                name: name.to_string(),
            })
    }

    /// The algorithm a 32-byte name field names (veritysetup's superblock, Keel's root
    /// descriptor): 1 to 31 bytes, NUL-terminated and NUL-padded, in the lower case
    /// veritysetup writes (any other spelling would be written back differently).
    pub(crate) fn from_name_field(field: &[u8]) -> std::result::Result<Self, NameFieldError> {
        let len = field.iter().position(|&c| c == 0).unwrap_or(field.len());
        if len == 0 || len >= field.len() || field[len..].iter().any(|&c| c != 0) {
            return Err(NameFieldError::Malformed(
                "expected a NUL-terminated, NUL-padded name of 1 to 31 bytes".into(),
            ));
        }
        let name = std::str::from_utf8(&field[..len])
            .map_err(|_| NameFieldError::Malformed("name is not ASCII".into()))?;
        let algorithm = HashAlgorithm::from_name(name).map_err(NameFieldError::Unknown)?;
        if algorithm.name() != name {
            return Err(NameFieldError::Malformed(format!(
                "{name:?}: expected the lower-case name {:?}",
                algorithm.name()
            )));
        }
        Ok(algorithm)
    }

    /// Digest size in bytes.
    pub fn digest_size(self) -> usize {
        match self {
            HashAlgorithm::Sha1 => 20,
            HashAlgorithm::Sha224 => 28,
            HashAlgorithm::Sha256 => 32,
            HashAlgorithm::Sha384 => 48,
            HashAlgorithm::Sha512 => 64,
        }
    }

    /// Plain digest of `data` (no salt), into a fixed buffer.
    pub fn digest(self, data: &[u8]) -> Digest64 {
        let mut out = Digest64::new(self.digest_size());
        match self {
            HashAlgorithm::Sha1 => out.fill(&sha1::Sha1::digest(data)),
            HashAlgorithm::Sha224 => out.fill(&sha2::Sha224::digest(data)),
            HashAlgorithm::Sha256 => out.fill(&sha2::Sha256::digest(data)),
            HashAlgorithm::Sha384 => out.fill(&sha2::Sha384::digest(data)),
            HashAlgorithm::Sha512 => out.fill(&sha2::Sha512::digest(data)),
        }
        out
    }
}

impl std::fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for HashAlgorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        HashAlgorithm::from_name(s)
    }
}

/// A digest of up to 64 bytes held without allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest64 {
    bytes: [u8; MAX_DIGEST_SIZE],
    len: usize,
}

impl Digest64 {
    pub(crate) fn new(len: usize) -> Self {
        Digest64 {
            bytes: [0; MAX_DIGEST_SIZE],
            len,
        }
    }

    fn fill(&mut self, d: &[u8]) {
        self.bytes[..self.len].copy_from_slice(d);
    }

    /// A digest from its bytes; `None` if longer than 64 bytes.
    pub fn from_slice(d: &[u8]) -> Option<Self> {
        if d.len() > MAX_DIGEST_SIZE {
            return None;
        }
        let mut out = Digest64::new(d.len());
        out.fill(d);
        Some(out)
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Debug for Digest64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest64({})", hex::encode(self.as_bytes()))
    }
}

impl AsRef<[u8]> for Digest64 {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// The salted block hash of a tree: `H(salt || block)` for format 1, `H(block || salt)` for
/// format 0. The salt prefix is absorbed once; each block clones that state, so there is no
/// per-block context set-up or allocation.
#[derive(Clone, Debug)]
pub(crate) enum SaltedHasher {
    Sha1(Salted<sha1::Sha1>),
    Sha224(Salted<sha2::Sha224>),
    Sha256(Salted<sha2::Sha256>, Option<Sha256Multi>),
    Sha384(Salted<sha2::Sha384>),
    Sha512(Salted<sha2::Sha512>),
}

#[derive(Clone, Debug)]
pub(crate) struct Salted<D> {
    base: D,
    suffix: Vec<u8>,
}

impl<D: Digest + Clone> Salted<D> {
    fn new(hash_type: HashType, salt: &[u8]) -> Self {
        match hash_type {
            HashType::Normal => Salted {
                base: D::new_with_prefix(salt),
                suffix: Vec::new(),
            },
            HashType::ChromeOs => Salted {
                base: D::new(),
                suffix: salt.to_vec(),
            },
        }
    }

    #[inline]
    fn hash_into(&self, block: &[u8], out: &mut [u8]) {
        let mut h = self.base.clone();
        h.update(block);
        if !self.suffix.is_empty() {
            h.update(&self.suffix);
        }
        out.copy_from_slice(&h.finalize());
    }

    /// Hash consecutive blocks of `input`, writing digest `i` at `out[i * stride..]`.
    #[inline]
    fn hash_many(&self, input: &[u8], block_size: usize, out: &mut [u8], stride: usize) {
        let ds = <D as Digest>::output_size();
        for (block, slot) in input.chunks_exact(block_size).zip(out.chunks_mut(stride)) {
            self.hash_into(block, &mut slot[..ds]);
        }
    }
}

macro_rules! dispatch {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            SaltedHasher::Sha1($s) => $e,
            SaltedHasher::Sha224($s) => $e,
            SaltedHasher::Sha256($s, _) => $e,
            SaltedHasher::Sha384($s) => $e,
            SaltedHasher::Sha512($s) => $e,
        }
    };
}

impl SaltedHasher {
    pub(crate) fn new(algorithm: HashAlgorithm, hash_type: HashType, salt: &[u8]) -> Self {
        match algorithm {
            HashAlgorithm::Sha1 => SaltedHasher::Sha1(Salted::new(hash_type, salt)),
            HashAlgorithm::Sha224 => SaltedHasher::Sha224(Salted::new(hash_type, salt)),
            HashAlgorithm::Sha256 => SaltedHasher::Sha256(
                Salted::new(hash_type, salt),
                Sha256Multi::new(hash_type, salt),
            ),
            HashAlgorithm::Sha384 => SaltedHasher::Sha384(Salted::new(hash_type, salt)),
            HashAlgorithm::Sha512 => SaltedHasher::Sha512(Salted::new(hash_type, salt)),
        }
    }

    /// Salted digest of one block; `out` must be exactly the digest size.
    pub(crate) fn hash_into(&self, block: &[u8], out: &mut [u8]) {
        dispatch!(self, s => s.hash_into(block, out))
    }

    /// Salted digest of one block, returned by value.
    pub(crate) fn hash(&self, block: &[u8], digest_size: usize) -> Digest64 {
        let mut d = Digest64::new(digest_size);
        self.hash_into(block, &mut d.bytes[..digest_size]);
        d
    }

    /// Salted digests of two blocks of one size, two lanes at once where the CPU has
    /// SHA-256 instructions; each `out` exactly the digest size.
    pub(crate) fn hash_pair(&self, a: &[u8], b: &[u8], out_a: &mut [u8], out_b: &mut [u8]) {
        if let SaltedHasher::Sha256(_, Some(pairs)) = self {
            if pairs.shani && a.len() == b.len() {
                return crate::sha256x2::hash2(
                    &pairs.state,
                    pairs.absorbed,
                    &pairs.prefix,
                    &pairs.suffix,
                    a,
                    b,
                    out_a,
                    out_b,
                );
            }
        }
        self.hash_into(a, out_a);
        self.hash_into(b, out_b);
    }

    /// Hash `input.len() / block_size` blocks into slots of `stride` bytes in `out`;
    /// the algorithm is dispatched once for the whole run.
    pub(crate) fn hash_many(&self, input: &[u8], block_size: usize, out: &mut [u8], stride: usize) {
        if let SaltedHasher::Sha256(one, Some(pairs)) = self {
            return pairs.hash_many(one, input, block_size, out, stride);
        }
        dispatch!(self, s => s.hash_many(input, block_size, out, stride))
    }
}

/// The digests a tree's leaves hold: each data block hashed with the tree's algorithm,
/// salt and format, as the kernel hashes it when it reads the block. For checking single
/// blocks against a [`HashTree`](crate::HashTree)'s leaves (blocks fetched or copied one
/// by one) and for the leaves of data that has no tree on disk.
#[derive(Clone, Debug)]
pub struct BlockHasher {
    inner: SaltedHasher,
    block_size: usize,
    digest_size: usize,
}

impl BlockHasher {
    /// The hasher of the tree `params` describe.
    pub fn new(params: &crate::VerityParams) -> Self {
        BlockHasher {
            inner: SaltedHasher::new(params.algorithm(), params.hash_type(), params.salt()),
            block_size: params.data_block_size() as usize,
            digest_size: params.algorithm().digest_size(),
        }
    }

    /// The digest of one data block (`block` is the data block size).
    pub fn hash(&self, block: &[u8]) -> Digest64 {
        self.inner.hash(block, self.digest_size)
    }

    /// The digests of `input.len() / block size` whole blocks, packed one after another
    /// in `out` (digest size each), several blocks at a time where the CPU allows.
    pub fn hash_many(&self, input: &[u8], out: &mut [u8]) {
        let n = (input.len() / self.block_size).min(out.len() / self.digest_size);
        self.inner.hash_many(
            &input[..n * self.block_size],
            self.block_size,
            &mut out[..n * self.digest_size],
            self.digest_size,
        );
    }

    /// The digest size in bytes.
    pub fn digest_size(&self) -> usize {
        self.digest_size
    }
}

/// Plain SHA-256 of each `piece`-byte piece of `input` in turn (the last one may be
/// shorter), one digest per piece in `out`: sixteen pieces at once with AVX-512, two with
/// the SHA extensions, as a tree's blocks are hashed. For the digests of equal chunks of
/// large data (a payload's image digest hashes its 1 MiB chunks) at a multiple of one
/// stream's speed.
///
/// ```
/// use sha2::{Digest, Sha256};
/// let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
/// let mut out = vec![[0u8; 32]; data.len().div_ceil(4096)];
/// keel_verity::sha256_pieces(&data, 4096, &mut out);
/// for (d, piece) in out.iter().zip(data.chunks(4096)) {
///     assert_eq!(d[..], Sha256::digest(piece)[..]);
/// }
/// ```
///
/// # Panics
///
/// If `piece` is 0 or `out` does not have one digest per piece.
pub fn sha256_pieces(input: &[u8], piece: usize, out: &mut [[u8; 32]]) {
    assert!(piece > 0 && out.len() == input.len().div_ceil(piece));
    let whole = input.len() / piece;
    let hasher = SaltedHasher::new(HashAlgorithm::Sha256, HashType::Normal, &[]);
    let (head, tail) = out.split_at_mut(whole);
    hasher.hash_many(&input[..whole * piece], piece, head.as_flattened_mut(), 32);
    if let Some(last) = tail.first_mut() {
        hasher.hash_into(&input[whole * piece..], last);
    }
}

/// Salted SHA-256 of many blocks at once: sixteen with AVX-512 ([`crate::sha256x16`]), two
/// with the SHA extensions ([`crate::sha256x2`]).
#[derive(Clone, Debug)]
pub(crate) struct Sha256Multi {
    /// State after the whole 64-byte chunks of a leading salt.
    state: [u32; 8],
    absorbed: u64,
    /// The rest of a leading salt (format 1).
    prefix: Vec<u8>,
    /// A trailing salt (format 0).
    suffix: Vec<u8>,
    avx512: bool,
    shani: bool,
}

impl Sha256Multi {
    fn new(hash_type: HashType, salt: &[u8]) -> Option<Self> {
        let avx512 = crate::sha256x16::available();
        let shani = crate::sha256x2::available();
        if !avx512 && !shani {
            return None;
        }
        let mut state = crate::sha256x2::IV;
        let (absorbed, prefix, suffix) = match hash_type {
            HashType::Normal => {
                let (whole, rest) = salt.as_chunks::<64>();
                crate::sha256x2::compress_one(&mut state, whole);
                ((whole.len() * 64) as u64, rest.to_vec(), Vec::new())
            }
            HashType::ChromeOs => (0, Vec::new(), salt.to_vec()),
        };
        Some(Sha256Multi {
            state,
            absorbed,
            prefix,
            suffix,
            avx512,
            shani,
        })
    }

    fn hash_many(
        &self,
        one: &Salted<sha2::Sha256>,
        input: &[u8],
        block_size: usize,
        out: &mut [u8],
        stride: usize,
    ) {
        let count = (input.len() / block_size).min(out.len().div_ceil(stride));
        let mut i = 0;
        if self.avx512 {
            while count - i >= crate::sha256x16::LANES {
                let done = crate::sha256x16::hash16(
                    &self.state,
                    self.absorbed,
                    &self.prefix,
                    &self.suffix,
                    &input[i * block_size..],
                    block_size,
                    &mut out[i * stride..],
                    stride,
                );
                if !done {
                    break;
                }
                i += crate::sha256x16::LANES;
            }
        }
        while self.shani && count - i >= 2 {
            let (sa, sb) = out[i * stride..].split_at_mut(stride);
            crate::sha256x2::hash2(
                &self.state,
                self.absorbed,
                &self.prefix,
                &self.suffix,
                &input[i * block_size..(i + 1) * block_size],
                &input[(i + 1) * block_size..(i + 2) * block_size],
                &mut sa[..32],
                &mut sb[..32],
            );
            i += 2;
        }
        for j in i..count {
            one.hash_into(
                &input[j * block_size..(j + 1) * block_size],
                &mut out[j * stride..j * stride + 32],
            );
        }
    }
}

/// Why a name field does not give an algorithm.
#[derive(Debug)]
pub(crate) enum NameFieldError {
    /// The field's bytes are not a canonical name.
    Malformed(String),
    /// A well-formed name of an algorithm Keel does not support.
    Unknown(Error),
}
