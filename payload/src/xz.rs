//! liblzma's one-call encoder as mksquashfs (squashfs-tools 4.5) calls it for each data
//! and fragment block: `lzma_stream_buffer_encode` with LZMA2 at the default preset, the
//! image's dictionary size, a CRC32 check, and room for one block; with BCJ filters
//! selected, each chain is tried and the smallest output kept (the first of equals).
//! A block comes out as mksquashfs made it only with the same liblzma, so lzma-sys links
//! the system's where pkg-config finds it, as mksquashfs does.
#![allow(unsafe_code)]

use std::ffi::CStr;

use lzma_sys as sys;

/// squashfs's BCJ filter bits, in the order mksquashfs tries them.
const BCJ: [(u32, u64); 6] = [
    (1, sys::LZMA_FILTER_X86),
    (2, sys::LZMA_FILTER_POWERPC),
    (4, sys::LZMA_FILTER_IA64),
    (8, sys::LZMA_FILTER_ARM),
    (16, sys::LZMA_FILTER_ARMTHUMB),
    (32, sys::LZMA_FILTER_SPARC),
];

/// liblzma's version ("5.4.1").
pub(crate) fn version() -> String {
    // SAFETY: takes nothing, returns a pointer to a static string.
    let p = unsafe { sys::lzma_version_string() };
    // SAFETY: that string is NUL-terminated and lives as long as the program.
    let v = unsafe { CStr::from_ptr(p) };
    v.to_string_lossy().into_owned()
}

/// mksquashfs's xz settings, packed into a RECOMPRESS blob's level field: the BCJ filter
/// bits in the low byte, the dictionary size in 4 KiB units above.
pub(crate) fn level_field(dict_size: u32, filters: u32) -> Option<i32> {
    let units = dict_size / 4096;
    (dict_size.is_multiple_of(4096) && units > 0 && filters < 64 && units < 1 << 23)
        .then_some((units << 8 | filters) as i32)
}

/// One compressor with mksquashfs's settings.
pub(crate) struct Xz {
    dict_size: u32,
    /// The filter before LZMA2 in each chain tried (none first).
    chains: Vec<Option<u64>>,
    scratch: Vec<u8>,
}

impl Xz {
    /// From a level field ([`level_field`]).
    pub(crate) fn new(field: i32) -> Option<Xz> {
        let field = u32::try_from(field).ok()?;
        let (units, filters) = (field >> 8, field & 0xff);
        if units == 0 || filters >= 64 {
            return None;
        }
        let mut chains = vec![None];
        chains.extend(
            BCJ.iter()
                .filter(|(bit, _)| filters & bit != 0)
                .map(|&(_, id)| Some(id)),
        );
        Some(Xz {
            dict_size: units.checked_mul(4096)?,
            chains,
            scratch: Vec::new(),
        })
    }

    /// `src` compressed into `out` (cleared first) as mksquashfs does with `room` bytes
    /// of output: `Ok(false)` when no chain fits (mksquashfs then stores the block).
    pub(crate) fn compress(
        &mut self,
        src: &[u8],
        room: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, String> {
        out.clear();
        let mut found = false;
        for &chain in &self.chains {
            // SAFETY: an all-zero lzma_options_lzma is valid (integers and null
            // pointers); lzma_lzma_preset then fills in every field it reads.
            let mut opt: sys::lzma_options_lzma = unsafe { std::mem::zeroed() };
            // SAFETY: `opt` is a valid, writable lzma_options_lzma.
            if unsafe { sys::lzma_lzma_preset(&mut opt, sys::LZMA_PRESET_DEFAULT) } != 0 {
                return Err("liblzma refused its default preset".into());
            }
            opt.dict_size = self.dict_size;
            let lzma2 = sys::lzma_filter {
                id: sys::LZMA_FILTER_LZMA2,
                options: (&raw mut opt).cast(),
            };
            let end = sys::lzma_filter {
                id: sys::LZMA_VLI_UNKNOWN,
                options: std::ptr::null_mut(),
            };
            let mut filters = match chain {
                Some(id) => vec![
                    sys::lzma_filter {
                        id,
                        options: std::ptr::null_mut(),
                    },
                    lzma2,
                    end,
                ],
                None => vec![lzma2, end],
            };
            self.scratch.clear();
            self.scratch.resize(room, 0);
            let mut pos: usize = 0;
            // SAFETY: `filters` ends with LZMA_VLI_UNKNOWN and its options point to `opt`,
            // alive for the call; `src` is readable for its length and `scratch` writable
            // for `room` bytes, which liblzma does not exceed; `pos` receives the length.
            let ret = unsafe {
                sys::lzma_stream_buffer_encode(
                    filters.as_mut_ptr(),
                    sys::LZMA_CHECK_CRC32,
                    std::ptr::null(),
                    src.as_ptr(),
                    src.len(),
                    self.scratch.as_mut_ptr(),
                    &mut pos,
                    room,
                )
            };
            match ret {
                sys::LZMA_OK if pos <= room => {
                    if !found || pos < out.len() {
                        out.clear();
                        out.extend_from_slice(&self.scratch[..pos]);
                        found = true;
                    }
                }
                sys::LZMA_BUF_ERROR => {}
                r => return Err(format!("liblzma error {r}")),
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// Blocks decompress back (lzma-rs reading liblzma's streams); BCJ chains are tried
    /// and the smallest kept; random data that does not fit is refused; bad fields too.
    #[test]
    fn compresses_as_one_xz_stream_and_refuses_what_does_not_fit() {
        assert!(version().starts_with('5'));
        let src = crate::erofs::tests::compressible(3, 100_000);
        for filters in [0, 1, 1 | 8] {
            let mut xz = Xz::new(level_field(128 << 10, filters).unwrap()).unwrap();
            assert_eq!(xz.chains.len(), 1 + filters.count_ones() as usize);
            let mut out = Vec::new();
            assert!(xz.compress(&src, 128 << 10, &mut out).unwrap());
            let mut back = Vec::new();
            lzma_rs::xz_decompress(&mut &out[..], &mut back).unwrap();
            assert!(back == src);
            let mut again = Vec::new();
            xz.compress(&src, 128 << 10, &mut again).unwrap();
            assert!(again == out, "deterministic");
        }
        let noise = keel_testsupport::seeded_bytes(4, 50_000);
        let mut xz = Xz::new(level_field(64 << 10, 0).unwrap()).unwrap();
        let mut out = Vec::new();
        assert!(!xz.compress(&noise, noise.len(), &mut out).unwrap());
        assert!(level_field(1000, 0).is_none() && level_field(4096, 64).is_none());
        assert!(Xz::new(0).is_none() && Xz::new(-1).is_none() && Xz::new(1 << 8 | 64).is_none());
    }
}
