//! The main job, with small images: every state of the cycle, for both boot loaders, with
//! and without a power cut during the apply.

mod common;

use common::{example, run, stdout};

fn cycle(args: &[&str]) -> String {
    let mut a = vec!["--slot-mib", "24"];
    a.extend_from_slice(args);
    let o = run(&example("ab-update"), &a);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{args:?}:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn has(out: &str, line: &str) {
    assert!(
        out.lines().any(|l| l.trim() == line),
        "missing {line:?} in:\n{out}"
    );
}

#[test]
fn flatcar_cycle_with_a_power_cut() {
    let out = cycle(&["--policy", "flatcar", "--interrupt"]);
    for line in [
        "check: both GPT copies valid",
        "check: system description valid: two slots of one class, a kernel file per slot",
        "check: slot A verifies against its signed root hash",
        "check: the resume record survived the cut",
        "check: slot B verifies against the signed root hash of version 2",
        "check: both images of the bundle installed: usr and vmlinuz",
        "check: slot B's kernel (/efi/keel/b/vmlinuz) is version 2's",
        "check: slot A's kernel, the running one, is untouched: the fallback boots version 1's kernel",
        "B  partition 3  USR-B  priority  2  tries  2  successful no",
        "check: B was tried exactly 2 times",
        "check: the boot loader fell back to A and stays there",
        "check: boot 3 after mark-good: B",
        "B  partition 3  USR-B  priority  2  tries  0  successful yes",
        "check: both GPT copies still valid after every flag update",
        "the simulated boot loader follows Flatcar's GRUB gptprio over GPT attribute bits",
        "Try next:",
    ] {
        has(&out, line);
    }
    assert!(
        out.lines()
            .any(|l| l.trim().starts_with("check: resumed at operation")),
        "{out}"
    );
}

#[test]
fn chromeos_cycle_keeps_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("run");
    let out = cycle(&["--policy", "chromeos", "--keep", keep.to_str().unwrap()]);
    has(&out, "check: B was tried exactly 2 times");
    // ChromeOS firmware gives a slot up on its last failed try: priority 0.
    has(
        &out,
        "B  partition 3  USR-B  priority  0  tries  0  successful no",
    );
    for f in [
        "disk.img",
        "system.toml",
        "update-1-to-2.payload",
        "v1.root.sig",
        "v2.root.sig",
        "release-key.pem",
        "release-key.pub",
    ] {
        assert!(keep.join(f).exists(), "{f} kept");
    }
}

/// A slot too small for the image is reported as that, with what to do.
#[test]
fn a_slot_too_small_says_so() {
    let o = run(&example("ab-update"), &["--slot-mib", "8"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("does not fit") && err.contains("--slot-mib"),
        "{err}"
    );
}
