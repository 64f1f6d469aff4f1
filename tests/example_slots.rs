//! The `slots` example on an image, checked with cgpt and sgdisk.

mod common;

use common::{example, run, stdout, tool};

/// Run the slots example; it must succeed.
fn ok(args: &[&str]) -> String {
    common::ok("slots", args)
}

#[test]
fn create_arm_boot_and_repair() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let s = img.to_str().unwrap();
    let shown = ok(&[
        s,
        "create",
        "--slot-size",
        "50000000",
        "--esp-size",
        "8388608",
        "--disk-size",
        "134217728",
        "--labels",
        "root-a,root-b",
        "--type",
        "root-x86-64",
    ]);
    assert!(
        shown.contains("root-a") && shown.contains("next boot: A"),
        "{shown}"
    );
    ok(&[s, "set-active", "B", "--tries", "1"]);
    assert!(ok(&["--policy", "chromeos", s, "boot"]).contains("booting slot B"));
    // B was not marked good: ChromeOS firmware gives it up and boots A.
    let shown = ok(&["--policy", "chromeos", s, "boot"]);
    assert!(shown.contains("booting slot A"), "{shown}");
    if let Some(cgpt) = tool("cgpt", "cgpt") {
        let p = stdout(&run(&cgpt, &["show", "-i", "3", "-P", s]));
        assert_eq!(p.trim(), "0");
    }
    // Damage the primary header; show reports it, repair fixes it, sgdisk agrees.
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[512 + 40] ^= 1;
    std::fs::write(&img, &bytes).unwrap();
    assert!(ok(&[s, "show"]).contains("primary DAMAGED"));
    assert!(ok(&[s, "repair"]).contains("repaired"));
    if let Some(sgdisk) = tool("sgdisk", "gdisk") {
        let out = stdout(&run(&sgdisk, &["-v", s]));
        assert!(
            out.contains("No problems found") && !out.contains("Caution"),
            "{out}"
        );
    }
    let o = run(&example("slots"), &[s, "mark-good", "7"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not one of the slots"));
}
