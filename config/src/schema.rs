//! The description's shape, checked on the TOML value tree before it is deserialised, so
//! that every unknown key, every missing field and every value of the wrong type is
//! reported in one run, in words a person uses.

use toml::{Table, Value};

use crate::finding::{Raw, Seg};

/// What a value must be.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bool,
    /// A whole number in `min..=max`.
    Int(i64, i64),
    /// One of these strings.
    OneOf(&'static [&'static str]),
    Table(&'static [Field]),
    /// An array of tables (`[[name]]`).
    Tables(&'static [Field]),
    /// An array of strings.
    Strs,
}

struct Field {
    key: &'static str,
    ty: Ty,
    required: bool,
}

const fn req(key: &'static str, ty: Ty) -> Field {
    Field {
        key,
        ty,
        required: true,
    }
}

const fn opt(key: &'static str, ty: Ty) -> Field {
    Field {
        key,
        ty,
        required: false,
    }
}

const U8: Ty = Ty::Int(0, u8::MAX as i64);
const U32: Ty = Ty::Int(0, u32::MAX as i64);
const U64: Ty = Ty::Int(0, i64::MAX);

const BOOT: &[Field] = &[
    req(
        "backend",
        Ty::OneOf(&[
            "gpt-chromeos",
            "gpt-flatcar",
            "grubenv",
            "uboot",
            "fw-env",
            "android-misc",
            "systemd-boot",
        ]),
    ),
    opt("disk", Ty::Str),
    opt("grubenv", Ty::Str),
    opt("env-file", Ty::Str),
    opt("env-size", U64),
    opt("redundant", Ty::Bool),
    opt("misc-device", Ty::Str),
    opt("fw-env-config", Ty::Str),
    opt("entries-dir", Ty::Str),
    opt("attempts", U8),
];

const SLOT: &[Field] = &[
    req("name", Ty::Str),
    req("class", Ty::Str),
    req("device", Ty::Str),
    opt("bootname", Ty::Str),
    opt("partition-type", Ty::Str),
    opt("read-only", Ty::Bool),
    opt("hash-device", Ty::Str),
];

const VERITY: &[Field] = &[
    opt("algorithm", Ty::Str),
    opt("data-block-size", U32),
    opt("hash-block-size", U32),
    opt("salt", Ty::Str),
    opt("format", U8),
    opt("fec-roots", U8),
    opt("hash-tree", Ty::OneOf(&["after-data", "separate"])),
    opt("class", Ty::Str),
];

const FILE: &[Field] = &[req("class", Ty::Str), req("path", Ty::Str)];

const KEY: &[Field] = &[
    req("id", Ty::Str),
    req("ed25519", Ty::Str),
    opt("not-after", Ty::Str),
];

const TRUST: &[Field] = &[opt("minimum-version", Ty::Str), opt("key", Ty::Tables(KEY))];

const UPDATE: &[Field] = &[
    opt("tries", U8),
    opt("protect-booted-slot", Ty::Bool),
    opt("max-resumes", U32),
    opt("allow-downgrade", Ty::Bool),
];

const CHECK: &[Field] = &[
    req("name", Ty::Str),
    opt("command", Ty::Strs),
    opt("unit", Ty::Str),
    opt("timeout", Ty::Int(1, 86_400)),
];

const AGENT: &[Field] = &[
    req("index", Ty::Str),
    req("trust-root", Ty::Str),
    opt("interval", Ty::Int(1, 604_800)),
    opt("jitter", Ty::Int(0, 604_800)),
    opt("strategy", Ty::OneOf(&["immediate", "etcd", "fleetlock"])),
    opt("group", Ty::Str),
    opt("node-id", Ty::Str),
    opt("etcd", Ty::Strs),
    opt("etcd-ca", Ty::Str),
    opt("etcd-cert", Ty::Str),
    opt("etcd-key", Ty::Str),
    opt("slots", Ty::Int(1, 1000)),
    opt("lease-ttl", Ty::Int(10, 86_400)),
    opt("fleetlock", Ty::Str),
    opt("windows", Ty::Strs),
    opt("reboot-command", Ty::Strs),
    opt("max-rate", U64),
    opt("socket", Ty::Str),
    opt("check", Ty::Tables(CHECK)),
];

const TOP: &[Field] = &[
    req("version", Ty::Str),
    req("compatible", Ty::Str),
    req("boot", Ty::Table(BOOT)),
    opt("slot", Ty::Tables(SLOT)),
    opt("file", Ty::Tables(FILE)),
    opt("verity", Ty::Table(VERITY)),
    opt("trust", Ty::Table(TRUST)),
    opt("update", Ty::Table(UPDATE)),
    opt("agent", Ty::Table(AGENT)),
];

/// Every shape error of the merged description at once: unknown keys, missing fields,
/// values of the wrong type.
pub(crate) fn check(t: &Table) -> Vec<Raw> {
    let mut out = Vec::new();
    table(t, TOP, &[], &mut out);
    out
}

fn table(t: &Table, fields: &[Field], at: &[Seg], out: &mut Vec<Raw>) {
    let here = |k: &str| {
        let mut p = at.to_vec();
        p.push(Seg::Key(k.to_string()));
        p
    };
    for k in t.keys() {
        if !fields.iter().any(|f| f.key == k) {
            let allowed: Vec<&str> = fields.iter().map(|f| f.key).collect();
            // As cargo does: the allowed key nearest a misspelling, if one is near.
            let hint = fields
                .iter()
                .filter(|f| !t.contains_key(f.key))
                .map(|f| (distance(k, f.key), f.key))
                .filter(|&(d, key)| d <= (key.len().max(k.chars().count()) / 3).max(1))
                .min()
                .map_or(String::new(), |(_, key)| format!("; did you mean `{key}`?"));
            out.push(Raw {
                at_key: true,
                ..Raw::error(
                    here(k),
                    format!(
                        "unknown key `{k}` (allowed here: {}){hint}",
                        allowed.join(", ")
                    ),
                )
            });
        }
    }
    for f in fields {
        match t.get(f.key) {
            None if f.required => out.push(Raw::error(
                at.to_vec(),
                format!("missing `{}`: {}", f.key, describe(f.ty)),
            )),
            None => {}
            Some(v) => value(v, f.ty, &here(f.key), out),
        }
    }
}

/// Levenshtein distance, in characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Put a stand-in for every required setting that is missing (or was removed for a
/// wrong type), so that the rest of the description can be deserialised and its value
/// rules run in the same pass; returns the paths filled, whose own findings are the
/// shape's, and which the value rules leave out of their comparisons.
pub(crate) fn fill_required(t: &mut Table) -> Vec<Vec<Seg>> {
    let mut filled = Vec::new();
    fill(t, TOP, &[], &mut filled);
    filled
}

fn fill(t: &mut Table, fields: &[Field], at: &[Seg], filled: &mut Vec<Vec<Seg>>) {
    for f in fields {
        let mut here = at.to_vec();
        here.push(Seg::Key(f.key.to_string()));
        if t.get(f.key).is_none() && f.required {
            let stand_in = match f.ty {
                // No one types a NUL into a description: never a value of its own.
                Ty::Str => Value::String(format!("\u{0}missing-{}", filled.len())),
                Ty::OneOf(names) => Value::String(names[0].to_string()),
                Ty::Table(_) => Value::Table(Table::new()),
                Ty::Bool => Value::Boolean(false),
                Ty::Int(min, _) => Value::Integer(min),
                Ty::Tables(_) | Ty::Strs => Value::Array(Vec::new()),
            };
            t.insert(f.key.to_string(), stand_in);
            filled.push(here.clone());
        }
        match (t.get_mut(f.key), f.ty) {
            (Some(Value::Table(sub)), Ty::Table(inner)) => fill(sub, inner, &here, filled),
            (Some(Value::Array(items)), Ty::Tables(inner)) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let mut p = here.clone();
                    p.push(Seg::Index(i));
                    if let Value::Table(sub) = item {
                        fill(sub, inner, &p, filled);
                    }
                }
            }
            _ => {}
        }
    }
}

fn value(v: &Value, ty: Ty, at: &[Seg], out: &mut Vec<Raw>) {
    let ok = match (ty, v) {
        (Ty::Str, Value::String(_)) | (Ty::Bool, Value::Boolean(_)) => true,
        (Ty::Strs, Value::Array(items)) => items.iter().all(|i| matches!(i, Value::String(_))),
        (Ty::Int(min, max), Value::Integer(i)) => (min..=max).contains(i),
        (Ty::OneOf(names), Value::String(s)) => names.contains(&s.as_str()),
        (Ty::Table(fields), Value::Table(t)) => {
            table(t, fields, at, out);
            true
        }
        (Ty::Tables(fields), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let mut p = at.to_vec();
                p.push(Seg::Index(i));
                value(item, Ty::Table(fields), &p, out);
            }
            true
        }
        _ => false,
    };
    if !ok {
        out.push(Raw::error(
            at.to_vec(),
            format!("expected {}, found {}", describe(ty), found(v)),
        ));
    }
}

fn describe(ty: Ty) -> String {
    match ty {
        Ty::Str => "a string".into(),
        Ty::Bool => "true or false".into(),
        Ty::Int(min, max) if max == i64::MAX => format!("a whole number from {min}"),
        Ty::Int(min, max) => format!("a whole number from {min} to {max}"),
        Ty::OneOf(names) => format!("one of {}", names.join(", ")),
        Ty::Table(_) => "a table".into(),
        Ty::Tables(_) => "an array of tables ([[...]])".into(),
        Ty::Strs => "an array of strings".into(),
    }
}

fn found(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(i) => format!("{i}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Boolean(b) => format!("{b}"),
        Value::Datetime(d) => format!("the date {d}"),
        Value::Array(_) => "an array".into(),
        Value::Table(_) => "a table".into(),
    }
}
