//! The last answers of a peer (or latency class), each with the second it came: the
//! history a deadline is learned from while the time window holds fewer than
//! `min_samples`.
//!
//! A busy peer's window fills within `window` and this ring goes unread. A quiet one keeps
//! its last `min_samples` answers for up to `max_history`, so ten calls a minute reach the
//! quantile after ten minutes instead of never. It costs 20 bytes per kept answer (the
//! latency in 64 bits, so any `max` a policy allows fits; its second; and a scratch copy of
//! the latency to sort), allocated at the first answer: 2,000 bytes at the default
//! `min_samples`, at most [`MAX_RECENT`](crate::policy::MAX_RECENT) x 20 = 20,480 bytes.

use std::time::Duration;

use tokio::time::Instant;

use crate::policy::{TimeoutPolicy, BYTES_PER_ANSWER};

// The policy states a history's memory: it must count what a kept answer takes.
const _: () = assert!(std::mem::size_of::<Kept>() + std::mem::size_of::<u64>() == BYTES_PER_ANSWER);

/// One kept answer: its latency in the window's units, in two 32-bit halves (so that a
/// slot takes 12 bytes, not the 16 a `u64` field would align it to), and the second it
/// came in, counted from the history's epoch.
#[derive(Clone, Copy)]
struct Kept {
    low: u32,
    high: u32,
    second: u32,
}

impl Kept {
    fn new(units: u64, second: u32) -> Kept {
        Kept {
            low: units as u32,
            high: (units >> 32) as u32,
            second,
        }
    }

    fn units(self) -> u64 {
        u64::from(self.high) << 32 | u64::from(self.low)
    }
}

/// A ring of the last answers.
pub(crate) struct Recent {
    /// The answers, oldest at `next` once full.
    slots: Vec<Kept>,
    next: usize,
    cap: usize,
    epoch: Instant,
    /// The second the last answer was kept in, as the instants it spans and its number:
    /// answers within it reckon no second of their own.
    last: (Instant, Instant, u32),
    /// Where the answers in reach are copied to be read (sorted, selected) in place.
    scratch: Vec<u64>,
}

impl Recent {
    /// An empty history for `policy`, counting seconds from `epoch`. Allocates nothing.
    pub(crate) fn new(policy: &TimeoutPolicy, epoch: Instant) -> Recent {
        Recent {
            slots: Vec::new(),
            next: 0,
            cap: policy.history_capacity(),
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
        let slot = Kept::new(units, self.last.2);
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
            && self.age(self.slots[self.next].second, now) <= span.as_secs().saturating_add(1)
    }

    /// How many whole seconds ago the oldest answer kept came (`None`: none kept).
    pub(crate) fn oldest_age(&self, now: Instant) -> Option<u64> {
        let oldest = if self.slots.len() == self.cap {
            self.slots.get(self.next)
        } else {
            self.slots.first()
        };
        oldest.map(|kept| self.age(kept.second, now))
    }

    /// The answers from the last `reach` (a scratch copy, free to reorder) and how far
    /// back the oldest of them goes.
    pub(crate) fn within(&mut self, reach: Duration, now: Instant) -> (&mut [u64], Duration) {
        self.scratch.clear();
        let mut oldest = 0;
        for &kept in &self.slots {
            let age = self.age(kept.second, now);
            if age <= reach.as_secs() {
                self.scratch.push(kept.units());
                oldest = oldest.max(age);
            }
        }
        (&mut self.scratch, Duration::from_secs(oldest))
    }

    /// Forgets every answer and gives the ring's memory back.
    pub(crate) fn clear(&mut self) {
        (self.slots, self.scratch, self.next) = (Vec::new(), Vec::new(), 0);
    }

    /// Whether the ring has been allocated (at its first answer).
    pub(crate) fn is_allocated(&self) -> bool {
        self.slots.capacity() != 0
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
        self.slots[i].units()
    }

    /// The slowest answer kept, in the window's units.
    pub(crate) fn slowest(&self) -> u64 {
        self.slots.iter().map(|s| s.units()).max().unwrap_or(0)
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Kept>()
            + self.scratch.capacity() * std::mem::size_of::<u64>()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::MAX_RECENT;

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
    fn latencies_past_32_bits_are_kept_as_they_are() {
        let t0 = Instant::now();
        let mut r = Recent::new(&TimeoutPolicy::default(), t0);
        let day = 86_400_000_000; // 24 h in microseconds, past `u32::MAX`.
        r.push(day, t0);
        r.push(u64::MAX, t0);
        assert_eq!((r.get(0), r.slowest()), (day, u64::MAX));
        let (live, _) = r.within(Duration::from_secs(1), t0);
        assert_eq!(live, [day, u64::MAX]);
    }

    #[test]
    fn capacity_follows_min_samples_within_bounds() {
        assert_eq!(TimeoutPolicy::default().history_bytes(), 2_000);
        let cap = |n| TimeoutPolicy::default().min_samples(n).history_capacity();
        assert_eq!(cap(100), 100);
        assert_eq!(cap(1), 1);
        assert_eq!(cap(u64::MAX), MAX_RECENT);
    }
}
