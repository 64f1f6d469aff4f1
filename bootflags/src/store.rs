//! Boot-state stores in files (or block devices), each change written in one crash-safe
//! step: a GRUB environment replaced atomically (written beside, synced, renamed); a
//! redundant U-Boot environment written to its older copy; an Android misc block written
//! as one 32-byte sector-aligned write.

use alloc::string::{String, ToString};
use alloc::vec;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::android::{self, BootloaderControl};
use crate::error::{Error, Result};
use crate::grubenv::{GrubEnv, BLOCK_SIZE};
use crate::model::{AbControl, Slot, SlotState};
use crate::rauc::{RaucGrub, RaucUboot};
use crate::ubootenv::{Layout, Redundant, UbootEnv};

fn io(context: impl Into<String>, e: std::io::Error) -> Error {
    Error::Io {
        context: context.into(),
        source: e,
    }
}

/// Where a store lives and how it is encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// A GRUB environment block file with RAUC's variables.
    GrubEnv,
    /// A U-Boot environment with RAUC's variables: `size` bytes a copy; with `redundant`,
    /// a second copy right after the first.
    Uboot {
        /// Bytes per copy.
        size: usize,
        /// Two copies.
        redundant: bool,
    },
    /// An Android misc partition (or image), `bootloader_control` at byte 2048.
    AndroidMisc,
    /// A U-Boot environment with RAUC's variables where an `fw_env.config` puts it: one
    /// or two copies, each at its own offset of a file or block device. The path given
    /// to [`FileStore::open`] only names the store in messages.
    FwEnv(FwEnvConfig),
}

/// Where U-Boot's environment copies live, as `fw_env.config` (libubootenv,
/// u-boot-tools) says: a line per copy, `DEVICE OFFSET ENV_SIZE [SECTOR_SIZE [SECTORS]]`
/// (numbers decimal or `0x` hex), `#` comments. Two lines make a redundant environment;
/// both copies have the first line's size. Sector fields matter for erasing MTD flash
/// and are ignored for files and block devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FwEnvConfig {
    /// Each copy: device or file, and byte offset.
    pub copies: vec::Vec<(PathBuf, u64)>,
    /// Bytes per copy.
    pub size: usize,
}

fn config_number(field: &str, text: &str, line: usize) -> Result<u64> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| Error::Syntax {
        what: "fw_env.config",
        offset: line,
        reason: alloc::format!("line {line}: {field} {text:?} is not a number"),
    })
}

impl FwEnvConfig {
    /// Parse the text of an `fw_env.config`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut copies = vec::Vec::new();
        let mut size = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let n = i + 1;
            let f: vec::Vec<&str> = line.split_whitespace().collect();
            if f.len() < 3 {
                return Err(Error::Syntax {
                    what: "fw_env.config",
                    offset: n,
                    reason: alloc::format!(
                        "line {n}: expected DEVICE OFFSET ENV_SIZE, found {line:?}"
                    ),
                });
            }
            if copies.len() == 2 {
                return Err(Error::Syntax {
                    what: "fw_env.config",
                    offset: n,
                    reason: alloc::format!("line {n}: more than two environment copies"),
                });
            }
            let offset = config_number("offset", f[1], n)?;
            let this = usize::try_from(config_number("size", f[2], n)?).unwrap_or(usize::MAX);
            match size {
                None => size = Some(this),
                Some(s) if s != this => {
                    return Err(Error::Syntax {
                        what: "fw_env.config",
                        offset: n,
                        reason: alloc::format!(
                            "line {n}: the copies differ in size ({s} and {this} bytes)"
                        ),
                    })
                }
                Some(_) => {}
            }
            copies.push((PathBuf::from(f[0]), offset));
        }
        let size = size.ok_or_else(|| Error::Syntax {
            what: "fw_env.config",
            offset: 0,
            reason: "no environment copy is configured".to_string(),
        })?;
        let cfg = FwEnvConfig { copies, size };
        cfg.layout().check()?;
        // A copy that ends past the last byte there can be, or two copies sharing bytes:
        // the second would overwrite the first and the redundancy would be gone.
        let end = |off: u64| off.checked_add(size as u64);
        for (i, (path, off)) in cfg.copies.iter().enumerate() {
            if end(*off).is_none() {
                return Err(Error::Syntax {
                    what: "fw_env.config",
                    offset: i + 1,
                    reason: alloc::format!(
                        "copy {}: offset {off:#x} plus {size} bytes overflows",
                        i + 1
                    ),
                });
            }
            for (other, off2) in &cfg.copies[i + 1..] {
                if other == path && off.max(off2) < &end(*off.min(off2)).unwrap_or(u64::MAX) {
                    return Err(Error::Syntax {
                        what: "fw_env.config",
                        offset: i + 2,
                        reason: alloc::format!(
                            "the two copies overlap in {} ({off:#x} and {off2:#x}, {size} bytes each)",
                            path.display()
                        ),
                    });
                }
            }
        }
        Ok(cfg)
    }

    /// Read and parse an `fw_env.config` file (at most 64 KiB).
    pub fn read(path: &Path) -> Result<Self> {
        let f =
            File::open(path).map_err(|e| io(alloc::format!("opening {}", path.display()), e))?;
        let mut text = String::new();
        f.take(64 << 10)
            .read_to_string(&mut text)
            .map_err(|e| io(alloc::format!("reading {}", path.display()), e))?;
        Self::parse(&text)
    }

    fn layout(&self) -> Layout {
        Layout {
            size: self.size,
            redundant: self.copies.len() == 2,
        }
    }

    fn read_copy(&self, i: usize) -> Result<crate::ubootenv::Copy> {
        let (path, offset) = &self.copies[i];
        read_at(path, *offset, self.size).and_then(|b| UbootEnv::parse_copy(&b, self.layout()))
    }
}

impl Backend {
    /// Refuse settings no store can have (an environment size past
    /// [`ubootenv::MAX_ENV_SIZE`](crate::ubootenv::MAX_ENV_SIZE), say) before any I/O.
    pub fn check(&self) -> Result<()> {
        match self {
            Backend::Uboot { size, redundant } => crate::ubootenv::Layout {
                size: *size,
                redundant: *redundant,
            }
            .check(),
            Backend::FwEnv(c) => c.layout().check(),
            Backend::GrubEnv | Backend::AndroidMisc => Ok(()),
        }
    }
}

#[derive(Clone, Debug)]
enum State {
    Grub(RaucGrub),
    Uboot(RaucUboot, Option<Redundant>),
    Android(BootloaderControl),
}

/// An opened store: the model in memory, [`save`](FileStore::save) writes it back.
#[derive(Clone, Debug)]
pub struct FileStore {
    path: PathBuf,
    backend: Backend,
    state: State,
}

fn read_at(path: &Path, offset: u64, len: usize) -> Result<vec::Vec<u8>> {
    let f = File::open(path).map_err(|e| io(alloc::format!("opening {}", path.display()), e))?;
    let size = f.metadata().map_err(|e| io("reading the size", e))?.len();
    let end = offset.saturating_add(len as u64);
    if size < end && f.metadata().map(|m| m.is_file()).unwrap_or(true) {
        return Err(Error::Size {
            what: "store file",
            expected: end as usize,
            found: size as usize,
        });
    }
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, offset)
        .map_err(|e| io(alloc::format!("reading {}", path.display()), e))?;
    Ok(b)
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io(alloc::format!("opening {} for writing", path.display()), e))?;
    f.write_all_at(bytes, offset)
        .map_err(|e| io(alloc::format!("writing {}", path.display()), e))?;
    f.sync_data().map_err(|e| io("syncing", e))
}

/// Replace `path` with `bytes` atomically ([`keel_io::replace_file`]).
fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    keel_io::replace_file(path, bytes)
        .map_err(|e| io(alloc::format!("replacing {}", path.display()), e))
}

/// The largest GRUB environment file read (grub-editenv writes 1 KiB).
pub const MAX_GRUBENV: usize = 64 << 10;

impl FileStore {
    /// Create a fresh store for `slots` slots with `good` as the good, booted slot.
    /// A GRUB or U-Boot file is created; an Android misc file must exist (at least
    /// 2080 bytes) and only its 32-byte block is written.
    pub fn init(backend: Backend, path: &Path, slots: usize, good: Slot) -> Result<Self> {
        backend.check()?;
        let state = match &backend {
            Backend::GrubEnv => State::Grub(RaucGrub::init(slots, good)?),
            Backend::Uboot { redundant, .. } => {
                let r = redundant.then(|| Redundant {
                    env: UbootEnv::new(),
                    current: 1,
                    flags: 0,
                });
                State::Uboot(RaucUboot::init(slots, good)?, r)
            }
            Backend::AndroidMisc => {
                let n = u8::try_from(slots).map_err(|_| Error::SlotCount {
                    count: slots,
                    max: 4,
                })?;
                let _ = size_of_misc(path)?;
                State::Android(BootloaderControl::new(n, good)?)
            }
            Backend::FwEnv(c) => {
                // Both copies start valid, so tools that need one (fw_setenv) accept them.
                let r = (c.copies.len() == 2).then(|| Redundant {
                    env: UbootEnv::new(),
                    current: 1,
                    flags: 0,
                });
                if r.is_some() {
                    let empty = UbootEnv::new().to_copy(c.layout(), 0)?;
                    for (p, off) in &c.copies {
                        write_at(p, *off, &empty)?;
                    }
                }
                State::Uboot(RaucUboot::init(slots, good)?, r)
            }
        };
        let mut s = FileStore {
            path: path.to_path_buf(),
            backend,
            state,
        };
        if let (
            Backend::Uboot {
                size,
                redundant: true,
            },
            State::Uboot(..),
        ) = (&s.backend, &s.state)
        {
            // Both copies start valid so tools that need one (fw_setenv) accept the file.
            let env = UbootEnv::new().to_copy(
                Layout {
                    size: *size,
                    redundant: true,
                },
                0,
            )?;
            let mut both = env.clone();
            both.extend_from_slice(&env);
            replace_file(path, &both)?;
        }
        s.save()?;
        Ok(s)
    }

    /// Open an existing store.
    pub fn open(backend: Backend, path: &Path, slots: usize) -> Result<Self> {
        backend.check()?;
        let state = match &backend {
            Backend::GrubEnv => {
                // A GRUB environment block is 1 KiB; a file much larger (or /dev/zero) is
                // not one, and is not read to its end.
                let f = File::open(path)
                    .map_err(|e| io(alloc::format!("opening {}", path.display()), e))?;
                let mut b = vec::Vec::new();
                f.take(MAX_GRUBENV as u64 + 1)
                    .read_to_end(&mut b)
                    .map_err(|e| io(alloc::format!("reading {}", path.display()), e))?;
                if b.len() > MAX_GRUBENV {
                    return Err(Error::Size {
                        what: "GRUB environment file",
                        expected: MAX_GRUBENV,
                        found: b.len(),
                    });
                }
                State::Grub(RaucGrub::from_env(GrubEnv::parse(&b)?, slots)?)
            }
            Backend::Uboot {
                size,
                redundant: false,
            } => {
                let b = read_at(path, 0, *size)?;
                let c = UbootEnv::parse_copy(
                    &b,
                    Layout {
                        size: *size,
                        redundant: false,
                    },
                )?;
                State::Uboot(RaucUboot::from_env(c.env, slots)?, None)
            }
            Backend::Uboot {
                size,
                redundant: true,
            } => {
                let l = Layout {
                    size: *size,
                    redundant: true,
                };
                let c0 = read_at(path, 0, *size).and_then(|b| UbootEnv::parse_copy(&b, l));
                let c1 =
                    read_at(path, *size as u64, *size).and_then(|b| UbootEnv::parse_copy(&b, l));
                let r = Redundant::from_copies(c0, c1)?;
                State::Uboot(RaucUboot::from_env(r.env.clone(), slots)?, Some(r))
            }
            Backend::AndroidMisc => {
                let b = read_at(path, android::MISC_OFFSET, android::SIZE)?;
                State::Android(BootloaderControl::parse(&b)?)
            }
            Backend::FwEnv(c) if c.copies.len() == 2 => {
                let r = Redundant::from_copies(c.read_copy(0), c.read_copy(1))?;
                State::Uboot(RaucUboot::from_env(r.env.clone(), slots)?, Some(r))
            }
            Backend::FwEnv(c) => {
                State::Uboot(RaucUboot::from_env(c.read_copy(0)?.env, slots)?, None)
            }
        };
        Ok(FileStore {
            path: path.to_path_buf(),
            backend,
            state,
        })
    }

    /// Write the model back, in one crash-safe step.
    pub fn save(&mut self) -> Result<()> {
        match (&self.backend, &mut self.state) {
            (Backend::GrubEnv, State::Grub(g)) => {
                let block = g.to_env()?.to_bytes()?;
                debug_assert_eq!(block.len(), BLOCK_SIZE);
                replace_file(&self.path, &block)
            }
            (Backend::Uboot { size, .. }, State::Uboot(u, None)) => {
                let bytes = u.to_env()?.to_copy(
                    Layout {
                        size: *size,
                        redundant: false,
                    },
                    0,
                )?;
                if self.path.exists() {
                    write_at(&self.path, 0, &bytes)
                } else {
                    replace_file(&self.path, &bytes)
                }
            }
            (Backend::Uboot { size, .. }, State::Uboot(u, Some(r))) => {
                let env = u.to_env()?;
                let (copy, bytes) = r.next_write(&env, *size)?;
                write_at(&self.path, (copy * *size) as u64, &bytes)?;
                r.committed(env);
                Ok(())
            }
            (Backend::FwEnv(c), State::Uboot(u, None)) => {
                let bytes = u.to_env()?.to_copy(c.layout(), 0)?;
                let (p, off) = &c.copies[0];
                write_at(p, *off, &bytes)
            }
            (Backend::FwEnv(c), State::Uboot(u, Some(r))) => {
                let env = u.to_env()?;
                let (copy, bytes) = r.next_write(&env, c.size)?;
                let (p, off) = c.copies.get(copy).ok_or(Error::Internal(
                    "the redundant environment has no such copy",
                ))?;
                write_at(p, *off, &bytes)?;
                r.committed(env);
                Ok(())
            }
            (Backend::AndroidMisc, State::Android(c)) => {
                write_at(&self.path, android::MISC_OFFSET, &c.to_bytes())
            }
            _ => Err(Error::Internal("store state does not match its backend")),
        }
    }

    /// Set a variable of a GRUB or U-Boot environment besides the boot state (a slot's
    /// kernel arguments) and write it crash-safely, as [`save`](FileStore::save) does;
    /// on failure the store is as it was. An Android misc partition holds no variables.
    pub fn set_variable(&mut self, name: &str, value: &str) -> Result<()> {
        let before = self.state.clone();
        match &mut self.state {
            State::Grub(g) => g.set_var(name, value)?,
            State::Uboot(u, _) => u.set_var(name, value)?,
            State::Android(_) => {
                return Err(Error::NotCarried {
                    store: "an Android misc partition",
                    what: "variables",
                })
            }
        }
        let r = self.save();
        if r.is_err() {
            self.state = before;
        }
        r
    }

    /// A variable of a GRUB or U-Boot environment.
    pub fn variable(&self, name: &str) -> Option<&str> {
        match &self.state {
            State::Grub(g) => g.var(name),
            State::Uboot(u, _) => u.var(name),
            State::Android(_) => None,
        }
    }

    /// The model, for reading and changing.
    pub fn control(&mut self) -> &mut dyn AbControl {
        match &mut self.state {
            State::Grub(g) => g,
            State::Uboot(u, _) => u,
            State::Android(c) => c,
        }
    }

    /// The state of every slot.
    pub fn status(&self) -> vec::Vec<SlotState> {
        match &self.state {
            State::Grub(g) => g.status(),
            State::Uboot(u, _) => u.status(),
            State::Android(c) => c.status(),
        }
    }

    /// The slot the boot loader would choose next.
    pub fn next_boot(&self) -> Option<Slot> {
        match &self.state {
            State::Grub(g) => g.next_boot(),
            State::Uboot(u, _) => u.next_boot(),
            State::Android(c) => c.next_boot(),
        }
    }

    /// Change the model with `f` and write it back; if either fails, the store in memory
    /// stays as it was on disk.
    fn transact<T>(&mut self, f: impl FnOnce(&mut dyn AbControl) -> Result<T>) -> Result<T> {
        let before = self.state.clone();
        let r = f(self.control()).and_then(|v| self.save().map(|()| v));
        if r.is_err() {
            self.state = before;
        }
        r
    }
}

impl crate::BootControl for FileStore {
    fn slot_count(&self) -> usize {
        match &self.state {
            State::Grub(g) => g.slot_count(),
            State::Uboot(u, _) => u.slot_count(),
            State::Android(c) => c.slot_count(),
        }
    }
    fn rules(&self) -> &'static str {
        match self.backend {
            Backend::GrubEnv => "RAUC's GRUB script over a GRUB environment block",
            Backend::Uboot { .. } => "RAUC's U-Boot script over a U-Boot environment",
            Backend::AndroidMisc => "Android's boot_control HAL over the misc partition",
            Backend::FwEnv(_) => "RAUC's U-Boot script over the environment fw_env.config names",
        }
    }
    fn status(&self) -> Result<vec::Vec<SlotState>> {
        Ok(FileStore::status(self))
    }
    fn next_boot(&self) -> Result<Option<Slot>> {
        Ok(FileStore::next_boot(self))
    }
    fn set_active(&mut self, slot: Slot, tries: Option<u8>) -> Result<()> {
        self.transact(|c| c.set_active(slot, tries))
    }
    fn mark_good(&mut self, slot: Slot) -> Result<()> {
        self.transact(|c| c.mark_good(slot))
    }
    fn mark_bad(&mut self, slot: Slot) -> Result<()> {
        self.transact(|c| c.mark_bad(slot))
    }
    fn boot(&mut self) -> Result<Option<Slot>> {
        self.transact(|c| Ok(c.boot()))
    }
    fn carries_boot_arguments(&self) -> bool {
        !matches!(self.backend, Backend::AndroidMisc)
    }
    fn set_boot_arguments(&mut self, slot: Slot, args: &str) -> Result<()> {
        if !self.carries_boot_arguments() {
            return Err(Error::NotCarried {
                store: crate::BootControl::rules(self),
                what: "kernel arguments",
            });
        }
        self.set_variable(&alloc::format!("KEEL_{}_ARGS", slot.letter()), args)
    }
}

fn size_of_misc(path: &Path) -> Result<u64> {
    let m =
        std::fs::metadata(path).map_err(|e| io(alloc::format!("opening {}", path.display()), e))?;
    let need = android::MISC_OFFSET + android::SIZE as u64;
    if m.is_file() && m.len() < need {
        return Err(Error::Size {
            what: "android misc",
            expected: need as usize,
            found: m.len() as usize,
        });
    }
    Ok(m.len())
}
