//! The signed release index: every refusal (below threshold, wrong context, changed
//! bytes, rollback, freeze, bad rotation) with its error, the choice of delta or full
//! payload, downgrades and staged rollouts; and an index served by nginx.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use keel_release::{
    in_rollout, sign_envelope, Artifact, Delta, Index, IndexError, Release, Root, TrustedRoot,
};
use keel_trust::{Context, Signer, SigningKey};
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000;

fn keys(n: usize) -> Vec<SigningKey> {
    (0..n).map(|_| SigningKey::generate().unwrap()).collect()
}

fn root_doc(version: u64, threshold: usize, keys: &[SigningKey]) -> Vec<u8> {
    let r = Root {
        kind: "keel-root".into(),
        version,
        expires: NOW + 1_000_000,
        threshold,
        keys: keys
            .iter()
            .map(|k| hex::encode(k.public_key().to_bytes()))
            .collect(),
    };
    serde_json::to_vec(&r).unwrap()
}

fn signed(doc: &[u8], ctx: Context, by: &[&SigningKey]) -> Vec<u8> {
    let signers: Vec<&dyn Signer> = by.iter().map(|k| *k as &dyn Signer).collect();
    sign_envelope(doc, ctx, &signers).unwrap()
}

fn artifact(name: &str) -> Artifact {
    Artifact {
        url: format!("payloads/{name}"),
        size: 1000,
        sha256: "00".repeat(32),
        manifest_sha256: Some("11".repeat(32)),
    }
}

fn index_doc(serial: u64, expires: u64) -> Vec<u8> {
    let i = Index {
        kind: "keel-index".into(),
        serial,
        expires,
        timestamp: None,
        releases: vec![
            Release {
                version: "2.0".into(),
                compatible: "acme-os".into(),
                full: artifact("2.0.full"),
                store: None,
                deltas: vec![Delta {
                    from_version: "1.0".into(),
                    source_digest: "ab".repeat(32),
                    source_size: 1 << 20,
                    artifact: artifact("1.0-2.0.delta"),
                }],
                rollout_percent: 100,
            },
            Release {
                version: "3.0".into(),
                compatible: "acme-os".into(),
                full: artifact("3.0.full"),
                store: None,
                deltas: vec![],
                rollout_percent: 0,
            },
            Release {
                version: "9.0".into(),
                compatible: "other-os".into(),
                full: artifact("other"),
                store: None,
                deltas: vec![],
                rollout_percent: 100,
            },
        ],
    };
    serde_json::to_vec(&i).unwrap()
}

#[test]
fn a_threshold_signed_index_is_accepted_and_every_attack_refused() {
    let k = keys(3);
    let root = TrustedRoot::initial(
        &signed(&root_doc(1, 2, &k), Context::TrustRoot, &[&k[0], &k[1]]),
        NOW,
    )
    .unwrap();
    let doc = index_doc(5, NOW + 3600);
    let good = signed(&doc, Context::ReleaseIndex, &[&k[1], &k[2]]);
    assert_eq!(root.verify_index(&good, Some(4), NOW).unwrap().serial, 5);

    let refuse =
        |env: &[u8], last: Option<u64>, now: u64| root.verify_index(env, last, now).unwrap_err();
    // One key is below a threshold of two; the same key twice counts once.
    let e = refuse(&signed(&doc, Context::ReleaseIndex, &[&k[0]]), None, NOW);
    assert!(
        matches!(
            e,
            IndexError::Threshold {
                valid: 1,
                threshold: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = refuse(
        &signed(&doc, Context::ReleaseIndex, &[&k[0], &k[0]]),
        None,
        NOW,
    );
    assert!(matches!(e, IndexError::Threshold { valid: 1, .. }), "{e}");
    // A stranger's signatures do not count.
    let other = keys(2);
    let e = refuse(
        &signed(&doc, Context::ReleaseIndex, &[&other[0], &other[1]]),
        None,
        NOW,
    );
    assert!(matches!(e, IndexError::Threshold { valid: 0, .. }), "{e}");
    // Signatures made for another kind of document do not count.
    let e = refuse(&signed(&doc, Context::Payload, &[&k[0], &k[1]]), None, NOW);
    assert!(matches!(e, IndexError::Threshold { valid: 0, .. }), "{e}");
    // The signed bytes changed.
    let mut env: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let changed = hex::encode(index_doc(6, NOW + 3600));
    env["signed"] = serde_json::Value::String(changed);
    let e = refuse(&serde_json::to_vec(&env).unwrap(), None, NOW);
    assert!(matches!(e, IndexError::Threshold { valid: 0, .. }), "{e}");
    // The same index again is fine (a failed install is retried); an older one is a
    // rollback.
    assert!(root.verify_index(&good, Some(5), NOW).is_ok());
    for last in [6, 9] {
        let e = refuse(&good, Some(last), NOW);
        assert!(matches!(e, IndexError::Rollback { serial: 5, .. }), "{e}");
    }
    // Freeze: an index past its expiry.
    let e = refuse(&good, None, NOW + 3601);
    assert!(
        matches!(
            e,
            IndexError::Expired {
                what: "release index",
                ..
            }
        ),
        "{e}"
    );
    // A digest that is not one is named by its place.
    for (field, bad) in [
        ("full.sha256", "00".repeat(31)),
        ("deltas[0].sha256", "zz".repeat(32)),
        ("deltas[0].source_digest", String::new()),
    ] {
        let mut i: Index = serde_json::from_slice(&doc).unwrap();
        match field {
            "full.sha256" => i.releases[0].full.sha256 = bad,
            "deltas[0].sha256" => i.releases[0].deltas[0].artifact.sha256 = bad,
            _ => i.releases[0].deltas[0].source_digest = bad,
        }
        let env = signed(
            &serde_json::to_vec(&i).unwrap(),
            Context::ReleaseIndex,
            &[&k[1], &k[2]],
        );
        let e = refuse(&env, None, NOW).to_string();
        assert!(e.contains(&format!("releases[0].{field}")), "{field}: {e}");
    }
    // Garbage is a clear error, never a panic.
    for junk in [
        &b"{}"[..],
        b"not json",
        b"{\"signed\":\"zz\",\"signatures\":[]}",
    ] {
        assert!(matches!(
            refuse(junk, None, NOW),
            IndexError::Malformed { .. }
        ));
    }
}

#[test]
fn roots_rotate_only_with_the_old_threshold_and_the_next_version() {
    let old = keys(2);
    let new = keys(2);
    let root = TrustedRoot::initial(
        &signed(
            &root_doc(1, 2, &old),
            Context::TrustRoot,
            &[&old[0], &old[1]],
        ),
        NOW,
    )
    .unwrap();
    let doc2 = root_doc(2, 2, &new);
    // Signed by both thresholds: accepted; the new keys now sign indexes.
    let both = signed(
        &doc2,
        Context::TrustRoot,
        &[&old[0], &old[1], &new[0], &new[1]],
    );
    let rotated = root.rotate(&both, NOW).unwrap();
    assert_eq!(rotated.root().version, 2);
    let idx = signed(
        &index_doc(1, NOW + 10),
        Context::ReleaseIndex,
        &[&new[0], &new[1]],
    );
    assert!(rotated.verify_index(&idx, None, NOW).is_ok());
    assert!(
        root.verify_index(&idx, None, NOW).is_err(),
        "the old root trusts the new keys"
    );
    // Only the new keys: someone who holds new keys cannot take over.
    let e = root
        .rotate(&signed(&doc2, Context::TrustRoot, &[&new[0], &new[1]]), NOW)
        .unwrap_err();
    assert!(matches!(e, IndexError::Threshold { .. }), "{e}");
    // Only the old keys: the new root must be signed by its own keys too.
    let e = root
        .rotate(&signed(&doc2, Context::TrustRoot, &[&old[0], &old[1]]), NOW)
        .unwrap_err();
    assert!(matches!(e, IndexError::Threshold { .. }), "{e}");
    // Skipping a version.
    let doc3 = root_doc(3, 2, &new);
    let e = root
        .rotate(
            &signed(
                &doc3,
                Context::TrustRoot,
                &[&old[0], &old[1], &new[0], &new[1]],
            ),
            NOW,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            IndexError::RootVersion {
                found: 3,
                expected: 2
            }
        ),
        "{e}"
    );
    // A root whose threshold cannot be met is malformed.
    let e = TrustedRoot::initial(
        &signed(
            &root_doc(1, 3, &old),
            Context::TrustRoot,
            &[&old[0], &old[1]],
        ),
        NOW,
    )
    .unwrap_err();
    assert!(matches!(e, IndexError::Malformed { .. }), "{e}");
}

#[test]
fn the_choice_is_the_delta_from_the_booted_image_else_the_full_payload() {
    let i: Index = serde_json::from_slice(&index_doc(1, NOW)).unwrap();
    let digest = [0xab; 32];
    let c = i
        .choose("acme-os", "1.0", Some(&digest), "machine-1", false)
        .unwrap();
    assert_eq!(
        (c.version.as_str(), c.delta, c.artifact.url.as_str()),
        ("2.0", true, "payloads/1.0-2.0.delta")
    );
    // Another image under the same version: the full payload.
    let c = i
        .choose("acme-os", "1.0", Some(&[0xcd; 32]), "machine-1", false)
        .unwrap();
    assert_eq!(
        (c.delta, c.artifact.url.as_str()),
        (false, "payloads/2.0.full")
    );
    // Nothing newer for this system, and 3.0 is rolled out to no machine.
    assert_eq!(i.choose("acme-os", "2.0", None, "machine-1", false), None);
    // An index offering only older versions: a downgrade only when allowed.
    assert_eq!(i.choose("acme-os", "2.5", None, "m", false), None);
    assert_eq!(
        i.choose("acme-os", "2.5", None, "m", true).unwrap().version,
        "2.0"
    );
    assert_eq!(i.choose("nobody-os", "1.0", None, "m", false), None);
}

#[test]
fn artifact_urls_resolve_against_the_index() {
    use keel_release::resolve;
    assert_eq!(
        resolve("https://h/os/index.json", "p/x.payload"),
        "https://h/os/p/x.payload"
    );
    assert_eq!(
        resolve("https://h/os/index.json", "https://cdn/x"),
        "https://cdn/x"
    );
}

#[test]
fn a_staged_rollout_offers_a_release_to_its_share_of_machines() {
    let machines: Vec<String> = (0..2000).map(|i| format!("machine-{i}")).collect();
    for percent in [0u8, 10, 50, 100] {
        let n = machines
            .iter()
            .filter(|m| in_rollout(m, "2.0", percent))
            .count();
        let want = 2000 * usize::from(percent) / 100;
        assert!(n.abs_diff(want) <= 100, "{percent}%: {n} of 2000");
    }
    // Growing the percentage only adds machines.
    for m in &machines {
        if in_rollout(m, "2.0", 10) {
            assert!(in_rollout(m, "2.0", 50));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Any index below the last serial, or past its expiry, is refused; any other is
    /// accepted.
    #[test]
    fn serial_and_expiry_decide(serial in 0u64..20, last in proptest::option::of(0u64..20), expires_in in -5i64..5) {
        let k = keys(1);
        let root = TrustedRoot::initial(&signed(&root_doc(1, 1, &k), Context::TrustRoot, &[&k[0]]), NOW).unwrap();
        let expires = NOW.checked_add_signed(expires_in).unwrap();
        let env = signed(&index_doc(serial, expires), Context::ReleaseIndex, &[&k[0]]);
        let r = root.verify_index(&env, last, NOW);
        let fine = last.is_none_or(|l| serial >= l) && NOW <= expires;
        prop_assert_eq!(r.is_ok(), fine, "{:?}", r.err());
    }
}

/// The index and a payload fetched from nginx: the agent's whole check.
#[test]
fn an_index_served_by_nginx_is_fetched_verified_and_followed() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(www.join("payloads")).unwrap();
    let Some(server) = keel_testsupport::nginx::serve(&www, &dir.path().join("nginx")) else {
        return;
    };
    let k = keys(1);
    let root = TrustedRoot::initial(
        &signed(&root_doc(1, 1, &k), Context::TrustRoot, &[&k[0]]),
        NOW,
    )
    .unwrap();
    std::fs::write(
        www.join("index.json"),
        signed(&index_doc(7, NOW + 60), Context::ReleaseIndex, &[&k[0]]),
    )
    .unwrap();
    let url = format!("{}/index.json", server.base);
    let mut r = keel_fetch::HttpReader::new(&url, keel_fetch::FetchOptions::default()).unwrap();
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes).unwrap();
    let index = root.verify_index(&bytes, Some(6), NOW).unwrap();
    let choice = index.choose("acme-os", "1.0", None, "m", false).unwrap();
    assert_eq!(choice.artifact.url, "payloads/2.0.full");
}
