//! The applier on payloads that are correctly signed and structurally valid, so every
//! operation kind is reached (the fuzzer plays a trusted but buggy or hostile generator):
//! blob and source hashes are fixed up after the fuzzer's choices, and the target digest
//! is learnt from a first run, then the payload is signed again with it and must apply to
//! the same bytes. With the first byte odd, the manifest bytes are the fuzzer's own
//! (parser coverage). Never a panic; a success means the target is what was promised.
#![no_main]

use keel_payload::format::{image_digest, sha256, Extent, Header, ImageId, Operation, HEADER_SIZE};
use keel_payload::{
    apply, assemble, ApplyOptions, Error, Manifest, OpType, TargetCheck, VersionCheck,
};
use keel_verity::{Context, Keyring, Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::sync::OnceLock;

const BLOCKS: u64 = 16;
const BS: usize = 4096;

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        SigningKey::from_pkcs8_pem(pem).expect("test key")
    })
}

fn ring() -> Keyring {
    let mut ring = Keyring::new();
    ring.add(key().public_key().clone()).expect("one key");
    ring
}

fn source() -> Vec<u8> {
    (0..BLOCKS as usize * BS)
        .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
        .collect()
}

fn bytes_of(img: &[u8], ext: &[Extent]) -> Vec<u8> {
    ext.iter()
        .flat_map(|e| img[e.start as usize * BS..(e.start + e.blocks) as usize * BS].to_vec())
        .collect()
}

fn patch(data: &[u8], reference: &[u8]) -> Vec<u8> {
    let mut enc =
        zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 3, reference).expect("zstd");
    enc.write_all(data).expect("zstd");
    enc.finish().expect("zstd")
}

/// Operations from the fuzzer's records: [kind, target start, target len, source start,
/// source len, content len, content...]; content is cycled to the operation's size and
/// encoded correctly unless the kind byte's high bit asks for the raw bytes as the blob.
/// Also whether any blob is the fuzzer's raw bytes (else every blob is well made).
fn build(input: &[u8], src: &[u8]) -> (Vec<(Operation, Vec<u8>)>, bool) {
    let mut used = [false; BLOCKS as usize];
    let mut written: Vec<(Extent, Vec<u8>)> = Vec::new();
    let mut ops = Vec::new();
    let mut any_raw = false;
    let mut rest = input;
    while let Some((h, tail)) = rest.split_first_chunk::<6>() {
        let n = usize::from(h[5]).min(tail.len());
        let (content, tail) = tail.split_at(n);
        rest = tail;
        let t = Extent {
            start: u64::from(h[1]) % BLOCKS,
            blocks: 1 + u64::from(h[2]) % 3,
        };
        if t.start + t.blocks > BLOCKS
            || used[t.start as usize..(t.start + t.blocks) as usize]
                .iter()
                .any(|&u| u)
        {
            continue;
        }
        let len = t.blocks as usize * BS;
        let s = Extent {
            start: u64::from(h[3]) % BLOCKS,
            blocks: 1 + u64::from(h[4]) % 3,
        };
        let s = Extent {
            blocks: s.blocks.min(BLOCKS - s.start),
            ..s
        };
        let mut out: Vec<u8> = if content.is_empty() {
            vec![0; len]
        } else {
            content.iter().copied().cycle().take(len).collect()
        };
        let raw = h[0] & 0x80 != 0;
        // LZMA2 blobs: the filter byte, the dictionary size, a stream of stored chunks
        // (lzma-rs writes those), or arbitrary bytes as the stream.
        let lzma2 = |out: &[u8]| {
            let mut b = vec![h[1] & 1, 0, 0, 1, 0];
            if raw {
                b.extend_from_slice(content);
            } else {
                lzma_rs::lzma2_compress(&mut &out[..], &mut b).expect("lzma2");
            }
            b
        };
        let (kind, source, blob, reference) = match h[0] % 10 {
            7 => (OpType::ReplaceXz, vec![], lzma2(&out), vec![]),
            9 => (OpType::PatchXz, vec![s], lzma2(&out), bytes_of(src, &[s])),
            8 => {
                let Some((e, bytes)) = written
                    .get(usize::from(h[3]) % written.len().max(1))
                    .cloned()
                else {
                    continue;
                };
                (OpType::ChainXz, vec![e], lzma2(&out), bytes)
            }
            0 => (OpType::Zero, vec![], vec![], vec![]),
            1 => {
                let s = Extent {
                    blocks: t.blocks.min(BLOCKS - s.start),
                    ..s
                };
                if s.blocks != t.blocks {
                    continue;
                }
                (OpType::Copy, vec![s], vec![], bytes_of(src, &[s]))
            }
            // REPLACE_RAW: the target bytes as they are (or, raw, bytes of another length).
            2 if h[1] & 2 != 0 => (
                OpType::ReplaceRaw,
                vec![],
                if raw { content.to_vec() } else { out.clone() },
                vec![],
            ),
            2 => (
                OpType::Replace,
                vec![],
                if raw {
                    content.to_vec()
                } else {
                    zstd::bulk::compress(&out, 3).expect("zstd")
                },
                vec![],
            ),
            3 => {
                let r = bytes_of(src, &[s]);
                (
                    OpType::Patch,
                    vec![s],
                    if raw {
                        content.to_vec()
                    } else {
                        patch(&out, &r)
                    },
                    r,
                )
            }
            4 => {
                let r = bytes_of(src, &[s]);
                let mut diff = Vec::new();
                if raw {
                    diff = content.to_vec();
                } else {
                    bsdiff::diff(&r, &out, &mut diff).expect("bsdiff");
                }
                (
                    OpType::Bsdiff,
                    vec![s],
                    zstd::bulk::compress(&diff, 3).expect("zstd"),
                    r,
                )
            }
            6 => {
                // RECOMPRESS: the head of the content compressed again after literal bytes,
                // against a stored block of the source (the format as documented).
                let r = bytes_of(src, &[s]);
                let (blob, built) = if raw {
                    (content.to_vec(), out.clone())
                } else {
                    recompress_blob(&out, &r)
                };
                out = built;
                (OpType::Recompress, vec![s], blob, r)
            }
            _ => {
                // CHAIN on the blocks of an earlier operation.
                let Some((e, bytes)) = written
                    .get(usize::from(h[3]) % written.len().max(1))
                    .cloned()
                else {
                    continue;
                };
                (
                    OpType::Chain,
                    vec![e],
                    if raw {
                        content.to_vec()
                    } else {
                        patch(&out, &bytes)
                    },
                    bytes,
                )
            }
        };
        if blob.is_empty()
            && matches!(
                kind,
                OpType::Replace
                    | OpType::ReplaceRaw
                    | OpType::Patch
                    | OpType::Bsdiff
                    | OpType::Chain
                    | OpType::Recompress
                    | OpType::ReplaceXz
                    | OpType::ChainXz
                    | OpType::PatchXz
            )
        {
            continue;
        }
        for b in t.start..t.start + t.blocks {
            used[b as usize] = true;
        }
        let result = match kind {
            OpType::Zero => vec![0; len],
            OpType::Copy => reference.clone(),
            _ => out.clone(),
        };
        written.push((t, result));
        let o = Operation {
            op: kind,
            target: vec![t],
            source_sha256: if source.is_empty() {
                [0; 32]
            } else {
                sha256(&reference)
            },
            source,
            data_offset: 0,
            data_length: 0,
            data_sha256: [0; 32],
        };
        any_raw |= raw && kind != OpType::Zero && kind != OpType::Copy;
        ops.push((o, blob));
    }
    (ops, any_raw)
}

/// A RECOMPRESS blob whose output is `out`'s length: literal bytes of `out`, then its
/// first bytes (at most 1000) zstd-compressed, their delta taken against the reference's
/// first block (stored); and what it builds.
fn recompress_blob(out: &[u8], reference: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let c = &out[..out.len().min(1000)];
    let compressed = zstd::bulk::compress(c, 3).expect("zstd");
    let lit = &out[..out.len() - compressed.len()];
    let s = &reference[..reference.len().min(BS)];
    let mut b = vec![6u8];
    for v in [3u32, BS as u32, 0, 1] {
        b.extend_from_slice(&v.to_le_bytes()); // level, block size, skip, source blocks
    }
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&(s.len() as u32 | 1 << 24).to_le_bytes());
    b.extend_from_slice(&2u32.to_le_bytes());
    b.push(0);
    b.extend_from_slice(&(lit.len() as u32).to_le_bytes());
    b.push(1);
    b.extend_from_slice(&(c.len() as u32).to_le_bytes());
    b.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
    for (bytes, frame) in [
        (c, patch(c, s)),
        (lit, zstd::bulk::compress(lit, 3).expect("zstd")),
    ] {
        b.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        b.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        b.extend_from_slice(&frame);
    }
    (b, [lit, &compressed[..]].concat())
}

fn payload(ops: &[(Operation, Vec<u8>)], digest: [u8; 32], src: &[u8]) -> Option<Vec<u8>> {
    let mut at = 0u64;
    let mut data = Vec::new();
    let operations: Vec<Operation> = ops
        .iter()
        .map(|(o, blob)| {
            let o = Operation {
                data_offset: at,
                data_length: blob.len() as u64,
                data_sha256: if blob.is_empty() {
                    [0; 32]
                } else {
                    keel_payload::format::data_digest(o.op, blob)
                },
                ..o.clone()
            };
            at += blob.len() as u64;
            data.extend_from_slice(blob);
            o
        })
        .collect();
    let m = Manifest {
        source: Some(ImageId {
            size: src.len() as u64,
            digest: image_digest(src, src.len() as u64).ok()?,
        }),
        target: ImageId {
            size: BLOCKS * BS as u64,
            digest,
        },
        verity: None,
        compatible: "fuzz".into(),
        version: "1".into(),
        recompressor: operations
            .iter()
            .any(|o: &Operation| o.op == OpType::Recompress)
            .then(keel_payload::recompressor),
        operations,
    };
    assemble(&m, &data, key()).ok()
}

fn raw_manifest(rest: &[u8]) {
    let Some((len, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let mlen = (u16::from_le_bytes(*len) as usize).min(rest.len());
    let (raw, blobs) = rest.split_at(mlen);
    if raw.is_empty() {
        return;
    }
    let manifest = &keel_payload::format::pack_manifest(raw).expect("zstd")[..];
    let header = Header {
        version: keel_payload::format::FORMAT_VERSION,
        manifest_len: manifest.len() as u64,
        data_len: blobs.len() as u64,
        key_id: key().public_key().id().0,
    };
    let mut p = header.to_bytes().to_vec();
    p.extend_from_slice(manifest);
    let sig = key().sign(Context::Payload, &p).expect("sign");
    p.extend_from_slice(&sig);
    p.extend_from_slice(blobs);
    assert_eq!(p.len(), HEADER_SIZE + manifest.len() + 64 + blobs.len());
    let src = source();
    let mut target = vec![0u8; BLOCKS as usize * BS];
    let ring = ring();
    if let Ok(done) = apply(
        &p[..],
        Some(&src),
        &mut target,
        &ApplyOptions::new(&ring, VersionCheck::Unchecked),
    ) {
        let size = done.manifest.target.size;
        assert_eq!(
            image_digest(&target[..], size).expect("in memory"),
            done.manifest.target.digest
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        return raw_manifest(rest);
    }
    let src = source();
    let (ops, any_raw) = build(rest, &src);
    if ops.is_empty() {
        return;
    }
    let ring = ring();
    let opts = ApplyOptions::new(&ring, VersionCheck::Unchecked);
    let Some(first) = payload(&ops, [0; 32], &src) else {
        return;
    };
    let mut target = vec![0u8; BLOCKS as usize * BS];
    match apply(&first[..], Some(&src), &mut target, &opts) {
        // Every operation ran; only the digest, unknown until now, differs.
        Err(Error::TargetMismatch(TargetCheck::Digest { .. })) => {}
        // Only the fuzzer's raw blobs may fail to decode.
        Err(e) if any_raw => {
            let _ = e;
            return;
        }
        Err(e) => panic!("well-made operations failed: {e}"),
        Ok(_) => unreachable!("a zero digest matched"),
    }
    let digest = image_digest(&target[..], target.len() as u64).expect("in memory");
    let second = payload(&ops, digest, &src).expect("assembles again");
    // Blocks no operation writes keep what the target had: both runs start from zeros.
    let mut again = vec![0u8; BLOCKS as usize * BS];
    apply(&second[..], Some(&src), &mut again, &opts)
        .expect("the same payload with its digest applies");
    assert_eq!(again, target);
});
