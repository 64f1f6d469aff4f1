//! Install: check, apply into the slot not running, write and verify its dm-verity tree, arm.

use std::io::{Cursor, Read, Seek, SeekFrom};

use keel_bootflags::Slot;
use keel_io::{Progress, ReadAt, Region, WriteAt};
use keel_payload::{ApplyOptions, Manifest, VersionCheck};
use keel_verity::{BuildOptions, FecGeometry, FormatOptions, RootDescriptor, TableOptions};

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
}

/// How the payload reaches the agent: its signed header and manifest are read first (for
/// the checks made before anything is written), then it is applied from its first byte
/// (the booted slot as the source, the other slot as the target).
pub(super) trait PayloadInput {
    fn manifest(&mut self, keyring: &keel_trust::Keyring, now: u64) -> Result<Manifest>;
    fn apply<T: ReadAt + WriteAt>(&mut self, src: Option<&T>, dst: &mut T, o: &Opts) -> Applied;
    /// After the apply: anything the source must still confirm (a download's digest).
    fn check(&mut self) -> Result<()> {
        Ok(())
    }
}

pub(super) type Opts<'a> = ApplyOptions<'a>;

pub(super) type Applied = keel_payload::Result<keel_payload::Applied>;

/// A stream: what the manifest read took is kept and replayed into the applier.
pub(super) struct Replay<R> {
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
pub(super) struct SeekInput<R> {
    pub(super) r: R,
    /// What [`PayloadInput::check`] asks of the stream.
    pub(super) check: fn(&mut R) -> Result<()>,
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

    /// The last install's error for [`Agent::status`], or none after a success.
    pub(super) fn record_outcome(&self, r: &Result<Installed>) -> Result<()> {
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
    pub(super) fn install_inner<P: PayloadInput>(
        &self,
        payload: P,
        progress: Option<&dyn Progress>,
    ) -> Result<Installed> {
        self.install_release(payload, progress, None)
    }

    /// [`Agent::install_inner`] of the payload a release index names for `release`
    /// (its version): a payload signed for another version is refused before anything
    /// is written.
    pub(super) fn install_release<P: PayloadInput>(
        &self,
        payload: P,
        progress: Option<&dyn Progress>,
        release: Option<&str>,
    ) -> Result<Installed> {
        let r = self.install_steps(payload, progress, release);
        self.record_outcome(&r)?;
        r
    }

    pub(super) fn install_steps<P: PayloadInput>(
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

    pub(super) fn check_release(&self, m: &Manifest, installed: Option<&str>) -> Result<()> {
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
    pub(super) fn check_tree_space(
        &self,
        slot: Slot,
        params: &keel_verity::VerityParams,
    ) -> Result<()> {
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

    /// Write the tree (and parity) after the data in the slot, check it gives the signed
    /// root, and return the kernel argument that maps the slot.
    pub(super) fn write_tree(
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
}
