//! The one backend specification: every place the suite keeps A/B boot state, with what
//! is needed to open it, and [`open`] for the stores that live in files.
//!
//! A system description names its backend by a [`BackendKind`] (`gpt-flatcar`, `grubenv`,
//! ...); the description's settings make a [`BackendSpec`]; [`open`] gives one
//! [`BootControl`] for it. The GPT backends keep the state in the slots' partition entries,
//! which keel-partition opens on the disk (`keel_partition::open_boot_control`); every
//! other store is a file or a device opened here.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::{BootControl, PriorityPolicy};
use crate::store::{Backend, FileStore, FwEnvConfig};

/// Which boot loader and store: the description's `backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum BackendKind {
    /// GPT attribute bits with ChromeOS firmware's rules.
    GptChromeos,
    /// GPT attribute bits with Flatcar GRUB's `gptprio` rules.
    GptFlatcar,
    /// A GRUB environment block with RAUC's variables.
    Grubenv,
    /// A U-Boot environment file or device with RAUC's variables.
    Uboot,
    /// A U-Boot environment where an `fw_env.config` puts it (libubootenv's and
    /// u-boot-tools' configuration), with RAUC's variables.
    FwEnv,
    /// Android's `bootloader_control` in the misc partition.
    AndroidMisc,
    /// systemd-boot entries with boot counting.
    SystemdBoot,
}

impl BackendKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [BackendKind; 7] = [
        BackendKind::GptChromeos,
        BackendKind::GptFlatcar,
        BackendKind::Grubenv,
        BackendKind::Uboot,
        BackendKind::FwEnv,
        BackendKind::AndroidMisc,
        BackendKind::SystemdBoot,
    ];

    /// The name as a description writes it.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::GptChromeos => "gpt-chromeos",
            BackendKind::GptFlatcar => "gpt-flatcar",
            BackendKind::Grubenv => "grubenv",
            BackendKind::Uboot => "uboot",
            BackendKind::FwEnv => "fw-env",
            BackendKind::AndroidMisc => "android-misc",
            BackendKind::SystemdBoot => "systemd-boot",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<BackendKind> {
        BackendKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The boot loader's own number of tries for a new slot.
    pub fn default_tries(self) -> u8 {
        match self {
            BackendKind::GptChromeos | BackendKind::AndroidMisc => 6,
            BackendKind::GptFlatcar | BackendKind::Grubenv => 1,
            BackendKind::Uboot | BackendKind::FwEnv | BackendKind::SystemdBoot => 3,
        }
    }

    /// Whether the store keeps the state in the slots' own GPT entries (opened on the
    /// disk by keel-partition, not by [`open`]).
    pub fn is_gpt(self) -> bool {
        matches!(self, BackendKind::GptChromeos | BackendKind::GptFlatcar)
    }

    /// Whether the store carries each slot's kernel arguments
    /// ([`BootControl::set_boot_arguments`]): a GRUB or U-Boot variable, a systemd-boot
    /// entry's `options` line. GPT and Android systems take the root from elsewhere (the
    /// kernel partition, vbmeta).
    pub fn carries_boot_arguments(self) -> bool {
        matches!(
            self,
            BackendKind::Grubenv
                | BackendKind::Uboot
                | BackendKind::FwEnv
                | BackendKind::SystemdBoot
        )
    }
}

impl core::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a system's A/B boot state lives, with everything needed to open it. Paths are
/// as on the running system; [`open`] reads them under a root directory.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendSpec {
    /// GPT attribute bits of the slots' partitions, with these rules.
    Gpt(PriorityPolicy),
    /// A GRUB environment block.
    GrubEnv(PathBuf),
    /// A U-Boot environment file or device.
    Uboot {
        /// The file or device.
        path: PathBuf,
        /// Bytes a copy.
        size: usize,
        /// Two copies, the second right after the first.
        redundant: bool,
    },
    /// A U-Boot environment where this `fw_env.config` puts it.
    FwEnv(PathBuf),
    /// Android's misc partition.
    AndroidMisc(PathBuf),
    /// systemd-boot entries in this directory (the ESP's `loader/entries`), one a slot,
    /// their entry ids the slots' names.
    SystemdBoot(PathBuf),
}

impl BackendSpec {
    /// Its kind.
    pub fn kind(&self) -> BackendKind {
        match self {
            BackendSpec::Gpt(PriorityPolicy::ChromeOs) => BackendKind::GptChromeos,
            BackendSpec::Gpt(_) => BackendKind::GptFlatcar,
            BackendSpec::GrubEnv(_) => BackendKind::Grubenv,
            BackendSpec::Uboot { .. } => BackendKind::Uboot,
            BackendSpec::FwEnv(_) => BackendKind::FwEnv,
            BackendSpec::AndroidMisc(_) => BackendKind::AndroidMisc,
            BackendSpec::SystemdBoot(_) => BackendKind::SystemdBoot,
        }
    }

    /// What the store writes: each file or device under `root` (as [`open`] opens it),
    /// with the byte range in it (offset, length), for an agent to check that none of
    /// them is a slot. An fw_env.config's copies are read from it.
    pub fn writes(&self, root: &Path) -> Result<Vec<(PathBuf, u64, u64)>> {
        Ok(match self {
            BackendSpec::Gpt(_) | BackendSpec::SystemdBoot(_) => Vec::new(),
            BackendSpec::GrubEnv(p) => {
                alloc::vec![(under_root(root, p), 0, crate::store::MAX_GRUBENV as u64)]
            }
            BackendSpec::AndroidMisc(p) => alloc::vec![(
                under_root(root, p),
                crate::android::MISC_OFFSET,
                crate::android::SIZE as u64
            )],
            BackendSpec::Uboot {
                path,
                size,
                redundant,
            } => alloc::vec![(
                under_root(root, path),
                0,
                (*size as u64).saturating_mul(if *redundant { 2 } else { 1 })
            )],
            BackendSpec::FwEnv(config) => {
                let c = fw_env(root, config)?;
                let mut out = Vec::new();
                for (p, off) in c.copies {
                    out.push((contained(root, &p)?, off, c.size as u64));
                }
                out
            }
        })
    }
}

/// `p` (absolute, on the running system) under `root`.
pub fn under_root(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// [`under_root`] for a path read from a file (an fw_env.config): one with `..` could name
/// something outside the root, and is refused.
fn contained(root: &Path, p: &Path) -> Result<PathBuf> {
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::PathEscapes(p.display().to_string()));
    }
    Ok(under_root(root, p))
}

/// An fw_env.config read under `root`, its copies' paths as it names them.
fn fw_env(root: &Path, config: &Path) -> Result<FwEnvConfig> {
    let path = under_root(root, config);
    // A configuration is a few lines; anything much larger is not one.
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(
            std::fs::File::open(&path).map_err(|e| Error::Io {
                context: alloc::format!("opening {}", path.display()),
                source: e,
            })?,
            64 << 10,
        ),
        &mut text,
    )
    .map_err(|e| Error::Io {
        context: alloc::format!("reading {}", path.display()),
        source: e,
    })?;
    FwEnvConfig::parse(&text)
}

/// Open the store of `spec` for a pair of slots: files are read under `root` (`/` on the
/// running system), and `ids` are the slots' names, A first (systemd-boot's entry ids).
/// The GPT backends are opened on the disk by keel-partition: here they are an error.
pub fn open(spec: &BackendSpec, root: &Path, ids: &[&str]) -> Result<Box<dyn BootControl>> {
    let slots = ids.len();
    Ok(match spec {
        BackendSpec::Gpt(_) => return Err(Error::NeedsDisk(spec.kind().name())),
        BackendSpec::GrubEnv(p) => Box::new(FileStore::open(
            Backend::GrubEnv,
            &under_root(root, p),
            slots,
        )?),
        BackendSpec::Uboot {
            path,
            size,
            redundant,
        } => Box::new(FileStore::open(
            Backend::Uboot {
                size: *size,
                redundant: *redundant,
            },
            &under_root(root, path),
            slots,
        )?),
        BackendSpec::FwEnv(config) => {
            let mut c = fw_env(root, config)?;
            for (p, _) in &mut c.copies {
                *p = contained(root, p)?;
            }
            Box::new(FileStore::open(
                Backend::FwEnv(c),
                &under_root(root, config),
                slots,
            )?)
        }
        BackendSpec::AndroidMisc(p) => Box::new(FileStore::open(
            Backend::AndroidMisc,
            &under_root(root, p),
            slots,
        )?),
        BackendSpec::SystemdBoot(entries) => {
            let entries = under_root(root, entries);
            // The ESP is two levels above loader/entries.
            let esp = entries
                .parent()
                .and_then(Path::parent)
                .ok_or_else(|| Error::EntriesDir(entries.display().to_string()))?;
            Box::new(crate::blsdir::BlsDir::open(esp, ids)?)
        }
    })
}

/// Kernel arguments that say where the verity-mapped root is; an entry keeps only the
/// newest.
const ROOT_ARGUMENTS: [&str; 6] = [
    "dm-mod.create",
    "verity.usrhash",
    "roothash",
    "usrhash",
    "systemd.verity_root_hash",
    "systemd.verity_usr_hash",
];

/// A BLS entry with `arg` in place of any earlier root argument on its `options` line
/// (one is added if it has none); every other line and argument is kept.
pub fn with_root_argument(entry: &str, arg: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for line in entry.lines() {
        let Some(rest) = line.trim_start().strip_prefix("options").filter(|_| !done) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let mut args: Vec<String> = split_cmdline(rest)
            .into_iter()
            .filter(|a| !ROOT_ARGUMENTS.contains(&a.split_once('=').map_or(a.as_str(), |(k, _)| k)))
            .map(|a| match a.split_once('=') {
                // Quoting was dropped by the split; values with spaces need it back.
                Some((k, v)) if v.contains(' ') => alloc::format!("{k}=\"{v}\""),
                _ => a,
            })
            .collect();
        args.push(String::from(arg));
        out.push_str("options ");
        out.push_str(&args.join(" "));
        out.push('\n');
        done = true;
    }
    if !done {
        out.push_str("options ");
        out.push_str(arg);
        out.push('\n');
    }
    out
}

/// Split as the kernel does: on spaces, except inside double quotes (which are dropped).
pub fn split_cmdline(text: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in text.trim().chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    args.push(core::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        args.push(cur);
    }
    args
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_name() {
        for k in BackendKind::ALL {
            assert_eq!(BackendKind::from_name(k.name()), Some(k));
        }
        assert_eq!(BackendKind::from_name("lilo"), None);
    }

    #[test]
    fn the_root_argument_replaces_the_old_one_and_keeps_the_rest() {
        let entry = "title Keel B\nlinux /vmlinuz\noptions quiet dm-mod.create=\"old,,,ro,0 8 verity 1\" rw\n";
        let new = with_root_argument(entry, "dm-mod.create=\"keel-b,,,ro,0 16 verity 1\"");
        assert_eq!(
            new,
            "title Keel B\nlinux /vmlinuz\noptions quiet rw dm-mod.create=\"keel-b,,,ro,0 16 verity 1\"\n"
        );
        assert_eq!(
            with_root_argument("title x\n", "roothash=ab"),
            "title x\noptions roothash=ab\n"
        );
        assert_eq!(
            split_cmdline("a=1  dm-mod.create=\"x,,,ro,0 8 verity 1\" b\n"),
            ["a=1", "dm-mod.create=x,,,ro,0 8 verity 1", "b"]
        );
    }
}
