//! systemd-boot entry names on arbitrary text: never a panic; what parses prints back
//! the same name; stepping and blessing give names that parse.
#![no_main]

use keel_bootflags::bls::EntryName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(n) = EntryName::parse(text) else {
        return;
    };
    assert_eq!(n.file_name(), text);
    for m in [n.step(), n.bless(), n.bad()] {
        assert_eq!(EntryName::parse(&m.file_name()).ok().as_ref(), Some(&m));
    }
});
