//! keel-payload: signed delta update payloads: generate, inspect, apply (streaming and
//! resumable after power loss) and verify.
//!
//! Not built yet: this crate is an empty placeholder so the workspace layout is in
//! place. The work is tracked in the project's keel-payload issue.
