//! Android `bootloader_control` on arbitrary bytes (with the CRC fixed up half the time):
//! never a panic; what parses re-encodes to the same bytes; the rules keep it valid.
#![no_main]

use keel_bootflags::android::BootloaderControl;
use keel_bootflags::{AbControl, Slot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut b = data.to_vec();
    if b.len() == 33 {
        let fix = b.pop() == Some(1);
        if fix {
            let crc = crc32fast::hash(&b[..28]);
            b[28..].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let Ok(mut c) = BootloaderControl::parse(&b) else {
        return;
    };
    assert_eq!(&c.to_bytes()[..], &b[..]);
    let _ = c.boot();
    let _ = c.set_active(Slot::B, None);
    let _ = c.mark_good(Slot::A);
    assert!(BootloaderControl::parse(&c.to_bytes()).is_ok());
});
