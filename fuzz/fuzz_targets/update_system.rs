//! keel-update's two readers of outside text: a description that keel-config accepts is
//! one keel-update can act on (the rules live once, so they cannot disagree; the agent
//! may only say it does not support what a valid description asks, as a pair named C and
//! D), and any kernel command line gives clues without a panic.
#![no_main]

use keel_config::load_sources;
use keel_update::{clues, System};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let l = load_sources(&[("system.toml".to_string(), text.clone())]);
    if let Some(c) = l.config {
        match System::from_config(&c) {
            Ok(_) | Err(keel_update::Error::Unsupported { .. }) => {}
            Err(e) => panic!("keel-config accepted what keel-update refuses: {e}"),
        }
    }
    let root = std::env::temp_dir().join(format!("keel-fuzz-cmdline-{}", std::process::id()));
    std::fs::create_dir_all(root.join("proc")).expect("temp dir");
    std::fs::write(root.join("proc/cmdline"), data).expect("write");
    let _ = clues(&root);
});
