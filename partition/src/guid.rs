//! GUIDs as GPT stores them (first three fields little-endian) and the partition types
//! A/B systems use.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A GUID in its on-disk byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The all-zero GUID (an unused entry's type).
    pub const NIL: Guid = Guid([0; 16]);

    /// A random (version 4) GUID.
    pub fn random() -> Result<Guid> {
        let mut b = [0u8; 16];
        getrandom::getrandom(&mut b)
            .map_err(|e| Error::io("reading the random source", e.into()))?;
        // Version 4 and the RFC 4122 variant set by the uuid crate, stored mixed-endian.
        Ok(Guid::from(uuid::Builder::from_random_bytes(b).into_uuid()))
    }

    /// Whether this is the nil GUID.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// As a [`uuid::Uuid`] (the text's byte order).
    pub fn to_uuid(self) -> uuid::Uuid {
        uuid::Uuid::from_bytes_le(self.0)
    }
}

impl From<uuid::Uuid> for Guid {
    /// The GPT's mixed-endian layout of `u`: its first three fields little-endian.
    fn from(u: uuid::Uuid) -> Guid {
        Guid(u.to_bytes_le())
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_uuid().hyphenated(), f)
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl FromStr for Guid {
    type Err = Error;

    /// Parse `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case); the other forms the
    /// uuid crate knows (braced, urn, without hyphens) are not what a GPT tool prints.
    fn from_str(s: &str) -> Result<Guid> {
        let bad = || Error::BadGuid(s.to_string());
        if s.len() != 36 {
            return Err(bad());
        }
        uuid::Uuid::try_parse(s).map(Guid::from).map_err(|_| bad())
    }
}

fn known(s: &str) -> Guid {
    // Only called on the constants below, which are valid.
    s.parse().unwrap_or(Guid::NIL)
}

/// Partition types A/B systems use.
pub mod types {
    use super::{known, Guid};

    /// EFI System Partition.
    pub fn esp() -> Guid {
        known("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
    }
    /// CoreOS / Flatcar `/usr` (the type Flatcar's GRUB `gptprio` considers).
    pub fn coreos_usr() -> Guid {
        known("5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6")
    }
    /// Discoverable Partitions Specification: root, x86-64.
    pub fn root_x86_64() -> Guid {
        known("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
    }
    /// Discoverable Partitions Specification: root, aarch64.
    pub fn root_aarch64() -> Guid {
        known("b921b045-1df0-41c3-af44-4c6f280d3fae")
    }
    /// Discoverable Partitions Specification: `/usr`, x86-64.
    pub fn usr_x86_64() -> Guid {
        known("8484680c-9521-48c6-9c11-b0720656f69e")
    }
    /// ChromeOS kernel.
    pub fn chromeos_kernel() -> Guid {
        known("fe3a2a5d-4f32-41a7-b725-accc3285a309")
    }
    /// ChromeOS root filesystem.
    pub fn chromeos_rootfs() -> Guid {
        known("3cb8e202-3b7e-47dd-8a3c-7ff2a13cfcec")
    }
    /// Linux filesystem data.
    pub fn linux_data() -> Guid {
        known("0fc63daf-8483-4772-8e79-3d69d8477de4")
    }

    /// A type's name and the function giving its GUID.
    pub type Named = (&'static str, fn() -> Guid);

    /// The names a slot's type may be given by (systemd-sysupdate's and the Discoverable
    /// Partitions Specification's, `usr` being CoreOS's), with their GUIDs.
    pub const NAMES: &[Named] = &[
        ("usr", coreos_usr),
        ("root-x86-64", root_x86_64),
        ("root-aarch64", root_aarch64),
        ("usr-x86-64", usr_x86_64),
        ("chromeos-kernel", chromeos_kernel),
        ("chromeos-rootfs", chromeos_rootfs),
        ("linux-data", linux_data),
    ];

    /// A partition type by one of [`NAMES`] or as a GUID: the one rule the description,
    /// the agent and the tools share.
    pub fn parse(s: &str) -> Result<Guid, crate::Error> {
        match NAMES.iter().find(|(n, _)| *n == s) {
            Some((_, g)) => Ok(g()),
            None => s.parse(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_and_guids_parse_by_one_rule() {
        for (name, guid) in types::NAMES {
            assert_eq!(types::parse(name).unwrap(), guid());
            assert_eq!(types::parse(&guid().to_string()).unwrap(), guid());
        }
        assert_eq!(types::parse("usr").unwrap(), types::coreos_usr());
        assert!(types::parse("root-riscv").is_err());
        assert!(types::parse("").is_err());
    }

    #[test]
    fn mixed_endian_round_trip() {
        let g: Guid = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".parse().unwrap();
        assert_eq!(g.0[..4], [0x28, 0x73, 0x2a, 0xc1]);
        assert_eq!(g.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(types::esp(), g);
        assert!("c12a7328-f81f-11d2-ba4b-00a0c93ec93"
            .parse::<Guid>()
            .is_err());
        assert!("g12a7328-f81f-11d2-ba4b-00a0c93ec93b"
            .parse::<Guid>()
            .is_err());
        // Only the form GPT tools print: not braced, not without hyphens.
        for other in [
            "{c12a7328-f81f-11d2-ba4b-00a0c93ec93b}",
            "c12a7328f81f11d2ba4b00a0c93ec93b",
            "urn:uuid:c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
            "c12a7328f-81f-11d2-ba4b-00a0c93ec93b",
        ] {
            assert!(other.parse::<Guid>().is_err(), "{other}");
        }
        let r = Guid::random().unwrap();
        assert_eq!(r.to_string().as_bytes()[14], b'4');
        assert_eq!(Guid::from(r.to_uuid()), r);
    }
}
