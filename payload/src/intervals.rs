//! Sets of target blocks as merged intervals (which operation wrote what).

use crate::format::Extent;

/// Target blocks written by the operations so far, as disjoint merged intervals.
#[derive(Default)]
pub(crate) struct Written(std::collections::BTreeMap<u64, u64>);

impl Written {
    pub(crate) fn insert(&mut self, e: &Extent) {
        let (mut a, mut b) = (e.start, e.start + e.blocks);
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

    pub(crate) fn overlaps(&self, e: &Extent) -> bool {
        // The last interval starting before the extent's end is the only candidate.
        self.0
            .range(..e.start + e.blocks)
            .next_back()
            .is_some_and(|(_, &t)| t > e.start)
    }

    pub(crate) fn covers(&self, e: &Extent) -> bool {
        self.0
            .range(..=e.start)
            .next_back()
            .is_some_and(|(_, &t)| t >= e.start + e.blocks)
    }
}
