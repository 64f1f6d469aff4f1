//! Forward error correction for dm-verity: Reed-Solomon parity byte-identical to
//! `veritysetup format --fec-device --fec-roots N`, verification, and repair of data and
//! hash blocks, with the hash tree as the judge of every repair.
//!
//! # Layout (cryptsetup `lib/verity/verity_fec.c`, the kernel's `dm-verity-fec.c`)
//!
//! The covered input is the data area (`data_blocks` blocks of the data device) followed by
//! the hash area: from the tree's first block to the end of the hash device, or to the FEC
//! offset when the parity lives on the hash device. Data and hash block size must be equal.
//! With `k = 255 - roots`, `blocks` covered blocks and `rounds = ceil(blocks / k)`, the
//! codeword for round `n` and byte `b` takes symbol `i` from byte `b` of covered block
//! `i * rounds + n` (zero past the end), so the blocks of one codeword lie far apart and a
//! run of damaged blocks costs each codeword at most one symbol. The parity area holds, for
//! each round and each byte of the block, `roots` parity bytes: `rounds * roots * block`
//! bytes in all. The code is RS(255, k) over GF(2^8) with polynomial 0x11d and first root
//! alpha^0 ([`crate::fec::rs`]).
//!
//! # Speed
//!
//! cryptsetup runs the encoder's LFSR byte by byte after gathering each codeword from 253
//! blocks (about 30 MB/s). Keel reads each round's blocks in large runs (the blocks of
//! consecutive rounds are adjacent), computes every parity byte plane as a sum of whole
//! blocks multiplied by constants with GFNI or AVX2 ([`crate::fec::gfmul`]), and splits rounds
//! between cores.
//!
//! # Repair
//!
//! Errors-only decoding corrects up to `roots / 2` bad bytes per codeword, but past that a
//! decoder can land on a different valid codeword. So [`fec_repair`] never trusts FEC
//! alone: every block it would change must then match the hash tree under the trusted
//! root. Blocks the tree still rejects become erasures (known positions), which RS corrects
//! up to `roots` per codeword, and the check repeats level by level; what the tree never
//! accepts is reported unrepairable and left as it was.
//!
//! # Android
//!
//! Android's `fec` tool writes the same parity (4 KiB blocks) followed by a 4 KiB block
//! holding a 60-byte [`AndroidFecHeader`] at its start and again at its end.

mod android;
mod encode;
mod geometry;
pub(crate) mod gfmul;
mod repair;
pub(crate) mod rs;
mod verify;

pub use android::{android_fec_header, AndroidFecHeader};
pub use encode::fec_encode;
pub(crate) use encode::{code_and_syndromes, for_each_batch, Batch};
pub use geometry::FecGeometry;
pub(crate) use geometry::{check_fec_size, Input, Place};
pub use repair::{fec_repair, RepairReport, RepairTarget};
pub use verify::{fec_verify, FecReport};
pub(crate) use verify::{scan, Keep};

/// Fewest parity bytes per codeword veritysetup accepts (RS(255, 253)).
pub const FEC_MIN_ROOTS: u8 = 2;
/// Most parity bytes per codeword veritysetup accepts (RS(255, 231)).
pub const FEC_MAX_ROOTS: u8 = 24;
/// veritysetup's default `--fec-roots`.
pub const FEC_DEFAULT_ROOTS: u8 = 2;

/// Covered input each worker reads per unit of work.
const BATCH_INPUT_BYTES: u64 = 8 << 20;
/// Most corrected parity bytes a repair's scan holds in memory.
const MAX_FIXES: usize = 4 << 20;
/// Most repaired blocks held in memory (by a repair's scan, and after it) before they are
/// checked and written.
const MAX_REPAIR_BYTES: u64 = 64 << 20;
