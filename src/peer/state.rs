//! Per-peer state: the cached deadline (one atomic), in-flight count, counters, and the
//! latency window behind a per-peer lock that only completions and rotations take.

use std::panic::Location;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crossbeam_utils::CachePadded;
use std::time::Duration;

use tokio::time::Instant;

use super::health::{Admit, Health, PeerState, Transition};
use super::window::Window;
use crate::error::Reason;
use crate::interrupt::{Fired, Interrupts};
use crate::policy::{DeadlineExplanation, DeadlineSource, TimeoutPolicy};

/// Bits of the packed deadline word that hold nanoseconds (the rest hold the source).
const NANOS_BITS: u32 = 60;
const NANOS_MASK: u64 = (1 << NANOS_BITS) - 1;

/// One tracked peer. What every call reads, what every call writes, and the lock sit on
/// separate cache lines, so callers on other cores do not invalidate each other's reads.
pub(crate) struct Peer {
    label: Box<str>,
    epoch: Instant,
    published: CachePadded<Published>,
    /// Calls in flight.
    in_flight: CachePadded<AtomicUsize>,
    /// Last call start, in nanoseconds since `epoch` (for idle eviction); written at most
    /// once per millisecond.
    last_used: AtomicU64,
    interrupts: Interrupts,
    pub(crate) counters: Counters,
    inner: CachePadded<Mutex<Inner>>,
    #[cfg(feature = "metrics")]
    metrics: crate::export::PeerMetrics,
}

/// What every call reads: written only when the deadline is recomputed or the state
/// changes.
struct Published {
    /// `deadline_ns | source << 60`.
    deadline: AtomicU64,
    /// The health state; only non-open states take the lock.
    state: AtomicU8,
    /// When the window next rotates, in nanoseconds since `epoch`.
    rotate_at: AtomicU64,
}

/// Per-peer counts of the rare outcomes (answers and timeouts are counted under the lock).
#[derive(Default)]
pub(crate) struct Counters {
    /// Calls in flight ended because the peer went silent.
    pub(crate) silent_interrupts: AtomicU64,
    /// Calls ended by a manual interrupt or shutdown.
    pub(crate) manual_interrupts: AtomicU64,
    /// Calls refused at once because the peer was silent.
    pub(crate) fail_fast: AtomicU64,
}

/// What a completion or a policy change needs, under the peer's lock.
struct Inner {
    window: Window,
    /// Calls that ended with the inner service's answer (success or error).
    completed: u64,
    /// Calls that ran out their deadline.
    deadline_exceeded: u64,
    policy: Arc<TimeoutPolicy>,
    overridden: bool,
    since_recompute: u64,
    source: DeadlineSource,
    quantile_value: Duration,
    health: Health,
    /// The interrupt fired when the peer last went silent.
    silenced: Option<Fired>,
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
    pub(crate) last_response: Instant,
    pub(crate) state: PeerState,
    pub(crate) next_probe_at: Instant,
    pub(crate) completed: u64,
    pub(crate) deadline_exceeded: u64,
}

/// What an admitted call starts with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    pub(crate) deadline: Duration,
    pub(crate) source: DeadlineSource,
    /// The interrupt generation when the call started.
    pub(crate) generation: u64,
    /// Whether the call is the probe of a silent peer.
    pub(crate) probe: bool,
}

/// What a new call to the peer may do.
pub(crate) enum Admission {
    /// Go ahead.
    Go(Ticket),
    /// Fail at once: the peer is silent.
    Reject(Fired),
}

impl Peer {
    pub(crate) fn new(
        label: Box<str>,
        policy: Arc<TimeoutPolicy>,
        overridden: bool,
        epoch: Instant,
        now: Instant,
        jitter_seed: u64,
    ) -> Peer {
        let window = Window::new(&policy, now);
        let peer = Peer {
            #[cfg(feature = "metrics")]
            metrics: crate::export::PeerMetrics::new(&label),
            label,
            epoch,
            published: CachePadded::new(Published {
                deadline: AtomicU64::new(pack(policy.cold_start, DeadlineSource::ColdStart)),
                state: AtomicU8::new(0),
                rotate_at: AtomicU64::new(0),
            }),
            last_used: AtomicU64::new(0),
            in_flight: CachePadded::new(AtomicUsize::new(0)),
            interrupts: Interrupts::new(),
            counters: Counters::default(),
            inner: CachePadded::new(Mutex::new(Inner {
                window,
                completed: 0,
                deadline_exceeded: 0,
                policy,
                overridden,
                since_recompute: 0,
                source: DeadlineSource::ColdStart,
                quantile_value: Duration::ZERO,
                health: Health::new(now, jitter_seed),
                silenced: None,
            })),
        };
        peer.publish(&mut peer.lock());
        peer.last_used.store(peer.nanos(now), Relaxed);
        peer
    }

    /// The peer's display name: its key's `Debug` form.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// The current deadline and why it has that value: one atomic load.
    pub(crate) fn deadline(&self) -> (Duration, DeadlineSource) {
        unpack(self.published.deadline.load(Relaxed))
    }

    /// The health state.
    pub(crate) fn state(&self) -> PeerState {
        PeerState::ALL
            [usize::from(self.published.state.load(Relaxed)).min(PeerState::ALL.len() - 1)]
    }

    /// The peer's interrupt fan-out.
    pub(crate) fn interrupts(&self) -> &Interrupts {
        &self.interrupts
    }

    /// Admits a call starting at `now`. A healthy peer costs atomic reads only; the window
    /// is rotated first if its time has come, so stale history does not set the deadline.
    pub(crate) fn admit(&self, now: Instant) -> Admission {
        if self.nanos(now) >= self.published.rotate_at.load(Relaxed) {
            let mut inner = self.lock();
            if inner.window.advance(now) {
                self.publish(&mut inner);
            }
        }
        let generation = self.interrupts.generation();
        let (mut deadline, mut source) = self.deadline();
        let mut probe = false;
        if !self.state().is_open() {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let (admit, transition) = inner.health.admit(now, &inner.policy);
            self.transition(transition);
            match admit {
                Admit::Go => {}
                Admit::Probe => probe = true,
                Admit::Shortened => {
                    (deadline, source) = (inner.policy.min, DeadlineSource::SilentPeer)
                }
                Admit::Reject => {
                    self.counters.fail_fast.fetch_add(1, Relaxed);
                    #[cfg(feature = "metrics")]
                    self.metrics.rejected();
                    return Admission::Reject(self.silent_reason(
                        inner,
                        now,
                        inner.silenced.as_ref(),
                    ));
                }
            }
        }
        self.touch(now);
        self.in_flight.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics.admitted();
        Admission::Go(Ticket {
            deadline,
            source,
            generation,
            probe,
        })
    }

    /// The peer answered a call that started at `started`: record its latency, and take
    /// the answer as a heartbeat.
    pub(crate) fn on_response(&self, now: Instant, started: Instant) {
        #[cfg(feature = "metrics")]
        self.metrics
            .answered(now.saturating_duration_since(started));
        let mut inner = self.lock();
        inner.completed += 1;
        self.record(&mut inner, now, now.saturating_duration_since(started));
        let transition = inner.health.on_response(now);
        self.transition(transition);
        drop(inner);
        self.end();
    }

    /// A call that started at `started` ran out its `deadline` (from `source`). Records a
    /// censored sample at the deadline, counts a miss, and may declare the peer silent,
    /// interrupting every other call in flight. Returns why the deadline had its value,
    /// and the silence interrupt if this miss declared it.
    pub(crate) fn on_deadline(
        &self,
        now: Instant,
        started: Instant,
        deadline: Duration,
        source: DeadlineSource,
        probe: bool,
    ) -> (DeadlineExplanation, Option<Fired>) {
        #[cfg(feature = "metrics")]
        self.metrics.timed_out();
        let mut inner = self.lock();
        inner.deadline_exceeded += 1;
        // Explain with the numbers in force before this miss's own sample moves them.
        let explanation = DeadlineExplanation::new(
            source,
            &inner.policy,
            inner.window.samples(),
            inner.quantile_value,
            inner.overridden,
        );
        if source == DeadlineSource::Caller {
            // The caller's own, shorter, deadline says nothing about the peer.
            drop(inner);
            self.end();
            return (explanation, None);
        }
        if !probe && source != DeadlineSource::SilentPeer {
            // A censored sample: the peer's latency was at least the deadline. (A probe or
            // a cut deadline of a peer known to be silent says nothing about its latency.)
            // Timeouts are rare and say the deadline may be behind: recompute at once.
            self.record(&mut inner, now, deadline);
            self.publish(&mut inner);
        }
        let policy = inner.policy.clone();
        let transition = inner.health.on_deadline(now, started, probe, &policy);
        let mut silenced = None;
        if transition.is_some_and(|t| t.to == PeerState::Silent && t.from != PeerState::Probing) {
            let fired = self.silent_reason(&inner, now, None);
            inner.silenced = Some(fired.clone());
            self.interrupts.fire(fired.clone());
            silenced = Some(fired);
        }
        self.transition(transition);
        drop(inner);
        self.end();
        (explanation, silenced)
    }

    /// A call ended without an answer or a deadline: interrupted (`reason` given) or
    /// dropped by its caller (`None`). Records no latency.
    pub(crate) fn on_abandon(&self, now: Instant, probe: bool, reason: Option<&Reason>) {
        let counter = match reason {
            Some(Reason::PeerSilent { .. }) => Some(&self.counters.silent_interrupts),
            Some(_) => Some(&self.counters.manual_interrupts),
            None => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Relaxed);
        }
        #[cfg(feature = "metrics")]
        if let Some(reason) = reason {
            self.metrics.interrupted(reason);
        }
        if probe {
            let mut inner = self.lock();
            let transition = inner.health.on_abandon(probe, now);
            self.transition(transition);
        }
        self.end();
    }

    fn end(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics.ended();
    }

    /// Records one latency and republishes the deadline when it is due.
    fn record(&self, inner: &mut MutexGuard<'_, Inner>, now: Instant, latency: Duration) {
        let rotated = inner.window.advance(now);
        inner.window.record(latency);
        inner.since_recompute += 1;
        let warmed_up = inner.source == DeadlineSource::ColdStart
            && inner.window.samples() >= inner.policy.min_samples;
        if rotated || warmed_up || inner.since_recompute >= inner.policy.recompute_every {
            self.publish(inner);
        }
    }

    /// Why calls to this silent peer end: how long it has been quiet, how many calls
    /// are outstanding, and where silence was declared.
    fn silent_reason(&self, inner: &Inner, now: Instant, declared: Option<&Fired>) -> Fired {
        let reason = Reason::PeerSilent {
            since: now.saturating_duration_since(inner.health.last_response()),
            outstanding: self
                .in_flight()
                .saturating_sub(usize::from(declared.is_none())),
        };
        let fired_at = declared.map_or(Location::caller(), |f| f.fired_at);
        Fired { reason, fired_at }
    }

    /// Publishes a state change and reports it.
    fn transition(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        let index = PeerState::ALL.iter().position(|s| *s == t.to).unwrap_or(0);
        self.published.state.store(index as u8, Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics.transitioned(index);
        let (peer, from, to, why) = (self.label(), t.from.as_str(), t.to.as_str(), t.why);
        let in_flight = self.in_flight();
        match t.to {
            PeerState::Silent => {
                tracing::warn!(peer, from, to, why, in_flight, "peer state changed")
            }
            PeerState::Healthy => {
                tracing::info!(peer, from, to, why, in_flight, "peer state changed")
            }
            _ => tracing::debug!(peer, from, to, why, in_flight, "peer state changed"),
        }
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
            max: w.max(),
            quantile_value: inner.quantile_value,
            heap_bytes: w.heap_bytes(),
            last_response: inner.health.last_response(),
            state: inner.health.state(),
            next_probe_at: inner.health.next_probe_at(),
            completed: inner.completed,
            deadline_exceeded: inner.deadline_exceeded,
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
        self.published
            .deadline
            .store(pack(deadline, source), Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics.deadline(deadline);
        self.published
            .rotate_at
            .store(self.nanos(inner.window.rotates_at()), Relaxed);
    }

    /// Notes a call start for idle eviction, writing only when a millisecond has passed.
    fn touch(&self, now: Instant) {
        let now = self.nanos(now);
        if now.saturating_sub(self.last_used.load(Relaxed)) >= 1_000_000 {
            self.last_used.store(now, Relaxed);
        }
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
