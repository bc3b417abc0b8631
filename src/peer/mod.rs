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

use self::health::{Health, PeerState, Transition, Verdict};
use self::published::Published;
use self::window::Window;
use crate::error::Reason;
use crate::export::PeerMetrics;
use crate::interrupt::{Fired, Interrupts};
use crate::policy::{DeadlineExplanation, DeadlineSource, TimeoutPolicy};

pub(crate) mod health;
pub(crate) mod key;
mod published;
pub(crate) mod table;
pub(crate) mod window;

#[cfg(test)]
mod proptests;

/// How an untracked call's peer is named in errors.
const UNTRACKED: &str = "<untracked peer>";

/// The bit of a peer's in-flight word that says the table has let it go (see
/// [`Peer::retire`]); the other bits count calls in flight.
const RETIRED: usize = 1 << (usize::BITS - 1);

/// One tracked peer. What every call reads, what every call writes, and the lock sit on
/// separate cache lines, so callers on other cores do not invalidate each other's reads.
pub(crate) struct Peer {
    label: Box<str>,
    epoch: Instant,
    published: CachePadded<Published>,
    /// Calls in flight, and the [`RETIRED`] bit: one word, so that admission and eviction
    /// agree on whether a call got in before the peer left the table.
    in_flight: CachePadded<AtomicUsize>,
    /// Last call to the peer, admitted or refused, in nanoseconds since `epoch` (for idle
    /// eviction); written at most once per millisecond.
    last_used: AtomicU64,
    interrupts: Interrupts,
    pub(crate) counters: Counters,
    locked: CachePadded<Mutex<Locked>>,
    metrics: PeerMetrics,
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
    pub(crate) fn label(&self) -> &str {
        match self {
            CallPeer::Tracked(p) => p.label(),
            CallPeer::Untracked(_) => UNTRACKED,
        }
    }
}

impl Peer {
    pub(crate) fn new(
        label: Box<str>,
        metrics: PeerMetrics,
        policy: Arc<TimeoutPolicy>,
        overridden: bool,
        epoch: Instant,
        now: Instant,
        jitter_seed: u64,
    ) -> Peer {
        let window = Window::new(&policy, now);
        let peer = Peer {
            metrics,
            label,
            epoch,
            published: CachePadded::new(Published::new(
                policy.cold_start,
                DeadlineSource::ColdStart,
            )),
            last_used: AtomicU64::new(0),
            in_flight: CachePadded::new(AtomicUsize::new(0)),
            interrupts: Interrupts::new(),
            counters: Counters::default(),
            locked: CachePadded::new(Mutex::new(Locked {
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
                Verdict::Probe => held.probe = true,
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

    /// The peer answered a call that started at `started`: record its latency, and take
    /// the answer as a heartbeat.
    pub(crate) fn on_response(&self, now: Instant, started: Instant) {
        let latency = now.saturating_duration_since(started);
        self.metrics.answered(latency);
        let mut locked = self.lock();
        locked.completed += 1;
        self.record(&mut locked, now, latency);
        let transition = locked.health.on_response(now);
        self.transition(transition);
        drop(locked);
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
        self.metrics.timed_out();
        let mut locked = self.lock();
        locked.deadline_exceeded += 1;
        // Explain with the numbers in force before this miss's own sample moves them.
        let explanation = DeadlineExplanation::new(
            source,
            &locked.policy,
            locked.window.samples(),
            locked.quantile_value,
            locked.overridden,
        );
        if source == DeadlineSource::Caller {
            // The caller's own, shorter, deadline says nothing about the peer.
            drop(locked);
            self.end();
            return (explanation, None);
        }
        if !probe && source != DeadlineSource::SilentPeer {
            // A censored sample: the peer's latency was at least the deadline. (A probe or
            // a cut deadline of a peer known to be silent says nothing about its latency.)
            // Timeouts are rare and say the deadline may be behind: recompute at once.
            self.record(&mut locked, now, deadline);
            self.publish(&mut locked);
        }
        let policy = locked.policy.clone();
        let transition = locked.health.on_deadline(now, started, probe, &policy);
        let mut silenced = None;
        if transition.is_some_and(|t| t.to == PeerState::Silent && t.from != PeerState::Probing) {
            let fired = self.silent_reason(&locked, now, None);
            locked.silenced = Some(fired.clone());
            self.interrupts.fire(fired.clone());
            silenced = Some(fired);
        }
        self.transition(transition);
        drop(locked);
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
        if !locked.policy.same_window(&policy) {
            locked.window = Window::new(&policy, now);
        }
        locked.policy = policy;
        locked.overridden = overridden;
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
        let w = &locked.window;
        WindowView {
            policy: locked.policy.clone(),
            overridden: locked.overridden,
            samples: w.samples(),
            quantiles: [0.5, 0.9, 0.99, 0.999].map(|q| w.quantile(q)),
            max: w.max(),
            quantile_value: locked.quantile_value,
            heap_bytes: w.heap_bytes(),
            last_response: locked.health.last_response(),
            state: locked.health.state(),
            next_probe_at: locked.health.next_probe_at(),
            completed: locked.completed,
            deadline_exceeded: locked.deadline_exceeded,
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
        locked.quantile_value = q;
        locked.since_recompute = 0;
        self.published.set_deadline(deadline, source);
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
