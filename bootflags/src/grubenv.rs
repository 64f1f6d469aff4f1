//! The GRUB environment block (`grubenv`), as `grub-editenv` and GRUB's `load_env` /
//! `save_env` read and write it.
//!
//! Exactly 1024 bytes: the line `# GRUB Environment Block\n`, then `name=value\n` lines and
//! `#` comment lines in any order, then `#` padding to the end. In values a backslash is
//! written `\\` and a newline `\` followed by a newline. A change that does not fit in the
//! 1024 bytes is refused and the block stays as it was. Comment lines and variables Keel
//! does not know are kept, in their order.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::{Error, Result};

/// Size of a GRUB environment block.
pub const BLOCK_SIZE: usize = 1024;
/// The first line.
pub const SIGNATURE: &str = "# GRUB Environment Block\n";

const WHAT: &str = "grubenv";

/// One line of the block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// `name=value`, the value unescaped.
    Var {
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// A `#` line other than the signature, without its newline.
    Comment(String),
}

/// A parsed GRUB environment block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrubEnv {
    lines: Vec<Line>,
}

impl Default for GrubEnv {
    fn default() -> Self {
        GrubEnv::new()
    }
}

fn syntax(offset: usize, reason: &str) -> Error {
    Error::Syntax {
        what: WHAT,
        offset,
        reason: reason.to_string(),
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['=', '\n', '\0']) || name.starts_with('#') {
        return Err(Error::BadVariable {
            name: name.to_string(),
            reason: "a grubenv name is non-empty, without '=', NUL or newline, and does not start with '#'"
                .to_string(),
        });
    }
    Ok(())
}

impl GrubEnv {
    /// An empty block (what `grub-editenv FILE create` makes, without Debian's warning line).
    pub fn new() -> Self {
        GrubEnv { lines: Vec::new() }
    }

    /// Parse a block: exactly 1024 bytes, the signature first, `#` padding last.
    pub fn parse(block: &[u8]) -> Result<Self> {
        if block.len() != BLOCK_SIZE {
            return Err(Error::Size {
                what: WHAT,
                expected: BLOCK_SIZE,
                found: block.len(),
            });
        }
        if !block.starts_with(SIGNATURE.as_bytes()) {
            return Err(syntax(
                0,
                "missing the signature line \"# GRUB Environment Block\"",
            ));
        }
        let mut lines = Vec::new();
        let mut pos = SIGNATURE.len();
        while pos < block.len() {
            let rest = &block[pos..];
            if rest[0] == b'#' {
                match rest.iter().position(|&c| c == b'\n') {
                    Some(end) => {
                        let text = core::str::from_utf8(&rest[1..end])
                            .map_err(|_| syntax(pos, "comment is not UTF-8"))?;
                        lines.push(Line::Comment(text.to_string()));
                        pos += end + 1;
                    }
                    None => {
                        // The padding: '#' to the end of the block.
                        if let Some(i) = rest.iter().position(|&c| c != b'#') {
                            return Err(syntax(pos + i, "padding holds a byte other than '#'"));
                        }
                        pos = block.len();
                    }
                }
                continue;
            }
            let eq = rest
                .iter()
                .position(|&c| c == b'=' || c == b'\n')
                .filter(|&i| rest[i] == b'=')
                .ok_or_else(|| syntax(pos, "line without '='"))?;
            let name =
                core::str::from_utf8(&rest[..eq]).map_err(|_| syntax(pos, "name is not UTF-8"))?;
            check_name(name).map_err(|_| syntax(pos, "empty or invalid variable name"))?;
            let mut value = Vec::new();
            let mut i = eq + 1;
            loop {
                match rest.get(i) {
                    None => return Err(syntax(pos + i, "value not terminated by a newline")),
                    Some(b'\n') => break,
                    Some(b'\\') => {
                        let c = *rest
                            .get(i + 1)
                            .ok_or_else(|| syntax(pos + i, "backslash at the end of the block"))?;
                        value.push(c);
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
            let value = String::from_utf8(value).map_err(|_| syntax(pos, "value is not UTF-8"))?;
            lines.push(Line::Var {
                name: name.to_string(),
                value,
            });
            pos += i + 1;
        }
        Ok(GrubEnv { lines })
    }

    /// Encode into exactly 1024 bytes, or [`Error::Overflow`] if the content is too long.
    pub fn to_bytes(&self) -> Result<[u8; BLOCK_SIZE]> {
        let mut out = Vec::with_capacity(BLOCK_SIZE);
        out.extend_from_slice(SIGNATURE.as_bytes());
        for line in &self.lines {
            match line {
                Line::Comment(c) => {
                    out.push(b'#');
                    out.extend_from_slice(c.as_bytes());
                }
                Line::Var { name, value } => {
                    out.extend_from_slice(name.as_bytes());
                    out.push(b'=');
                    for &c in value.as_bytes() {
                        if c == b'\\' || c == b'\n' {
                            out.push(b'\\');
                        }
                        out.push(c);
                    }
                }
            }
            out.push(b'\n');
        }
        if out.len() > BLOCK_SIZE {
            return Err(Error::Overflow {
                what: WHAT,
                needed: out.len(),
                capacity: BLOCK_SIZE,
            });
        }
        let mut block = [b'#'; BLOCK_SIZE];
        block[..out.len()].copy_from_slice(&out);
        Ok(block)
    }

    /// All lines, in order.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// The variables, in order.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().filter_map(|l| match l {
            Line::Var { name, value } => Some((name.as_str(), value.as_str())),
            Line::Comment(_) => None,
        })
    }

    /// A variable's value (the last definition, as GRUB reads it).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .last()
    }

    /// Set a variable: in place if it exists, else appended. Checked to fit before the
    /// change is made, so a refused change leaves the block as it was.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        check_name(name)?;
        let mut next = self.clone();
        next.set_unchecked(name, value);
        next.to_bytes()?;
        *self = next;
        Ok(())
    }

    /// Set several variables at once, all or nothing.
    pub fn set_all<'a>(
        &mut self,
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<()> {
        let mut next = self.clone();
        for (name, value) in vars {
            check_name(name)?;
            next.set_unchecked(name, value);
        }
        next.to_bytes()?;
        *self = next;
        Ok(())
    }

    fn set_unchecked(&mut self, name: &str, value: &str) {
        let mut found = false;
        self.lines.retain_mut(|l| match l {
            Line::Var { name: n, value: v } if n == name => {
                if found {
                    return false;
                }
                found = true;
                *v = value.to_string();
                true
            }
            _ => true,
        });
        if !found {
            self.lines.push(Line::Var {
                name: name.to_string(),
                value: value.to_string(),
            });
        }
    }

    /// Remove a variable; true if it was there.
    pub fn unset(&mut self, name: &str) -> bool {
        let before = self.lines.len();
        self.lines
            .retain(|l| !matches!(l, Line::Var { name: n, .. } if n == name));
        before != self.lines.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_escapes_and_comments() {
        let mut e = GrubEnv::new();
        e.set("A", "x\\y").unwrap();
        e.set("B", "l1\nl2").unwrap();
        e.set("C", "").unwrap();
        let b = e.to_bytes().unwrap();
        assert!(b.starts_with(b"# GRUB Environment Block\nA=x\\\\y\nB=l1\\\nl2\nC=\n###"));
        assert_eq!(GrubEnv::parse(&b).unwrap(), e);
        let mut text = b;
        let extra = b"# GRUB Environment Block\n# a comment\nX=1\n";
        text[..extra.len()].copy_from_slice(extra);
        text[extra.len()..].fill(b'#');
        let p = GrubEnv::parse(&text).unwrap();
        assert_eq!(p.lines()[0], Line::Comment(" a comment".into()));
        assert_eq!(p.to_bytes().unwrap(), text);
    }

    #[test]
    fn overflow_is_refused_and_nothing_changes() {
        let mut e = GrubEnv::new();
        e.set("K", &"v".repeat(900)).unwrap();
        let before = e.clone();
        let err = e.set("L", &"w".repeat(200)).unwrap_err();
        assert!(matches!(err, Error::Overflow { capacity: 1024, .. }));
        assert_eq!(e, before);
        assert!(e.set_all([("M", "1"), ("N", &*"x".repeat(300))]).is_err());
        assert_eq!(e, before);
    }

    #[test]
    fn bad_blocks_are_refused_with_the_offset() {
        let good = GrubEnv::new().to_bytes().unwrap();
        assert!(matches!(
            GrubEnv::parse(&good[..1000]),
            Err(Error::Size { found: 1000, .. })
        ));
        let mut b = good;
        b[2] = b'X';
        assert!(matches!(
            GrubEnv::parse(&b),
            Err(Error::Syntax { offset: 0, .. })
        ));
        let mut b = good;
        b[25..30].copy_from_slice(b"abc\n#");
        assert!(matches!(
            GrubEnv::parse(&b),
            Err(Error::Syntax { offset: 25, .. })
        ));
        let mut b = good;
        b[1000] = b'x';
        assert!(matches!(
            GrubEnv::parse(&b),
            Err(Error::Syntax { offset: 1000, .. })
        ));
        let mut b = good;
        b[25..29].copy_from_slice(b"K=vv");
        assert!(matches!(GrubEnv::parse(&b), Err(Error::Syntax { .. })));
        assert!(GrubEnv::new().set("a=b", "1").is_err());
    }

    #[test]
    fn set_replaces_in_place_and_unset_removes() {
        let mut e = GrubEnv::new();
        e.set_all([("A", "1"), ("B", "2")]).unwrap();
        e.set("A", "3").unwrap();
        assert_eq!(e.vars().collect::<Vec<_>>(), [("A", "3"), ("B", "2")]);
        assert!(e.unset("A"));
        assert_eq!(e.get("A"), None);
    }
}
