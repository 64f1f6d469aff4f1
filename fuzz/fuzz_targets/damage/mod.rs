//! What the filesystem readers' fuzz targets share: the fuzzer's bytes as damage to a
//! small hand-made image, and the checks on what a reader reports of it.
#![allow(dead_code)] // each target uses its part

use keel_payload::ext4::File;

/// Write the fuzzer's triples over `img`: the first two bytes of each pick the offset
/// through `place` (so that damage lands in the structures, not the data), the third is
/// written there.
pub fn patch(img: &mut [u8], data: &[u8], place: impl Fn(usize) -> usize) {
    for p in data.chunks_exact(3) {
        let at = place(usize::from(p[0]) << 8 | usize::from(p[1]));
        img[at] = p[2];
    }
}

/// The undamaged base is read right, or the fuzzing would prove little: one file,
/// `/file` of 8 KiB at `extents`.
pub fn base_reads(files: &[File], extents: &[(u64, u64)]) {
    assert_eq!(files.len(), 1);
    let f = &files[0];
    assert_eq!(
        (f.path.as_str(), f.size, &f.extents[..]),
        ("/file", 8192, extents)
    );
}

/// Every extent a reader reports lies inside the image's `blocks`.
pub fn extents_inside(files: &[File], blocks: u64) {
    for f in files {
        for &(start, len) in &f.extents {
            assert!(
                start + len <= blocks,
                "{} extent {start}+{len} outside",
                f.path
            );
        }
    }
}
