//! The shipped unit file, read by systemd's own parser (`systemd-analyze verify`) with the
//! built program in place of /usr/bin/keel-agent: every directive known and valid, the
//! command executable, the service a notify service with a watchdog; and the command
//! line it runs is one the program accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::process::Command;

const UNIT: &str = include_str!("../keel-agent.service");

#[test]
fn systemd_reads_the_unit_without_a_complaint() {
    let Some(analyze) = keel_testsupport::tool("systemd-analyze", "systemd") else {
        return;
    };
    let exe = env!("CARGO_BIN_EXE_keel-agent");
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("keel-agent.service");
    assert!(UNIT.contains("ExecStart=/usr/bin/keel-agent "));
    std::fs::write(&unit, UNIT.replace("/usr/bin/keel-agent", exe)).unwrap();
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    // systemd reports a directive it ignores on stderr and still exits 0.
    assert!(
        out.status.success() && !said.contains("keel-agent"),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );
    // The checker is not blind: a misspelt type is reported.
    std::fs::write(
        &unit,
        UNIT.replace("/usr/bin/keel-agent", exe)
            .replace("Type=notify", "Type=notfy"),
    )
    .unwrap();
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("notfy"));

    for line in [
        "Type=notify",
        "WatchdogSec=",
        "StateDirectory=keel",
        "NotifyAccess=main",
    ] {
        assert!(UNIT.lines().any(|l| l.starts_with(line)), "{line}");
    }
    // ExecStart's options are the program's: parsed up to the subcommand's own help.
    let exec = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/usr/bin/keel-agent "))
        .unwrap();
    let out = Command::new(exe)
        .args(exec.split_whitespace())
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("--once"),
        "{exec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
