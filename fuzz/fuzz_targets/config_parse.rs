//! The configuration loader on arbitrary bytes, as one file or split into a base and a
//! drop-in, and as JSON: never a panic; every finding has a position inside its file;
//! a configuration without errors survives its TOML round trip.
#![no_main]

use keel_config::{load_json, load_sources, to_toml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let (a, b) = text.split_at(
        text.char_indices()
            .nth(text.chars().count() / 2)
            .map_or(0, |(i, _)| i),
    );
    for sources in [
        vec![("a".to_string(), text.clone())],
        vec![
            ("a".to_string(), a.to_string()),
            ("b".to_string(), b.to_string()),
        ],
    ] {
        let l = load_sources(&sources);
        for f in &l.findings {
            let src = &sources
                .iter()
                .find(|(n, _)| *n == f.file)
                .expect("finding names a source")
                .1;
            assert!(
                f.line >= 1 && f.line <= src.lines().count().max(1) + 1,
                "{f}"
            );
        }
        if let Some(c) = l.config {
            let again = load_sources(&[("r".to_string(), to_toml(&c).expect("serializable"))]);
            assert_eq!(again.config.as_ref(), Some(&c));
        }
    }
    let _ = load_json("j", &text);
});
