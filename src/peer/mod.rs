//! Everything the layer knows per peer.
//!
//! A call goes through [`key`] (which peer), [`table`] (the bounded table admits it and
//! hands out its [`InFlight`] and its [`Ticket`]), and ends in one of [`Peer`]'s
//! outcome methods, which feed the latency [`window`] and the [`health`] state machine
//! and republish what the next call reads ([`published`]).
//!
//! `Peer`, here, is the only code that takes a peer's lock. Under it, the bookkeeping is
//! done by functions of the locked state ([`locked`], [`outcome`], [`class_lanes`]) that
//! return `Effects`; `Peer::apply` publishes them, fires the silence interrupt and
//! announces the transition before the lock is let go. What needs no lock (atomic reads
//! and counts) is in [`unlocked`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use tokio::time::Instant;

use self::class_lanes::{ClassIx, ClassSlots, Sample};
use self::health::{PeerState, Transition, Verdict};
use self::locked::{Effects, Locked};
use self::per_core::{Batch, Deferral, Stripes};
use self::published::Published;
use self::table::Admission;
use crate::class::{ClassOf, LatencyHints};
use crate::classify::{Classifier, Outcome};
use crate::error::Reason;
use crate::events::StateChanges;
use crate::explain::{DeadlineExplanation, DeadlineSource};
use crate::export::PeerMetrics;
use crate::interrupt::{Fired, Interrupts, Origin};
use crate::policy::TimeoutPolicy;

#[cfg(feature = "http")]
mod body;
mod class_lanes;
mod estimate;
mod explained;
#[cfg(feature = "http")]
mod gaps;
pub(crate) mod health;
mod hedging;
pub(crate) mod history;
mod in_flight;
pub(crate) mod key;
mod lane;
mod locked;
mod outcome;
mod per_core;
mod published;
mod silence;
mod stalls;
mod straggler;
pub(crate) mod table;
mod ticket;
mod unlocked;
pub(crate) mod window;

#[cfg(test)]
mod proptests;

pub(crate) use self::hedging::{HedgeCount, HedgeQuantile};
pub(crate) use self::in_flight::{CallPeer, InFlight, PeerRef};
pub(crate) use self::locked::WindowView;
pub(crate) use self::ticket::Ticket;
use self::unlocked::Counters;

/// One tracked peer. What every call reads, what every call writes, and the lock sit on
/// separate cache lines, so callers on other cores do not invalidate each other's reads;
/// what every call writes is striped per core ([`per_core`]).
pub(crate) struct Peer {
    /// The peer's name, made once and shared by its errors, snapshots and metrics.
    label: Arc<str>,
    epoch: Instant,
    published: CachePadded<Published>,
    /// Calls in flight (with the mark that the table let the peer go, on the same words,
    /// so that admission and eviction agree on whether a call got in before it left), and
    /// answers not yet in the window.
    stripes: Stripes,
    /// Last call to the peer, admitted or refused, in nanoseconds since `epoch` (for idle
    /// eviction); written at most once per millisecond.
    last_used: AtomicU64,
    /// The peer's stalls as the answer path needs them ([`stalls::StallMark`]): 0 for
    /// none yet, `u64::MAX` while one is in progress, else when the last one ended, in
    /// nanoseconds since `epoch`. An answer to a call that started before it takes the
    /// lock, which keeps its latency out of the history.
    stall_end: AtomicU64,
    interrupts: Interrupts,
    /// Wakes what waits on the peer's state, and reports its transitions.
    changes: StateChanges,
    /// The gaps between response body frames, for the bodies' idle deadline.
    #[cfg(feature = "http")]
    gaps: gaps::Gaps,
    pub(crate) counters: Counters,
    /// Which latency classes the peer holds, and their deadlines.
    classes: ClassSlots,
    locked: CachePadded<Mutex<Locked>>,
    metrics: PeerMetrics,
    classifier: Classifier,
    /// The quantile hedged calls send their copy at, shared by the table's peers.
    hedge_quantile: HedgeQuantile,
}

/// What a new peer is made with: its name and metrics, its policy, the table's settings.
pub(crate) struct PeerSettings {
    /// Its name in errors, snapshots, traces and metric labels.
    pub(crate) label: Arc<str>,
    /// Its series of the `metrics` feature.
    pub(crate) metrics: PeerMetrics,
    /// The policy it starts under.
    pub(crate) policy: Arc<TimeoutPolicy>,
    /// Whether that policy is a per-peer override.
    pub(crate) overridden: bool,
    /// The table's epoch, which its nanosecond clock counts from.
    pub(crate) epoch: Instant,
    /// Seeds its probe jitter.
    pub(crate) jitter_seed: u64,
    /// Reads its calls' errors.
    pub(crate) classifier: Classifier,
    /// Most latency classes it keeps histories for.
    pub(crate) max_classes: usize,
    /// The table's hedge quantile.
    pub(crate) hedge_quantile: HedgeQuantile,
}

impl Peer {
    /// A peer first seen at `now`, made with `settings`.
    pub(crate) fn new(settings: PeerSettings, now: Instant) -> Peer {
        let PeerSettings {
            label,
            metrics,
            policy,
            overridden,
            epoch,
            jitter_seed,
            classifier,
            max_classes,
            hedge_quantile,
        } = settings;
        let peer = Peer {
            metrics,
            classifier,
            hedge_quantile,
            label,
            epoch,
            published: CachePadded::new(Published::new(
                policy.cold_start,
                DeadlineSource::ColdStart,
            )),
            last_used: AtomicU64::new(0),
            stall_end: AtomicU64::new(0),
            stripes: Stripes::new(),
            interrupts: Interrupts::new(),
            changes: StateChanges::default(),
            #[cfg(feature = "http")]
            gaps: gaps::Gaps::new(policy.cold_start),
            counters: Counters::default(),
            classes: ClassSlots::new(max_classes),
            locked: CachePadded::new(Mutex::new(Locked::new(
                policy,
                overridden,
                now,
                jitter_seed,
            ))),
        };
        let mut locked = peer.lock();
        let mut fx = Effects::default();
        locked.publish(now, &mut fx);
        peer.apply(&mut locked, now, fx);
        drop(locked);
        peer.touch(peer.nanos(now));
        peer
    }

    /// The deadline a new call starting at `now` gets, and why (before any caller's own
    /// deadline shortens it): the published one, unless the peer's state cuts it.
    pub(crate) fn next_deadline(&self, now: Instant) -> (Duration, DeadlineSource) {
        // Under the lock, which hands over the answers the stripes deferred first (under
        // contention a peer still learning defers some): the deadline read is the one
        // every answer so far made, as a snapshot's is. A handle's read, never a call's.
        let locked = self.lock();
        locked.next_deadline(now, self.deadline())
    }

    /// While the peer is silent with no probe in flight, when the next probe may go;
    /// `None` in any other state.
    pub(crate) fn probe_due_at(&self) -> Option<Instant> {
        let locked = self.lock();
        let health = &locked.health;
        (health.state() == PeerState::Silent).then(|| health.next_probe_at())
    }

    /// Admits a call to `peer` starting at `now` with `hints` (its class and floor), whose
    /// interrupt generation is `generation`, or refuses it because the peer is silent
    /// (`Admission::Refused`); `None` if the peer has left the table (look it up again).
    /// A healthy peer costs atomic operations only (a new class takes the lock once); the
    /// windows are rotated first if their time has come, so stale history does not set
    /// the deadline.
    ///
    /// The call is counted in flight before anything else, on the stripe words that also
    /// hold the retired mark: either the table retires the peer first and this call looks
    /// it up again, or the call is counted first and the table keeps the peer (and with it
    /// the call within reach of `shutdown` and `interrupt_all`) until it ends.
    #[inline(always)]
    pub(crate) fn admit(
        peer: &PeerRef,
        now: Instant,
        generation: u32,
        hints: LatencyHints<'_>,
    ) -> Option<Admission> {
        // One dereference of the peer's (maybe leased) reference for the whole admission.
        let p: &Peer = peer;
        let stripe = p.stripes.enter()?;
        let mut in_flight = InFlight::tracked(peer.clone(), stripe);
        let now_ns = p.nanos(now);
        // Any call to the peer is use.
        p.touch(now_ns);
        if p.published.rotation_due(now_ns) {
            p.rotate(now);
        }
        let class = p.class_of(now, hints.class);
        let (mut deadline, mut source) = p.class_deadline(class);
        if !p.state().is_open() {
            match Peer::admit_unopen(peer, now, in_flight, &mut deadline, &mut source) {
                Ok(held) => in_flight = held,
                Err(fired) => {
                    return Some(Admission::Refused(CallPeer::Tracked(peer.clone()), fired))
                }
            }
        }
        p.metrics.admitted();
        let ticket = Ticket {
            deadline,
            source,
            generation,
            class,
            started: now,
            started_ns: now_ns,
        };
        let ticket = ticket.floored(hints.floor, p.published.max());
        Some(Admission::Admitted(in_flight, ticket))
    }

    /// Rotates the windows, their time come (rare: out of the admission's line).
    #[cold]
    #[inline(never)]
    fn rotate(&self, now: Instant) {
        let mut locked = self.lock();
        let fx = locked.rotate(now);
        self.apply(&mut locked, now, fx);
    }

    /// Admits a call to a peer not open as its health machine says (under its lock): a
    /// probe with the probe's deadline, a call cut to the policy's `min`, or refused at
    /// once (`Err`, with why; the call is then out of flight). Rare: kept out of the
    /// admission's line.
    #[cold]
    #[inline(never)]
    fn admit_unopen(
        peer: &PeerRef,
        now: Instant,
        mut in_flight: InFlight,
        deadline: &mut Duration,
        source: &mut DeadlineSource,
    ) -> Result<InFlight, Fired> {
        let mut guard = peer.lock();
        let locked = &mut *guard;
        let (verdict, transition) = locked.health.admit(now, &locked.policy);
        peer.transition(transition);
        match verdict {
            Verdict::Go => {}
            Verdict::Probe(d) => {
                in_flight.make_probe();
                // The probe's deadline comes from the peer's (its health), not from the
                // call's class: so does its explanation.
                (*deadline, *source) = (d, peer.deadline().1);
            }
            Verdict::Shortened => {
                (*deadline, *source) = (locked.policy.min, DeadlineSource::SilentPeer)
            }
            Verdict::FailFast => {
                in_flight.refuse();
                peer.counters.fail_fast.fetch_add(1, Relaxed);
                peer.metrics.rejected();
                return Err(peer.silent_reason(locked, now, locked.silenced.as_ref()));
            }
        }
        Ok(in_flight)
    }

    /// The slot of `class`, claiming one for a class not seen before if any is free.
    /// Allocates (the class's label and history) only for a new class.
    #[inline]
    fn class_of(&self, now: Instant, class: Option<ClassOf<'_>>) -> Option<ClassIx> {
        self.class_slot(now, class?)
    }

    /// [`class_of`](Self::class_of) for a call that has a class.
    fn class_slot(&self, now: Instant, class: ClassOf<'_>) -> Option<ClassIx> {
        let id = class.id();
        if let Some(i) = self.classes.find(id) {
            return Some(i);
        }
        if self.classes.is_full() {
            return None;
        }
        let mut guard = self.lock();
        let locked = &mut *guard;
        let rules = (&locked.policy, locked.overridden);
        (self.classes).claim(id, &mut locked.classes, |lanes| {
            lanes.add(class, now, rules)
        })
    }

    /// The call of `ticket` (`probe`: the peer's probe) ended with `outcome` at `now`:
    /// recorded as [`on_head`](Self::on_head) does, and counted (the call leaves the
    /// in-flight count when its `InFlight` is dropped).
    pub(crate) fn on_outcome(&self, now: Instant, ticket: &Ticket, probe: bool, outcome: Outcome) {
        self.record_answer(now, ticket, probe, outcome, true);
    }

    /// Records the head of the call of `ticket`, answered with `outcome`; the call stays in
    /// flight (its body is still to come) until its `InFlight` is dropped, and is counted
    /// once it ends: as answered ([`on_body_answered`](Self::on_body_answered)) unless its
    /// body is cut (a timeout, an interrupt), so each call counts one outcome.
    #[cfg(feature = "http")]
    pub(crate) fn on_head(&self, now: Instant, ticket: &Ticket, probe: bool, outcome: Outcome) {
        self.record_answer(now, ticket, probe, outcome, false);
    }

    /// Records `outcome` (see `Locked::answer`, `src/peer/outcome.rs`), counted if
    /// `count`. A healthy peer's counted samples are recorded at once if its lock is free,
    /// else held in the caller's stripe and handed over in batches ([`per_core`]); one
    /// past its deadline (a held call, which may end a stall) takes the lock with its ticket.
    fn record_answer(
        &self,
        now: Instant,
        ticket: &Ticket,
        probe: bool,
        outcome: Outcome,
        count: bool,
    ) {
        // One `Instant` subtraction: the latency from the start's nanoseconds, which the
        // call's admission counted (its ticket's `started_ns`).
        let now_ns = self.nanos(now);
        let latency_ns = now_ns.saturating_sub(ticket.started_ns);
        let latency = Duration::from_nanos(latency_ns);
        // Nor one that waited out part of a stall: the lock keeps it out of the history.
        let in_time = u128::from(latency_ns) <= ticket.deadline.as_nanos()
            && ticket.started_ns >= self.stall_end.load(Relaxed);
        if count
            && outcome == Outcome::Sample
            && !probe
            && in_time
            && self.state() == PeerState::Healthy
        {
            self.metrics.answered(latency);
            let stripe = self.stripes.mine();
            // A deadline learned from `min_samples` answers and recomputed only every
            // `recompute_every` (at least a batch) moves on no single answer: its answers
            // can wait in the stripe. One still learning goes at once if it can.
            let waits = ticket.source.is_learned() && self.published.batched();
            if !waits && !stripe.defers(now_ns) {
                if let Some(mut locked) = self.try_lock() {
                    if let Some(batch) = stripe.take_deferred(now_ns) {
                        self.hand_over(&mut locked, &batch);
                    }
                    let sample = std::iter::once(Sample::from((latency, ticket.class)));
                    let fx = locked.answered(now, 1, sample);
                    self.apply(&mut locked, now, fx);
                    return;
                }
                // Another core is recording: defer this core's answers for a while.
                stripe.contended(now_ns);
            }
            // One answer in `every`, for the peer's window and the class's: the fewer the
            // busier of the two allows.
            let every = match ticket.class {
                Some(class) => self
                    .published
                    .sample_every()
                    .min(self.classes.sample_every(class)),
                None => self.published.sample_every(),
            };
            let mut taken = None;
            match stripe.defer(latency_ns, ticket.class, now_ns, every, &mut taken) {
                Deferral::Held => {}
                Deferral::Alone { kept } => {
                    let mut locked = self.lock_alone();
                    let sample = kept.map(|k| Sample {
                        latency,
                        class: ticket.class,
                        answers: u64::from(k),
                    });
                    let fx = locked.answered(now, 1, sample.into_iter());
                    self.apply(&mut locked, now, fx);
                }
                Deferral::Taken => {
                    if let Some(batch) = &taken {
                        self.hand_over(&mut self.lock_alone(), batch);
                    }
                }
            }
            return;
        }
        let mut locked = self.lock();
        match outcome {
            _ if !count => {}
            Outcome::Failure => self.metrics.failed(),
            _ => self.metrics.answered(latency),
        }
        let published = self.deadline().0;
        let fx = locked.answer(now, ticket, probe, outcome, count, published);
        self.apply(&mut locked, now, fx);
    }

    /// Records the answers `batch` deferred, as of its latest.
    fn hand_over(&self, locked: &mut Locked, batch: &Batch) {
        let now = self.instant(batch.latest);
        let fx = locked.answered(now, batch.count(), batch.answers());
        self.apply(locked, now, fx);
    }

    /// The call of `ticket` (`probe`: the peer's probe) ran out its deadline at `now`:
    /// a censored sample, a miss, perhaps silence, which interrupts every other call in
    /// flight (see `Locked::on_deadline`, `src/peer/outcome.rs`). Returns why the deadline
    /// had its value, and the silence interrupt if this miss declared it. `body_since` is
    /// set for a call whose head was answered: its body's total deadline ran out, its last
    /// frame then.
    pub(crate) fn on_deadline(
        &self,
        now: Instant,
        ticket: &Ticket,
        probe: bool,
        body_since: Option<Instant>,
    ) -> (DeadlineExplanation, Option<Fired>) {
        let mut locked = self.lock();
        // A body's wait is weighed against the idle deadline the peer's own rule gives.
        #[cfg(feature = "http")]
        let body = body_since.map(|since| (since, self.own_idle()));
        // Without the `http` feature no call has a body.
        #[cfg(not(feature = "http"))]
        let body = body_since.and(None);
        let (explanation, fx) = locked.on_deadline(now, ticket, probe, body);
        let silenced = self.apply(&mut locked, now, fx);
        self.count_miss(&mut locked, silenced.as_ref());
        (explanation, silenced)
    }

    /// A call ended without an answer or a deadline: interrupted (why, and whether through
    /// the peer or by its caller) or dropped by its caller (`None`). Records no latency;
    /// the peer's probe frees the probe slot.
    pub(crate) fn on_abandon(
        &self,
        now: Instant,
        probe: bool,
        interrupted: Option<(&Reason, Origin)>,
    ) {
        if let Some((reason, origin)) = interrupted {
            // Only this peer's own silence is a silent interrupt: a caller's token may
            // carry any reason (an outer layer's deadline or silence, say).
            let counter = match (reason, origin) {
                (Reason::PeerSilent { .. }, Origin::Peer) => &self.counters.silent_interrupts,
                _ => &self.counters.manual_interrupts,
            };
            counter.fetch_add(1, Relaxed);
            self.metrics.interrupted(reason);
        }
        if probe {
            let mut locked = self.lock();
            let fx = locked.abandoned(now, probe);
            self.apply(&mut locked, now, fx);
        }
    }

    /// Applies what bookkeeping under the lock returned, the lock still held (the one
    /// place effects take hold): publishes the peer's deadline (ARCHITECTURE.md,
    /// invariant 5) and its classes', the failures in a row, fires the silence interrupt
    /// (returned) into every call in flight, and publishes and reports the transition.
    fn apply(&self, locked: &mut Locked, now: Instant, fx: Effects) -> Option<Fired> {
        if let Some(p) = fx.publish {
            self.published.set_deadline(p.deadline, p.source);
            self.publish_hedge_after(locked, p.source);
            let batch = per_core::BATCH as u64;
            let batched = p.source.is_learned() && locked.policy.recompute_every >= batch;
            self.published.set_batched(batched);
            // A busy peer's answers are sampled, as many kept as its quantile needs.
            let samples = locked.lane.window.samples();
            let every = per_core::sample_every(samples, locked.policy.quantile);
            self.published
                .set_sample_every(if batched { every } else { 1 });
            (self.published).set_bounds(locked.policy.max, locked.policy.cold_start);
            self.metrics.deadline(p.deadline);
            self.published.set_rotate_at(self.nanos(p.rotate_at));
        }
        self.classes.publish(&locked.classes, &fx.classes);
        // So are a busy class's: as many kept as the class's own quantile needs.
        let batched = self.published.batched();
        let q = locked.policy.quantile;
        (self.classes).publish_sample_every(&locked.classes, &fx.classes, |lane| {
            if batched && lane.source.is_learned() {
                per_core::sample_every(lane.window.samples(), q)
            } else {
                1
            }
        });
        self.publish_class_hedges(locked, &fx.classes);
        if let Some(failing) = fx.failing {
            if self.published.set_failing(failing) && failing == 0 {
                // A balanced endpoint held out for the failures waits for this.
                self.changes.wake();
            }
        }
        let silenced = fx.silenced.then(|| {
            let fired = self.silent_reason(locked, now, None);
            locked.silenced = Some(fired.clone());
            self.interrupts.fire(fired.clone());
            fired
        });
        if let Some(mark) = locked.health.take_stall_change() {
            let end = match mark {
                stalls::StallMark::InProgress => u64::MAX,
                stalls::StallMark::Ended(at) => self.nanos(at).max(1),
            };
            self.stall_end.store(end, Relaxed);
        }
        self.transition(fx.transition);
        silenced
    }

    /// Publishes a state change and reports it.
    fn transition(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        self.published.set_state(t.to);
        self.metrics.transitioned(t.to);
        self.changes.changed(&t);
        let (peer, from, to, why) = (&**self.label(), t.from.as_str(), t.to.as_str(), t.why);
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

    /// Puts a new policy in force; the window is kept when its shape did not change. The
    /// bodies' idle deadline follows it too.
    pub(crate) fn set_policy(&self, policy: Arc<TimeoutPolicy>, overridden: bool, now: Instant) {
        let mut locked = self.lock();
        let fx = locked.set_policy(policy, overridden, now);
        self.apply(&mut locked, now, fx);
        // The gaps take their lock before the peer's: this one is let go first.
        drop(locked);
        #[cfg(feature = "http")]
        self.gaps.refresh(|| self.lock().policy.clone(), now);
    }

    /// Reads the window: quantiles p50, p90, p99, p99.9, the max and the policy.
    pub(crate) fn view(&self, now: Instant) -> WindowView {
        let mut locked = self.lock();
        let fx = locked.rotate_if_due(now);
        self.apply(&mut locked, now, fx);
        locked.view(now, self.deadline())
    }

    /// The peer's lock, with every answer the stripes deferred handed over: whatever reads or
    /// judges the peer under it sees them (ARCHITECTURE.md, invariant 9).
    fn lock(&self) -> MutexGuard<'_, Locked> {
        let mut locked = self.lock_alone();
        let now = self.nanos(Instant::now());
        for batch in self.stripes.take_all(now) {
            self.hand_over(&mut locked, &batch);
        }
        locked
    }

    /// The peer's lock if it is free, the stripes' answers left where they are.
    fn try_lock(&self) -> Option<MutexGuard<'_, Locked>> {
        match self.locked.try_lock() {
            Ok(locked) => Some(locked),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The peer's lock, the stripes' answers left where they are.
    fn lock_alone(&self) -> MutexGuard<'_, Locked> {
        // Nothing under this lock can panic half-way through an update; a poisoned lock
        // still holds consistent data.
        self.locked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
