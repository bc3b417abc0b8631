//! Per-peer state: the cached deadline (one atomic), in-flight count, counters, and the
//! latency window behind a per-peer lock that only completions and rotations take.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::window::Window;
use crate::policy::{DeadlineSource, TimeoutPolicy};

/// Bits of the packed deadline word that hold nanoseconds (the rest hold the source).
const NANOS_BITS: u32 = 60;
const NANOS_MASK: u64 = (1 << NANOS_BITS) - 1;

/// One tracked peer.
pub(crate) struct Peer {
    label: Box<str>,
    epoch: Instant,
    /// `deadline_ns | source << 60`, read once per call.
    deadline: AtomicU64,
    /// When the window next rotates, in nanoseconds since `epoch`.
    rotate_at: AtomicU64,
    /// Last call start, in nanoseconds since `epoch` (for idle eviction).
    last_used: AtomicU64,
    in_flight: AtomicUsize,
    pub(crate) counters: Counters,
    inner: Mutex<Inner>,
}

/// Monotonic per-peer counts.
#[derive(Default)]
pub(crate) struct Counters {
    /// Calls that ended with the inner service's answer (success or error).
    pub(crate) completed: AtomicU64,
    /// Calls that ran out their deadline.
    pub(crate) deadline_exceeded: AtomicU64,
}

/// What a completion or a policy change needs, under the peer's lock.
struct Inner {
    window: Window,
    policy: Arc<TimeoutPolicy>,
    overridden: bool,
    since_recompute: u64,
    source: DeadlineSource,
    quantile_value: Duration,
}

/// A read of a peer's window and policy, for snapshots and error messages.
pub(crate) struct WindowView {
    pub(crate) policy: Arc<TimeoutPolicy>,
    pub(crate) overridden: bool,
    pub(crate) samples: u64,
    pub(crate) quantiles: [Duration; 4],
    pub(crate) max: Duration,
    pub(crate) quantile_value: Duration,
    pub(crate) heap_bytes: usize,
}

impl Peer {
    pub(crate) fn new(
        label: Box<str>,
        policy: Arc<TimeoutPolicy>,
        overridden: bool,
        epoch: Instant,
        now: Instant,
    ) -> Peer {
        let window = Window::new(&policy, now);
        let peer = Peer {
            label,
            epoch,
            deadline: AtomicU64::new(pack(policy.cold_start, DeadlineSource::ColdStart)),
            rotate_at: AtomicU64::new(0),
            last_used: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            counters: Counters::default(),
            inner: Mutex::new(Inner {
                window,
                policy,
                overridden,
                since_recompute: 0,
                source: DeadlineSource::ColdStart,
                quantile_value: Duration::ZERO,
            }),
        };
        peer.publish(&mut peer.lock());
        peer.touch(now);
        peer
    }

    /// The peer's display name: its key's `Debug` form.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// The current deadline and why it has that value: one atomic load.
    pub(crate) fn deadline(&self) -> (Duration, DeadlineSource) {
        unpack(self.deadline.load(Relaxed))
    }

    /// Marks a call as started at `now`; rotates the window first if its time has come,
    /// so an idle peer's stale history does not set the deadline.
    pub(crate) fn begin(&self, now: Instant) {
        if self.nanos(now) >= self.rotate_at.load(Relaxed) {
            let mut inner = self.lock();
            if inner.window.advance(now) {
                self.publish(&mut inner);
            }
        }
        self.touch(now);
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// Marks a call as ended without recording anything (the caller dropped it).
    pub(crate) fn end(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// Records a finished call's latency. `censored` marks a call cut at its deadline,
    /// whose true latency is at least `latency`.
    pub(crate) fn record(&self, now: Instant, latency: Duration, censored: bool) {
        let counter = if censored {
            &self.counters.deadline_exceeded
        } else {
            &self.counters.completed
        };
        counter.fetch_add(1, Relaxed);
        let mut inner = self.lock();
        let rotated = inner.window.advance(now);
        inner.window.record(latency);
        inner.since_recompute += 1;
        let warmed_up = inner.source == DeadlineSource::ColdStart
            && inner.window.samples() >= inner.policy.min_samples;
        if rotated || warmed_up || inner.since_recompute >= inner.policy.recompute_every {
            self.publish(&mut inner);
        }
        drop(inner);
        self.end();
    }

    /// Puts a new policy in force; the window is kept when its shape did not change.
    pub(crate) fn set_policy(&self, policy: Arc<TimeoutPolicy>, overridden: bool, now: Instant) {
        let mut inner = self.lock();
        if !inner.policy.same_window(&policy) {
            inner.window = Window::new(&policy, now);
        }
        inner.policy = policy;
        inner.overridden = overridden;
        self.publish(&mut inner);
    }

    /// Calls in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// How long since the last call started.
    pub(crate) fn idle_for(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.nanos(now).saturating_sub(self.last_used.load(Relaxed)))
    }

    /// Reads the window: quantiles p50, p90, p99, p99.9, the max and the policy.
    pub(crate) fn view(&self, now: Instant) -> WindowView {
        let mut inner = self.lock();
        if inner.window.advance(now) {
            self.publish(&mut inner);
        }
        let w = &inner.window;
        WindowView {
            policy: inner.policy.clone(),
            overridden: inner.overridden,
            samples: w.samples(),
            quantiles: [0.5, 0.9, 0.99, 0.999].map(|q| w.quantile(q)),
            max: super::window::from_units(w.total().max()),
            quantile_value: inner.quantile_value,
            heap_bytes: w.heap_bytes(),
        }
    }

    /// Recomputes the deadline from the window and publishes it (under the lock).
    fn publish(&self, inner: &mut MutexGuard<'_, Inner>) {
        let samples = inner.window.samples();
        let q = if samples >= inner.policy.min_samples {
            inner.window.quantile(inner.policy.quantile)
        } else {
            Duration::ZERO
        };
        let (deadline, source) = inner.policy.deadline(samples, q);
        inner.source = source;
        inner.quantile_value = q;
        inner.since_recompute = 0;
        self.deadline.store(pack(deadline, source), Relaxed);
        self.rotate_at
            .store(self.nanos(inner.window.rotates_at()), Relaxed);
    }

    fn touch(&self, now: Instant) {
        self.last_used.store(self.nanos(now), Relaxed);
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing under this lock can panic half-way through an update; a poisoned lock
        // still holds consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn pack(deadline: Duration, source: DeadlineSource) -> u64 {
    let nanos = u64::try_from(deadline.as_nanos()).map_or(NANOS_MASK, |n| n.min(NANOS_MASK));
    let tag = DeadlineSource::ALL
        .iter()
        .position(|s| *s == source)
        .unwrap_or(0) as u64;
    nanos | tag << NANOS_BITS
}

fn unpack(word: u64) -> (Duration, DeadlineSource) {
    let source =
        DeadlineSource::ALL[((word >> NANOS_BITS) as usize).min(DeadlineSource::ALL.len() - 1)];
    (Duration::from_nanos(word & NANOS_MASK), source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_every_source() {
        for source in DeadlineSource::ALL {
            let d = Duration::from_millis(1234);
            assert_eq!(unpack(pack(d, source)), (d, source));
        }
    }
}
