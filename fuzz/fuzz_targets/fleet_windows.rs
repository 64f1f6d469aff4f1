//! keel-fleet's reboot windows on arbitrary text: never a panic; a window that parses is
//! inside itself at its own next opening.
#![no_main]

use keel_fleet::Windows;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: (&str, u32)| {
    let (text, at) = data;
    if let Ok(ws) = Windows::parse(&text.split(';').collect::<Vec<_>>()) {
        let t = u64::from(at);
        if let Some(open) = ws.next_open(t) {
            assert!(open >= t && ws.contains(open), "{text:?} at {t}: {open}");
        }
    }
});
