//! The system description turned into the other crates' types, each string through the
//! owning crate's own parser.

use std::path::PathBuf;

use keel_bootflags::{BackendSpec, Slot};
use keel_config::{Backend, Config, HashTreeLocation};
use keel_partition::Guid;
use keel_trust::Keyring;
use keel_verity::{HashAlgorithm, HashType};

use crate::error::{Error, Result};

/// How a slot's partition is named: keel-config's [`keel_config::DeviceRef`].
pub use keel_config::DeviceRef as SlotDevice;

/// One slot of the updated pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    /// Its name in the description (`usr.b`).
    pub name: String,
    /// Its boot name.
    pub slot: Slot,
    /// Its partition.
    pub device: SlotDevice,
    /// The partition type it must have, checked before writing.
    pub partition_type: Option<Guid>,
    /// Where its dm-verity tree lives, with `hash-tree = "separate"`.
    pub hash_device: Option<SlotDevice>,
}

/// dm-verity as the description asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VeritySpec {
    /// Hash algorithm.
    pub algorithm: HashAlgorithm,
    /// Data block size.
    pub data_block_size: u32,
    /// Hash block size.
    pub hash_block_size: u32,
    /// Format 0 or 1.
    pub hash_type: HashType,
    /// A fixed salt, if given.
    pub salt: Option<Vec<u8>>,
    /// Reed-Solomon parity roots after the tree, if asked for.
    pub fec_roots: Option<u8>,
    /// Whether the tree follows the data in the slot (else on each slot's
    /// [`SlotSpec::hash_device`]).
    pub after_data: bool,
    /// The class whose images carry the tree (an index into [`System::classes`]).
    pub class: usize,
}

/// One slot class: a partition per slot, switched with the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotClass {
    /// Its name, the name of the bundle image installed into it.
    pub class: String,
    /// Its two slots, A and B.
    pub slots: [SlotSpec; 2],
}

/// One file class: a file per slot on a filesystem both slots share (the ESP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    /// Its name, the name of the bundle image installed into it.
    pub class: String,
    /// The path with `{slot}` (as keel-config's [`keel_config::FileConfig`]).
    pub path: String,
}

impl FileSpec {
    /// The file of `slot` on the running system (`/efi/keel/b/vmlinuz`).
    pub fn path_for(&self, slot: Slot) -> PathBuf {
        keel_config::FileConfig {
            class: self.class.clone(),
            path: self.path.clone(),
        }
        .path_for(slot.letter())
    }
}

/// The description, parsed: what an agent needs to install, arm and commit.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct System {
    /// Updates for another compatible string are refused.
    pub compatible: String,
    /// The boot-state backend.
    pub backend: BackendSpec,
    /// The disk whose GPT holds the slots (`boot.disk`), if given.
    pub disk: Option<PathBuf>,
    /// The slot classes in the description's order, at least one. An install writes every
    /// class's inactive slot (and every file) before it arms the slot set. The first class
    /// is the boot class: the GPT backends keep the A/B state in its partitions' attribute
    /// bits (ChromeOS's kernel pair), and systemd-boot's entries are its slots' names.
    pub classes: Vec<SlotClass>,
    /// The file classes.
    pub files: Vec<FileSpec>,
    /// dm-verity, if the description asks for it.
    pub verity: Option<VeritySpec>,
    /// The keys that may sign updates, with their not-after dates.
    pub keyring: Keyring,
    /// Updates below this version are refused.
    pub minimum_version: Option<keel_version::Version>,
    /// Boots a new slot gets.
    pub tries: u8,
    /// Never write the booted slot.
    pub protect_booted_slot: bool,
    /// Resumes of one payload before an apply starts over.
    pub max_resumes: u32,
    /// Accept older versions.
    pub allow_downgrade: bool,
}

impl System {
    /// Turn a validated description into typed values. Every setting is carried over;
    /// anything this crate cannot act on is an error, not silently ignored.
    pub fn from_config(c: &Config) -> Result<System> {
        let backend = backend(c)?;
        let classes = slot_classes(c)?;
        let verity = c.verity.as_ref().map(|v| verity(v, &classes)).transpose()?;
        let mut keyring = Keyring::new();
        for (i, k) in c.trust.keys.iter().enumerate() {
            let field = |f: &str| format!("trust.key[{i}].{f}");
            let key = k
                .public_key()
                .map_err(|e| Error::config(field("ed25519"), e.to_string()))?;
            let not_after = k
                .not_after_time()
                .map_err(|e| Error::config(field("not-after"), e.to_string()))?;
            keyring.add_until(key, not_after)?;
        }
        let minimum_version = c
            .trust
            .minimum()
            .map_err(|e| Error::config("trust.minimum-version", e.to_string()))?;
        let tries = keel_config::effective_tries(c);
        // keel-config's validation has judged the classes and paths (one rule, there).
        let files = c
            .files
            .iter()
            .map(|f| FileSpec {
                class: f.class.clone(),
                path: f.path.clone(),
            })
            .collect();
        Ok(System {
            compatible: c.compatible.clone(),
            backend,
            disk: c.boot.disk.as_ref().map(PathBuf::from),
            classes,
            files,
            verity,
            keyring,
            minimum_version,
            tries,
            protect_booted_slot: c.update.protect_booted_slot,
            max_resumes: c.update.max_resumes,
            allow_downgrade: c.update.allow_downgrade,
        })
    }

    /// The boot class's slots (the first class): the pair the boot state is kept for.
    pub fn slots(&self) -> &[SlotSpec; 2] {
        &self.classes[0].slots
    }

    /// The spec of `slot` in the boot class.
    pub fn slot(&self, slot: Slot) -> &SlotSpec {
        self.slot_of(0, slot)
    }

    /// The spec of `slot` in class `class` (an index into [`System::classes`]).
    pub fn slot_of(&self, class: usize, slot: Slot) -> &SlotSpec {
        let pair = &self.classes[class].slots;
        if pair[0].slot == slot {
            &pair[0]
        } else {
            &pair[1]
        }
    }

    /// The other slot of the pair.
    pub fn other(&self, slot: Slot) -> Slot {
        let pair = self.slots();
        if pair[0].slot == slot {
            pair[1].slot
        } else {
            pair[0].slot
        }
    }

    /// The class whose images carry the dm-verity tree, if the description asks for one.
    pub fn verity_class(&self) -> Option<usize> {
        self.verity.as_ref().map(|v| v.class)
    }
}

/// keel-bootflags' spec of the description's backend, with its defaults.
fn backend(c: &Config) -> Result<BackendSpec> {
    c.boot.spec().ok_or_else(|| match c.boot.backend {
        Backend::Uboot => Error::config("boot.env-file", "required for uboot"),
        Backend::AndroidMisc => Error::config("boot.misc-device", "required for android-misc"),
        other => Error::config("boot.backend", format!("{other}: not usable")),
    })
}

/// The slot classes of the description, in the order they first appear, each an A/B
/// pair with the same two bootnames.
fn slot_classes(c: &Config) -> Result<Vec<SlotClass>> {
    let mut names: Vec<&str> = Vec::new();
    for s in &c.slots {
        if !names.contains(&s.class.as_str()) {
            names.push(&s.class);
        }
    }
    if names.is_empty() {
        return Err(Error::config("slot", "no slots"));
    }
    let mut classes = Vec::new();
    for class in names {
        let pair = slot_pair(c, class)?;
        if let Some(first) = classes.first() {
            let first: &SlotClass = first;
            let letters = |p: &[SlotSpec; 2]| {
                let mut l = [p[0].slot, p[1].slot];
                l.sort();
                l
            };
            if letters(&first.slots) != letters(&pair) {
                return Err(Error::config(
                    "slot",
                    format!(
                        "class {class:?}: the bootnames of class {:?} are needed (the classes switch together)",
                        first.class
                    ),
                ));
            }
        }
        classes.push(SlotClass {
            class: class.to_string(),
            slots: pair,
        });
    }
    Ok(classes)
}

/// The slots of `class`.
fn slot_pair(c: &Config, class: &str) -> Result<[SlotSpec; 2]> {
    if !keel_config::valid_class_name(class) {
        return Err(Error::config(
            "slot",
            format!("class {class:?}: not a class name (it names a bundle image)"),
        ));
    }
    let mut specs = Vec::new();
    for (i, s) in c.slots.iter().enumerate().filter(|(_, s)| s.class == class) {
        let field = |k: &str| format!("slot[{i}].{k}");
        let slot = match &s.bootname {
            Some(b) => {
                let mut ch = b.chars();
                match (ch.next().and_then(Slot::from_letter), ch.next()) {
                    (Some(s), None) => s,
                    _ => return Err(Error::config(field("bootname"), format!("{b:?}: A to D"))),
                }
            }
            None => Slot::new(specs.len())
                .ok_or_else(|| Error::config(field("class"), "more than two slots"))?,
        };
        let value = |k: &str, e: keel_config::ValueError| Error::config(field(k), e.to_string());
        specs.push(SlotSpec {
            name: s.name.clone(),
            slot,
            device: s.device_ref().map_err(|e| value("device", e))?,
            partition_type: s
                .partition_type_guid()
                .map_err(|e| value("partition-type", e))?,
            hash_device: s.hash_device_ref().map_err(|e| value("hash-device", e))?,
        });
    }
    match <[SlotSpec; 2]>::try_from(specs) {
        // The boot-state stores are opened with two slots, A and B: a pair named C and D
        // would arm a slot the boot loader never looks at.
        Ok(pair) if pair.iter().any(|s| s.slot.index() > 1) => {
            let bad = c
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.class == class)
                .find(|(_, s)| s.bootname.as_deref().is_some_and(|b| b != "A" && b != "B"));
            Err(Error::Unsupported {
                field: bad.map_or("slot".into(), |(i, _)| format!("slot[{i}].bootname")),
                reason: format!(
                    "{:?}: keel-update installs the pair A/B",
                    bad.and_then(|(_, s)| s.bootname.as_deref()).unwrap_or("?")
                ),
            })
        }
        Ok(pair) if pair[0].slot != pair[1].slot => Ok(pair),
        Ok(_) => Err(Error::config(
            "slot",
            format!("class {class:?}: both slots have one bootname"),
        )),
        Err(v) => Err(Error::config(
            "slot",
            format!(
                "class {class:?} has {} slots; an A/B pair needs two",
                v.len()
            ),
        )),
    }
}

/// `[verity]`, for the class it names (else the only class).
fn verity(v: &keel_config::Verity, classes: &[SlotClass]) -> Result<VeritySpec> {
    let class = match &v.class {
        Some(name) => classes
            .iter()
            .position(|c| &c.class == name)
            .ok_or_else(|| {
                Error::config("verity.class", format!("{name:?}: no such slot class"))
            })?,
        None if classes.len() == 1 => 0,
        None => {
            return Err(Error::config(
                "verity.class",
                "required with several slot classes",
            ))
        }
    };
    let value =
        |k: &str, e: keel_config::ValueError| Error::config(format!("verity.{k}"), e.to_string());
    let algorithm = v.hash_algorithm().map_err(|e| value("algorithm", e))?;
    // The block sizes through keel-verity's own rule.
    let builder = keel_verity::VerityParams::builder()
        .algorithm(algorithm)
        .data_block_size(v.data_block_size)
        .hash_block_size(v.hash_block_size)
        .data_blocks(1)
        .salt(Vec::new());
    builder
        .build()
        .map_err(|e| Error::config("verity", e.to_string()))?;
    let hash_type = v.hash_type().map_err(|e| value("format", e))?;
    let salt = v.salt_bytes().map_err(|e| value("salt", e))?;
    Ok(VeritySpec {
        algorithm,
        data_block_size: v.data_block_size,
        hash_block_size: v.hash_block_size,
        hash_type,
        salt,
        fec_roots: v.fec_roots,
        after_data: v.hash_tree == HashTreeLocation::AfterData,
        class,
    })
}
