//! keel-config: a versioned, strictly validated system description (TOML), shared by
//! image builders and update agents.
//!
//! Not built yet: this crate is an empty placeholder so the workspace layout is in
//! place. The work is tracked in the project's keel-config issue.
