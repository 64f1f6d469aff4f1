//! The C interface, tested from both sides: in-process calls (error codes, NULL and
//! overlapping buffers), the release static library linked by gcc into C programs (no
//! panic, unwinding or allocator symbol left; the size it adds), a C boot loader
//! (`c/bootsim.c`) run boot after boot on state files written by the bootstate example
//! and the real tools, checked against the Rust model and the tools' view, and the
//! checked-in header against cbindgen's output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use keel_bootflags::store::{Backend, FileStore};
use keel_bootflags::{BootControl, Slot, SlotState};

use super::*;

const DIR: &str = env!("CARGO_MANIFEST_DIR");

use keel_testsupport::tool;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[track_caller]
fn run_ok(cmd: &mut Command) -> String {
    let (ok, text) = run(cmd);
    assert!(ok, "{cmd:?} failed:\n{text}");
    text
}

/// The release static library (panic = "abort", opt-level "z", LTO), built once. Its own
/// target directory: this test process runs under `cargo test`, which holds the lock
/// of the crate's target directory.
fn release_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let target = Path::new(DIR).join("target/c-tests");
        run_ok(
            Command::new(cargo)
                .args(["build", "--release", "--manifest-path"])
                .arg(Path::new(DIR).join("Cargo.toml"))
                .arg("--target-dir")
                .arg(&target),
        );
        target.join("release/libkeel_bootflags_ffi.a")
    })
}

/// Compile and link `c/SRC` with gcc as firmware is built: -Os, a section per function
/// and unused sections dropped; with the release library unless `lib` is false.
fn gcc(src: &str, out: &Path, defines: &[&str], lib: bool) {
    let mut c = Command::new("gcc");
    c.args([
        "-std=gnu11",
        "-Os",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-ffunction-sections",
        "-fdata-sections",
        "-Wl,--gc-sections",
    ])
    .arg(format!("-I{DIR}/include"))
    .args(defines)
    .arg(Path::new(DIR).join("c").join(src))
    .arg("-o")
    .arg(out);
    if lib {
        c.arg(release_lib());
    }
    run_ok(&mut c);
}

fn c_tools() -> bool {
    tool("gcc", "gcc").is_some() && tool("nm", "binutils").is_some()
}

// ---- in-process --------------------------------------------------------------------------

fn msg(code: c_int) -> String {
    // SAFETY: keel_strerror returns a static NUL-terminated string for every code.
    unsafe { CStr::from_ptr(keel_strerror(code)) }
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn codes_and_messages_are_the_models() {
    for e in FixedError::ALL {
        assert_eq!(err(e), -e.code());
        assert_eq!(msg(err(e)), e.message(), "{e:?}");
    }
    let named = [
        KEEL_ERR_SIZE,
        KEEL_ERR_MAGIC,
        KEEL_ERR_VERSION,
        KEEL_ERR_CRC,
        KEEL_ERR_SLOT_COUNT,
        KEEL_ERR_SYNTAX,
        KEEL_ERR_VARIABLE,
        KEEL_ERR_OVERFLOW,
        KEEL_ERR_NO_SUCH_SLOT,
        KEEL_ERR_TRIES,
        KEEL_ERR_STALE,
        KEEL_ERR_STATE,
        KEEL_ERR_POLICY,
    ];
    for (c, e) in named.iter().zip(FixedError::ALL) {
        assert_eq!(*c, err(e), "{e:?}");
    }
    assert_eq!(msg(KEEL_OK), "ok");
    assert_eq!(msg(KEEL_ERR_NULL), "NULL or misaligned pointer");
    assert_eq!(msg(-99), "unknown error");
    assert_eq!(msg(c_int::MIN), "unknown error");
    for (p, name) in [(1, "android-ab"), (2, "rauc-uboot"), (3, "rauc-grub")] {
        // SAFETY: a non-NULL result is a static NUL-terminated string.
        let got = unsafe { CStr::from_ptr(keel_policy_name(p)) };
        assert_eq!(got.to_str().unwrap(), name);
    }
    assert!(keel_policy_name(0).is_null());
}

#[test]
// One block of calls with bad pointers; each is the operation under test.
#[allow(clippy::multiple_unsafe_ops_per_block)]
fn null_misaligned_and_overlapping_pointers_are_refused() {
    let mut ab = KeelAb { opaque: [0; 15] };
    let block = [0u8; 32];
    let mut boot = KeelBoot {
        slot: 0,
        tries_spent: 0,
        tries_left: 0,
        fallback: false,
        reset: false,
    };
    // SAFETY: every pointer below is NULL, misaligned on purpose (and refused before
    // use), or to live memory of the size given.
    unsafe {
        assert_eq!(
            keel_android_read(std::ptr::null_mut(), block.as_ptr(), 32),
            KEEL_ERR_NULL
        );
        assert_eq!(
            keel_android_read(&mut ab, std::ptr::null(), 32),
            KEEL_ERR_NULL
        );
        assert_eq!(
            keel_ab_boot(&mut ab, &mut boot),
            KEEL_ERR_STATE,
            "zeroed state"
        );
        assert_eq!(keel_ab_boot(&mut ab, std::ptr::null_mut()), KEEL_ERR_NULL);
        assert_eq!(keel_android_init(&mut ab, 2, 0), KEEL_OK);
        assert_eq!(keel_ab_policy(&ab), KEEL_POLICY_ANDROID_AB);
        assert_eq!(keel_uboot_current_copy(&ab), KEEL_ERR_POLICY);
        assert_eq!(keel_android_init(&mut ab, 5, 0), KEEL_ERR_SLOT_COUNT);
        assert_eq!(keel_ab_set_active(&mut ab, 1, 300), KEEL_ERR_TRIES);
        assert_eq!(keel_ab_set_active(&mut ab, 1, 8), KEEL_ERR_TRIES);
        assert_eq!(keel_ab_mark_good(&mut ab, 2), KEEL_ERR_NO_SUCH_SLOT);
        assert_eq!(keel_ab_mark_good(&mut ab, u32::MAX), KEEL_ERR_NO_SUCH_SLOT);
        // A misaligned state pointer.
        let mut raw = [0u32; 17];
        let odd = raw.as_mut_ptr().cast::<u8>().add(1).cast::<KeelAb>();
        assert_eq!(keel_ab_policy(odd), KEEL_ERR_NULL);
        // Output overlapping input: one buffer for both.
        let mut grub = keel_bootflags::grubenv::GrubEnv::new().to_bytes().unwrap();
        assert_eq!(keel_grubenv_read(&mut ab, grub.as_ptr(), 1024, 2), KEEL_OK);
        let p = grub.as_mut_ptr();
        assert_eq!(keel_grubenv_write(&ab, p, p, 1024), KEEL_ERR_OVERLAP);
        assert_eq!(
            keel_grubenv_write(&ab, p, p.add(256), 512),
            KEEL_ERR_OVERLAP
        );
        // A failed boot leaves the state as it was.
        let before = ab.opaque;
        assert_eq!(keel_ab_boot(&mut ab, std::ptr::null_mut()), KEEL_ERR_NULL);
        assert_eq!(ab.opaque, before);
    }
}

// ---- linked into C -----------------------------------------------------------------------

/// Symbols that would mean a panic, unwinding or heap path survived into the program.
const FORBIDDEN: [&str; 10] = [
    "panic",
    "rust_begin_unwind",
    "rust_eh_personality",
    "_Unwind_",
    "__rust_alloc",
    "__rust_dealloc",
    "__rust_realloc",
    "__rg_alloc",
    "__rdl_alloc",
    "alloc_error",
];

fn symbols(exe: &Path) -> String {
    run_ok(Command::new("nm").arg("-a").arg(exe))
}

#[test]
fn no_panic_unwinding_or_allocator_is_linked() {
    if !c_tools() {
        return;
    }
    // The control: the same check finds panic and allocator symbols in a Rust program
    // that has them (this test binary), so an empty result means something.
    let control = symbols(&std::env::current_exe().unwrap());
    for f in ["panic", "rust_begin_unwind", "__rust_alloc"] {
        assert!(control.contains(f), "the check cannot see {f}");
    }
    // After LTO the archive itself holds none: nothing reachable from the exports can
    // panic or allocate.
    let archive = run_ok(Command::new("nm").arg(release_lib()));
    let bad: Vec<&str> = archive
        .lines()
        .filter(|l| FORBIDDEN.iter().any(|f| l.contains(f)))
        .collect();
    assert!(bad.is_empty(), "archive: {}", bad.join("\n"));
    let dir = tempfile::tempdir().unwrap();
    for (name, src, defines) in [
        (
            "misc + uboot",
            "size_main.c",
            &["-DKEEL_MISC", "-DKEEL_UBOOT"][..],
        ),
        (
            "all three",
            "size_main.c",
            &["-DKEEL_MISC", "-DKEEL_UBOOT", "-DKEEL_GRUB"],
        ),
        ("bootsim", "bootsim.c", &[]),
    ] {
        let exe = dir.path().join("prog");
        gcc(src, &exe, defines, true);
        let syms = symbols(&exe);
        assert!(
            syms.contains("keel_ab_boot"),
            "{name}: the library is not linked"
        );
        let bad: Vec<&str> = syms
            .lines()
            .filter(|l| FORBIDDEN.iter().any(|f| l.contains(f)))
            .collect();
        assert!(
            bad.is_empty(),
            "{name}: panic/alloc symbols linked:\n{}",
            bad.join("\n")
        );
        println!("{name}: no panic, unwinding or allocator symbol linked");
    }
}

/// Section sizes of a linked program, from `size -A`.
fn sections(exe: &Path) -> BTreeMap<String, u64> {
    run_ok(Command::new("size").arg("-A").arg(exe))
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, size) = (f.next()?, f.next()?.parse().ok()?);
            name.starts_with('.').then(|| (name.to_string(), size))
        })
        .collect()
}

#[test]
fn size_of_the_library_in_a_minimal_c_program() {
    if !c_tools() || tool("size", "binutils").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    gcc("size_main.c", &base, &[], false);
    let base = sections(&base);
    let get = |s: &BTreeMap<String, u64>, k: &str| s.get(k).copied().unwrap_or(0);
    let mut misc_uboot_text = 0;
    println!("library's share of a minimal C program (x86_64, gcc -Os, --gc-sections; Rust opt-level z, LTO, panic=abort):");
    for (name, defines) in [
        ("misc", &["-DKEEL_MISC"][..]),
        ("uboot", &["-DKEEL_UBOOT"]),
        ("grubenv", &["-DKEEL_GRUB"]),
        ("uboot (env_get/env_set)", &["-DKEEL_UBOOT_VARS"]),
        ("misc + uboot", &["-DKEEL_MISC", "-DKEEL_UBOOT"]),
        (
            "misc + uboot + grubenv",
            &["-DKEEL_MISC", "-DKEEL_UBOOT", "-DKEEL_GRUB"],
        ),
    ] {
        let exe = dir.path().join("with");
        gcc("size_main.c", &exe, defines, true);
        let s = sections(&exe);
        let d = |k: &str| get(&s, k).saturating_sub(get(&base, k));
        println!(
            "  {name:<25} .text {:>6} B  .rodata {:>5} B  .eh_frame {:>5} B  .data {:>3} B  .bss {:>3} B",
            d(".text"),
            d(".rodata"),
            d(".eh_frame"),
            d(".data"),
            d(".bss"),
        );
        if name == "misc + uboot" {
            misc_uboot_text = d(".text");
        }
    }
    assert!(
        misc_uboot_text <= 48 * 1024,
        "misc + uboot adds {misc_uboot_text} bytes of .text, over the 48 KiB goal"
    );
}

#[test]
fn header_is_what_cbindgen_generates() {
    let Some(cbindgen) = tool("cbindgen", "cbindgen") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("keel_bootflags.h");
    run_ok(
        Command::new(cbindgen)
            .current_dir(DIR)
            .args(["--quiet", "--config", "cbindgen.toml", "--output"])
            .arg(&fresh),
    );
    let checked_in = fs::read_to_string(Path::new(DIR).join("include/keel_bootflags.h")).unwrap();
    assert!(
        fs::read_to_string(&fresh).unwrap() == checked_in,
        "include/keel_bootflags.h is stale: run `cbindgen --config cbindgen.toml --output include/keel_bootflags.h` in bootflags-ffi/"
    );
}

// ---- a C boot loader, boot after boot ------------------------------------------------------

/// The bootstate example, if built (`KEEL_BOOTSTATE` names it, and then it must exist;
/// else the workspace's debug build). Without it, the same `FileStore` it runs is
/// called in-process.
fn bootstate() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("KEEL_BOOTSTATE") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "KEEL_BOOTSTATE={} does not exist", p.display());
        return Some(p);
    }
    let p = Path::new(DIR).join("../target/debug/examples/bootstate");
    if p.is_file() {
        return Some(p);
    }
    eprintln!(
        "NOTE: the bootstate example is not built; its FileStore is called in-process instead"
    );
    None
}

/// A seeded xorshift: the same sequence of boots and actions on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Sim {
    kind: &'static str,
    file: PathBuf,
    size: usize,
    redundant: bool,
    slots: usize,
    backend: Backend,
    exe: PathBuf,
    bootstate: Option<PathBuf>,
    work: PathBuf,
}

/// What the C program printed: each slot's state, and the boot line's fields.
#[derive(Debug, Default)]
struct Seen {
    slots: Vec<SlotState>,
    boot: BTreeMap<String, String>,
}

fn parse_c(out: &str) -> Seen {
    let mut seen = Seen::default();
    for line in out.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("slot") => {
                let _letter = words.next();
                let f: BTreeMap<&str, u8> = words
                    .filter_map(|w| w.split_once('='))
                    .map(|(k, v)| (k, v.parse().unwrap()))
                    .collect();
                seen.slots.push(SlotState {
                    priority: f["priority"],
                    tries: f["tries"],
                    successful: f["successful"] == 1,
                });
            }
            Some("boot") => {
                seen.boot = words
                    .filter_map(|w| w.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            }
            _ => {}
        }
    }
    seen
}

impl Sim {
    fn c(&self, args: &[&str]) -> (bool, String) {
        run(Command::new(&self.exe)
            .arg(self.kind)
            .arg(&self.file)
            .arg(self.size.to_string())
            .arg(if self.redundant { "1" } else { "0" })
            .arg(self.slots.to_string())
            .args(args))
    }

    /// An agent action by the bootstate example (or its FileStore).
    fn agent(&self, args: &[&str]) {
        match &self.bootstate {
            Some(exe) => {
                let mut cmd = Command::new(exe);
                cmd.arg(match self.kind {
                    "android" => "android-misc",
                    k => k,
                })
                .arg(&self.file)
                .arg("--slots")
                .arg(self.slots.to_string());
                if self.kind == "uboot" {
                    cmd.arg("--env-size").arg(self.size.to_string());
                    if self.redundant {
                        cmd.arg("--redundant");
                    }
                }
                run_ok(cmd.args(args));
            }
            None => {
                let slot = |i: usize| Slot::from_letter(args[i].chars().next().unwrap()).unwrap();
                match args[0] {
                    "init" => {
                        FileStore::init(self.backend.clone(), &self.file, self.slots, Slot::A)
                            .unwrap();
                    }
                    op => {
                        let mut s =
                            FileStore::open(self.backend.clone(), &self.file, self.slots).unwrap();
                        match op {
                            "set-active" => {
                                let tries = args.get(3).map(|t| t.parse().unwrap());
                                BootControl::set_active(&mut s, slot(1), tries).unwrap()
                            }
                            "mark-good" => BootControl::mark_good(&mut s, slot(1)).unwrap(),
                            "mark-bad" => BootControl::mark_bad(&mut s, slot(1)).unwrap(),
                            _ => panic!("{op}"),
                        }
                    }
                }
            }
        }
    }

    /// `op` through the C program and through the Rust model on a copy of the file:
    /// both succeed or both fail, the same slot boots, and the files are then identical
    /// byte for byte (or, on failure, unchanged).
    fn step(&self, op: &str, slot: Option<Slot>, tries: Option<u8>) -> Seen {
        let expect = self.work.join("expect");
        let before = fs::read(&self.file).unwrap();
        fs::copy(&self.file, &expect).unwrap();
        let mut m = FileStore::open(self.backend.clone(), &expect, self.slots).unwrap();
        let letter = slot.map(|s| s.letter().to_string()).unwrap_or_default();
        let tries_arg = tries.map_or("0".to_string(), |t| t.to_string());
        let (model, args): (Result<Option<Slot>, _>, Vec<&str>) = match op {
            "boot" => (BootControl::boot(&mut m), vec!["boot"]),
            "set-active" => (
                BootControl::set_active(&mut m, slot.unwrap(), tries).map(|()| None),
                vec!["set-active", &letter, &tries_arg],
            ),
            "mark-good" => (
                BootControl::mark_good(&mut m, slot.unwrap()).map(|()| None),
                vec!["mark-good", &letter],
            ),
            "mark-bad" => (
                BootControl::mark_bad(&mut m, slot.unwrap()).map(|()| None),
                vec!["mark-bad", &letter],
            ),
            _ => panic!("{op}"),
        };
        let (ok, out) = self.c(&args);
        let ctx = format!("{} {op} {letter} {tries_arg}:\n{out}", self.kind);
        assert_eq!(ok, model.is_ok(), "{ctx}\nmodel: {model:?}");
        let seen = parse_c(&out);
        if ok {
            assert_eq!(
                fs::read(&self.file).unwrap(),
                fs::read(&expect).unwrap(),
                "{ctx}"
            );
            assert_eq!(seen.slots, BootControl::status(&m).unwrap(), "{ctx}");
            if op == "boot" {
                let booted = model.unwrap().map_or("-".to_string(), |s| s.to_string());
                assert_eq!(seen.boot["slot"], booted, "{ctx}");
            }
        } else {
            assert_eq!(fs::read(&self.file).unwrap(), before, "{ctx}");
        }
        seen
    }
}

/// RAUC's view of a U-Boot environment as fw_printenv prints it, in the common model.
fn uboot_view(vars: &BTreeMap<String, String>, slots: usize) -> Vec<SlotState> {
    let priority = rauc_priority(vars, "BOOT_ORDER");
    Slot::all(slots)
        .map(|s| {
            let left = vars
                .get(&format!("BOOT_{s}_LEFT"))
                .map_or(3, |v| u32::from_str_radix(v, 16).unwrap());
            SlotState {
                priority: priority(s),
                tries: left.min(255) as u8,
                successful: false,
            }
        })
        .collect()
}

/// A slot's priority in the common model from RAUC's order variable `key`: the first
/// slot named 4, the next 3, one not named 0.
fn rauc_priority<'a>(vars: &'a BTreeMap<String, String>, key: &str) -> impl Fn(Slot) -> u8 + 'a {
    let order: Vec<&str> = vars
        .get(key)
        .map_or("A B", String::as_str)
        .split_whitespace()
        .collect();
    move |s| {
        order
            .iter()
            .position(|o| *o == s.to_string())
            .map_or(0, |i| 4 - i as u8)
    }
}

/// RAUC's view of a GRUB environment as grub-editenv lists it, in the common model.
fn grub_view(vars: &BTreeMap<String, String>, slots: usize) -> Vec<SlotState> {
    let priority = rauc_priority(vars, "ORDER");
    Slot::all(slots)
        .map(|s| {
            let flag = |k: &str| vars.get(&format!("{s}_{k}")).is_some_and(|v| v == "1");
            SlotState {
                priority: priority(s),
                tries: u8::from(flag("OK") && !flag("TRY")),
                successful: flag("OK"),
            }
        })
        .collect()
}

fn vars(listing: &str) -> BTreeMap<String, String> {
    listing
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Boots and agent actions in a seeded order; after each, the C program, the model and
/// (for the environments) the real tool agree.
fn play(
    sim: &Sim,
    seed: u64,
    boots: usize,
    tools_view: &dyn Fn() -> Option<Vec<SlotState>>,
    os_good: &dyn Fn(Slot),
) {
    let mut rng = Rng(seed);
    let mut fallbacks = 0;
    let mut slots_seen = [0usize; 4];
    // First the case the rules exist for: B armed with one try, started once, never
    // marked good; the next boot falls back to A.
    sim.step("set-active", Some(Slot::B), Some(1));
    let first = sim.step("boot", None, None);
    assert_eq!(
        (first.boot["slot"].as_str(), first.boot["spent"].as_str()),
        ("B", "1"),
        "{}",
        sim.kind
    );
    let second = sim.step("boot", None, None);
    assert_eq!(
        (
            second.boot["slot"].as_str(),
            second.boot["fallback"].as_str()
        ),
        ("A", "1"),
        "{}: no fallback after B's only try",
        sim.kind
    );
    if let Some(view) = tools_view() {
        assert_eq!(
            view, second.slots,
            "{}: the tool's view after the fallback",
            sim.kind
        );
    }
    for _ in 0..boots {
        let seen = sim.step("boot", None, None);
        if let Some(view) = tools_view() {
            assert_eq!(view, seen.slots, "{}: the tool's view after boot", sim.kind);
        }
        fallbacks += usize::from(seen.boot["fallback"] == "1");
        let booted = Slot::from_letter(seen.boot["slot"].chars().next().unwrap());
        if let Some(b) = booted {
            slots_seen[b.index()] += 1;
        }
        // The slot an update would write: not the one running.
        let pick = rng.next(sim.slots as u64) as usize;
        let pick = if booted.map(Slot::index) == Some(pick) {
            (pick + 1) % sim.slots
        } else {
            pick
        };
        let other = Slot::new(pick).unwrap();
        match rng.next(10) {
            // The booted system is healthy and says so, through the OS's own tool.
            0..=2 => {
                if let Some(b) = booted {
                    os_good(b);
                }
            }
            // Through the C interface (a vendor tool).
            3 => {
                if let Some(b) = booted {
                    sim.step("mark-good", Some(b), None);
                }
            }
            // An update arms another slot: the agent (bootstate) or a C tool.
            4 => sim.agent(&["set-active", &other.to_string()]),
            5 => {
                let tries = [None, Some(1), Some(2), Some(7), Some(9)][rng.next(5) as usize];
                sim.step("set-active", Some(other), tries);
            }
            6 => {
                sim.step("mark-bad", Some(other), None);
            }
            // A reboot before anything was marked good.
            _ => {}
        }
        if let Some(view) = tools_view() {
            let (_, out) = sim.c(&["show"]);
            assert_eq!(
                view,
                parse_c(&out).slots,
                "{}: the tool's view after the action",
                sim.kind
            );
        }
    }
    println!(
        "{}{}: {boots} boots, slots started {:?}, {fallbacks} fallbacks",
        sim.kind,
        if sim.redundant { " (redundant)" } else { "" },
        &slots_seen[..sim.slots]
    );
    assert!(
        slots_seen.iter().filter(|&&n| n > 0).count() >= 2,
        "the sequence never switched slots"
    );
}

fn sim(
    kind: &'static str,
    work: &Path,
    size: usize,
    redundant: bool,
    slots: usize,
    backend: Backend,
) -> Sim {
    let exe = work.join("bootsim");
    gcc("bootsim.c", &exe, &[], true);
    let file = work.join(match kind {
        "android" => "misc.img",
        "uboot" => "uboot.env",
        _ => "grubenv",
    });
    Sim {
        kind,
        file,
        size,
        redundant,
        slots,
        backend,
        exe,
        bootstate: bootstate(),
        work: work.to_path_buf(),
    }
}

#[test]
fn c_boot_loader_on_android_misc_agrees_with_the_model() {
    if !c_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = sim("android", dir.path(), 0, false, 2, Backend::AndroidMisc);
    if s.bootstate.is_none() {
        fs::write(&s.file, vec![0u8; 1 << 20]).unwrap();
    }
    s.agent(&["init"]);
    s.agent(&["set-active", "B"]);
    play(&s, 0x5eed_0001, 40, &|| None, &|b| {
        s.agent(&["mark-good", &b.to_string()]);
    });
    // A damaged block: the C boot loader starts afresh, as U-Boot's android_ab does.
    let mut img = fs::read(&s.file).unwrap();
    img[2048 + 20] ^= 0xff;
    fs::write(&s.file, &img).unwrap();
    let (ok, out) = s.c(&["boot"]);
    assert!(
        ok && out.contains("reinit CRC-32 mismatch") && out.contains("slot=A"),
        "{out}"
    );
    let st = FileStore::open(Backend::AndroidMisc, &s.file, 2).unwrap();
    assert_eq!(st.next_boot(), Some(Slot::A));
}

/// The C toolchain and U-Boot's fw_printenv, fw_setenv and mkenvimage, or a visible skip.
fn uboot_tools() -> Option<(PathBuf, PathBuf, PathBuf)> {
    if !c_tools() {
        return None;
    }
    Some((
        tool("fw_printenv", "libubootenv-tool")?,
        tool("fw_setenv", "libubootenv-tool")?,
        tool("mkenvimage", "u-boot-tools")?,
    ))
}

/// RAUC's mark-good from Linux: `fw_setenv BOOT_<slot>_LEFT 3`.
fn rauc_mark_good(fw_setenv: &Path, cfg: &Path, b: Slot) {
    run_ok(
        Command::new(fw_setenv)
            .arg("-c")
            .arg(cfg)
            .arg(format!("BOOT_{b}_LEFT"))
            .arg("3"),
    );
}

#[test]
fn c_boot_loader_on_uboot_env_agrees_with_the_model_and_fw_printenv() {
    let Some((pr, set, mk)) = uboot_tools() else {
        return;
    };
    for redundant in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let size = 0x4000;
        let backend = Backend::Uboot { size, redundant };
        let s = sim("uboot", dir.path(), size, redundant, 2, backend);
        let cfg = keel_testsupport::fw_env_config(dir.path(), &s.file, size, redundant);
        if redundant {
            // Written by the bootstate example, then changed by fw_setenv.
            s.agent(&["init"]);
            let script = dir.path().join("script");
            fs::write(
                &script,
                "bootargs=console=ttyS0 quiet\nBOOT_ORDER=B A\nBOOT_B_LEFT=2\n",
            )
            .unwrap();
            run_ok(
                Command::new(&set)
                    .arg("-c")
                    .arg(&cfg)
                    .arg("-s")
                    .arg(&script),
            );
        } else {
            // Made by mkenvimage (0xff fill), as an image builder does.
            mkenvimage(
                &mk,
                dir.path(),
                size,
                &s.file,
                "bootcmd=run distro_bootcmd\nBOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n",
            );
        }
        let printenv = || vars(&run_ok(Command::new(&pr).arg("-c").arg(&cfg)));
        let view = || Some(uboot_view(&printenv(), 2));
        let good = |b: Slot| rauc_mark_good(&set, &cfg, b);
        play(&s, 0x5eed_0002 + u64::from(redundant), 40, &view, &good);
        // Every other variable is kept.
        let v = printenv();
        let kept = if redundant {
            ("bootargs", "console=ttyS0 quiet")
        } else {
            ("bootcmd", "run distro_bootcmd")
        };
        assert_eq!(v.get(kept.0).map(String::as_str), Some(kept.1));
    }
}

#[test]
fn c_boot_loader_on_grubenv_agrees_with_the_model_and_grub_editenv() {
    if !c_tools() {
        return;
    }
    let Some(ge) = tool("grub-editenv", "grub-common") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = sim("grubenv", dir.path(), 1024, false, 2, Backend::GrubEnv);
    // Made by grub-editenv (with Debian's comment line), as an installer does.
    run_ok(Command::new(&ge).arg(&s.file).arg("create"));
    run_ok(Command::new(&ge).arg(&s.file).args([
        "set",
        "ORDER=A B",
        "A_OK=1",
        "A_TRY=0",
        "B_OK=0",
        "B_TRY=0",
        "saved_entry=keel",
    ]));
    let view = || {
        Some(grub_view(
            &vars(&run_ok(Command::new(&ge).arg(&s.file).arg("list"))),
            2,
        ))
    };
    // RAUC's mark-good from Linux: grub-editenv set <slot>_OK=1 <slot>_TRY=0.
    let good = |b: Slot| {
        run_ok(
            Command::new(&ge)
                .arg(&s.file)
                .arg("set")
                .arg(format!("{b}_OK=1"))
                .arg(format!("{b}_TRY=0")),
        );
    };
    play(&s, 0x5eed_0003, 40, &view, &good);
    let listed = run_ok(Command::new(&ge).arg(&s.file).arg("list"));
    assert!(listed.contains("saved_entry=keel"), "{listed}");
}

/// U-Boot proper: the environment is imported, so the boot loader reads RAUC's variables
/// with `env_get` and writes them with `env_set` and one `saveenv`. Played with
/// fw_printenv (what `env_get` would return), the C program (`keel_uboot_from_vars`,
/// `keel_uboot_var`) and fw_setenv with a script (one write, like saveenv); the state
/// agrees with the model's after every boot.
#[test]
fn c_boot_loader_through_env_get_and_env_set_agrees_with_the_model() {
    let Some((pr, set, mk)) = uboot_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let size = 0x2000;
    let backend = Backend::Uboot {
        size,
        redundant: false,
    };
    let s = sim("uboot", dir.path(), size, false, 2, backend.clone());
    let cfg = keel_testsupport::fw_env_config(dir.path(), &s.file, size, false);
    mkenvimage(
        &mk,
        dir.path(),
        size,
        &s.file,
        "bootcmd=run distro_bootcmd\nBOOT_ORDER=B A\nBOOT_A_LEFT=3\nBOOT_B_LEFT=1\n",
    );
    let names: Vec<String> = (0..=2)
        .map(|i| {
            // SAFETY: a non-NULL result is a static NUL-terminated string.
            unsafe { CStr::from_ptr(keel_uboot_var_name(i)) }
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["BOOT_ORDER", "BOOT_A_LEFT", "BOOT_B_LEFT"]);
    let mut rng = Rng(0x5eed_0004);
    let mut started = [0usize; 2];
    for boot in 0..30 {
        // The model's boot, on a copy of the environment.
        let expect = dir.path().join("expect");
        fs::copy(&s.file, &expect).unwrap();
        let mut m = FileStore::open(backend.clone(), &expect, 2).unwrap();
        let booted = BootControl::boot(&mut m).unwrap();
        // The C boot loader, with env_get = the variables fw_printenv shows.
        let env = vars(&run_ok(Command::new(&pr).arg("-c").arg(&cfg)));
        let mut cmd = Command::new(&s.exe);
        cmd.args(["uboot-vars", "-", "0", "0", "2", "boot"]);
        for n in &names {
            match env.get(n) {
                Some(v) => cmd.env(n, v),
                None => cmd.env_remove(n),
            };
        }
        let out = run_ok(&mut cmd);
        let seen = parse_c(&out);
        assert_eq!(
            seen.boot["slot"],
            booted.map_or("-".to_string(), |b| b.to_string()),
            "boot {boot}:\n{out}"
        );
        assert_eq!(
            seen.slots,
            BootControl::status(&m).unwrap(),
            "boot {boot}:\n{out}"
        );
        // env_set of each, then saveenv: one fw_setenv script.
        let script: String = out
            .lines()
            .filter_map(|l| l.strip_prefix("set "))
            // libubootenv's script format is NAME=VALUE per line.
            .map(|l| l.to_string() + "\n")
            .collect();
        assert_eq!(script.lines().count(), 3, "{out}");
        let sf = dir.path().join("script");
        fs::write(&sf, script).unwrap();
        run_ok(Command::new(&set).arg("-c").arg(&cfg).arg("-s").arg(&sf));
        let after = FileStore::open(backend.clone(), &s.file, 2).unwrap();
        assert_eq!(
            BootControl::status(&after).unwrap(),
            BootControl::status(&m).unwrap()
        );
        if let Some(b) = booted {
            started[b.index()] += 1;
        }
        // The OS: healthy and says so, or an update arms the other slot, or nothing.
        match (rng.next(4), booted) {
            (0, Some(b)) => rauc_mark_good(&set, &cfg, b),
            (1, Some(b)) => {
                let other = if b == Slot::A { "B" } else { "A" };
                s.agent(&["set-active", other]);
            }
            _ => {}
        }
    }
    assert!(started.iter().all(|&n| n > 0), "{started:?}");
    assert_eq!(
        vars(&run_ok(Command::new(&pr).arg("-c").arg(&cfg)))
            .get("bootcmd")
            .map(String::as_str),
        Some("run distro_bootcmd")
    );
    println!("uboot-vars: 30 boots through env_get/env_set, slots started {started:?}");
}

#[test]
// One block of calls; each is the operation under test.
#[allow(clippy::multiple_unsafe_ops_per_block)]
fn variables_api_checks_its_arguments() {
    let mut ab = KeelAb { opaque: [0; 15] };
    let mut buf = [0 as c_char; 16];
    // SAFETY: every pointer is NULL or to live memory of the size given, and the strings
    // are NUL-terminated.
    unsafe {
        let order = c"B A".as_ptr();
        let left = [c"0x2".as_ptr(), std::ptr::null()];
        assert_eq!(
            keel_uboot_from_vars(&mut ab, order, left.as_ptr(), 2),
            KEEL_OK
        );
        assert_eq!(keel_uboot_var(&ab, 0, buf.as_mut_ptr(), 16), KEEL_OK);
        assert_eq!(CStr::from_ptr(buf.as_ptr()).to_str().unwrap(), "B A");
        assert_eq!(keel_uboot_var(&ab, 2, buf.as_mut_ptr(), 16), KEEL_OK);
        assert_eq!(CStr::from_ptr(buf.as_ptr()).to_str().unwrap(), "3");
        assert_eq!(
            keel_uboot_var(&ab, 3, buf.as_mut_ptr(), 16),
            KEEL_ERR_NO_SUCH_SLOT
        );
        assert_eq!(
            keel_uboot_var(&ab, 0, buf.as_mut_ptr(), 3),
            KEEL_ERR_OVERFLOW
        );
        assert_eq!(
            keel_uboot_var(&ab, 0, buf.as_mut_ptr(), 0),
            KEEL_ERR_OVERFLOW
        );
        assert_eq!(
            keel_uboot_from_vars(&mut ab, c"A C".as_ptr(), std::ptr::null(), 2),
            KEEL_ERR_VARIABLE
        );
        assert_eq!(
            keel_uboot_from_vars(&mut ab, std::ptr::null(), std::ptr::null(), 5),
            KEEL_ERR_SLOT_COUNT
        );
        assert_eq!(
            keel_uboot_from_vars(std::ptr::null_mut(), order, std::ptr::null(), 2),
            KEEL_ERR_NULL
        );
        assert!(keel_uboot_var_name(5).is_null());
    }
}

/// U-Boot's environment image holding `text`, made by mkenvimage at `out`.
fn mkenvimage(mk: &Path, dir: &Path, size: usize, out: &Path, text: &str) {
    let txt = dir.join("env.txt");
    fs::write(&txt, text).unwrap();
    run_ok(
        Command::new(mk)
            .args(["-s", &size.to_string(), "-o"])
            .arg(out)
            .arg(&txt),
    );
}
