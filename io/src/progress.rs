//! Progress of long work, and a way to stop it.

use std::sync::atomic::{AtomicBool, Ordering};

/// Receives progress of a long operation (bytes done out of a total) and may ask it to
/// stop. Called from worker threads, in increasing order of `done`.
///
/// Work that checks [`Progress::cancelled`] stops at its next safe point and returns a
/// "cancelled" error, leaving what it did resumable (an apply keeps its resume record).
pub trait Progress: Sync {
    /// `done` of `total` bytes processed.
    fn progress(&self, done: u64, total: u64);
    /// Whether the caller wants the work stopped.
    fn cancelled(&self) -> bool {
        false
    }
}

impl<F: Fn(u64, u64) + Sync> Progress for F {
    fn progress(&self, done: u64, total: u64) {
        self(done, total)
    }
}

/// A cancellation switch that can be shared between threads; as a [`Progress`] it
/// reports nothing and answers whether [`Cancel::cancel`] was called.
#[derive(Debug, Default)]
pub struct Cancel(AtomicBool);

impl Cancel {
    /// Not cancelled.
    pub fn new() -> Self {
        Cancel::default()
    }
    /// Ask the work to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Progress for Cancel {
    fn progress(&self, _done: u64, _total: u64) {}
    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }
}

/// The error of work stopped through [`Progress::cancelled`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}
