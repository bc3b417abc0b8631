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

use self::health::{Health, PeerState, Transition, Verdict};
use self::published::Published;
use self::window::Window;
use crate::error::Reason;
use crate::export::PeerMetrics;
use crate::interrupt::{Fired, Interrupts, Origin};
use crate::policy::{DeadlineExplanation, DeadlineSource, Explained, TimeoutPolicy};

pub(crate) mod health;
pub(crate) mod key;
mod published;
pub(crate) mod table;
pub(crate) mod window;

#[cfg(test)]
mod proptests;

/// How an untracked call's peer is named in errors.
static UNTRACKED: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("<untracked peer>"));

/// One tracked peer. What every call reads, what every call writes, and the lock sit on
/// separate cache lines, so callers on other cores do not invalidate each other's reads.
pub(crate) struct Peer {
    /// The peer's name, made once and shared by its errors, snapshots and metrics.
    label: Arc<str>,
    epoch: Instant,
    published: CachePadded<Published>,
    /// Calls in flight.
    in_flight: CachePadded<AtomicUsize>,
    /// Last call start, in nanoseconds since `epoch` (for idle eviction); written at most
    /// once per millisecond.
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
    pub(crate) fn new(
        label: Arc<str>,
        policy: Arc<TimeoutPolicy>,
        overridden: bool,
        epoch: Instant,
        now: Instant,
        jitter_seed: u64,
    ) -> Peer {
        let window = Window::new(&policy, now);
        let peer = Peer {
            metrics: PeerMetrics::new(&label),
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
            Verdict::Go | Verdict::Probe | Verdict::FailFast => self.deadline(),
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

    /// Admits a call starting at `now`, or refuses it because the peer is silent. A healthy
    /// peer costs atomic reads only; the window is rotated first if its time has come, so
    /// stale history does not set the deadline.
    pub(crate) fn admit(&self, now: Instant) -> Result<Ticket, Fired> {
        if self.published.rotation_due(self.nanos(now)) {
            let mut locked = self.lock();
            if locked.window.advance(now) {
                self.publish(&mut locked);
            }
        }
        let generation = self.interrupts.generation();
        let (mut deadline, mut source) = self.deadline();
        let mut probe = false;
        if !self.state().is_open() {
            let mut guard = self.lock();
            let locked = &mut *guard;
            let (verdict, transition) = locked.health.admit(now, &locked.policy);
            self.transition(transition);
            match verdict {
                Verdict::Go => {}
                Verdict::Probe => probe = true,
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
        Ok(Ticket {
            deadline,
            source,
            generation,
            probe,
        })
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
        // Explain with the numbers the call's deadline came from, before this miss's own
        // sample moves them.
        let explanation = locked.explained.explain(started, deadline, source);
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
        locked.policy = policy;
        locked.overridden = overridden;
        self.publish(&mut locked);
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
        self.metrics.deadline(deadline);
        let rotate_at = self.nanos(locked.window.rotates_at());
        self.published.set_rotate_at(rotate_at);
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
