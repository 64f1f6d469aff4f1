//! The node's identity, given at first boot the way cloud-config gave it: the kernel
//! command line names a URL (`keel.config-url=`); it is fetched once, and what it says is
//! kept as a drop-in of the system description in the state directory, read at every
//! start after and never fetched again.
//!
//! The drop-in may name the node and its group (`[agent]` `node-id`, `group`) and nothing
//! else. It comes over a network the description does not trust: a forged one could put
//! a node in another group's turn, never change where updates come from, which keys sign
//! them, or what runs as a check.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// The kernel command line's key naming the URL.
pub const CMDLINE_KEY: &str = "keel.config-url";

/// The drop-in's name in the state directory.
pub const DROP_IN: &str = "identity.toml";

/// The most a drop-in may be: a few lines.
pub const MAX_BYTES: u64 = 16 << 10;

/// What the network may set.
const ALLOWED: [&str; 2] = ["node-id", "group"];

/// Why the identity could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityProblem {
    /// The transfer failed (after keel-fetch's retries, within its deadline).
    #[error(transparent)]
    Fetch(#[from] keel_fetch::Error),
    /// The answer is longer than [`MAX_BYTES`].
    #[error("more than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Not UTF-8, or not TOML.
    #[error("not a TOML document: {0}")]
    Syntax(String),
    /// A key other than `[agent]` `node-id` and `group`.
    #[error("`{key}`: a drop-in from the network may set only agent.node-id and agent.group")]
    Forbidden {
        /// The key, dotted.
        key: String,
    },
    /// With the description, a value is refused (the first finding).
    #[error("{0}")]
    Invalid(keel_config::Finding),
    /// Neither the node's name nor its group: an answer that says nothing is not kept
    /// (a server caught writing the file would fix the node's identity for good).
    #[error("names neither agent.node-id nor agent.group")]
    Empty,
}

/// The URL the kernel command line names, if any: split as the kernel splits it (quotes
/// kept together), the last one before `--` (what follows is init's), none with control
/// characters.
pub fn url_on_cmdline(cmdline: &str) -> Option<String> {
    keel_bootflags::spec::split_cmdline(cmdline)
        .into_iter()
        .take_while(|w| w != "--")
        .filter_map(|w| {
            let v = w.strip_prefix(CMDLINE_KEY)?.strip_prefix('=')?;
            (!v.is_empty() && !v.chars().any(char::is_control)).then(|| v.to_string())
        })
        .last()
}

/// The identity drop-in for the description at `description`: the one kept in
/// `state_dir`, else (first boot) fetched from the URL on `root`'s `/proc/cmdline`,
/// checked and kept. `None` when there is neither. A failure keeps nothing: the next
/// start asks again.
pub fn drop_in(
    description: &Path,
    root: &Path,
    state_dir: &Path,
    user_agent: &str,
) -> Result<Option<PathBuf>> {
    // A broken description is its own error, not the identity's: nothing is fetched.
    let base = keel_config::read_source(description)
        .map_err(|e| Error::io(format!("reading {}", description.display()), e))?;
    let named = description.display().to_string();
    if let Some(f) = first_error(&[(named.clone(), base.clone())]) {
        return Err(Error::Setting {
            field: "description".into(),
            reason: f.to_string(),
        });
    }
    let kept = state_dir.join(DROP_IN);
    match std::fs::symlink_metadata(&kept) {
        Ok(m) if m.is_file() => {
            // Kept from the network, kept to the network's rules: an edit of the state
            // directory does not reach the index, the keys or the checks.
            let bytes = keel_io::read_bounded(&kept, MAX_BYTES)
                .map_err(|e| Error::io(format!("reading {}", kept.display()), e))?;
            let refused = |problem| Error::KeptIdentity {
                path: kept.display().to_string(),
                problem,
            };
            let text = String::from_utf8(bytes)
                .map_err(|e| refused(IdentityProblem::Syntax(e.to_string())))?;
            check(&named, &base, &kept.display().to_string(), &text).map_err(refused)?;
            return Ok(Some(kept));
        }
        Ok(_) => {
            return Err(Error::io(
                format!("{}", kept.display()),
                std::io::Error::other("not a regular file"),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("{}", kept.display()), e)),
    }
    let cmdline = match keel_io::read_bounded(&root.join("proc/cmdline"), 64 << 10) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => return Ok(None),
    };
    let Some(url) = url_on_cmdline(&cmdline) else {
        return Ok(None);
    };
    let fail = |problem: IdentityProblem| Error::Identity {
        url: url.clone(),
        problem,
    };
    let text = fetch(&url, user_agent).map_err(fail)?;
    check(&named, &base, &url, &text).map_err(fail)?;
    std::fs::create_dir_all(state_dir)
        .map_err(|e| Error::io(format!("creating {}", state_dir.display()), e))?;
    keel_io::replace_file(&kept, text.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", kept.display()), e))?;
    Ok(Some(kept))
}

fn fetch(url: &str, user_agent: &str) -> Result<String, IdentityProblem> {
    // A few lines: the whole answer within half a minute, or the next start asks again.
    let opts = keel_fetch::FetchOptions::default()
        .deadline(Duration::from_secs(30))
        .max_attempts(3)
        .user_agent(user_agent);
    let reader = keel_fetch::HttpReader::new(url, opts)?;
    let mut bytes = Vec::new();
    reader
        .take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            // keel-fetch's reader carries its own error inside the io::Error.
            let text = e.to_string();
            match e.into_inner().map(|b| b.downcast::<keel_fetch::Error>()) {
                Some(Ok(f)) => IdentityProblem::Fetch(*f),
                _ => IdentityProblem::Syntax(text),
            }
        })?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(IdentityProblem::TooLarge { limit: MAX_BYTES });
    }
    String::from_utf8(bytes).map_err(|e| IdentityProblem::Syntax(e.to_string()))
}

/// Only the identity's keys, at least one of them, and the description `base` with it
/// valid.
fn check(name: &str, base: &str, url: &str, text: &str) -> Result<(), IdentityProblem> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| IdentityProblem::Syntax(e.message().to_string()))?;
    let mut said = 0;
    for (key, value) in &table {
        let toml::Value::Table(agent) = value else {
            return Err(IdentityProblem::Forbidden { key: key.clone() });
        };
        if key != "agent" {
            return Err(IdentityProblem::Forbidden { key: key.clone() });
        }
        if let Some(k) = agent.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
            return Err(IdentityProblem::Forbidden {
                key: format!("agent.{k}"),
            });
        }
        said += agent.len();
    }
    if said == 0 {
        return Err(IdentityProblem::Empty);
    }
    match first_error(&[
        (name.to_string(), base.to_string()),
        (url.to_string(), text.to_string()),
    ]) {
        Some(f) => Err(IdentityProblem::Invalid(f)),
        None => Ok(()),
    }
}

fn first_error(sources: &[(String, String)]) -> Option<keel_config::Finding> {
    keel_config::load_sources(sources)
        .findings
        .into_iter()
        .find(|f| f.severity == keel_config::Severity::Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_found_among_the_arguments() {
        let line = "console=ttyS0 keel.slot=A keel.config-url=http://10.0.2.2/n/1.toml quiet\n";
        assert_eq!(
            url_on_cmdline(line).as_deref(),
            Some("http://10.0.2.2/n/1.toml")
        );
        assert_eq!(url_on_cmdline("keel.config-urlx=1 keel.config-url="), None);
        assert_eq!(url_on_cmdline("root=/dev/vda"), None);
        // The last before `--`; quoted as the kernel quotes; none with control characters.
        assert_eq!(
            url_on_cmdline("keel.config-url=http://a/1 \"keel.config-url=http://b/2\" -- keel.config-url=http://c/3")
                .as_deref(),
            Some("http://b/2")
        );
        assert_eq!(url_on_cmdline("keel.config-url=http://a/\x1b[2J"), None);
    }
}
