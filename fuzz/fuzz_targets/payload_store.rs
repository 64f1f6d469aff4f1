//! The block store's reader and installer on stores whose index is the fuzzer's bytes,
//! correctly signed (the fuzzer plays a trusted but buggy or hostile publisher), followed
//! by the fuzzer's data: the index parser, the leaves' check against the signed root and
//! the install must never panic or allocate past their bounds, and an install that
//! succeeds has written only blocks its checked leaves vouch for.
#![no_main]

use keel_payload::store::{Seed, StoreOptions, StoreSession};
use keel_payload::{ApplyOptions, VersionCheck};
use keel_verity::{BlockHasher, Context, Keyring, Signer, SigningKey};
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
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    // The top bit picks the format version (2 allows XZ runs), the rest the index length.
    let len = u16::from_le_bytes(*len);
    let version = 1 + u32::from(len >> 15);
    let ilen = ((len & 0x7fff) as usize).min(rest.len());
    let (index, body) = rest.split_at(ilen);
    if index.is_empty() {
        return;
    }
    let mut store = b"KEELSTOR".to_vec();
    store.extend_from_slice(&version.to_le_bytes());
    store.extend_from_slice(&0u32.to_le_bytes());
    store.extend_from_slice(&(index.len() as u64).to_le_bytes());
    store.extend_from_slice(&(body.len() as u64).to_le_bytes());
    store.extend_from_slice(&key().public_key().id().0);
    store.extend_from_slice(index);
    let sig = key().sign(Context::Payload, &store).expect("sign");
    store.extend_from_slice(&sig);
    store.extend_from_slice(body);
    let mut ring = Keyring::new();
    ring.add(key().public_key().clone()).expect("one key");
    let opts = StoreOptions::new(ApplyOptions::new(&ring, VersionCheck::Unchecked));
    let Ok(s) = StoreSession::open(&store[..], &opts) else {
        return;
    };
    // Images the fuzzer describes may be large: install only small ones.
    let size = s.index().image.size;
    if size > 1 << 20 {
        return;
    }
    let seed: Vec<u8> = (0..64 * 4096).map(|i| (i % 253) as u8).collect();
    let seeds = [Seed { image: &seed, tree: None }];
    let mut target = vec![0u8; size as usize];
    if s.install(&seeds, &mut target, &opts).is_ok() {
        let h = BlockHasher::new(s.tree().params());
        for (b, block) in target.chunks_exact(4096).enumerate() {
            assert_eq!(Some(h.hash(block).as_bytes()), s.tree().leaf(b as u64));
        }
    }
});
