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
        // Version 4 and the RFC 4122 variant, in the mixed-endian layout.
        b[7] = (b[7] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Ok(Guid(b))
    }

    /// Whether this is the nil GUID.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl FromStr for Guid {
    type Err = Error;

    /// Parse `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case).
    fn from_str(s: &str) -> Result<Guid> {
        let bad = || {
            Error::Invalid(format!(
                "{s:?} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
            ))
        };
        let parts: Vec<&str> = s.split('-').collect();
        if parts.iter().map(|p| p.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let hex: String = parts.concat();
        let mut t = [0u8; 16];
        for (i, byte) in t.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        // Text order to the mixed-endian disk order.
        Ok(Guid([
            t[3], t[2], t[1], t[0], t[5], t[4], t[7], t[6], t[8], t[9], t[10], t[11], t[12], t[13],
            t[14], t[15],
        ]))
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
        let r = Guid::random().unwrap();
        assert_eq!(r.to_string().as_bytes()[14], b'4');
    }
}
