//! liblzma, the crate's one LZMA: squashfs's xz blocks decoded ([`decompress`]); the raw
//! LZMA2 streams of REPLACE_XZ, CHAIN_XZ and PATCH_XZ, and RECOMPRESS content frames,
//! encoded and decoded with a preset dictionary; and the one-call encoder as mksquashfs (squashfs-tools 4.5) calls it for each data
//! and fragment block: `lzma_stream_buffer_encode` with LZMA2 at the default preset, the
//! image's dictionary size, a CRC32 check, and room for one block; with BCJ filters
//! selected, each chain is tried and the smallest output kept (the first of equals).
//! A block comes out as mksquashfs made it only with an encoder that makes the same bytes:
//! the liblzma built in here (5.8) does what Debian 12's 5.4.1 does, and RECOMPRESS
//! operations name the encoder by what it makes of a probe ([`name`]), not by its version.
#![allow(unsafe_code)]

use std::borrow::Cow;
use std::ffi::CStr;

use liblzma_sys as sys;

/// squashfs's BCJ filter bits, in the order mksquashfs tries them.
const BCJ: [(u32, u64); 6] = [
    (1, sys::LZMA_FILTER_X86),
    (2, sys::LZMA_FILTER_POWERPC),
    (4, sys::LZMA_FILTER_IA64),
    (8, sys::LZMA_FILTER_ARM),
    (16, sys::LZMA_FILTER_ARMTHUMB),
    (32, sys::LZMA_FILTER_SPARC),
];

/// liblzma's version ("5.8.4").
pub(crate) fn version() -> String {
    // SAFETY: takes nothing, returns a pointer to a static string.
    let p = unsafe { sys::lzma_version_string() };
    // SAFETY: that string is NUL-terminated and lives as long as the program.
    let v = unsafe { CStr::from_ptr(p) };
    v.to_string_lossy().into_owned()
}

/// The name RECOMPRESS operations give this encoder: what it makes of a fixed probe with
/// mksquashfs's settings (no filter, BCJ x86 and ARM, two dictionary sizes). liblzma's
/// encoder made the same bytes from 5.4 to 5.8 while its decoder got faster; a version
/// number would make an applier with another build refuse blocks it re-creates exactly.
pub(crate) fn name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut probe = Vec::with_capacity(96 << 10);
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        while probe.len() < 64 << 10 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Words from a small vocabulary, and x86 calls (the BCJ filter's matter).
            probe.extend_from_slice(format!("v{} ", x % 89).as_bytes());
            if x.is_multiple_of(5) {
                probe.push(0xE8);
                probe.extend_from_slice(&((x >> 20) as u32 % 4096).to_le_bytes());
            }
        }
        let mut all = Vec::new();
        for (dict, filters) in [(128 << 10, 0), (128 << 10, 1 | 8), (1 << 20, 1)] {
            let mut out = Vec::new();
            let made = level_field(dict, filters)
                .and_then(Xz::new)
                .map(|mut xz| xz.compress(&probe, probe.len(), &mut out));
            match made {
                Some(Ok(true)) => all.extend_from_slice(&out),
                // Never with these settings; a name no payload has then.
                _ => return format!("xz lzma2 unusable ({})", version()),
            }
        }
        format!(
            "xz lzma2 {}",
            hex::encode(&crate::digest::sha256(&all)[..8])
        )
    })
    .clone()
}

/// Most memory the decoder of a squashfs xz block may take: its dictionary is at most the
/// largest block (1 MiB; mksquashfs refuses a larger one), with room to spare; a stream
/// asking for more is refused rather than allocated.
const BLOCK_MEMLIMIT: u64 = 16 << 20;

/// One .xz stream (a squashfs data, fragment or metadata block) decoded: at most `max`
/// bytes; `None` when it is malformed, needs more than [`BLOCK_MEMLIMIT`], or decodes
/// longer.
pub(crate) fn decompress(src: &[u8], max: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; max];
    let mut memlimit = BLOCK_MEMLIMIT;
    let (mut in_pos, mut out_pos) = (0usize, 0usize);
    // SAFETY: `memlimit` and the positions are valid for writes; `src` is readable and
    // `out` writable for their lengths, which liblzma does not exceed (a stream that
    // decodes longer is LZMA_BUF_ERROR); no allocator (liblzma's default).
    let ret = unsafe {
        sys::lzma_stream_buffer_decode(
            &mut memlimit,
            0,
            std::ptr::null(),
            src.as_ptr(),
            &mut in_pos,
            src.len(),
            out.as_mut_ptr(),
            &mut out_pos,
            out.len(),
        )
    };
    if ret != sys::LZMA_OK || out_pos > max {
        return None;
    }
    out.truncate(out_pos);
    Some(out)
}

/// mksquashfs's xz settings, packed into a RECOMPRESS blob's level field: the BCJ filter
/// bits in the low byte, the dictionary size in 4 KiB units above.
pub(crate) fn level_field(dict_size: u32, filters: u32) -> Option<i32> {
    let units = dict_size / 4096;
    (dict_size.is_multiple_of(4096) && units > 0 && filters < 64 && units < 1 << 23)
        .then_some((units << 8 | filters) as i32)
}

/// The largest dictionary of a squashfs image's xz blocks: its largest block.
const MAX_BLOCK_DICT: u32 = 1 << 20;

/// One compressor with mksquashfs's settings.
pub(crate) struct Xz {
    dict_size: u32,
    /// The filter before LZMA2 in each chain tried (none first).
    chains: Vec<Option<u64>>,
    scratch: Vec<u8>,
}

impl Xz {
    /// From a level field ([`level_field`]). The dictionary is at most a squashfs block
    /// (1 MiB; mksquashfs refuses a larger one): the encoder takes about ten times its
    /// dictionary, and a payload's field may not make an applier take gigabytes.
    pub(crate) fn new(field: i32) -> Option<Xz> {
        let field = u32::try_from(field).ok()?;
        let (units, filters) = (field >> 8, field & 0xff);
        if units == 0 || units > MAX_BLOCK_DICT / 4096 || filters >= 64 {
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

/// Largest dictionary of a REPLACE_XZ or CHAIN_XZ operation: its reference and output
/// (two operations' bytes), rounded up.
pub(crate) const MAX_DICT: u32 = 32 << 20;

/// The filter chain of one raw LZMA2 operation: BCJ x86 first if asked, then LZMA2 at
/// preset 6 with `dict_size` and `preset` as its preset dictionary (tuned further for
/// the `encoder`).
fn raw_chain(
    opt: &mut sys::lzma_options_lzma,
    preset: &[u8],
    x86: bool,
    dict_size: u32,
    encoder: bool,
) -> Result<Vec<sys::lzma_filter>, String> {
    // SAFETY: `opt` is a valid, writable lzma_options_lzma.
    if unsafe { sys::lzma_lzma_preset(opt, 6) } != 0 {
        return Err("liblzma refused preset 6".into());
    }
    opt.dict_size = dict_size;
    if encoder {
        // Choices beyond preset 6, as xz -9e searches (longer matches, deeper match
        // chains), and four literal context bits: code and text predict a byte better
        // from the one before. Decoders need none of them (LZMA2 gives lc/lp/pb in its
        // chunk headers). On the corpus's EROFS pair 27 KB smaller, 3 s slower.
        opt.lc = 4;
        opt.nice_len = 273;
        opt.depth = 512;
    }
    if !preset.is_empty() {
        opt.preset_dict = preset.as_ptr();
        opt.preset_dict_size =
            u32::try_from(preset.len()).map_err(|_| "reference too large".to_string())?;
    }
    let mut chain = Vec::with_capacity(3);
    if x86 {
        chain.push(sys::lzma_filter {
            id: sys::LZMA_FILTER_X86,
            options: std::ptr::null_mut(),
        });
    }
    chain.push(sys::lzma_filter {
        id: sys::LZMA_FILTER_LZMA2,
        options: (opt as *mut sys::lzma_options_lzma).cast(),
    });
    chain.push(sys::lzma_filter {
        id: sys::LZMA_VLI_UNKNOWN,
        options: std::ptr::null_mut(),
    });
    Ok(chain)
}

/// The dictionary an operation with a `reference` and `out` bytes of output needs.
pub(crate) fn dict_size(reference: usize, out: usize) -> u32 {
    let n = reference.saturating_add(out).clamp(4096, MAX_DICT as usize);
    n.next_power_of_two().min(MAX_DICT as usize) as u32
}

/// `data` as a raw LZMA2 stream (after BCJ x86 if `x86`) with `reference` as preset
/// dictionary: what REPLACE_XZ and CHAIN_XZ carry after their header.
pub(crate) fn raw_encode(data: &[u8], reference: &[u8], x86: bool) -> Result<Vec<u8>, String> {
    // SAFETY: an all-zero lzma_options_lzma is valid (integers and null pointers).
    let mut opt: sys::lzma_options_lzma = unsafe { std::mem::zeroed() };
    let chain = raw_chain(
        &mut opt,
        reference,
        x86,
        dict_size(reference.len(), data.len()),
        true,
    )?;
    // SAFETY: takes a size, returns a size.
    let room = unsafe { sys::lzma_stream_buffer_bound(data.len()) };
    let mut out = vec![0u8; room.max(64)];
    let mut pos = 0usize;
    // SAFETY: `chain` ends with LZMA_VLI_UNKNOWN, its options point to `opt`, whose preset
    // dictionary points into `reference`, all alive for the call; `data` is readable and
    // `out` writable for their lengths; `pos` receives the length written.
    let ret = unsafe {
        sys::lzma_raw_buffer_encode(
            chain.as_ptr(),
            std::ptr::null(),
            data.as_ptr(),
            data.len(),
            out.as_mut_ptr(),
            &mut pos,
            out.len(),
        )
    };
    if ret != sys::LZMA_OK || pos > out.len() {
        return Err(format!("liblzma raw encoder error {ret}"));
    }
    out.truncate(pos);
    Ok(out)
}

/// A raw LZMA2 stream decoded to exactly `expected` bytes, with `reference` as preset
/// dictionary and a dictionary of `dict_size` bytes (at most [`MAX_DICT`]). The decoder
/// copies the reference into its dictionary when it starts: an owned one is freed then,
/// before the output is made (a CHAIN's 8 MiB).
pub(crate) fn raw_decode(
    stream: &[u8],
    reference: Cow<'_, [u8]>,
    x86: bool,
    dict_size: u32,
    expected: usize,
) -> Result<Vec<u8>, String> {
    if !(4096..=MAX_DICT).contains(&dict_size) {
        return Err(format!(
            "dictionary size {dict_size}: 4096 to {MAX_DICT} bytes"
        ));
    }
    /// Ends the decoder (frees its dictionary) however the decode returns.
    struct Decoder(sys::lzma_stream);
    impl Drop for Decoder {
        fn drop(&mut self) {
            // SAFETY: a stream that lzma_raw_decoder set up, or all zeros (LZMA_STREAM_INIT),
            // which lzma_end accepts.
            unsafe { sys::lzma_end(&mut self.0) }
        }
    }
    // SAFETY: as in raw_encode.
    let mut opt: sys::lzma_options_lzma = unsafe { std::mem::zeroed() };
    // SAFETY: an all-zero lzma_stream is LZMA_STREAM_INIT (null pointers and zeros).
    let mut dec = Decoder(unsafe { std::mem::zeroed() });
    let chain = raw_chain(&mut opt, &reference, x86, dict_size, false)?;
    // SAFETY: `chain` ends with LZMA_VLI_UNKNOWN and its options point to `opt`, whose
    // preset dictionary points into `reference`, alive for the call (liblzma copies it).
    let ret = unsafe { sys::lzma_raw_decoder(&mut dec.0, chain.as_ptr()) };
    if ret != sys::LZMA_OK {
        return Err(format!("liblzma raw decoder error {ret} at start"));
    }
    drop(reference);
    let mut out = vec![0u8; expected];
    dec.0.next_in = stream.as_ptr();
    dec.0.avail_in = stream.len();
    dec.0.next_out = out.as_mut_ptr();
    dec.0.avail_out = out.len();
    let ret = loop {
        // SAFETY: the stream's pointers and counts describe `stream` (readable) and `out`
        // (writable), both alive across the calls; liblzma moves them forward within.
        let ret = unsafe { sys::lzma_code(&mut dec.0, sys::LZMA_FINISH) };
        // LZMA_OK means progress; a call that can make none says LZMA_BUF_ERROR.
        if ret != sys::LZMA_OK {
            break ret;
        }
    };
    let (in_pos, out_pos) = (stream.len() - dec.0.avail_in, expected - dec.0.avail_out);
    match ret {
        sys::LZMA_STREAM_END if out_pos == expected && in_pos == stream.len() => Ok(out),
        sys::LZMA_STREAM_END => Err(format!(
            "the stream gives {out_pos} bytes from {in_pos} of its {} bytes, expected \
             {expected} from all",
            stream.len()
        )),
        sys::LZMA_BUF_ERROR => Err(format!(
            "the stream is truncated or decodes to more than {expected} bytes"
        )),
        r => Err(format!("liblzma raw decoder error {r} (corrupt stream)")),
    }
}

/// A REPLACE_XZ, CHAIN_XZ or PATCH_XZ blob decoded (the reference is empty for
/// REPLACE_XZ), or a RECOMPRESS operation's content frame in that layout.
pub(crate) fn decode_blob(
    blob: &[u8],
    reference: Cow<'_, [u8]>,
    expected: usize,
    max_dict: u32,
) -> std::result::Result<Vec<u8>, String> {
    let mut c = keel_io::Cursor::new(blob, 0);
    let e = |e: keel_io::CursorError| format!("{} at blob offset {}: truncated", e.field, e.offset);
    let x86 = match c.u8("filter").map_err(e)? {
        0 => false,
        1 => true,
        f => {
            return Err(format!(
                "filter {f} at blob offset 0: 0 (none) or 1 (BCJ x86)"
            ))
        }
    };
    let dict = c.u32("dictionary size").map_err(e)?;
    if dict > max_dict {
        return Err(format!(
            "dictionary size {dict} at blob offset 1: at most {max_dict}"
        ));
    }
    raw_decode(&blob[5..], reference, x86, dict, expected)
}

/// `data` as a REPLACE_XZ / CHAIN_XZ / PATCH_XZ blob (the layout [`decode_blob`] reads):
/// the filter byte, the dictionary size, the raw LZMA2 stream.
pub(crate) fn encode_blob(data: &[u8], reference: &[u8], x86: bool) -> Result<Vec<u8>, String> {
    let stream = raw_encode(data, reference, x86)?;
    let mut blob = Vec::with_capacity(stream.len() + 5);
    blob.push(u8::from(x86));
    blob.extend_from_slice(&dict_size(reference.len(), data.len()).to_le_bytes());
    blob.extend_from_slice(&stream);
    Ok(blob)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// Blocks decompress back; BCJ chains are tried
    /// and the smallest kept; random data that does not fit is refused; bad fields too.
    #[test]
    fn compresses_as_one_xz_stream_and_refuses_what_does_not_fit() {
        assert!(version().starts_with('5'));
        let src = crate::testdata::compressible(3, 100_000);
        for filters in [0, 1, 1 | 8] {
            let mut xz = Xz::new(level_field(128 << 10, filters).unwrap()).unwrap();
            assert_eq!(xz.chains.len(), 1 + filters.count_ones() as usize);
            let mut out = Vec::new();
            assert!(xz.compress(&src, 128 << 10, &mut out).unwrap());
            let back = decompress(&out, src.len()).unwrap();
            assert!(back == src);
            let mut again = Vec::new();
            xz.compress(&src, 128 << 10, &mut again).unwrap();
            assert!(again == out, "deterministic");
        }
        // A dictionary larger than a squashfs block is refused, not allocated.
        assert!(Xz::new(level_field(1 << 20, 1).unwrap()).is_some());
        assert!(Xz::new(level_field((1 << 20) + 4096, 1).unwrap()).is_none());
        assert!(Xz::new(level_field(1536 << 20, 0).unwrap()).is_none());
        let noise = keel_testsupport::seeded_bytes(4, 50_000);
        let mut xz = Xz::new(level_field(64 << 10, 0).unwrap()).unwrap();
        let mut out = Vec::new();
        assert!(!xz.compress(&noise, noise.len(), &mut out).unwrap());
        assert!(level_field(1000, 0).is_none() && level_field(4096, 64).is_none());
        assert!(Xz::new(0).is_none() && Xz::new(-1).is_none() && Xz::new(1 << 8 | 64).is_none());
    }

    /// Raw LZMA2 streams decode back with and without BCJ x86 and a preset dictionary;
    /// the dictionary is what makes a chained stream small; a stream decoded with
    /// another dictionary, length or filter is refused or differs, never a panic.
    #[test]
    fn raw_streams_round_trip_with_a_preset_dictionary() {
        let reference = crate::testdata::compressible(5, 200_000);
        let mut data = reference[50_000..150_000].to_vec();
        data.extend_from_slice(&crate::testdata::compressible(6, 20_000));
        for x86 in [false, true] {
            for r in [&[][..], &reference[..]] {
                let s = raw_encode(&data, r, x86).unwrap();
                let dict = dict_size(r.len(), data.len());
                assert!(dict.is_power_of_two() && dict as usize >= r.len() + data.len());
                assert!(raw_decode(&s, r.into(), x86, dict, data.len()).unwrap() == data);
                assert!(raw_decode(&s, r.into(), x86, dict, data.len() - 1).is_err());
                assert!(raw_decode(&s, r.into(), x86, dict, data.len() + 1).is_err());
                assert!(raw_decode(&s[..s.len() - 3], r.into(), x86, dict, data.len()).is_err());
                assert!(raw_decode(&s, r.into(), x86, MAX_DICT * 2, data.len()).is_err());
            }
        }
        let chained = raw_encode(&data, &reference, false).unwrap();
        let alone = raw_encode(&data, &[], false).unwrap();
        assert!(
            chained.len() * 3 < alone.len(),
            "{} vs {}",
            chained.len(),
            alone.len()
        );
        // Decoded against zeros instead of its reference: not the data.
        let zeros = vec![0u8; reference.len()];
        let dict = dict_size(reference.len(), data.len());
        assert!(
            raw_decode(&chained, zeros[..].into(), false, dict, data.len())
                .map_or(true, |d| d != data)
        );
        assert_eq!(dict_size(0, 10), 4096);
        assert_eq!(dict_size(usize::MAX / 2, 10), MAX_DICT);
    }
}
