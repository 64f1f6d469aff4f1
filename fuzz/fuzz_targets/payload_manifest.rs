//! The manifest parser on arbitrary bytes: never a panic, never an allocation the bytes do
//! not justify; what parses re-encodes to the same bytes.
#![no_main]

use keel_payload::format::{encode_manifest, parse_manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<8>() else { return };
    let data_len = u64::from_le_bytes(*len) % (1 << 30);
    if let Ok(m) = parse_manifest(rest, data_len) {
        assert_eq!(encode_manifest(&m), rest);
    }
});
