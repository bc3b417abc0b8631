//! What every call to a peer reads: the deadline word (the deadline and why it has that
//! value, packed into one `u64`), the health state, when the latency window next rotates,
//! the policy's bounds, and whether answers may wait in their stripes. Written only under
//! the peer's lock, read without it: a call to a healthy peer never takes a lock
//! (ARCHITECTURE.md, invariant 5).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::Duration;

use super::health::PeerState;
use crate::explain::DeadlineSource;

/// Bits of the packed deadline word that hold nanoseconds (2^56 ns, over two years: any
/// deadline up to `MAX_DEADLINE`); the next four hold the source.
const NANOS_BITS: u32 = 56;
const NANOS_MASK: u64 = (1 << NANOS_BITS) - 1;
const SOURCE_MASK: u64 = 0xF;
/// The top bit of a latency class's word: the class's deadline is at least its peer's
/// (`class_lanes::class_deadline`). Never set in a peer's own word.
pub(super) const AT_LEAST_PEER: u64 = 1 << 63;

/// The published part of one peer.
pub(super) struct Published {
    /// `deadline_ns | source << 56`.
    deadline: AtomicU64,
    /// The health state, as its place in [`PeerState::ALL`]; only non-open states take
    /// the lock.
    state: AtomicU8,
    /// When the window next rotates, in nanoseconds since the peer's epoch.
    rotate_at: AtomicU64,
    /// The policy's `max`, in nanoseconds: what a call's floor may raise its deadline to.
    max: AtomicU64,
    /// The policy's `cold_start`, in nanoseconds: what a latency class starts with.
    cold_start: AtomicU64,
    /// Whether answers may wait in their stripes (see [`Published::set_batched`]).
    batched: AtomicBool,
    /// One answer in how many waiting in a stripe keeps its latency (see
    /// `per_core::sample_every`); 1 unless batched.
    sample_every: AtomicU32,
    /// Calls that failed to reach the peer since its last answer (saturating): what a
    /// balanced endpoint holds a refusing peer out by.
    failing: AtomicU32,
    /// When a hedged call sends its copy, in nanoseconds (0: no copy, the peer has not
    /// learned); written with the deadline, only while a hedge quantile is set.
    hedge_after: AtomicU64,
}

impl Published {
    /// A healthy peer with this deadline, whose window is due to rotate at once.
    pub(super) fn new(deadline: Duration, source: DeadlineSource) -> Self {
        Published {
            deadline: AtomicU64::new(pack(deadline, source)),
            state: AtomicU8::new(0),
            rotate_at: AtomicU64::new(0),
            max: AtomicU64::new(0),
            cold_start: AtomicU64::new(0),
            batched: AtomicBool::new(false),
            sample_every: AtomicU32::new(1),
            failing: AtomicU32::new(0),
            hedge_after: AtomicU64::new(0),
        }
    }

    /// Whether a busy core's answers may wait in its stripe.
    #[inline]
    pub(super) fn batched(&self) -> bool {
        self.batched.load(Relaxed)
    }

    /// Says whether a busy core's answers may wait in its stripe: only while the deadline
    /// would not move before a batch is handed over (it is learned, and recomputed only
    /// every `recompute_every` answers, at least a batch).
    pub(super) fn set_batched(&self, batched: bool) {
        self.batched.store(batched, Relaxed);
    }

    /// One answer in how many waiting in a stripe keeps its latency (a power of two).
    #[inline]
    pub(super) fn sample_every(&self) -> u32 {
        self.sample_every.load(Relaxed)
    }

    /// Publishes how many answers waiting in a stripe one sample stands for.
    pub(super) fn set_sample_every(&self, every: u32) {
        self.sample_every.store(every, Relaxed);
    }

    /// The policy's `cold_start`.
    #[inline]
    pub(super) fn cold_start(&self) -> Duration {
        Duration::from_nanos(self.cold_start.load(Relaxed))
    }

    /// The policy's `max`.
    #[inline]
    pub(super) fn max(&self) -> Duration {
        Duration::from_nanos(self.max.load(Relaxed))
    }

    /// Publishes the policy's `max` and `cold_start`.
    pub(super) fn set_bounds(&self, max: Duration, cold_start: Duration) {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.max.store(nanos(max), Relaxed);
        self.cold_start.store(nanos(cold_start), Relaxed);
    }

    /// The deadline new calls get, and why: one atomic load.
    #[inline]
    pub(super) fn deadline(&self) -> (Duration, DeadlineSource) {
        unpack(self.deadline.load(Relaxed))
    }

    pub(super) fn set_deadline(&self, deadline: Duration, source: DeadlineSource) {
        self.deadline.store(pack(deadline, source), Relaxed);
    }

    /// When a hedged call to the peer sends its copy (`None`: not learned).
    pub(super) fn hedge_after(&self) -> Option<Duration> {
        Some(Duration::from_nanos(self.hedge_after.load(Relaxed))).filter(|d| !d.is_zero())
    }

    pub(super) fn set_hedge_after(&self, after: Option<Duration>) {
        let nanos = after.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.hedge_after.store(nanos, Relaxed);
    }

    /// Calls that failed to reach the peer since its last answer.
    pub(super) fn failing(&self) -> u32 {
        self.failing.load(Relaxed)
    }

    /// Publishes the failures in a row; returns whether there were any before.
    pub(super) fn set_failing(&self, failures: u64) -> bool {
        let failures = u32::try_from(failures).unwrap_or(u32::MAX);
        // An answer to a peer that was not failing writes nothing: no shared line dirtied.
        if failures == 0 && self.failing.load(Relaxed) == 0 {
            return false;
        }
        self.failing.swap(failures, Relaxed) != 0
    }

    /// The health state.
    #[inline]
    pub(super) fn state(&self) -> PeerState {
        PeerState::ALL[usize::from(self.state.load(Relaxed)).min(PeerState::ALL.len() - 1)]
    }

    pub(super) fn set_state(&self, state: PeerState) {
        self.state.store(state.index() as u8, Relaxed);
    }

    /// Whether the window is due to rotate at `now` (nanoseconds since the epoch).
    #[inline]
    pub(super) fn rotation_due(&self, now: u64) -> bool {
        now >= self.rotate_at.load(Relaxed)
    }

    pub(super) fn set_rotate_at(&self, at: u64) {
        self.rotate_at.store(at, Relaxed);
    }
}

/// The deadline word of `deadline` from `source`: never 0 for a deadline of at least 1ns.
pub(super) fn pack(deadline: Duration, source: DeadlineSource) -> u64 {
    let nanos = u64::try_from(deadline.as_nanos()).map_or(NANOS_MASK, |n| n.min(NANOS_MASK));
    let tag = DeadlineSource::ALL
        .iter()
        .position(|s| *s == source)
        .unwrap_or(0) as u64;
    nanos | tag << NANOS_BITS
}

/// The deadline and source a deadline word holds.
#[inline]
pub(super) fn unpack(word: u64) -> (Duration, DeadlineSource) {
    let tag = ((word >> NANOS_BITS) & SOURCE_MASK) as usize;
    let source = DeadlineSource::ALL[tag.min(DeadlineSource::ALL.len() - 1)];
    (Duration::from_nanos(word & NANOS_MASK), source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_every_source() {
        for source in DeadlineSource::ALL {
            for d in [Duration::from_millis(1234), crate::policy::MAX_DEADLINE] {
                assert_eq!(unpack(pack(d, source)), (d, source));
                assert_eq!(unpack(pack(d, source) | AT_LEAST_PEER), (d, source));
            }
        }
    }

    #[test]
    fn every_state_round_trips() {
        let published = Published::new(Duration::ZERO, DeadlineSource::ColdStart);
        assert_eq!(published.state(), PeerState::Healthy);
        for state in PeerState::ALL {
            published.set_state(state);
            assert_eq!(published.state(), state);
        }
    }
}
