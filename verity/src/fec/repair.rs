//! Repairing data, hash and parity with the tree as the judge.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::geometry::TreeGeometry;
use crate::io::{ReadAt, WriteAt};
use crate::params::VerityParams;
use crate::tree::BuildOptions;
use crate::verify::{find_damage, in_runs};

use super::gfmul::Kernel;
use super::rs::{Code, Decoded, NN};
use super::*;

/// What [`fec_repair`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// The parity check before repair.
    pub scan: FecReport,
    /// Data blocks rewritten, each now matching the tree.
    pub repaired_data_blocks: Vec<u64>,
    /// Hash-device blocks rewritten, each now matching the tree.
    pub repaired_hash_blocks: Vec<u64>,
    /// Parity bytes rewritten.
    pub repaired_parity_bytes: u64,
    /// Data blocks that still do not match the tree (left as they were).
    pub unrepairable_data_blocks: Vec<u64>,
    /// Hash-device blocks that still do not match the tree (left as they were).
    pub unrepairable_hash_blocks: Vec<u64>,
    /// Blocks that could not be checked because a hash block above them stayed damaged.
    pub unverifiable_blocks: u64,
    /// Covered hash-device blocks outside the tree (the rest of a separate hash device,
    /// or the gap before parity on the same device) that the parity says differ. No tree
    /// can check them, so they are left as they were, and the parity is not re-encoded
    /// over them.
    pub unchecked_hash_blocks: Vec<u64>,
}

impl RepairReport {
    /// True when the devices now verify against the root hash.
    pub fn is_complete(&self) -> bool {
        self.unrepairable_data_blocks.is_empty()
            && self.unrepairable_hash_blocks.is_empty()
            && self.unverifiable_blocks == 0
    }
}

/// A device seen with the repairs so far applied: device blocks `first..first + count`
/// are covered blocks `covered_first..`, looked up in the repairs by covered number.
pub(crate) struct Patched<'a, T: ?Sized> {
    pub(crate) inner: &'a T,
    pub(crate) blocks: &'a BTreeMap<u64, Vec<u8>>,
    pub(crate) bs: u64,
    pub(crate) first: u64,
    pub(crate) count: u64,
    pub(crate) covered_first: u64,
}

impl<T: ReadAt + ?Sized> ReadAt for Patched<'_, T> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_exact_at(buf, offset)?;
        let end = offset + buf.len() as u64;
        let lo = (offset / self.bs).max(self.first);
        let hi = end.div_ceil(self.bs).min(self.first + self.count);
        if lo >= hi {
            return Ok(());
        }
        let to_covered = |d: u64| d - self.first + self.covered_first;
        for (&c, content) in self.blocks.range(to_covered(lo)..to_covered(hi)) {
            let bstart = (c - self.covered_first + self.first) * self.bs;
            let from = offset.max(bstart);
            let to = end.min(bstart + self.bs);
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&content[(from - bstart) as usize..(to - bstart) as usize]);
            }
        }
        Ok(())
    }
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
}

/// The dm-verity side of a repair: what the corrected devices must hash to.
#[derive(Clone, Copy, Debug)]
pub struct RepairTarget<'a> {
    /// The verity parameters.
    pub params: &'a VerityParams,
    /// The tree's layout on the hash device.
    pub tree: &'a TreeGeometry,
    /// The trusted root hash.
    pub root: &'a [u8],
}

/// Repair damaged data and hash blocks in place with the parity, and damaged parity bytes
/// with the data: every block is written only once the whole tree above it verifies
/// against `target.root`, so a repair is never wrong; what cannot be repaired is reported
/// and left untouched.
///
/// First each damaged codeword is decoded errors-only (up to roots / 2 bytes). Blocks the
/// tree still rejects are then treated as erasures, whose positions are known, which
/// corrects up to `roots` blocks per round; this repeats as repaired hash blocks make the
/// blocks below them checkable. To repair into a copy, copy the devices first and pass the
/// copies. When data, hash or parity share a file, pass a handle per role.
///
/// Memory: the tree, the repaired blocks (at most 64 MiB; more damage is refused with an
/// error before anything is written) and one round of blocks while erasure decoding.
///
/// Cancellation through `opts.progress` is honoured during the parity scan and once more
/// before the first write: a cancelled repair has written nothing.
pub fn fec_repair<D, H, F>(
    g: &FecGeometry,
    target: &RepairTarget<'_>,
    data: &mut D,
    hash: &mut H,
    fec: &mut F,
    opts: &BuildOptions<'_>,
) -> Result<RepairReport>
where
    D: ReadAt + WriteAt + ?Sized,
    H: ReadAt + WriteAt + ?Sized,
    F: ReadAt + WriteAt + ?Sized,
{
    check_target(g, target)?;
    // The blocks to repair: those the tree rejects or cannot vouch for, and hash-area
    // blocks outside the tree (never written, but reported).
    let before = judge(g, target, &*data, &*hash, &BTreeMap::new(), opts)?;
    let verdict = Verdict::new(&before, target);
    let wanted = |c: u64| match g.locate(c) {
        Place::Data(d) => verdict.data_unsure(d),
        Place::Hash(h) => verdict.outside_tree(h) || verdict.hash_unsure(h),
        Place::Padding => false,
    };
    let keep = Keep {
        limit: (MAX_REPAIR_BYTES / g.block_size) as usize,
        wanted: &wanted,
    };
    let (scan_report, fixes, failed_rounds) = scan(g, &*data, &*hash, &*fec, opts, Some(keep))?;
    // Damage this wide is a parity made with other roots or at another offset more often
    // than a lost one, unless the tree confirms it: re-encoding "damaged" rounds would
    // overwrite a good parity with one of the wrong shape. Nothing is written then.
    let wrong_shape = || {
        Error::param(
            "fec",
            format!(
                "the parity disagrees with the data and the tree in {} of {} codewords, \
                 where the tree finds far less damage: it was made with other roots or at \
                 another offset (nothing was written; if the parity is lost, format it \
                 anew)",
                scan_report.damaged_codewords, scan_report.codewords
            ),
        )
    };
    // Wide damage that is too much to hold is more likely that too.
    let or_wrong_shape = |found: Error| match scan_report.mostly_damaged() {
        true => wrong_shape(),
        false => found,
    };
    let input = Input {
        g,
        data: &*data,
        hash: &*hash,
    };
    if fixes.overflow {
        return Err(or_wrong_shape(too_much_damage()));
    }
    let (mut blocks, mut parity) = (fixes.blocks, fixes.parity);
    let sure = fixes.sure_parity;
    let damage = settle(
        g,
        target,
        &input,
        &*fec,
        &mut blocks,
        &mut parity,
        &sure,
        opts,
    )
    .map_err(or_wrong_shape)?;
    if scan_report.mostly_damaged() && !tree_confirms(g, &input, &blocks, &damage, &scan_report)? {
        return Err(wrong_shape());
    }
    let mut report = RepairReport {
        scan: scan_report,
        ..Default::default()
    };
    if opts.progress.is_some_and(|p| p.cancelled()) {
        return Err(Error::Cancelled);
    }
    let all_checked = write_accepted(g, target, data, hash, &blocks, &damage, &mut report)?;
    if all_checked {
        // With data and tree whole and checked, the parity is what they encode to: the
        // rounds where decoding touched the parity are encoded afresh rather than trusting
        // the decoder's parity bytes.
        let bs = g.block_size;
        let mut rounds: BTreeSet<u64> = parity.keys().map(|o| o / (bs * g.roots as u64)).collect();
        rounds.extend(&failed_rounds);
        let input = Input {
            g,
            data: &*data,
            hash: &*hash,
        };
        for (off, value) in fresh_parity(g, &input, &*fec, &rounds)? {
            fec.write_all_at(&[value], off)
                .map_err(|e| Error::io(format!("writing FEC device byte {off}"), e))?;
            report.repaired_parity_bytes += 1;
        }
    }
    data.sync()
        .map_err(|e| Error::io("syncing the data device", e))?;
    hash.sync()
        .map_err(|e| Error::io("syncing the hash device", e))?;
    fec.sync()
        .map_err(|e| Error::io("syncing the FEC device", e))?;
    report.unverifiable_blocks = damage.unknown_count();
    report.unrepairable_data_blocks = damage.bad_data;
    report.unrepairable_hash_blocks = damage.bad_hash;
    Ok(report)
}

/// Whether the damage the tree confirms covers the codewords the parity disagrees with, all
/// but half of them at most: rounds holding a block repaired to new content the tree
/// accepts, a block it rejects, or one it cannot check. A parity made with other roots or
/// at another offset disagrees almost everywhere while the tree finds the data whole;
/// a device damaged in most rounds (a long run of bad blocks touches every round) is
/// confirmed block by block.
fn tree_confirms<D, H>(
    g: &FecGeometry,
    input: &Input<'_, D, H>,
    blocks: &BTreeMap<u64, Vec<u8>>,
    damage: &crate::verify::Damage,
    scan: &FecReport,
) -> Result<bool>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
{
    let bs = g.block_size;
    let first_hash = g.hash_area_offset / bs;
    let mut rounds = BTreeSet::new();
    let mut add_run = |covered: std::ops::Range<u64>| {
        if covered.end - covered.start >= g.rounds {
            rounds.extend(0..g.rounds);
        } else {
            rounds.extend(covered.map(|c| c % g.rounds));
        }
    };
    let mut stored = vec![0u8; bs as usize];
    for (&c, content) in blocks {
        input.read(c, &mut stored)?;
        if stored != *content {
            add_run(c..c + 1);
        }
    }
    for &d in &damage.bad_data {
        add_run(d..d + 1);
    }
    for &h in &damage.bad_hash {
        let c = h.saturating_sub(first_hash) + g.data_blocks;
        add_run(c..c + 1);
    }
    for r in &damage.unknown_data {
        add_run(r.clone());
    }
    for r in &damage.unknown_hash {
        add_run(
            r.start.saturating_sub(first_hash) + g.data_blocks
                ..r.end.saturating_sub(first_hash) + g.data_blocks,
        );
    }
    let confirmed = rounds.len() as u64 * bs;
    Ok(scan
        .damaged_codewords
        .saturating_sub(confirmed)
        .saturating_mul(2)
        <= scan.codewords)
}

/// The geometry must be the one made for the target's tree.
fn check_target(g: &FecGeometry, target: &RepairTarget<'_>) -> Result<()> {
    let bs = g.block_size;
    if u64::from(target.params.data_block_size()) != bs
        || target.tree.data_blocks() != g.data_blocks
        || target.tree.hash_start_block() * bs != g.hash_area_offset
    {
        return Err(Error::param(
            "fec",
            "the FEC geometry was not made for these verity parameters",
        ));
    }
    Ok(())
}

/// Judge the repairs against the tree until nothing changes: each pass reverts the
/// repairs the tree rejects (a decoder gone astray: back to the stored bytes) and decodes
/// again with every rejected block as an erasure; repaired hash blocks make the blocks
/// below them checkable in the next pass. Decoding passes are bounded; reverting only
/// shrinks the set, so the loop ends. Returns the damage that remains.
#[allow(clippy::too_many_arguments)]
fn settle<D, H, F>(
    g: &FecGeometry,
    target: &RepairTarget<'_>,
    input: &Input<'_, D, H>,
    fec: &F,
    blocks: &mut BTreeMap<u64, Vec<u8>>,
    parity: &mut BTreeMap<u64, u8>,
    sure: &BTreeMap<u64, u8>,
    opts: &BuildOptions<'_>,
) -> Result<crate::verify::Damage>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
    F: ReadAt + ?Sized,
{
    let bs = g.block_size;
    let limit = (MAX_REPAIR_BYTES / bs) as usize;
    let code = Code::new(g.roots as usize);
    let to_covered = |h: &u64| h - g.hash_area_offset / bs + g.data_blocks;
    let mut budget = 4 * (target.tree.levels().len() + 2);
    let mut damage = judge(g, target, input.data, input.hash, blocks, opts)?;
    loop {
        let bad: Vec<u64> = damage
            .bad_data
            .iter()
            .copied()
            .chain(damage.bad_hash.iter().map(to_covered))
            .collect();
        if bad.is_empty() {
            return Ok(damage);
        }
        let mut changed = false;
        for b in &bad {
            changed |= blocks.remove(b).is_some();
        }
        if budget > 0 {
            budget -= 1;
            changed |= erasure_pass(g, &code, input, fec, &bad, blocks, parity, sure, limit)?;
        }
        if !changed {
            return Ok(damage);
        }
        damage = judge(g, target, input.data, input.hash, blocks, opts)?;
    }
}

/// Write the repaired blocks the tree accepts. Blocks it rejects, cannot check because a
/// hash block above them is still damaged, or cannot check at all (outside the tree) keep
/// their old content. Lookups go through sorted lists and runs, so the memory stays that
/// of the damage found, not of the device. Returns whether everything was checked (then
/// the parity may be re-encoded from the data and tree).
fn write_accepted<D, H>(
    g: &FecGeometry,
    target: &RepairTarget<'_>,
    data: &mut D,
    hash: &mut H,
    blocks: &BTreeMap<u64, Vec<u8>>,
    damage: &crate::verify::Damage,
    report: &mut RepairReport,
) -> Result<bool>
where
    D: WriteAt + ?Sized,
    H: WriteAt + ?Sized,
{
    let bs = g.block_size;
    let verdict = Verdict::new(damage, target);
    let mut unchecked_any =
        !damage.bad_data.is_empty() || !damage.bad_hash.is_empty() || damage.unknown_count() > 0;
    for (&block, content) in blocks {
        match g.locate(block) {
            Place::Data(d) => {
                if verdict.data_unsure(d) {
                    continue;
                }
                let off = d * bs;
                data.write_all_at(content, off)
                    .map_err(|e| Error::io(format!("writing data device byte {off}"), e))?;
                report.repaired_data_blocks.push(d);
            }
            Place::Hash(h) => {
                if verdict.outside_tree(h) {
                    report.unchecked_hash_blocks.push(h);
                    unchecked_any = true;
                    continue;
                }
                if verdict.hash_unsure(h) {
                    continue;
                }
                let off = h * bs;
                hash.write_all_at(content, off)
                    .map_err(|e| Error::io(format!("writing hash device byte {off}"), e))?;
                report.repaired_hash_blocks.push(h);
            }
            Place::Padding => {}
        }
    }
    Ok(!unchecked_any)
}

/// What the tree found, for lookups block by block (sorted lists and runs: the memory
/// of the damage, not of the device).
struct Verdict<'a> {
    damage: &'a crate::verify::Damage,
    bad_data: Vec<u64>,
    bad_hash: Vec<u64>,
    tree_blocks: std::ops::Range<u64>,
}

impl<'a> Verdict<'a> {
    fn new(damage: &'a crate::verify::Damage, target: &RepairTarget<'_>) -> Self {
        let mut bad_data = damage.bad_data.clone();
        bad_data.sort_unstable();
        let mut bad_hash = damage.bad_hash.clone();
        bad_hash.sort_unstable();
        let first = target.tree.hash_start_block();
        Verdict {
            damage,
            bad_data,
            bad_hash,
            tree_blocks: first..first + target.tree.tree_blocks(),
        }
    }

    /// Whether the tree rejects data block `d` or cannot vouch for it.
    fn data_unsure(&self, d: u64) -> bool {
        self.bad_data.binary_search(&d).is_ok() || in_runs(&self.damage.unknown_data, d)
    }

    /// Whether the tree rejects hash-device block `h` or cannot vouch for it.
    fn hash_unsure(&self, h: u64) -> bool {
        self.bad_hash.binary_search(&h).is_ok() || in_runs(&self.damage.unknown_hash, h)
    }

    /// Whether hash-device block `h` is outside the tree (nothing checks it).
    fn outside_tree(&self, h: u64) -> bool {
        !self.tree_blocks.contains(&h)
    }
}

/// FEC-device offsets and values of the parity bytes of `rounds` that differ from what the
/// input encodes to.
pub(crate) fn fresh_parity<D, H, F>(
    g: &FecGeometry,
    input: &Input<'_, D, H>,
    fec: &F,
    rounds: &BTreeSet<u64>,
) -> Result<Vec<(u64, u8)>>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
    F: ReadAt + ?Sized,
{
    let (_, syn) = code_and_syndromes(g.roots);
    let mut batch = Batch::new(g, &syn, Kernel::best());
    let len = g.block_size as usize * g.roots as usize;
    let mut fresh = vec![0u8; len];
    let mut stored = vec![0u8; len];
    let mut out = Vec::new();
    for &round in rounds {
        batch.load(input, round, 1)?;
        batch.encode_round(0, &mut fresh)?;
        let off = g.fec_offset + round * len as u64;
        fec.read_exact_at(&mut stored, off)
            .map_err(|e| Error::io(format!("reading parity at FEC device byte {off}"), e))?;
        for (j, (&n, &s)) in fresh.iter().zip(&stored).enumerate() {
            if n != s {
                out.push((off + j as u64, n));
            }
        }
    }
    Ok(out)
}

pub(crate) fn too_much_damage() -> Error {
    Error::TooMuchDamage {
        what: format!("more than {} MiB of damaged blocks", MAX_REPAIR_BYTES >> 20),
    }
}

/// Check the devices with the repairs applied against the tree.
pub(crate) fn judge<D, H>(
    g: &FecGeometry,
    target: &RepairTarget<'_>,
    data: &D,
    hash: &H,
    blocks: &BTreeMap<u64, Vec<u8>>,
    opts: &BuildOptions<'_>,
) -> Result<crate::verify::Damage>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
{
    let bs = g.block_size;
    let dv = Patched {
        inner: data,
        blocks,
        bs,
        first: 0,
        count: g.data_blocks,
        covered_first: 0,
    };
    let hv = Patched {
        inner: hash,
        blocks,
        bs,
        first: g.hash_area_offset / bs,
        count: g.hash_blocks,
        covered_first: g.data_blocks,
    };
    find_damage(target.params, target.tree, &dv, &hv, target.root, opts)
}

/// Decode, with the known-bad covered blocks as erasures, every round that holds at most
/// `roots` of them. A codeword the erasures leave past the parity (another error beside
/// them: a damaged parity byte, a block the tree could not judge) is decoded for errors
/// only, or else left as it is, and the rest of its round still decoded: the tree judges
/// every block this changes, so a wrong guess is never written. Returns whether anything
/// changed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn erasure_pass<D, H, F>(
    g: &FecGeometry,
    code: &Code,
    input: &Input<'_, D, H>,
    fec: &F,
    bad: &[u64],
    blocks: &mut BTreeMap<u64, Vec<u8>>,
    parity: &mut BTreeMap<u64, u8>,
    sure: &BTreeMap<u64, u8>,
    limit: usize,
) -> Result<bool>
where
    D: ReadAt + ?Sized,
    H: ReadAt + ?Sized,
    F: ReadAt + ?Sized,
{
    let bs = g.block_size as usize;
    let roots = g.roots as usize;
    let k = g.k();
    let mut by_round: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for &b in bad {
        by_round
            .entry(b % g.rounds)
            .or_default()
            .push((b / g.rounds) as usize);
    }
    let mut changed = false;
    let mut round_blocks = vec![0u8; k * bs];
    let mut round_parity = vec![0u8; bs * roots];
    // The round before decoding: what a decoded block or parity byte is compared with.
    let mut before = vec![0u8; k * bs];
    let mut stored = vec![0u8; bs * roots];
    for (round, erasures) in by_round {
        if erasures.len() > roots {
            continue;
        }
        // The round as it stands with the repairs so far.
        for i in 0..k {
            let blk = i as u64 * g.rounds + round;
            let dst = &mut round_blocks[i * bs..(i + 1) * bs];
            match blocks.get(&blk) {
                Some(c) => dst.copy_from_slice(c),
                None => input.read(blk, dst)?,
            }
        }
        before.copy_from_slice(&round_blocks);
        let off = g.fec_offset + round * (bs * roots) as u64;
        fec.read_exact_at(&mut stored, off)
            .map_err(|e| Error::io(format!("reading parity at FEC device byte {off}"), e))?;
        // The stored parity, not earlier errors-only fixes of it: those may come from the
        // same decoder that went astray in this round. Only the fixes the scan is sure of
        // are taken: with as many erasures as roots nothing is left to find a bad parity
        // byte, and every erased byte of its codeword would come out wrong.
        round_parity.copy_from_slice(&stored);
        let base = round * (bs * roots) as u64;
        for (&o, &v) in sure.range(base..base + (bs * roots) as u64) {
            round_parity[(o - base) as usize] = v;
        }
        let mut cw = [0u8; NN];
        for b in 0..bs {
            for i in 0..k {
                cw[i] = round_blocks[i * bs + b];
            }
            cw[k..].copy_from_slice(&round_parity[b * roots..(b + 1) * roots]);
            let corrected = match code.decode(&mut cw, &erasures) {
                Decoded::Clean => false,
                Decoded::Corrected(_) => true,
                Decoded::Failed => matches!(code.decode(&mut cw, &[]), Decoded::Corrected(_)),
            };
            if corrected {
                for i in 0..k {
                    round_blocks[i * bs + b] = cw[i];
                }
                round_parity[b * roots..(b + 1) * roots].copy_from_slice(&cw[k..]);
            }
        }
        // A decoding that changes the unstored zeros past the end is not a real repair.
        let padding_changed = (0..k).any(|i| {
            g.locate(i as u64 * g.rounds + round) == Place::Padding
                && round_blocks[i * bs..(i + 1) * bs].iter().any(|&x| x != 0)
        });
        if padding_changed {
            continue;
        }
        for i in 0..k {
            let blk = i as u64 * g.rounds + round;
            if g.locate(blk) == Place::Padding {
                continue;
            }
            let new = &round_blocks[i * bs..(i + 1) * bs];
            if new != &before[i * bs..(i + 1) * bs] {
                if !blocks.contains_key(&blk) && blocks.len() >= limit {
                    return Err(too_much_damage());
                }
                blocks.insert(blk, new.to_vec());
                changed = true;
            }
        }
        let stale: Vec<u64> = parity
            .range(base..base + (bs * roots) as u64)
            .map(|(&o, _)| o)
            .collect();
        for o in stale {
            parity.remove(&o);
        }
        for (o, (&n, &s)) in round_parity.iter().zip(&stored).enumerate() {
            if n != s {
                parity.insert(base + o as u64, n);
            }
        }
    }
    Ok(changed)
}
