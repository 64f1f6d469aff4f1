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

/// An `fw_env.config` in `dir` naming `file` as U-Boot's environment of `size` bytes at
/// offset 0 (and its redundant copy right after it), as fw_printenv and libubootenv read.
pub fn fw_env_config(dir: &Path, file: &Path, size: usize, redundant: bool) -> PathBuf {
    let cfg = dir.join("fw_env.config");
    let mut text = format!("{} 0x0 {size:#x}\n", file.display());
    if redundant {
        text.push_str(&format!("{} {size:#x} {size:#x}\n", file.display()));
    }
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// A file a package installs outside PATH (firmware, boot loader binaries), or `None`
/// after a skip notice; with `KEEL_REQUIRE_INTEROP=1` a missing file fails the test.
pub fn file(path: &str, package: &str) -> Option<PathBuf> {
    let p = PathBuf::from(path);
    if p.is_file() {
        return Some(p);
    }
    assert_ne!(
        std::env::var("KEEL_REQUIRE_INTEROP").as_deref(),
        Ok("1"),
        "{path} is missing and KEEL_REQUIRE_INTEROP=1: apt-get install {package}"
    );
    skipped(&format!(
        "SKIPPED: {path} not installed (apt-get install {package}); interop check not run\n"
    ));
    None
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

/// Run `cmd`, which must succeed (its standard error is the panic's message); its output.
pub fn output_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
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

/// `mksquashfs ROOT IMG -comp COMP EXTRA...`, quiet and reproducible (every time 0, every
/// file root's): the image's bytes; `None` (after a skip notice) without mksquashfs.
pub fn mksquashfs(root: &Path, img: &Path, comp: &str, extra: &[&str]) -> Option<Vec<u8>> {
    let mk = tool("mksquashfs", "squashfs-tools")?;
    let mut args = vec![
        root.to_str().unwrap(),
        img.to_str().unwrap(),
        "-noappend",
        "-quiet",
        "-no-progress",
        "-all-root",
        "-mkfs-time",
        "0",
        "-all-time",
        "0",
        "-comp",
        comp,
    ];
    args.extend_from_slice(extra);
    run_ok(&mk, &args);
    Some(std::fs::read(img).unwrap())
}

/// `mkfs.ext4 -d ROOT IMG SIZE` with 4 KiB blocks and no journal, reproducible (a fixed
/// UUID, the inode tables written at once, every file root's): the image's bytes; `None`
/// (after a skip notice) without mkfs.ext4.
pub fn mkfs_ext4(root: &Path, img: &Path, size: &str) -> Option<Vec<u8>> {
    let mk = tool("mkfs.ext4", "e2fsprogs")?;
    run_ok(
        &mk,
        &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-T",
            "default",
            "-O",
            "^has_journal",
            "-E",
            "root_owner=0:0,lazy_itable_init=0",
            "-U",
            "4d1c0e7a-2b3c-4d5e-8f90-a1b2c3d4e5f6",
            "-d",
            root.to_str().unwrap(),
            img.to_str().unwrap(),
            size,
        ],
    );
    Some(std::fs::read(img).unwrap())
}

/// `mkfs.erofs EXTRA IMG ROOT`, quiet and reproducible (time 0, every file root's), padded
/// to whole 4 KiB blocks: the image's bytes; `None` (after a skip notice) without mkfs.erofs.
pub fn mkfs_erofs(root: &Path, img: &Path, extra: &[&str]) -> Option<Vec<u8>> {
    let mk = tool("mkfs.erofs", "erofs-utils")?;
    let mut args = vec!["--quiet", "-T0", "--all-root"];
    args.extend_from_slice(extra);
    args.extend([img.to_str().unwrap(), root.to_str().unwrap()]);
    run_ok(&mk, &args);
    let mut bytes = std::fs::read(img).unwrap();
    bytes.resize(bytes.len().next_multiple_of(4096), 0);
    Some(bytes)
}

/// A seeded pseudo-random choice (xorshift64): each call gives a number below its argument
/// (which must not be 0), for tests that build random trees from a seed.
pub fn seeded_choice(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut rng = seed | 1;
    move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    }
}

/// Start `cmd` with `input` as its whole standard input (written, then closed).
pub fn spawn_with_input(cmd: &mut Command, input: &[u8]) -> Child {
    let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    child
}

pub mod loopdev;

pub mod pki;

/// A port on 127.0.0.1 free a moment ago, for a server a test starts.
///
/// Taken below the kernel's ephemeral range (32768 and up by default), from a counter
/// this process walks: a port the kernel handed out with `bind(0)` and then got back
/// can be given again to any client's outgoing connection before the server binds it
/// (a CI run lost an etcd member to that). Ports here are never handed out by the
/// kernel, no two calls in one process return the same one, and processes start at
/// places set by their pid.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() % 1_000) * 22,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {LOW} and {}", LOW + SPAN)
}

/// Start a server (its output discarded) and wait until it accepts connections on
/// `port`; a server that does not within 10 s fails the test, pointing at `log`.
pub fn spawn_server(cmd: &mut Command, port: u16, log: &Path) -> Child {
    use std::time::{Duration, Instant};
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{:?} did not start: see {}",
            cmd.get_program(),
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

pub mod nginx;

pub mod tinyproxy;

pub mod faults;

pub mod etcd;

pub mod kernel;
