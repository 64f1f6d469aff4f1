//! Cross-field checks: everything serde's types cannot say.

use std::collections::HashMap;

use crate::finding::{path, with_index, Raw};
use crate::model::{Backend, Config, HashTreeLocation, SCHEMA_MAJOR};

/// Tries a new slot gets: `update.tries`, else `boot.attempts`, else the backend's default.
pub fn effective_tries(c: &Config) -> u8 {
    c.update
        .tries
        .or(c.boot.attempts)
        .unwrap_or(c.boot.backend.default_tries())
}

// The values below are checked by the parsers of the crates that use them, so the
// description accepts exactly what they accept.

fn dotted(s: &str) -> Option<Vec<u64>> {
    s.split('.').map(|p| p.parse().ok()).collect()
}

/// Which backend a boot setting belongs to.
fn owner(key: &str) -> &'static [Backend] {
    match key {
        "disk" => &[Backend::GptChromeos, Backend::GptFlatcar],
        "grubenv" => &[Backend::Grubenv],
        "env-file" | "env-size" | "redundant" => &[Backend::Uboot],
        "misc-device" => &[Backend::AndroidMisc],
        "fw-env-config" => &[Backend::FwEnv],
        "entries-dir" => &[Backend::SystemdBoot],
        _ => &[],
    }
}

/// What a class name may be (it names a bundle's image).
const CLASS_RULE: &str = "1 to 64 letters, digits, `.`, `_` or `-` (it names a bundle's image)";

/// Every cross-field finding. `stand_ins` are the settings the description lacks and
/// the loader stood in for: they take part in no comparison (a missing class is not
/// unpaired, a missing device is no other slot's), and rules that hang on them (the
/// backend's) are left until they are there.
pub(crate) fn validate(c: &Config, stand_ins: &[Vec<crate::finding::Seg>]) -> Vec<Raw> {
    let stood = |p: &Vec<crate::finding::Seg>| stand_ins.contains(p);
    let backend_known = !stood(&path(&["boot", "backend"]));
    let mut out = Vec::new();
    macro_rules! err {
        ($p:expr, $m:expr $(,)?) => {
            out.push(Raw::error($p, $m))
        };
    }

    match c
        .version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u64>().ok())
    {
        Some(SCHEMA_MAJOR) if dotted(&c.version).is_some_and(|v| v.len() <= 2) => {}
        Some(m) if dotted(&c.version).is_some() => err!(
            path(&["version"]),
            format!("schema version {m} is not supported: this reader knows {SCHEMA_MAJOR}"),
        ),
        _ => err!(
            path(&["version"]),
            format!("{:?} is not a version (\"1\" or \"1.0\")", c.version)
        ),
    }
    if c.compatible.trim().is_empty() {
        err!(path(&["compatible"]), "must not be empty");
    }

    // [boot]
    let b = &c.boot;
    let set: [(&str, bool); 8] = [
        ("disk", b.disk.is_some()),
        ("grubenv", b.grubenv.is_some()),
        ("env-file", b.env_file.is_some()),
        ("env-size", b.env_size.is_some()),
        ("redundant", b.redundant.is_some()),
        ("misc-device", b.misc_device.is_some()),
        ("fw-env-config", b.fw_env_config.is_some()),
        ("entries-dir", b.entries_dir.is_some()),
    ];
    for (key, present) in set {
        if present && backend_known && !owner(key).contains(&b.backend) {
            let names: Vec<&str> = owner(key).iter().map(|b| b.name()).collect();
            err!(
                path(&["boot", key]),
                format!(
                    "`{key}` belongs to the {} backend, not {}",
                    names.join(" or "),
                    b.backend.name()
                ),
            );
        }
    }
    if backend_known && b.backend == Backend::Uboot && b.env_file.is_none() {
        err!(
            path(&["boot", "backend"]),
            "the uboot backend needs `env-file`"
        );
    }
    if backend_known && b.backend == Backend::AndroidMisc && b.misc_device.is_none() {
        err!(
            path(&["boot", "backend"]),
            "the android-misc backend needs `misc-device`"
        );
    }
    if let Some(size) = b.env_size {
        if !(16..=1 << 24).contains(&size) {
            err!(
                path(&["boot", "env-size"]),
                format!("{size} bytes: expected 16 to 16 MiB")
            );
        }
    }
    let max_tries = match b.backend {
        Backend::Grubenv => 1,
        Backend::AndroidMisc => 7,
        _ => 15,
    };
    for (p, t) in [
        (path(&["boot", "attempts"]), b.attempts),
        (path(&["update", "tries"]), c.update.tries),
    ] {
        if let Some(t) = t.filter(|_| backend_known) {
            if t == 0 || t > max_tries {
                err!(
                    p,
                    format!(
                        "{t}: the {} backend allows 1 to {max_tries}",
                        b.backend.name()
                    )
                );
            }
        }
    }

    // Paths the agent opens from wherever it runs: relative ones would depend on its
    // working directory.
    for (key, value) in [
        ("disk", &b.disk),
        ("grubenv", &b.grubenv),
        ("env-file", &b.env_file),
        ("fw-env-config", &b.fw_env_config),
        ("entries-dir", &b.entries_dir),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.starts_with('/')) {
            err!(
                path(&["boot", key]),
                format!("{v:?}: an absolute path is needed (the agent runs from any directory)")
            );
        }
    }

    // [[slot]]
    if c.slots.len() < 2 {
        err!(
            path(&["slot"]),
            format!("{} slot(s): at least one A/B pair is needed", c.slots.len())
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut classes: HashMap<&str, Vec<usize>> = HashMap::new();
    // A class missing somewhere: which slots pair cannot be told.
    let mut classes_known = true;
    // Compared as what they name (a GUID in any case, a path without `//` or `/./`),
    // not as strings; the agent also resolves them on the disk (a label and a GUID of one
    // partition), which only the disk can tell.
    let mut devices: HashMap<crate::DeviceRef, (usize, &str)> = HashMap::new();
    for (i, s) in c.slots.iter().enumerate() {
        let at = |k: &str| with_index(path(&["slot"]), i, k);
        if !stood(&at("name")) {
            if let Some(first) = names.insert(&s.name, i) {
                err!(
                    at("name"),
                    format!("slot name {:?} is already used by slot[{first}]", s.name)
                );
            }
        }
        if stood(&at("class")) {
            classes_known = false;
        } else {
            classes.entry(&s.class).or_default().push(i);
        }
        for (key, dev) in [
            ("device", Some(&s.device)),
            ("hash-device", s.hash_device.as_ref()),
        ] {
            let Some(dev) = dev.filter(|_| !stood(&at(key))) else {
                continue;
            };
            // The rule `SlotConfig::device_ref` applies, then the path's spelling normalised.
            let parsed = match crate::DeviceRef::parse(dev) {
                Ok(crate::DeviceRef::Path(p)) => {
                    crate::DeviceRef::Path(p.components().collect::<std::path::PathBuf>())
                }
                Ok(d) => d,
                Err(e) => {
                    err!(at(key), e.to_string());
                    continue;
                }
            };
            // A device written by two slots (or as data and tree) would be overwritten
            // by an install while the running slot reads it.
            match devices.get(&parsed) {
                Some((j, other)) => err!(at(key), format!("{dev:?} is already slot[{j}].{other}")),
                None => {
                    devices.insert(parsed, (i, key));
                }
            }
        }
        let separate = c
            .verity
            .as_ref()
            .is_some_and(|v| v.hash_tree == HashTreeLocation::Separate);
        match (separate, &s.hash_device) {
            // At the slot's table, the key being missing (and its name maybe too).
            (true, None) => err!(
                at(""),
                "needs `hash-device`: [verity] hash-tree = \"separate\"".to_string()
            ),
            (false, Some(_)) => err!(
                at("hash-device"),
                "only used with [verity] hash-tree = \"separate\"".to_string()
            ),
            _ => {}
        }
        if let Err(e) = s.partition_type_guid() {
            err!(at("partition-type"), e.to_string());
        }
        if let Some(bn) = &s.bootname {
            let gpt = backend_known
                && matches!(c.boot.backend, Backend::GptChromeos | Backend::GptFlatcar);
            if !["A", "B", "C", "D"].contains(&bn.as_str()) {
                err!(at("bootname"), format!("{bn:?}: expected A, B, C or D"));
            } else if gpt && !["A", "B"].contains(&bn.as_str()) {
                // The GPT backends keep the state in the attribute bits of the pair's two
                // partitions, chosen by bootname: there is no third or fourth.
                err!(
                    at("bootname"),
                    format!(
                        "{bn:?}: the {} backend has slots A and B only",
                        c.boot.backend.name()
                    )
                );
            }
        }
        if !s.read_only {
            out.push(Raw::warning(
                at("read-only"),
                "an A/B slot is normally read-only; dm-verity needs it".to_string(),
            ));
        }
    }
    let mut classes: Vec<(&str, Vec<usize>)> = classes.into_iter().collect();
    classes.sort_by_key(|(_, v)| v[0]);
    let mut first_names: Option<(String, Vec<String>)> = None;
    for (class, members) in classes.iter().filter(|_| classes_known) {
        if members.len() != 2 {
            out.push(Raw::error(
                with_index(path(&["slot"]), members[0], "class"),
                format!(
                    "class {class:?} has {} slot(s): A/B slots come in pairs",
                    members.len()
                ),
            ));
        }
        // Explicit bootnames, else A, B, ... by position in the class.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (pos, &i) in members.iter().enumerate() {
            let bn = c.slots[i]
                .bootname
                .clone()
                .unwrap_or_else(|| ["A", "B", "C", "D"].get(pos).unwrap_or(&"?").to_string());
            if let Some(j) = seen.insert(bn.clone(), i) {
                out.push(Raw::error(
                    with_index(path(&["slot"]), i, "bootname"),
                    format!("bootname {bn} is already used by slot[{j}] of class {class:?}"),
                ));
            }
        }
        // The classes switch together: each has the first class's bootnames.
        let mut names: Vec<String> = seen.into_keys().collect();
        names.sort();
        match &first_names {
            None => first_names = Some((class.to_string(), names)),
            Some((first, want)) if *want != names && members.len() == 2 => {
                out.push(Raw::error(
                    with_index(path(&["slot"]), members[0], "bootname"),
                    format!(
                        "class {class:?} has bootnames {}; the classes switch together, so it needs class {first:?}'s {}",
                        names.join(", "),
                        want.join(", ")
                    ),
                ));
            }
            _ => {}
        }
    }

    for (class, members) in &classes {
        if !crate::valid_class_name(class) {
            out.push(Raw::error(
                with_index(path(&["slot"]), members[0], "class"),
                format!("{class:?}: {CLASS_RULE}"),
            ));
        }
    }

    // [[file]]
    let mut file_classes: HashMap<&str, usize> = HashMap::new();
    let mut file_paths: HashMap<String, (usize, char)> = HashMap::new();
    // The description's other files: a slot's file must be none of them.
    let other_paths: Vec<(String, String)> = [
        ("boot.disk", &b.disk),
        ("boot.grubenv", &b.grubenv),
        ("boot.env-file", &b.env_file),
        ("boot.fw-env-config", &b.fw_env_config),
    ]
    .into_iter()
    .filter_map(|(k, v)| {
        let v: std::path::PathBuf = std::path::Path::new(v.as_deref()?).components().collect();
        Some((format!("`{k}`"), v.to_string_lossy().into_owned()))
    })
    .collect();
    for (i, f) in c.files.iter().enumerate() {
        let at = |k: &str| with_index(path(&["file"]), i, k);
        if !stood(&at("class")) {
            if !crate::valid_class_name(&f.class) {
                err!(at("class"), format!("{:?}: {CLASS_RULE}", f.class));
            } else if let Some(j) = file_classes.insert(&f.class, i) {
                err!(
                    at("class"),
                    format!("class {:?} is already file[{j}]'s", f.class)
                );
            } else if let Some((_, m)) = classes.iter().find(|(k, _)| *k == f.class) {
                err!(
                    at("class"),
                    format!("class {:?} is already slot[{}]'s", f.class, m[0])
                );
            }
        }
        if stood(&at("path")) {
            continue;
        }
        let p = std::path::Path::new(&f.path);
        if !f.path.starts_with('/') {
            err!(
                at("path"),
                format!(
                    "{:?}: an absolute path is needed (the agent runs from any directory)",
                    f.path
                )
            );
        } else if f.path.matches("{slot}").count() != 1 {
            err!(
                at("path"),
                format!(
                    "{:?}: `{{slot}}` must appear once (each slot's file has its own name)",
                    f.path
                )
            );
        } else if p
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            err!(at("path"), format!("{:?}: no `..` in the path", f.path));
        } else if matches!(f.path.rsplit('/').next(), Some("" | "." | "..")) {
            err!(at("path"), format!("{:?}: names a directory", f.path));
        } else if f.path.chars().any(|c| c.is_control()) {
            err!(
                at("path"),
                format!("{:?}: a control character in the path", f.path)
            );
        } else if ["/proc", "/sys", "/dev"].iter().any(|d| p.starts_with(d)) {
            err!(
                at("path"),
                format!("{:?}: not a place for a slot's file", f.path)
            );
        } else {
            // Each slot's file and its temporary name, spelled alike after normalising
            // and compared without case (FAT, the ESP, ignores it): two classes, or one
            // class's two slots, would write one file.
            for letter in ['a', 'b'] {
                let file: std::path::PathBuf = crate::FileConfig::path_for(f, letter)
                    .components()
                    .collect();
                let mut temp = file.clone().into_os_string();
                temp.push(".keel-new");
                for (what, key) in [("file", file.into_os_string()), ("temporary file", temp)] {
                    let key = key.to_string_lossy().to_lowercase();
                    let taken = other_paths.iter().find(|(_, v)| v.to_lowercase() == key);
                    if let Some((setting, _)) = taken {
                        err!(
                            at("path"),
                            format!("slot {letter}'s {what} {key:?} is {setting}")
                        );
                    } else if let Some((j, l)) = file_paths.insert(key.clone(), (i, letter)) {
                        err!(
                            at("path"),
                            format!("slot {letter}'s {what} {key:?} is file[{j}]'s for slot {l}")
                        );
                    }
                }
            }
        }
    }

    // [verity]
    if let Some(v) = &c.verity {
        match &v.class {
            Some(class) if classes_known && !classes.iter().any(|(k, _)| k == class) => {
                let names: Vec<String> = classes.iter().map(|(k, _)| format!("{k:?}")).collect();
                out.push(Raw::error(
                    path(&["verity", "class"]),
                    format!(
                        "{class:?} is not a slot class (the slot classes: {})",
                        names.join(", ")
                    ),
                ));
            }
            None if classes_known && classes.len() > 1 => {
                let names: Vec<String> = classes.iter().map(|(k, _)| format!("{k:?}")).collect();
                out.push(Raw::error(
                    path(&["verity"]),
                    format!(
                        "needs `class`: which of the slot classes {} carries the dm-verity tree",
                        names.join(", ")
                    ),
                ));
            }
            _ => {}
        }
        let mut err = |k: &str, m: String| out.push(Raw::error(path(&["verity", k]), m));
        if let Err(e) = v.hash_algorithm() {
            err("algorithm", e.to_string());
        }
        for (k, size) in [
            ("data-block-size", v.data_block_size),
            ("hash-block-size", v.hash_block_size),
        ] {
            if let Err(e) = keel_verity::check_block_size("block size", size) {
                err(k, e.to_string());
            }
        }
        if let Err(e) = v.salt_bytes() {
            err("salt", e.to_string());
        }
        if let Err(e) = v.hash_type() {
            err("format", e.to_string());
        }
        if let Some(r) = v.fec_roots {
            if !(2..=24).contains(&r) {
                err("fec-roots", format!("{r}: expected 2 to 24"));
            } else if v.data_block_size != v.hash_block_size {
                err(
                    "fec-roots",
                    "FEC needs equal data and hash block sizes".into(),
                );
            }
        }
    }

    // [agent]
    if let Some(a) = &c.agent {
        agent(a, &stood, &mut out);
    }

    // [trust]
    if let Err(e) = c.trust.minimum() {
        out.push(Raw::error(
            path(&["trust", "minimum-version"]),
            e.to_string(),
        ));
    }
    if c.trust.keys.is_empty() {
        out.push(Raw::warning(
            path(&["trust"]),
            "no trusted keys: no update can be verified".to_string(),
        ));
    }
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut material: HashMap<String, usize> = HashMap::new();
    for (i, k) in c.trust.keys.iter().enumerate() {
        let at = |f: &str| with_index(path(&["trust", "key"]), i, f);
        if let Some(j) = ids.insert(&k.id, i) {
            out.push(Raw::error(
                at("id"),
                format!("key id {:?} is already used by trust.key[{j}]", k.id),
            ));
        }
        if let Err(e) = k.public_key() {
            out.push(Raw::error(at("ed25519"), e.to_string()));
        } else if let Some(j) = material.insert(k.ed25519.to_ascii_lowercase(), i) {
            // A keyring holds a key once: two ids for one key is a rotation mistake.
            out.push(Raw::error(
                at("ed25519"),
                format!("the same key as trust.key[{j}]"),
            ));
        }
        if let Err(e) = k.not_after_time() {
            out.push(Raw::error(at("not-after"), e.to_string()));
        }
    }
    out
}

/// `[agent]`'s rules: URLs and paths of the right form, the strategy's own settings (and
/// no other's), checks that say what they check.
fn agent(
    a: &crate::AgentConfig,
    stood: &dyn Fn(&Vec<crate::finding::Seg>) -> bool,
    out: &mut Vec<Raw>,
) {
    use crate::Strategy;
    let at = |k: &str| path(&["agent", k]);
    let mut err = |p: Vec<crate::finding::Seg>, m: String| out.push(Raw::error(p, m));
    let url = |u: &str| {
        (u.starts_with("http://") || u.starts_with("https://"))
            && u.split("://").nth(1).is_some_and(|rest| !rest.is_empty())
            && !u.chars().any(|c| c.is_control() || c == ' ')
    };
    if !stood(&at("index")) && !url(&a.index) {
        err(
            at("index"),
            format!("{:?}: an http:// or https:// URL", a.index),
        );
    }
    let absolute = |v: &str| v.starts_with('/') && !v.chars().any(char::is_control);
    for (key, v) in [
        ("trust-root", Some(&a.trust_root)),
        ("socket", Some(&a.socket)),
        ("etcd-ca", a.etcd_ca.as_ref()),
        ("etcd-cert", a.etcd_cert.as_ref()),
        ("etcd-key", a.etcd_key.as_ref()),
    ] {
        if let Some(v) = v.filter(|v| !stood(&at(key)) && !absolute(v)) {
            err(at(key), format!("{v:?}: an absolute path is needed"));
        }
    }
    if a.jitter > a.interval {
        err(
            at("jitter"),
            format!("{} s: at most the interval ({} s)", a.jitter, a.interval),
        );
    }
    // Names that go into etcd keys, URLs and the pause reason as they are.
    let name = |v: &str| {
        !v.is_empty()
            && v.len() <= 128
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    for (key, v) in [("group", Some(&a.group)), ("node-id", a.node_id.as_ref())] {
        if let Some(v) = v.filter(|v| !name(v)) {
            err(
                at(key),
                format!("{v:?}: 1 to 128 letters, digits, '.', '_' or '-'"),
            );
        }
    }
    let etcd_only: [(&str, bool); 6] = [
        ("etcd", !a.etcd.is_empty()),
        ("etcd-ca", a.etcd_ca.is_some()),
        ("etcd-cert", a.etcd_cert.is_some()),
        ("etcd-key", a.etcd_key.is_some()),
        ("slots", a.slots != 1),
        ("lease-ttl", a.lease_ttl != 900),
    ];
    if a.strategy != Strategy::Etcd {
        for (key, set) in etcd_only {
            if set {
                err(at(key), format!("`{key}` belongs to strategy = \"etcd\""));
            }
        }
    }
    if a.strategy != Strategy::Fleetlock && a.fleetlock.is_some() {
        err(
            at("fleetlock"),
            "`fleetlock` belongs to strategy = \"fleetlock\"".into(),
        );
    }
    match a.strategy {
        Strategy::Etcd if a.etcd.is_empty() => err(
            at("strategy"),
            "strategy = \"etcd\" needs `etcd`, the cluster's endpoints".into(),
        ),
        Strategy::Fleetlock if a.fleetlock.is_none() => err(
            at("strategy"),
            "strategy = \"fleetlock\" needs `fleetlock`, the server's URL".into(),
        ),
        _ => {}
    }
    for (i, e) in a.etcd.iter().enumerate() {
        if !url(e) {
            err(
                with_index(path(&["agent", "etcd"]), i, ""),
                format!("{e:?}: an http:// or https:// URL"),
            );
        }
    }
    if let Some(f) = a.fleetlock.as_deref().filter(|f| !url(f)) {
        err(
            at("fleetlock"),
            format!("{f:?}: an http:// or https:// URL"),
        );
    }
    if a.etcd_cert.is_some() != a.etcd_key.is_some() {
        err(
            at("etcd-cert"),
            "`etcd-cert` and `etcd-key` go together".into(),
        );
    }
    if a.reboot_command.first().is_none_or(|p| p.is_empty()) {
        err(at("reboot-command"), "a program is needed".into());
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, c) in a.checks.iter().enumerate() {
        let at = |k: &str| with_index(path(&["agent", "check"]), i, k);
        if !stood(&at("name")) {
            if let Some(j) = names.insert(&c.name, i) {
                err(
                    at("name"),
                    format!("check name {:?} is already agent.check[{j}]'s", c.name),
                );
            }
        }
        match (c.command.first(), &c.unit) {
            (Some(_), Some(_)) => err(
                at("unit"),
                "a check is a `command` or a `unit`, not both".into(),
            ),
            (None, None) => err(at(""), "needs `command` or `unit`".into()),
            (Some(p), None) if p.is_empty() => err(at("command"), "a program is needed".into()),
            (None, Some(u))
                if u.is_empty()
                    || u.starts_with('-')
                    || u.chars().any(|c| c.is_control() || c == '/') =>
            {
                err(at("unit"), format!("{u:?}: not a unit name"))
            }
            _ => {}
        }
    }
}
