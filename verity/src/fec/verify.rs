//! Checking the data and hash areas against their parity.

use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::io::ReadAt;
use crate::tree::BuildOptions;

use super::rs::{Code, Decoded, NN};
use super::*;

/// What a parity check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FecReport {
    /// Codewords checked.
    pub codewords: u64,
    /// Codewords that were not valid.
    pub damaged_codewords: u64,
    /// Bytes errors-only decoding can correct: the count `veritysetup verify --fec-device`
    /// reports as "repairable errors".
    pub corrected_symbols: u64,
    /// Codewords with more errors than the parity can locate.
    pub unrepairable_codewords: u64,
    /// Data blocks holding correctable bytes.
    pub data_blocks: Vec<u64>,
    /// Hash-device blocks (numbered in blocks) holding correctable bytes.
    pub hash_blocks: Vec<u64>,
    /// Correctable bytes in the parity itself.
    pub parity_bytes: u64,
}

impl FecReport {
    /// True when every codeword was valid.
    pub fn is_clean(&self) -> bool {
        self.damaged_codewords == 0
    }

    /// True when more than half of the codewords are damaged: more often a parity made
    /// with other roots or at another offset than a damaged one ([`crate::fec_repair`]
    /// refuses it).
    pub fn mostly_damaged(&self) -> bool {
        self.damaged_codewords.saturating_mul(2) > self.codewords
    }
}

/// One correction found by a scan.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fix {
    /// Byte `offset` of covered block `block`.
    Input { block: u64, offset: u32, value: u8 },
    /// Byte at `offset` from the start of the parity area.
    Parity { offset: u64, value: u8 },
}

#[derive(Default)]
pub(crate) struct ScanPart {
    pub(crate) damaged: u64,
    pub(crate) corrected: u64,
    pub(crate) failed: u64,
    pub(crate) failed_rounds: Vec<u64>,
    pub(crate) fixes: Vec<Fix>,
}

/// Decode every codeword that does not match its parity, errors only.
pub(crate) fn scan<D, H, F>(
    g: &FecGeometry,
    data: &D,
    hash: &H,
    fec: &F,
    opts: &BuildOptions<'_>,
) -> Result<(FecReport, Vec<Fix>, Vec<u64>)>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
    F: ReadAt + ?Sized,
{
    check_fec_size(g, fec)?;
    let input = Input { g, data, hash };
    let bs = g.block_size as usize;
    let roots = g.roots as usize;
    let k = g.k();
    let code = Code::new(roots);
    let mut report = FecReport {
        codewords: g.rounds * g.block_size,
        ..Default::default()
    };
    let mut fixes = Vec::new();
    let mut failed_rounds = Vec::new();
    for_each_batch(
        g,
        opts,
        |batch, r0, nr| {
            batch.load(&input, r0, nr)?;
            let mut stored = vec![0u8; nr as usize * bs * roots];
            let off = g.fec_offset + r0 * (bs * roots) as u64;
            fec.read_exact_at(&mut stored, off)
                .map_err(|e| Error::io(format!("reading parity at FEC device byte {off}"), e))?;
            let mut fresh = vec![0u8; bs * roots];
            let mut part = ScanPart::default();
            let mut cw = [0u8; NN];
            for r in 0..nr as usize {
                batch.encode_round(r, &mut fresh)?;
                let have = &stored[r * bs * roots..(r + 1) * bs * roots];
                if fresh == have {
                    continue;
                }
                let round = r0 + r as u64;
                for b in 0..bs {
                    let p = &have[b * roots..(b + 1) * roots];
                    if fresh[b * roots..(b + 1) * roots] == *p {
                        continue;
                    }
                    part.damaged += 1;
                    for (i, s) in cw[..k].iter_mut().enumerate() {
                        *s = batch.symbol(i, r, b);
                    }
                    cw[k..].copy_from_slice(p);
                    let before = cw;
                    let mut new_fixes = Vec::new();
                    let ok = match code.decode(&mut cw, &[]) {
                        Decoded::Corrected(_) => {
                            let mut ok = true;
                            for (pos, (&a, &bb)) in cw.iter().zip(&before).enumerate() {
                                if a == bb {
                                    continue;
                                }
                                if pos >= k {
                                    let offset = g.parity_offset(round, b, pos - k);
                                    new_fixes.push(Fix::Parity { offset, value: a });
                                    continue;
                                }
                                let block = pos as u64 * g.rounds + round;
                                if g.locate(block) == Place::Padding {
                                    // The zeros past the end are not stored, so they
                                    // cannot be wrong: the decoder went astray.
                                    ok = false;
                                    break;
                                }
                                new_fixes.push(Fix::Input {
                                    block,
                                    offset: b as u32,
                                    value: a,
                                });
                            }
                            ok
                        }
                        Decoded::Clean | Decoded::Failed => false,
                    };
                    if ok {
                        part.corrected += new_fixes.len() as u64;
                        if part.fixes.len() + new_fixes.len() <= MAX_FIXES {
                            part.fixes.extend(new_fixes);
                        }
                    } else {
                        part.failed += 1;
                        if part.failed_rounds.last() != Some(&round) {
                            part.failed_rounds.push(round);
                        }
                    }
                }
            }
            Ok(part)
        },
        |_, _, part| {
            report.damaged_codewords += part.damaged;
            report.corrected_symbols += part.corrected;
            report.unrepairable_codewords += part.failed;
            failed_rounds.extend(part.failed_rounds);
            if fixes.len() + part.fixes.len() > MAX_FIXES {
                return Err(Error::param(
                    "fec",
                    format!("more than {MAX_FIXES} damaged bytes; too much damage to hold"),
                ));
            }
            fixes.extend(part.fixes);
            Ok(())
        },
    )?;
    let mut data_blocks = BTreeSet::new();
    let mut hash_blocks = BTreeSet::new();
    for f in &fixes {
        match f {
            Fix::Input { block, .. } => match g.locate(*block) {
                Place::Data(d) => {
                    data_blocks.insert(d);
                }
                Place::Hash(h) => {
                    hash_blocks.insert(h);
                }
                Place::Padding => {}
            },
            Fix::Parity { .. } => report.parity_bytes += 1,
        }
    }
    report.data_blocks = data_blocks.into_iter().collect();
    report.hash_blocks = hash_blocks.into_iter().collect();
    Ok((report, fixes, failed_rounds))
}

/// Check the data and hash areas against their parity, as `veritysetup verify
/// --fec-device` does: which codewords are damaged, how many bytes FEC could correct, in
/// which blocks, and how many codewords are beyond repair. Nothing is written.
///
/// FEC alone cannot tell a correct repair from a decoder landing on another codeword when
/// the damage exceeds `roots / 2` bytes per codeword; [`fec_repair`] settles that with the
/// hash tree.
pub fn fec_verify<D, H, F>(
    g: &FecGeometry,
    data: &D,
    hash: &H,
    fec: &F,
    opts: &BuildOptions<'_>,
) -> Result<FecReport>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
    F: ReadAt + ?Sized,
{
    scan(g, data, hash, fec, opts).map(|(r, _, _)| r)
}
