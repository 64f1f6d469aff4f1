//! systemd-boot's boot counting on a real ESP: one Boot Loader Specification entry file
//! per slot in `loader/entries`, renamed as systemd-boot renames it before a try
//! (`+LEFT-DONE`) and as `systemd-bless-boot` renames it after (good: no counter; bad:
//! `+0-DONE`), and the menu's first slot as `default` in `loader/loader.conf`.

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
    /// `os-a+2-1.conf`). Each id must name exactly one entry. The menu order starts with
    /// the slot `loader.conf`'s `default` names (by id or `ID.conf`), the rest by slot.
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
                    return Err(Error::Invalid(alloc::format!(
                        "{}: entry id {id:?} names {} entry files, expected one",
                        dir.display(),
                        f.len()
                    )))
                }
            }
        }
        let default = read_default(&esp.join("loader").join("loader.conf"))?;
        let first = default
            .as_deref()
            .and_then(|d| {
                names
                    .iter()
                    .position(|n| d == n.id || d == alloc::format!("{}{}", n.id, n.suffix))
            })
            .unwrap_or(0);
        let mut order: Vec<Slot> = Slot::all(names.len()).collect();
        if let Some(s) = Slot::new(first) {
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
        let first = |m: &SystemdBoot| m.menu_order().first().copied();
        if first(&next) != first(&self.model) {
            if let Some(e) = first(&next).and_then(|s| next.entry(s)) {
                write_default(&self.loader_conf(), &alloc::format!("{}{}", e.id, e.suffix))?;
            }
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
}
