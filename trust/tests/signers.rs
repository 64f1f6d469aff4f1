//! Every kind of signer makes signatures the keyring accepts in their context only:
//! openssl run as a process (with a key openssl made), a callback, a key in memory;
//! expired and unknown keys are refused.

use keel_testsupport as tools;

use keel_trust::{
    CallbackSigner, Context, Error, Keyring, OpensslSigner, PublicKey, Signer, SigningKey,
};
use tools::{run_ok, tool};

const NOW: u64 = 1_800_000_000;

#[test]
fn openssl_as_a_process_signs_with_a_key_it_made() {
    let Some(openssl) = tool("openssl", "openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let k = key.to_str().unwrap();
    run_ok(&openssl, &["genpkey", "-algorithm", "ed25519", "-out", k]);
    let pub_pem = run_ok(&openssl, &["pkey", "-in", k, "-pubout"]);
    let public = PublicKey::from_pem(&pub_pem).unwrap();
    // The key id is what openssl and sha256sum give for the DER public key.
    let der = dir.path().join("pub.der");
    run_ok(
        &openssl,
        &[
            "pkey",
            "-in",
            k,
            "-pubout",
            "-outform",
            "DER",
            "-out",
            der.to_str().unwrap(),
        ],
    );
    let digest = sha2_hex(&std::fs::read(&der).unwrap());
    assert_eq!(public.id().to_string(), digest);

    let signer = OpensslSigner::new(&key, public.clone()).with_openssl(&openssl);
    let sig = signer.sign(Context::Payload, b"a manifest").unwrap();
    let mut ring = Keyring::new();
    ring.add(public.clone()).unwrap();
    ring.verify(&public.id(), Context::Payload, b"a manifest", &sig, NOW)
        .unwrap();
    assert!(matches!(
        ring.verify(
            &public.id(),
            Context::RootDescriptor,
            b"a manifest",
            &sig,
            NOW
        ),
        Err(Error::BadSignature(_))
    ));
    // The same key read by Keel signs identically (Ed25519 is deterministic).
    let mem = SigningKey::from_pkcs8_pem(&std::fs::read_to_string(&key).unwrap()).unwrap();
    assert_eq!(mem.sign(Context::Payload, b"a manifest").unwrap(), sig);

    // A signer given the wrong public key is caught before its signature leaves it.
    let other = SigningKey::generate().unwrap().public_key().clone();
    let wrong = OpensslSigner::new(&key, other).with_openssl(&openssl);
    assert!(matches!(
        wrong.sign(Context::Payload, b"x"),
        Err(Error::SignerKeyMismatch(_))
    ));
    // A key openssl cannot read is openssl's error, reported.
    let bad = OpensslSigner::new(dir.path().join("missing.pem"), public).with_openssl(&openssl);
    let e = bad.sign(Context::Payload, b"x").unwrap_err();
    assert!(e.to_string().contains("openssl pkeyutl failed"), "{e}");
}

fn sha2_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn a_callback_signer_stands_for_an_hsm() {
    let hsm = SigningKey::generate().unwrap();
    let public = hsm.public_key().clone();
    let signer = CallbackSigner::new(public.clone(), move |m: &[u8]| Ok(hsm.sign_raw(m)));
    let sig = signer.sign(Context::ReleaseIndex, b"index").unwrap();
    let mut ring = Keyring::new();
    ring.add(public.clone()).unwrap();
    ring.verify(&public.id(), Context::ReleaseIndex, b"index", &sig, NOW)
        .unwrap();
    let failing = CallbackSigner::new(public, |_: &[u8]| Err("the HSM is offline".into()));
    let e = failing.sign(Context::ReleaseIndex, b"index").unwrap_err();
    assert!(e.to_string().contains("offline"), "{e}");
}

#[test]
fn keys_expire_and_unknown_keys_are_refused() {
    let k = SigningKey::generate().unwrap();
    let sig = k.sign(Context::Payload, b"m").unwrap();
    let mut ring = Keyring::new();
    ring.add_until(k.public_key().clone(), Some(NOW)).unwrap();
    assert!(matches!(
        ring.add(k.public_key().clone()),
        Err(Error::Duplicate(_))
    ));
    ring.verify(&k.key_id(), Context::Payload, b"m", &sig, NOW)
        .unwrap();
    assert!(matches!(
        ring.verify(&k.key_id(), Context::Payload, b"m", &sig, NOW + 1),
        Err(Error::Expired { not_after: NOW, .. })
    ));
    let stranger = SigningKey::generate().unwrap();
    assert!(matches!(
        ring.verify(&stranger.key_id(), Context::Payload, b"m", &sig, NOW),
        Err(Error::Untrusted(_))
    ));
    assert!(ring
        .verify(&k.key_id(), Context::Payload, b"n", &sig, NOW)
        .is_err());
    assert!(ring.remove(&k.key_id()));
    assert!(ring.get(&k.key_id()).is_none());
}
