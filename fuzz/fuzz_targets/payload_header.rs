//! The payload header and the manifest reader on unsigned, arbitrary bytes: never a panic,
//! never a read past what a checked header allows; a header that parses re-encodes to
//! the same bytes; nothing is accepted without a trusted key.
#![no_main]

use keel_payload::format::{Header, HEADER_SIZE};
use keel_payload::read_manifest;
use keel_verity::Keyring;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(b) = data.first_chunk::<HEADER_SIZE>() {
        if let Ok(h) = Header::parse(b) {
            assert_eq!(&h.to_bytes(), b);
        }
    }
    let empty = Keyring::new();
    assert!(read_manifest(&mut &data[..], &empty).is_err());
});
