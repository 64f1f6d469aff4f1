//! The agent: install into the other slot, arm it, commit it after a healthy boot.

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use keel_bootflags::{BootControl, Slot, SlotState};
use keel_io::{Progress, ReadAt, Region, WriteAt};
use keel_partition::gpt::Partition;
use keel_partition::{AbDisk, GptDisk, SlotSelector};
use keel_payload::{ApplyOptions, Manifest, VersionCheck};
use keel_verity::{BuildOptions, FecGeometry, FormatOptions, RootDescriptor, TableOptions};
use serde::Serialize;

use crate::booted::{clues, Clue};
use crate::error::{Error, Refusal, Result};
use crate::record::{self, SlotRecord};
use crate::system::{SlotDevice, System};
use keel_bootflags::BackendSpec;

/// An update agent for one system on one disk. `disk` is the disk whose GPT holds the
/// slots: `&File` of an image or a block device, or `&Shared<_>` of anything else.
#[derive(Debug)]
pub struct Agent<'d, D> {
    system: System,
    disk: &'d D,
    root: PathBuf,
    state_dir: PathBuf,
    booted: Option<Slot>,
    checkpoint_bytes: Option<u64>,
    disk_path: Option<PathBuf>,
}

/// What [`Agent::install`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Installed {
    /// The slot written and armed.
    pub slot: Slot,
    /// The version now in it.
    pub version: String,
    /// The payload operation the apply resumed at (0: from the start).
    pub resumed_at: usize,
    /// The slot's verified dm-verity root hash, if it has a tree.
    pub root_hash: Option<Vec<u8>>,
}

/// A check that the booted system is healthy, run by [`Agent::commit`].
pub enum HealthCheck {
    /// A command that must exit 0 within the time limit (killed after it).
    Command {
        /// Shown in reports.
        name: String,
        /// Program and arguments.
        argv: Vec<String>,
        /// Time limit.
        timeout: Duration,
    },
    /// A function that returns an error when unhealthy (its message is the reason
    /// reported; a string converts with `.into()`).
    Func {
        /// Shown in reports.
        name: String,
        /// The check.
        check: Box<dyn Fn() -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>>,
    },
}

impl std::fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthCheck::Command {
                name,
                argv,
                timeout,
            } => f
                .debug_struct("Command")
                .field("name", name)
                .field("argv", argv)
                .field("timeout", timeout)
                .finish(),
            HealthCheck::Func { name, .. } => f
                .debug_struct("Func")
                .field("name", name)
                .finish_non_exhaustive(),
        }
    }
}

impl HealthCheck {
    fn name(&self) -> &str {
        match self {
            HealthCheck::Command { name, .. } | HealthCheck::Func { name, .. } => name,
        }
    }

    fn run(&self) -> std::result::Result<(), String> {
        match self {
            HealthCheck::Func { check, .. } => check().map_err(|e| e.to_string()),
            HealthCheck::Command { argv, timeout, .. } => {
                let (prog, args) = argv.split_first().ok_or("no command")?;
                let mut child = Command::new(prog)
                    .args(args)
                    .spawn()
                    .map_err(|e| format!("{prog}: {e}"))?;
                // A limit too far to represent is no limit at all, never a panic.
                let deadline = Instant::now().checked_add(*timeout);
                loop {
                    match child.try_wait().map_err(|e| e.to_string())? {
                        Some(s) if s.success() => return Ok(()),
                        Some(s) => return Err(format!("{prog} exited with {s}")),
                        None if deadline.is_some_and(|d| Instant::now() >= d) => {
                            let _ = child.kill();
                            let _ = child.wait();
                            return Err(format!("{prog} ran past its {timeout:?} limit"));
                        }
                        None => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        }
    }
}

/// What [`Agent::commit`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Commit {
    /// The booted slot passed its checks and is now marked good.
    Committed(Slot),
    /// The booted slot was already good: nothing to do.
    AlreadyGood(Slot),
    /// A check failed: the booted slot is marked bad; reboot to fall back.
    RebootNeeded {
        /// The slot marked bad.
        slot: Slot,
        /// The check that failed.
        check: String,
        /// Why.
        reason: String,
    },
}

/// One slot in [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SlotStatus {
    /// The slot's name in the description.
    pub name: String,
    /// A or B.
    pub slot: String,
    /// Whether the running system booted from it.
    pub booted: bool,
    /// Whether the boot loader will choose it next.
    pub next_boot: bool,
    /// Boot priority.
    pub priority: u8,
    /// Tries left.
    pub tries: u8,
    /// Marked good.
    pub successful: bool,
    /// The version installed, if known.
    pub version: Option<String>,
    /// The dm-verity root hash, if known.
    pub root_hash: Option<String>,
}

/// Both slots and the last install error, for `status --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// The boot loader's rules.
    pub rules: String,
    /// The slots.
    pub slots: Vec<SlotStatus>,
    /// The last install's error, if it failed.
    pub last_error: Option<String>,
}

impl<'d, D> Agent<'d, D>
where
    D: ReadAt,
    &'d D: WriteAt,
{
    /// An agent for `system` on `disk`, reading /proc and /sys under `/` and keeping its
    /// records in `/var/lib/keel`.
    pub fn new(system: System, disk: &'d D) -> Self {
        Agent {
            system,
            disk,
            root: PathBuf::from("/"),
            state_dir: PathBuf::from("/var/lib/keel"),
            booted: None,
            checkpoint_bytes: None,
            disk_path: None,
        }
    }

    /// The path `disk` was opened from (on the running system, read under the root
    /// directory), when it is not the description's `boot.disk`: slots named by a device
    /// path are checked to be partitions of this disk. Without it, `boot.disk`, else the
    /// disk the kernel booted from.
    pub fn disk_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.disk_path = Some(path.into());
        self
    }

    /// Read /proc, /sys and /etc under `root` (a test's fake tree, an image being built).
    pub fn root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = root.into();
        self
    }

    /// Keep the slot records and resume state here.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = dir.into();
        self
    }

    /// Take `slot` as the booted slot instead of detecting it (an installer running from
    /// other media, a test).
    pub fn booted(mut self, slot: Slot) -> Self {
        self.booted = Some(slot);
        self
    }

    /// Make the apply durable and record its resume point after this many bytes
    /// (default: keel-payload's 64 MiB). Smaller: less work repeated after a power cut.
    pub fn checkpoint_bytes(mut self, bytes: u64) -> Self {
        self.checkpoint_bytes = Some(bytes);
        self
    }

    /// The system.
    pub fn system(&self) -> &System {
        &self.system
    }

    fn gpt(&self) -> Result<GptDisk<&'d D>> {
        Ok(GptDisk::open(self.disk, None)?)
    }

    /// The partitions of the pair, in the order of [`System::slots`], each checked
    /// against its expected type. Every device reference of the description (each slot's
    /// data and hash device, and a boot-state store on a partition) is resolved to the
    /// partition it is before anything is compared: two references to one partition, or
    /// to overlapping extents, are refused ([`Error::SameDevice`]) however they are
    /// spelled, and a device path must be a partition of this disk ([`Error::OtherDisk`]).
    pub fn partitions(&self) -> Result<[Partition; 2]> {
        let refs = self.resolve()?;
        let find = |i: usize| -> Result<Partition> {
            let spec = &self.system.slots[i];
            let p = refs[i].partition.clone();
            if let Some(t) = spec.partition_type {
                if p.type_guid != t {
                    return Err(Error::Device {
                        slot: spec.name.clone(),
                        reason: format!(
                            "partition {} has type {}, expected {t}",
                            p.number, p.type_guid
                        ),
                    });
                }
            }
            Ok(p)
        };
        Ok([find(0)?, find(1)?])
    }

    /// Every device reference resolved and checked: the slots' data partitions (in the
    /// order of [`System::slots`]), then their hash partitions where they have them.
    fn resolve(&self) -> Result<Vec<crate::devices::Resolved>> {
        use crate::devices::{check_backend_path, check_distinct, Resolved};
        let parts = self.gpt()?.partitions();
        let boot_disk = self.boot_disk_name()?;
        let mut refs = Vec::new();
        for (i, spec) in self.system.slots.iter().enumerate() {
            let field = format!("slot {} ({}).device", spec.slot, spec.name);
            let partition = self.find_partition(&parts, &field, &spec.device, &boot_disk)?;
            refs.push(Resolved { field, partition });
            debug_assert_eq!(refs.len(), i + 1);
        }
        for spec in &self.system.slots {
            if let Some(dev) = &spec.hash_device {
                let field = format!("slot {} ({}).hash-device", spec.slot, spec.name);
                let partition = self.find_partition(&parts, &field, dev, &boot_disk)?;
                refs.push(Resolved { field, partition });
            }
        }
        check_distinct(&refs)?;
        let disk = boot_disk.as_ref().ok().map(String::as_str);
        for (field, path) in self.backend_paths()? {
            check_backend_path(&self.root, field, &path, disk, &refs)?;
        }
        Ok(refs)
    }

    /// The files the boot backend writes, with the setting that names them.
    fn backend_paths(&self) -> Result<Vec<(&'static str, PathBuf)>> {
        let field = match &self.system.backend {
            BackendSpec::GrubEnv(_) => "boot.grubenv",
            BackendSpec::Uboot { .. } => "boot.env-file",
            BackendSpec::FwEnv(_) => "boot.fw-env-config",
            BackendSpec::AndroidMisc(_) => "boot.misc-device",
            _ => "boot",
        };
        Ok(self
            .system
            .backend
            .files(&self.root)?
            .into_iter()
            .map(|p| (field, p))
            .collect())
    }

    /// The kernel name of the disk holding the slots: the disk given with
    /// [`Agent::disk_path`], else `boot.disk`, else the disk the kernel booted from.
    /// `Err(how it was given)` when it is not a block device the kernel knows (an image
    /// file): then no device path can name a partition of it.
    fn boot_disk_name(&self) -> Result<std::result::Result<String, String>> {
        match self.disk_path.as_ref().or(self.system.disk.as_ref()) {
            Some(p) => Ok(crate::devices::disk_name(&self.root, p)
                .ok_or_else(|| format!("{} (not a block device)", p.display()))),
            None => Ok(crate::booted::boot_disk(&self.root)
                .ok()
                .and_then(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
                .ok_or_else(|| "the disk the kernel booted from (not found)".to_string())),
        }
    }

    /// The partition of the boot disk `device` names (for the setting `field`).
    fn find_partition(
        &self,
        parts: &[Partition],
        field: &str,
        device: &SlotDevice,
        boot_disk: &std::result::Result<String, String>,
    ) -> Result<Partition> {
        let number = match device {
            SlotDevice::Path(dev) => {
                let found = crate::devices::kernel_device(&self.root, dev);
                let other = |found: String| Error::OtherDisk {
                    field: field.to_string(),
                    device: dev.clone(),
                    found,
                    boot_disk: match boot_disk {
                        Ok(d) | Err(d) => d.clone(),
                    },
                };
                match (found, boot_disk) {
                    (Some(kd), Ok(disk)) => match kd.partition {
                        Some((d, n)) if &d == disk => Some(n),
                        Some((d, n)) => return Err(other(format!("partition {n} of {d}"))),
                        None => return Err(other(format!("{}, a whole disk", kd.name))),
                    },
                    (Some(kd), Err(_)) => {
                        return Err(other(match kd.partition {
                            Some((d, n)) => format!("partition {n} of {d}"),
                            None => kd.name,
                        }))
                    }
                    (None, _) => return Err(other("not a block device the kernel knows".into())),
                }
            }
            _ => None,
        };
        let hit = parts.iter().find(|p| match device {
            SlotDevice::PartLabel(l) => &p.name == l,
            SlotDevice::PartUuid(g) => p.guid == *g,
            SlotDevice::Path(_) => number == Some(p.number),
        });
        hit.cloned().ok_or_else(|| Error::Device {
            slot: field.to_string(),
            reason: format!("{device:?} is not a partition of the boot disk"),
        })
    }

    /// Where `slot`'s dm-verity tree goes: its own hash partition (at offset 0), or
    /// the slot itself after `data_size` bytes of data; with the kernel's name for it.
    fn tree_place(&self, slot: Slot, data_size: u64) -> Result<(Region<&'d D>, u64, String)> {
        let spec = self.system.slot(slot);
        match &spec.hash_device {
            Some(_) => {
                let gpt = self.gpt()?;
                let suffix = format!("({}).hash-device", spec.name);
                let p = self
                    .resolve()?
                    .into_iter()
                    .find(|r| r.field.ends_with(&suffix))
                    .map(|r| r.partition)
                    .ok_or_else(|| Error::Device {
                        slot: spec.name.clone(),
                        reason: "no hash device".into(),
                    })?;
                let ss = gpt.sector_size();
                let r = Region::new(self.disk, p.first_lba * ss, p.sectors() * ss)
                    .map_err(|e| Error::io("the slot's hash partition", e))?;
                Ok((r, 0, format!("PARTUUID={}", p.guid)))
            }
            None => Ok((self.region(slot)?, data_size, self.kernel_device(slot)?)),
        }
    }

    /// The tree (and parity) of `params` fit where they go, or a refusal naming the
    /// sizes: checked before anything is written.
    fn check_tree_space(&self, slot: Slot, params: &keel_verity::VerityParams) -> Result<()> {
        let (place, offset, _) = self.tree_place(slot, params.data_size())?;
        let data_room = self.region(slot)?.len();
        if params.data_size() > data_room {
            return Err(Refusal::ImageTooLarge {
                slot,
                image: params.data_size(),
                room: data_room,
            }
            .into());
        }
        let geometry = keel_verity::TreeGeometry::new(params, offset, false)?;
        let mut need = geometry.tree_offset() + geometry.tree_size();
        if let Some(roots) = self.system.verity.as_ref().and_then(|v| v.fec_roots) {
            need += FecGeometry::on_hash_device(params, &geometry, roots, need)?.parity_size();
        }
        if need > place.len() {
            return Err(Refusal::TreeTooLarge {
                slot,
                place: if offset == 0 {
                    "hash partition"
                } else {
                    "partition"
                },
                room: place.len(),
                need,
            }
            .into());
        }
        Ok(())
    }

    fn partition_of(&self, slot: Slot) -> Result<Partition> {
        let parts = self.partitions()?;
        let i = usize::from(self.system.slots[1].slot == slot);
        Ok(parts[i].clone())
    }

    /// The slot's partition as a device of its own.
    fn region(&self, slot: Slot) -> Result<Region<&'d D>> {
        let p = self.partition_of(slot)?;
        let ss = self.gpt()?.sector_size();
        Region::new(self.disk, p.first_lba * ss, p.sectors() * ss)
            .map_err(|e| Error::io("the slot's region", e))
    }

    /// The boot-state backend of the description, opened: the GPT slots on the disk,
    /// or keel-bootflags' store of the spec (files read under the root directory; the
    /// systemd-boot entry ids are the slots' names).
    pub fn boot_control(&self) -> Result<Box<dyn BootControl + 'd>> {
        if let BackendSpec::Gpt(policy) = &self.system.backend {
            let [a, b] = self.partitions()?;
            let (a, b) = if self.system.slots[0].slot == Slot::A {
                (a, b)
            } else {
                (b, a)
            };
            let sel = SlotSelector::Numbers(a.number, b.number);
            return Ok(Box::new(AbDisk::new(self.gpt()?, &sel, *policy)?));
        }
        let mut ids = [""; 2];
        for s in &self.system.slots {
            if let Some(id) = ids.get_mut(s.slot.index()) {
                *id = s.name.as_str();
            }
        }
        Ok(keel_bootflags::spec::open(
            &self.system.backend,
            &self.root,
            &ids,
        )?)
    }

    /// The slot the running system booted from: as set with [`Agent::booted`], else
    /// from the kernel command line and /sys under the root directory.
    pub fn booted_slot(&self) -> Result<Slot> {
        if let Some(s) = self.booted {
            return Ok(s);
        }
        let found = clues(&self.root)?;
        if found.is_empty() {
            return Err(Error::BootedSlot(
                "the kernel command line names no root, usr or verity root hash".into(),
            ));
        }
        let parts = self.partitions()?;
        let boot_disk = self.boot_disk_name()?;
        let mut hits = Vec::new();
        for (i, spec) in self.system.slots.iter().enumerate() {
            let p = &parts[i];
            let rec = record::read(&self.state_dir, spec.slot)?;
            let hash = rec
                .and_then(|r| r.root_hash)
                .and_then(|h| hex::decode(h).ok());
            let matches = found.iter().any(|c| match c {
                Clue::PartUuid(g) => p.guid == *g,
                Clue::PartLabel(l) => &p.name == l,
                Clue::Partition { disk, number } => {
                    p.number == *number
                        && match (disk, &boot_disk) {
                            (Some(d), Ok(b)) => d == b,
                            // A partition of a disk the kernel names is not one of an
                            // image file's: the same number proves nothing.
                            (Some(_), Err(_)) => false,
                            (None, _) => true,
                        }
                }
                Clue::RootHash(h) => hash.as_deref() == Some(h.as_slice()),
            });
            if matches {
                hits.push(spec.slot);
            }
        }
        match hits[..] {
            [s] => Ok(s),
            [] => Err(Error::BootedSlot(format!(
                "the kernel command line points at neither slot ({found:?})"
            ))),
            _ => Err(Error::BootedSlot(format!(
                "the kernel command line points at both slots ({found:?})"
            ))),
        }
    }

    /// The version in `slot`: its record, or for the booted slot the running system's
    /// `VERSION_ID` (a slot written by the image builder has no record).
    fn installed_version(&self, slot: Slot, booted: bool) -> Result<Option<String>> {
        if let Some(r) = record::read(&self.state_dir, slot)? {
            return Ok(Some(r.version));
        }
        if !booted {
            return Ok(None);
        }
        let os = record::read_small(&self.root.join("etc/os-release"))?;
        Ok(os.and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VERSION_ID="))
                .map(|v| v.trim_matches('"').to_string())
        }))
    }

    /// Install a payload into the slot that is not running and arm it. In order: the
    /// signature, compatible string, version (against the booted slot's and the
    /// minimum) and dm-verity requirement are checked before anything is written; the
    /// target slot is marked unbootable; the payload is applied (a delta from the booted
    /// slot, or full), resumably; the dm-verity tree (and parity) is written after the
    /// data and the slot verified against the signed root; the slot's record is stored;
    /// the slot is armed with the configured tries.
    ///
    /// Interrupted at any point (a crash, a power cut, [`Progress::cancelled`]), the same
    /// call with the same payload converges to the same armed slot.
    pub fn install<R: Read>(
        &self,
        payload: R,
        progress: Option<&dyn Progress>,
    ) -> Result<Installed> {
        self.install_inner(
            Replay {
                r: payload,
                head: Vec::new(),
            },
            progress,
        )
    }

    /// [`Agent::install`] from a payload that can seek (a file, keel-fetch's
    /// `HttpReader`): an install resumed after an interruption moves past the data it
    /// already applied instead of reading (or downloading) it again.
    pub fn install_seekable<R: Read + Seek>(
        &self,
        payload: R,
        progress: Option<&dyn Progress>,
    ) -> Result<Installed> {
        self.install_inner(
            SeekInput {
                r: payload,
                check: |_| Ok(()),
            },
            progress,
        )
    }

    /// The clock, checked against the time floor: the newest of [`BUILD_TIME_FLOOR`] and
    /// the timestamp of the last release index this agent accepted (kept in the state
    /// directory). A clock more than an hour behind it is refused ([`Error::ClockBehind`]): expiry dates
    /// and keys' not-after dates mean nothing on a clock that was set back.
    pub fn trusted_now(&self) -> Result<u64> {
        let floor = self.time_floor()?;
        let now = keel_trust::unix_now();
        // An hour's grace: a device whose clock trails the publisher's by minutes (not yet
        // synchronised) is not a clock set back to replay an expired index.
        if now.saturating_add(CLOCK_GRACE) < floor {
            return Err(Error::ClockBehind { now, floor });
        }
        Ok(now)
    }

    fn time_floor(&self) -> Result<u64> {
        let path = self.state_dir.join("time-floor");
        let stored = record::read_small(&path)?
            .map(|t| {
                t.trim().parse::<u64>().map_err(|_| {
                    Error::io(
                        format!("reading {}", path.display()),
                        std::io::Error::other("not a unix time"),
                    )
                })
            })
            .transpose()?;
        Ok(stored.unwrap_or(0).max(BUILD_TIME_FLOOR))
    }

    /// Raise the time floor to `t` (an accepted index's signed timestamp).
    fn raise_time_floor(&self, t: u64) -> Result<()> {
        if t > self.time_floor()? {
            std::fs::create_dir_all(&self.state_dir)
                .map_err(|e| Error::io(format!("creating {}", self.state_dir.display()), e))?;
            record::replace(
                &self.state_dir.join("time-floor"),
                format!("{t}\n").as_bytes(),
            )?;
        }
        Ok(())
    }

    /// The last install's error for [`Agent::status`], or none after a success.
    fn record_outcome(&self, r: &Result<Installed>) -> Result<()> {
        let last = record::error_path(&self.state_dir);
        match r {
            Ok(_) => record::remove(&last)?,
            Err(e) => {
                let _ = record::replace(&last, e.to_string().as_bytes());
            }
        }
        Ok(())
    }

    /// The install, its outcome kept for [`Agent::status`].
    fn install_inner<P: PayloadInput>(
        &self,
        payload: P,
        progress: Option<&dyn Progress>,
    ) -> Result<Installed> {
        self.install_release(payload, progress, None)
    }

    /// [`Agent::install_inner`] of the payload a release index names for `release`
    /// (its version): a payload signed for another version is refused before anything
    /// is written.
    fn install_release<P: PayloadInput>(
        &self,
        payload: P,
        progress: Option<&dyn Progress>,
        release: Option<&str>,
    ) -> Result<Installed> {
        let r = self.install_steps(payload, progress, release);
        self.record_outcome(&r)?;
        r
    }

    fn install_steps<P: PayloadInput>(
        &self,
        mut payload: P,
        progress: Option<&dyn Progress>,
        release: Option<&str>,
    ) -> Result<Installed> {
        // Every device reference resolved and checked before anything else: two
        // spellings of one partition never reach a write.
        self.resolve()?;
        let now = self.trusted_now()?;
        let booted = match self.booted_slot() {
            Ok(s) => Some(s),
            Err(e) if self.system.protect_booted_slot => {
                return Err(Refusal::BootedSlotUnknown {
                    source: Box::new(e),
                }
                .into())
            }
            Err(_) => None,
        };
        let mut boot = self.boot_control()?;
        let target = match booted {
            Some(b) => self.system.other(b),
            // Unprotected and unknown: the slot the boot loader would not choose.
            None => match boot.next_boot()? {
                Some(n) => self.system.other(n),
                None => self.system.slots[1].slot,
            },
        };
        let manifest = payload.manifest(&self.system.keyring, now)?;
        if let Some(v) = release.filter(|v| !same_version(v, &manifest.version)) {
            // The index's signers chose a release; the payload's signer says what it
            // is. A holder of the index key alone must not be able to point a release at
            // any other validly signed payload.
            return Err(Error::ReleaseMismatch {
                index: v.to_string(),
                payload: manifest.version.clone(),
            });
        }
        let installed = match booted {
            Some(b) => self.installed_version(b, true)?,
            None => None,
        };
        self.check_release(&manifest, installed.as_deref())?;
        let descriptor = self.check_verity(&manifest)?;
        if let Some(d) = &descriptor {
            self.check_tree_space(target, d.params())?;
        }
        if manifest.source.is_some() && booted.is_none() {
            return Err(Refusal::DeltaWithoutSource.into());
        }

        // From here on the target is written: first make sure it is never booted half done.
        boot.mark_bad(target)?;
        record::remove(&record::path(&self.state_dir, target))?;
        let resume = record::resume_path(&self.state_dir, target);
        std::fs::create_dir_all(&self.state_dir)
            .map_err(|e| Error::io(format!("creating {}", self.state_dir.display()), e))?;
        let version = match &installed {
            Some(v) => VersionCheck::Installed(v),
            None => VersionCheck::Unchecked,
        };
        let mut opts = ApplyOptions::new(&self.system.keyring, version)
            .now(now)
            .compatible(self.system.compatible.as_str())
            .allow_downgrade(self.system.allow_downgrade)
            .allow_reinstall(true)
            .max_resumes(self.system.max_resumes)
            .state(&resume);
        if let Some(p) = progress {
            opts = opts.progress(p);
        }
        if let Some(n) = self.checkpoint_bytes {
            opts = opts.checkpoint_bytes(n);
        }
        let mut region = self.region(target)?;
        let applied = match booted.filter(|_| manifest.source.is_some()) {
            Some(b) => payload.apply(Some(&self.region(b)?), &mut region, &opts)?,
            None => payload.apply(None, &mut region, &opts)?,
        };
        // Before anything makes the slot bootable: the payload is the one asked for.
        payload.check()?;
        let (root_hash, kernel_argument) = match &descriptor {
            Some(d) => {
                let arg = self.write_tree(target, d, &mut region, progress)?;
                (Some(d.root_hash().to_vec()), Some(arg))
            }
            None => (None, None),
        };
        if let Some(arg) = &kernel_argument {
            self.write_boot_arguments(target, arg)?;
        }
        record::write(
            &self.state_dir,
            target,
            &SlotRecord {
                version: manifest.version.clone(),
                root_hash: root_hash.as_deref().map(hex::encode),
                kernel_argument,
            },
        )?;
        // Opened afresh: the boot arguments may have been written to the same store.
        drop(boot);
        self.boot_control()?
            .set_active(target, Some(self.system.tries))?;
        Ok(Installed {
            slot: target,
            version: manifest.version,
            resumed_at: applied.resumed_at,
            root_hash,
        })
    }

    fn check_release(&self, m: &Manifest, installed: Option<&str>) -> Result<()> {
        if m.compatible != self.system.compatible {
            return Err(Refusal::Incompatible {
                payload: m.compatible.clone(),
                system: self.system.compatible.clone(),
            }
            .into());
        }
        if let Some(min) = &self.system.minimum_version {
            let below = keel_version::Version::compare(&m.version, min)
                .map_err(|source| Refusal::BadVersion {
                    version: m.version.clone(),
                    source,
                })?
                .is_lt();
            if below {
                return Err(Refusal::BelowMinimum {
                    version: m.version.clone(),
                    minimum: min.clone(),
                }
                .into());
            }
        }
        if installed.is_none() && !self.system.allow_downgrade {
            return Err(Refusal::InstalledVersionUnknown.into());
        }
        Ok(())
    }

    /// The payload's signed root, which the description's dm-verity settings require and
    /// must agree with.
    fn check_verity(&self, m: &Manifest) -> Result<Option<RootDescriptor>> {
        let Some(v) = &self.system.verity else {
            return Ok(None);
        };
        let bytes = m.verity.as_deref().ok_or(Refusal::NoSignedRoot)?;
        let d = RootDescriptor::parse(bytes)?;
        let p = d.params();
        let agree = p.algorithm() == v.algorithm
            && p.data_block_size() == v.data_block_size
            && p.hash_block_size() == v.hash_block_size
            && p.hash_type() == v.hash_type
            && v.salt.as_deref().is_none_or(|s| s == p.salt());
        if !agree {
            return Err(Refusal::VerityParameters {
                payload: format!(
                    "{} {}/{} format {}",
                    p.algorithm(),
                    p.data_block_size(),
                    p.hash_block_size(),
                    p.hash_type().as_u32()
                ),
            }
            .into());
        }
        if p.data_size() != m.target.size {
            return Err(Refusal::RootSize {
                signed: p.data_size(),
                image: m.target.size,
            }
            .into());
        }
        Ok(Some(d))
    }

    /// Write the tree (and parity) after the data in the slot, check it gives the signed
    /// root, and return the kernel argument that maps the slot.
    fn write_tree(
        &self,
        target: Slot,
        d: &RootDescriptor,
        region: &mut Region<&'d D>,
        progress: Option<&dyn Progress>,
    ) -> Result<String> {
        let params = d.params();
        let mut build = BuildOptions::default();
        if let Some(p) = progress {
            build = build.progress(p);
        }
        let data = Region::new(self.disk, region.start(), params.data_size())
            .map_err(|e| Error::io("the slot's data", e))?;
        let (mut hash, hash_offset, hash_dev) = self.tree_place(target, params.data_size())?;
        let opts = FormatOptions::default()
            .hash_offset(hash_offset)
            .build(build);
        let formatted = keel_verity::format(params, &data, &mut hash, &opts)?;
        if formatted.root_hash != d.root_hash() {
            return Err(Error::Verity(keel_verity::Error::RootHashMismatch {
                expected: hex::encode(d.root_hash()),
                found: hex::encode(&formatted.root_hash),
            }));
        }
        let mut table_opts = TableOptions::default();
        if let Some(roots) = self.system.verity.as_ref().and_then(|v| v.fec_roots) {
            let end = formatted.geometry.tree_offset() + formatted.geometry.tree_size();
            let g = FecGeometry::on_hash_device(params, &formatted.geometry, roots, end)?;
            let mut fec = Region::new(self.disk, hash.start(), hash.len())
                .map_err(|e| Error::io("the slot's parity", e))?;
            keel_verity::fec_encode(&g, &data, &hash, &mut fec, &build)?;
            table_opts = table_opts.fec(keel_verity::FecTable {
                device: hash_dev.clone(),
                geometry: g,
            });
        }
        // Read back: what the kernel will map must verify against the signed root.
        keel_verity::verify(
            params,
            &formatted.geometry,
            &data,
            &hash,
            d.root_hash(),
            &build,
        )?;
        let table = keel_verity::dm_table(
            params,
            &formatted.geometry,
            d.root_hash(),
            &self.kernel_device(target)?,
            &hash_dev,
            &table_opts,
        )?;
        let name = format!("keel-{}", target.letter().to_ascii_lowercase());
        Ok(keel_verity::dm_mod_create(&name, &table)?)
    }

    /// Put the argument that maps `slot` where its boot loader passes it to the kernel
    /// ([`BootControl::set_boot_arguments`]: a GRUB or U-Boot variable, a systemd-boot
    /// entry's `options` line). GPT-flag and Android systems take the root from elsewhere
    /// (the kernel partition, vbmeta); the slot record holds the argument for them.
    fn write_boot_arguments(&self, slot: Slot, arg: &str) -> Result<()> {
        let mut boot = self.boot_control()?;
        if boot.carries_boot_arguments() {
            boot.set_boot_arguments(slot, arg)?;
        }
        Ok(())
    }

    /// How the kernel names the slot's partition.
    fn kernel_device(&self, slot: Slot) -> Result<String> {
        Ok(format!("PARTUUID={}", self.partition_of(slot)?.guid))
    }

    /// Check for an update and install it: fetch the release index at `index_url`,
    /// verify it under `root` (threshold, a serial above the last one this agent accepted,
    /// not expired; the serial is then kept in the state directory), choose the release
    /// for this system (the description's compatible string, the booted slot's version,
    /// this machine's rollout by `/etc/machine-id`), and install it streamed over HTTP(S):
    /// the delta from the booted image when the index has one for it, else, or when the
    /// delta turns out not to fit ([`Error::needs_full_payload`]), the full payload.
    /// The payload's signed manifest must name the version the index gives the release
    /// ([`Error::ReleaseMismatch`]): the index's signers choose, the payload's signer
    /// vouches for the bytes. The index is judged at [`Agent::trusted_now`], and its
    /// signed timestamp raises the clock floor.
    /// `Ok(None)`: nothing newer.
    pub fn install_from_index(
        &self,
        index_url: &str,
        root: &keel_release::TrustedRoot,
        fetch: keel_fetch::FetchOptions<'_>,
        progress: Option<&dyn Progress>,
    ) -> Result<Option<Installed>> {
        use keel_release::MAX_ENVELOPE;
        let mut bytes = Vec::new();
        // Metadata has a deadline of its own (TUF's slow-retrieval attack: a server that
        // drips the index would otherwise hold the check, and its expiry, off for good).
        let index_fetch = match fetch.deadline {
            Some(_) => fetch,
            None => fetch.deadline(INDEX_DEADLINE),
        };
        keel_fetch::HttpReader::new(index_url, index_fetch)?
            .take(MAX_ENVELOPE as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("fetching {index_url}"), e))?;
        let serial_path = self.state_dir.join("index-serial");
        let last = record::read_small(&serial_path)?
            .map(|t| {
                t.trim().parse::<u64>().map_err(|_| {
                    Error::io(
                        format!("reading {}", serial_path.display()),
                        std::io::Error::other("not a serial"),
                    )
                })
            })
            .transpose()?;
        let index = root.verify_index(&bytes, last, self.trusted_now()?)?;
        record::replace(&serial_path, format!("{}\n", index.serial).as_bytes())?;
        // Never past the clock: an index stamped in the future (a publisher's wrong
        // clock, or a key holder's mischief) must not lock every later install out.
        if let Some(t) = index.timestamp {
            self.raise_time_floor(t.min(keel_trust::unix_now()))?;
        }

        let booted = self.booted_slot()?;
        let installed = self
            .installed_version(booted, true)?
            .ok_or(Refusal::NoReleaseChoice)?;
        // The booted image's digest, over the size a delta from this version starts from.
        let source_size = index
            .releases
            .iter()
            .flat_map(|r| &r.deltas)
            .find(|d| d.from_version == installed)
            .map(|d| d.source_size);
        let digest = match source_size {
            Some(size) => Some(
                keel_payload::format::image_digest(&self.region(booted)?, size)
                    .map_err(|e| Error::io("hashing the booted slot", e))?,
            ),
            None => None,
        };
        let machine = record::read_small(&self.root.join("etc/machine-id"))?.unwrap_or_default();
        let Some(choice) = index.choose(
            &self.system.compatible,
            &installed,
            digest.as_ref(),
            machine.trim(),
            self.system.allow_downgrade,
        ) else {
            return Ok(None);
        };
        match self.install_artifact(
            index_url,
            &choice.artifact,
            &choice.version,
            fetch,
            progress,
        ) {
            Err(e) if choice.delta && e.needs_full_payload() => {
                let full = index
                    .releases
                    .iter()
                    .find(|r| r.version == choice.version && r.compatible == self.system.compatible)
                    .map(|r| &r.full)
                    .ok_or(e)?;
                self.install_artifact(index_url, full, &choice.version, fetch, progress)
                    .map(Some)
            }
            r => r.map(Some),
        }
    }

    /// Install one payload the index names, streamed, checked against the index's size
    /// and SHA-256 before the slot is armed. The digest's running state is kept in the
    /// state directory, so a resumed install checks the whole file without fetching
    /// again what an earlier run applied.
    fn install_artifact(
        &self,
        index_url: &str,
        a: &keel_release::Artifact,
        version: &str,
        fetch: keel_fetch::FetchOptions<'_>,
        progress: Option<&dyn Progress>,
    ) -> Result<Installed> {
        let url = keel_release::resolve(index_url, &a.url);
        let digest = a
            .digest()
            .ok_or_else(|| Refusal::BadDigest { url: a.url.clone() })?;
        std::fs::create_dir_all(&self.state_dir)
            .map_err(|e| Error::io(format!("creating {}", self.state_dir.display()), e))?;
        let reader = keel_fetch::HttpReader::new(&url, fetch)?
            .expect(a.size, digest)
            .digest_state(&self.state_dir.join("download-digest"))?;

        /// A download checkpoints often: a restart fetches again what was applied since
        /// the last checkpoint, and the applier's default (64 MiB of target) is the
        /// whole of many payloads.
        struct Network<R> {
            input: SeekInput<R>,
            payload_size: u64,
            target_size: u64,
        }
        impl<R: Read + Seek> PayloadInput for Network<R> {
            fn manifest(&mut self, keyring: &keel_trust::Keyring, now: u64) -> Result<Manifest> {
                let m = self.input.manifest(keyring, now)?;
                self.target_size = m.target.size;
                Ok(m)
            }
            fn apply<T: ReadAt + WriteAt>(
                &mut self,
                src: Option<&T>,
                dst: &mut T,
                o: &Opts,
            ) -> Applied {
                // About a 32nd of the payload between checkpoints (4 to 16 MiB of it),
                // counted in target bytes as the applier counts: a delta that builds
                // many target bytes from few payload bytes checkpoints no more often in
                // payload bytes than a full one.
                let payload_bytes = (self.payload_size / 32).clamp(4 << 20, 16 << 20);
                let expansion = self.target_size / self.payload_size.max(1);
                let every = payload_bytes.saturating_mul(expansion.max(1));
                let mut o = *o;
                if o.checkpoint_bytes.is_none() {
                    o = o.checkpoint_bytes(every);
                }
                self.input.apply(src, dst, &o)
            }
            fn check(&mut self) -> Result<()> {
                self.input.check()
            }
        }

        self.install_release(
            Network {
                input: SeekInput {
                    r: reader,
                    check: |r| r.finish().map_err(Error::from),
                },
                payload_size: a.size,
                target_size: 0,
            },
            progress,
            Some(version),
        )
    }

    /// Commit the booted slot after a boot: if it is not yet marked good, run `checks`;
    /// all pass: mark it good; one fails: mark it bad (the boot loader falls back on the
    /// next boot) and say a reboot is needed.
    pub fn commit(&self, checks: &[HealthCheck]) -> Result<Commit> {
        let booted = self.booted_slot()?;
        let mut boot = self.boot_control()?;
        let states = boot.status()?;
        let state = states.get(booted.index()).copied().unwrap_or(SlotState {
            priority: 0,
            tries: 0,
            successful: false,
        });
        // RAUC's GRUB and U-Boot variables cannot tell a committed slot from one being
        // tried (RAUC marks good on every boot): there the checks always run.
        let rauc = matches!(
            self.system.backend,
            BackendSpec::GrubEnv(_) | BackendSpec::Uboot { .. } | BackendSpec::FwEnv(_)
        );
        if state.successful && !rauc {
            return Ok(Commit::AlreadyGood(booted));
        }
        for c in checks {
            if let Err(reason) = c.run() {
                boot.mark_bad(booted)?;
                return Ok(Commit::RebootNeeded {
                    slot: booted,
                    check: c.name().to_string(),
                    reason,
                });
            }
        }
        boot.mark_good(booted)?;
        Ok(Commit::Committed(booted))
    }

    /// Both slots: boot state, version, root hash, which one is booted and which boots
    /// next; and the last install error.
    pub fn status(&self) -> Result<Status> {
        let boot = self.boot_control()?;
        let states = boot.status()?;
        let next = boot.next_boot()?;
        let booted = self.booted_slot().ok();
        let mut slots = Vec::new();
        for spec in &self.system.slots {
            let st = states.get(spec.slot.index()).copied().unwrap_or(SlotState {
                priority: 0,
                tries: 0,
                successful: false,
            });
            let rec = record::read(&self.state_dir, spec.slot)?;
            let version = match &rec {
                Some(r) => Some(r.version.clone()),
                None => self.installed_version(spec.slot, booted == Some(spec.slot))?,
            };
            slots.push(SlotStatus {
                name: spec.name.clone(),
                slot: spec.slot.to_string(),
                booted: booted == Some(spec.slot),
                next_boot: next == Some(spec.slot),
                priority: st.priority,
                tries: st.tries,
                successful: st.successful,
                version,
                root_hash: rec.and_then(|r| r.root_hash),
            });
        }
        Ok(Status {
            rules: boot.rules().to_string(),
            slots,
            last_error: record::read_small(&record::error_path(&self.state_dir))?,
        })
    }
}

/// How the payload reaches the agent: its signed header and manifest are read first (for
/// the checks made before anything is written), then it is applied from its first byte
/// (the booted slot as the source, the other slot as the target).
trait PayloadInput {
    fn manifest(&mut self, keyring: &keel_trust::Keyring, now: u64) -> Result<Manifest>;
    fn apply<T: ReadAt + WriteAt>(&mut self, src: Option<&T>, dst: &mut T, o: &Opts) -> Applied;
    /// After the apply: anything the source must still confirm (a download's digest).
    fn check(&mut self) -> Result<()> {
        Ok(())
    }
}

type Opts<'a> = ApplyOptions<'a>;
type Applied = keel_payload::Result<keel_payload::Applied>;

/// A stream: what the manifest read took is kept and replayed into the applier.
struct Replay<R> {
    r: R,
    head: Vec<u8>,
}

impl<R: Read> PayloadInput for Replay<R> {
    fn manifest(&mut self, keyring: &keel_trust::Keyring, now: u64) -> Result<Manifest> {
        let mut tee = Tee {
            inner: &mut self.r,
            seen: Vec::new(),
        };
        let (_, m, _) = keel_payload::read_manifest_at(&mut tee, keyring, now)?;
        self.head = tee.seen;
        Ok(m)
    }
    fn apply<T: ReadAt + WriteAt>(&mut self, src: Option<&T>, dst: &mut T, o: &Opts) -> Applied {
        let head = Cursor::new(std::mem::take(&mut self.head));
        keel_payload::apply(head.chain(&mut self.r), src, dst, o)
    }
}

/// A stream that can seek: read from the start again (a resumed apply seeks on).
struct SeekInput<R> {
    r: R,
    /// What [`PayloadInput::check`] asks of the stream.
    check: fn(&mut R) -> Result<()>,
}

impl<R: Read + Seek> PayloadInput for SeekInput<R> {
    fn manifest(&mut self, keyring: &keel_trust::Keyring, now: u64) -> Result<Manifest> {
        let (_, m, _) = keel_payload::read_manifest_at(&mut self.r, keyring, now)?;
        self.r
            .seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("returning to the payload's start", e))?;
        Ok(m)
    }
    fn apply<T: ReadAt + WriteAt>(&mut self, src: Option<&T>, dst: &mut T, o: &Opts) -> Applied {
        keel_payload::apply_seekable(&mut self.r, src, dst, o)
    }
    fn check(&mut self) -> Result<()> {
        (self.check)(&mut self.r)
    }
}

/// A reader that keeps what it read.
struct Tee<'a, R> {
    inner: &'a mut R,
    seen: Vec<u8>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// Whether two version strings name one version (`2.0` and `2.0`; as the payload's
/// ordering compares them where both parse).
fn same_version(a: &str, b: &str) -> bool {
    a == b || keel_version::Version::compare(a, b).is_ok_and(|o| o.is_eq())
}

/// No clock of a device running this agent can read earlier than this (2026-12-01, when
/// this version was written): a clock reset to 1970 would otherwise make expired indexes
/// and keys past their not-after dates look valid.
pub const BUILD_TIME_FLOOR: u64 = 1_796_083_200;

/// How long fetching a release index may take, unless the caller's options set a
/// deadline.
pub const INDEX_DEADLINE: Duration = Duration::from_secs(60);

/// How far behind the floor a clock may read and still be trusted (seconds).
const CLOCK_GRACE: u64 = 3600;
