//! Signed root descriptors against OpenSSL: keys from `openssl genpkey`, signatures made
//! by `openssl pkeyutl -sign -rawin` over the root-descriptor context and the descriptor
//! verify in Keel, and Keel's verify in OpenSSL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::fs;

use common::{run, run_ok, tool};
use keel_verity::sign::DESCRIPTOR_SIZE;
use keel_verity::{
    Context, HashAlgorithm, HashType, KeyId, Keyring, PublicKey, RootDescriptor, SignRoot,
    SignedRoot, SigningKey, VerifyRoot, VerityParams,
};
use sha2::Digest;

fn descriptor() -> RootDescriptor {
    let p = VerityParams::new(
        HashType::Normal,
        HashAlgorithm::Sha256,
        4096,
        4096,
        262144,
        vec![0xab; 32],
    )
    .unwrap();
    RootDescriptor::new(p, &common::seeded_bytes(1, 32)).unwrap()
}

#[test]
fn openssl_keys_and_signatures_verify_in_keel() {
    let Some(openssl) = tool("openssl", "openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let ks = key.to_str().unwrap();
    run_ok(&openssl, &["genpkey", "-algorithm", "ed25519", "-out", ks]);
    let signer = SigningKey::from_pkcs8_pem(&fs::read_to_string(&key).unwrap()).unwrap();

    // The key id is the SHA-256 of the DER public key as openssl prints it.
    // `openssl pkey -in KEY -pubout [FORMAT...] -out FILE`
    let pubout = |name: &str, format: &[&str]| {
        let out = dir.path().join(name);
        let args = [
            &["pkey", "-in", ks, "-pubout"][..],
            format,
            &["-out", out.to_str().unwrap()],
        ];
        run_ok(&openssl, &args.concat());
        out
    };
    let der = pubout("pub.der", &["-outform", "DER"]);
    let id: [u8; 32] = sha2::Sha256::digest(fs::read(&der).unwrap()).into();
    assert_eq!(signer.public_key().id(), KeyId(id));
    let pubpem = pubout("pub.pem", &[]);
    let public = PublicKey::from_pem(&fs::read_to_string(&pubpem).unwrap()).unwrap();
    assert_eq!(&public, signer.public_key());

    let desc = descriptor();
    // What is signed: the root-descriptor context tag, then the descriptor.
    let desc_path = dir.path().join("desc.bin");
    fs::write(
        &desc_path,
        Context::RootDescriptor.message(&desc.to_bytes()),
    )
    .unwrap();
    let sig_path = dir.path().join("sig.bin");
    run_ok(
        &openssl,
        &[
            "pkeyutl",
            "-sign",
            "-rawin",
            "-inkey",
            ks,
            "-in",
            desc_path.to_str().unwrap(),
            "-out",
            sig_path.to_str().unwrap(),
        ],
    );
    let sig: [u8; 64] = fs::read(&sig_path).unwrap().try_into().unwrap();
    // Ed25519 is deterministic: Keel's own signature is the same bytes.
    assert_eq!(signer.sign_root(&desc).unwrap().signature(), &sig);

    let mut ring = Keyring::new();
    ring.add(public).unwrap();
    let signed = SignedRoot::from_parts(desc.to_bytes(), KeyId(id), sig);
    let v = ring.verify_root(&signed.to_bytes()).unwrap();
    assert_eq!(v.descriptor, desc);

    let mut tampered: [u8; DESCRIPTOR_SIZE] = desc.to_bytes();
    tampered[60] ^= 1;
    let bad = SignedRoot::from_parts(tampered, KeyId(id), sig);
    assert!(ring.verify_root(&bad.to_bytes()).is_err());
}

#[test]
fn keel_keys_and_signatures_verify_in_openssl() {
    let Some(openssl) = tool("openssl", "openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let signer = SigningKey::generate().unwrap();
    let key = dir.path().join("keel.pem");
    fs::write(&key, signer.to_pkcs8_pem().unwrap()).unwrap();
    let pubpem = dir.path().join("keel.pub.pem");
    fs::write(&pubpem, signer.public_key().to_pem().unwrap()).unwrap();
    // openssl reads Keel's private key and derives the same public key.
    let derived = run_ok(&openssl, &["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    assert_eq!(derived, fs::read_to_string(&pubpem).unwrap());

    let signed = signer.sign_root(&descriptor()).unwrap();
    let desc_path = dir.path().join("desc.bin");
    fs::write(
        &desc_path,
        Context::RootDescriptor.message(signed.descriptor_bytes()),
    )
    .unwrap();
    let sig_path = dir.path().join("sig.bin");
    fs::write(&sig_path, signed.signature()).unwrap();
    let args = |d: &str| {
        vec![
            "pkeyutl".to_string(),
            "-verify".into(),
            "-pubin".into(),
            "-inkey".into(),
            pubpem.to_str().unwrap().into(),
            "-rawin".into(),
            "-in".into(),
            d.to_string(),
            "-sigfile".into(),
            sig_path.to_str().unwrap().into(),
        ]
    };
    let a = args(desc_path.to_str().unwrap());
    let out = run_ok(&openssl, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("Signature Verified Successfully"), "{out}");
    // And openssl refuses a changed descriptor: the check above can fail.
    let mut t = Context::RootDescriptor.message(signed.descriptor_bytes());
    t[100] ^= 1;
    let bad = dir.path().join("bad.bin");
    fs::write(&bad, t).unwrap();
    let a = args(bad.to_str().unwrap());
    let out = run(&openssl, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
}
