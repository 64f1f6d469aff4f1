//! The veritysetup superblock (cryptsetup `struct verity_sb`).
//!
//! 512 bytes, little-endian, at the hash offset of the hash device:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | signature `"verity\0\0"` |
//! | 8 | 4 | version, 1 |
//! | 12 | 4 | hash_type: 0 Chrome OS, 1 normal |
//! | 16 | 16 | uuid (binary) |
//! | 32 | 32 | algorithm name, lower case, NUL padded |
//! | 64 | 4 | data_block_size |
//! | 68 | 4 | hash_block_size |
//! | 72 | 8 | data_blocks |
//! | 80 | 2 | salt_size (at most 256) |
//! | 82 | 6 | zero |
//! | 88 | 256 | salt, zero padded |
//! | 344 | 168 | zero |

use crate::error::{Error, Result};
use crate::layout::{Fields, Put, UnknownAlgorithm};
use crate::params::{VerityParams, MAX_SALT_SIZE};

/// Size of the superblock in bytes.
pub const SUPERBLOCK_SIZE: usize = 512;
/// Zero bytes after the salt field.
const TAIL_PADDING: usize = 168;
/// The superblock's signature.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"verity\0\0";

/// A decoded superblock: the tree parameters plus the UUID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// The tree parameters.
    pub params: VerityParams,
    /// The UUID, binary.
    pub uuid: [u8; 16],
}

impl Superblock {
    /// The parameters this superblock describes.
    pub fn params(&self) -> &VerityParams {
        &self.params
    }

    /// Decode and check every field. `bytes` must hold at least 512 bytes; only the
    /// first 512 are read.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let b = bytes.get(..SUPERBLOCK_SIZE).ok_or(Error::TooSmall {
            what: "verity superblock",
            needed: SUPERBLOCK_SIZE as u64,
            found: bytes.len() as u64,
        })?;
        // Read in the order of the table at the top of this file.
        let mut f = Fields::new(b, "verity superblock");
        f.magic("signature", &SUPERBLOCK_MAGIC, "\"verity\\0\\0\"")?;
        f.expect_u32("version", 1)?;
        let hash_type = f.hash_type()?;
        let uuid = f.array::<16>("uuid")?;
        let algorithm = f.algorithm(UnknownAlgorithm::Unsupported)?;
        let dbs = f.block_size("data_block_size")?;
        let hbs = f.block_size("hash_block_size")?;
        let blocks_at = f.offset();
        let data_blocks = f.u64("data_blocks")?;
        let salt_size = f.salt_size()?;
        f.zeros(6, "padding")?;
        let salt = f
            .padded(
                MAX_SALT_SIZE,
                salt_size,
                "salt",
                "bytes past salt_size are not zero",
            )?
            .to_vec();
        f.zeros(TAIL_PADDING, "padding")?;
        let params = VerityParams::new(hash_type, algorithm, dbs, hbs, data_blocks, salt)
            .map_err(|e| f.bad("data_blocks", blocks_at, e.to_string()))?;
        Ok(Superblock { params, uuid })
    }

    /// Encode as veritysetup writes it.
    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_SIZE] {
        let p = &self.params;
        let mut b = [0u8; SUPERBLOCK_SIZE];
        let mut w = Put::new(&mut b);
        w.bytes(&SUPERBLOCK_MAGIC)
            .u32(1)
            .u32(p.hash_type().as_u32())
            .bytes(&self.uuid)
            .padded(p.algorithm().name().as_bytes(), 32)
            .u32(p.data_block_size())
            .u32(p.hash_block_size())
            .u64(p.data_blocks())
            // The salt is at most 256 bytes, so its length fits the u16 field.
            .u16(p.salt().len() as u16)
            .padded(&[], 6)
            .padded(p.salt(), MAX_SALT_SIZE)
            .padded(&[], TAIL_PADDING);
        debug_assert_eq!(w.position(), SUPERBLOCK_SIZE);
        b
    }
}

/// A UUID in its text form (`8-4-4-4-12` hex digits), as veritysetup's `--uuid` takes it.
pub fn parse_uuid(text: &str) -> Result<[u8; 16]> {
    // Only the hyphenated form: the braced, urn and plain forms the uuid crate also
    // reads are not veritysetup's.
    if text.len() != 36 {
        return Err(Error::param(
            "uuid",
            format!("{text:?} is not of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"),
        ));
    }
    uuid::Uuid::try_parse(text)
        .map(uuid::Uuid::into_bytes)
        .map_err(|e| Error::param("uuid", format!("{text:?}: {e}")))
}

/// Format a binary UUID as text, lower case.
pub fn format_uuid(uuid: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*uuid).hyphenated().to_string()
}

/// A random (version 4) UUID, as veritysetup makes when none is given.
pub fn random_uuid() -> Result<[u8; 16]> {
    let bytes = crate::params::random_bytes::<16>()?;
    Ok(uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HashAlgorithm, HashType};

    fn sample() -> Superblock {
        Superblock {
            params: VerityParams::new(
                HashType::Normal,
                HashAlgorithm::Sha256,
                4096,
                512,
                129,
                vec![0xaa; 5],
            )
            .unwrap(),
            uuid: [7; 16],
        }
    }

    #[test]
    fn field_offsets_are_pinned() {
        let b = sample().to_bytes();
        assert_eq!(&b[0..8], b"verity\0\0");
        assert_eq!(&b[8..12], &1u32.to_le_bytes());
        assert_eq!(&b[12..16], &1u32.to_le_bytes());
        assert_eq!(&b[16..32], &[7u8; 16]);
        assert_eq!(&b[32..38], b"sha256");
        assert!(b[38..64].iter().all(|&c| c == 0));
        assert_eq!(&b[64..68], &4096u32.to_le_bytes());
        assert_eq!(&b[68..72], &512u32.to_le_bytes());
        assert_eq!(&b[72..80], &129u64.to_le_bytes());
        assert_eq!(&b[80..82], &5u16.to_le_bytes());
        assert_eq!(&b[88..93], &[0xaa; 5]);
        assert!(b[93..].iter().all(|&c| c == 0));
    }

    #[test]
    fn round_trip() {
        let s = sample();
        assert_eq!(Superblock::parse(&s.to_bytes()).unwrap(), s);
    }

    fn corrupt(at: usize, val: u8) -> Error {
        let mut b = sample().to_bytes();
        b[at] = val;
        Superblock::parse(&b).unwrap_err()
    }

    fn field_of(e: &Error) -> (&'static str, usize) {
        match e {
            Error::BadField { field, offset, .. } => (field, *offset),
            other => panic!("expected BadField, got {other:?}"),
        }
    }

    #[test]
    fn every_field_is_checked() {
        assert_eq!(field_of(&corrupt(3, b'X')), ("signature", 0));
        assert_eq!(field_of(&corrupt(8, 2)), ("version", 8));
        assert_eq!(field_of(&corrupt(12, 2)), ("hash_type", 12));
        assert_eq!(field_of(&corrupt(40, b'x')), ("algorithm", 32));
        assert!(matches!(
            corrupt(35, b'x'),
            Error::UnsupportedAlgorithm { .. }
        ));
        // "SHA256" names a known algorithm but would be written back as "sha256".
        let mut b = sample().to_bytes();
        b[32..38].copy_from_slice(b"SHA256");
        assert_eq!(
            field_of(&Superblock::parse(&b).unwrap_err()),
            ("algorithm", 32)
        );
        assert_eq!(field_of(&corrupt(65, 0x11)), ("data_block_size", 64));
        assert_eq!(field_of(&corrupt(70, 0x80)), ("hash_block_size", 68));
        assert_eq!(field_of(&corrupt(81, 1)), ("salt_size", 80));
        assert_eq!(field_of(&corrupt(84, 1)), ("padding", 82));
        assert_eq!(field_of(&corrupt(100, 1)), ("salt", 93));
        assert_eq!(field_of(&corrupt(400, 1)), ("padding", 344));
        let mut b = sample().to_bytes();
        b[72..80].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(
            field_of(&Superblock::parse(&b).unwrap_err()),
            ("data_blocks", 72)
        );
        assert!(matches!(
            Superblock::parse(&b[..100]),
            Err(Error::TooSmall { .. })
        ));
    }

    #[test]
    fn uuid_text_round_trip() {
        let u = parse_uuid("11111111-2222-3333-4444-555555555555").unwrap();
        assert_eq!(format_uuid(&u), "11111111-2222-3333-4444-555555555555");
        assert!(parse_uuid("1111-2222").is_err());
        assert!(parse_uuid("1111111g-2222-3333-4444-555555555555").is_err());
        let r = random_uuid().unwrap();
        assert_eq!(r[6] >> 4, 4);
    }
}
