//! Everything the layer knows per peer.
//!
//! A call goes through [`key`] (which peer), [`table`] (the bounded table admits it and
//! hands out its [`Ticket`]), and ends in one of [`Peer`]'s outcome methods, which feed the
//! latency [`window`] and the [`health`] state machine and republish what the next call
//! reads ([`published`]).

use std::panic::Location;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use tokio::time::Instant;

use self::classes::{ClassIx, ClassLane, ClassSlots};
use self::health::{Health, PeerState, ProbeEnd, Transition, Verdict};
use self::lane::Lane;
use self::published::Published;
use crate::class::LatencyHints;
use crate::classify::{Classifier, Outcome};
use crate::error::{BoxError, Reason};
use crate::export::PeerMetrics;
use crate::interrupt::{Fired, Interrupts};
use crate::policy::{DeadlineExplanation, DeadlineSource, TimeoutPolicy};

mod classes;
mod estimate;
#[cfg(feature = "http")]
mod gaps;
pub(crate) mod health;
pub(crate) mod history;
pub(crate) mod key;
mod lane;
mod published;
pub(crate) mod table;
mod ticket;
pub(crate) mod window;

#[cfg(test)]
mod proptests;

pub(crate) use self::ticket::Ticket;

/// How an untracked call's peer is named in errors.
const UNTRACKED: &str = "<untracked peer>";

/// Most misses whose censored samples wait for the peer's next answer.
const PENDING_MISSES: usize = 32;

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
    /// The gaps between response body frames, for the bodies' idle deadline.
    #[cfg(feature = "http")]
    gaps: gaps::Gaps,
    pub(crate) counters: Counters,
    /// Which latency classes the peer holds, and their deadlines.
    classes: ClassSlots,
    locked: CachePadded<Mutex<Locked>>,
    metrics: PeerMetrics,
    classifier: Classifier,
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

/// The part of a peer behind its lock: what a completion, a rotation or a policy change
/// reads and writes.
struct Locked {
    /// The latency history of every call and the deadline learned from it.
    lane: Lane,
    /// The latency classes' histories, in the order of their slots.
    classes: Vec<ClassLane>,
    /// Calls that ended with the inner service's answer (success or error).
    completed: u64,
    /// Calls that ran out their deadline.
    deadline_exceeded: u64,
    /// Calls whose inner service failed to reach the peer, ever and in a row.
    failures: u64,
    consecutive_failures: u64,
    /// Censored samples of misses (and their calls' classes), held until the peer
    /// answers again (it was slow) or is declared silent (it was gone, which says nothing
    /// about its latency).
    pending: Vec<(Option<ClassIx>, Duration)>,
    policy: Arc<TimeoutPolicy>,
    overridden: bool,
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
    /// What the deadline was learned from: samples, the quantile's value, history.
    pub(crate) learned: (u64, Duration, Duration),
    pub(crate) heap_bytes: usize,
    pub(crate) classes: Vec<crate::class::ClassSnapshot>,
    pub(crate) last_response: Instant,
    pub(crate) state: PeerState,
    pub(crate) next_probe_at: Instant,
    pub(crate) completed: u64,
    pub(crate) deadline_exceeded: u64,
    pub(crate) failures: u64,
    pub(crate) consecutive_failures: u64,
}

/// Whom a call is for: where its interrupts come from, and whose history its outcome feeds.
pub(crate) enum CallPeer {
    /// A peer in the table.
    Tracked(Arc<Peer>),
    /// No peer (no key, or the table was full): only layer-wide interrupts reach the call,
    /// and its outcome is recorded nowhere.
    Untracked(Arc<Interrupts>),
}

impl CallPeer {
    /// The interrupts that reach the call.
    pub(crate) fn interrupts(&self) -> &Interrupts {
        match self {
            CallPeer::Tracked(p) => p.interrupts(),
            CallPeer::Untracked(i) => i,
        }
    }

    /// The peer's name in errors and traces.
    pub(crate) fn label(&self) -> &str {
        match self {
            CallPeer::Tracked(p) => p.label(),
            CallPeer::Untracked(_) => UNTRACKED,
        }
    }
}

impl Peer {
    /// A new peer named `label` under `policy` (and whether it is a per-peer override).
    pub(crate) fn new(
        label: Box<str>,
        (policy, overridden): (Arc<TimeoutPolicy>, bool),
        epoch: Instant,
        now: Instant,
        jitter_seed: u64,
        classifier: Classifier,
        max_classes: usize,
    ) -> Peer {
        let lane = Lane::new(&policy, now);
        let peer = Peer {
            metrics: PeerMetrics::new(&label),
            classifier,
            label,
            epoch,
            published: CachePadded::new(Published::new(
                policy.cold_start,
                DeadlineSource::ColdStart,
            )),
            last_used: AtomicU64::new(0),
            in_flight: CachePadded::new(AtomicUsize::new(0)),
            interrupts: Interrupts::new(),
            #[cfg(feature = "http")]
            gaps: gaps::Gaps::new(policy.cold_start),
            counters: Counters::default(),
            classes: ClassSlots::new(max_classes),
            locked: CachePadded::new(Mutex::new(Locked {
                lane,
                classes: Vec::new(),
                completed: 0,
                deadline_exceeded: 0,
                failures: 0,
                consecutive_failures: 0,
                pending: Vec::new(),
                policy,
                overridden,
                health: Health::new(now, jitter_seed),
                silenced: None,
            })),
        };
        peer.publish(&mut peer.lock(), now);
        peer.last_used.store(peer.nanos(now), Relaxed);
        peer
    }

    /// The peer's display name: its key's `Debug` form.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// The current deadline and why it has that value: one atomic load.
    pub(crate) fn deadline(&self) -> (Duration, DeadlineSource) {
        self.published.deadline()
    }

    /// The health state.
    pub(crate) fn state(&self) -> PeerState {
        self.published.state()
    }

    /// The peer's interrupt fan-out.
    pub(crate) fn interrupts(&self) -> &Interrupts {
        &self.interrupts
    }

    /// Admits a call starting at `now` with `hints` (its class and floor), or refuses it
    /// because the peer is silent. A healthy peer costs atomic reads only (a new class
    /// takes the lock once); the windows are rotated first if their time has come, so
    /// stale history does not set the deadline.
    pub(crate) fn admit(&self, now: Instant, hints: LatencyHints<'_>) -> Result<Ticket, Fired> {
        if self.published.rotation_due(self.nanos(now)) {
            let mut locked = self.lock();
            locked.lane.window.advance(now);
            self.publish(&mut locked, now);
        }
        let class = self.class_of(now, hints.class);
        let generation = self.interrupts.generation();
        let (mut deadline, mut source) = self.class_deadline(class);
        let mut probe = false;
        if !self.state().is_open() {
            let mut guard = self.lock();
            let locked = &mut *guard;
            let (verdict, transition) = locked.health.admit(now, &locked.policy);
            self.transition(transition);
            match verdict {
                Verdict::Go => {}
                Verdict::Probe(d) => (probe, deadline) = (true, d),
                Verdict::Shortened => {
                    (deadline, source) = (locked.policy.min, DeadlineSource::SilentPeer)
                }
                Verdict::FailFast => {
                    self.counters.fail_fast.fetch_add(1, Relaxed);
                    self.metrics.rejected();
                    return Err(self.silent_reason(locked, now, locked.silenced.as_ref()));
                }
            }
        }
        self.touch(now);
        self.in_flight.fetch_add(1, Relaxed);
        self.metrics.admitted();
        let ticket = Ticket {
            deadline,
            source,
            generation,
            probe,
            class,
        };
        Ok(ticket.floored(hints.floor, self.published.max()))
    }

    /// Classifies an inner error (only errors are classified: a success is a sample).
    pub(crate) fn classify(&self, err: &BoxError) -> Outcome {
        self.classifier.classify(&**err)
    }

    /// The call of `ticket` that started at `started` ended with `outcome` at `now`:
    /// recorded as [`on_head`](Self::on_head) does, and the call is over.
    pub(crate) fn on_outcome(
        &self,
        now: Instant,
        started: Instant,
        ticket: &Ticket,
        outcome: Outcome,
    ) {
        self.on_head(now, started, ticket, outcome);
        self.end();
    }

    /// Records `outcome` of a call that started at `started`; the call stays in flight
    /// (its body is still to come) until [`on_body_end`](Self::on_body_end), an abandon,
    /// or [`on_outcome`](Self::on_outcome)'s end. An answer is a heartbeat (and commits
    /// the misses held back); a [`Outcome::Sample`] also records its latency. A probe
    /// answered slower than the learned deadline re-seeds the window: the peer came back
    /// slower, and its old history would cut every call. A failure records nothing but its
    /// count; a failed probe frees the probe slot.
    pub(crate) fn on_head(
        &self,
        now: Instant,
        started: Instant,
        ticket: &Ticket,
        outcome: Outcome,
    ) {
        let (probe, class) = (ticket.probe, ticket.class);
        let latency = now.saturating_duration_since(started);
        let mut locked = self.lock();
        if outcome == Outcome::Failure {
            locked.failures += 1;
            locked.consecutive_failures += 1;
            if probe {
                let policy = locked.policy.clone();
                let transition = locked.health.on_probe_end(now, ProbeEnd::Failed, &policy);
                self.transition(transition);
            }
            return;
        }
        self.metrics.answered(latency);
        locked.completed += 1;
        locked.consecutive_failures = 0;
        let learned = locked.lane.source != DeadlineSource::ColdStart;
        if probe && learned && latency > self.deadline().0 {
            locked.lane = Lane::new(&locked.policy, now);
            locked.pending.clear();
            self.publish(&mut locked, now);
        }
        let held = std::mem::take(&mut locked.pending);
        for &(class, censored) in &held {
            self.record(&mut locked, now, censored, class);
            // Like the tail's, these say the deadline may be behind: recompute at once.
            self.publish_class(&mut locked, now, class);
        }
        if !held.is_empty() {
            self.publish(&mut locked, now);
        }
        if outcome == Outcome::Sample {
            self.record(&mut locked, now, latency, class);
        }
        let transition = locked.health.on_response(now);
        self.transition(transition);
    }

    /// A call of `ticket` that started at `started` ran out its deadline. Records a
    /// censored sample at the deadline, counts a miss, and may declare the peer silent,
    /// interrupting every other call in flight. Returns why the deadline had its value,
    /// and the silence interrupt if this miss declared it.
    pub(crate) fn on_deadline(
        &self,
        now: Instant,
        started: Instant,
        ticket: &Ticket,
    ) -> (DeadlineExplanation, Option<Fired>) {
        let Ticket {
            deadline,
            source,
            probe,
            class,
            ..
        } = *ticket;
        self.metrics.timed_out();
        let mut locked = self.lock();
        locked.deadline_exceeded += 1;
        // Explain with the numbers in force before this miss's own sample moves them.
        let explanation = self.explain(&locked, source, class);
        let policy = locked.policy.clone();
        let miss = locked.health.is_miss(started);
        if source == DeadlineSource::Caller {
            // The caller's own, shorter, deadline says nothing about the peer's latency. A
            // probe cut by it frees the probe slot. Any other call is a miss if the peer
            // said nothing since it started and the caller waited at least as long as the
            // peer's answers normally take.
            let transition = if probe {
                locked
                    .health
                    .on_probe_end(now, ProbeEnd::CallerCut, &policy)
            } else if miss && deadline >= self.lane_of(&locked, class).normal_latency(&policy) {
                locked.health.on_deadline(now, started, false, &policy)
            } else {
                None
            };
            let silenced = self.on_transition(&mut locked, now, transition);
            drop(locked);
            self.end();
            return (explanation, silenced);
        }
        if !probe && source != DeadlineSource::SilentPeer {
            // A censored sample: the peer's latency was at least the deadline. (A probe or
            // a cut deadline of a peer known to be silent says nothing about its latency.)
            // The tail (the peer answered since) is recorded at once, and the deadline
            // recomputed, since it may be behind. A miss waits for the peer's next answer:
            // if silence is declared first, it was not slowness. (With detection off
            // nothing tells the two apart: it is recorded at once.)
            if miss && policy.silent_after_misses > 0 {
                if locked.pending.len() < PENDING_MISSES {
                    locked.pending.push((class, deadline));
                }
            } else {
                self.record(&mut locked, now, deadline, class);
                self.publish(&mut locked, now);
                self.publish_class(&mut locked, now, class);
            }
        }
        (explanation, self.miss(locked, now, started, probe))
    }

    /// Counts a miss (a wait that started at `started` ran out with no answer) and ends the
    /// call. Returns the silence interrupt if this miss declared the peer silent, after
    /// firing it into every other call in flight.
    fn miss(
        &self,
        mut locked: MutexGuard<'_, Locked>,
        now: Instant,
        started: Instant,
        probe: bool,
    ) -> Option<Fired> {
        let policy = locked.policy.clone();
        let transition = locked.health.on_deadline(now, started, probe, &policy);
        let silenced = self.on_transition(&mut locked, now, transition);
        drop(locked);
        self.end();
        silenced
    }

    /// Publishes a transition; one that declares the peer silent drops the misses held
    /// back and interrupts every call in flight, and the interrupt is returned.
    fn on_transition(
        &self,
        locked: &mut MutexGuard<'_, Locked>,
        now: Instant,
        transition: Option<Transition>,
    ) -> Option<Fired> {
        let mut silenced = None;
        if transition.is_some_and(|t| t.to == PeerState::Silent && t.from != PeerState::Probing) {
            locked.pending.clear();
            let fired = self.silent_reason(locked, now, None);
            locked.silenced = Some(fired.clone());
            self.interrupts.fire(fired.clone());
            silenced = Some(fired);
        }
        self.transition(transition);
        silenced
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
        if let Some(reason) = reason {
            self.metrics.interrupted(reason);
        }
        if probe {
            let mut locked = self.lock();
            let transition = locked.health.on_abandon(probe, now);
            self.transition(transition);
        }
        self.end();
    }

    fn end(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.metrics.ended();
    }

    /// Records one latency (of a call of `class`) and republishes the deadlines when due.
    fn record(
        &self,
        locked: &mut MutexGuard<'_, Locked>,
        now: Instant,
        latency: Duration,
        class: Option<ClassIx>,
    ) {
        if self.record_lanes(locked, now, latency, class) {
            self.publish(locked, now);
        }
    }

    /// Why calls to this silent peer end: how long it has been quiet, how many calls
    /// are outstanding, and where silence was declared.
    fn silent_reason(&self, locked: &Locked, now: Instant, declared: Option<&Fired>) -> Fired {
        let reason = Reason::PeerSilent {
            since: now.saturating_duration_since(locked.health.last_response()),
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
        self.published.set_state(t.to);
        self.metrics.transitioned(t.to);
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
        let mut locked = self.lock();
        let reset = !locked.policy.same_window(&policy);
        if reset {
            locked.lane = Lane::new(&policy, now);
        }
        let transition = locked.health.release_if_detection_off(&policy);
        locked.policy = policy;
        locked.overridden = overridden;
        self.transition(transition);
        self.reshape_classes(&mut locked, now, reset);
        self.publish(&mut locked, now);
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
        let mut locked = self.lock();
        if locked.lane.window.advance(now) {
            self.publish(&mut locked, now);
        }
        let reach = locked.policy.max_history;
        let w = &mut locked.lane.window;
        let (quantiles, max, samples) = w.quantiles([0.5, 0.9, 0.99, 0.999], reach, now);
        let heap_bytes = w.heap_bytes() + Peer::class_bytes(&locked);
        let classes = self.class_views(&mut locked, now);
        WindowView {
            policy: locked.policy.clone(),
            overridden: locked.overridden,
            samples,
            quantiles,
            max,
            learned: locked.lane.learned(),
            heap_bytes,
            classes,
            last_response: locked.health.last_response(),
            state: locked.health.state(),
            next_probe_at: locked.health.next_probe_at(),
            completed: locked.completed,
            deadline_exceeded: locked.deadline_exceeded,
            failures: locked.failures,
            consecutive_failures: locked.consecutive_failures,
        }
    }

    /// Recomputes the peer's deadline from its history and publishes it (under the
    /// lock), with when the next of its windows (its own, its classes') rotates.
    fn publish(&self, locked: &mut MutexGuard<'_, Locked>, now: Instant) {
        let locked = &mut **locked;
        let (deadline, source) = locked.lane.recompute(now, &locked.policy);
        self.published.set_deadline(deadline, source);
        self.published
            .set_bounds(locked.policy.max, locked.policy.cold_start);
        locked.health.note_deadline(deadline);
        self.metrics.deadline(deadline);
        let own = locked.lane.window.rotates_at();
        let next = self.rotate_classes(locked, now).map_or(own, |c| c.min(own));
        self.published.set_rotate_at(self.nanos(next));
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

    fn lock(&self) -> MutexGuard<'_, Locked> {
        // Nothing under this lock can panic half-way through an update; a poisoned lock
        // still holds consistent data.
        self.locked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
