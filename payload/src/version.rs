//! Versions: keel-version's [`Version`], the one rule the whole suite compares by.

pub use keel_version::{Version, VersionError, MAX_PARTS as MAX_VERSION_PARTS};
