//! Android's FEC header block on arbitrary bytes: never a panic (sizes from the header
//! cannot overflow); what parses encodes to a block that parses to the same header.
#![no_main]

use keel_verity::AndroidFecHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut block = vec![0u8; AndroidFecHeader::BLOCK_SIZE];
    let n = data.len().min(block.len());
    block[..n].copy_from_slice(&data[..n]);
    // Let the fuzzer reach the second copy: byte 0 odd mirrors its first 60 bytes there.
    if data.first().is_some_and(|b| b & 1 == 1) {
        let head = block[..AndroidFecHeader::SIZE].to_vec();
        let at = block.len() - AndroidFecHeader::SIZE;
        block[at..].copy_from_slice(&head);
        block[0] ^= 0xff;
    }
    if let Ok(h) = AndroidFecHeader::parse_block(&block) {
        assert_eq!(AndroidFecHeader::parse_block(&h.to_block()).ok(), Some(h));
    }
});
