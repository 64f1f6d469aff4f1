//! liblz4, the crate's one lz4: the block decoder (`LZ4_decompress_safe`, as the kernel
//! reads squashfs's lz4 blocks and EROFS's pclusters), and the "fill the destination"
//! compressors as mkfs.erofs calls them for each pcluster: `LZ4_compress_HC_destSize`
//! (lz4hc) and `LZ4_compress_destSize` (lz4). No Rust lz4 compresses as liblz4 does, and
//! an lz4 pcluster is re-created on apply only if its bytes come out exactly as the image
//! builder's did.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};

// Keeps lz4-sys (and the liblz4 it builds) linked in.
use lz4_sys as _;

extern "C" {
    fn LZ4_compress_HC_destSize(
        state: *mut c_void,
        src: *const c_char,
        dst: *mut c_char,
        src_size: *mut c_int,
        dst_capacity: c_int,
        level: c_int,
    ) -> c_int;
    fn LZ4_compress_destSize(
        src: *const c_char,
        dst: *mut c_char,
        src_size: *mut c_int,
        dst_capacity: c_int,
    ) -> c_int;
    fn LZ4_sizeofStateHC() -> c_int;
    fn LZ4_compress_default(
        src: *const c_char,
        dst: *mut c_char,
        size: c_int,
        room: c_int,
    ) -> c_int;
    fn LZ4_compress_HC(
        src: *const c_char,
        dst: *mut c_char,
        size: c_int,
        room: c_int,
        level: c_int,
    ) -> c_int;
    fn LZ4_versionString() -> *const c_char;
    fn LZ4_decompress_safe(
        src: *const c_char,
        dst: *mut c_char,
        compressed_size: c_int,
        dst_capacity: c_int,
    ) -> c_int;
}

/// One lz4 block (`src`, whole) decoded into `dst`: the bytes written, or `None` if it is
/// malformed or decodes to more than `dst` holds.
pub(crate) fn decompress(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let size = c_int::try_from(src.len()).ok()?;
    let room = c_int::try_from(dst.len()).ok()?;
    // SAFETY: `src` holds `size` readable bytes and `dst` `room` writable ones; the safe
    // decoder reads and writes within them whatever the input, and returns a negative
    // value for input that would take it further.
    let n =
        unsafe { LZ4_decompress_safe(src.as_ptr().cast(), dst.as_mut_ptr().cast(), size, room) };
    usize::try_from(n).ok().filter(|&n| n <= dst.len())
}

/// liblz4's version ("1.9.4").
pub(crate) fn version() -> String {
    // SAFETY: takes nothing, returns a pointer to a static string.
    let p = unsafe { LZ4_versionString() };
    // SAFETY: that string is NUL-terminated and lives as long as the program.
    let v = unsafe { CStr::from_ptr(p) };
    v.to_string_lossy().into_owned()
}

/// `src` compressed whole as one lz4 block into `dst` (its length is the room), as
/// mksquashfs compresses a block: `LZ4_compress_default` (level 0) or `LZ4_compress_HC`
/// (1 to 12); the bytes written, or `None` if it does not fit or the level is not one.
pub(crate) fn compress_block(level: i32, src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let size = c_int::try_from(src.len()).ok()?;
    let room = c_int::try_from(dst.len()).ok()?;
    let written = match level {
        // SAFETY: `src` holds `size` readable bytes and `dst` `room` writable ones, which
        // liblz4 does not exceed.
        0 => unsafe {
            LZ4_compress_default(src.as_ptr().cast(), dst.as_mut_ptr().cast(), size, room)
        },
        // SAFETY: as above; lz4hc allocates its own state.
        1..=12 => unsafe {
            LZ4_compress_HC(
                src.as_ptr().cast(),
                dst.as_mut_ptr().cast(),
                size,
                room,
                level,
            )
        },
        _ => return None,
    };
    usize::try_from(written)
        .ok()
        .filter(|&n| n > 0 && n <= dst.len())
}

/// One compressor (level 0: lz4; 1 to 12: lz4hc at that level) with its state.
pub(crate) struct DestSize {
    level: i32,
    /// lz4hc's state, 8-byte aligned as `LZ4_initStreamHC` requires.
    state: Vec<u64>,
}

impl DestSize {
    /// For `level`, if liblz4 has it.
    pub(crate) fn new(level: i32) -> Option<DestSize> {
        if !(0..=12).contains(&level) {
            return None;
        }
        let state = if level == 0 {
            Vec::new()
        } else {
            // SAFETY: a pure function of the library's build.
            let size = unsafe { LZ4_sizeofStateHC() };
            vec![0u64; usize::try_from(size).ok()?.div_ceil(8)]
        };
        Some(DestSize { level, state })
    }

    /// As much of `src` as fits compressed into `dst` (its length is the room): the
    /// bytes of `src` taken and of `dst` written, or `None` if liblz4 fails.
    pub(crate) fn compress(&mut self, src: &[u8], dst: &mut [u8]) -> Option<(usize, usize)> {
        let mut taken = c_int::try_from(src.len()).ok()?;
        let room = c_int::try_from(dst.len()).ok()?;
        let written = if self.level == 0 {
            // SAFETY: `src` holds `taken` readable bytes and `dst` `room` writable ones;
            // liblz4 reads and writes no further and sets `taken` to what it consumed.
            unsafe {
                LZ4_compress_destSize(
                    src.as_ptr().cast(),
                    dst.as_mut_ptr().cast(),
                    &mut taken,
                    room,
                )
            }
        } else {
            // SAFETY: as above; `state` is at least `LZ4_sizeofStateHC()` bytes, aligned
            // to 8, and initialised by the call itself.
            unsafe {
                LZ4_compress_HC_destSize(
                    self.state.as_mut_ptr().cast(),
                    src.as_ptr().cast(),
                    dst.as_mut_ptr().cast(),
                    &mut taken,
                    room,
                    self.level,
                )
            }
        };
        let (taken, written) = (usize::try_from(taken).ok()?, usize::try_from(written).ok()?);
        (written > 0 && written <= dst.len() && taken <= src.len()).then_some((taken, written))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// What is taken decompresses to exactly those bytes, within the room, at
    /// every level; a room too small for anything is a refusal, not a write past it.
    #[test]
    fn takes_what_fits_and_it_decompresses() {
        assert!(version().starts_with("1."));
        let src = crate::testdata::compressible(5, 200_000);
        for level in [0, 1, 9, 12] {
            let mut c = DestSize::new(level).unwrap();
            let mut dst = vec![0u8; 4096];
            let (taken, written) = c.compress(&src, &mut dst).unwrap();
            assert!(
                taken > 4096 && written <= 4096,
                "{level}: {taken} {written}"
            );
            let mut back = vec![0u8; taken];
            assert_eq!(decompress(&dst[..written], &mut back), Some(taken));
            assert!(back == src[..taken], "{level}");
            assert!(c.compress(&src, &mut []).is_none());
        }
        assert!(DestSize::new(13).is_none() && DestSize::new(-1).is_none());
        // Whole blocks: back exactly; noise does not fit a room of its own size.
        for level in [0, 12] {
            let mut dst = vec![0u8; 200_000];
            let n = compress_block(level, &src, &mut dst).unwrap();
            let mut back = vec![0u8; src.len()];
            assert_eq!(decompress(&dst[..n], &mut back), Some(src.len()));
            assert!(back == src);
        }
        let noise = keel_testsupport::seeded_bytes(9, 10_000);
        assert!(compress_block(0, &noise, &mut vec![0u8; 10_000]).is_none());
        assert!(compress_block(13, &src, &mut vec![0u8; 200_000]).is_none());
    }
}
