//! What hedged calls read of a peer: when a copy goes out, published with the deadline
//! (ARCHITECTURE.md, invariant 5: computed under the peer's lock, where the deadline is,
//! never per call), and the peer's counts of copies sent, won and interrupted.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use super::class_lanes::ClassBits;
use super::{Locked, Peer};
use crate::class::LatencyHints;
use crate::explain::DeadlineSource;

/// The quantile of a peer's latency at which a hedged call sends its copy, shared by every
/// peer of a table (the bits of an `f64`; 0: no hedging, nothing computed).
#[derive(Clone, Default)]
pub(crate) struct HedgeQuantile(Arc<AtomicU64>);

impl HedgeQuantile {
    /// Sets the quantile (validated by the caller to lie in `(0, 1)`). A peer publishes
    /// its delay at its next recompute.
    pub(crate) fn set(&self, q: f64) {
        self.0.store(q.to_bits(), Relaxed);
    }

    /// The quantile, if hedging is on.
    fn get(&self) -> Option<f64> {
        Some(f64::from_bits(self.0.load(Relaxed))).filter(|q| *q > 0.0)
    }
}

/// Which of a peer's hedge counts to bump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HedgeCount {
    /// A copy of a hedged call went to the peer.
    Sent = 0,
    /// A copy answered before the call it copied.
    Won = 1,
    /// A call to the peer was interrupted because its other copy answered first.
    Interrupted = 2,
}

impl Peer {
    /// How long a hedged call to the peer with `hints` waits before it sends its copy:
    /// the hedge quantile of its latency class's window, or of the peer's own for a call of
    /// no class (or of one beyond `max_classes`), once that window holds `min_samples`
    /// answers (`None` before, and for a class not seen yet: a copy is never sent on a
    /// guess); never before the call's floor ([`MinDeadline`](crate::MinDeadline)). A
    /// lookup and one atomic load.
    pub(crate) fn hedge_after(&self, hints: &LatencyHints<'_>) -> Option<Duration> {
        let own = match hints.class.as_ref() {
            Some(class) => match self.classes.find(class.id()) {
                Some(i) => self.classes.hedge_after(i)?,
                None if self.classes.has_room() => return None,
                None => self.published.hedge_after()?,
            },
            None => self.published.hedge_after()?,
        };
        Some(hints.floor.map_or(own, |floor| own.max(floor)))
    }

    /// A hedge count of the peer, ever.
    pub(crate) fn hedge_count(&self, what: HedgeCount) -> u64 {
        self.counters.hedges[what as usize].load(Relaxed)
    }

    /// Counts a hedge event on the peer (its snapshot and its metrics).
    pub(crate) fn count_hedge(&self, what: HedgeCount) {
        self.counters.hedges[what as usize].fetch_add(1, Relaxed);
        self.metrics.hedged(what as usize);
    }

    /// Recomputes and publishes the hedge delay, under the lock, beside the deadline
    /// (`source`: where that came from). Nothing is computed while no hedge quantile is set.
    pub(super) fn publish_hedge_after(&self, locked: &mut Locked, source: DeadlineSource) {
        let Some(q) = self.hedge_quantile.get() else {
            return;
        };
        let window = &locked.lane.window;
        let learned = source.is_learned() && window.samples() >= locked.policy.min_samples;
        let after = learned.then(|| window.quantile(q).min(locked.policy.max));
        self.published.set_hedge_after(after);
    }

    /// Publishes the hedge delays of the classes whose deadline `changed` marks, beside
    /// their deadline words.
    pub(super) fn publish_class_hedges(&self, locked: &Locked, changed: &ClassBits) {
        if let Some(q) = self.hedge_quantile.get() {
            (self.classes).publish_hedges(&locked.classes, changed, q, &locked.policy);
        }
    }
}
