//! The `config` example: compiler-style findings and exit status, merged output.

mod common;

use common::{example, run, stdout};

#[test]
fn check_and_show() {
    let ex = example("config");
    let configs = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/configs");
    let mut files: Vec<String> = std::fs::read_dir(configs)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();
    let mut args = vec!["check"];
    args.extend(files.iter().map(String::as_str));
    let o = run(&ex, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "version = \"1\"\ncompatible = \"x\"\n[boot]\nbackend = \"uboot\"\n",
    )
    .unwrap();
    let o = run(&ex, &["check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "{}:4:11: error: boot.backend: the uboot backend needs `env-file`",
            bad.display()
        )),
        "{err}"
    );

    let drop = dir.path().join("10-tries.toml");
    std::fs::write(&drop, "[update]\ntries = 1\n").unwrap();
    let base = format!("{configs}/gpt-flatcar.toml");
    let o = run(&ex, &["show", &base, drop.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["update"]["tries"], 1);
    assert_eq!(v["slot"][1]["read-only"], true);
}
