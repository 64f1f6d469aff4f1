//! Checking the data and hash areas against their parity.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};

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
    /// refuses it unless the hash tree confirms the damage, block by block).
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

/// A repair's corrections from a scan: every covered block with a corrected byte, whole
/// and corrected (so the memory is a block per damaged block, however many of its bytes
/// are bad), and the corrected parity bytes by offset from the start of the parity area.
#[derive(Default)]
pub(crate) struct Fixes {
    pub(crate) blocks: BTreeMap<u64, Vec<u8>>,
    pub(crate) parity: BTreeMap<u64, u8>,
    /// The parity fixes of codewords whose data was whole and whose few bad parity
    /// bytes no other error pattern explains but by a chance under 256^-4 (2 x bad
    /// bytes <= roots - 4): what erasure decoding may start from, where the stored
    /// parity would give every erased byte of the codeword wrong.
    pub(crate) sure_parity: BTreeMap<u64, u8>,
    /// More blocks than the scan was allowed to hold, or more than [`MAX_FIXES`] parity
    /// bytes: not all were kept (the report still counts everything).
    pub(crate) overflow: bool,
}

#[derive(Default)]
pub(crate) struct ScanPart {
    pub(crate) damaged: u64,
    pub(crate) corrected: u64,
    pub(crate) failed: u64,
    pub(crate) failed_rounds: Vec<u64>,
    pub(crate) fixes: Fixes,
    /// Covered blocks holding correctable bytes.
    pub(crate) blocks: BTreeSet<u64>,
    pub(crate) parity_bytes: u64,
}

/// What a repair's scan keeps: at most `limit` blocks, held at once across the threads
/// (past it [`Fixes::overflow`] is set and no more are kept), and only the covered blocks
/// `wanted` names: the tree tells which blocks are right, and a correction to one of
/// those is the decoder gone astray (with few roots, a codeword with one error too many
/// is "corrected" in a random good block, nearly always).
pub(crate) struct Keep<'a> {
    pub(crate) limit: usize,
    pub(crate) wanted: &'a (dyn Fn(u64) -> bool + Sync),
}

/// Decode every codeword that does not match its parity, errors only. With `keep` (for a
/// repair) the corrections themselves are returned too; without, only where they lie is
/// counted, whatever the damage.
pub(crate) fn scan<D, H, F>(
    g: &FecGeometry,
    data: &D,
    hash: &H,
    fec: &F,
    opts: &BuildOptions<'_>,
    keep: Option<Keep<'_>>,
) -> Result<(FecReport, Fixes, Vec<u64>)>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
    F: ReadAt + ?Sized,
{
    check_fec_size(g, fec)?;
    let input = Input { g, data, hash };
    input.check_sizes()?;
    let bs = g.block_size as usize;
    let roots = g.roots as usize;
    let k = g.k();
    let code = Code::new(roots);
    let mut report = FecReport {
        codewords: g.rounds * g.block_size,
        ..Default::default()
    };
    let mut fixes = Fixes::default();
    let held = AtomicUsize::new(0);
    let mut failed_rounds = Vec::new();
    let mut blocks = BTreeSet::new();
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
                    let f = &fresh[b * roots..(b + 1) * roots];
                    if f == p {
                        continue;
                    }
                    part.damaged += 1;
                    let mut delta = [0u8; 32];
                    for (d, (&x, &y)) in delta.iter_mut().zip(f.iter().zip(p)) {
                        *d = x ^ y;
                    }
                    let syndromes = code.syndromes_of_parity_delta(&delta);
                    for (i, s) in cw[..k].iter_mut().enumerate() {
                        *s = batch.symbol(i, r, b);
                    }
                    cw[k..].copy_from_slice(p);
                    let before = cw;
                    let mut new_fixes = Vec::new();
                    let ok = match code.decode_with(&mut cw, &syndromes, &[]) {
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
                        for f in &new_fixes {
                            match f {
                                Fix::Input { block, .. } => {
                                    part.blocks.insert(*block);
                                }
                                Fix::Parity { .. } => part.parity_bytes += 1,
                            }
                        }
                        if let Some(k) = &keep {
                            // Data whole and few bad parity bytes: nothing else explains
                            // them but by a chance under 256^-4.
                            let sure = new_fixes.iter().all(|f| matches!(f, Fix::Parity { .. }))
                                && 2 * new_fixes.len() + 4 <= roots;
                            hold(&mut part.fixes, &new_fixes, sure, |block| {
                                if !(k.wanted)(block) {
                                    return Held::Not;
                                }
                                // Past the limit nothing more is held, in any thread.
                                if held.fetch_add(1, Ordering::Relaxed) >= k.limit {
                                    return Held::Full;
                                }
                                Held::Block(batch.block((block / g.rounds) as usize, r).to_vec())
                            });
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
        |_, _, mut part| {
            report.damaged_codewords += part.damaged;
            report.corrected_symbols += part.corrected;
            report.unrepairable_codewords += part.failed;
            report.parity_bytes += part.parity_bytes;
            failed_rounds.extend(part.failed_rounds);
            blocks.append(&mut part.blocks);
            // Each round is in one part: blocks and parity offsets never meet.
            fixes.overflow |= part.fixes.overflow;
            fixes.blocks.append(&mut part.fixes.blocks);
            fixes.parity.append(&mut part.fixes.parity);
            fixes.sure_parity.append(&mut part.fixes.sure_parity);
            fixes.overflow |= fixes.parity.len() > MAX_FIXES;
            Ok(())
        },
    )?;
    for block in blocks {
        match g.locate(block) {
            Place::Data(d) => report.data_blocks.push(d),
            Place::Hash(h) => report.hash_blocks.push(h),
            Place::Padding => {}
        }
    }
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
    scan(g, data, hash, fec, opts, None).map(|(r, _, _)| r)
}

/// What a block's first correction brings.
enum Held {
    /// The block's content, to correct.
    Block(Vec<u8>),
    /// Nothing: the block is not to be repaired.
    Not,
    /// Nothing: no more blocks may be held.
    Full,
}

/// Add a codeword's corrections to `fixes` (its parity fixes to the sure ones too, if
/// `sure`): a block's first one brings the block (`content(block)`).
fn hold(fixes: &mut Fixes, new: &[Fix], sure: bool, mut content: impl FnMut(u64) -> Held) {
    for f in new {
        match *f {
            Fix::Input {
                block,
                offset,
                value,
            } => {
                let c = match fixes.blocks.entry(block) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => match content(block) {
                        Held::Block(c) => e.insert(c),
                        Held::Not => continue,
                        Held::Full => {
                            fixes.overflow = true;
                            continue;
                        }
                    },
                };
                c[offset as usize] = value;
            }
            Fix::Parity { offset, value } => {
                if fixes.parity.len() < MAX_FIXES {
                    fixes.parity.insert(offset, value);
                    if sure {
                        fixes.sure_parity.insert(offset, value);
                    }
                } else {
                    fixes.overflow = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
    use super::*;
    use crate::{fec_encode, format, FormatOptions, VerityParams};

    /// `blocks` of seeded data, its tree (salt of 32 `salt` bytes) and its parity with
    /// `roots`: (data, hash device, geometry, parity).
    fn encoded(
        blocks: u64,
        salt: u8,
        seed: u64,
        roots: u8,
    ) -> (Vec<u8>, Vec<u8>, FecGeometry, Vec<u8>) {
        let p = VerityParams::builder()
            .data_blocks(blocks)
            .salt(vec![salt; 32])
            .build()
            .unwrap();
        let data = crate::io::seeded(p.data_size() as usize, seed);
        let mut hash = Vec::new();
        let f = format(&p, &data[..], &mut hash, &FormatOptions::default()).unwrap();
        let g = FecGeometry::separate(&p, &f.geometry, roots, hash.len() as u64, 0).unwrap();
        let mut parity = Vec::new();
        fec_encode(&g, &data[..], &hash, &mut parity, &BuildOptions::default()).unwrap();
        (data, hash, g, parity)
    }

    /// More damaged blocks than a repair may hold: verify still counts them all and names
    /// every block; the scan for a repair holds no more than its limit, across its
    /// threads, and says so; within the limit it holds every block, corrected.
    #[test]
    fn verify_counts_more_damage_than_a_repair_holds() {
        let (data, hash, g, mut parity) = encoded(2000, 7, 0x2545_f491_4f6c_dd1d, 8);
        // Four whole blocks in four rounds, and one parity byte.
        let mut bad = data.clone();
        let blocks: Vec<u64> = (0..4).map(|i| 10 + i * (g.rounds + 1)).collect();
        for &b in &blocks {
            for byte in &mut bad[(b * 4096) as usize..((b + 1) * 4096) as usize] {
                *byte = !*byte;
            }
        }
        parity[100] ^= 1;
        let r = fec_verify(&g, &bad[..], &hash, &parity, &BuildOptions::default()).unwrap();
        assert_eq!(r.data_blocks, blocks);
        assert_eq!(r.corrected_symbols, 4 * 4096 + 1);
        assert_eq!(r.unrepairable_codewords, 0);
        for threads in [1usize, 2, 3] {
            let n = std::num::NonZeroUsize::new(threads).unwrap();
            let opts = BuildOptions::default().threads(crate::Threads::Exactly(n));
            let all = |_: u64| true;
            let keep = |limit| {
                Some(Keep {
                    limit,
                    wanted: &all,
                })
            };
            let (report, fixes, _) = scan(&g, &bad[..], &hash, &parity, &opts, keep(3)).unwrap();
            assert_eq!(report, r);
            assert!(
                fixes.overflow && fixes.blocks.len() <= 3,
                "{threads} threads"
            );
            let (_, fixes, _) = scan(&g, &bad[..], &hash, &parity, &opts, keep(4)).unwrap();
            assert!(!fixes.overflow);
            assert_eq!(fixes.blocks.keys().copied().collect::<Vec<_>>(), blocks);
            for (b, content) in &fixes.blocks {
                assert!(content[..] == data[(b * 4096) as usize..((b + 1) * 4096) as usize]);
            }
            assert_eq!(fixes.parity.len(), 1);
        }
    }

    /// Two whole bad blocks in each round with 2 roots: one error per codeword past what
    /// errors-only decoding corrects, which it "corrects" in some good block in nearly
    /// every codeword. Held as they come, those guesses fill a repair's room many times
    /// over; the blocks the tree rejects are all a repair keeps.
    #[test]
    fn a_repairs_scan_keeps_only_the_blocks_the_tree_rejects() {
        let (data, hash, g, parity) = encoded(1500, 9, 0x9e37_79b9_7f4a_7c15, 2);
        let mut bad = data.clone();
        let mut damaged = Vec::new();
        for r in 0..g.rounds {
            for i in [3, 100] {
                let b = i * g.rounds + r;
                damaged.push(b);
                let at = (b * 4096) as usize;
                bad[at..at + 4096].copy_from_slice(&crate::io::seeded(4096, b + 1));
            }
        }
        damaged.sort_unstable();
        let opts = BuildOptions::default();
        let all = |_: u64| true;
        let limit = damaged.len();
        let (_, fixes, _) = scan(
            &g,
            &bad[..],
            &hash,
            &parity,
            &opts,
            Some(Keep {
                limit,
                wanted: &all,
            }),
        )
        .unwrap();
        assert!(
            fixes.overflow,
            "the guesses fit: {} blocks",
            fixes.blocks.len()
        );
        let tree_rejects = |c: u64| damaged.binary_search(&c).is_ok();
        let (_, fixes, _) = scan(
            &g,
            &bad[..],
            &hash,
            &parity,
            &opts,
            Some(Keep {
                limit,
                wanted: &tree_rejects,
            }),
        )
        .unwrap();
        assert!(!fixes.overflow);
        assert!(fixes
            .blocks
            .keys()
            .all(|b| damaged.binary_search(b).is_ok()));
    }
}
