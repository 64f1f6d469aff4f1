//! The applier on payloads whose manifest and data are arbitrary but correctly signed (the
//! fuzzer plays a trusted but buggy or hostile generator): never a panic; a success means
//! the target is exactly what the manifest promised.
#![no_main]

use keel_payload::format::{Header, HEADER_SIZE};
use keel_payload::{apply, ApplyOptions, VersionCheck};
use keel_verity::{Keyring, SigningKey};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        SigningKey::from_pkcs8_pem(pem).expect("test key")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else { return };
    let mlen = (u16::from_le_bytes(*len) as usize).min(rest.len());
    let (raw, blobs) = rest.split_at(mlen);
    if raw.is_empty() {
        return;
    }
    // Stored compressed, as a generator would; the parser sees the fuzzer's bytes.
    let manifest = &keel_payload::format::pack_manifest(raw).expect("zstd")[..];
    let header = Header { manifest_len: manifest.len() as u64, data_len: blobs.len() as u64, key_id: key().public_key().id().0 };
    let mut signed = header.to_bytes().to_vec();
    signed.extend_from_slice(manifest);
    let sig = key().sign_raw(&signed);
    let mut payload = signed;
    payload.extend_from_slice(&sig);
    payload.extend_from_slice(blobs);
    assert_eq!(payload.len(), HEADER_SIZE + manifest.len() + 64 + blobs.len());
    let mut ring = Keyring::new();
    ring.add(key().public_key().clone()).expect("one key");
    let source: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut target = vec![0u8; 64 * 1024];
    let opts = ApplyOptions::new(&ring, VersionCheck::Unchecked);
    if let Ok(done) = apply(&payload[..], Some(&source), &mut target, &opts) {
        let size = done.manifest.target.size;
        assert_eq!(keel_payload::format::image_digest(&target[..], size).expect("in memory"), done.manifest.target.digest);
    }
});
