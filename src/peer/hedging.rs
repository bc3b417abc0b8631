//! What hedged calls read of a peer: when a copy goes out, published with the deadline
//! (ARCHITECTURE.md, invariant 5: computed under the peer's lock, where the deadline is,
//! never per call), and the peer's counts of copies sent, won and interrupted.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use super::{Locked, Peer};
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
    /// How long a hedged call to the peer waits before it sends its copy: the hedge
    /// quantile of the peer's window, once the window holds `min_samples` answers (`None`
    /// before: a copy is never sent on a guess). One atomic load.
    pub(crate) fn hedge_after(&self) -> Option<Duration> {
        self.published.hedge_after()
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
}
