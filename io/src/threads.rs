//! How many worker threads a long job may use: one type for every crate's options.

use std::num::NonZeroUsize;

/// Worker threads for hashing, parity, delta generation: every core the process may run on
/// (the default), or an exact number.
///
/// ```
/// use keel_io::Threads;
/// assert_eq!(Threads::exactly(3).count(), 3);
/// assert_eq!(Threads::exactly(0), Threads::AllCores); // 0 means "all", as in `zstd -T0`
/// assert!(Threads::AllCores.count() >= 1);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Threads {
    /// Every core the process may run on (its CPU affinity and cgroup quota).
    #[default]
    AllCores,
    /// Exactly this many.
    Exactly(NonZeroUsize),
}

impl Threads {
    /// `n` threads; 0 means [`Threads::AllCores`].
    pub fn exactly(n: usize) -> Self {
        NonZeroUsize::new(n).map_or(Threads::AllCores, Threads::Exactly)
    }

    /// The number of threads to start (at least 1).
    pub fn count(self) -> usize {
        match self {
            Threads::Exactly(n) => n.get(),
            Threads::AllCores => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        }
    }
}

impl From<NonZeroUsize> for Threads {
    fn from(n: NonZeroUsize) -> Self {
        Threads::Exactly(n)
    }
}
