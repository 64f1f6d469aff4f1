//! The configuration loader on files: a base file and drop-ins cut from arbitrary bytes
//! at NUL bytes. Never a panic; every finding names a file that was given.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("keel-fuzz-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut paths = Vec::new();
    for (i, part) in data.split(|&b| b == 0).take(4).enumerate() {
        let p = dir.join(format!("{i}.toml"));
        std::fs::write(&p, part).expect("write");
        paths.push(p);
    }
    let Some((base, dropins)) = paths.split_first() else {
        return;
    };
    if let Ok(l) = keel_config::load_files(base, dropins) {
        for f in &l.findings {
            assert!(
                paths.iter().any(|p| p.display().to_string() == f.file),
                "{}",
                f.file
            );
        }
    }
});
