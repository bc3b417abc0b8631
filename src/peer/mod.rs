//! Everything the layer knows per peer.
//!
//! A call goes through [`key`] (which peer), [`table`] (the bounded table admits it and
//! hands out its [`InFlight`] and its [`Ticket`]), and ends in one of [`Peer`]'s
//! outcome methods ([`outcome`]), which feed the latency [`window`] and the [`health`]
//! state machine and republish what the next call reads ([`published`]).

use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use tokio::time::Instant;

use self::class_lanes::{ClassIx, ClassLane, ClassSlots};
use self::health::{Health, PeerState, Transition, Verdict};
use self::lane::Lane;
use self::per_core::Stripes;
use self::published::Published;
use crate::class::LatencyHints;
use crate::classify::{Classifier, Outcome};
use crate::error::{BoxError, Reason};
use crate::events::StateChanges;
use crate::explain::{DeadlineExplanation, DeadlineSource};
use crate::export::PeerMetrics;
use crate::interrupt::{Fired, Interrupts};
use crate::policy::TimeoutPolicy;

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
mod outcome;
mod per_core;
mod published;
mod straggler;
pub(crate) mod table;
mod ticket;
pub(crate) mod window;

#[cfg(test)]
mod proptests;

pub(crate) use self::hedging::{HedgeCount, HedgeQuantile};
pub(crate) use self::in_flight::{InFlight, NotAdmitted, PeerRef};
pub(crate) use self::ticket::Ticket;

/// How an untracked call's peer is named in errors.
static UNTRACKED: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("<untracked peer>"));

/// Most deadlines run out whose censored samples wait for the peer's next answer.
const PENDING_MISSES: usize = 32;

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
    /// the peer interrupted because the other copy answered first ([`HedgeCount`]).
    pub(crate) hedges: [AtomicU64; 3],
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
    /// When the last call failed to reach the peer: answers deferred in a stripe from before
    /// it do not end the failures in a row.
    failed_at: Option<Instant>,
    /// Censored samples of deadlines run out (and their calls' classes), held until the
    /// peer answers again (it was slow) or is declared silent (it was gone, which says
    /// nothing about its latency).
    pending: Vec<(Option<ClassIx>, Duration)>,
    policy: Arc<TimeoutPolicy>,
    overridden: bool,
    health: Health,
    /// The interrupt fired when the peer last went silent.
    silenced: Option<Fired>,
}

/// A read of a peer's window, state and deadline, for snapshots.
pub(crate) struct WindowView {
    pub(crate) samples: u64,
    pub(crate) quantiles: [Duration; 4],
    pub(crate) max: Duration,
    /// The deadline a new call gets, and why.
    pub(crate) deadline: Duration,
    pub(crate) explanation: DeadlineExplanation,
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
    Tracked(PeerRef),
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
    pub(crate) fn label(&self) -> &Arc<str> {
        match self {
            CallPeer::Tracked(p) => p.label(),
            CallPeer::Untracked(_) => &UNTRACKED,
        }
    }
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
        let lane = Lane::new(&policy, now);
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
            stripes: Stripes::new(),
            interrupts: Interrupts::new(),
            changes: StateChanges::default(),
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
                failed_at: None,
                pending: Vec::new(),
                policy,
                overridden,
                health: Health::new(now, jitter_seed),
                silenced: None,
            })),
        };
        peer.publish(&mut peer.lock(), now);
        peer.touch(peer.nanos(now));
        peer
    }

    /// The peer's name: its key's `Debug` form, bounded.
    pub(crate) fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// The current deadline and why it has that value: one atomic load.
    pub(crate) fn deadline(&self) -> (Duration, DeadlineSource) {
        self.published.deadline()
    }

    /// The deadline a new call starting at `now` gets, and why (before any caller's own
    /// deadline shortens it): the published one, unless the peer's state cuts it.
    pub(crate) fn next_deadline(&self, now: Instant) -> (Duration, DeadlineSource) {
        if self.state().is_open() {
            return self.deadline();
        }
        let locked = self.lock();
        self.deadline_at(&locked, now)
    }

    /// [`Self::next_deadline`] under the lock: what the state machine would admit a call
    /// with, asked of a copy so that nothing changes.
    fn deadline_at(&self, locked: &Locked, now: Instant) -> (Duration, DeadlineSource) {
        match locked.health.clone().admit(now, &locked.policy).0 {
            Verdict::Shortened => (locked.policy.min, DeadlineSource::SilentPeer),
            Verdict::Go | Verdict::Probe(_) | Verdict::FailFast => self.deadline(),
        }
    }

    /// The health state.
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

    /// While the peer is silent with no probe in flight, when the next probe may go;
    /// `None` in any other state.
    pub(crate) fn probe_due_at(&self) -> Option<Instant> {
        let locked = self.lock();
        let health = &locked.health;
        (health.state() == PeerState::Silent).then(|| health.next_probe_at())
    }

    /// Admits a call to `peer` starting at `now` with `hints` (its class and floor), whose
    /// interrupt generation is `generation`, or refuses it because the peer is silent or
    /// has left the table. A healthy peer costs atomic operations only (a new class takes
    /// the lock once); the windows are rotated first if their time has come, so stale
    /// history does not set the deadline.
    ///
    /// The call is counted in flight before anything else, on the stripe words that also
    /// hold the retired mark: either the table retires the peer first and this call looks
    /// it up again, or the call is counted first and the table keeps the peer (and with it
    /// the call within reach of `shutdown` and `interrupt_all`) until it ends.
    pub(crate) fn admit(
        peer: &PeerRef,
        now: Instant,
        generation: u32,
        hints: LatencyHints<'_>,
    ) -> Result<(InFlight, Ticket), NotAdmitted> {
        let stripe = peer.stripes.enter().ok_or(NotAdmitted::Retired)?;
        let mut in_flight = InFlight::tracked(peer.clone(), stripe);
        let now_ns = peer.nanos(now);
        // Any call to the peer is use.
        peer.touch(now_ns);
        if peer.published.rotation_due(now_ns) {
            let mut locked = peer.lock();
            locked.lane.window.advance(now);
            peer.publish(&mut locked, now);
        }
        let class = peer.class_of(now, hints.class);
        let (mut deadline, mut source) = peer.class_deadline(class);
        if !peer.state().is_open() {
            let mut guard = peer.lock();
            let locked = &mut *guard;
            let (verdict, transition) = locked.health.admit(now, &locked.policy);
            peer.transition(transition);
            match verdict {
                Verdict::Go => {}
                Verdict::Probe(d) => {
                    in_flight.make_probe();
                    deadline = d;
                }
                Verdict::Shortened => {
                    (deadline, source) = (locked.policy.min, DeadlineSource::SilentPeer)
                }
                Verdict::FailFast => {
                    in_flight.refuse();
                    peer.counters.fail_fast.fetch_add(1, Relaxed);
                    peer.metrics.rejected();
                    let fired = peer.silent_reason(locked, now, locked.silenced.as_ref());
                    return Err(NotAdmitted::FailFast(fired));
                }
            }
        }
        peer.metrics.admitted();
        let probe = in_flight.is_probe();
        let ticket = Ticket {
            deadline,
            source,
            generation,
            probe,
            class,
            started: now_ns,
        };
        Ok((in_flight, ticket.floored(hints.floor, peer.published.max())))
    }

    /// Counts a call to the peer refused before it reached the inner service, the peer's
    /// silence aside (see [`Counters::refused`]).
    pub(crate) fn refused(&self) {
        self.counters.refused.fetch_add(1, Relaxed);
        self.metrics.refused();
    }

    /// Lets the peer go if it has no call in flight: from then on every admission is
    /// refused as [`NotAdmitted::Retired`]. Returns whether it was retired.
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
        // The gaps take their lock before the peer's: this one is let go first.
        drop(locked);
        #[cfg(feature = "http")]
        self.refresh_gaps(now);
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

    /// Reads the window: quantiles p50, p90, p99, p99.9, the max and the policy.
    pub(crate) fn view(&self, now: Instant) -> WindowView {
        let mut locked = self.lock();
        if locked.lane.window.advance(now) {
            self.publish(&mut locked, now);
        }
        let (deadline, source) = self.deadline_at(&locked, now);
        let explanation = locked.lane.explained.explain(now, deadline, source);
        let reach = locked.policy.max_history;
        let w = &mut locked.lane.window;
        let (quantiles, max, samples) = w.quantiles([0.5, 0.9, 0.99, 0.999], reach, now);
        let heap_bytes = w.heap_bytes() + Peer::class_bytes(&locked);
        let classes = self.class_views(&mut locked, now);
        WindowView {
            samples,
            quantiles,
            max,
            deadline,
            explanation,
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
        let (deadline, source) = locked
            .lane
            .recompute(now, &locked.policy, locked.overridden);
        self.published.set_deadline(deadline, source);
        self.publish_hedge_after(locked, source);
        let batch = per_core::BATCH as u64;
        (self.published).set_batched(source.is_learned() && locked.policy.recompute_every >= batch);
        self.published
            .set_bounds(locked.policy.max, locked.policy.cold_start);
        locked.health.note_deadline(deadline);
        self.metrics.deadline(deadline);
        let own = locked.lane.window.rotates_at();
        let next = self.rotate_classes(locked, now).map_or(own, |c| c.min(own));
        self.published.set_rotate_at(self.nanos(next));
    }

    /// Notes a call to the peer at `now` (nanoseconds since the epoch; admitted or refused:
    /// either is use) for idle eviction, writing only when a millisecond has passed.
    pub(crate) fn touch(&self, now: u64) {
        if now.saturating_sub(self.last_used.load(Relaxed)) >= 1_000_000 {
            self.last_used.store(now, Relaxed);
        }
    }

    /// `t` in nanoseconds since the peer's epoch.
    pub(crate) fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The peer's lock, with every answer the stripes deferred handed over: whatever reads or
    /// judges the peer under it sees them.
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

    /// The instant `nanos` after the epoch.
    fn instant(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }
}
