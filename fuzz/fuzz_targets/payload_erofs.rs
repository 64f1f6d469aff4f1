//! The generator's EROFS reader on damaged images: a real (tiny, hand-made) EROFS layout
//! with the fuzzer's bytes written over it. Never a panic; every extent it reports lies
//! inside the image.
#![no_main]

use keel_payload::erofs::files;
use libfuzzer_sys::fuzz_target;

const BS: usize = 4096;

/// A minimal EROFS: superblock (4 KiB blocks, metadata from block 1), a root directory
/// whose entries are inline beside its inode, and one flat file of two blocks.
fn base() -> Vec<u8> {
    let mut img = vec![0u8; 8 * BS];
    let sb = 1024;
    img[sb..sb + 4].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
    img[sb + 12] = 12; // 4 KiB blocks
    img[sb + 40..sb + 44].copy_from_slice(&1u32.to_le_bytes()); // meta_blkaddr
    let inode = |img: &mut Vec<u8>, nid: usize, format: u16, mode: u16, size: u32, u: u32| {
        let at = BS + nid * 32;
        img[at..at + 2].copy_from_slice(&format.to_le_bytes());
        img[at + 4..at + 6].copy_from_slice(&mode.to_le_bytes());
        img[at + 8..at + 12].copy_from_slice(&size.to_le_bytes());
        img[at + 16..at + 20].copy_from_slice(&u.to_le_bytes());
    };
    // Root (nid 0): flat inline, its 43 bytes of entries right after the inode.
    inode(&mut img, 0, 2 << 1, 0x41ed, 43, 0);
    let d = BS + 32;
    let entry = |img: &mut Vec<u8>, i: usize, nid: u64, nameoff: u16, ft: u8| {
        let at = d + i * 12;
        img[at..at + 8].copy_from_slice(&nid.to_le_bytes());
        img[at + 8..at + 10].copy_from_slice(&nameoff.to_le_bytes());
        img[at + 10] = ft;
    };
    entry(&mut img, 0, 0, 36, 2);
    entry(&mut img, 1, 0, 37, 2);
    entry(&mut img, 2, 4, 39, 1);
    img[d + 36..d + 43].copy_from_slice(b"...file");
    // The file (nid 4): flat plain, blocks 3 and 4.
    inode(&mut img, 4, 0, 0x81a4, 2 * BS as u32, 3);
    img
}

fuzz_target!(|data: &[u8]| {
    let mut img = base();
    if data.is_empty() {
        // The undamaged base is read right, or the fuzzing would prove little.
        let f = files(&img);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].path.as_str(), f[0].size, f[0].extents.clone()),
            ("/file", 8192, vec![(3, 2)])
        );
    }
    // Pairs of (offset, byte) patches, so damage lands in the structures.
    for p in data.chunks_exact(3) {
        let at = (usize::from(p[0]) << 8 | usize::from(p[1])) % (2 * BS);
        img[at] = p[2];
    }
    let blocks = (img.len() / BS) as u64;
    for f in files(&img) {
        for &(start, len) in &f.extents {
            assert!(
                start + len <= blocks,
                "{} extent {start}+{len} outside",
                f.path
            );
        }
    }
});
