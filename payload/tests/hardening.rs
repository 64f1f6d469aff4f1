//! Faults an outside review found in the applier, each shown failing before its fix:
//! resumes that could fail forever, versions that slipped past the downgrade check, a
//! target grown by a lying size, blocks written twice, and decoders without bounds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod support;
use keel_testsupport as tools;

use keel_payload::format::{
    bspatch, image_digest, Extent, ImageId, Operation, BLOCK_SIZE, HEADER_SIZE,
};
use keel_payload::{
    apply, assemble, generate, ApplyOptions, Error, GenerateOptions, Manifest, OpType,
    RecordDiscarded, VersionCheck,
};
use keel_verity::{Keyring, SigningKey};
use support::Cut;
use tools::seeded_bytes;

const NO_SOURCE: Option<&[u8]> = None;

fn ring(key: &SigningKey) -> Keyring {
    let mut r = Keyring::new();
    r.add(key.public_key().clone()).unwrap();
    r
}

fn full_payload(key: &SigningKey, image: &[u8], version: &str) -> Vec<u8> {
    let mut o = GenerateOptions::new("acme", version);
    o.level = 1;
    generate(None, image, key, &o).unwrap()
}

/// A signed full payload of a seeded image, its keyring, and a place for a resume record.
struct Fixture {
    ring: Keyring,
    image: Vec<u8>,
    full: Vec<u8>,
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
}

fn fixture(seed: u64, size: usize) -> Fixture {
    let key = SigningKey::generate().unwrap();
    let image = seeded_bytes(seed, size);
    let full = full_payload(&key, &image, "2.0");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    Fixture {
        ring: ring(&key),
        image,
        full,
        _dir: dir,
        state,
    }
}

impl Fixture {
    /// Options with the record and 1 MiB checkpoints.
    fn opts(&self) -> ApplyOptions<'_> {
        ApplyOptions::new(&self.ring, VersionCheck::Installed("1.0"))
            .state(&self.state)
            .checkpoint_bytes(1 << 20)
    }

    /// The payload cut to `num / den` of its length.
    fn cut(&self, num: usize, den: usize) -> &[u8] {
        &self.full[..self.full.len() * num / den]
    }
}

#[test]
fn a_resume_over_a_changed_target_starts_over_in_the_same_run() {
    let f = fixture(1, 4 << 20);
    let o = f.opts();
    for run in 0..12 {
        // A truncated payload, applied until its data runs out, checkpoints on the way.
        let mut t = vec![0u8; f.image.len()];
        let e = apply(f.cut(3, 4), NO_SOURCE, &mut t, &o).unwrap_err();
        assert!(
            matches!(e, Error::Truncated { .. }) && e.is_retryable(),
            "{e}"
        );
        assert!(f.state.exists());
        // The first MiB, which the record says is written, is overwritten behind its back.
        t[..1 << 20].fill(0xa5);
        let done =
            apply(&f.full[..], NO_SOURCE, &mut t, &o).unwrap_or_else(|e| panic!("run {run}: {e}"));
        assert_eq!(done.discarded, Some(RecordDiscarded::TargetChanged));
        assert_eq!(done.resumed_at, 0);
        assert_eq!(t, f.image, "run {run}");
        assert!(!f.state.exists());
    }
}

#[test]
fn the_resume_count_is_kept_before_resuming_and_runs_out() {
    let f = fixture(2, 8 << 20);
    let o = f.opts().max_resumes(3);
    // Cut after the first checkpoint: a record at some operation.
    let mut first = Cut::new(vec![0u8; f.image.len()], usize::MAX);
    let e = apply(f.cut(1, 2), NO_SOURCE, &mut first, &o).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }));
    assert!(f.state.exists());
    // Every resume dies at its first write, before any checkpoint of its own: the count
    // must still grow, or this would go on for ever.
    let mut disk = first.disk;
    for n in 0..3 {
        let mut t = Cut::new(disk, 1);
        assert!(
            apply(&f.full[..], NO_SOURCE, &mut t, &o).is_err(),
            "resume {n}"
        );
        disk = t.disk;
        assert!(f.state.exists());
    }
    let mut t = Cut::new(disk, usize::MAX);
    let done = apply(&f.full[..], NO_SOURCE, &mut t, &o).unwrap();
    assert_eq!(done.discarded, Some(RecordDiscarded::ResumesSpent(3)));
    assert_eq!(done.resumed_at, 0);
    assert_eq!(t.disk, f.image);
}

#[test]
fn a_record_for_another_target_is_not_used() {
    let f = fixture(3, 8 << 20);
    let o = f.opts();
    let mut t = vec![0u8; f.image.len()];
    assert!(apply(f.cut(1, 2), NO_SOURCE, &mut t, &o).is_err());
    assert!(f.state.exists());
    // A larger target (another slot): the record is not for it.
    let mut other = vec![0u8; f.image.len() + 4096];
    let done = apply(&f.full[..], NO_SOURCE, &mut other, &o).unwrap();
    assert_eq!(done.discarded, Some(RecordDiscarded::OtherTarget));
    assert_eq!(&other[..f.image.len()], &f.image[..]);
}

#[test]
fn a_huge_record_is_ignored_and_a_directory_in_its_place_is_a_clear_error() {
    let f = fixture(4, 1 << 20);
    std::fs::write(&f.state, vec![7u8; 10 << 20]).unwrap();
    let mut t = vec![0u8; f.image.len()];
    let done = apply(&f.full[..], NO_SOURCE, &mut t, &f.opts()).unwrap();
    assert_eq!(done.discarded, Some(RecordDiscarded::Unreadable));
    assert_eq!(t, f.image);
    // A directory where the record goes, or a record in a directory that is not there:
    // an error before anything is written, not after the whole image.
    std::fs::create_dir(&f.state).unwrap();
    let mut t = vec![0u8; f.image.len()];
    let e = apply(&f.full[..], NO_SOURCE, &mut t, &f.opts()).unwrap_err();
    assert!(matches!(e, Error::Io(_)), "{e}");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    assert!(f.state.is_dir(), "the directory is left as it was");
    assert!(t.iter().all(|&b| b == 0), "the target was written");
    let nowhere = f.state.join("no/such/record");
    let opts = f.opts().state(&nowhere);
    let e = apply(&f.full[..], NO_SOURCE, &mut t, &opts).unwrap_err();
    assert!(matches!(e, Error::Io(_)), "{e}");
    assert!(t.iter().all(|&b| b == 0), "the target was written");
}

#[test]
fn versions_are_parsed_strictly_and_equal_ones_refused() {
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    let image = seeded_bytes(5, 64 << 10);
    let p1 = full_payload(&key, &image, "1.0");
    let mut t = vec![0u8; image.len()];
    // "v2.0" used to count as 0.0 and let 1.0 through.
    for bad in [
        "v2.0",
        "2.0-rc1",
        "",
        "2..0",
        "+2",
        "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17",
    ] {
        let o = ApplyOptions::new(&r, VersionCheck::Installed(bad));
        let e = apply(&p1[..], NO_SOURCE, &mut t, &o).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::BadVersion {
                    what: "installed version",
                    ..
                }
            ),
            "{bad:?}: {e}"
        );
    }
    let o = ApplyOptions::new(&r, VersionCheck::Installed("1.0"));
    assert!(matches!(
        apply(&p1[..], NO_SOURCE, &mut t, &o),
        Err(Error::SameVersion(_))
    ));
    let o = ApplyOptions::new(&r, VersionCheck::Installed("1"));
    assert!(matches!(
        apply(&p1[..], NO_SOURCE, &mut t, &o),
        Err(Error::SameVersion(_))
    ));
    let o = ApplyOptions::new(&r, VersionCheck::Installed("1.0.1"));
    assert!(matches!(
        apply(&p1[..], NO_SOURCE, &mut t, &o),
        Err(Error::Downgrade { .. })
    ));
    assert!(t.iter().all(|&b| b == 0), "a refused payload wrote nothing");
    let o = ApplyOptions::new(&r, VersionCheck::Installed("1.0")).allow_reinstall(true);
    apply(&p1[..], NO_SOURCE, &mut t, &o).unwrap();
    assert_eq!(t, image);
    // The generator refuses what the applier could not compare.
    let o = GenerateOptions::new("acme", "v3");
    assert!(matches!(
        generate(None, &image, &key, &o),
        Err(Error::BadVersion { .. })
    ));
}

/// A payload whose blocks must be re-created by a compressor version this build does not
/// have is refused before anything is written, as one needing the full payload; the same
/// payload naming this build's version gets as far as its operation.
#[test]
fn another_recompressor_version_is_refused_before_any_write() {
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    let ops = vec![(op(OpType::Recompress, &[(0, 1)], &[]), vec![1u8; 40])];
    let p = signed_with(&key, 8192, ops.clone(), Some("zstd 0.0.1".into()));
    let mut t = vec![0u8; 8192];
    let e = refusal(&p, &mut t, &r);
    assert!(
        matches!(&e, Error::Recompressor { needs, have }
            if needs == "zstd 0.0.1" && *have == keel_payload::recompressor()),
        "{e}"
    );
    assert!(e.needs_full_payload());
    assert!(t.iter().all(|&b| b == 0), "a refused payload wrote nothing");
    // A deflate that compresses differently from this build's zlib.
    let p = signed_with(
        &key,
        8192,
        ops.clone(),
        Some("zlib deflate 0123456789abcdef".into()),
    );
    let e = refusal(&p, &mut t, &r);
    assert!(
        matches!(&e, Error::Recompressor { have, .. } if have.starts_with("zlib deflate ")),
        "{e}"
    );
    assert!(t.iter().all(|&b| b == 0), "a refused payload wrote nothing");
    // EROFS's lz4 pclusters, filled by another liblz4 than this build's.
    let p = signed_with(&key, 8192, ops.clone(), Some("lz4 1.8.3".into()));
    let e = refusal(&p, &mut t, &r);
    assert!(
        matches!(&e, Error::Recompressor { have, .. } if have.starts_with("lz4 1.")
            && have != "lz4 1.8.3"),
        "{e}"
    );
    assert!(t.iter().all(|&b| b == 0), "a refused payload wrote nothing");
    // gzip files' streams, whose corrections another preflate-rs may read otherwise.
    let p = signed_with(&key, 8192, ops.clone(), Some("preflate-rs 0.6.0".into()));
    let e = refusal(&p, &mut t, &r);
    assert!(
        matches!(&e, Error::Recompressor { have, .. } if have.starts_with("preflate-rs 0.")
            && have != "preflate-rs 0.6.0"),
        "{e}"
    );
    assert!(t.iter().all(|&b| b == 0), "a refused payload wrote nothing");
    let p = signed_with(&key, 8192, ops, Some(keel_payload::recompressor()));
    let e = refusal(&p, &mut t, &r);
    assert!(matches!(e, Error::Decode { op: 0, .. }), "{e}");
    // A RECOMPRESS operation without the compressor named, or a name without one: the
    // manifest does not parse.
    let ops = vec![(op(OpType::Recompress, &[(0, 1)], &[]), vec![1u8; 40])];
    let e = refusal(&signed_with(&key, 8192, ops, None), &mut t, &r);
    assert!(
        matches!(
            e,
            Error::BadField {
                field: "recompressor",
                ..
            }
        ),
        "{e}"
    );
    let e = refusal(
        &signed_with(
            &key,
            8192,
            vec![(op(OpType::Zero, &[(0, 1)], &[]), vec![])],
            Some("zstd 1".into()),
        ),
        &mut t,
        &r,
    );
    assert!(
        matches!(
            e,
            Error::BadField {
                field: "manifest",
                ..
            }
        ),
        "{e}"
    );
}

/// A manifest signed by a trusted key, straight from its parts.
fn signed(key: &SigningKey, target_size: u64, ops: Vec<(Operation, Vec<u8>)>) -> Vec<u8> {
    signed_with(key, target_size, ops, None)
}

fn signed_with(
    key: &SigningKey,
    target_size: u64,
    ops: Vec<(Operation, Vec<u8>)>,
    recompressor: Option<String>,
) -> Vec<u8> {
    let data: Vec<u8> = ops.iter().flat_map(|(_, d)| d.clone()).collect();
    let mut at = 0u64;
    let operations = ops
        .into_iter()
        .map(|(mut o, d)| {
            o.data_offset = at;
            o.data_length = d.len() as u64;
            o.data_sha256 = if d.is_empty() {
                [0; 32]
            } else {
                keel_payload::format::sha256(&d)
            };
            at += d.len() as u64;
            o
        })
        .collect();
    let m = Manifest {
        source: None,
        target: ImageId {
            size: target_size,
            digest: [0; 32],
        },
        verity: None,
        compatible: "acme".into(),
        version: "2.0".into(),
        operations,
        recompressor,
    };
    assemble(&m, &data, key).unwrap()
}

/// Apply `p` to `t` with no version check, expecting a refusal.
fn refusal(p: &[u8], t: &mut Vec<u8>, r: &Keyring) -> Error {
    apply(
        p,
        NO_SOURCE,
        t,
        &ApplyOptions::new(r, VersionCheck::Unchecked),
    )
    .unwrap_err()
}

fn op(kind: OpType, target: &[(u64, u64)], source: &[(u64, u64)]) -> Operation {
    let ext = |v: &[(u64, u64)]| {
        v.iter()
            .map(|&(start, blocks)| Extent { start, blocks })
            .collect()
    };
    Operation {
        op: kind,
        target: ext(target),
        source: ext(source),
        data_offset: 0,
        data_length: 0,
        data_sha256: [0; 32],
        source_sha256: [0; 32],
    }
}

#[test]
fn a_huge_signed_size_is_refused_before_any_write() {
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    // One ZERO op at the end of a 1 TiB image: it used to grow the target to 1 TiB.
    let blocks = (1u64 << 40) / BLOCK_SIZE;
    let p = signed(
        &key,
        1 << 40,
        vec![(op(OpType::Zero, &[(blocks - 1, 1)], &[]), vec![])],
    );
    let mut t: Vec<u8> = Vec::new();
    let e = refusal(&p, &mut t, &r);
    assert!(
        matches!(e, Error::TargetTooSmall { have: 0, need } if need == 1 << 40),
        "{e}"
    );
    assert!(t.is_empty());
}

#[test]
fn a_block_written_twice_is_refused() {
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    let block = vec![1u8; 4096];
    let blob = zstd::bulk::compress(&block, 1).unwrap();
    // A CHAIN reads block 0, then a later op overwrites it: a resume after the second
    // would rebuild the CHAIN from other bytes.
    let chain_blob = zstd::bulk::compress(&block, 1).unwrap();
    let cases = vec![
        vec![
            (op(OpType::Replace, &[(0, 1)], &[]), blob.clone()),
            (op(OpType::Chain, &[(1, 1)], &[(0, 1)]), chain_blob),
            (op(OpType::Zero, &[(0, 1)], &[]), vec![]),
        ],
        vec![(op(OpType::Zero, &[(0, 2), (1, 1)], &[]), vec![])],
        vec![
            (op(OpType::Zero, &[(2, 2)], &[]), vec![]),
            (op(OpType::Replace, &[(3, 1)], &[]), blob),
        ],
    ];
    for (n, ops) in cases.into_iter().enumerate() {
        let p = signed(&key, 4 * 4096, ops);
        let mut t = vec![0u8; 4 * 4096];
        let e = refusal(&p, &mut t, &r);
        assert!(
            matches!(&e, Error::BadField { .. }) && e.to_string().contains("written twice"),
            "case {n}: {e}"
        );
    }
}

/// Many small CHAINs on the same 8 MiB made an applier read and hash it for each (8,000 of
/// them: a minute for a 243 KB payload): the references operations read together are
/// bounded by the target's size.
#[test]
fn operations_reading_the_same_reference_again_and_again_are_refused() {
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    let blob = zstd::bulk::compress(&[7u8; 4096], 1).unwrap();
    let chain = zstd::bulk::compress(&[7u8; 4096], 1).unwrap();
    // 2 per target block and 16384 more: 64 one-block CHAINs on 512 blocks go beyond that
    // in a 576-block image, 32 stay within.
    for (chains, refused) in [(32u64, false), (64, true)] {
        let mut ops = vec![(op(OpType::Zero, &[(0, 511)], &[]), vec![])];
        ops.push((op(OpType::Replace, &[(511, 1)], &[]), blob.clone()));
        for c in 0..chains {
            ops.push((
                op(OpType::Chain, &[(512 + c, 1)], &[(0, 512)]),
                chain.clone(),
            ));
        }
        let p = signed(&key, 576 * 4096, ops);
        let mut t = vec![0u8; 576 * 4096];
        // Within the bound it goes as far as the first CHAIN's reference (whose hash this
        // test does not make): no refusal of the manifest.
        let e = refusal(&p, &mut t, &r);
        let bound =
            matches!(&e, Error::BadField { .. }) && e.to_string().contains("reference blocks");
        assert_eq!(bound, refused, "{chains} CHAINs: {e}");
    }
}

#[test]
fn a_zstd_frame_asking_for_a_large_window_is_refused() {
    use std::io::Write;
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    let block = seeded_bytes(9, 4096);
    // A frame without its content size and with a 128 MiB window: decoding it would
    // allocate the window, far past one operation's bound.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.window_log(27).unwrap();
    enc.include_contentsize(false).unwrap();
    enc.write_all(&block).unwrap();
    let blob = enc.finish().unwrap();
    assert_eq!(zstd::decode_all(&blob[..]).unwrap(), block, "a valid frame");
    let p = signed(
        &key,
        4096,
        vec![(op(OpType::Replace, &[(0, 1)], &[]), blob)],
    );
    let mut t = vec![0u8; 4096];
    let e = refusal(&p, &mut t, &r);
    assert!(
        matches!(e, Error::Decode { op: 0, .. }) && e.is_corruption(),
        "{e}"
    );
}

#[test]
fn bspatch_stops_on_a_stream_of_idle_control_triples() {
    // Zeros decompress without end: (add 0, copy 0, seek 0) again and again.
    let zeros = zstd::bulk::compress(&vec![0u8; 24 << 20], 1).unwrap();
    let dec = zstd::stream::read::Decoder::new(&zeros[..]).unwrap();
    let e = bspatch(&[0u8; 4096], dec, 4096).unwrap_err();
    assert!(e.to_string().contains("write nothing"), "{e}");
}

#[test]
fn an_untrusted_key_is_refused_before_the_manifest_is_read() {
    let key = SigningKey::generate().unwrap();
    let stranger = ring(&SigningKey::generate().unwrap());
    let image = seeded_bytes(6, 8192);
    let p = full_payload(&key, &image, "2.0");
    // Only the header: a reader that has to fetch 64 MiB of manifest first would report
    // a truncated payload instead.
    let mut t = vec![0u8; image.len()];
    let e = refusal(&p[..HEADER_SIZE], &mut t, &stranger);
    assert!(
        matches!(&e, Error::UntrustedKey { key_id } if *key_id == key.public_key().id().0),
        "{e}"
    );
    let _ = image_digest(&image[..], image.len() as u64).unwrap();
}

/// A source whose reads fail with EIO, as a dying disk's would.
struct FailingSource(Vec<u8>);

impl keel_verity::ReadAt for FailingSource {
    fn read_exact_at(&self, _buf: &mut [u8], _offset: u64) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(5))
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

#[test]
fn an_io_error_on_the_source_is_not_a_modified_source() {
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    let src = seeded_bytes(11, 1 << 20);
    let mut tgt = src.clone();
    tgt[1000..2000].fill(1);
    let p = generate(Some(&src), &tgt, &key, &GenerateOptions::new("acme", "2.0")).unwrap();
    let mut t = vec![0u8; tgt.len()];
    let e = apply(
        &p[..],
        Some(&FailingSource(src)),
        &mut t,
        &ApplyOptions::new(&r, VersionCheck::Unchecked),
    )
    .unwrap_err();
    // A full payload would not help: the agent must see the disk error for what it is.
    assert!(
        matches!(&e, Error::Io(io) if io.source.raw_os_error() == Some(5)),
        "{e}"
    );
    assert!(!e.needs_full_payload());
}

#[test]
fn a_cancelled_apply_stops_at_an_operation_and_resumes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    /// Cancels once some progress was reported.
    struct StopSoon(AtomicUsize);
    impl keel_verity::Progress for StopSoon {
        fn progress(&self, _done: u64, _total: u64) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn cancelled(&self) -> bool {
            self.0.load(Ordering::Relaxed) >= 2
        }
    }
    let f = fixture(12, 6 << 20);
    let stop = StopSoon(AtomicUsize::new(0));
    let o = f.opts().progress(&stop);
    let mut t = vec![0u8; f.image.len()];
    let e = apply(&f.full[..], NO_SOURCE, &mut t, &o).unwrap_err();
    assert!(matches!(e, Error::Cancelled) && e.is_retryable(), "{e}");
    assert!(
        f.state.exists(),
        "a cancelled apply leaves its resume record"
    );
    let done = apply(&f.full[..], NO_SOURCE, &mut t, &f.opts()).unwrap();
    assert_eq!(done.resumed_at, 2, "it continues where it was stopped");
    assert_eq!(t, f.image);
}

/// REPLACE_XZ and CHAIN_XZ blobs the generator made apply; every kind of damage to one
/// (signed over, so only a decoder check can catch it) is a decode error of that
/// operation, never a panic or a wrong block: an unknown filter, a dictionary past the
/// bound, a truncated or overlong stream, flipped bytes, another reference.
#[test]
fn lzma2_blobs_are_checked_before_their_blocks_are_written() {
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    // Text that LZMA2 packs: a full payload of it is REPLACE_XZ.
    let text: Vec<u8> = (0..8 * 4096u32)
        .flat_map(|i| format!("line {} of {}\n", i % 977, i % 13).into_bytes())
        .take(8 * 4096)
        .collect();
    let mut o = GenerateOptions::new("acme", "2.0");
    o.level = 12;
    let full = generate(None, &text, &key, &o).unwrap();
    let (_, m, _) = keel_payload::read_manifest(&mut &full[..], &r).unwrap();
    let xz = m
        .operations
        .iter()
        .find(|o| o.op == OpType::ReplaceXz)
        .expect("new text goes to LZMA2 from level 10");
    let mlen = u64::from_le_bytes(full[16..24].try_into().unwrap());
    let at = (64 + mlen + 64 + xz.data_offset) as usize;
    let good = full[at..at + xz.data_length as usize].to_vec();
    let t0 = xz.target[0];
    assert!(xz.target.len() == 1 && t0.blocks >= 2);
    let expect = &text[(t0.start * 4096) as usize..((t0.start + t0.blocks) * 4096) as usize];
    let size = t0.blocks * 4096;
    let target = |n| [(0u64, n)];
    // The blob as made: its blocks come out (only the zero digest of this hand-made
    // manifest is then refused).
    let p = signed(
        &key,
        size,
        vec![(op(OpType::ReplaceXz, &target(t0.blocks), &[]), good.clone())],
    );
    let mut t = vec![0u8; size as usize];
    let e = refusal(&p, &mut t, &r);
    assert!(!matches!(e, Error::Decode { .. }), "{e}");
    assert!(t == expect, "the blocks are built");
    // The same stream as CHAIN_XZ on top of block 0 (a REPLACE before it): a preset
    // dictionary the stream did not use changes nothing it decodes.
    let zero = zstd::bulk::compress(&[0u8; 4096], 1).unwrap();
    let p = signed(
        &key,
        size + 4096,
        vec![
            (op(OpType::Replace, &[(0, 1)], &[]), zero),
            (
                Operation {
                    source_sha256: keel_payload::format::sha256(&[0u8; 4096]),
                    ..op(OpType::ChainXz, &[(1, t0.blocks)], &[(0, 1)])
                },
                good.clone(),
            ),
        ],
    );
    let mut t = vec![0u8; (size + 4096) as usize];
    let e = refusal(&p, &mut t, &r);
    assert!(!matches!(e, Error::Decode { .. }), "{e}");
    assert!(t[4096..] == *expect);
    let mut damaged: Vec<(&str, Vec<u8>, u64)> = Vec::new();
    let mut filter = good.clone();
    filter[0] = 7;
    damaged.push(("filter", filter, t0.blocks));
    for dict in [0u32, 1 << 30, 100] {
        let mut d = good.clone();
        d[1..5].copy_from_slice(&dict.to_le_bytes());
        damaged.push(("dictionary", d, t0.blocks));
    }
    damaged.push(("truncated", good[..good.len() / 2].to_vec(), t0.blocks));
    damaged.push(("header only", good[..3].to_vec(), t0.blocks));
    damaged.push(("longer than its blocks", good.clone(), t0.blocks - 1));
    damaged.push(("trailing bytes", [&good[..], &[0u8; 9]].concat(), t0.blocks));
    for i in (5..good.len()).step_by(good.len() / 16 + 1) {
        let mut d = good.clone();
        d[i] ^= 0x55;
        damaged.push(("flipped", d, t0.blocks));
    }
    for (what, blob, blocks) in damaged {
        let p = signed(
            &key,
            blocks * 4096,
            vec![(op(OpType::ReplaceXz, &target(blocks), &[]), blob)],
        );
        let mut t = vec![0u8; (blocks * 4096) as usize];
        let e = refusal(&p, &mut t, &r);
        // A flipped byte inside literal data may still decode, to other bytes: the image
        // digest catches those, and nothing else is accepted.
        if what == "flipped" && !matches!(e, Error::Decode { .. }) {
            assert!(t != expect[..t.len()], "{what}: {e}");
            continue;
        }
        assert!(matches!(e, Error::Decode { op: 0, .. }), "{what}: {e}");
        assert!(t.iter().all(|&b| b == 0), "{what}: nothing written");
    }
}

/// A changed text's delta is PATCH_XZ (LZMA2 with the old blocks as preset dictionary) and
/// applies; damage to its blob is a decode error of that operation or a wrong block the
/// image digest refuses, never a panic; another source is refused before decoding.
#[test]
fn lzma2_patches_apply_and_their_damage_is_refused() {
    let key = SigningKey::generate().unwrap();
    let r = ring(&key);
    // The new version adds a line of words after every third one: new text for LZMA2's
    // literal coder, among old lines its dictionary holds.
    let words = [
        "alpha", "delta", "kernel", "slot", "verity", "update", "mirror", "fleet",
    ];
    let lines = |edit: bool| -> Vec<u8> {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut out = Vec::new();
        for i in 0..8000u32 {
            out.extend(format!("entry {i:05} value {} of {}\n", i % 1013, i % 17).bytes());
            if edit && i % 3 == 0 {
                for _ in 0..6 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    out.extend(words[(rng % 8) as usize].bytes());
                    out.extend(format!(" {} ", rng % 10_000).bytes());
                }
                out.push(b'\n');
            }
        }
        out.resize(40 * 4096, b'\n');
        out
    };
    let (old, new) = (lines(false), lines(true));
    let mut o = GenerateOptions::new("acme", "2.0");
    o.level = 12;
    let p = generate(Some(&old[..]), &new, &key, &o).unwrap();
    let (_, m, _) = keel_payload::read_manifest(&mut &p[..], &r).unwrap();
    let xz = m
        .operations
        .iter()
        .find(|o| o.op == OpType::PatchXz)
        .unwrap_or_else(|| {
            panic!(
                "{:?}",
                m.operations
                    .iter()
                    .map(|o| (o.op, o.data_length))
                    .collect::<Vec<_>>()
            )
        })
        .clone();
    let mut t = vec![0u8; new.len()];
    apply(
        &p[..],
        Some(&old[..]),
        &mut t,
        &ApplyOptions::new(&r, VersionCheck::Unchecked),
    )
    .unwrap();
    assert!(t == new);

    let mlen = u64::from_le_bytes(p[16..24].try_into().unwrap());
    let at = (64 + mlen + 64 + xz.data_offset) as usize;
    let good = p[at..at + xz.data_length as usize].to_vec();
    // The operation alone, re-signed with each blob, over a source the manifest names.
    let t0 = xz.target[0];
    let expect = &new[(t0.start * 4096) as usize..][..(t0.blocks * 4096) as usize];
    let alone = |blob: Vec<u8>, source: &[u8]| {
        let o = Operation {
            target: vec![Extent {
                start: 0,
                blocks: t0.blocks,
            }],
            data_sha256: keel_payload::format::sha256(&blob),
            data_length: blob.len() as u64,
            data_offset: 0,
            ..xz.clone()
        };
        let m = Manifest {
            source: Some(ImageId {
                size: old.len() as u64,
                digest: image_digest(&old[..], old.len() as u64).unwrap(),
            }),
            target: ImageId {
                size: t0.blocks * 4096,
                digest: image_digest(expect, expect.len() as u64).unwrap(),
            },
            verity: None,
            compatible: "acme".into(),
            version: "2.0".into(),
            operations: vec![o],
            recompressor: None,
        };
        let p = assemble(&m, &blob, &key).unwrap();
        let mut t = vec![0u8; expect.len()];
        let res = apply(
            &p[..],
            Some(source),
            &mut t,
            &ApplyOptions::new(&r, VersionCheck::Unchecked),
        );
        (res, t)
    };
    let (res, t) = alone(good.clone(), &old);
    res.unwrap();
    assert!(t == expect, "the blob alone builds its blocks");
    let mut changed = old.clone();
    changed[(xz.source[0].start * 4096) as usize] ^= 1;
    let (res, t) = alone(good.clone(), &changed);
    let e = res.unwrap_err();
    assert!(matches!(e, Error::SourceModified { .. }), "{e}");
    assert!(
        t.iter().all(|&b| b == 0),
        "nothing written from another source"
    );
    let mut damaged = vec![("truncated", good[..good.len() / 2].to_vec())];
    let mut filter = good.clone();
    filter[0] = 2;
    damaged.push(("filter", filter));
    for i in (5..good.len()).step_by(good.len() / 16 + 1) {
        let mut d = good.clone();
        d[i] ^= 0x55;
        damaged.push(("flipped", d));
    }
    for (what, blob) in damaged {
        let (res, t) = alone(blob, &old);
        let e = res.unwrap_err();
        if what == "flipped" && !matches!(e, Error::Decode { .. }) {
            assert!(matches!(e, Error::TargetMismatch(_)), "{what}: {e}");
            assert!(t != expect, "{what}");
            continue;
        }
        assert!(matches!(e, Error::Decode { op: 0, .. }), "{what}: {e}");
        assert!(t.iter().all(|&b| b == 0), "{what}: nothing written");
    }
}

/// A file target grows by what the image holds, not by its size: its zeros are holes (an
/// outside review found a 32 MiB image of zeros refused on a 20 MiB file system). An image
/// whose data does not fit is refused with the numbers, before anything is written.
#[test]
fn a_file_target_needs_room_only_for_the_images_data() {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        assert!(
            std::env::var_os("KEEL_REQUIRE_INTEROP").is_none(),
            "mounting a tmpfs needs root"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let key = SigningKey::generate().unwrap();
    let ring = ring(&key);
    let opts = ApplyOptions::new(&ring, VersionCheck::Installed("1.0"));
    let create = |name: &str| {
        std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(small.join(name))
            .unwrap()
    };
    // 32 MiB, 1 MiB of it data: fits in 4 MiB.
    let mut sparse = vec![0u8; 32 << 20];
    sparse[20 << 20..21 << 20].copy_from_slice(&seeded_bytes(41, 1 << 20));
    let p = full_payload(&key, &sparse, "2.0");
    let mut t = create("sparse.img");
    keel_payload::apply_files(&p[..], None, &mut t, &opts).unwrap();
    assert!(std::fs::read(small.join("sparse.img")).unwrap() == sparse);
    assert!(t.metadata().unwrap().blocks() * 512 <= 2 << 20);
    // 8 MiB of data does not fit: refused before a byte is written.
    let dense = seeded_bytes(42, 8 << 20);
    let p = full_payload(&key, &dense, "2.0");
    let mut t = create("dense.img");
    let e = keel_payload::apply_files(&p[..], None, &mut t, &opts).unwrap_err();
    assert!(
        matches!(e, Error::TargetSpace { need, .. } if need == 8 << 20),
        "{e}"
    );
    assert_eq!(t.metadata().unwrap().len(), 0);
}
