//! Every example configuration passes; every rule has a failing case whose line and column
//! are asserted; drop-ins point at their own file; TOML and JSON round-trip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

use keel_config::{load_json, load_sources, to_json, to_toml, Severity};

const BASE: &str = r#"version = "1"
compatible = "acme"

[boot]
backend = "gpt-flatcar"

[[slot]]
name = "usr.a"
class = "usr"
device = "PARTLABEL=USR-A"

[[slot]]
name = "usr.b"
class = "usr"
device = "PARTLABEL=USR-B"

[verity]
algorithm = "sha256"

[[trust.key]]
id = "k1"
ed25519 = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
"#;

fn one(text: &str) -> keel_config::Loaded {
    load_sources(&[("system.toml".to_string(), text.to_string())])
}

#[test]
fn example_configurations_pass() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/configs");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let l = load_sources(&[(p.display().to_string(), text)]);
        assert!(l.findings.is_empty(), "{}: {:?}", p.display(), l.findings);
        let c = l.config.unwrap();
        // TOML and JSON round trips give the same model.
        let again = one(&to_toml(&c).unwrap()).config.unwrap();
        assert_eq!(again, c);
        let from_json = load_json("x.json", &to_json(&c).unwrap()).config.unwrap();
        assert_eq!(from_json, c);
        n += 1;
    }
    assert_eq!(n, 7, "one example per boot backend");
    assert!(one(BASE).findings.is_empty(), "{:?}", one(BASE).findings);
}

/// Replace `from` with `to` in BASE (which must contain it) and expect an error at
/// `line:col` with `path` and `msg` in it.
fn expect(from: &str, to: &str, path: &str, line: usize, col: usize, msg: &str) {
    assert!(BASE.contains(from), "{from}");
    let l = one(&BASE.replacen(from, to, 1));
    let f = l
        .findings
        .iter()
        .find(|f| f.path == path && f.severity == Severity::Error)
        .unwrap_or_else(|| panic!("no error at {path} for {to:?}: {:?}", l.findings));
    assert_eq!((f.line, f.column), (line, col), "{f}");
    assert!(f.message.contains(msg), "{f}");
    assert!(l.config.is_none());
    assert_eq!(
        f.to_string(),
        format!("system.toml:{line}:{col}: error: {path}: {}", f.message)
    );
}

#[test]
fn every_rule_has_a_failing_case() {
    // A path relative to whatever directory the agent runs in; an empty one.
    expect(
        "backend = \"gpt-flatcar\"",
        "backend = \"gpt-flatcar\"\ndisk = \"images/disk.img\"",
        "boot.disk",
        6,
        8,
        "an absolute path is needed",
    );
    expect(
        "backend = \"gpt-flatcar\"",
        "backend = \"gpt-flatcar\"\ndisk = \"\"",
        "boot.disk",
        6,
        8,
        "an absolute path is needed",
    );
    expect(
        "version = \"1\"",
        "version = \"2.0\"",
        "version",
        1,
        11,
        "schema version 2",
    );
    expect(
        "version = \"1\"",
        "version = \"one\"",
        "version",
        1,
        11,
        "not a version",
    );
    expect(
        "compatible = \"acme\"",
        "compatible = \" \"",
        "compatible",
        2,
        14,
        "empty",
    );
    expect(
        "compatible = \"acme\"",
        "compatible = \"acme\"\ncolour = \"red\"",
        "colour",
        3,
        1,
        "unknown key",
    );
    expect(
        "backend = \"gpt-flatcar\"",
        "backend = \"lilo\"",
        "boot.backend",
        5,
        11,
        "expected one of gpt-chromeos, gpt-flatcar, grubenv",
    );
    expect(
        "backend = \"gpt-flatcar\"",
        "backend = \"gpt-flatcar\"\ngrubenv = \"/boot/grubenv\"",
        "boot.grubenv",
        6,
        11,
        "belongs to the grubenv backend",
    );
    expect(
        "backend = \"gpt-flatcar\"",
        "backend = \"uboot\"",
        "boot.backend",
        5,
        11,
        "needs `env-file`",
    );
    expect(
        "backend = \"gpt-flatcar\"",
        "backend = \"android-misc\"",
        "boot.backend",
        5,
        11,
        "needs `misc-device`",
    );
    expect(
        "backend = \"gpt-flatcar\"",
        "backend = \"grubenv\"\nattempts = 2",
        "boot.attempts",
        6,
        12,
        "allows 1 to 1",
    );
    expect(
        "backend = \"gpt-flatcar\"",
        "backend = \"uboot\"\nenv-file = \"/e\"\nenv-size = 4",
        "boot.env-size",
        7,
        12,
        "expected 16",
    );
    expect(
        "backend = \"gpt-flatcar\"",
        "backend = \"gpt-flatcar\"\nattempts = \"three\"",
        "boot.attempts",
        6,
        12,
        "expected a whole number from 0 to 255, found the string \"three\"",
    );
    expect(
        "name = \"usr.b\"",
        "name = \"usr.a\"",
        "slot[1].name",
        13,
        8,
        "already used by slot[0]",
    );
    expect(
        "class = \"usr\"\ndevice = \"PARTLABEL=USR-B\"",
        "class = \"root\"\ndevice = \"PARTLABEL=USR-B\"",
        "slot[0].class",
        9,
        9,
        "A/B slots come in pairs",
    );
    expect(
        "device = \"PARTLABEL=USR-A\"",
        "device = \"sda1\"",
        "slot[0].device",
        10,
        10,
        "expected a path",
    );
    expect(
        "device = \"PARTLABEL=USR-A\"",
        "device = \"PARTUUID=xyz\"",
        "slot[0].device",
        10,
        10,
        "PARTUUID=GUID",
    );
    expect(
        "device = \"PARTLABEL=USR-A\"",
        "device = \"PARTLABEL=USR-A\"\npartition-type = \"ntfs\"",
        "slot[0].partition-type",
        11,
        18,
        "expected usr",
    );
    expect(
        "device = \"PARTLABEL=USR-A\"",
        "device = \"PARTLABEL=USR-A\"\nbootname = \"E\"",
        "slot[0].bootname",
        11,
        12,
        "expected A, B",
    );
    expect(
        "device = \"PARTLABEL=USR-B\"",
        "device = \"PARTLABEL=USR-B\"\nbootname = \"A\"\n",
        "slot[1].bootname",
        16,
        12,
        "already used",
    );
    expect(
        "device = \"PARTLABEL=USR-A\"",
        "device = \"PARTLABEL=USR-A\"\nmount = \"/usr\"",
        "slot[0].mount",
        11,
        1,
        "unknown key",
    );
    expect(
        "algorithm = \"sha256\"",
        "algorithm = \"md5\"",
        "verity.algorithm",
        18,
        13,
        "supported: sha1, sha224, sha256, sha384, sha512",
    );
    expect(
        "algorithm = \"sha256\"",
        "algorithm = \"sha256\"\ndata-block-size = 3000",
        "verity.data-block-size",
        19,
        19,
        "power of two",
    );
    expect(
        "algorithm = \"sha256\"",
        "algorithm = \"sha256\"\nhash-block-size = 1048576",
        "verity.hash-block-size",
        19,
        19,
        "power of two",
    );
    expect(
        "algorithm = \"sha256\"",
        "algorithm = \"sha256\"\nsalt = \"abc\"",
        "verity.salt",
        19,
        8,
        "hex digits",
    );
    expect(
        "algorithm = \"sha256\"",
        &format!("algorithm = \"sha256\"\nsalt = \"{}\"", "ab".repeat(257)),
        "verity.salt",
        19,
        8,
        "at most 256",
    );
    expect(
        "algorithm = \"sha256\"",
        "algorithm = \"sha256\"\nformat = 2",
        "verity.format",
        19,
        10,
        "0 or 1",
    );
    expect(
        "algorithm = \"sha256\"",
        "algorithm = \"sha256\"\nfec-roots = 30",
        "verity.fec-roots",
        19,
        13,
        "2 to 24",
    );
    expect(
        "algorithm = \"sha256\"",
        "algorithm = \"sha256\"\nhash-tree = \"separate\"",
        "slot[0]",
        7,
        1,
        "needs `hash-device`",
    );
    expect(
        "device = \"PARTLABEL=USR-B\"",
        "device = \"PARTLABEL=USR-B\"\nhash-device = \"PARTLABEL=H\"",
        "slot[1].hash-device",
        16,
        15,
        "only used with",
    );
    // One device for two slots, or as one slot's data and another's tree: refused.
    expect(
        "device = \"PARTLABEL=USR-B\"",
        "device = \"PARTLABEL=USR-A\"",
        "slot[1].device",
        15,
        10,
        "already slot[0].device",
    );
    expect(
        "device = \"PARTLABEL=USR-A\"",
        "device = \"PARTLABEL=USR-A\"\nhash-device = \"PARTLABEL=USR-B\"",
        "slot[1].device",
        16,
        10,
        "already slot[0].hash-device",
    );
    // One partition spelled twice: a GUID in another case, a path with a `//`.
    let guid = "0fc63daf-8483-4772-8e79-3d69d8477de4";
    let two = BASE
        .replacen(
            "device = \"PARTLABEL=USR-A\"",
            &format!("device = \"PARTUUID={guid}\""),
            1,
        )
        .replacen(
            "device = \"PARTLABEL=USR-B\"",
            &format!("device = \"PARTUUID={}\"", guid.to_uppercase()),
            1,
        );
    let l = one(&two);
    assert!(
        l.findings
            .iter()
            .any(|f| f.path == "slot[1].device" && f.message.contains("already slot[0].device")),
        "{:?}",
        l.findings
    );
    let two = BASE.replacen("PARTLABEL=USR-A", "/dev/sda3", 1).replacen(
        "PARTLABEL=USR-B",
        "/dev//sda3",
        1,
    );
    assert!(
        one(&two)
            .findings
            .iter()
            .any(|f| f.path == "slot[1].device" && f.message.contains("already")),
        "{:?}",
        one(&two).findings
    );
    // U-Boot through fw_env.config: its setting belongs to that backend only.
    expect(
        "backend = \"gpt-flatcar\"",
        "backend = \"gpt-flatcar\"\nfw-env-config = \"/etc/fw_env.config\"",
        "boot.fw-env-config",
        6,
        17,
        "belongs to the fw-env backend",
    );
    // A bootname the backend cannot express: a GPT pair has slots A and B only.
    expect(
        "device = \"PARTLABEL=USR-A\"",
        "device = \"PARTLABEL=USR-A\"\nbootname = \"C\"",
        "slot[0].bootname",
        11,
        12,
        "gpt-flatcar backend has slots A and B only",
    );
    // The old place of the setting is named as unknown.
    expect(
        "algorithm = \"sha256\"",
        "algorithm = \"sha256\"\nhash-device = \"/dev/x\"",
        "verity.hash-device",
        19,
        1,
        "",
    );
    expect(
        "id = \"k1\"",
        "id = \"k1\"\nnot-after = \"2027-02-30\"",
        "trust.key[0].not-after",
        22,
        13,
        "is not a date YYYY-MM-DD",
    );
    expect(
        "ed25519 = \"d75a",
        "ed25519 = \"75a",
        "trust.key[0].ed25519",
        22,
        11,
        "64 hex digits",
    );
    // 64 hex digits that are no point of the curve: keel-trust's own check says so.
    let base_key = BASE
        .lines()
        .find_map(|l| l.strip_prefix("ed25519 = \""))
        .unwrap()
        .trim_end_matches('"');
    expect(
        base_key,
        &format!("02{}", "00".repeat(31)),
        "trust.key[0].ed25519",
        22,
        11,
        "not an Ed25519 public key",
    );
    let dup = format!(
        "{BASE}\n[[trust.key]]\nid = \"k1\"\ned25519 = \"{}\"\n",
        "00".repeat(32)
    );
    let l = one(&dup);
    let f = l
        .findings
        .iter()
        .find(|f| f.path == "trust.key[1].id")
        .unwrap();
    assert_eq!((f.line, f.column), (25, 6), "{f}");
    // The same key under a second id.
    let key = BASE
        .lines()
        .find_map(|l| l.strip_prefix("ed25519 = \""))
        .unwrap()
        .trim_end_matches('"');
    let twice = format!("{BASE}\n[[trust.key]]\nid = \"k2\"\ned25519 = \"{key}\"\n");
    let l = one(&twice);
    let f = l
        .findings
        .iter()
        .find(|f| f.path == "trust.key[1].ed25519")
        .unwrap_or_else(|| panic!("{:?}", l.findings));
    assert!(f.message.contains("the same key as trust.key[0]"), "{f}");
    expect(
        "[[trust.key]]",
        "[trust]\nminimum-version = \"1.x\"\n\n[[trust.key]]",
        "trust.minimum-version",
        21,
        19,
        "dotted numbers",
    );
    expect(
        "[[trust.key]]",
        "[update]\ntries = 0\n\n[[trust.key]]",
        "update.tries",
        21,
        9,
        "allows 1 to 15",
    );
    expect(
        "[[trust.key]]",
        "[update]\nretries = 2\n\n[[trust.key]]",
        "update.retries",
        21,
        1,
        "unknown key",
    );
    // A syntax error is located too.
    let l = one("version = \"1\"\ncompatible = \n");
    assert_eq!(
        (l.findings[0].line, l.findings[0].column),
        (2, 14),
        "{:?}",
        l.findings
    );
}

#[test]
fn all_findings_are_reported_at_once() {
    let text = BASE
        .replace("compatible = \"acme\"", "compatible = \"acme\"\nextra = 1")
        .replace("device = \"PARTLABEL=USR-A\"", "device = \"bad\"")
        .replace("algorithm = \"sha256\"", "algorithm = \"md4\"");
    let l = one(&text);
    let paths: Vec<&str> = l
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(
        paths,
        ["extra", "slot[0].device", "verity.algorithm"],
        "{:?}",
        l.findings
    );
}

#[test]
fn drop_ins_merge_in_order_and_findings_name_their_file() {
    let d1 = "[boot]\nattempts = 2\n\n[[slot]]\nname = \"usr.b\"\ndevice = \"PARTLABEL=NEW-B\"\n";
    let d2 = "[boot]\nattempts = 3\n\n[[trust.key]]\nid = \"k2\"\ned25519 = \"zz\"\n";
    let l = load_sources(&[
        ("base.toml".into(), BASE.into()),
        ("10-a.toml".into(), d1.into()),
        ("20-b.toml".into(), d2.into()),
    ]);
    let f = &l.findings[0];
    assert_eq!(
        (f.file.as_str(), f.line, f.column, f.path.as_str()),
        ("20-b.toml", 6, 11, "trust.key[1].ed25519"),
        "{f}"
    );
    let fixed = d2.replace("zz", &"11".repeat(32));
    let l = load_sources(&[
        ("base.toml".into(), BASE.into()),
        ("10-a.toml".into(), d1.into()),
        ("20-b.toml".into(), fixed),
    ]);
    let c = l.config.unwrap();
    assert_eq!(c.boot.attempts, Some(3));
    assert_eq!(c.slots.len(), 2);
    assert_eq!(c.slots[1].device, "PARTLABEL=NEW-B");
    assert_eq!(c.slots[1].class, "usr");
    assert_eq!(c.trust.keys.len(), 2);
    // A drop-in's bad value points at the drop-in, not at the base.
    let bad = "[[slot]]\nname = \"usr.a\"\ndevice = \"nowhere\"\n";
    let l = load_sources(&[
        ("base.toml".into(), BASE.into()),
        ("50-x.toml".into(), bad.into()),
    ]);
    let f = l
        .findings
        .iter()
        .find(|f| f.path == "slot[0].device")
        .unwrap();
    assert_eq!(
        (f.file.as_str(), f.line, f.column),
        ("50-x.toml", 3, 10),
        "{f}"
    );
}

#[test]
fn json_is_checked_as_strictly() {
    let c = one(BASE).config.unwrap();
    let json = to_json(&c).unwrap();
    let bad = json.replacen("\"compatible\"", "\"compatibel\": 1, \"compatible\"", 1);
    let l = load_json("c.json", &bad);
    assert!(l.has_errors());
    assert!(
        l.findings[0].message.contains("unknown field"),
        "{:?}",
        l.findings
    );
    let l = load_json("c.json", &json.replace("PARTLABEL=USR-A", "oops"));
    assert_eq!(l.findings[0].path, "slot[0].device");
}

/// The key lists used to report unknown keys are the serde field names.
#[test]
fn key_lists_match_the_model() {
    use serde::de::{self, Deserializer, Visitor};
    struct Fields(std::cell::RefCell<Vec<&'static str>>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Stop
        }
    }
    impl<'de> Deserializer<'de> for &Fields {
        type Error = Stop;
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0.borrow_mut().extend_from_slice(fields);
            Err(Stop)
        }
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        serde::forward_to_deserialize_any! { bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any }
    }
    fn fields<T: for<'de> serde::Deserialize<'de>>() -> Vec<&'static str> {
        let f = Fields(Default::default());
        let _ = T::deserialize(&f);
        f.0.into_inner()
    }
    let unknown = |text: &str| {
        one(&format!("{BASE}\n{text}"))
            .findings
            .iter()
            .any(|f| f.message.contains("unknown key"))
    };
    for (section, names) in [
        ("[boot]", fields::<keel_config::Boot>()),
        ("[verity]", fields::<keel_config::Verity>()),
        ("[update]", fields::<keel_config::Update>()),
    ] {
        assert!(!names.is_empty());
        for n in names {
            // Each serde field is accepted by the key check (a duplicate table is a TOML
            // error, so probe with a fresh document per key instead).
            let t = BASE.replace(section, &format!("{section}\n{n} = 0\n"));
            let l = one(&t);
            assert!(
                !l.findings.iter().any(|f| f.message.contains("unknown key")),
                "{section} {n}: {:?}",
                l.findings
            );
        }
    }
    for n in fields::<keel_config::SlotConfig>() {
        let t = BASE.replacen("name = \"usr.a\"", &format!("name = \"usr.a\"\n{n} = 0"), 1);
        assert!(
            !one(&t)
                .findings
                .iter()
                .any(|f| f.message.contains("unknown key")),
            "slot {n}"
        );
    }
    for n in fields::<keel_config::TrustedKey>() {
        let t = BASE.replacen("id = \"k1\"", &format!("id = \"k1\"\n{n} = 0"), 1);
        assert!(
            !one(&t)
                .findings
                .iter()
                .any(|f| f.message.contains("unknown key")),
            "key {n}"
        );
    }
    assert!(unknown("[update]\nnope = 1\n"));
}

#[test]
fn no_sources_and_unbounded_files_are_errors_not_panics() {
    let l = keel_config::load_sources(&[]);
    assert!(l.has_errors() && l.config.is_none());
    assert!(
        l.findings[0].message.contains("no configuration"),
        "{:?}",
        l.findings
    );
    let e = keel_config::load_files(std::path::Path::new("/dev/zero"), &[]).unwrap_err();
    assert!(e.to_string().contains("/dev/zero"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let e = keel_config::read_source(dir.path()).unwrap_err();
    assert!(
        e.to_string().contains(&dir.path().display().to_string()),
        "{e}"
    );
}

/// A file with ten mixed mistakes (missing fields, wrong types, numbers out of range,
/// unknown keys) gets ten findings in one run, each at the line and column of its value
/// (a missing field: at its table's header), worded for a person.
#[test]
fn ten_mixed_errors_give_ten_findings_in_one_run() {
    let text = r#"version = "1"
colour = "blue"

[boot]
backend = "gpt-flatcar"
attempts = "one"
env-size = 1.5

[[slot]]
name = "usr.a"
class = "usr"

[[slot]]
name = "usr.b"
class = "usr"
device = "PARTLABEL=USR-B"
read-only = "yes"

[verity]
data-block-size = -5

[[trust.key]]
id = "k1"

[update]
tries = 300
allow-downgrade = "no"
"#;
    let l = one(text);
    let got: Vec<(usize, usize, &str, &str)> = l
        .findings
        .iter()
        .map(|f| (f.line, f.column, f.path.as_str(), f.message.as_str()))
        .collect();
    let want = [
        (1, 1, "", "missing `compatible`: a string"),
        (2, 1, "colour", "unknown key `colour`"),
        (
            6,
            12,
            "boot.attempts",
            "expected a whole number from 0 to 255, found the string \"one\"",
        ),
        (
            7,
            12,
            "boot.env-size",
            "expected a whole number from 0, found the number 1.5",
        ),
        (9, 1, "slot[0]", "missing `device`: a string"),
        (
            17,
            13,
            "slot[1].read-only",
            "expected true or false, found the string \"yes\"",
        ),
        (
            20,
            19,
            "verity.data-block-size",
            "expected a whole number from 0 to 4294967295, found -5",
        ),
        (22, 1, "trust.key[0]", "missing `ed25519`: a string"),
        (
            26,
            9,
            "update.tries",
            "expected a whole number from 0 to 255, found 300",
        ),
        (
            27,
            19,
            "update.allow-downgrade",
            "expected true or false, found the string \"no\"",
        ),
    ];
    assert_eq!(got.len(), 10, "{got:#?}");
    for w in want {
        assert!(
            got.iter()
                .any(|g| (g.0, g.1, g.2) == (w.0, w.1, w.2) && g.3.starts_with(w.3)),
            "{w:?} not in {got:#?}"
        );
    }
    assert!(l.config.is_none());
}

/// The first hour's description with thirteen mistakes of every kind (a misspelled and an
/// unknown key, a setting of another backend, numbers out of range, a duplicate name, a
/// device without its form, an unpaired class, a bad algorithm, block size, salt, key and
/// date, no tries): every one is found in the same run, beside the missing key, and a
/// misspelling gets the nearest allowed key.
#[test]
fn every_value_rule_runs_beside_missing_and_unknown_keys() {
    let text = r#"version = "1"
compatable = "acme-os"

[boot]
backend = "gpt-chromeos"
grubenv = "/boot/grub/grubenv"
attempts = 20

[[slot]]
name = "root.a"
class = "root"
device = "PARTLABEL=ROOT-A"
readonly = true

[[slot]]
name = "root.a"
class = "root"
device = "ROOT-B"

[[slot]]
name = "kernel.a"
class = "kernel"
device = "PARTLABEL=KERN-A"

[verity]
algorithm = "sha257"
data-block-size = 3000
salt = "xyz"

[[trust.key]]
id = "release"
ed25519 = "abcd"
not-after = "2025-02-30"

[update]
tries = 0
"#;
    let l = one(text);
    assert!(l.config.is_none());
    let paths: Vec<&str> = l.findings.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "",
            "compatable",
            "boot.grubenv",
            "boot.attempts",
            "slot[0].readonly",
            "slot[1].name",
            "slot[1].device",
            "slot[2].class",
            // Two slot classes: which has the tree must be said.
            "verity",
            "verity.algorithm",
            "verity.data-block-size",
            "verity.salt",
            "trust.key[0].ed25519",
            "trust.key[0].not-after",
            "update.tries",
        ],
        "{:#?}",
        l.findings
    );
    let said = |path: &str| {
        l.findings
            .iter()
            .find(|f| f.path == path)
            .map(|f| f.message.clone())
            .unwrap_or_default()
    };
    assert!(said("compatable").ends_with("did you mean `compatible`?"));
    assert!(said("slot[0].readonly").ends_with("did you mean `read-only`?"));
    // A key far from every allowed one gets no guess.
    let l = one("version = \"1\"\ncompatible = \"x\"\nzzzzzz = 1\n[boot]\nbackend = \"grubenv\"\n");
    let f = l.findings.iter().find(|f| f.path == "zzzzzz").unwrap();
    assert!(!f.message.contains("did you mean"), "{}", f.message);
    // A missing slot device is stood in for: the slots' other rules still run, and the
    // stand-in itself is never reported as a value.
    let l = one(
        "version = \"1\"\ncompatible = \"x\"\n[boot]\nbackend = \"gpt-flatcar\"\n\
         [[slot]]\nname = \"a\"\nclass = \"usr\"\n[[slot]]\nname = \"a\"\nclass = \"usr\"\n\
         device = \"PARTLABEL=B\"\n",
    );
    let got: Vec<(&str, &str)> = l
        .findings
        .iter()
        .map(|f| (f.path.as_str(), f.message.as_str()))
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], ("slot[0]", "missing `device`: a string"));
    assert_eq!(got[1].0, "slot[1].name");
    assert_eq!(got[2].0, "trust");
    assert!(!format!("{got:?}").contains("keel-missing"));
}

/// What an outside attack on "every finding at once" found: settings stood in for take
/// part in no comparison and hide no other rule, items and tables of the wrong type stand
/// in too, a backend that is not one leaves its own rules only, paths are unambiguous, and
/// many findings cost each a search.
#[test]
fn stand_ins_neither_hide_nor_invent_findings() {
    let head = "version = \"2\"\ncompatible = \"x\"\n[boot]\nbackend = \"gpt-flatcar\"\n";
    let paths = |text: &str| -> Vec<String> {
        one(text)
            .findings
            .iter()
            .map(|f| format!("{}: {}", f.path, f.message))
            .collect()
    };
    // A slot without a name still needs its hash device; one without a class leaves the
    // other's pairing untold, not wrong; one without a device is no other's device.
    let got = paths(&format!(
        "{head}[verity]\nhash-tree = \"separate\"\n\
         [[slot]]\nname = \"a\"\nclass = \"usr\"\ndevice = \"PARTLABEL=A\"\nhash-device = \"PARTLABEL=HA\"\n\
         [[slot]]\nclass = \"usr\"\ndevice = \"PARTLABEL=B\"\n\
         [[slot]]\nname = \"c\"\ndevice = \"PARTLABEL=C\"\nhash-device = \"PARTLABEL=HC\"\n\
         [[slot]]\nname = \"d\"\nclass = \"k\"\nhash-device = \"PARTLABEL=HD\"\n"
    ));
    let has = |p: &str| got.iter().any(|g| g.starts_with(p));
    assert!(has("version: schema version 2"), "{got:#?}");
    assert!(has("slot[1]: missing `name`"), "{got:#?}");
    assert!(has("slot[1]: needs `hash-device`"), "{got:#?}");
    assert!(!got.iter().any(|g| g.contains("missing-")), "{got:#?}");
    assert!(has("slot[2]: missing `class`"), "{got:#?}");
    assert!(has("slot[3]: missing `device`"), "{got:#?}");
    assert!(!got.iter().any(|g| g.contains("come in pairs")), "{got:#?}");
    assert!(!got.iter().any(|g| g.contains("is already")), "{got:#?}");
    // Items and tables of the wrong type, a backend that is not one: their own findings,
    // and the value rules still run on the rest.
    for broken in [
        "[[slot]]\nname = \"a\"\nclass = \"usr\"\ndevice = \"PARTLABEL=A\"\n[[slot]]\nname = \"b\"\nclass = \"usr\"\ndevice = \"PARTLABEL=A\"\n[trust]\nkey = [\"k\"]\n",
        "slot = [1, \"a\"]\n",
    ] {
        let got = paths(&format!("{head}{broken}"));
        assert!(got.iter().any(|g| g.starts_with("version: schema version 2")), "{got:#?}");
    }
    let got = paths(
        "version = \"2\"\ncompatible = \"x\"\n[boot]\nbackend = \"gpt-flatcr\"\ngrubenv = \"/g\"\n",
    );
    assert!(
        got.iter()
            .any(|g| g.starts_with("boot.backend: expected one of")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|g| g.starts_with("version: schema version 2")),
        "{got:#?}"
    );
    assert!(!got.iter().any(|g| g.contains("belongs to")), "{got:#?}");
    // Quoted keys stay quoted; a key in another script gets no guess.
    let got = paths(&format!(
        "{head}[update]\n\"a.b\" = 1\n\"\" = 2\n\"日本語字\" = 3\n"
    ));
    assert!(
        got.iter()
            .any(|g| g.starts_with("update.\"a.b\": unknown key")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|g| g.starts_with("update.\"\": unknown key")),
        "{got:#?}"
    );
    assert!(!got.iter().any(|g| g.contains("did you mean")), "{got:#?}");
    // Twenty thousand unknown keys: twenty thousand findings, each at its own line.
    let mut text = String::new();
    for i in 0..20_000 {
        text.push_str(&format!("unknown{i} = {i}\n"));
    }
    text.push_str(head);
    let l = one(&text);
    let unknown: Vec<_> = l
        .findings
        .iter()
        .filter(|f| f.path.starts_with("unknown"))
        .collect();
    assert_eq!(unknown.len(), 20_000);
    assert!(unknown
        .iter()
        .all(|f| f.line == 1 + f.path[7..].parse::<usize>().unwrap()));
}

/// `[[file]]` images and several slot classes: each rule fails where it should, and a
/// description of a kernel file beside two partition classes passes.
#[test]
fn file_images_and_slot_classes_have_their_rules() {
    let file = |class: &str, path: &str| {
        format!("[[file]]\nclass = \"{class}\"\npath = \"{path}\"\n\n[[trust.key]]")
    };
    let k = "[[trust.key]]";
    for (class, path, at, msg) in [
        (
            "kernel",
            "efi/{slot}/vmlinuz",
            "path",
            "an absolute path is needed",
        ),
        (
            "kernel",
            "/efi/vmlinuz",
            "path",
            "`{slot}` must appear once",
        ),
        (
            "kernel",
            "/efi/{slot}/{slot}",
            "path",
            "`{slot}` must appear once",
        ),
        ("kernel", "/efi/../{slot}/vmlinuz", "path", "no `..`"),
        ("kernel", "/efi/{slot}/", "path", "names a directory"),
        ("usr", "/efi/{slot}.efi", "class", "already slot[0]'s"),
        ("ker nel", "/efi/{slot}.efi", "class", "1 to 64 letters"),
    ] {
        let (line, col) = if at == "path" { (22, 8) } else { (21, 9) };
        expect(
            k,
            &file(class, path),
            &format!("file[0].{at}"),
            line,
            col,
            msg,
        );
    }
    expect(
        k,
        &format!(
            "{}{}",
            file("kernel", "/efi/{slot}/vmlinuz").replace(k, ""),
            file("initrd", "/efi//{slot}/./vmlinuz")
        ),
        "file[1].path",
        26,
        8,
        "is file[0]'s for slot a",
    );
    // After `{slot}` is put in: another class's file of the other slot, a temporary name,
    // a name that differs in case only (one file on FAT).
    for (first, second, says) in [
        (
            "/efi/{slot}a",
            "/efi/b{slot}",
            "slot a's file \"/efi/ba\" is file[0]'s for slot b",
        ),
        (
            "/efi/{slot}/k",
            "/efi/{slot}/k.keel-new",
            "slot a's file \"/efi/a/k.keel-new\" is file[0]'s for slot a",
        ),
        (
            "/efi/k/{slot}/vmlinuz",
            "/EFI/K/{slot}/VMLINUZ",
            "is file[0]'s for slot a",
        ),
    ] {
        expect(
            k,
            &format!(
                "{}{}",
                file("kernel", first).replace(k, ""),
                file("initrd", second)
            ),
            "file[1].path",
            26,
            8,
            says,
        );
    }
    for (path, says) in [
        ("/efi/{slot}/.", "names a directory"),
        ("/efi/{slot}/vm\tlinuz", "a control character"),
        ("/proc/{slot}/x", "not a place for a slot's file"),
    ] {
        expect(k, &file("kernel", path), "file[0].path", 22, 8, says);
    }
    // A slot's file that is the disk.
    let text = BASE
        .replacen(
            "backend = \"gpt-flatcar\"",
            "backend = \"gpt-flatcar\"\ndisk = \"/img/diskb\"",
            1,
        )
        .replacen(k, &file("kernel", "/img/disk{slot}"), 1);
    let l = one(&text);
    let f = l
        .findings
        .iter()
        .find(|f| f.path == "file[0].path")
        .unwrap_or_else(|| panic!("{:?}", l.findings));
    assert!(
        f.message
            .contains("slot b's file \"/img/diskb\" is `boot.disk`"),
        "{f}"
    );
    expect(
        k,
        &format!(
            "{}{}",
            file("kernel", "/efi/{slot}/vmlinuz").replace(k, ""),
            file("kernel", "/efi/{slot}/initrd")
        ),
        "file[1].class",
        25,
        9,
        "already file[0]'s",
    );
    expect(
        "algorithm = \"sha256\"",
        "algorithm = \"sha256\"\nclass = \"root\"",
        "verity.class",
        19,
        9,
        "is not a slot class",
    );
    let l = one(&BASE.replace("class = \"usr\"", "class = \"usr!\""));
    let f = l
        .findings
        .iter()
        .find(|f| f.path == "slot[0].class")
        .unwrap_or_else(|| panic!("{:?}", l.findings));
    assert!(f.message.contains("1 to 64 letters"), "{f}");
    assert_eq!((f.line, f.column), (9, 9));

    // A kernel partition pair beside the usr pair: which class has the tree must be said.
    let kernels = "[[slot]]\nname = \"kernel.a\"\nclass = \"kernel\"\ndevice = \"PARTLABEL=KERN-A\"\n\n\
                   [[slot]]\nname = \"kernel.b\"\nclass = \"kernel\"\ndevice = \"PARTLABEL=KERN-B\"\n\n[verity]";
    let two = BASE.replacen("[verity]", kernels, 1);
    let l = one(&two);
    let f = l
        .findings
        .iter()
        .find(|f| f.path == "verity")
        .unwrap_or_else(|| panic!("{:?}", l.findings));
    assert!(
        f.message.contains("needs `class`") && f.message.contains("\"kernel\""),
        "{f}"
    );
    let named = two.replacen(
        "algorithm = \"sha256\"",
        "algorithm = \"sha256\"\nclass = \"usr\"",
        1,
    );
    let with_files = named.replacen(
        "[[trust.key]]",
        &format!(
            "{}{}",
            file("vmlinuz", "/efi/keel/{slot}/vmlinuz").replace(k, ""),
            file("initrd", "/efi/keel/{slot}/initrd.img")
        ),
        1,
    );
    let l = one(&with_files);
    assert!(l.findings.is_empty(), "{:?}", l.findings);
    let c = l.config.unwrap();
    assert_eq!(c.files.len(), 2);
    assert_eq!(
        c.files[0].path_for('B'),
        std::path::Path::new("/efi/keel/b/vmlinuz")
    );
    assert_eq!(c.verity.as_ref().unwrap().class.as_deref(), Some("usr"));
    // Round trips keep the files.
    assert_eq!(one(&to_toml(&c).unwrap()).config.unwrap(), c);
    // A drop-in replaces a file entry by its class.
    let l = load_sources(&[
        ("a.toml".into(), with_files.clone()),
        (
            "b.toml".into(),
            "[[file]]\nclass = \"initrd\"\npath = \"/boot/{slot}/initrd\"\n".into(),
        ),
    ]);
    let c = l.config.unwrap_or_else(|| panic!("{:?}", l.findings));
    assert_eq!(c.files.len(), 2);
    assert_eq!(c.files[1].path, "/boot/{slot}/initrd");
}

/// `[agent]`: each rule fails where it should, and a whole table passes.
#[test]
fn agent_settings_have_their_rules() {
    let good = "[agent]\nindex = \"https://updates.example/index.json\"\n\
                trust-root = \"/etc/keel/root.json\"\ninterval = 600\njitter = 60\n\
                strategy = \"etcd\"\netcd = [\"https://10.0.0.1:2379\"]\ngroup = \"workers\"\n\
                windows = [\"Mon-Fri 02:00-05:00\"]\n\n\
                [[agent.check]]\nname = \"api\"\ncommand = [\"/usr/bin/curl\", \"-f\", \"http://localhost/\"]\n\n\
                [[agent.check]]\nname = \"kubelet\"\nunit = \"kubelet.service\"\n\n";
    let with = |agent: &str| BASE.replacen("[[trust.key]]", &format!("{agent}[[trust.key]]"), 1);
    let l = one(&with(good));
    assert!(l.findings.is_empty(), "{:?}", l.findings);
    let a = l.config.unwrap().agent.unwrap();
    assert_eq!((a.interval, a.checks.len()), (600, 2));
    assert_eq!(a.reboot_command, ["systemctl", "reboot"]);
    for (from, to, at, says) in [
        (
            "index = \"https://updates.example/index.json\"",
            "index = \"ftp://x/i\"",
            "agent.index",
            "an http:// or https:// URL",
        ),
        (
            "trust-root = \"/etc/keel/root.json\"",
            "trust-root = \"root.json\"",
            "agent.trust-root",
            "an absolute path",
        ),
        (
            "jitter = 60",
            "jitter = 601",
            "agent.jitter",
            "at most the interval",
        ),
        (
            "group = \"workers\"",
            "group = \"work ers\"",
            "agent.group",
            "letters, digits",
        ),
        (
            "group = \"workers\"",
            "group = \"workers\"\nnode-id = \"node/1\"",
            "agent.node-id",
            "letters, digits",
        ),
        (
            "etcd = [\"https://10.0.0.1:2379\"]\n",
            "",
            "agent.strategy",
            "needs `etcd`",
        ),
        (
            "etcd = [\"https://10.0.0.1:2379\"]",
            "etcd = [\"10.0.0.1:2379\"]",
            "agent.etcd[0]",
            "an http:// or https:// URL",
        ),
        (
            "strategy = \"etcd\"",
            "strategy = \"fleetlock\"",
            "agent.etcd",
            "belongs to strategy = \"etcd\"",
        ),
        (
            "strategy = \"etcd\"",
            "strategy = \"etcd\"\nfleetlock = \"http://x\"",
            "agent.fleetlock",
            "belongs to strategy = \"fleetlock\"",
        ),
        (
            "strategy = \"etcd\"",
            "strategy = \"etcd\"\netcd-cert = \"/c.pem\"",
            "agent.etcd-cert",
            "go together",
        ),
        (
            "interval = 600",
            "interval = 0",
            "agent.interval",
            "from 1 to 604800",
        ),
        (
            "interval = 600",
            "interval = 600\nreboot-command = []",
            "agent.reboot-command",
            "a program is needed",
        ),
        (
            "unit = \"kubelet.service\"",
            "unit = \"kubelet.service\"\ncommand = [\"x\"]",
            "agent.check[1].unit",
            "not both",
        ),
        (
            "unit = \"kubelet.service\"",
            "unit = \"../x\"",
            "agent.check[1].unit",
            "not a unit name",
        ),
        (
            "name = \"kubelet\"",
            "name = \"api\"",
            "agent.check[1].name",
            "already agent.check[0]'s",
        ),
        (
            "unit = \"kubelet.service\"\n",
            "",
            "agent.check[1]",
            "needs `command` or `unit`",
        ),
        (
            "interval = 600",
            "interval = 600\nsocket = \"agent.sock\"",
            "agent.socket",
            "an absolute path",
        ),
        (
            "interval = 600",
            "interval = 600\nmax_rate = 1",
            "agent.max_rate",
            "did you mean `max-rate`?",
        ),
    ] {
        assert!(good.contains(from), "{from}");
        let l = one(&with(&good.replacen(from, to, 1)));
        let f = l
            .findings
            .iter()
            .find(|f| f.path == at)
            .unwrap_or_else(|| panic!("no finding at {at} for {to:?}: {:?}", l.findings));
        assert!(f.message.contains(says), "{f}");
        assert!(l.config.is_none(), "{to:?}");
    }
}

/// Slot classes switch together: a second class with other bootnames is refused.
#[test]
fn every_slot_class_has_the_first_classs_bootnames() {
    let text = BASE.replacen(
        "[verity]",
        "[[slot]]\nname = \"kernel.c\"\nclass = \"kernel\"\ndevice = \"PARTLABEL=KERN-C\"\nbootname = \"C\"\n\n\
         [[slot]]\nname = \"kernel.d\"\nclass = \"kernel\"\ndevice = \"PARTLABEL=KERN-D\"\nbootname = \"D\"\n\n\
         [verity]\nclass = \"usr\"",
        1,
    )
    .replace("gpt-flatcar", "grubenv");
    let l = one(&text);
    let f = l
        .findings
        .iter()
        .find(|f| f.path == "slot[2].bootname")
        .unwrap_or_else(|| panic!("{:?}", l.findings));
    assert!(f.message.contains("needs class \"usr\"'s A, B"), "{f}");
}
