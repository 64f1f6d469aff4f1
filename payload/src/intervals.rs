//! Sets of target blocks as merged intervals (which operation wrote what).

use std::ops::Range;

/// Target blocks written by the operations so far, as disjoint merged intervals of block
/// numbers (half-open ranges, as [`Extent::range`](crate::Extent::range) gives them).
#[derive(Default)]
pub(crate) struct Written(std::collections::BTreeMap<u64, u64>);

impl Written {
    pub(crate) fn insert(&mut self, e: Range<u64>) {
        let (mut a, mut b) = (e.start, e.end);
        // Merge with every interval that overlaps or touches [a, b).
        let mut absorbed = Vec::new();
        if let Some((&s, &t)) = self.0.range(..=a).next_back() {
            if t >= a {
                a = s;
                b = b.max(t);
                absorbed.push(s);
            }
        }
        for (&s, &t) in self.0.range(a..=b) {
            b = b.max(t);
            absorbed.push(s);
        }
        for s in absorbed {
            self.0.remove(&s);
        }
        self.0.insert(a, b);
    }

    pub(crate) fn overlaps(&self, e: Range<u64>) -> bool {
        // The last interval starting before the extent's end is the only candidate.
        self.0
            .range(..e.end)
            .next_back()
            .is_some_and(|(_, &t)| t > e.start)
    }

    pub(crate) fn covers(&self, e: Range<u64>) -> bool {
        self.0
            .range(..=e.start)
            .next_back()
            .is_some_and(|(_, &t)| t >= e.end)
    }
}
