//! keel-fetch's index and root envelopes on arbitrary bytes: never a panic, and nothing
//! unsigned is ever accepted (the fuzzer holds no key the root trusts).
#![no_main]

use std::sync::OnceLock;

use keel_release::{sign_envelope, TrustedRoot};
use keel_trust::{Context, Signer, SigningKey};
use libfuzzer_sys::fuzz_target;

fn root() -> &'static TrustedRoot {
    static ROOT: OnceLock<TrustedRoot> = OnceLock::new();
    ROOT.get_or_init(|| {
        let key = SigningKey::generate().expect("key");
        let doc = format!(
            "{{\"type\":\"keel-root\",\"version\":1,\"expires\":4102444800,\"threshold\":1,\"keys\":[\"{}\"]}}",
            hex::encode(key.public_key().to_bytes())
        );
        let signers: [&dyn Signer; 1] = [&key];
        let env = sign_envelope(doc.as_bytes(), Context::TrustRoot, &signers).expect("sign");
        TrustedRoot::initial(&env, 1_800_000_000).expect("root")
    })
}

fuzz_target!(|data: &[u8]| {
    assert!(
        root().verify_index(data, None, 1_800_000_000).is_err(),
        "an unsigned index passed"
    );
    assert!(
        root().rotate(data, 1_800_000_000).is_err(),
        "an unsigned root passed"
    );
    let _ = TrustedRoot::initial(data, 1_800_000_000);
});
