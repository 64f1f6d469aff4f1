//! systemd-boot's boot counting on a real ESP: one Boot Loader Specification entry file
//! per slot in `loader/entries`, renamed as systemd-boot renames it before a try
//! (`+LEFT-DONE`) and as `systemd-bless-boot` renames it after (good: no counter; bad:
//! `+0-DONE`), and the menu's first slot as `default` in `loader/loader.conf`.
//!
//! How systemd-boot (252, Debian 12's; checked under OVMF by tests/bootloader.rs)
//! picks the entry: it sorts the entries (those with no tries left last, then by file
//! name, newest version first) and boots the first one whose *whole file name, counter
//! included,* matches the `default` glob; with no match, the first in that order. So a
//! `default` naming `ID.conf` never matches a counted entry, and one matching every
//! counter would keep booting an entry whose tries are spent. The default written here
//! is therefore `ID.conf` for a blessed entry and `ID+[1-9]*.conf` for an armed one: it
//! matches while tries are left, and once they are spent nothing matches and the other
//! slot, sorted first, boots.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use std::path::{Path, PathBuf};

use crate::bls::{EntryName, SystemdBoot};
use crate::error::{Error, Result};
use crate::model::{AbControl, BootControl, Slot, SlotState};

fn io(context: impl Into<String>, e: std::io::Error) -> Error {
    Error::Io {
        context: context.into(),
        source: e,
    }
}

/// The slots' entries on an ESP, as one [`BootControl`].
#[derive(Clone, Debug)]
pub struct BlsDir {
    esp: PathBuf,
    model: SystemdBoot,
}

impl BlsDir {
    fn entries_dir(esp: &Path) -> PathBuf {
        esp.join("loader").join("entries")
    }

    fn loader_conf(&self) -> PathBuf {
        self.esp.join("loader").join("loader.conf")
    }

    /// Open the entries of slots A, B, ... on the ESP mounted (or copied) at `esp`, by their
    /// entry ids (the file name without counter and suffix: `os-a` for
    /// `os-a+2-1.conf`). Each id must name exactly one entry. The menu order is
    /// systemd-boot's: the first entry, in its sort order, whose file name matches
    /// `loader.conf`'s `default` glob, then the others in that order.
    pub fn open(esp: &Path, ids: &[&str]) -> Result<Self> {
        let dir = Self::entries_dir(esp);
        let mut names: Vec<EntryName> = Vec::new();
        let listing = std::fs::read_dir(&dir)
            .map_err(|e| io(alloc::format!("reading {}", dir.display()), e))?;
        let mut found: Vec<Vec<EntryName>> = ids.iter().map(|_| Vec::new()).collect();
        for entry in listing {
            let entry = entry.map_err(|e| io(alloc::format!("reading {}", dir.display()), e))?;
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            let Ok(name) = EntryName::parse(file) else {
                continue;
            };
            if let Some(i) = ids.iter().position(|id| *id == name.id) {
                found[i].push(name);
            }
        }
        for (id, f) in ids.iter().zip(found) {
            match <[EntryName; 1]>::try_from(f) {
                Ok([n]) => names.push(n),
                Err(f) => {
                    return Err(Error::EntryFiles {
                        dir: dir.display().to_string(),
                        id: (*id).to_string(),
                        found: f.len(),
                    })
                }
            }
        }
        let default = read_default(&esp.join("loader").join("loader.conf"))?;
        // systemd-boot's order: spent entries last, then by file name, newest first.
        let mut order: Vec<Slot> = Slot::all(names.len()).collect();
        order.sort_by(|a, b| {
            let (x, y) = (&names[a.index()], &names[b.index()]);
            y.is_bootable()
                .cmp(&x.is_bootable())
                .then_with(|| version_cmp(&y.file_name(), &x.file_name()))
        });
        let first = default.as_deref().and_then(|d| {
            order.iter().copied().find(|s| {
                glob_match(
                    &d.to_lowercase(),
                    &names[s.index()].file_name().to_lowercase(),
                )
            })
        });
        if let Some(s) = first {
            order.retain(|&x| x != s);
            order.insert(0, s);
        }
        Ok(BlsDir {
            esp: esp.to_path_buf(),
            model: SystemdBoot::new(names, order)?,
        })
    }

    /// The entry file of `slot` as it is named now.
    pub fn entry(&self, slot: Slot) -> Option<&EntryName> {
        self.model.entry(slot)
    }

    /// Write `next` (a changed model) to the ESP: each renamed entry by one rename, then
    /// `default` if the first slot changed. A rename is atomic, so a crash leaves each
    /// entry with its old or its new name; the default moves last, so it never points at
    /// an entry that is not armed yet.
    fn commit(&mut self, next: SystemdBoot) -> Result<()> {
        let dir = Self::entries_dir(&self.esp);
        for slot in Slot::all(self.model.slot_count()) {
            let (Some(old), Some(new)) = (self.model.entry(slot), next.entry(slot)) else {
                continue;
            };
            if old != new {
                let (from, to) = (dir.join(old.file_name()), dir.join(new.file_name()));
                std::fs::rename(&from, &to).map_err(|e| {
                    io(
                        alloc::format!("renaming {} to {}", from.display(), to.display()),
                        e,
                    )
                })?;
            }
        }
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        let pattern = |m: &SystemdBoot| {
            m.menu_order()
                .first()
                .and_then(|&s| m.entry(s))
                .map(default_pattern)
        };
        if let (Some(p), true) = (pattern(&next), pattern(&next) != pattern(&self.model)) {
            write_default(&self.loader_conf(), &p)?;
        }
        self.model = next;
        Ok(())
    }

    fn change(&mut self, f: impl FnOnce(&mut SystemdBoot) -> Result<()>) -> Result<()> {
        let mut next = self.model.clone();
        f(&mut next)?;
        self.commit(next)
    }
}

/// The `default` that makes systemd-boot boot `e` while it may (see the module docs).
fn default_pattern(e: &EntryName) -> String {
    match e.counter {
        Some(_) => alloc::format!("{}+[1-9]*{}", e.id, e.suffix),
        None => alloc::format!("{}{}", e.id, e.suffix),
    }
}

/// systemd-boot's glob (`efi_fnmatch`): `*`, `?`, `[a-z]`, `[!...]`, `\` escapes.
fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        // Returns (matched, length of the class in the pattern).
        let mut i = 1;
        let negate = matches!(p.get(i), Some('!' | '^'));
        if negate {
            i += 1;
        }
        let mut hit = false;
        let mut first = true;
        while let Some(&x) = p.get(i) {
            if x == ']' && !first {
                return Some((hit != negate, i + 1));
            }
            first = false;
            if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
                let e = p[i + 2];
                hit |= x <= c && c <= e;
                i += 3;
            } else {
                hit |= x == c;
                i += 1;
            }
        }
        None // unterminated: '[' is literal
    }
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|k| go(&p[1..], &n[k..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => match (n.first(), class(p, n.first().copied().unwrap_or('\0'))) {
                (Some(_), Some((true, len))) => go(&p[len..], &n[1..]),
                (Some(_), Some((false, _))) | (None, _) => false,
                (Some(&c), None) => c == '[' && go(&p[1..], &n[1..]),
            },
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

/// systemd's version comparison, enough for entry names: digit runs compare as numbers.
fn version_cmp(a: &str, b: &str) -> core::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let (si, sj) = (i, j);
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let (x, y) = (
                core::str::from_utf8(&a[si..i])
                    .unwrap_or("0")
                    .trim_start_matches('0'),
                core::str::from_utf8(&b[sj..j])
                    .unwrap_or("0")
                    .trim_start_matches('0'),
            );
            let o = x.len().cmp(&y.len()).then_with(|| x.cmp(y));
            if o.is_ne() {
                return o;
            }
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j))
}

fn read_default(conf: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(conf) {
        Ok(text) => Ok(text.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("default")).then(|| w.next().unwrap_or_default().to_string())
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(alloc::format!("reading {}", conf.display()), e)),
    }
}

/// Set `default` in loader.conf, keeping every other line, in one atomic replacement.
fn write_default(conf: &Path, id: &str) -> Result<()> {
    let old = match std::fs::read_to_string(conf) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(alloc::format!("reading {}", conf.display()), e)),
    };
    let mut out = String::new();
    let mut done = false;
    for line in old.lines() {
        if line.split_whitespace().next() == Some("default") {
            if !done {
                out.push_str(&alloc::format!("default {id}\n"));
                done = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !done {
        out.push_str(&alloc::format!("default {id}\n"));
    }
    keel_io::replace_file(conf, out.as_bytes())
        .map_err(|e| io(alloc::format!("replacing {}", conf.display()), e))
}

impl BootControl for BlsDir {
    fn slot_count(&self) -> usize {
        self.model.slot_count()
    }
    fn rules(&self) -> &'static str {
        "systemd-boot's boot counting over loader/entries"
    }
    fn status(&self) -> Result<Vec<SlotState>> {
        Ok(self.model.status())
    }
    fn next_boot(&self) -> Result<Option<Slot>> {
        Ok(self.model.next_boot())
    }
    fn set_active(&mut self, slot: Slot, tries: Option<u8>) -> Result<()> {
        self.change(|m| m.set_active(slot, tries))
    }
    fn mark_good(&mut self, slot: Slot) -> Result<()> {
        self.change(|m| m.mark_good(slot))
    }
    fn mark_bad(&mut self, slot: Slot) -> Result<()> {
        self.change(|m| m.mark_bad(slot))
    }
    fn boot(&mut self) -> Result<Option<Slot>> {
        let mut next = self.model.clone();
        let chosen = next.boot();
        self.commit(next)?;
        Ok(chosen)
    }
    fn carries_boot_arguments(&self) -> bool {
        true
    }
    /// The slot's entry gets the argument on its `options` line, in place of an earlier
    /// root argument (one entry file replaced atomically).
    fn set_boot_arguments(&mut self, slot: Slot, args: &str) -> Result<()> {
        let name = self
            .entry(slot)
            .ok_or(Error::NoSuchSlot {
                slot: slot.letter(),
                count: self.model.slot_count(),
            })?
            .file_name();
        let path = Self::entries_dir(&self.esp).join(name);
        // An entry is a few lines; anything much larger is not one.
        let mut text = alloc::string::String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(
                std::fs::File::open(&path)
                    .map_err(|e| io(alloc::format!("opening {}", path.display()), e))?,
                64 << 10,
            ),
            &mut text,
        )
        .map_err(|e| io(alloc::format!("reading {}", path.display()), e))?;
        let new = crate::spec::with_root_argument(&text, args);
        keel_io::replace_file(&path, new.as_bytes())
            .map_err(|e| io(alloc::format!("replacing {}", path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_as_systemd_boot_matches_them() {
        assert!(glob_match("os-b+[1-9]*.conf", "os-b+2-0.conf"));
        assert!(glob_match("os-b+[1-9]*.conf", "os-b+10-3.conf"));
        assert!(!glob_match("os-b+[1-9]*.conf", "os-b+0-2.conf"));
        assert!(!glob_match("os-b+[1-9]*.conf", "os-b.conf"));
        assert!(glob_match("os-*", "os-a.conf"));
        assert!(glob_match("os-?.conf", "os-a.conf"));
        assert!(!glob_match("os-[!a].conf", "os-a.conf"));
        assert!(glob_match("[x", "[x"));
        assert!(!glob_match("os-a.conf", "os-a+1.conf"));
    }

    #[test]
    fn versions_compare_digit_runs_as_numbers() {
        use core::cmp::Ordering::*;
        assert_eq!(version_cmp("linux-6.10.conf", "linux-6.9.conf"), Greater);
        assert_eq!(version_cmp("os-b.conf", "os-a+3.conf"), Greater);
        assert_eq!(version_cmp("a1", "a01"), Equal);
        assert_eq!(version_cmp("a", "ab"), Less);
    }
}
