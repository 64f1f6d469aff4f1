//! Bundles (format version 3): several images under one signature, each applied from the
//! one stream into its own target, resumable per image, every byte bound by the signed
//! manifest; payloads of one image (version 2) as before.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use std::io::{Cursor, Read, Seek, SeekFrom};

use keel_payload::format::{
    encode_bundle, pack_manifest, BundleImage, Header, ImageKind, BUNDLE_VERSION, HEADER_SIZE,
};
use keel_payload::{
    generate, generate_bundle, generate_bundle_file, generate_file, read_manifest_at, ApplyOptions,
    BundlePart, Error, GenerateOptions, Payload, VersionCheck,
};
use keel_testsupport::seeded_bytes;
use keel_trust::{Context, Keyring, Signer, SigningKey};

struct Fixture {
    key: SigningKey,
    ring: Keyring,
    usr1: Vec<u8>,
    usr2: Vec<u8>,
    kernel2: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let key = SigningKey::generate().unwrap();
        let mut ring = Keyring::new();
        ring.add(key.public_key().clone()).unwrap();
        let usr1 = seeded_bytes(1, 2 << 20);
        let mut usr2 = usr1.clone();
        usr2[300_000..900_000].copy_from_slice(&seeded_bytes(2, 600_000));
        Fixture {
            key,
            ring,
            usr1,
            usr2,
            // A file image, not a whole number of blocks: runs of new data between
            // zeros, in several of a full payload's 8 MiB units, so that it takes
            // several operations.
            kernel2: {
                let mut k = vec![0u8; (16 << 20) + 300_001];
                for i in 0..3 {
                    let at = i * (8 << 20);
                    k[at..at + 300_000].copy_from_slice(&seeded_bytes(3 + i as u64, 300_000));
                }
                k
            },
        }
    }

    /// A bundle: `usr` a delta from usr1, `kernel` a full file image.
    fn bundle(&self) -> Vec<u8> {
        let parts = [
            BundlePart::slot("usr", Some(&self.usr1), &self.usr2),
            BundlePart::file("kernel", None, &self.kernel2),
        ];
        let opts = GenerateOptions::new("acme-os", "2.0").level(1);
        generate_bundle(&parts, &self.key, &opts, None).unwrap()
    }

    fn opts(&self) -> ApplyOptions<'_> {
        ApplyOptions::new(&self.ring, VersionCheck::Installed("1.0")).compatible("acme-os")
    }
}

/// A stream that counts what was read from it.
struct Counting {
    inner: Cursor<Vec<u8>>,
    read: u64,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl Seek for Counting {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(to)
    }
}

#[test]
fn each_image_goes_into_its_own_target_from_the_one_stream() {
    let f = Fixture::new();
    let bundle = f.bundle();
    let mut p = Payload::open(&bundle[..], &f.ring).unwrap();
    let names: Vec<(&str, ImageKind)> = p
        .images()
        .iter()
        .map(|i| (i.name.as_str(), i.kind))
        .collect();
    assert_eq!(
        names,
        [("usr", ImageKind::Slot), ("kernel", ImageKind::File)]
    );
    assert!(p.images()[0].manifest.source.is_some());
    assert!(p.images()[1].manifest.source.is_none());
    assert_eq!(p.manifest().version, "2.0");
    p.check(&f.opts()).unwrap();
    let mut usr = vec![0u8; f.usr2.len()];
    let mut kernel = vec![0u8; f.kernel2.len()];
    assert_eq!(p.next_image().unwrap().name, "usr");
    p.apply_next(Some(&f.usr1[..]), &mut usr, &f.opts())
        .unwrap();
    assert_eq!(p.next_image().unwrap().name, "kernel");
    p.apply_next(None::<&[u8]>, &mut kernel, &f.opts()).unwrap();
    assert!(usr == f.usr2, "usr differs");
    assert!(kernel == f.kernel2, "the kernel differs");
    assert!(matches!(
        p.apply_next(None::<&[u8]>, &mut kernel, &f.opts()),
        Err(Error::NoImageLeft)
    ));
    // A bundle given where one image is expected is refused, not half applied.
    let p = Payload::open(&bundle[..], &f.ring).unwrap();
    let mut t = vec![0u8; f.usr2.len()];
    let e = p.apply(Some(&f.usr1[..]), &mut t, &f.opts()).unwrap_err();
    assert!(matches!(e, Error::Bundle { images: 2 }), "{e}");
    assert!(t.iter().all(|&b| b == 0));
    // read_manifest gives the first image's manifest (what the release index names).
    let (h, m, _) = read_manifest_at(&mut &bundle[..], &f.ring, keel_trust::unix_now()).unwrap();
    assert_eq!(
        (h.version, m.target.size),
        (BUNDLE_VERSION, f.usr2.len() as u64)
    );
}

/// Stopped in the second image; the next run skips the first (found in place) without
/// reading its data, and resumes the second from its own record.
#[test]
fn a_stop_in_the_second_image_resumes_there() {
    let f = Fixture::new();
    let bundle = f.bundle();
    let dir = tempfile::tempdir().unwrap();
    let records = [dir.path().join("usr"), dir.path().join("kernel")];
    let per = |i: usize| f.opts().state(&records[i]).checkpoint_bytes(64 << 10);
    let mut usr = vec![0u8; f.usr2.len()];
    let mut kernel = vec![0u8; f.kernel2.len()];
    let mut p = Payload::open(&bundle[..], &f.ring).unwrap();
    p.apply_next(Some(&f.usr1[..]), &mut usr, &per(0)).unwrap();
    let half = keel_io::testing::StopHalfWay::default();
    let e = p
        .apply_next(None::<&[u8]>, &mut kernel, &per(1).progress(&half))
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(matches!(p.skip_next(), Err(Error::NoImageLeft)));

    let mut counted = Counting {
        inner: Cursor::new(bundle.clone()),
        read: 0,
    };
    let mut p = Payload::open_seekable(&mut counted, &f.ring).unwrap();
    p.skip_next().unwrap();
    let done = p.apply_next(None::<&[u8]>, &mut kernel, &per(1)).unwrap();
    assert!(done.resumed_at > 0, "{done:?}");
    assert!(kernel == f.kernel2);
    let usr_data = p.images()[0].data_len;
    drop(p);
    assert!(
        counted.read < bundle.len() as u64 - usr_data,
        "read {} of {} bytes",
        counted.read,
        bundle.len()
    );
}

/// Every image's bytes are bound by the one signature: a byte changed in the second
/// image's data fails that image's apply; its manifest changed fails the signature.
#[test]
fn every_image_is_bound_by_the_signature() {
    let f = Fixture::new();
    let bundle = f.bundle();
    let mut bad = bundle.clone();
    let at = bad.len() - 10;
    bad[at] ^= 1;
    let mut p = Payload::open(&bad[..], &f.ring).unwrap();
    let mut usr = vec![0u8; f.usr2.len()];
    let mut kernel = vec![0u8; f.kernel2.len()];
    p.apply_next(Some(&f.usr1[..]), &mut usr, &f.opts())
        .unwrap();
    let e = p
        .apply_next(None::<&[u8]>, &mut kernel, &f.opts())
        .unwrap_err();
    assert!(matches!(e, Error::BlobMismatch { .. }), "{e}");
    let mut bad = bundle.clone();
    bad[HEADER_SIZE + 20] ^= 1;
    assert!(matches!(
        Payload::open(&bad[..], &f.ring),
        Err(Error::BadSignature)
    ));
}

/// A bundle signed with mistakes a generator would never make is refused before any
/// write, naming the field: images for two versions, a name twice, no image.
#[test]
fn a_malformed_bundle_is_refused_by_field() {
    let f = Fixture::new();
    let one = |version: &str| {
        let p = generate(
            None,
            &f.kernel2,
            &f.key,
            &GenerateOptions::new("acme-os", version).level(1),
        )
        .unwrap();
        let p = Payload::open(&p[..], &f.ring).unwrap();
        (p.manifest().clone(), p.images()[0].data_len)
    };
    let image = |name: &str, version: &str| {
        let (manifest, data_len) = one(version);
        BundleImage {
            name: name.into(),
            kind: ImageKind::File,
            data_len,
            manifest,
        }
    };
    let signed = |images: &[BundleImage]| -> Vec<u8> {
        let m = pack_manifest(&encode_bundle(images)).unwrap();
        let data: u64 = images.iter().map(|i| i.data_len).sum();
        let h = Header {
            version: BUNDLE_VERSION,
            manifest_len: m.len() as u64,
            data_len: data,
            key_id: f.key.key_id().0,
        }
        .to_bytes();
        let mut out = h.to_vec();
        out.extend_from_slice(&m);
        let sig = f.key.sign(Context::Payload, &out).unwrap();
        out.extend_from_slice(&sig);
        out.extend(std::iter::repeat_n(0u8, data as usize));
        out
    };
    for (images, field) in [
        (vec![image("a", "2.0"), image("b", "3.0")], "image body"),
        (vec![image("a", "2.0"), image("a", "2.0")], "image name"),
        (vec![image("a/b", "2.0")], "image name"),
        (vec![], "image count"),
    ] {
        match Payload::open(&signed(&images)[..], &f.ring) {
            Err(Error::BadField { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

/// Written to a file as it is encoded (memory bounded whatever the image): the very bytes
/// made in memory, for a payload of one image and for a bundle, an older file replaced
/// whole. An output that cannot be written, or a generation cancelled, is an error that
/// leaves the older file as it was and nothing beside it.
#[test]
fn a_payload_written_to_a_file_is_the_one_made_in_memory() {
    use std::fs;
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("payload");
    fs::write(&out, b"an older payload").unwrap();
    let opts = GenerateOptions::new("acme-os", "2.0").level(1);
    let len = generate_file(Some(&f.usr1), &f.usr2, &f.key, &opts, None, &out).unwrap();
    let made = generate(Some(&f.usr1), &f.usr2, &f.key, &opts).unwrap();
    assert_eq!(len, made.len() as u64);
    assert!(fs::read(&out).unwrap() == made);
    let bundle = dir.path().join("bundle");
    let parts = [
        BundlePart::slot("usr", Some(&f.usr1), &f.usr2),
        BundlePart::file("kernel", None, &f.kernel2),
    ];
    generate_bundle_file(&parts, &f.key, &opts, None, &bundle).unwrap();
    // A full image's data is written after room left for the front (the manifest padded
    // to fill it with a zstd skippable frame): the same images and data, a longer front.
    let (filed, memory) = (fs::read(&bundle).unwrap(), f.bundle());
    let images = |b: &[u8]| Payload::open(b, &f.ring).unwrap().images().to_vec();
    assert_eq!(images(&filed), images(&memory));
    let data: u64 = images(&memory).iter().map(|i| i.data_len).sum();
    assert!(filed.len() > memory.len());
    assert!(filed[filed.len() - data as usize..] == memory[memory.len() - data as usize..]);
    let mut usr = vec![0u8; f.usr2.len()];
    let mut kernel = vec![0u8; f.kernel2.len()];
    let mut p = Payload::open(&filed[..], &f.ring).unwrap();
    p.apply_next(Some(&f.usr1[..]), &mut usr, &f.opts())
        .unwrap();
    p.apply_next(None::<&[u8]>, &mut kernel, &f.opts()).unwrap();
    assert!(usr == f.usr2 && kernel == f.kernel2);

    struct Stop;
    impl keel_payload::Progress for Stop {
        fn progress(&self, _: u64, _: u64) {}
        fn cancelled(&self) -> bool {
            true
        }
    }
    let e = generate_file(Some(&f.usr1), &f.usr2, &f.key, &opts, Some(&Stop), &out).unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e}");
    assert!(
        fs::read(&out).unwrap() == made,
        "the older payload was touched"
    );
    fs::create_dir(dir.path().join("adir")).unwrap();
    for bad in [
        dir.path().join("adir"),
        std::path::PathBuf::from("/dev/null"),
        dir.path().join("no/such/dir/p"),
    ] {
        let e = generate_file(None, &f.usr2, &f.key, &opts, None, &bad).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{}: {e}", bad.display());
    }
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["adir", "bundle", "payload"]);
}
