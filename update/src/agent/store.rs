//! Install from a block store (adaptive updates): the slot not running gets the store's
//! image, its blocks taken from the booted slot (indexed by the slot's own dm-verity tree
//! where its record says what that tree covers, else hashed once), from the target's own
//! old blocks, or fetched, every one checked against the store's signed leaves.

use keel_bootflags::Slot;
use keel_io::{Progress, ReadAt, WriteAt};
use keel_payload::format::ImageId;
use keel_payload::store::{Plan, Seed, StoreOptions, StoreSession};
use keel_payload::{BundleImage, ImageKind, Manifest};
use keel_verity::{HashTree, RootDescriptor, TreeGeometry, VerityParams};

use super::install::{same_version, Installed};
use super::Agent;
use crate::error::{Error, Refusal, Result};
use crate::record::{self, SlotRecord};

/// What the store's signed index says, as a manifest the agent's checks read.
fn manifest_of<S: ReadAt + ?Sized>(s: &StoreSession<'_, S>) -> Manifest {
    let i = s.index();
    Manifest {
        source: None,
        target: ImageId {
            size: i.image.size,
            digest: i.image.digest,
        },
        verity: Some(i.verity.clone()),
        compatible: i.compatible.clone(),
        version: i.version.clone(),
        operations: Vec::new(),
        recompressor: None,
    }
}

impl<'d, D> Agent<'d, D>
where
    D: ReadAt,
    &'d D: WriteAt,
{
    /// Install the image of the block store `store` into the slot that is not running and
    /// arm it, as [`Agent::install`] does a payload: signature (before the index is
    /// parsed), compatible string, version and dm-verity root checked before anything is
    /// written; the target marked unbootable; each block taken from the booted slot (by
    /// its own tree, or hashed once), kept where the target already holds it, or fetched,
    /// and checked against the signed leaves; the tree (and parity) written and read back;
    /// the record stored; the slot armed. Resumable: the same call after an interruption
    /// checks and keeps what was written. A system with more than its one slot image (a
    /// kernel file, a second class) is refused: a store holds one image.
    ///
    /// `pin`: the digest of the store's signed header and index a release index gives,
    /// and the version it names.
    pub fn install_store<S: ReadAt + ?Sized>(
        &self,
        store: &S,
        pin: Option<(&str, [u8; 32], &str)>,
        progress: Option<&dyn Progress>,
    ) -> Result<Installed> {
        let _lock = self.lock()?;
        let r = self.install_store_steps(store, pin, progress);
        self.record_outcome(&r)?;
        r
    }

    /// [`Agent::install_store`] of the block store a release index names, fetched with
    /// range requests (never past the size the index gives), pinned by the digest of its
    /// signed header and index.
    pub(super) fn install_store_artifact(
        &self,
        index_url: &str,
        a: &keel_release::Artifact,
        version: &str,
        fetch: keel_fetch::FetchOptions<'_>,
        progress: Option<&dyn Progress>,
    ) -> Result<Installed> {
        let url = keel_release::resolve(index_url, &a.url);
        let pin = a
            .manifest_digest()
            .ok_or_else(|| Refusal::Unpinned { url: a.url.clone() })?;
        let ranges = keel_fetch::HttpRanges::new(
            keel_fetch::HttpReader::new(&url, fetch)?.expect_len(a.size),
        );
        let mut installed = self.install_store(&ranges, Some((&a.url, pin, version)), progress)?;
        installed.fetched = ranges.stats().bytes;
        Ok(installed)
    }

    /// Whether this system installs from a block store: its slots hold one image and
    /// there is nothing else to install with it.
    pub fn takes_store(&self) -> bool {
        self.system.classes.len() == 1 && self.system.files.is_empty()
    }

    /// What installing from `store` would take from where, and fetch; nothing is written.
    pub fn plan_store<S: ReadAt + ?Sized>(&self, store: &S) -> Result<Plan> {
        self.resolve()?;
        let now = self.trusted_now()?;
        let booted = self.booted_slot()?;
        let target = self.system.other(booted);
        let installed = self.installed_version(booted, true)?;
        let resume = record::store_resume_path(&self.state_dir, target);
        let apply = self.apply_options(installed.as_deref(), now, &resume, None);
        let s = StoreSession::open(store, &StoreOptions::new(apply))?;
        let params = RootDescriptor::parse(&s.index().verity)?.params().clone();
        let class = self.data_class();
        let booted_region = self.region_in(class, booted)?;
        let booted_tree = self.slot_tree(booted, &params);
        let target_tree = self.slot_tree(target, &params);
        let mut opts = StoreOptions::new(apply);
        if let Some(t) = &target_tree {
            opts = opts.target_tree(t);
        }
        let seeds = [Seed {
            image: &booted_region,
            tree: booted_tree.as_ref(),
        }];
        Ok(s.plan(&seeds, &opts)?)
    }

    fn install_store_steps<S: ReadAt + ?Sized>(
        &self,
        store: &S,
        pin: Option<(&str, [u8; 32], &str)>,
        progress: Option<&dyn Progress>,
    ) -> Result<Installed> {
        self.resolve()?;
        let now = self.trusted_now()?;
        // The booted slot is the seed and must never be the target.
        let booted = self.booted_slot().map_err(|e| Refusal::BootedSlotUnknown {
            source: Box::new(e),
        })?;
        let target = self.system.other(booted);
        let installed = self.installed_version(booted, true)?;
        let resume = record::store_resume_path(&self.state_dir, target);
        let apply = self
            .apply_options(installed.as_deref(), now, &resume, progress)
            .checkpoint_bytes(self.checkpoint_bytes.unwrap_or(16 << 20));
        let session = StoreSession::open(store, &StoreOptions::new(apply))?;
        let m = manifest_of(&session);
        if let Some((url, id, release)) = pin {
            if session.id() != id {
                return Err(Error::PayloadMismatch {
                    url: url.to_string(),
                    index: format!("store index {}", hex::encode(id)),
                    payload: format!("store index {}", hex::encode(session.id())),
                });
            }
            if !same_version(release, &m.version) {
                return Err(Error::ReleaseMismatch {
                    index: release.to_string(),
                    payload: m.version.clone(),
                });
            }
        }
        // A store is one image: the system must be one slot image and nothing else.
        self.plan(&[BundleImage {
            name: String::new(),
            kind: ImageKind::Slot,
            data_len: 0,
            manifest: m.clone(),
        }])?;
        self.check_release(&m, installed.as_deref())?;
        let descriptor = match self.check_verity(&m)? {
            Some(d) => d,
            // Without dm-verity settings the store's root still checks every block; the
            // slot gets no tree.
            None => RootDescriptor::parse(m.verity.as_deref().unwrap_or_default())?,
        };
        let class = self.data_class();
        let mut region = self.region_in(class, target)?;
        if m.target.size > region.len() {
            return Err(Refusal::ImageTooLarge {
                slot: target,
                image: m.target.size,
                room: region.len(),
            }
            .into());
        }
        let with_tree = self.system.verity.is_some();
        if with_tree {
            self.check_tree_space(target, descriptor.params())?;
        }
        let params = descriptor.params().clone();
        // The target's tree is read before its record goes: the blocks it holds of the
        // version it had are kept in place (each checked).
        let target_tree = self.slot_tree(target, &params);
        let booted_tree = self.slot_tree(booted, &params);

        let mut boot = self.boot_control()?;
        boot.mark_bad(target)?;
        record::remove(&record::path(&self.state_dir, target))?;
        std::fs::create_dir_all(&self.state_dir)
            .map_err(|e| Error::io(format!("creating {}", self.state_dir.display()), e))?;
        let booted_region = self.region_in(class, booted)?;
        let mut opts = StoreOptions::new(apply);
        if let Some(t) = &target_tree {
            opts = opts.target_tree(t);
        }
        // The parity from the blocks as they are written, as for a payload.
        let parity = match with_tree {
            true => self.fec_geometry(target, &params)?,
            false => None,
        };
        if let Some(g) = &parity {
            opts = opts.parity(g);
        }
        let seeds = [Seed {
            image: &booted_region,
            tree: booted_tree.as_ref(),
        }];
        let done = session.install(&seeds, &mut region, &opts)?;
        let fetched = done.fetched;
        let (root_hash, kernel_argument) = if with_tree {
            let streamed = keel_verity::Streamed {
                tree: done.tree,
                parity: done.parity,
                read_back: 0,
            };
            let arg =
                self.write_tree(target, &descriptor, &mut region, progress, Some(streamed))?;
            (Some(descriptor.root_hash().to_vec()), Some(arg))
        } else {
            (None, None)
        };
        self.arm(
            boot,
            target,
            SlotRecord {
                version: m.version.clone(),
                root_hash: root_hash.as_deref().map(hex::encode),
                image_size: root_hash.as_ref().map(|_| m.target.size),
                kernel_argument,
            },
        )?;
        Ok(Installed {
            slot: target,
            version: m.version,
            resumed_at: 0,
            root_hash,
            images: vec![String::new()],
            skipped: Vec::new(),
            fetched,
        })
    }

    /// `slot`'s dm-verity tree as its record describes it (root and data size), read from
    /// where the agent writes trees and checked against that root, with the salt and
    /// algorithm of `params`: `None` when anything is missing or does not check (the
    /// slot is then hashed, or its blocks not kept in place).
    fn slot_tree(&self, slot: Slot, params: &VerityParams) -> Option<HashTree> {
        let rec = record::read(&self.state_dir, slot).ok()??;
        let root = hex::decode(rec.root_hash?).ok()?;
        let size = rec.image_size?;
        let p = VerityParams::builder()
            .algorithm(params.algorithm())
            .hash_type(params.hash_type())
            .data_block_size(params.data_block_size())
            .hash_block_size(params.hash_block_size())
            .salt(params.salt().to_vec())
            .data_blocks_for(size)
            .build()
            .ok()?;
        let (place, offset, _) = self.tree_place(slot, size).ok()?;
        let g = TreeGeometry::new(&p, offset, false).ok()?;
        let leaves_at = g.levels().first().map(|_| g.block_offset(0, 0))?;
        let len = g.tree_offset() + g.tree_size() - leaves_at;
        // A record is the agent's own, but the size is checked against the room anyway.
        if len > place.len() || len > 1 << 30 {
            return None;
        }
        let mut leaves = vec![0u8; len as usize];
        place.read_exact_at(&mut leaves, leaves_at).ok()?;
        HashTree::from_leaf_level(&p, &leaves, &root).ok()
    }
}
