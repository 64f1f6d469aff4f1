//! The `bootstate` example on each backend, checked with the boot loaders' own tools.

mod common;

use common::{example, run, stdout, tool};

/// Run the bootstate example; it must succeed.
fn ok(args: &[&str]) -> String {
    common::ok("bootstate", args)
}

#[test]
fn grubenv_update_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("grubenv");
    let fs_ = f.to_str().unwrap();
    ok(&["grubenv", fs_, "init"]);
    ok(&["grubenv", fs_, "mark-bad", "B"]);
    ok(&["grubenv", fs_, "set-active", "B"]);
    assert!(ok(&["grubenv", fs_, "boot"]).contains("booting slot B"));
    // B never marked itself good: the next boot falls back to A.
    assert!(ok(&["grubenv", fs_, "boot"]).contains("booting slot A"));
    if let Some(ge) = tool("grub-editenv", "grub-common") {
        let listed = stdout(&run(&ge, &[fs_, "list"]));
        assert_eq!(listed, "ORDER=B A\nA_OK=1\nA_TRY=1\nB_OK=1\nB_TRY=1\n");
    }
    let o = run(
        &example("bootstate"),
        &["grubenv", fs_, "set-active", "B", "--tries", "3"],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("one try"));
}

#[test]
fn redundant_uboot_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("uboot.env");
    let fs_ = f.to_str().unwrap();
    let base = ["uboot", fs_, "--redundant", "--env-size", "0x2000"];
    let with = |extra: &[&str]| -> String {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        ok(&a)
    };
    with(&["init"]);
    with(&["set-active", "B", "--tries", "2"]);
    assert!(with(&["boot"]).contains("booting slot B"));
    assert!(with(&["boot"]).contains("booting slot B"));
    assert!(with(&["boot"]).contains("booting slot A"));
    with(&["mark-good", "A"]);
    if let Some(pr) = tool("fw_printenv", "libubootenv-tool") {
        let cfg = dir.path().join("fw_env.config");
        std::fs::write(&cfg, format!("{fs_} 0x0 0x2000\n{fs_} 0x2000 0x2000\n")).unwrap();
        let out = stdout(&run(&pr, &["-c", cfg.to_str().unwrap()]));
        assert!(
            out.contains("BOOT_ORDER=B A\n")
                && out.contains("BOOT_A_LEFT=3\n")
                && out.contains("BOOT_B_LEFT=0\n"),
            "{out}"
        );
    }
}

#[test]
fn android_misc_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("misc.img");
    std::fs::write(&f, vec![0u8; 1 << 20]).unwrap();
    let fs_ = f.to_str().unwrap();
    ok(&["android-misc", fs_, "init"]);
    ok(&["android-misc", fs_, "mark-bad", "B"]);
    ok(&["android-misc", fs_, "set-active", "B", "--tries", "1"]);
    assert!(ok(&["android-misc", fs_, "boot"]).contains("booting slot B"));
    ok(&["android-misc", fs_, "mark-good", "B"]);
    let shown = ok(&["android-misc", fs_, "show"]);
    assert!(shown.contains("next boot: B"), "{shown}");
    // A damaged block is refused with the reason.
    let mut b = std::fs::read(&f).unwrap();
    b[2048 + 30] ^= 1;
    std::fs::write(&f, b).unwrap();
    let o = run(&example("bootstate"), &["android-misc", fs_, "show"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("CRC"));
}

/// `init` works the same for every backend: the store exists afterwards (an Android misc
/// file is created at the usual partition size), slot A is the good slot that boots, and
/// the output says which rules apply. A failed init leaves no file behind.
#[test]
fn init_makes_slot_a_good_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    for backend in ["grubenv", "uboot", "android-misc"] {
        let f = dir.path().join(backend);
        let shown = ok(&[backend, f.to_str().unwrap(), "init"]);
        assert!(
            shown.contains("rules: ") && shown.contains("next boot: A"),
            "{backend}: {shown}"
        );
        let a = shown
            .lines()
            .find(|l| l.trim_start().starts_with("A "))
            .unwrap();
        assert!(
            a.ends_with("yes") || (backend == "uboot" && a.ends_with('-')),
            "{backend}: {a}"
        );
        assert!(f.exists(), "{backend}: no store");
    }
    let misc = dir.path().join("android-misc");
    assert_eq!(std::fs::metadata(&misc).unwrap().len(), 1 << 20);
    // Refused (too many slots for a misc block): the file it would have made is not left.
    let bad = dir.path().join("bad-misc");
    let o = run(
        &example("bootstate"),
        &[
            "android-misc",
            bad.to_str().unwrap(),
            "init",
            "--slots",
            "9",
        ],
    );
    assert!(!o.status.success());
    assert!(!bad.exists(), "a failed init left its file");
}
