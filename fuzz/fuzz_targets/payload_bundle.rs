//! The bundle manifest parser on arbitrary bytes: never a panic, never an allocation the
//! bytes do not justify; what parses re-encodes to the same bytes, with names unique and
//! valid and the images' data lengths adding up.
#![no_main]

use keel_payload::format::{encode_bundle, parse_bundle, valid_image_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let data_len = u64::from_le_bytes(*len) % (1 << 30);
    if let Ok(images) = parse_bundle(rest, data_len) {
        assert_eq!(encode_bundle(&images), rest);
        assert_eq!(images.iter().map(|i| i.data_len).sum::<u64>(), data_len);
        for (i, image) in images.iter().enumerate() {
            assert!(valid_image_name(&image.name));
            assert!(images[..i].iter().all(|o| o.name != image.name));
        }
    }
});
