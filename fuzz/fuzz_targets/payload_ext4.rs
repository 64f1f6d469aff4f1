//! The generator's ext4 reader on damaged images: a real (tiny, hand-made) ext4 layout
//! with the fuzzer's bytes written over it. Never a panic; every extent it reports lies
//! inside the image.
#![no_main]

use keel_payload::ext4::files;
use libfuzzer_sys::fuzz_target;

mod damage;

const BS: usize = 4096;

/// A minimal ext4: superblock (4 KiB blocks, 64bit, extents), one group descriptor, an
/// inode table whose root directory holds one regular file of two blocks.
fn base() -> Vec<u8> {
    let mut img = vec![0u8; 16 * BS];
    let sb = 1024;
    let put32 =
        |img: &mut Vec<u8>, at: usize, v: u32| img[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put16 =
        |img: &mut Vec<u8>, at: usize, v: u16| img[at..at + 2].copy_from_slice(&v.to_le_bytes());
    put32(&mut img, sb, 32); // inodes
    put32(&mut img, sb + 4, 16); // blocks
    put32(&mut img, sb + 0x18, 2); // 4 KiB
    put32(&mut img, sb + 0x20, 32768);
    put32(&mut img, sb + 0x28, 32);
    put16(&mut img, sb + 0x38, 0xef53);
    put32(&mut img, sb + 0x4c, 1);
    put16(&mut img, sb + 0x58, 256);
    put32(&mut img, sb + 0x60, 0x80 | 0x40 | 0x2);
    put16(&mut img, sb + 0xfe, 64);
    // Group descriptor in block 1: inode table at block 2.
    put32(&mut img, BS + 8, 2);
    let inode = |n: usize| 2 * BS + (n - 1) * 256;
    let extent_inode =
        |img: &mut Vec<u8>, at: usize, mode: u16, size: u32, block: u32, len: u16| {
            img[at..at + 2].copy_from_slice(&mode.to_le_bytes());
            img[at + 4..at + 8].copy_from_slice(&size.to_le_bytes());
            img[at + 0x20..at + 0x24].copy_from_slice(&0x8_0000u32.to_le_bytes());
            let e = at + 0x28;
            img[e..e + 2].copy_from_slice(&0xf30au16.to_le_bytes());
            img[e + 2..e + 4].copy_from_slice(&1u16.to_le_bytes());
            img[e + 4..e + 6].copy_from_slice(&4u16.to_le_bytes());
            img[e + 16..e + 18].copy_from_slice(&len.to_le_bytes());
            img[e + 20..e + 24].copy_from_slice(&block.to_le_bytes());
        };
    extent_inode(&mut img, inode(2), 0x41ed, BS as u32, 10, 1);
    extent_inode(&mut img, inode(12), 0x81a4, 2 * BS as u32, 12, 2);
    // Directory block 10: "." "..", then "file" -> 12, covering the rest of the block.
    let d = 10 * BS;
    let entry = |img: &mut Vec<u8>, at: usize, ino: u32, rec: u16, name: &[u8], ft: u8| {
        img[at..at + 4].copy_from_slice(&ino.to_le_bytes());
        img[at + 4..at + 6].copy_from_slice(&rec.to_le_bytes());
        img[at + 6] = name.len() as u8;
        img[at + 7] = ft;
        img[at + 8..at + 8 + name.len()].copy_from_slice(name);
    };
    entry(&mut img, d, 2, 12, b".", 2);
    entry(&mut img, d + 12, 2, 12, b"..", 2);
    entry(&mut img, d + 24, 12, (BS - 24) as u16, b"file", 1);
    img
}

fuzz_target!(|data: &[u8]| {
    let mut img = base();
    if data.is_empty() {
        damage::base_reads(&files(&img), &[(12, 2)]);
    }
    let len = img.len();
    damage::patch(&mut img, data, |at| at * 7 % len);
    damage::extents_inside(&files(&img), (img.len() / BS) as u64);
});
