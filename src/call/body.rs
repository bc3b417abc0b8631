//! The call guard's side of a response body: a call whose head arrived stays in flight in
//! its body, and ends there exactly once, counted as one outcome: answered (its last frame,
//! the inner body's error, or the body dropped), interrupted, or expired (its idle or total
//! deadline).

use std::panic::Location;
use std::time::Duration;

use tokio::time::Instant;

use super::{fire_token, Call};
use crate::body::idle::{IdleRule, IdleSource};
use crate::classify::Outcome;
use crate::error::{Interrupted, Reason};
use crate::explain::DeadlineSource;
use crate::interrupt::{Fired, Origin};
use crate::peer::CallPeer;

impl Call {
    /// The head arrived: recorded as `outcome`, but the call stays in flight, and is
    /// counted when it ends. A probe is over once its head is answered.
    pub(crate) fn head(&mut self, now: Instant, outcome: Outcome) {
        if let CallPeer::Tracked(p) = self.peer() {
            p.on_head(now, &self.ticket, self.in_flight.is_probe(), outcome);
        }
        let latency = now.saturating_duration_since(self.ticket.started);
        self.in_flight.head_answered(outcome, latency);
    }

    /// The head arrived with its body already at its end: the call ends there, answered.
    pub(crate) fn answered_whole(mut self, outcome: Outcome) {
        self.answered(outcome);
    }

    /// When the call started.
    pub(crate) fn started(&self) -> Instant {
        self.ticket.started
    }

    /// The body's idle deadline under `rule` and why; an untracked call's is its deadline.
    pub(crate) fn idle_deadline(&self, rule: IdleRule) -> Option<(Duration, IdleSource)> {
        match (self.peer(), rule) {
            (_, IdleRule::Off) => None,
            (CallPeer::Tracked(p), rule) => p.idle_deadline(rule),
            (CallPeer::Untracked(_), _) => Some((self.ticket.deadline, IdleSource::PeerDeadline)),
        }
    }

    /// When a body idle since `since` past its `idle` deadline is cut, if its peer's
    /// floor on silence holds it longer (`None`: at once; see `Peer::body_cut_at`).
    pub(crate) fn body_cut_at(&self, since: Instant, idle: Duration) -> Option<Instant> {
        match self.peer() {
            CallPeer::Tracked(p) => p.body_cut_at(since, idle),
            CallPeer::Untracked(_) => None,
        }
    }

    /// A body frame arrived at `now`, `gap` after the previous one.
    pub(crate) fn frame(&self, now: Instant, gap: Duration, heartbeat: bool) {
        if let CallPeer::Tracked(p) = self.peer() {
            p.on_frame(now, gap, heartbeat);
        }
    }

    /// The body ended: its last frame, or the inner body's own error.
    pub(crate) fn body_end(self) {
        // The hold, dropped, counts the call as answered (its head was) and takes it out
        // of its peer's count.
        drop(self);
    }

    /// An interrupt reached the body.
    #[track_caller]
    pub(crate) fn body_interrupted(mut self, (fired, origin): (Fired, Origin)) -> Interrupted {
        let _entered = self.span.clone().entered();
        self.interrupted(fired, origin)
    }

    /// The body sent nothing since `since` for its `idle` deadline: a miss, unless its
    /// caller set a deadline shorter than the peer's own. The miss that declares the peer
    /// silent ends with the silence as its reason.
    #[track_caller]
    pub(crate) fn body_idle(
        mut self,
        idle: Duration,
        source: IdleSource,
        since: Instant,
    ) -> Interrupted {
        let _entered = self.span.clone().entered();
        let now = Instant::now();
        let silenced = match self.in_flight.end() {
            Some(p) => p.on_body_idle(now, since, source == IdleSource::Request),
            None => None,
        };
        let (peer, elapsed) = (self.peer().label(), now - self.ticket.started);
        tracing::debug!(peer = &**peer, ?idle, ?elapsed, source = %source, "body idle");
        let here = Location::caller();
        let err = match silenced {
            Some(fired) => Interrupted::new(fired.reason, peer, elapsed, fired.fired_at, here),
            None => Interrupted::new(Reason::BodyIdle { idle, source }, peer, elapsed, here, here),
        };
        fire_token(self.token.as_ref(), err)
    }

    /// The exchange ran out the `total` deadline its caller gave it, counted from the
    /// call's start, its last frame at `since`: the caller's deadline, a miss only if the
    /// body waited since that frame at least the peer's own idle deadline.
    #[track_caller]
    pub(crate) fn body_expired(mut self, total: Duration, since: Instant) -> Interrupted {
        let _entered = self.span.clone().entered();
        self.ticket.deadline = total;
        self.ticket.source = DeadlineSource::Caller;
        self.expired(Some(since))
    }
}
