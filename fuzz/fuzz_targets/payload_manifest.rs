//! The manifest parser on arbitrary bytes: never a panic, never an allocation the bytes do
//! not justify; what parses re-encodes to the same bytes; decompression stays bounded.
#![no_main]

use keel_payload::format::{encode_manifest, parse_manifest, unpack_manifest, MAX_MANIFEST};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let data_len = u64::from_le_bytes(*len) % (1 << 30);
    if let Ok(m) = parse_manifest(rest, data_len) {
        assert_eq!(encode_manifest(&m), rest);
    }
    // The stored form: any bytes either fail or decompress within the bound.
    if let Ok(raw) = unpack_manifest(data) {
        assert!(raw.len() as u64 <= MAX_MANIFEST);
    }
});
