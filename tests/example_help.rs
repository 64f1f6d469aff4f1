//! Every example's help explains itself: each argument and option of each subcommand has
//! a description, and no option name means two things in one example.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::collections::HashMap;

use common::{example, run, stdout};

const EXAMPLES: [&str; 12] = [
    "verity",
    "verity-sign",
    "fsverity",
    "slots",
    "bootstate",
    "payload",
    "config",
    "update",
    "publish",
    "ab-update",
    "fleet",
    "fleetlock",
];

/// The subcommands `help` lists.
fn subcommands(help: &str) -> Vec<String> {
    section(help, "Commands:")
        .into_iter()
        .filter_map(|(name, _)| name.split_whitespace().next().map(str::to_string))
        .filter(|n| n != "help")
        .collect()
}

/// (entry, description) pairs of one section, in either of clap's layouts: the
/// description after the entry on its line, or indented on the lines below it.
fn section(help: &str, title: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut inside = false;
    for line in help.lines() {
        if line.trim_end() == title {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        if line.trim().is_empty() {
            if out.is_empty() {
                continue;
            }
            break;
        }
        let body = line.trim_start();
        let indent = line.len() - body.len();
        let starts_entry =
            indent <= 6 && (body.starts_with('-') || body.starts_with('<') || title == "Commands:");
        if starts_entry {
            let (name, desc) = match body.split_once("  ") {
                Some((n, d)) => (n.trim().to_string(), d.trim().to_string()),
                None => (body.trim().to_string(), String::new()),
            };
            out.push((name, desc));
        } else if let Some(last) = out.last_mut() {
            last.1.push(' ');
            last.1.push_str(body.trim());
        }
    }
    out
}

#[test]
fn every_argument_and_option_is_described() {
    let mut missing = Vec::new();
    for ex in EXAMPLES {
        let top = stdout(&run(&example(ex), &["--help"]));
        let mut pages = vec![(String::new(), top.clone())];
        for sub in subcommands(&top) {
            pages.push((sub.clone(), stdout(&run(&example(ex), &[&sub, "--help"]))));
        }
        let mut meanings: HashMap<String, (String, String)> = HashMap::new();
        for (sub, help) in pages {
            for title in ["Arguments:", "Options:"] {
                for (name, desc) in section(&help, title) {
                    let words = desc.split("[default").next().unwrap_or("").trim();
                    if words.is_empty() {
                        missing.push(format!("{ex} {sub}: {name}"));
                    }
                    // One option name, one kind of value across the example's
                    // subcommands (no `--hash <ALGORITHM>` here, `--hash <HASH>` there).
                    let mut parts = name.split([' ', ',']).filter(|w| !w.is_empty());
                    let flag = parts.find(|w| w.starts_with("--")).map(str::to_string);
                    let value = parts.find(|w| w.starts_with('<')).unwrap_or("").to_string();
                    if let Some(flag) = flag.filter(|f| f != "--help") {
                        match meanings.get(&flag) {
                            Some((other, before)) if *before != value => missing.push(format!(
                                "{ex}: {flag} takes {before:?} in {other} but {value:?} in {sub}"
                            )),
                            Some(_) => {}
                            None => {
                                meanings.insert(flag, (sub.clone(), value));
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "undescribed or ambiguous:\n{}",
        missing.join("\n")
    );
}

/// The README names every example subcommand a user would reach for, and no file that is
/// not in the repository.
#[test]
fn the_readme_documents_the_examples_and_points_only_inside_the_repository() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for ex in EXAMPLES {
        let top = stdout(&run(&example(ex), &["--help"]));
        for sub in subcommands(&top) {
            assert!(
                readme.contains(&format!("--example {ex} -- {sub}"))
                    || readme.contains(&format!("| {sub}"))
                    || readme.contains(&format!("{sub} "))
                        && readme.contains(&format!("--example {ex}")),
                "README does not show `{ex} {sub}`"
            );
        }
    }
    for named in [
        "verity -- repair",
        "verity-sign -- demo",
        "--fec-device",
        "--root-hash-file",
        "--slot-mib",
    ] {
        assert!(readme.contains(named), "README does not mention {named}");
    }
    // Paths in backticks that look like repository files must exist.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for word in readme.split('`').skip(1).step_by(2) {
        let path = word.split_whitespace().next().unwrap_or("");
        let looks_like_file = path.contains('/')
            && !path.starts_with('/')
            && !path.contains("://")
            && !path.starts_with("..")
            && (path.ends_with(".rs")
                || path.ends_with(".sh")
                || path.ends_with(".md")
                || path.ends_with('/'));
        if looks_like_file {
            assert!(
                root.join(path).exists(),
                "README points to {path}, which is not in the repository"
            );
        }
    }
}
