//! Keel: primitives for immutable, A/B-updated operating systems.
//!
//! This facade re-exports the independent Keel crates so a tool can depend on one
//! package; each crate can also be used on its own.
//!
//! ```
//! // Compute a dm-verity tree for a small in-memory image, as `veritysetup format` would.
//! use keel::verity::{HashTree, VerityParams};
//! let image = vec![0x5au8; 4096 * 3];
//! let params = VerityParams::builder().salt(Vec::new()).data_blocks_for(image.len() as u64).build()?;
//! let tree = HashTree::build(&params, &image[..])?;
//! assert_eq!(tree.root_hash().len(), 32);
//! # Ok::<(), keel::verity::Error>(())
//! ```

pub use keel_bootflags as bootflags;
pub use keel_config as config;
pub use keel_io as io;
pub use keel_partition as partition;
pub use keel_payload as payload;
pub use keel_trust as trust;
pub use keel_verity as verity;
