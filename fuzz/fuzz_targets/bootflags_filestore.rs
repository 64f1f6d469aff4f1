//! The boot-state file stores on arbitrary file contents, for each backend: never a panic;
//! what opens saves and reopens with the same state.
#![no_main]

use keel_bootflags::store::{Backend, FileStore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, content)) = data.split_first() else {
        return;
    };
    let backend = match mode % 4 {
        0 => Backend::GrubEnv,
        1 => Backend::Uboot {
            size: 256 + usize::from(mode >> 2) * 16,
            redundant: false,
        },
        2 => Backend::Uboot {
            size: 256 + usize::from(mode >> 2) * 16,
            redundant: true,
        },
        _ => Backend::AndroidMisc,
    };
    let path = std::env::temp_dir().join(format!("keel-fuzz-store-{}", std::process::id()));
    std::fs::write(&path, content).expect("write");
    let slots = 2 + usize::from(mode & 1);
    if let Ok(mut s) = FileStore::open(backend.clone(), &path, slots) {
        let before = s.status();
        if s.save().is_ok() {
            let again = FileStore::open(backend, &path, slots).expect("a saved store opens");
            assert_eq!(again.status(), before);
        }
    }
});
