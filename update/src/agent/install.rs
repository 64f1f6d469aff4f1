//! Install: check, apply into the slot not running, write and verify its dm-verity tree, arm.

use std::fs::File;
use std::io::{Read, Seek};

use keel_bootflags::Slot;
use keel_io::{Progress, ReadAt, Region, WriteAt};
use keel_payload::{ApplyOptions, Manifest, Payload, VersionCheck};
use keel_verity::{BuildOptions, FecGeometry, FormatOptions, RootDescriptor, TableOptions};

use super::images::{Dest, FilePlace, Target};
use super::Agent;
use crate::error::{Error, Refusal, Result};
use crate::record::{self, SlotRecord};

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
    /// The payload's images, in the order they were installed (`""`: a payload of one
    /// unnamed image).
    pub images: Vec<String>,
    /// The images an interrupted run had already written and verified, not written again.
    pub skipped: Vec<String>,
    /// Bytes received over the network for it (0 for a payload read from elsewhere).
    pub fetched: u64,
}

/// What the caller knows of a payload besides its bytes: the release an index chose it
/// for, the pin and size the index gives, the booted image's digest it already computed,
/// and whether it comes over a network (checkpoints more often).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Known<'a> {
    /// The version the index names.
    pub(super) release: Option<&'a str>,
    /// The index's URL of the payload, its size and the digest of its signed header and
    /// manifest.
    pub(super) pin: Option<(&'a str, u64, [u8; 32])>,
    /// The booted image's size and digest.
    pub(super) source: Option<(u64, [u8; 32])>,
}

/// Whether two version strings name one version (`2.0` and `2.0`; as the payload's
/// ordering compares them where both parse).
pub(super) fn same_version(a: &str, b: &str) -> bool {
    a == b || keel_version::Version::compare(a, b).is_ok_and(|o| o.is_eq())
}

impl<'d, D> Agent<'d, D>
where
    D: ReadAt,
    &'d D: WriteAt,
{
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
        self.install_release(
            |now| Ok(Payload::open_at(payload, &self.system.keyring, now)?),
            progress,
            Known::default(),
        )
    }

    /// [`Agent::install`] from a payload that can seek (a file, keel-fetch's
    /// `HttpReader`): an install resumed after an interruption moves forward past the data
    /// it already applied instead of reading (or downloading) it again. The payload is
    /// read from its current position, front to back, never back.
    pub fn install_seekable<R: Read + Seek>(
        &self,
        payload: R,
        progress: Option<&dyn Progress>,
    ) -> Result<Installed> {
        self.install_release(
            |now| {
                Ok(Payload::open_seekable_at(
                    payload,
                    &self.system.keyring,
                    now,
                )?)
            },
            progress,
            Known::default(),
        )
    }

    /// The agent's lock in its state directory, held until dropped; another holder is
    /// [`Error::Busy`], never a wait.
    pub(super) fn lock(&self) -> Result<keel_io::FileLock> {
        std::fs::create_dir_all(&self.state_dir)
            .map_err(|e| Error::io(format!("creating {}", self.state_dir.display()), e))?;
        let path = self.state_dir.join("lock");
        keel_io::FileLock::try_exclusive(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => Error::Busy { path: path.clone() },
            _ => Error::io(format!("locking {}", path.display()), e),
        })
    }

    /// The last install's error for [`Agent::status`], or none after a success.
    pub(super) fn record_outcome(&self, r: &Result<Installed>) -> Result<()> {
        match r {
            Ok(_) => record::remove(&record::error_path(&self.state_dir))?,
            Err(e) => self.record_error(e),
        }
        Ok(())
    }

    /// `e` as the last error [`Agent::status`] shows (best effort: the error itself is
    /// what the caller gets).
    pub(super) fn record_error(&self, e: &Error) {
        let _ = record::replace(
            &record::error_path(&self.state_dir),
            e.to_string().as_bytes(),
        );
    }

    /// The install of the payload `open` opens (at the trusted time), its outcome kept for
    /// [`Agent::status`]. With [`Known::release`], a payload signed for another version
    /// is refused before anything is written.
    pub(super) fn install_release<R: Read>(
        &self,
        open: impl FnOnce(u64) -> Result<Payload<R>>,
        progress: Option<&dyn Progress>,
        known: Known<'_>,
    ) -> Result<Installed> {
        // One install at a time: two would write one slot set with two payloads.
        let _lock = self.lock()?;
        let r = self.install_steps(open, progress, known);
        self.record_outcome(&r)?;
        r
    }

    pub(super) fn install_steps<R: Read>(
        &self,
        open: impl FnOnce(u64) -> Result<Payload<R>>,
        progress: Option<&dyn Progress>,
        known: Known<'_>,
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
                None => self.system.slots()[1].slot,
            },
        };
        // Read once: the signature checked over the header and manifest, which are then
        // parsed; everything below judges the manifest without reading the payload again.
        let payload = open(now)?;
        if let Some((url, size, pin)) = known.pin {
            // The index pins the signed header and manifest, which bind every data byte:
            // the payload is the one the index's signers named, checked before any data.
            if payload.id() != &pin || payload.len() != size {
                return Err(Error::PayloadMismatch {
                    url: url.to_string(),
                    index: format!("{} bytes, manifest {}", size, hex::encode(pin)),
                    payload: format!(
                        "{} bytes, manifest {}",
                        payload.len(),
                        hex::encode(payload.id())
                    ),
                });
            }
        }
        let plan = self.plan(payload.images())?;
        let manifest = payload.manifest().clone();
        if let Some(v) = known
            .release
            .filter(|v| !same_version(v, &manifest.version))
        {
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
        // Every image judged before the first write: the tree's, the sizes, a delta's
        // source, the files' room.
        let images = payload.images().to_vec();
        let data_class = self.system.verity_class();
        let mut descriptor = None;
        let mut places: Vec<Target> = Vec::new();
        for (image, dest) in images.iter().zip(&plan) {
            let m = &image.manifest;
            if m.source.is_some() && booted.is_none() {
                return Err(Refusal::DeltaWithoutSource.into());
            }
            match *dest {
                Dest::Class(k) => {
                    if Some(k) == data_class {
                        let d = self.check_verity(m)?;
                        if let Some(d) = &d {
                            self.check_tree_space(target, d.params())?;
                        }
                        descriptor = d;
                    }
                    places.push(Target::Slot(k));
                    let room = self.region_in(k, target)?.len();
                    if m.target.size > room {
                        return Err(Refusal::ImageTooLarge {
                            slot: target,
                            image: m.target.size,
                            room,
                        }
                        .into());
                    }
                }
                Dest::File(f) => places.push(Target::File(
                    f,
                    self.file_place(f, target, booted, m.source.is_some())?,
                )),
            }
        }
        // The images an interrupted run of this payload finished, each checked again
        // before it is skipped (the tree's own image is checked with the tree, below).
        let mut done = Vec::new();
        for name in record::read_set(&self.state_dir, target, payload.id()) {
            let Some((image, place)) = images.iter().zip(&places).find(|(i, _)| i.name == name)
            else {
                continue;
            };
            let size = image.manifest.target.size;
            let digest = match place {
                &Target::Slot(k) if Some(k) == data_class && descriptor.is_some() => None,
                &Target::Slot(k) => Some(keel_payload::format::image_digest(
                    &self.region_in(k, target)?,
                    size,
                )),
                Target::File(_, p) => {
                    Some(
                        File::open(&p.path).and_then(|f| match f.metadata()?.len() == size {
                            true => keel_payload::format::image_digest(&f, size),
                            false => Ok([0; 32]),
                        }),
                    )
                }
            };
            if digest.is_none_or(|d| d.is_ok_and(|d| d == image.manifest.target.digest)) {
                done.push(name);
            }
        }
        let to_write: Vec<(&FilePlace, u64)> = images
            .iter()
            .zip(&places)
            .filter(|(i, _)| !done.contains(&i.name))
            .filter_map(|(i, p)| match p {
                Target::File(_, p) => Some((p, i.manifest.target.size)),
                Target::Slot(_) => None,
            })
            .collect();
        self.check_file_space(target, &to_write)?;

        let resume = record::resume_path(&self.state_dir, target);
        let mut opts = self.apply_options(installed.as_deref(), now, &resume, progress);
        match self.checkpoint_bytes {
            Some(n) => opts = opts.checkpoint_bytes(n),
            // A download checkpoints often: a restart fetches again what was applied
            // since the last checkpoint, and the applier's default (64 MiB of target) is
            // the whole of many payloads. About a 32nd of the payload (4 to 16 MiB of it),
            // counted in target bytes as the applier counts: a delta that builds many
            // target bytes from few payload bytes checkpoints no more often in payload
            // bytes than a full one.
            None if known.pin.is_some() => {
                let len = payload.len().max(1);
                let payload_bytes = (len / 32).clamp(4 << 20, 16 << 20);
                let target_bytes: u64 = images.iter().map(|i| i.manifest.target.size).sum();
                let expansion = (target_bytes / len).max(1);
                opts = opts.checkpoint_bytes(payload_bytes.saturating_mul(expansion));
            }
            None => {}
        }
        // The index's digest of the booted image is the first image's source (the one a
        // publisher's index describes); the others' sources are hashed by the applier.
        let first_opts = match known.source {
            Some((size, digest)) => opts.source_digest(size, digest),
            None => opts,
        };
        // Everything the payload's own checks can say (version, a delta's source by the
        // digest already known) is said before the first write.
        payload.check(&first_opts)?;

        // From here on the target is written: first make sure it is never booted half done.
        boot.mark_bad(target)?;
        record::remove(&record::path(&self.state_dir, target))?;
        std::fs::create_dir_all(&self.state_dir)
            .map_err(|e| Error::io(format!("creating {}", self.state_dir.display()), e))?;
        if images.len() > 1 {
            // Another payload's record goes before anything of this one is written.
            record::write_set(&self.state_dir, target, payload.id(), &done)?;
        }
        // The data slot's tree and parity are built from its blocks as the apply writes
        // them (no pass over the slot afterwards).
        let parity = match (&descriptor, data_class) {
            (Some(d), Some(_)) => self.fec_geometry(target, d.params())?,
            _ => None,
        };
        let mut streamed = None;
        let mut payload = payload;
        let mut resumed_at = None;
        let mut skipped = Vec::new();
        for (i, (image, place)) in images.iter().zip(&places).enumerate() {
            if done.contains(&image.name) {
                payload.skip_next()?;
                skipped.push(image.name.clone());
                continue;
            }
            let o = if i == 0 { &first_opts } else { &opts };
            let applied = match place {
                Target::File(f, place) => {
                    self.install_file(&mut payload, *f, target, booted, place, o)?
                }
                &Target::Slot(k) => {
                    let mut region = self.region_in(k, target)?;
                    let o = match (&parity, Some(k) == data_class) {
                        (Some(g), true) => o.parity(g),
                        _ => *o,
                    };
                    let mut applied = match booted.filter(|_| image.manifest.source.is_some()) {
                        Some(b) => {
                            payload.apply_next(Some(&self.region_in(k, b)?), &mut region, &o)?
                        }
                        None => payload.apply_next(None::<&Region<&'d D>>, &mut region, &o)?,
                    };
                    if Some(k) == data_class {
                        streamed = applied.verity.take();
                    }
                    applied
                }
            };
            resumed_at.get_or_insert(applied.resumed_at);
            done.push(image.name.clone());
            if images.len() > 1 {
                record::write_set(&self.state_dir, target, payload.id(), &done)?;
            }
        }
        // The tree after every image: a run that finds the data in place (a resumed set)
        // still writes it, and checks it against the signed root.
        let (root_hash, kernel_argument) = match (&descriptor, data_class) {
            (Some(d), Some(k)) => {
                let mut region = self.region_in(k, target)?;
                let arg = match self.write_tree(target, d, &mut region, progress, streamed) {
                    Ok(arg) => arg,
                    Err(e) => {
                        // The data does not give the signed root: nothing of the set is
                        // taken as done, the next run writes it all again.
                        if matches!(&e, Error::Verity(v) if v.is_corruption()) {
                            record::remove(&record::set_path(&self.state_dir, target))?;
                        }
                        return Err(e);
                    }
                };
                (Some(d.root_hash().to_vec()), Some(arg))
            }
            _ => (None, None),
        };
        self.arm(
            boot,
            target,
            SlotRecord {
                version: manifest.version.clone(),
                root_hash: root_hash.as_deref().map(hex::encode),
                image_size: descriptor.as_ref().map(|d| d.params().data_size()),
                kernel_argument,
            },
        )?;
        record::remove(&record::set_path(&self.state_dir, target))?;
        Ok(Installed {
            slot: target,
            version: manifest.version,
            resumed_at: resumed_at.unwrap_or(0),
            root_hash,
            images: images.iter().map(|i| i.name.clone()).collect(),
            skipped,
            fetched: 0,
        })
    }

    /// The applier's options for an install into a slot whose resume record is `state`:
    /// the system's keys, compatible string and downgrade policy, the installed version
    /// (a reinstall of it allowed: an interrupted set is finished), the trusted time.
    pub(super) fn apply_options<'a>(
        &'a self,
        installed: Option<&'a str>,
        now: u64,
        state: &'a std::path::Path,
        progress: Option<&'a dyn Progress>,
    ) -> ApplyOptions<'a> {
        let version = match installed {
            Some(v) => VersionCheck::Installed(v),
            None => VersionCheck::Unchecked,
        };
        let opts = ApplyOptions::new(&self.system.keyring, version)
            .now(now)
            .compatible(self.system.compatible.as_str())
            .allow_downgrade(self.system.allow_downgrade)
            .allow_reinstall(true)
            .max_resumes(self.system.max_resumes)
            .state(state);
        match progress {
            Some(p) => opts.progress(p),
            None => opts,
        }
    }

    /// The slot written and checked: its boot arguments, then its record, then armed with
    /// the configured tries.
    pub(super) fn arm(
        &self,
        boot: Box<dyn keel_bootflags::BootControl + 'd>,
        target: Slot,
        rec: SlotRecord,
    ) -> Result<()> {
        if let Some(arg) = &rec.kernel_argument {
            self.write_boot_arguments(target, arg)?;
        }
        record::write(&self.state_dir, target, &rec)?;
        // Opened afresh: the boot arguments may have been written to the same store.
        drop(boot);
        self.boot_control()?
            .set_active(target, Some(self.system.tries))?;
        Ok(())
    }

    pub(super) fn check_release(&self, m: &Manifest, installed: Option<&str>) -> Result<()> {
        if m.compatible != self.system.compatible {
            return Err(Refusal::Incompatible {
                payload: m.compatible.clone(),
                system: self.system.compatible.clone(),
            }
            .into());
        }
        if let Some(min) = &self.system.minimum_version {
            let version =
                keel_version::Version::parse(&m.version).map_err(|source| Refusal::BadVersion {
                    version: m.version.clone(),
                    source,
                })?;
            if version < *min {
                return Err(Refusal::BelowMinimum {
                    version,
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
    pub(super) fn check_verity(&self, m: &Manifest) -> Result<Option<RootDescriptor>> {
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

    /// Where `slot`'s dm-verity tree goes: its own hash partition (at offset 0), or
    /// the slot itself after `data_size` bytes of data; with the kernel's name for it.
    pub(super) fn tree_place(
        &self,
        slot: Slot,
        data_size: u64,
    ) -> Result<(Region<&'d D>, u64, String)> {
        let spec = self.system.slot_of(self.data_class(), slot);
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
            None => Ok((
                self.region_in(self.data_class(), slot)?,
                data_size,
                self.kernel_device(slot)?,
            )),
        }
    }

    /// The tree (and parity) of `params` fit where they go, or a refusal naming the
    /// sizes: checked before anything is written.
    pub(super) fn check_tree_space(
        &self,
        slot: Slot,
        params: &keel_verity::VerityParams,
    ) -> Result<()> {
        let (place, offset, _) = self.tree_place(slot, params.data_size())?;
        let data_room = self.region_in(self.data_class(), slot)?.len();
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

    /// The parity the description asks for, after `slot`'s tree of `params`.
    pub(super) fn fec_geometry(
        &self,
        slot: Slot,
        params: &keel_verity::VerityParams,
    ) -> Result<Option<FecGeometry>> {
        let Some(roots) = self.system.verity.as_ref().and_then(|v| v.fec_roots) else {
            return Ok(None);
        };
        let (_, offset, _) = self.tree_place(slot, params.data_size())?;
        let geometry = keel_verity::TreeGeometry::new(params, offset, false)?;
        let end = geometry.tree_offset() + geometry.tree_size();
        Ok(Some(FecGeometry::on_hash_device(
            params, &geometry, roots, end,
        )?))
    }

    /// Write the tree (and parity) after the data in the slot, and return the kernel
    /// argument that maps the slot.
    ///
    /// The tree and parity are `streamed`'s, built from the blocks as the apply wrote them
    /// and already checked against the signed root; without them (an image a resumed run
    /// had finished) they are built here from one read of the slot. The data is not read
    /// back: the disk is trusted to keep what was written, and what it loses is caught by
    /// the kernel, block by block, when it reads them against this tree. The tree is read
    /// back after it is written, since a wrong tree would fail every block.
    pub(super) fn write_tree(
        &self,
        target: Slot,
        d: &RootDescriptor,
        region: &mut Region<&'d D>,
        progress: Option<&dyn Progress>,
        streamed: Option<keel_verity::Streamed>,
    ) -> Result<String> {
        let params = d.params();
        let mut build = BuildOptions::default();
        if let Some(p) = progress {
            build = build.progress(p);
        }
        let data = Region::new(self.disk, region.start(), params.data_size())
            .map_err(|e| Error::io("the slot's data", e))?;
        let (mut hash, hash_offset, hash_dev) = self.tree_place(target, params.data_size())?;
        let fec = self.fec_geometry(target, params)?;
        let streamed = match streamed {
            Some(s) => s,
            None => {
                let mut s = keel_verity::StreamTree::new(params)?;
                if let Some(g) = &fec {
                    s = s.parity(g)?;
                }
                s.finish(&data, &build)?
            }
        };
        if streamed.tree.root_hash() != d.root_hash() {
            return Err(Error::Verity(keel_verity::Error::RootHashMismatch {
                expected: hex::encode(d.root_hash()),
                found: hex::encode(streamed.tree.root_hash()),
            }));
        }
        let opts = FormatOptions::default().hash_offset(hash_offset);
        let formatted = keel_verity::write_tree(params, &streamed.tree, &mut hash, &opts)?;
        let mut table_opts = TableOptions::default();
        if let Some(g) = fec {
            let mut fec_dev = Region::new(self.disk, hash.start(), hash.len())
                .map_err(|e| Error::io("the slot's parity", e))?;
            match streamed.parity.as_ref().filter(|p| *p.geometry() == g) {
                Some(p) => p.write_to(&mut fec_dev)?,
                // The apply saw a block twice: the parity from one read of the slot.
                None => keel_verity::fec_encode(&g, &data, &hash, &mut fec_dev, &build)?,
            }
            table_opts = table_opts.fec(keel_verity::FecTable {
                device: hash_dev.clone(),
                geometry: g,
            });
        }
        read_back_tree(
            &hash,
            formatted.geometry.tree_offset(),
            streamed.tree.as_bytes(),
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
}

/// The tree as the disk now holds it must be the tree written: compared a MiB at a time.
fn read_back_tree<H: ReadAt + ?Sized>(hash: &H, offset: u64, tree: &[u8]) -> Result<()> {
    let mut buf = vec![0u8; tree.len().min(1 << 20)];
    for (n, want) in tree.chunks(1 << 20).enumerate() {
        let at = offset + (n << 20) as u64;
        let got = &mut buf[..want.len()];
        hash.read_exact_at(got, at)
            .map_err(|e| Error::io("reading the hash tree back", e))?;
        if got != want {
            return Err(Error::io(
                "reading the hash tree back",
                std::io::Error::other(format!(
                    "the tree read back at byte {at} is not the tree written"
                )),
            ));
        }
    }
    Ok(())
}
