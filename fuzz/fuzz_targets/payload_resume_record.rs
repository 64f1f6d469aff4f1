//! A resume record of arbitrary bytes beside a valid payload: whatever the record says, the
//! apply ends with the exact target (the record is used only when the target holds what
//! it promises, and is otherwise discarded), and the record is gone afterwards.
#![no_main]

use keel_payload::{apply, generate, ApplyOptions, GenerateOptions, VersionCheck};
use keel_verity::{Keyring, SigningKey};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct Case {
    ring: Keyring,
    payload: Vec<u8>,
    source: Vec<u8>,
    target: Vec<u8>,
    dir: std::path::PathBuf,
}

fn case() -> &'static Case {
    static C: OnceLock<Case> = OnceLock::new();
    C.get_or_init(|| {
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let key = SigningKey::from_pkcs8_pem(pem).expect("test key");
        let source: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut target = source.clone();
        target[5000..9000].fill(3);
        target[100_000..180_000].fill(0);
        let mut o = GenerateOptions::new("fuzz", "2");
        o.level = 1;
        let payload = generate(Some(&source), &target, &key, &o).expect("generate");
        let mut ring = Keyring::new();
        ring.add(key.public_key().clone()).expect("one key");
        let dir = std::env::temp_dir().join(format!("keel-fuzz-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Case { ring, payload, source, target, dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let c = case();
    let state = c.dir.join("state");
    std::fs::write(&state, data).expect("write record");
    let opts = ApplyOptions::new(&c.ring, VersionCheck::Unchecked).state(&state);
    // The target as a half-done earlier run could have left it: the fuzzer's bytes decide.
    let mut t = vec![0u8; c.target.len()];
    if let Some(&b) = data.first() {
        let n = (usize::from(b) * 1024).min(t.len());
        t[..n].copy_from_slice(&c.target[..n]);
    }
    apply(&c.payload[..], Some(&c.source), &mut t, &opts).expect("a record never blocks an apply");
    assert!(t == c.target, "the target is exact");
    assert!(!state.exists(), "the record is removed after success");
});
