//! The part of a peer behind its lock, and the effects its bookkeeping asks for.
//!
//! Whatever a call's end, a rotation, a policy change or a snapshot does under a peer's
//! lock is a function of the locked state ([`Locked`], here and in
//! [`outcome`](super::outcome)) that returns [`Effects`]: plain values on the stack that
//! say what to publish, which transition to announce, whether to fire the silence
//! interrupt and which classes' deadline words changed. Like [`health`](super::health),
//! these functions read no clock and touch no shared state, so they are tested without a
//! runtime. [`Peer`](super::Peer) alone takes the lock and applies what they return
//! (`Peer::apply`, before it lets the lock go).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::class_lanes::{ClassBits, ClassIx, ClassLanes};
use super::health::{Health, PeerState, Transition, Verdict};
use super::lane::Lane;
use crate::explain::{DeadlineExplanation, DeadlineSource};
use crate::interrupt::Fired;
use crate::policy::TimeoutPolicy;

/// Most deadlines run out whose censored samples wait for the peer's next answer.
pub(super) const PENDING_MISSES: usize = 32;

/// The part of a peer behind its lock: what a completion, a rotation or a policy change
/// reads and writes.
pub(crate) struct Locked {
    /// The latency history of every call and the deadline learned from it.
    pub(super) lane: Lane,
    /// The latency classes' histories, in the order of their slots.
    pub(super) classes: ClassLanes,
    /// Calls that ended with the inner service's answer (success or error).
    pub(super) completed: u64,
    /// Calls that ran out their deadline.
    pub(super) deadline_exceeded: u64,
    /// Calls whose inner service failed to reach the peer, ever and in a row.
    pub(super) failures: u64,
    pub(super) consecutive_failures: u64,
    /// When the last call failed to reach the peer: answers deferred in a stripe from before
    /// it do not end the failures in a row.
    pub(super) failed_at: Option<Instant>,
    /// Censored samples of deadlines run out (and their calls' classes), held until the
    /// peer answers again (it was slow) or is declared silent (it was gone, which says
    /// nothing about its latency).
    pub(super) pending: Vec<(Option<ClassIx>, Duration)>,
    pub(super) policy: Arc<TimeoutPolicy>,
    pub(super) overridden: bool,
    pub(super) health: Health,
    /// The interrupt fired when the peer last went silent.
    pub(super) silenced: Option<Fired>,
}

/// What bookkeeping under a peer's lock asks the peer to do before it lets the lock go.
/// Built on the stack, allocating nothing; applied by `Peer::apply` only.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[must_use]
pub(crate) struct Effects {
    /// The peer's own deadline, recomputed: to publish (the last one computed wins).
    pub(super) publish: Option<Publish>,
    /// The classes whose deadline words changed: to copy into their slots.
    pub(super) classes: ClassBits,
    /// The failures in a row to publish (0 after an answer).
    pub(super) failing: Option<u64>,
    /// A change of state to publish and announce.
    pub(super) transition: Option<Transition>,
    /// The peer was declared silent: every call in flight is to be interrupted.
    pub(super) silenced: bool,
}

/// A recomputed deadline of the peer's own, and when the next of its windows (its own,
/// its classes') rotates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Publish {
    pub(super) deadline: Duration,
    pub(super) source: DeadlineSource,
    pub(super) rotate_at: Instant,
}

impl Effects {
    /// Only a transition, if any.
    pub(super) fn transition(transition: Option<Transition>) -> Effects {
        Effects {
            transition,
            ..Effects::default()
        }
    }
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
    /// The learned floor on silence, and the calls it held that were then answered.
    pub(crate) stalls: (Duration, u64),
}

impl Locked {
    /// A peer first seen at `now` under `policy` (`overridden`: a per-peer one); `seed`
    /// drives its probe jitter.
    pub(super) fn new(
        policy: Arc<TimeoutPolicy>,
        overridden: bool,
        now: Instant,
        seed: u64,
    ) -> Self {
        Locked {
            lane: Lane::new(&policy, now),
            classes: ClassLanes::default(),
            completed: 0,
            deadline_exceeded: 0,
            failures: 0,
            consecutive_failures: 0,
            failed_at: None,
            pending: Vec::new(),
            policy,
            overridden,
            health: Health::new(now, seed),
            silenced: None,
        }
    }

    /// Recomputes the peer's deadline from its history (to publish), with when the next
    /// of its windows (its own, its classes') rotates.
    pub(super) fn publish(&mut self, now: Instant, fx: &mut Effects) {
        let (deadline, source) = self.lane.recompute(now, &self.policy, self.overridden);
        self.health.note_deadline(deadline);
        let own = self.lane.window.rotates_at();
        let rules = (&self.policy, self.overridden);
        let next = self.classes.rotate(now, rules, &mut fx.classes);
        let rotate_at = next.map_or(own, |c| c.min(own));
        fx.publish = Some(Publish {
            deadline,
            source,
            rotate_at,
        });
    }

    /// A rotation is due (the peer's window's or a class's): rotates the windows whose
    /// time has come and republishes.
    pub(super) fn rotate(&mut self, now: Instant) -> Effects {
        let mut fx = Effects::default();
        self.lane.window.advance(now);
        self.publish(now, &mut fx);
        fx
    }

    /// Rotates the peer's window if its time has come, and if it did republishes.
    pub(super) fn rotate_if_due(&mut self, now: Instant) -> Effects {
        let mut fx = Effects::default();
        if self.lane.window.advance(now) {
            self.publish(now, &mut fx);
        }
        fx
    }

    /// Puts a new policy in force; the windows are kept when their shape did not change.
    pub(super) fn set_policy(
        &mut self,
        policy: Arc<TimeoutPolicy>,
        overridden: bool,
        now: Instant,
    ) -> Effects {
        let reset = !self.policy.same_window(&policy);
        if reset {
            self.lane = Lane::new(&policy, now);
        }
        let mut fx = Effects::transition(self.health.release_if_detection_off(&policy));
        self.policy = policy;
        self.overridden = overridden;
        let rules = (&self.policy, self.overridden);
        self.classes.reshape(now, reset, rules, &mut fx.classes);
        self.publish(now, &mut fx);
        fx
    }

    /// The deadline a new call starting at `now` gets, the peer's published one being
    /// `published`: what the state machine would admit a call with, asked of a copy so
    /// that nothing changes.
    pub(super) fn next_deadline(
        &self,
        now: Instant,
        published: (Duration, DeadlineSource),
    ) -> (Duration, DeadlineSource) {
        match self.health.clone().admit(now, &self.policy).0 {
            Verdict::Shortened => (self.policy.min, DeadlineSource::SilentPeer),
            Verdict::Go | Verdict::Probe(_) | Verdict::FailFast => published,
        }
    }

    /// Reads the window (quantiles p50, p90, p99, p99.9, the max), the classes, the state
    /// and the counts, the peer's published deadline being `published`.
    pub(super) fn view(
        &mut self,
        now: Instant,
        published: (Duration, DeadlineSource),
    ) -> WindowView {
        let (deadline, source) = self.next_deadline(now, published);
        let explanation = self.lane.explained.explain(now, deadline, source);
        let reach = self.policy.max_history;
        let w = &mut self.lane.window;
        let (quantiles, max, samples) = w.quantiles([0.5, 0.9, 0.99, 0.999], reach, now);
        let heap_bytes = w.heap_bytes() + self.classes.heap_bytes();
        let classes = self.classes.views(&self.lane, now, &self.policy, published);
        WindowView {
            samples,
            quantiles,
            max,
            deadline,
            explanation,
            heap_bytes,
            classes,
            last_response: self.health.last_response(),
            state: self.health.state(),
            next_probe_at: self.health.next_probe_at(),
            completed: self.completed,
            deadline_exceeded: self.deadline_exceeded,
            failures: self.failures,
            consecutive_failures: self.consecutive_failures,
            stalls: self.health.stalls(now, &self.policy),
        }
    }
}
