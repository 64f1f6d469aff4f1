//! The generator's squashfs reader on damaged images: a real (tiny, hand-made) squashfs
//! layout with the fuzzer's bytes written over it. Never a panic; every block it reports
//! lies inside the image, and reading a file's content stays within its size.
#![no_main]

use keel_payload::squashfs::{open, STORED};
use libfuzzer_sys::fuzz_target;

mod damage;

const BS: u32 = 4096;
const DATA: usize = 96;

/// A minimal squashfs: superblock, two stored data blocks of one file, an inode table and
/// a directory table of one uncompressed metadata block each (root holding "file").
fn base() -> Vec<u8> {
    let mut img = vec![0u8; DATA];
    img.extend((0..2 * BS).map(|i| (i % 251) as u8));
    let inode_table = img.len() as u64;
    let mut inodes = Vec::new();
    let header = |v: &mut Vec<u8>, kind: u16, number: u32| {
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&0o644u16.to_le_bytes());
        v.extend_from_slice(&[0; 4]); // uid, gid indexes
        v.extend_from_slice(&0u32.to_le_bytes()); // mtime
        v.extend_from_slice(&number.to_le_bytes());
    };
    // The file (basic, type 2) at offset 0: blocks at DATA, no fragment, two blocks.
    header(&mut inodes, 2, 2);
    for v in [DATA as u32, u32::MAX, 0, 2 * BS, BS | STORED, BS | STORED] {
        inodes.extend_from_slice(&v.to_le_bytes());
    }
    // The root (basic directory, type 1) at offset 40: its entries at offset 0 of the
    // directory table, 24 bytes of them (the size counts 3 more).
    let root = inodes.len() as u64;
    header(&mut inodes, 1, 1);
    inodes.extend_from_slice(&0u32.to_le_bytes());
    inodes.extend_from_slice(&2u32.to_le_bytes());
    inodes.extend_from_slice(&27u16.to_le_bytes());
    inodes.extend_from_slice(&0u16.to_le_bytes());
    inodes.extend_from_slice(&3u32.to_le_bytes());
    img.extend_from_slice(&(0x8000 | inodes.len() as u16).to_le_bytes());
    img.extend_from_slice(&inodes);
    let dir_table = img.len() as u64;
    let mut dir = Vec::new();
    for v in [0u32, 0, 2] {
        dir.extend_from_slice(&v.to_le_bytes()); // one entry, inode block 0
    }
    for v in [0u16, 0, 2, 3] {
        dir.extend_from_slice(&v.to_le_bytes()); // offset, number delta, file, name length - 1
    }
    dir.extend_from_slice(b"file");
    img.extend_from_slice(&(0x8000 | dir.len() as u16).to_le_bytes());
    img.extend_from_slice(&dir);
    let len = img.len() as u64;
    let sb = &mut img[..DATA];
    sb[0..4].copy_from_slice(&0x7371_7368u32.to_le_bytes());
    sb[4..8].copy_from_slice(&2u32.to_le_bytes());
    sb[12..16].copy_from_slice(&BS.to_le_bytes());
    sb[20..22].copy_from_slice(&6u16.to_le_bytes()); // zstd
    sb[22..24].copy_from_slice(&12u16.to_le_bytes());
    sb[26..28].copy_from_slice(&1u16.to_le_bytes());
    sb[28..30].copy_from_slice(&4u16.to_le_bytes());
    sb[32..40].copy_from_slice(&root.to_le_bytes());
    sb[40..48].copy_from_slice(&len.to_le_bytes());
    for (at, v) in [
        (48, u64::MAX),
        (56, u64::MAX),
        (64, inode_table),
        (72, dir_table),
        (80, u64::MAX),
        (88, u64::MAX),
    ] {
        sb[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    img
}

fuzz_target!(|data: &[u8]| {
    let mut img = base();
    if data.is_empty() {
        // The undamaged base is read right, or the fuzzing would prove little.
        let image = open(&img).expect("the base reads");
        assert_eq!(image.files.len(), 1);
        let f = &image.files[0];
        assert_eq!((f.path.as_str(), f.size), ("/file", 2 * u64::from(BS)));
        assert_eq!(
            image.read_file(&img, f).as_deref(),
            Some(&img[DATA..DATA + 2 * BS as usize])
        );
    }
    // Most damage goes to the superblock and tables, not the data.
    let len = img.len();
    damage::patch(&mut img, data, |at| {
        let at = at % len;
        if at >= DATA && at < DATA + 2 * BS as usize {
            len - 1 - at % 128
        } else {
            at
        }
    });
    if let Some(image) = open(&img) {
        for f in &image.files {
            assert!(
                f.data.start + f.data.stored_len() <= img.len() as u64,
                "{} outside",
                f.path
            );
            if let Some(content) = image.read_file(&img, f) {
                assert_eq!(content.len() as u64, f.size);
            }
        }
    }
});
