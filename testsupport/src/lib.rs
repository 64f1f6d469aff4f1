//! Test support for the Keel crates (a dev-dependency, never published): finding the real
//! tools (a missing one is a visible skip, or a failure with `KEEL_REQUIRE_INTEROP=1`),
//! running them, and seeded test data.

// Test support: a failed unwrap here is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The path of a real tool, or `None` after printing a skip notice. With
/// `KEEL_REQUIRE_INTEROP=1` a missing tool fails the test instead.
pub fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert_ne!(
            std::env::var("KEEL_REQUIRE_INTEROP").as_deref(),
            Ok("1"),
            "{name} is missing and KEEL_REQUIRE_INTEROP=1: apt-get install {package}"
        );
        skipped(&format!(
            "SKIPPED: {name} not installed (apt-get install {package}); interop check not run\n"
        ));
    }
    found
}

/// Say that a check was skipped where a person running `cargo test` sees it: the test
/// harness captures what a passing test prints, so the notice goes to the terminal's
/// standard error directly (and to the captured output when that cannot be opened).
fn skipped(notice: &str) {
    use std::io::Write;
    let direct = std::fs::OpenOptions::new()
        .append(true)
        .open("/dev/stderr")
        .and_then(|mut tty| tty.write_all(notice.as_bytes()));
    if direct.is_err() {
        eprint!("{notice}");
    }
}

/// Run a command, returning its output; panics only if it cannot be started.
pub fn run(cmd: &Path, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cmd.display()))
}

/// Run a command that must succeed; returns its standard output.
pub fn run_ok(cmd: &Path, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{} {:?} failed: {}\n{}",
        cmd.display(),
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Its standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift64*), so test data is generated, not stored.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Start `cmd` with `input` as its whole standard input (written, then closed).
pub fn spawn_with_input(cmd: &mut Command, input: &[u8]) -> Child {
    let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    child
}

/// Loop devices: real block devices over image files, for tests run as root.
pub mod loopdev {
    use super::{run, run_ok, tool};
    use std::path::{Path, PathBuf};

    /// An attached loop device, detached when dropped.
    #[derive(Debug)]
    pub struct Loop {
        losetup: PathBuf,
        /// The device, `/dev/loopN`.
        pub dev: String,
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = run(&self.losetup, &["-d", &self.dev]);
        }
    }

    /// Attach `img` with `sector_size`-byte logical sectors and partition scanning; `None`
    /// (a visible skip) when not root.
    pub fn attach(img: &Path, sector_size: u32) -> Option<Loop> {
        let running_as_root = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        if !running_as_root {
            eprintln!("SKIPPED: loop-device test needs root");
            return None;
        }
        let losetup = tool("losetup", "mount")?;
        let ss = sector_size.to_string();
        let img = img.to_str()?;
        let dev = run_ok(&losetup, &["-f", "--show", "-P", "--sector-size", &ss, img])
            .trim()
            .to_string();
        Some(Loop { losetup, dev })
    }
}
