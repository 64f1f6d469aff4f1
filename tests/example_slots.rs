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

/// Every command says which boot loader's rules it applies, and why: the slots' partition
/// type (ChromeOS kernel partitions: ChromeOS firmware), `--policy`, or an assumption.
#[test]
fn the_rules_applied_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let create = |name: &str, extra: &[&str]| {
        let img = dir.path().join(name);
        let mut a = vec![
            img.to_str().unwrap().to_string(),
            "create".into(),
            // Sizes as a person writes them.
            "--slot-size".into(),
            "4M".into(),
            "--esp-size".into(),
            "1MiB".into(),
            "--disk-size".into(),
            "0x1000000".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        (img.display().to_string(), ok(&args))
    };
    let (usr, shown) = create("usr.img", &[]);
    assert!(
        shown.contains("rules: Flatcar GRUB gptprio (assumed:"),
        "{shown}"
    );
    let shown = ok(&["--policy", "chromeos", &usr, "show"]);
    assert!(
        shown.contains("rules: ChromeOS firmware (--policy chromeos)"),
        "{shown}"
    );
    let kern = "fe3a2a5d-4f32-41a7-b725-accc3285a309";
    let (cros, shown) = create("cros.img", &["--labels", "KERN-A,KERN-B", "--type", kern]);
    assert!(
        shown.contains("rules: ChromeOS firmware (the slots have ChromeOS"),
        "{shown}"
    );
    let shown = ok(&[&cros, "boot"]);
    assert!(shown.contains("rules: ChromeOS firmware"), "{shown}");
    let shown = ok(&[&usr, "show"]);
    assert!(
        shown.contains("4M") && shown.contains("sector size 512"),
        "{shown}"
    );
    let o = run(
        &example("slots"),
        &[
            &dir.path().join("x.img").display().to_string(),
            "create",
            "--slot-size",
            "4X",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown size suffix \"X\""), "{err}");
}
