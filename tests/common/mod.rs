//! Helpers for the tests that run the examples.
#![allow(dead_code)]

#[path = "../../testsupport/tools.rs"]
mod tools;
pub use tools::*;

use std::path::PathBuf;
use std::process::Command;

/// The built example `name` (built on demand: `cargo test --test X` does not build
/// examples, `cargo test` does).
pub fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let p = profile_dir.join("examples").join(name);
    if !p.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--example", name]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().unwrap().success(),
            "building the {name} example failed"
        );
    }
    p
}
