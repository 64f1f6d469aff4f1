//! A build pipeline signs payloads without holding the key: openssl run as a process, or
//! a callback standing for an HSM; the applier accepts both, and refuses an expired key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use keel_testsupport as tools;

use keel_payload::{apply, generate, ApplyOptions, Error, GenerateOptions, VersionCheck};
use keel_trust::{CallbackSigner, Keyring, OpensslSigner, PublicKey, SigningKey};
use tools::{run_ok, seeded_bytes, tool};

fn payload_applies(p: &[u8], image: &[u8], ring: &Keyring) {
    let mut t = vec![0u8; image.len()];
    let src: Option<&[u8]> = None;
    apply(
        p,
        src,
        &mut t,
        &ApplyOptions::new(ring, VersionCheck::Unchecked),
    )
    .unwrap();
    assert_eq!(t, image);
}

#[test]
fn openssl_as_a_process_signs_payloads() {
    let Some(openssl) = tool("openssl", "openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("release.pem");
    run_ok(
        &openssl,
        &[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            key.to_str().unwrap(),
        ],
    );
    let public = PublicKey::from_pem(&run_ok(
        &openssl,
        &["pkey", "-in", key.to_str().unwrap(), "-pubout"],
    ))
    .unwrap();
    let signer = OpensslSigner::new(&key, public.clone()).with_openssl(&openssl);
    let image = seeded_bytes(1, 300_000);
    let p = generate(None, &image, &signer, &GenerateOptions::new("acme", "2.0")).unwrap();
    let mut ring = Keyring::new();
    ring.add(public).unwrap();
    payload_applies(&p, &image, &ring);
}

#[test]
fn a_callback_signer_and_an_expired_key() {
    let hsm = SigningKey::generate().unwrap();
    let public = hsm.public_key().clone();
    let signer = CallbackSigner::new(public.clone(), move |m: &[u8]| Ok(hsm.sign_raw(m)));
    let image = seeded_bytes(2, 100_000);
    let p = generate(None, &image, &signer, &GenerateOptions::new("acme", "2.0")).unwrap();
    let mut ring = Keyring::new();
    ring.add_until(public, Some(1_000)).unwrap();
    let mut t = vec![0u8; image.len()];
    let src: Option<&[u8]> = None;
    let o = ApplyOptions::new(&ring, VersionCheck::Unchecked).now(1_000);
    apply(&p[..], src, &mut t, &o).unwrap();
    let o = ApplyOptions::new(&ring, VersionCheck::Unchecked).now(1_001);
    let e = apply(&p[..], src, &mut t, &o).unwrap_err();
    assert!(
        matches!(&e, Error::Trust(keel_trust::Error::Expired { .. })),
        "{e}"
    );
}
