//! Signed roots and root descriptors on arbitrary bytes: never a panic; nothing verifies
//! without the trusted key's signature.
#![no_main]

use keel_verity::{Keyring, PublicKey, RootDescriptor, VerifyRoot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = RootDescriptor::parse(data) {
        assert_eq!(&d.to_bytes()[..], data);
    }
    let mut ring = Keyring::new();
    // A fixed public key (RFC 8032 test 1); the fuzzer cannot forge its signatures.
    let pk = [
        0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07,
        0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07,
        0x51, 0x1a,
    ];
    let key = PublicKey::from_bytes(&pk).expect("valid key");
    ring.add(key).expect("one key");
    assert!(ring.verify_root(data).is_err());
});
