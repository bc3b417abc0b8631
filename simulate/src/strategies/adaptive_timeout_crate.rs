//! The `adaptive-timeout` crate: its `SyncLatencyTracker` and
//! `AdaptiveTimeout::select_timeout_sync` at their defaults, i.e. `clamp(2 x p99.99, 250 ms,
//! 60 s)`, first attempt of every call (the simulation does not retry).

use std::time::Duration;

use adaptive_timeout::{AdaptiveTimeout as CrateTimeout, SyncLatencyTracker};
use tokio::time::Instant;

use crate::skeleton::{PeerTimer, Started};
use crate::workload::PeerId;

/// `tokio`'s paused clock as the `adaptive-timeout` crate's clock.
#[derive(Clone, Copy, Debug)]
pub struct SimInstant(Instant);

impl adaptive_timeout::Instant for SimInstant {
    fn duration_since(&self, earlier: Self) -> Duration {
        self.0.saturating_duration_since(earlier.0)
    }

    fn add_duration(&self, duration: Duration) -> Self {
        SimInstant(self.0 + duration)
    }
}

/// The `adaptive-timeout` crate's tracker and timeout selection, at their defaults.
#[derive(Default)]
pub struct CrateFormula {
    tracker: SyncLatencyTracker<PeerId, SimInstant>,
    timeout: CrateTimeout,
}

impl PeerTimer for CrateFormula {
    fn answered(&self, peer: PeerId, t: &Started, now: Instant) {
        self.tracker
            .record_latency(&peer, now - t.at, SimInstant(now));
    }

    fn cut(&self, _: PeerId, _: &Started, _: Instant) {
        // The crate learns only from observed latencies; its back-off is per retry.
    }

    fn deadline(&self, peer: PeerId, now: Instant) -> Duration {
        self.timeout
            .select_timeout_sync(&self.tracker, [&peer], 1, SimInstant(now))
    }
}
