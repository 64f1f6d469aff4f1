//! U-Boot environment copies (single and redundant) and RAUC's U-Boot variables on
//! arbitrary bytes: never a panic; what parses re-encodes to a copy that parses the same.
#![no_main]

use keel_bootflags::rauc::RaucUboot;
use keel_bootflags::ubootenv::{Layout, Redundant, UbootEnv};
use keel_bootflags::AbControl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let redundant = mode & 1 == 1;
    let size = rest.len();
    let layout = Layout { size, redundant };
    // Fix the CRC half the time so the parser gets past it.
    let mut bytes = rest.to_vec();
    let header = if redundant { 5 } else { 4 };
    if mode & 2 == 2 && size > header {
        let crc = crc32fast::hash(&bytes[header..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
    }
    let Ok(copy) = UbootEnv::parse_copy(&bytes, layout) else {
        return;
    };
    let again = copy
        .env
        .to_copy(layout, copy.flags)
        .expect("a parsed copy fits");
    assert_eq!(
        UbootEnv::parse_copy(&again, layout).map(|c| c.env).ok(),
        Some(copy.env.clone())
    );
    if redundant {
        let r = Redundant::from_copies(Ok(copy.clone()), UbootEnv::parse_copy(&again, layout))
            .expect("valid");
        let _ = r.next_write(&copy.env, size);
    }
    if let Ok(mut u) = RaucUboot::from_env(copy.env, 2) {
        let _ = u.boot();
        if let Ok(e) = u.to_env() {
            let _ = e.to_copy(layout, 0);
        }
    }
});
