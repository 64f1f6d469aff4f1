//! The I/O error every Keel crate reports: the operating system's error with what Keel was
//! doing when it came.

use std::fmt;
use std::io;

/// An I/O error with its context ("reading the backup GPT header at LBA 12287"): the one
/// shape of the `Io` variant of keel-partition's, keel-payload's and keel-verity's errors.
#[derive(Debug)]
pub struct IoError {
    /// What Keel was doing.
    pub context: String,
    /// The underlying error.
    pub source: io::Error,
}

impl IoError {
    /// `source`, met while doing `context`.
    pub fn new(context: impl Into<String>, source: io::Error) -> Self {
        IoError {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
