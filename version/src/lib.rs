//! keel-version: release versions of dotted whole numbers, parsed strictly and ordered
//! numerically.
//!
//! A version that cannot be compared cannot pass a downgrade check, so parsing never
//! guesses: `1.2.3` is a version, `v1.2`, `1.2-rc1` and `1..2` are errors that name the
//! part at fault. Versions compare part by part as numbers (`1.10` is above `1.9`), and a
//! missing part counts as 0 (`2` equals `2.0`). The text is kept as written for display.
#![doc = include_str!("../README.md")]

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Most dotted parts a version may have.
pub const MAX_PARTS: usize = 16;

/// Why a text is not a version.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VersionError {
    /// More dotted parts than [`MAX_PARTS`].
    #[error("{text:?}: {parts} dotted parts, at most {max}", max = MAX_PARTS)]
    TooManyParts {
        /// The text given.
        text: String,
        /// How many parts it has.
        parts: usize,
    },
    /// A part is empty or holds something other than ASCII digits.
    #[error("{text:?}: part {part} ({found:?}) is not a whole number: expected dotted numbers such as 1.2.3")]
    NotANumber {
        /// The text given.
        text: String,
        /// Which part, from 1.
        part: usize,
        /// The part.
        found: String,
    },
    /// A part does not fit 64 bits.
    #[error("{text:?}: part {part} ({found}) is too large")]
    TooLarge {
        /// The text given.
        text: String,
        /// Which part, from 1.
        part: usize,
        /// The part.
        found: String,
    },
}

/// A release version: dotted whole numbers, ordered numerically.
///
/// Equality and order are numeric (`2` == `2.0`, `1.10` > `1.9`); [`Version::as_str`] and
/// `Display` give the text as written.
#[derive(Clone, Debug)]
pub struct Version {
    text: String,
    parts: Vec<u64>,
}

impl Version {
    /// Parse `text` strictly (see the crate docs).
    pub fn parse(text: &str) -> Result<Version, VersionError> {
        let pieces: Vec<&str> = text.split('.').collect();
        if pieces.len() > MAX_PARTS {
            return Err(VersionError::TooManyParts {
                text: text.to_string(),
                parts: pieces.len(),
            });
        }
        let mut parts = Vec::with_capacity(pieces.len());
        for (i, p) in pieces.iter().enumerate() {
            if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
                return Err(VersionError::NotANumber {
                    text: text.to_string(),
                    part: i + 1,
                    found: (*p).to_string(),
                });
            }
            parts.push(p.parse::<u64>().map_err(|_| VersionError::TooLarge {
                text: text.to_string(),
                part: i + 1,
                found: (*p).to_string(),
            })?);
        }
        Ok(Version {
            text: text.to_string(),
            parts,
        })
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The numbers, in order.
    pub fn parts(&self) -> &[u64] {
        &self.parts
    }

    /// Compare two texts as versions; an error names the one that does not parse.
    pub fn compare(a: &str, b: &str) -> Result<Ordering, VersionError> {
        Ok(Version::parse(a)?.cmp(&Version::parse(b)?))
    }
}

impl FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Version, VersionError> {
        Version::parse(s)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Version) -> Ordering {
        let n = self.parts.len().max(other.parts.len());
        (0..n)
            .map(|i| {
                let a = self.parts.get(i).copied().unwrap_or(0);
                let b = other.parts.get(i).copied().unwrap_or(0);
                a.cmp(&b)
            })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Version) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Version {}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strict_and_numeric() {
        let v = |s: &str| Version::parse(s).unwrap();
        assert!(v("1.10") > v("1.9"));
        assert_eq!(v("2"), v("2.0.0"));
        assert!(v("0.0.1") > v("0"));
        for bad in ["", "v1", "1.", ".1", "1..2", "1.2-rc1", "1.+2", " 1", "١"] {
            assert!(
                matches!(Version::parse(bad), Err(VersionError::NotANumber { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Version::parse("1.18446744073709551616"),
            Err(VersionError::TooLarge { part: 2, .. })
        ));
        assert!(matches!(
            Version::parse(&["1"; 17].join(".")),
            Err(VersionError::TooManyParts { parts: 17, .. })
        ));
        assert!(Version::parse(&["1"; 16].join(".")).is_ok());
        assert!(Version::parse(&"9".repeat(20)).is_err());
        assert_eq!(
            Version::compare("1.2", "x").unwrap_err().to_string(),
            "\"x\": part 1 (\"x\") is not a whole number: expected dotted numbers such as 1.2.3"
        );
    }

    proptest! {
        /// Order is the numeric order of the parts, whatever leading zeros or trailing
        /// zero parts the text has; display gives back the text.
        #[test]
        fn order_is_numeric(a in proptest::collection::vec(0u64..1000, 1..5),
                            b in proptest::collection::vec(0u64..1000, 1..5),
                            zeros in 0usize..3) {
            let text = |p: &[u64], z: usize| p.iter().map(|n| format!("{}{n}", "0".repeat(z))).collect::<Vec<_>>().join(".");
            let (va, vb) = (Version::parse(&text(&a, zeros)).unwrap(), Version::parse(&text(&b, 0)).unwrap());
            let pad = |p: &[u64]| { let mut v = p.to_vec(); v.resize(5, 0); v };
            prop_assert_eq!(va.cmp(&vb), pad(&a).cmp(&pad(&b)));
            prop_assert_eq!(va.to_string(), text(&a, zeros));
        }
    }
}
