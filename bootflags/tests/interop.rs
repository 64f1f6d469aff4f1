//! keel-bootflags against the real tools, both directions: `grub-editenv` for the GRUB
//! environment block, `fw_printenv` / `fw_setenv` / `mkenvimage` for single and redundant
//! U-Boot environments, and gcc's layout of AOSP's `struct bootloader_control`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use keel_bootflags::android::BootloaderControl;
use keel_bootflags::grubenv::GrubEnv;
use keel_bootflags::rauc::{RaucGrub, RaucUboot};
use keel_bootflags::store::{Backend, FileStore};
use keel_bootflags::ubootenv::{Layout, Redundant, UbootEnv};
use keel_bootflags::{AbControl, Slot, SlotState};

use keel_testsupport as tools;
use tools::{run_ok as ok, tool};

const TRICKY: [(&str, &str); 5] = [
    ("plain", "value"),
    ("backslash", "a\\b\\\\c\\"),
    ("newline", "line1\nline2\n"),
    ("empty", ""),
    ("ORDER", "B A"),
];

#[test]
fn grub_editenv_lists_what_keel_writes() {
    let Some(ge) = tool("grub-editenv", "grub-common") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("grubenv");
    let mut env = GrubEnv::new();
    env.set_all(TRICKY).unwrap();
    fs::write(&f, env.to_bytes().unwrap()).unwrap();
    let listed = ok(&ge, &[f.to_str().unwrap(), "list"]);
    let expected: String = TRICKY.iter().map(|(n, v)| format!("{n}={v}\n")).collect();
    assert_eq!(listed, expected);
    // grub-editenv can change Keel's block and Keel reads the change.
    ok(&ge, &[f.to_str().unwrap(), "set", "plain=changed"]);
    let back = GrubEnv::parse(&fs::read(&f).unwrap()).unwrap();
    assert_eq!(back.get("plain"), Some("changed"));
    assert_eq!(back.get("newline"), Some("line1\nline2\n"));
}

#[test]
fn keel_reads_what_grub_editenv_writes() {
    let Some(ge) = tool("grub-editenv", "grub-common") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("grubenv");
    let fs_ = f.to_str().unwrap();
    ok(&ge, &[fs_, "create"]);
    let args: Vec<String> = TRICKY.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let mut argv = vec![fs_, "set"];
    argv.extend(args.iter().map(String::as_str));
    ok(&ge, &argv);
    let bytes = fs::read(&f).unwrap();
    let env = GrubEnv::parse(&bytes).unwrap();
    for (n, v) in TRICKY {
        assert_eq!(env.get(n), Some(v), "{n}");
    }
    // Comment lines (Debian's warning) are kept: Keel writes the same block back.
    assert_eq!(env.to_bytes().unwrap().to_vec(), bytes);
    // RAUC's variables written by grub-editenv, read by Keel's RAUC rules.
    ok(
        &ge,
        &[
            fs_,
            "set",
            "ORDER=B A",
            "A_OK=1",
            "A_TRY=0",
            "B_OK=1",
            "B_TRY=1",
        ],
    );
    let g = RaucGrub::from_env(GrubEnv::parse(&fs::read(&f).unwrap()).unwrap(), 2).unwrap();
    assert_eq!(g.order(), &[Slot::B, Slot::A]);
    assert_eq!(g.clone().boot(), Some(Slot::A));
    ok(&ge, &[fs_, "set", "A_OK=maybe"]);
    let e = RaucGrub::from_env(GrubEnv::parse(&fs::read(&f).unwrap()).unwrap(), 2).unwrap_err();
    assert!(e.to_string().contains("A_OK"), "{e}");
}

#[test]
fn rauc_grub_store_through_grub_editenv() {
    let Some(ge) = tool("grub-editenv", "grub-common") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("grubenv");
    let mut s = FileStore::init(Backend::GrubEnv, &f, 2, Slot::A).unwrap();
    s.control().mark_bad(Slot::B).unwrap();
    s.control().set_active(Slot::B, None).unwrap();
    s.save().unwrap();
    let listed = ok(&ge, &[f.to_str().unwrap(), "list"]);
    assert_eq!(listed, "ORDER=B A\nA_OK=1\nA_TRY=0\nB_OK=1\nB_TRY=0\n");
}

/// fw_printenv and fw_setenv, or a visible skip when they are missing.
fn fw_tools() -> Option<(PathBuf, PathBuf)> {
    Some((
        tool("fw_printenv", "libubootenv-tool")?,
        tool("fw_setenv", "libubootenv-tool")?,
    ))
}

#[track_caller]
fn has(vars: &[(String, String)], name: &str, value: &str) {
    assert!(
        vars.iter().any(|(n, v)| n == name && v == value),
        "{name}={value:?} not in {vars:?}"
    );
}

fn printenv(fw: &Path, cfg: &Path) -> Vec<(String, String)> {
    ok(fw, &["-c", cfg.to_str().unwrap()])
        .lines()
        .map(|l| {
            let (n, v) = l.split_once('=').unwrap();
            (n.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn uboot_single_copy_both_directions() {
    let Some((pr, set)) = fw_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("uboot.env");
    let size = 0x2000;
    let cfg = keel_testsupport::fw_env_config(dir.path(), &f, size, false);
    let backend = Backend::Uboot {
        size,
        redundant: false,
    };
    let mut s = FileStore::init(backend.clone(), &f, 2, Slot::A).unwrap();
    s.control().set_active(Slot::B, Some(10)).unwrap();
    s.save().unwrap();
    let vars = printenv(&pr, &cfg);
    has(&vars, "BOOT_ORDER", "B A");
    has(&vars, "BOOT_B_LEFT", "a");
    has(&vars, "BOOT_A_LEFT", "3");
    // fw_setenv changes it; Keel reads the change and keeps the unknown variable.
    ok(&set, &["-c", cfg.to_str().unwrap(), "BOOT_B_LEFT", "1"]);
    ok(
        &set,
        &[
            "-c",
            cfg.to_str().unwrap(),
            "bootargs",
            "console=ttyS0 quiet",
        ],
    );
    let mut s = FileStore::open(backend, &f, 2).unwrap();
    assert_eq!(
        s.status()[1],
        SlotState {
            priority: 4,
            tries: 1,
            successful: false
        }
    );
    s.control().boot();
    s.save().unwrap();
    let vars = printenv(&pr, &cfg);
    has(&vars, "BOOT_B_LEFT", "0");
    has(&vars, "bootargs", "console=ttyS0 quiet");
}

#[test]
fn uboot_redundant_both_directions_and_writes_to_the_older_copy() {
    let Some((pr, set)) = fw_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("uboot.env");
    let size = 0x4000;
    let cfg = keel_testsupport::fw_env_config(dir.path(), &f, size, true);
    let backend = Backend::Uboot {
        size,
        redundant: true,
    };
    FileStore::init(backend.clone(), &f, 2, Slot::A).unwrap();
    let vars = printenv(&pr, &cfg);
    has(&vars, "BOOT_ORDER", "A");
    // fw_setenv writes the older copy (two variables in one write); Keel then reads the
    // newer one.
    let script = dir.path().join("script");
    fs::write(&script, "BOOT_ORDER=B A\nBOOT_B_LEFT=2\n").unwrap();
    ok(
        &set,
        &["-c", cfg.to_str().unwrap(), "-s", script.to_str().unwrap()],
    );
    let mut s = FileStore::open(backend.clone(), &f, 2).unwrap();
    assert_eq!(s.next_boot(), Some(Slot::B));
    // Keel's next write lands in the older copy, leaving the newer one intact.
    let before = fs::read(&f).unwrap();
    let l = Layout {
        size,
        redundant: true,
    };
    let current = Redundant::from_copies(
        UbootEnv::parse_copy(&before[..size], l),
        UbootEnv::parse_copy(&before[size..], l),
    )
    .unwrap()
    .current;
    s.control().mark_bad(Slot::B).unwrap();
    s.save().unwrap();
    let after = fs::read(&f).unwrap();
    let (kept, written) = if current == 0 {
        (0..size, size..2 * size)
    } else {
        (size..2 * size, 0..size)
    };
    assert_eq!(after[kept.clone()], before[kept]);
    assert_ne!(after[written.clone()], before[written]);
    let vars = printenv(&pr, &cfg);
    has(&vars, "BOOT_ORDER", "A");
    has(&vars, "BOOT_B_LEFT", "0");
}

#[test]
fn keel_reads_mkenvimage() {
    let Some(mk) = tool("mkenvimage", "u-boot-tools") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("env.txt");
    fs::write(
        &input,
        "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=f\nbootcmd=run x; run y\n",
    )
    .unwrap();
    for redundant in [false, true] {
        let out = dir.path().join("env.img");
        let mut args = vec!["-s", "0x1000", "-o", out.to_str().unwrap()];
        if redundant {
            args.insert(0, "-r");
        }
        args.push(input.to_str().unwrap());
        ok(&mk, &args);
        let bytes = fs::read(&out).unwrap();
        let c = UbootEnv::parse_copy(
            &bytes,
            Layout {
                size: 0x1000,
                redundant,
            },
        )
        .unwrap();
        assert_eq!(c.env.get("bootcmd"), Some("run x; run y"));
        let u = RaucUboot::from_env(c.env.clone(), 2).unwrap();
        assert_eq!(u.left(Slot::B), 15);
        // Keel's encoding of the same variables is byte-identical to mkenvimage's.
        assert_eq!(
            c.env
                .to_copy(
                    Layout {
                        size: 0x1000,
                        redundant
                    },
                    c.flags
                )
                .unwrap(),
            bytes
        );
    }
}

/// The AOSP struct, as gcc lays it out: a C program fills it from Keel's field values and
/// prints its bytes; it also decodes Keel's bytes and prints the fields.
const ORACLE: &str = r#"
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct slot_metadata {
    uint8_t priority : 4;
    uint8_t tries_remaining : 3;
    uint8_t successful_boot : 1;
    uint8_t verity_corrupted : 1;
    uint8_t reserved : 7;
} __attribute__((packed));

struct bootloader_control {
    char slot_suffix[4];
    uint32_t magic;
    uint8_t version;
    uint8_t nb_slot : 3;
    uint8_t recovery_tries_remaining : 3;
    uint8_t merge_status : 3;
    uint8_t reserved0[1];
    struct slot_metadata slot_info[4];
    uint8_t reserved1[8];
    uint32_t crc32_le;
} __attribute__((packed));

_Static_assert(sizeof(struct bootloader_control) == 32, "size");
_Static_assert(offsetof(struct bootloader_control, slot_info) == 12, "slot_info");
_Static_assert(offsetof(struct bootloader_control, crc32_le) == 28, "crc");

int main(int argc, char **argv) {
    struct bootloader_control c;
    if (argc > 1 && strcmp(argv[1], "encode") == 0) {
        /* encode NB RECOVERY MERGE then per slot P T S V */
        memset(&c, 0, sizeof c);
        memcpy(c.slot_suffix, "_b", 3);
        c.magic = 0x42414342;
        c.version = 1;
        c.nb_slot = atoi(argv[2]);
        c.recovery_tries_remaining = atoi(argv[3]);
        c.merge_status = atoi(argv[4]);
        for (int i = 0; i < 4; i++) {
            c.slot_info[i].priority = atoi(argv[5 + 4 * i]);
            c.slot_info[i].tries_remaining = atoi(argv[6 + 4 * i]);
            c.slot_info[i].successful_boot = atoi(argv[7 + 4 * i]);
            c.slot_info[i].verity_corrupted = atoi(argv[8 + 4 * i]);
        }
        const unsigned char *b = (const unsigned char *)&c;
        for (size_t i = 0; i < sizeof c; i++) printf("%02x", b[i]);
        printf("\n");
        return 0;
    }
    /* decode: 32 bytes on stdin */
    if (fread(&c, 1, sizeof c, stdin) != sizeof c) return 2;
    printf("%u %u %u", c.nb_slot, c.recovery_tries_remaining, c.merge_status);
    for (int i = 0; i < 4; i++)
        printf(" %u %u %u %u", c.slot_info[i].priority, c.slot_info[i].tries_remaining,
               c.slot_info[i].successful_boot, c.slot_info[i].verity_corrupted);
    printf("\n");
    return 0;
}
"#;

fn oracle(dir: &Path) -> Option<PathBuf> {
    let cc = tool("gcc", "gcc")?;
    let src = dir.join("oracle.c");
    fs::write(&src, ORACLE).unwrap();
    let exe = dir.join("oracle");
    ok(
        &cc,
        &[
            "-O1",
            "-Wall",
            "-Werror",
            "-o",
            exe.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    );
    Some(exe)
}

#[test]
fn android_block_matches_the_aosp_c_layout() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = oracle(dir.path()) else {
        return;
    };
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    for _ in 0..50 {
        let nb = 1 + next(4) as u8;
        let (rec, merge) = (next(8) as u8, next(8) as u8);
        let mut c = BootloaderControl::new(nb, Slot::A).unwrap();
        c.set_recovery_tries_remaining(rec);
        c.set_merge_status(merge);
        let mut args = vec![
            "encode".to_string(),
            nb.to_string(),
            rec.to_string(),
            merge.to_string(),
        ];
        for s in Slot::all(4) {
            let st = SlotState {
                priority: next(16) as u8,
                tries: next(8) as u8,
                successful: next(2) == 1,
            };
            let v = next(2) == 1;
            c.set_slot_state(s, st);
            c.set_verity_corrupted(s, v);
            args.extend(
                [st.priority, st.tries, u8::from(st.successful), u8::from(v)]
                    .map(|x| x.to_string()),
            );
        }
        // The C side names slot B in the suffix; so does Keel after booting B.
        let mut keel = c.clone();
        let suffix_b = {
            let mut b = keel.to_bytes();
            b[..4].copy_from_slice(b"_b\0\0");
            b
        };
        keel = BootloaderControl::parse(&{
            let mut b = suffix_b;
            let crc = crc32(&b[..28]);
            b[28..].copy_from_slice(&crc.to_le_bytes());
            b
        })
        .unwrap();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let c_hex = ok(&exe, &argv);
        let c_bytes = hex(c_hex.trim());
        assert_eq!(
            &c_bytes[..28],
            &keel.to_bytes()[..28],
            "C layout differs: {args:?}"
        );
        // Keel decodes the C bytes (with a CRC added) to the same fields.
        let mut with_crc = c_bytes.clone();
        let crc = crc32(&with_crc[..28]);
        with_crc[28..].copy_from_slice(&crc.to_le_bytes());
        let parsed = BootloaderControl::parse(&with_crc).unwrap();
        assert_eq!(parsed, keel);
        // And the C program decodes Keel's bytes to the same fields.
        let child =
            tools::spawn_with_input(Command::new(&exe).stdout(Stdio::piped()), &keel.to_bytes());
        let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
        let expect: Vec<String> = args[1..].to_vec();
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            expect.iter().map(String::as_str).collect::<Vec<_>>()
        );
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// zlib CRC-32, written out here so the test does not trust the crate's own.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The environment where an fw_env.config puts it: two copies at their own offsets, one
/// in the middle of a disk image and one in another file, read and written by Keel and
/// by libubootenv's tools through the same config.
#[test]
fn uboot_where_fw_env_config_says_both_directions() {
    use keel_bootflags::store::FwEnvConfig;
    use keel_bootflags::BootControl;
    let Some((pr, set)) = fw_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let other = dir.path().join("env2.bin");
    fs::write(&disk, vec![0x5au8; 1 << 20]).unwrap();
    fs::write(&other, vec![0xa5u8; 64 << 10]).unwrap();
    let cfg = dir.path().join("fw_env.config");
    fs::write(
        &cfg,
        format!(
            "# device offset size\n{} 0x40000 0x2000\n{}\t8192   0x2000 0x1000 2 # second copy\n",
            disk.display(),
            other.display()
        ),
    )
    .unwrap();
    let parsed = FwEnvConfig::read(&cfg).unwrap();
    assert_eq!(parsed.size, 0x2000);
    assert_eq!(
        parsed.copies,
        vec![(disk.clone(), 0x40000), (other.clone(), 8192)]
    );
    let backend = Backend::FwEnv(parsed);
    let mut s = FileStore::init(backend.clone(), &cfg, 2, Slot::A).unwrap();
    // Nothing outside the two copies changed.
    let d = fs::read(&disk).unwrap();
    assert!(d[..0x40000].iter().chain(&d[0x42000..]).all(|&b| b == 0x5a));
    let vars = printenv(&pr, &cfg);
    has(&vars, "BOOT_ORDER", "A");
    // Keel arms B; fw_printenv sees it.
    BootControl::mark_bad(&mut s, Slot::B).unwrap();
    BootControl::set_active(&mut s, Slot::B, Some(2)).unwrap();
    let vars = printenv(&pr, &cfg);
    has(&vars, "BOOT_ORDER", "B A");
    // fw_setenv changes it back; Keel reads the change.
    ok(&set, &["-c", cfg.to_str().unwrap(), "BOOT_ORDER", "A B"]);
    let s = FileStore::open(backend, &cfg, 2).unwrap();
    assert_eq!(s.next_boot(), Some(Slot::A));
    // Bad configurations are named by line.
    for (text, needle) in [
        ("", "no environment copy"),
        ("/dev/mtd0 0x0\n", "line 1"),
        ("a 0 0x2000\nb 0 0x4000\n", "differ in size"),
        ("a 0 0x2000\nb 0 0x2000\nc 0 0x2000\n", "more than two"),
        ("a zero 0x2000\n", "offset"),
    ] {
        let e = FwEnvConfig::parse(text).unwrap_err();
        assert!(e.to_string().contains(needle), "{text:?}: {e}");
    }
}
