//! The generator's EROFS reader on damaged images: a real (tiny, hand-made) EROFS layout
//! with the fuzzer's bytes written over it. Never a panic; every extent and pcluster it
//! reports lies inside the image, and compressed content is whole or refused.
#![no_main]

use keel_payload::erofs::{compressed_files, content, files};
use libfuzzer_sys::fuzz_target;

mod damage;

const BS: usize = 4096;

/// A minimal EROFS: superblock (4 KiB blocks, metadata from block 1, lz4 0PADDING), a
/// root directory whose entries are inline beside its inode, one flat file of two blocks
/// and one lz4-compressed file (a compacted cluster map, one pcluster in block 5).
fn base() -> Vec<u8> {
    let mut img = vec![0u8; 8 * BS];
    let sb = 1024;
    img[sb..sb + 4].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
    img[sb + 12] = 12; // 4 KiB blocks
    img[sb + 40..sb + 44].copy_from_slice(&1u32.to_le_bytes()); // meta_blkaddr
    img[sb + 80] = 1; // feature_incompat: lz4 0PADDING
    let inode = |img: &mut Vec<u8>, nid: usize, format: u16, mode: u16, size: u32, u: u32| {
        let at = BS + nid * 32;
        img[at..at + 2].copy_from_slice(&format.to_le_bytes());
        img[at + 4..at + 6].copy_from_slice(&mode.to_le_bytes());
        img[at + 8..at + 12].copy_from_slice(&size.to_le_bytes());
        img[at + 16..at + 20].copy_from_slice(&u.to_le_bytes());
    };
    // Root (nid 0): flat inline, its 56 bytes of entries right after the inode.
    inode(&mut img, 0, 2 << 1, 0x41ed, 56, 0);
    let d = BS + 32;
    let entry = |img: &mut Vec<u8>, i: usize, nid: u64, nameoff: u16, ft: u8| {
        let at = d + i * 12;
        img[at..at + 8].copy_from_slice(&nid.to_le_bytes());
        img[at + 8..at + 10].copy_from_slice(&nameoff.to_le_bytes());
        img[at + 10] = ft;
    };
    entry(&mut img, 0, 0, 48, 2);
    entry(&mut img, 1, 0, 49, 2);
    entry(&mut img, 2, 4, 51, 1);
    entry(&mut img, 3, 6, 55, 1);
    img[d + 48..d + 56].copy_from_slice(b"...filez");
    // The file (nid 4): flat plain, blocks 3 and 4.
    inode(&mut img, 4, 0, 0x81a4, 2 * BS as u32, 3);
    // The compressed file (nid 6): 6000 bytes of 'a', compacted map (advise 2B) right
    // after the inode: one 4-byte pack, a head at 0 then a non-head, base block 4 (the
    // head's pcluster is the next block).
    inode(&mut img, 6, 3 << 1, 0x81a4, 6000, 1);
    let map = BS + 6 * 32 + 32;
    img[map + 4] = 1;
    let pack = map + 8;
    img[pack..pack + 2].copy_from_slice(&(1u16 << 12).to_le_bytes());
    img[pack + 2..pack + 4].copy_from_slice(&(2u16 << 12 | 1).to_le_bytes());
    img[pack + 4..pack + 8].copy_from_slice(&4u32.to_le_bytes());
    // lz4: 'a', a match of 5994 at distance 1, five literal 'a's; at the block's end.
    let mut lz = vec![0x1f, b'a', 1, 0];
    lz.extend(std::iter::repeat_n(255u8, 23));
    lz.push(110);
    lz.extend_from_slice(b"\x50aaaaa");
    img[6 * BS - lz.len()..6 * BS].copy_from_slice(&lz);
    img
}

fuzz_target!(|data: &[u8]| {
    let mut img = base();
    if data.is_empty() {
        // The undamaged base is read right, or the fuzzing would prove little.
        damage::base_reads(&files(&img), &[(3, 2)]);
        let z = compressed_files(&img);
        assert_eq!(z.len(), 1);
        assert_eq!((z[0].path.as_str(), z[0].blocks()), ("/z", Some((5, 1))));
        assert!(content(&img, &z[0], 1 << 20).unwrap() == vec![b'a'; 6000]);
    }
    // The superblock, the metadata block and the pcluster's block.
    damage::patch(&mut img, data, |at| {
        let at = at % (3 * BS);
        if at >= 2 * BS {
            at + 3 * BS
        } else {
            at
        }
    });
    let blocks = (img.len() / BS) as u64;
    damage::extents_inside(&files(&img), blocks);
    for f in compressed_files(&img) {
        for c in &f.clusters {
            assert!(c.block < blocks, "{} pcluster {} outside", f.path, c.block);
        }
        if let Some(got) = content(&img, &f, 1 << 20) {
            assert_eq!(got.len() as u64, f.size, "{}", f.path);
        }
    }
});
