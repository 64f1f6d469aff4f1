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

    /// `f` of each item, on this many threads (no more than there are items), in the
    /// items' order. The threads take the next item as they finish one: items of very
    /// different costs keep every thread busy. A panic in `f` is resumed here.
    ///
    /// ```
    /// use keel_io::Threads;
    /// let squares = Threads::exactly(2).map((1..=5).collect(), |x: u64| x * x);
    /// assert_eq!(squares, [1, 4, 9, 16, 25]);
    /// ```
    pub fn map<T: Send, R: Send>(self, items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
        use std::sync::Mutex;
        let n = items.len();
        let threads = self.count().min(n);
        if threads <= 1 {
            return items.into_iter().map(f).collect();
        }
        let queue = Mutex::new(items.into_iter().enumerate());
        let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        // A poisoned lock means another thread panicked: stop taking items.
                        while let Some((i, item)) = queue.lock().ok().and_then(|mut q| q.next()) {
                            out.push((i, f(item)));
                        }
                        out
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        done.sort_unstable_by_key(|d| d.0);
        done.into_iter().map(|d| d.1).collect()
    }
}

impl From<NonZeroUsize> for Threads {
    fn from(n: NonZeroUsize) -> Self {
        Threads::Exactly(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keeps_the_order_of_items_of_uneven_cost_and_resumes_a_panic() {
        let items: Vec<u64> = (0..200).collect();
        let out = Threads::exactly(3).map(items.clone(), |x| {
            // Uneven costs: the threads finish out of order.
            if x % 7 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            x * 3
        });
        assert_eq!(out, items.iter().map(|x| x * 3).collect::<Vec<_>>());
        assert!(Threads::exactly(4).map(Vec::<u8>::new(), |x| x).is_empty());
        let r = std::panic::catch_unwind(|| {
            Threads::exactly(2).map((0..50).collect(), |x: u32| {
                assert!(x != 17, "item 17");
                x
            })
        });
        assert!(r.is_err(), "a panic in f reaches the caller");
    }
}
