//! A peer's side without its lock: what a call reads and counts with atomics only (its
//! deadline, its state, its class's deadline word, its stripes, its clock). Nothing here
//! takes the peer's lock or changes what is behind it; that is `src/peer/mod.rs`'s.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::class_lanes::{class_deadline, ClassIx};
use super::health::PeerState;
use super::Peer;
use crate::classify::Outcome;
use crate::error::BoxError;
use crate::events::StateChanges;
use crate::explain::DeadlineSource;
use crate::interrupt::Interrupts;

/// Per-peer counts of the rare outcomes (answers and timeouts are counted under the lock).
#[derive(Default)]
pub(crate) struct Counters {
    /// Calls in flight ended because the peer went silent.
    pub(crate) silent_interrupts: AtomicU64,
    /// Calls ended from outside the layer: by hand (through the handle or the caller's
    /// token) or by shutdown.
    pub(crate) manual_interrupts: AtomicU64,
    /// Calls refused at once because the peer was silent.
    pub(crate) fail_fast: AtomicU64,
    /// Calls refused before the inner service for any other reason: the layer was shut
    /// down, or the caller's deadline was spent or its token had fired.
    pub(crate) refused: AtomicU64,
    /// Hedged calls' copies sent to the peer, copies that answered first, and calls to
    /// the peer interrupted because the other copy answered first ([`HedgeCount`](super::HedgeCount)).
    pub(crate) hedges: [AtomicU64; 3],
}

impl Peer {
    /// The peer's name: its key's `Debug` form, bounded.
    pub(crate) fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// The current deadline and why it has that value: one atomic load.
    #[inline]
    pub(crate) fn deadline(&self) -> (Duration, DeadlineSource) {
        self.published.deadline()
    }

    /// The health state.
    #[inline]
    pub(crate) fn state(&self) -> PeerState {
        self.published.state()
    }

    /// The peer's interrupt fan-out.
    pub(crate) fn interrupts(&self) -> &Interrupts {
        &self.interrupts
    }

    /// What wakes the peer's waiters and reports its transitions.
    pub(crate) fn state_changes(&self) -> &StateChanges {
        &self.changes
    }

    /// Calls that failed to reach the peer (refused, reset) since its last answer.
    pub(crate) fn failing(&self) -> u32 {
        self.published.failing()
    }

    /// The deadline a new call of `class` gets (see [`class_deadline`]): a
    /// few atomic loads.
    #[inline]
    pub(super) fn class_deadline(&self, class: Option<ClassIx>) -> (Duration, DeadlineSource) {
        match self.classes.word(class) {
            Some(word) => class_deadline(word, self.deadline(), self.published.cold_start()),
            None => self.deadline(),
        }
    }

    /// Counts a call to the peer refused before it reached the inner service, the peer's
    /// silence aside (see [`Counters::refused`]).
    pub(crate) fn refused(&self) {
        self.counters.refused.fetch_add(1, Relaxed);
        self.metrics.refused();
    }

    /// Lets the peer go if it has no call in flight: from then on every admission finds
    /// it gone. Returns whether it was retired.
    pub(crate) fn retire(&self) -> bool {
        self.stripes.retire()
    }

    /// A call counted on `stripe` is no longer in flight.
    pub(crate) fn leave(&self, stripe: usize) {
        self.stripes.leave(stripe);
        self.metrics.ended();
    }

    /// Classifies an inner error (only errors are classified: a success is a sample).
    pub(crate) fn classify(&self, err: &BoxError) -> Outcome {
        self.classifier.classify(&**err)
    }

    /// Whether the table has let the peer go.
    pub(crate) fn is_retired(&self) -> bool {
        self.stripes.is_retired()
    }

    /// Calls in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.stripes.in_flight()
    }

    /// How long since the last call to the peer.
    pub(crate) fn idle_for(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.nanos(now).saturating_sub(self.last_used.load(Relaxed)))
    }

    /// Notes a call to the peer at `now` (nanoseconds since the epoch; admitted or refused:
    /// either is use) for idle eviction, writing only when a millisecond has passed.
    #[inline]
    pub(crate) fn touch(&self, now: u64) {
        if now.saturating_sub(self.last_used.load(Relaxed)) >= 1_000_000 {
            self.last_used.store(now, Relaxed);
        }
    }

    /// `t` in nanoseconds since the peer's epoch.
    #[inline]
    pub(crate) fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `nanos` after the epoch.
    pub(super) fn instant(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }
}
