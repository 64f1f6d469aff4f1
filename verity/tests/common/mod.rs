//! Helpers shared by the integration tests.
#[path = "../../../testsupport/tools.rs"]
mod tools;
pub use tools::*;
