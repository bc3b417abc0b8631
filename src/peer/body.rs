//! What a peer learns from response bodies (the `http` feature): a body's end counted as
//! its call's answer, its frames' gaps for the idle deadline, and a body's idle deadline run
//! out as a miss.

use std::time::Duration;

use tokio::time::Instant;

use super::Peer;
use crate::body::idle::{IdleRule, IdleSource};
use crate::classify::Outcome;
use crate::interrupt::Fired;

impl Peer {
    /// A call whose head was answered with `outcome` after `latency` ended as answered
    /// (its body ended, failed, or was dropped by its reader): counted now.
    pub(crate) fn on_body_answered(&self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Failure => self.metrics.failed(),
            _ => self.metrics.answered(latency),
        }
        self.lock().body_answered(outcome);
    }

    /// The idle deadline of a body from this peer under `rule`, and why; `None` when off.
    pub(crate) fn idle_deadline(&self, rule: IdleRule) -> Option<(Duration, IdleSource)> {
        self.gaps.idle_deadline(rule, self.deadline().0)
    }

    /// The idle deadline the peer's own rule ([`IdleRule::Learned`]) gives a body now:
    /// what a caller's own body deadline is weighed against.
    pub(super) fn own_idle(&self) -> Duration {
        self.idle_deadline(IdleRule::Learned)
            .map_or(Duration::MAX, |(idle, _)| idle)
    }

    /// A body frame arrived at `now`, `gap` after the previous one (or after the head).
    /// With `heartbeat`, it counts as an answer for the silence detector.
    pub(crate) fn on_frame(&self, now: Instant, gap: Duration, heartbeat: bool) {
        (self.gaps).record(|| self.lock().policy.clone(), now, gap);
        if heartbeat {
            let mut locked = self.lock();
            let fx = locked.heartbeat(now);
            self.apply(&mut locked, now, fx);
        }
    }

    /// A body sent nothing since `since` for its idle deadline: a miss like a call's
    /// deadline, which may declare the peer silent. A deadline its caller set (`by_caller`)
    /// is weighed as a head's is: a miss only if it is at least the peer's own. Returns
    /// the silence interrupt if this miss declared it.
    pub(crate) fn on_body_idle(
        &self,
        now: Instant,
        since: Instant,
        by_caller: bool,
    ) -> Option<Fired> {
        let allowed = by_caller.then(|| self.own_idle());
        let mut locked = self.lock();
        let fx = locked.on_body_idle(now, since, allowed);
        let silenced = self.apply(&mut locked, now, fx);
        self.count_miss(&mut locked, silenced.as_ref());
        silenced
    }
}
