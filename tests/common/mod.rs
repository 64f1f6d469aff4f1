//! Helpers for the tests that run the examples.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

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

/// A real tool, or `None` after a skip notice; a failure with `KEEL_REQUIRE_INTEROP=1`.
pub fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert_ne!(
            std::env::var("KEEL_REQUIRE_INTEROP").as_deref(),
            Ok("1"),
            "{name} is missing and KEEL_REQUIRE_INTEROP=1: apt-get install {package}"
        );
        eprintln!(
            "SKIPPED: {name} not installed (apt-get install {package}); interop check not run"
        );
    }
    found
}

/// Run a program with arguments.
pub fn run(cmd: &std::path::Path, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap()
}

/// Its standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
