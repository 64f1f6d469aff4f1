//! GUIDs and UUIDs from text: never a panic; what parses prints as text that parses to
//! the same value.
#![no_main]

use keel_partition::Guid;
use keel_verity::{format_uuid, parse_uuid};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(g) = text.parse::<Guid>() {
        assert_eq!(g.to_string().parse::<Guid>().ok(), Some(g));
    }
    if let Ok(u) = parse_uuid(text) {
        assert_eq!(parse_uuid(&format_uuid(&u)).ok(), Some(u));
    }
});
