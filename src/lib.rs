//! Keel: primitives for immutable, A/B-updated operating systems.
//!
//! This facade re-exports the independent Keel crates so a tool can depend on one
//! package; each crate can also be used on its own. They compose through keel-io's
//! devices and regions, keel-trust's keys and signers, and keel-bootflags'
//! [`BootControl`](bootflags::BootControl), so an update agent holds no adapters of its
//! own. The whole A/B cycle on a disk image:
//!
//! ```
//! use keel::bootflags::{BootControl, PriorityPolicy, Slot};
//! use keel::io::{Region, WriteAt};
//! use keel::partition::{create_layout, AbDisk, GptDisk, Layout, SlotSelector};
//! use keel::payload::{generate, ApplyOptions, GenerateOptions, Payload, VersionCheck};
//! use keel::trust::{Keyring, SigningKey};
//!
//! // A 16 MiB disk with two 4 MiB slots; slot A runs version 1.
//! let disk = tempfile::tempfile()?;
//! disk.set_len(16 << 20)?;
//! let mut layout = Layout::flatcar(4 << 20);
//! layout.esp_size = 1 << 20;
//! create_layout(&mut &disk, &layout)?;
//! let ab = AbDisk::new(GptDisk::open(&disk, None)?, &SlotSelector::Auto, PriorityPolicy::ChromeOs)?;
//! let (a, b) = (ab.slot_range(Slot::A)?, ab.slot_range(Slot::B)?);
//! let v1 = vec![1u8; 4 << 20];
//! let mut v2 = v1.clone();
//! v2[..4096].fill(2);
//! Region::new(&disk, a.0, a.1)?.write_all_at(&v1, 0)?;
//!
//! // The build pipeline signs a delta from version 1 to 2 (any keel-trust Signer).
//! let key = SigningKey::generate()?;
//! let payload = generate(Some(&v1), &v2, &key, &GenerateOptions::new("acme", "2.0"))?;
//!
//! // The agent on the device, in one pass over the payload: its signature checked and
//! // its manifest judged before anything is written; then B is written from A and the
//! // rest of the same stream, checked, and armed, through one BootControl whatever the
//! // boot loader is.
//! let mut keys = Keyring::new();
//! keys.add(key.public_key().clone())?;
//! let opts = ApplyOptions::new(&keys, VersionCheck::Installed("1.0")).compatible("acme");
//! let stream = std::io::Cursor::new(payload); // an HTTP body, a file, a pipe
//! let payload = Payload::open(stream, &keys)?;
//! payload.check(&opts)?; // compatible, newer: nothing read past the manifest
//! let mut boot: Box<dyn BootControl + '_> = Box::new(ab);
//! boot.mark_bad(Slot::B)?; // new content goes to B: never boot it half-written
//! let source = Region::new(&disk, a.0, a.1)?;
//! let mut target = Region::new(&disk, b.0, b.1)?;
//! match payload.apply(Some(&source), &mut target, &opts) {
//!     Err(e) if e.needs_full_payload() => unreachable!("A is intact: {e}"),
//!     r => r?,
//! };
//! boot.set_active(Slot::B, Some(3))?;
//! assert_eq!(boot.next_boot()?, Some(Slot::B));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use keel_bootflags as bootflags;
pub use keel_config as config;
pub use keel_fetch as fetch;
pub use keel_fleet as fleet;
pub use keel_io as io;
pub use keel_partition as partition;
pub use keel_payload as payload;
pub use keel_release as release;
pub use keel_trust as trust;
pub use keel_update as update;
pub use keel_verity as verity;
pub use keel_version as version;

/// The README's Rust snippets, compiled as doctests so they keep up with the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
