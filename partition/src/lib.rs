//! keel-partition: GPT A/B slots on disks and image files, crash-safe boot-flag updates,
//! and A/B layout creation for image builders.
//!
//! Not built yet: this crate is an empty placeholder so the workspace layout is in
//! place. The work is tracked in the project's keel-partition issue.
