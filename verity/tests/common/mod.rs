//! Helpers shared by the integration tests.
pub(crate) use keel_testsupport::*;
