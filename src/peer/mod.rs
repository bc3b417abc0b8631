//! Everything the layer knows per peer.
//!
//! A call goes through [`key`] (which peer), [`table`] (the bounded table admits it and
//! hands out its [`Ticket`]), and ends in one of [`Peer`]'s outcome methods, which feed the
//! latency [`window`] and the [`health`] state machine and republish what the next call
//! reads ([`published`]).

use std::panic::Location;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use tokio::time::Instant;

use self::health::{Health, PeerState, ProbeEnd, Transition, Verdict};
use self::published::Published;
use self::window::Window;
use crate::classify::{Classifier, Outcome};
use crate::error::{BoxError, Reason};
use crate::events::PeerWatch;
use crate::export::PeerMetrics;
use crate::interrupt::{Fired, Interrupts, Origin};
use crate::policy::{DeadlineExplanation, DeadlineSource, Explained, TimeoutPolicy};

#[cfg(feature = "http")]
mod gaps;
pub(crate) mod health;
pub(crate) mod key;
mod published;
pub(crate) mod table;
pub(crate) mod window;

#[cfg(test)]
mod proptests;

/// How an untracked call's peer is named in errors.
static UNTRACKED: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("<untracked peer>"));

/// Most misses whose censored samples wait for the peer's next answer.
const PENDING_MISSES: usize = 32;

/// The bit of a peer's in-flight word that says the table has let it go (see
/// [`Peer::retire`]); the other bits count calls in flight.
const RETIRED: usize = 1 << (usize::BITS - 1);

/// One tracked peer. What every call reads, what every call writes, and the lock sit on
/// separate cache lines, so callers on other cores do not invalidate each other's reads.
pub(crate) struct Peer {
    /// The peer's name, made once and shared by its errors, snapshots and metrics.
    label: Arc<str>,
    epoch: Instant,
    published: CachePadded<Published>,
    /// Calls in flight, and the [`RETIRED`] bit: one word, so that admission and eviction
    /// agree on whether a call got in before the peer left the table.
    in_flight: CachePadded<AtomicUsize>,
    /// Last call to the peer, admitted or refused, in nanoseconds since `epoch` (for idle
    /// eviction); written at most once per millisecond.
    last_used: AtomicU64,
    interrupts: Interrupts,
    /// Wakes what waits on the peer's state, and reports its transitions.
    watch: PeerWatch,
    /// The gaps between response body frames, for the bodies' idle deadline.
    #[cfg(feature = "http")]
    gaps: gaps::Gaps,
    pub(crate) counters: Counters,
    locked: CachePadded<Mutex<Locked>>,
    metrics: PeerMetrics,
    classifier: Classifier,
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
}

/// The part of a peer behind its lock: what a completion, a rotation or a policy change
/// reads and writes.
struct Locked {
    window: Window,
    /// Calls that ended with the inner service's answer (success or error).
    completed: u64,
    /// Calls that ran out their deadline.
    deadline_exceeded: u64,
    /// Calls whose inner service failed to reach the peer, ever and in a row.
    failures: u64,
    consecutive_failures: u64,
    /// Censored samples of misses, held until the peer answers again (it was slow) or is
    /// declared silent (it was gone, which says nothing about its latency).
    pending: Vec<Duration>,
    policy: Arc<TimeoutPolicy>,
    overridden: bool,
    since_recompute: u64,
    source: DeadlineSource,
    /// What the latest published deadlines came from.
    explained: Explained,
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
    pub(crate) last_response: Instant,
    pub(crate) state: PeerState,
    pub(crate) next_probe_at: Instant,
    pub(crate) completed: u64,
    pub(crate) deadline_exceeded: u64,
    pub(crate) failures: u64,
    pub(crate) consecutive_failures: u64,
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

/// Why a peer did not admit a call.
pub(crate) enum NotAdmitted {
    /// The peer is silent: the call fails fast.
    FailFast(Fired),
    /// The table let the peer go since the caller found it: look the peer up again.
    Retired,
}

/// An admitted call's place among its peer's calls in flight, held from the moment the
/// peer counted it. The call's outcome is recorded through [`InFlight::end`]; dropped
/// without one (its caller went away, or a panic came between admission and the call's
/// future) the call ends as abandoned, so the count and a probe slot always come back.
pub(crate) struct InFlight {
    peer: CallPeer,
    probe: bool,
    ended: bool,
}

impl InFlight {
    /// An untracked call: nothing to give back.
    pub(crate) fn untracked(interrupts: Arc<Interrupts>) -> Self {
        InFlight {
            peer: CallPeer::Untracked(interrupts),
            probe: false,
            ended: false,
        }
    }

    /// Whom the call is for.
    pub(crate) fn peer(&self) -> &CallPeer {
        &self.peer
    }

    /// The call's probe was answered (its head came): a later abandon (its body dropped)
    /// is no abandoned probe.
    pub(crate) fn probe_answered(&mut self) {
        self.probe = false;
    }

    /// Gives the call up to its outcome: the peer to record it on (`None`: untracked, it is
    /// recorded nowhere). Dropping the hold records nothing after this.
    pub(crate) fn end(&mut self) -> Option<&Peer> {
        self.ended = true;
        match &self.peer {
            CallPeer::Tracked(p) => Some(p),
            CallPeer::Untracked(_) => None,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let (false, CallPeer::Tracked(p)) = (self.ended, &self.peer) {
            p.on_abandon(Instant::now(), self.probe, None);
        }
    }
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
    pub(crate) fn label(&self) -> &Arc<str> {
        match self {
            CallPeer::Tracked(p) => p.label(),
            CallPeer::Untracked(_) => &UNTRACKED,
        }
    }
}

impl Peer {
    /// A peer first seen at `now`, under `policy` (and whether that is a per-peer
    /// override), its probe jitter seeded by `jitter_seed`.
    pub(crate) fn new(
        label: Arc<str>,
        metrics: PeerMetrics,
        (policy, overridden): (Arc<TimeoutPolicy>, bool),
        epoch: Instant,
        now: Instant,
        jitter_seed: u64,
        classifier: Classifier,
    ) -> Peer {
        let window = Window::new(&policy, now);
        let peer = Peer {
            metrics,
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
            watch: PeerWatch::default(),
            #[cfg(feature = "http")]
            gaps: gaps::Gaps::new(policy.cold_start),
            counters: Counters::default(),
            locked: CachePadded::new(Mutex::new(Locked {
                window,
                completed: 0,
                deadline_exceeded: 0,
                failures: 0,
                consecutive_failures: 0,
                pending: Vec::new(),
                policy,
                overridden,
                since_recompute: 0,
                source: DeadlineSource::ColdStart,
                explained: Explained::new(),
                health: Health::new(now, jitter_seed),
                silenced: None,
            })),
        };
        peer.publish(&mut peer.lock());
        peer.last_used.store(peer.nanos(now), Relaxed);
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
    pub(crate) fn watch(&self) -> &PeerWatch {
        &self.watch
    }

    /// While the peer is silent with no probe in flight, when the next probe may go;
    /// `None` in any other state.
    pub(crate) fn probe_due_at(&self) -> Option<Instant> {
        let locked = self.lock();
        let health = &locked.health;
        (health.state() == PeerState::Silent).then(|| health.next_probe_at())
    }

    /// Admits a call starting at `now` whose interrupt generation is `generation`, or
    /// refuses it because the peer is silent or has left the table. A healthy peer costs
    /// atomic operations only; the window is rotated first if its time has come, so stale
    /// history does not set the deadline.
    ///
    /// The call is counted in flight before anything else, on the word that also holds
    /// [`RETIRED`]: either the table retires the peer first and this call looks it up again,
    /// or the call is counted first and the table keeps the peer (and with it the call
    /// within reach of `shutdown` and `interrupt_all`) until it ends.
    pub(crate) fn admit(
        self: &Arc<Self>,
        now: Instant,
        generation: u64,
    ) -> Result<(InFlight, Ticket), NotAdmitted> {
        if self.in_flight.fetch_add(1, Relaxed) & RETIRED != 0 {
            self.in_flight.fetch_sub(1, Relaxed);
            return Err(NotAdmitted::Retired);
        }
        let mut held = InFlight {
            peer: CallPeer::Tracked(self.clone()),
            probe: false,
            ended: false,
        };
        if self.published.rotation_due(self.nanos(now)) {
            let mut locked = self.lock();
            if locked.window.advance(now) {
                self.publish(&mut locked);
            }
        }
        let (mut deadline, mut source) = self.deadline();
        if !self.state().is_open() {
            let mut guard = self.lock();
            let locked = &mut *guard;
            let (verdict, transition) = locked.health.admit(now, &locked.policy);
            self.transition(transition);
            match verdict {
                Verdict::Go => {}
                Verdict::Probe(d) => (held.probe, deadline) = (true, d),
                Verdict::Shortened => {
                    (deadline, source) = (locked.policy.min, DeadlineSource::SilentPeer)
                }
                Verdict::FailFast => {
                    // Never in flight: uncounted, and not an abandoned call.
                    held.ended = true;
                    self.in_flight.fetch_sub(1, Relaxed);
                    self.counters.fail_fast.fetch_add(1, Relaxed);
                    self.metrics.rejected();
                    let fired = self.silent_reason(locked, now, locked.silenced.as_ref());
                    return Err(NotAdmitted::FailFast(fired));
                }
            }
        }
        self.metrics.admitted();
        let probe = held.probe;
        let ticket = Ticket {
            deadline,
            source,
            generation,
            probe,
        };
        Ok((held, ticket))
    }

    /// Lets the peer go if it has no call in flight: from then on every admission is
    /// refused as [`NotAdmitted::Retired`]. Returns whether it was retired.
    pub(crate) fn retire(&self) -> bool {
        self.in_flight
            .compare_exchange(0, RETIRED, Relaxed, Relaxed)
            .is_ok()
    }

    /// Classifies an inner error (only errors are classified: a success is a sample).
    pub(crate) fn classify(&self, err: &BoxError) -> Outcome {
        self.classifier.classify(&**err)
    }

    /// The call that started at `started` ended with `outcome` at `now`: recorded as
    /// [`on_head`](Self::on_head) does, and the call is over.
    pub(crate) fn on_outcome(&self, now: Instant, started: Instant, probe: bool, outcome: Outcome) {
        self.on_head(now, started, probe, outcome);
        self.end();
    }

    /// Records `outcome` of a call that started at `started`; the call stays in flight
    /// (its body is still to come) until [`on_body_end`](Self::on_body_end), an abandon,
    /// or [`on_outcome`](Self::on_outcome)'s end. An answer is a heartbeat (and commits
    /// the misses held back); a [`Outcome::Sample`] also records its latency. A probe
    /// answered slower than the learned deadline re-seeds the window: the peer came back
    /// slower, and its old history would cut every call. A failure records nothing but its
    /// count; a failed probe frees the probe slot.
    pub(crate) fn on_head(&self, now: Instant, started: Instant, probe: bool, outcome: Outcome) {
        let latency = now.saturating_duration_since(started);
        let mut locked = self.lock();
        if outcome == Outcome::Failure {
            self.metrics.failed();
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
        let learned = locked.source != DeadlineSource::ColdStart;
        if probe && learned && latency > self.deadline().0 {
            locked.window = Window::new(&locked.policy, now);
            locked.pending.clear();
            self.publish(&mut locked);
        }
        let held = std::mem::take(&mut locked.pending);
        for censored in &held {
            self.record(&mut locked, now, *censored);
        }
        if !held.is_empty() {
            // Like the tail's, these say the deadline may be behind: recompute at once.
            self.publish(&mut locked);
        }
        if outcome == Outcome::Sample {
            self.record(&mut locked, now, latency);
        }
        let transition = locked.health.on_response(now);
        self.transition(transition);
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
        self.metrics.timed_out();
        let mut locked = self.lock();
        locked.deadline_exceeded += 1;
        // Explain with the numbers the call's deadline came from, before this miss's own
        // sample moves them.
        let explanation = locked.explained.explain(started, deadline, source);
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
            } else if miss && deadline >= self.normal_latency(&locked) {
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
                    locked.pending.push(deadline);
                }
            } else {
                self.record(&mut locked, now, deadline);
                self.publish(&mut locked);
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

    /// How long the peer's answers normally take: the window's quantile once it is
    /// trusted, else the slowest answer seen; at least `min`. A caller's deadline shorter
    /// than this proves nothing when it runs out.
    fn normal_latency(&self, locked: &Locked) -> Duration {
        let seen = if locked.source == DeadlineSource::ColdStart {
            locked.window.max()
        } else {
            locked.explained.quantile_value()
        };
        seen.max(locked.policy.min)
    }

    /// A call ended without an answer or a deadline: interrupted (why, and whether through
    /// the peer or by its caller) or dropped by its caller (`None`). Records no latency.
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
            let transition = locked.health.on_abandon(probe, now);
            self.transition(transition);
        }
        self.end();
    }

    fn end(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.metrics.ended();
    }

    /// Records one latency and republishes the deadline when it is due.
    fn record(&self, locked: &mut MutexGuard<'_, Locked>, now: Instant, latency: Duration) {
        let rotated = locked.window.advance(now);
        locked.window.record(latency);
        locked.since_recompute += 1;
        let warmed_up = locked.source == DeadlineSource::ColdStart
            && locked.window.samples() >= locked.policy.min_samples;
        if rotated || warmed_up || locked.since_recompute >= locked.policy.recompute_every {
            self.publish(locked);
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
        self.watch.changed(&t);
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

    /// Puts a new policy in force; the window is kept when its shape did not change.
    pub(crate) fn set_policy(&self, policy: Arc<TimeoutPolicy>, overridden: bool, now: Instant) {
        let mut locked = self.lock();
        if !locked.policy.same_window(&policy) {
            locked.window = Window::new(&policy, now);
        }
        let transition = locked.health.release_if_detection_off(&policy);
        locked.policy = policy;
        locked.overridden = overridden;
        self.transition(transition);
        self.publish(&mut locked);
    }

    /// Whether the table has let the peer go.
    pub(crate) fn is_retired(&self) -> bool {
        self.in_flight.load(Relaxed) & RETIRED != 0
    }

    /// Calls in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed) & !RETIRED
    }

    /// How long since the last call to the peer.
    pub(crate) fn idle_for(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.nanos(now).saturating_sub(self.last_used.load(Relaxed)))
    }

    /// Reads the window: quantiles p50, p90, p99, p99.9, the max and the policy.
    pub(crate) fn view(&self, now: Instant) -> WindowView {
        let mut locked = self.lock();
        if locked.window.advance(now) {
            self.publish(&mut locked);
        }
        let (deadline, source) = self.deadline_at(&locked, now);
        let explanation = locked.explained.explain(now, deadline, source);
        let w = &locked.window;
        WindowView {
            samples: w.samples(),
            quantiles: [0.5, 0.9, 0.99, 0.999].map(|q| w.quantile(q)),
            max: w.max(),
            deadline,
            explanation,
            heap_bytes: w.heap_bytes(),
            last_response: locked.health.last_response(),
            state: locked.health.state(),
            next_probe_at: locked.health.next_probe_at(),
            completed: locked.completed,
            deadline_exceeded: locked.deadline_exceeded,
            failures: locked.failures,
            consecutive_failures: locked.consecutive_failures,
        }
    }

    /// Recomputes the deadline from the window and publishes it (under the lock).
    fn publish(&self, locked: &mut MutexGuard<'_, Locked>) {
        let samples = locked.window.samples();
        let q = if samples >= locked.policy.min_samples {
            locked.window.quantile(locked.policy.quantile)
        } else {
            Duration::ZERO
        };
        let (deadline, source) = locked.policy.deadline(samples, q);
        locked.source = source;
        locked.since_recompute = 0;
        let (policy, overridden) = (locked.policy.clone(), locked.overridden);
        let at = Instant::now();
        (locked.explained).publish(at, deadline, source, &policy, samples, q, overridden);
        self.published.set_deadline(deadline, source);
        locked.health.note_deadline(deadline);
        self.metrics.deadline(deadline);
        let rotate_at = self.nanos(locked.window.rotates_at());
        self.published.set_rotate_at(rotate_at);
    }

    /// Notes a call to the peer at `now` (admitted or refused: either is use) for idle
    /// eviction, writing only when a millisecond has passed.
    pub(crate) fn touch(&self, now: Instant) {
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
