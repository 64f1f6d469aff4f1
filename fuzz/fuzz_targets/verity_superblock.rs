//! The superblock parser on arbitrary bytes: never a panic; what parses re-encodes to
//! the same bytes; an opened device's geometry is consistent.
#![no_main]

use keel_verity::{open_hash_device, Superblock};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sb) = Superblock::parse(data) {
        let bytes = sb.to_bytes();
        assert_eq!(&bytes[..], &data[..512]);
        assert_eq!(Superblock::parse(&bytes).ok().as_ref(), Some(&sb));
    }
    if let Ok((sb, g)) = open_hash_device(data, 0) {
        assert_eq!(g.data_blocks(), sb.params.data_blocks());
        assert!(g.tree_offset() >= 512);
    }
});
