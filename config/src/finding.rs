//! Findings: what is wrong with a configuration and where. Validation produces [`Raw`]
//! findings at paths in the merged configuration; loading locates them in the file and
//! line each setting came from. Both sides depend on this module, not on each other.

use std::fmt;

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The configuration cannot be used.
    Error,
    /// Allowed, but probably not what was meant.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One finding, located in its source file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// The file the offending setting came from.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The setting, as `slot[1].device` (indices count in the merged configuration).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Finding {
    /// Compiler style: `FILE:LINE:COL: error: PATH: MESSAGE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: ",
            self.file, self.line, self.column, self.severity
        )?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// A finding before it is located: a path in the merged configuration.
#[derive(Clone, Debug)]
pub(crate) struct Raw {
    pub severity: Severity,
    pub path: Vec<Seg>,
    /// Point at the key rather than the value (unknown keys).
    pub at_key: bool,
    pub message: String,
}

impl Raw {
    pub(crate) fn error(path: Vec<Seg>, message: impl Into<String>) -> Raw {
        Raw {
            severity: Severity::Error,
            path,
            at_key: false,
            message: message.into(),
        }
    }
    pub(crate) fn warning(path: Vec<Seg>, message: impl Into<String>) -> Raw {
        Raw {
            severity: Severity::Warning,
            path,
            at_key: false,
            message: message.into(),
        }
    }
}

/// A path segment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Build a path: `p(&["slot"]).i(1).k("device")`.
pub(crate) fn path(parts: &[&str]) -> Vec<Seg> {
    parts.iter().map(|p| Seg::Key((*p).to_string())).collect()
}

pub(crate) fn with_index(mut p: Vec<Seg>, i: usize, key: &str) -> Vec<Seg> {
    p.push(Seg::Index(i));
    if !key.is_empty() {
        p.push(Seg::Key(key.to_string()));
    }
    p
}

/// `slot[1].device`, as findings show a path.
pub(crate) fn path_text(p: &[Seg]) -> String {
    let mut s = String::new();
    for seg in p {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                // As TOML writes it: a key that is not bare is quoted, so `"a.b"` and
                // `a.b` are two paths.
                let bare = !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if bare {
                    s.push_str(k);
                } else {
                    s.push_str(&format!("{k:?}"));
                }
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}
