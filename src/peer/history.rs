//! The last answers of a peer (or latency class), each with the second it came: the
//! history a deadline is learned from while the time window holds fewer than
//! `min_samples`.
//!
//! A busy peer's window fills within `window` and this ring goes unread. A quiet one keeps
//! its last `min_samples` answers for up to `max_history`, so ten calls a minute reach the
//! quantile after ten minutes instead of never. It costs 12 bytes per kept answer (the
//! latency, its second, and a scratch copy to sort), allocated at the first answer: 1,200
//! bytes at the default `min_samples`, at most [`MAX_RECENT`] x 12 = 12,288 bytes.

use std::time::Duration;

use tokio::time::Instant;

use crate::policy::TimeoutPolicy;

/// Most answers a history keeps, whatever `min_samples` is.
pub(crate) const MAX_RECENT: usize = 1024;

/// Heap bytes per kept answer: latency and second, plus their scratch copy.
pub(crate) const BYTES_PER_ANSWER: usize = 3 * std::mem::size_of::<u32>();

/// A ring of the last answers.
pub(crate) struct Recent {
    /// (latency in the window's units, saturated; seconds since `epoch`), oldest at `next`
    /// once full.
    slots: Vec<(u32, u32)>,
    next: usize,
    cap: usize,
    epoch: Instant,
    /// The second the last answer was kept in, as the instants it spans and its number:
    /// answers within it reckon no second of their own.
    last: (Instant, Instant, u32),
    /// Where the answers in reach are copied to be read (sorted, selected) in place.
    scratch: Vec<u32>,
}

impl Recent {
    /// An empty history for `policy`, counting seconds from `epoch`. Allocates nothing.
    pub(crate) fn new(policy: &TimeoutPolicy, epoch: Instant) -> Recent {
        Recent {
            slots: Vec::new(),
            next: 0,
            cap: capacity(policy),
            epoch,
            last: (epoch, epoch, 0),
            scratch: Vec::new(),
        }
    }

    /// Keeps one answer of `units` at `now`, forgetting the oldest when full.
    pub(crate) fn push(&mut self, units: u64, now: Instant) {
        if self.slots.capacity() == 0 {
            // One allocation per history, at its first answer.
            self.slots.reserve_exact(self.cap);
            self.scratch.reserve_exact(self.cap);
        }
        let (from, until, _) = self.last;
        if now < from || now >= until {
            let second = self.second(now);
            let from = self.epoch + Duration::from_secs(u64::from(second));
            self.last = (from, from + Duration::from_secs(1), second);
        }
        let slot = (u32::try_from(units).unwrap_or(u32::MAX), self.last.2);
        if self.slots.len() < self.cap {
            self.slots.push(slot);
        } else {
            self.slots[self.next] = slot;
        }
        self.next += 1;
        if self.next >= self.cap {
            self.next = 0;
        }
    }

    /// Whether the ring is full of answers from the last `span`: a peer busy enough for
    /// the time window's histograms.
    pub(crate) fn full_within(&self, span: Duration, now: Instant) -> bool {
        self.slots.len() == self.cap
            && self.age(self.slots[self.next].1, now) <= span.as_secs().saturating_add(1)
    }

    /// How many whole seconds ago the oldest answer kept came (`None`: none kept).
    pub(crate) fn oldest_age(&self, now: Instant) -> Option<u64> {
        let oldest = if self.slots.len() == self.cap {
            self.slots.get(self.next)
        } else {
            self.slots.first()
        };
        oldest.map(|&(_, second)| self.age(second, now))
    }

    /// The answers from the last `reach` (a scratch copy, free to reorder) and how far
    /// back the oldest of them goes.
    pub(crate) fn within(&mut self, reach: Duration, now: Instant) -> (&mut [u32], Duration) {
        self.scratch.clear();
        let mut oldest = 0;
        for &(units, second) in &self.slots {
            let age = self.age(second, now);
            if age <= reach.as_secs() {
                self.scratch.push(units);
                oldest = oldest.max(age);
            }
        }
        (&mut self.scratch, Duration::from_secs(oldest))
    }

    /// How many answers the ring holds when full.
    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    /// How many answers are kept.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The `i`-th answer kept (in no particular order), in the window's units.
    pub(crate) fn get(&self, i: usize) -> u64 {
        u64::from(self.slots[i].0)
    }

    /// The slowest answer kept, in the window's units.
    pub(crate) fn slowest(&self) -> u64 {
        self.slots.iter().map(|s| u64::from(s.0)).max().unwrap_or(0)
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<(u32, u32)>()
            + self.scratch.capacity() * std::mem::size_of::<u32>()
    }

    fn second(&self, now: Instant) -> u32 {
        let secs = now.saturating_duration_since(self.epoch).as_secs();
        u32::try_from(secs).unwrap_or(u32::MAX)
    }

    /// Whole seconds from `second` to `now`.
    fn age(&self, second: u32, now: Instant) -> u64 {
        u64::from(self.second(now).saturating_sub(second))
    }
}

/// How many answers a history under `policy` keeps.
pub(crate) fn capacity(policy: &TimeoutPolicy) -> usize {
    usize::try_from(policy.min_samples)
        .unwrap_or(MAX_RECENT)
        .clamp(1, MAX_RECENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_answers_within_reach() {
        let policy = TimeoutPolicy::default().min_samples(3);
        let t0 = Instant::now();
        let mut r = Recent::new(&policy, t0);
        assert_eq!(r.heap_bytes(), 0, "nothing before the first answer");
        for (i, v) in [10, 20, 30, 40].into_iter().enumerate() {
            r.push(v, t0 + Duration::from_secs(60 * i as u64));
        }
        assert_eq!(r.heap_bytes(), 3 * BYTES_PER_ANSWER);
        let now = t0 + Duration::from_secs(180);
        let (live, oldest) = r.within(Duration::from_secs(600), now);
        live.sort_unstable();
        assert_eq!(live, [20, 30, 40], "the oldest was pushed out");
        assert_eq!(oldest, Duration::from_secs(120));
        let (live, _) = r.within(Duration::from_secs(90), now);
        assert_eq!(live.len(), 2, "only the last 90 s");
        assert!(r.full_within(Duration::from_secs(120), now));
        assert!(!r.full_within(Duration::from_secs(60), now));
        assert_eq!(r.slowest(), 40);
    }

    #[test]
    fn capacity_follows_min_samples_within_bounds() {
        assert_eq!(TimeoutPolicy::default().history_bytes(), 1_200);
        let cap = |n| capacity(&TimeoutPolicy::default().min_samples(n));
        assert_eq!(cap(100), 100);
        assert_eq!(cap(1), 1);
        assert_eq!(cap(u64::MAX), MAX_RECENT);
    }
}
