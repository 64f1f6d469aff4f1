//! The U-Boot environment, single copy or redundant, as U-Boot, `fw_printenv` /
//! `fw_setenv` (libubootenv) and `mkenvimage` read and write it.
//!
//! A copy of `size` bytes: a little-endian CRC-32 (zlib) of the data area, for a redundant
//! environment one flags byte, then the data area: `name=value\0` entries ending with an
//! empty one (`\0\0`), zero-filled to the end. Of two redundant copies the one with a valid
//! CRC and the newer flags counts (255 is older than 0); a write goes to the other copy with
//! flags + 1, so a power cut during it leaves the newer good copy in place.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::{Error, Result};

const WHAT: &str = "u-boot environment";

/// The largest environment copy Keel reads or writes (16 MiB; real ones are 4 to 256 KiB).
pub const MAX_ENV_SIZE: usize = 16 << 20;

/// A decoded environment: its variables, in order, and the byte that fills the data area
/// after them (0 as U-Boot writes it, 0xff as `mkenvimage` does), kept on rewrite.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UbootEnv {
    vars: Vec<(String, String)>,
    fill: u8,
}

/// Which layout a copy has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes per copy (the `SIZE` of `fw_env.config`, `mkenvimage -s`).
    pub size: usize,
    /// Two copies with a flags byte each.
    pub redundant: bool,
}

impl Layout {
    fn header(self) -> usize {
        if self.redundant {
            5
        } else {
            4
        }
    }

    /// Sizes an environment may have: U-Boot's are a few KiB to a few hundred; the bound
    /// keeps a mistyped size from becoming an allocation.
    pub fn check(self) -> Result<()> {
        if self.size < self.header() + 2 || self.size > MAX_ENV_SIZE {
            return Err(Error::EnvSize {
                size: self.size,
                min: self.header() + 2,
                max: MAX_ENV_SIZE,
            });
        }
        Ok(())
    }
}

/// One copy as read: the environment and, for a redundant layout, its flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    /// The variables.
    pub env: UbootEnv,
    /// The flags byte (0 for a single copy).
    pub flags: u8,
}

fn check_var(name: &str, value: &str) -> Result<()> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(Error::BadVariable {
            name: name.to_string(),
            reason: "a U-Boot variable name is non-empty, without '=' or NUL".to_string(),
        });
    }
    if value.contains('\0') {
        return Err(Error::BadVariable {
            name: name.to_string(),
            reason: "a U-Boot value cannot hold NUL".to_string(),
        });
    }
    Ok(())
}

impl UbootEnv {
    /// An empty environment.
    pub fn new() -> Self {
        UbootEnv::default()
    }

    /// Parse one copy of `layout.size` bytes, checking its CRC.
    pub fn parse_copy(bytes: &[u8], layout: Layout) -> Result<Copy> {
        layout.check()?;
        if bytes.len() != layout.size {
            return Err(Error::Size {
                what: WHAT,
                expected: layout.size,
                found: bytes.len(),
            });
        }
        let stored = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let data = &bytes[layout.header()..];
        let computed = crc32fast::hash(data);
        if stored != computed {
            return Err(Error::Crc {
                what: WHAT,
                stored,
                computed,
            });
        }
        let flags = if layout.redundant { bytes[4] } else { 0 };
        let mut vars: Vec<(String, String)> = Vec::new();
        let fill;
        let mut pos = 0;
        loop {
            let at = layout.header() + pos;
            let rest = data.get(pos..).unwrap_or_default();
            let end = rest.iter().position(|&c| c == 0).ok_or(Error::Syntax {
                what: WHAT,
                offset: at,
                reason: "no terminating empty entry (\\0\\0)".to_string(),
            })?;
            if end == 0 {
                fill = rest.get(1).copied().unwrap_or(0);
                break;
            }
            let entry = core::str::from_utf8(&rest[..end]).map_err(|_| Error::Syntax {
                what: WHAT,
                offset: at,
                reason: "entry is not UTF-8".to_string(),
            })?;
            let (name, value) = entry.split_once('=').ok_or(Error::Syntax {
                what: WHAT,
                offset: at,
                reason: "entry without '='".to_string(),
            })?;
            if name.is_empty() {
                return Err(Error::Syntax {
                    what: WHAT,
                    offset: at,
                    reason: "entry with an empty name".to_string(),
                });
            }
            // A repeated name: the later one wins, as in U-Boot's import.
            vars.retain(|(n, _)| n != name);
            vars.push((name.to_string(), value.to_string()));
            pos += end + 1;
        }
        Ok(Copy {
            env: UbootEnv { vars, fill },
            flags,
        })
    }

    /// Encode one copy with the given flags (ignored for a single copy).
    pub fn to_copy(&self, layout: Layout, flags: u8) -> Result<Vec<u8>> {
        layout.check()?;
        let mut data = Vec::with_capacity(layout.size);
        for (n, v) in &self.vars {
            data.extend_from_slice(n.as_bytes());
            data.push(b'=');
            data.extend_from_slice(v.as_bytes());
            data.push(0);
        }
        data.push(0);
        let room = layout.size - layout.header();
        if data.len() > room {
            return Err(Error::Overflow {
                what: WHAT,
                needed: data.len() + layout.header(),
                capacity: layout.size,
            });
        }
        data.resize(room, self.fill);
        let mut out = Vec::with_capacity(layout.size);
        out.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
        if layout.redundant {
            out.push(flags);
        }
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// The variables, in order.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// A variable's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Set a variable (in place, or appended).
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        check_var(name, value)?;
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_string(),
            None => self.vars.push((name.to_string(), value.to_string())),
        }
        Ok(())
    }

    /// Remove a variable; true if it was there.
    pub fn unset(&mut self, name: &str) -> bool {
        let before = self.vars.len();
        self.vars.retain(|(n, _)| n != name);
        before != self.vars.len()
    }
}

/// Which of two redundant copies is current, by U-Boot's rule: a valid CRC first, then
/// the larger flags, except that 0 follows 255. `None` if neither is valid.
pub fn newer_copy(a: Option<u8>, b: Option<u8>) -> Option<usize> {
    match (a, b) {
        (None, None) => None,
        (Some(_), None) => Some(0),
        (None, Some(_)) => Some(1),
        (Some(fa), Some(fb)) => Some(match (fa, fb) {
            (255, 0) => 1,
            (0, 255) => 0,
            _ if fb > fa => 1,
            _ => 0,
        }),
    }
}

/// A redundant environment: both copies, which one is current, and how to write the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redundant {
    /// The current environment.
    pub env: UbootEnv,
    /// Index (0 or 1) of the copy it came from.
    pub current: usize,
    /// That copy's flags.
    pub flags: u8,
}

impl Redundant {
    /// Choose the current copy of two (`copies[i]` is `None` if it could not be read).
    /// An error only if neither copy is valid: the error of the first.
    pub fn from_copies(copy0: Result<Copy>, copy1: Result<Copy>) -> Result<Self> {
        let pick = newer_copy(
            copy0.as_ref().ok().map(|c| c.flags),
            copy1.as_ref().ok().map(|c| c.flags),
        );
        match (pick, copy0, copy1) {
            (Some(0), Ok(c), _) => Ok(Redundant {
                env: c.env,
                current: 0,
                flags: c.flags,
            }),
            (Some(1), _, Ok(c)) => Ok(Redundant {
                env: c.env,
                current: 1,
                flags: c.flags,
            }),
            (_, Err(e), _) => Err(e),
            (_, _, Err(e)) => Err(e),
            // Unreachable: a pick always names a valid copy.
            _ => Err(Error::NoValidCopy),
        }
    }

    /// The copy index and bytes of the next write of `env`: the other copy, flags + 1.
    pub fn next_write(&self, env: &UbootEnv, size: usize) -> Result<(usize, Vec<u8>)> {
        let layout = Layout {
            size,
            redundant: true,
        };
        let bytes = env.to_copy(layout, self.flags.wrapping_add(1))?;
        Ok((1 - self.current, bytes))
    }

    /// Record that the write from [`next_write`](Self::next_write) landed.
    pub fn committed(&mut self, env: UbootEnv) {
        self.env = env;
        self.current = 1 - self.current;
        self.flags = self.flags.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> UbootEnv {
        let mut e = UbootEnv::new();
        for (n, v) in pairs {
            e.set(n, v).unwrap();
        }
        e
    }

    #[test]
    fn single_copy_layout() {
        let e = env(&[("a", "1"), ("b", "two words")]);
        let l = Layout {
            size: 64,
            redundant: false,
        };
        let b = e.to_copy(l, 0).unwrap();
        assert_eq!(b.len(), 64);
        assert_eq!(&b[4..20], b"a=1\0b=two words\0");
        assert_eq!(b[20], 0);
        assert_eq!(&b[..4], &crc32fast::hash(&b[4..]).to_le_bytes());
        assert_eq!(UbootEnv::parse_copy(&b, l).unwrap().env, e);
    }

    #[test]
    fn redundant_writes_go_to_the_older_copy() {
        let l = Layout {
            size: 64,
            redundant: true,
        };
        let c0 = env(&[("x", "1")]).to_copy(l, 7).unwrap();
        let c1 = env(&[("x", "0")]).to_copy(l, 6).unwrap();
        let r = Redundant::from_copies(UbootEnv::parse_copy(&c0, l), UbootEnv::parse_copy(&c1, l))
            .unwrap();
        assert_eq!((r.current, r.flags, r.env.get("x")), (0, 7, Some("1")));
        let (i, bytes) = r.next_write(&env(&[("x", "2")]), 64).unwrap();
        assert_eq!((i, bytes[4]), (1, 8));
        // The wrap: 0 is newer than 255.
        assert_eq!(newer_copy(Some(255), Some(0)), Some(1));
        assert_eq!(newer_copy(Some(0), Some(255)), Some(0));
        assert_eq!(newer_copy(Some(3), Some(3)), Some(0));
        // A damaged copy loses whatever its flags say.
        let mut bad = c0.clone();
        bad[10] ^= 1;
        let r = Redundant::from_copies(UbootEnv::parse_copy(&bad, l), UbootEnv::parse_copy(&c1, l))
            .unwrap();
        assert_eq!((r.current, r.env.get("x")), (1, Some("0")));
        assert!(Redundant::from_copies(
            UbootEnv::parse_copy(&bad, l),
            UbootEnv::parse_copy(&bad, l)
        )
        .is_err());
    }

    #[test]
    fn the_fill_byte_is_kept() {
        // Found by fuzzing: an empty environment whose fill is not zero.
        let l = Layout {
            size: 8,
            redundant: false,
        };
        let data = [0u8, 0x0a, 0x0a, 0x0a];
        let mut b = crc32fast::hash(&data).to_le_bytes().to_vec();
        b.extend_from_slice(&data);
        let c = UbootEnv::parse_copy(&b, l).unwrap();
        assert_eq!(c.env.to_copy(l, 0).unwrap(), b);
        // mkenvimage fills with 0xff, U-Boot with 0.
        let e = env(&[("a", "1")]);
        assert_eq!(
            e.to_copy(
                Layout {
                    size: 16,
                    redundant: false
                },
                0
            )
            .unwrap()[8..],
            [0u8; 8]
        );
    }

    #[test]
    fn bad_input() {
        let l = Layout {
            size: 32,
            redundant: false,
        };
        assert!(matches!(
            UbootEnv::parse_copy(&[0u8; 31], l),
            Err(Error::Size { .. })
        ));
        let mut b = env(&[("a", "1")]).to_copy(l, 0).unwrap();
        b[5] = b'X';
        assert!(matches!(
            UbootEnv::parse_copy(&b, l),
            Err(Error::Crc { .. })
        ));
        // No '=' in an entry, with a valid CRC.
        let mut data = [0u8; 28];
        data[..4].copy_from_slice(b"abc\0");
        let mut b = crc32fast::hash(&data).to_le_bytes().to_vec();
        b.extend_from_slice(&data);
        assert!(matches!(
            UbootEnv::parse_copy(&b, l),
            Err(Error::Syntax { offset: 4, .. })
        ));
        // No terminator.
        let data = [b'a'; 28];
        let mut b = crc32fast::hash(&data).to_le_bytes().to_vec();
        b.extend_from_slice(&data);
        assert!(matches!(
            UbootEnv::parse_copy(&b, l),
            Err(Error::Syntax { .. })
        ));
        assert!(matches!(
            env(&[("k", &"v".repeat(40))]).to_copy(l, 0),
            Err(Error::Overflow { .. })
        ));
        assert!(UbootEnv::new().set("a=b", "1").is_err());
    }
}
