//! How a call's outcome is recorded on its peer: an answer (a sample, a heartbeat, the
//! pending misses committed), a deadline run out (a censored sample, a miss, perhaps
//! silence declared), a failure, a stalled body, or an abandon.
//!
//! Each is a function of the peer's locked state ([`Locked`]) that returns the [`Effects`]
//! to apply: `Peer::on_outcome` and its siblings (`src/peer/mod.rs`) take the lock, call
//! one of these, and apply what it returns before they let the lock go. Nothing here reads
//! a clock, touches shared state or calls back into the peer.

use std::time::Duration;

use tokio::time::Instant;

use super::class_lanes::{ClassIx, Sample};
use super::health::{PeerState, ProbeEnd, Transition};
use super::lane::Lane;
use super::locked::{Effects, Locked, PENDING_MISSES};
use super::straggler::holdable;
use super::ticket::Ticket;
use crate::classify::Outcome;
use crate::explain::{DeadlineExplanation, DeadlineSource};

impl Locked {
    /// The peer gave `answers` answers, the last at `now`, with these latency samples
    /// (and their classes): a heartbeat; the pending misses are committed, and the
    /// samples recorded.
    pub(super) fn answered(
        &mut self,
        now: Instant,
        answers: u64,
        samples: impl Iterator<Item = Sample>,
    ) -> Effects {
        let mut fx = Effects::default();
        self.answered_into(now, answers, samples, &mut fx);
        fx
    }

    fn answered_into(
        &mut self,
        now: Instant,
        answers: u64,
        samples: impl Iterator<Item = impl Into<Sample>>,
        fx: &mut Effects,
    ) {
        self.completed += answers;
        self.health.end_quiet(now, &self.policy);
        if self.failed_at.is_none_or(|failed| now >= failed) {
            self.consecutive_failures = 0;
            // A balanced endpoint held out for the failures waits for this.
            fx.failing = Some(0);
        }
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            for &(class, censored) in &pending {
                if !self.censored(now, class, censored, fx) {
                    continue;
                }
                // Like the tail's, these say the deadline may be behind: recompute at once.
                let rules = (&self.policy, self.overridden);
                self.classes.recompute(now, class, rules, &mut fx.classes);
            }
            self.publish(now, fx);
        }
        self.record(now, samples, fx);
        fx.transition = self.health.on_response(now, &self.policy);
    }

    /// Records `outcome` of the call of `ticket` (`probe`: its peer's probe), answered at
    /// `now` and not deferred in a stripe; counted in the outcome counters if `count` (a
    /// head whose body is still to come is counted at its end). `published` is the
    /// peer's deadline now. An answer is a heartbeat (and commits the pending misses); a
    /// [`Outcome::Sample`] also records its latency. A probe answered slower than the
    /// learned deadline re-seeds the window, without its own latency: the peer came back
    /// slower (and its old history would cut every call), or the probe waited out a
    /// partition. Either way the peer answered within that latency: until two answers give
    /// an estimate, its calls get a deadline it fits in ([`Lane::seed`]). A failure
    /// records nothing but its count; a failed probe frees the probe slot. An answer past a deadline of the peer's own may end a stall (see
    /// `Health::on_late_answer`); one that only the learned floor on silence held is no
    /// sample either: it waited out the stall, which the floor, not the deadline, covers.
    pub(super) fn answer(
        &mut self,
        now: Instant,
        ticket: &Ticket,
        probe: bool,
        outcome: Outcome,
        count: bool,
        published: Duration,
    ) -> Effects {
        let latency = now.saturating_duration_since(ticket.started);
        let mut fx = Effects::default();
        if outcome == Outcome::Failure {
            self.failures += u64::from(count);
            self.consecutive_failures += 1;
            self.failed_at = Some(now);
            fx.failing = Some(self.consecutive_failures);
            if probe {
                fx.transition = (self.health).on_probe_end(now, ProbeEnd::Failed, &self.policy);
            }
            return fx;
        }
        let policy = &self.policy;
        self.health.end_quiet(now, policy);
        let (started, deadline) = (ticket.started, ticket.deadline);
        let stalled = holdable(ticket, probe)
            && if latency > deadline {
                (self.health).on_late_answer(now, started, deadline, policy)
            } else {
                (self.health).overlapped_stall(now, started, deadline)
            };
        let slow_probe = probe && latency > published;
        let reseed = slow_probe && self.lane.source != DeadlineSource::ColdStart;
        if reseed {
            // Such a probe's own latency is not the peer's: it may have waited out the rest
            // of a partition in a buffer (the peer answered as it came back), so the history
            // starts again from the answers that follow.
            self.lane = Lane::new(&self.policy, now);
            self.pending.clear();
        }
        if slow_probe {
            // But the peer answered within it: until its next answers say how fast it is,
            // its calls get a deadline that latency fits in (a probe waits at most its own
            // deadline, which bounds it), not `cold_start` below it, which would cut every
            // call of a peer that came back slower than `cold_start`.
            self.lane.seed(latency, &self.policy);
        }
        let sample = outcome == Outcome::Sample && !reseed && !stalled;
        if sample && latency > deadline {
            // Waiting past a deadline got an answer: a censored sample of this history may
            // raise its deadline past `cold_start` (`Lane::censored_counts`).
            self.lane.note_late(now);
            (self.classes.lane_of_mut(&mut self.lane, ticket.class)).note_late(now);
        }
        let behind = sample && latency > deadline && self.health.slowed();
        let sample = sample.then_some((latency, ticket.class));
        self.answered_into(now, u64::from(count), sample.into_iter(), &mut fx);
        if slow_probe || behind {
            // A slow probe's seed is published once the peer is open again, so that it is
            // also the deadline its probes start from if it goes silent again
            // (`Health::note_deadline`). A slowdown's answer, past its deadline, says the
            // deadline is behind, as a censored sample does: recompute at once (a peer its
            // floor holds learns so).
            self.publish(now, &mut fx);
        }
        if behind {
            let rules = (&self.policy, self.overridden);
            self.classes
                .recompute(now, ticket.class, rules, &mut fx.classes);
        }
        fx
    }

    /// The call of `ticket` (`probe`: its peer's probe) ran out its deadline at `now`.
    /// Records a censored sample at the deadline, counts a miss, and may declare the peer
    /// silent. Returns why the deadline had its value, and the effects. `body` is set for
    /// a call whose head was answered: its body's total deadline ran out, its last frame
    /// then, and the peer's own rule allows a body the idle deadline it carries.
    pub(super) fn on_deadline(
        &mut self,
        now: Instant,
        ticket: &Ticket,
        probe: bool,
        body: Option<(Instant, Duration)>,
    ) -> (DeadlineExplanation, Effects) {
        let Ticket {
            deadline,
            source,
            class,
            started,
            ..
        } = *ticket;
        let mut fx = Effects::default();
        self.deadline_exceeded += 1;
        // Explain with the numbers the call's deadline came from, before this miss's own
        // sample moves them.
        let explanation = (self.classes).explain(&self.lane, class, started, (deadline, source));
        if source == DeadlineSource::Caller {
            // A head waited its deadline since the call started, and the peer's answers
            // normally take their normal latency; a body waited since its last frame, and
            // the peer's own rule allows its learned idle deadline.
            let (since, waited, allowed) = match body {
                Some((since, allowed)) => (since, now.saturating_duration_since(since), allowed),
                None => {
                    let normal = (self.classes).normal_latency(&self.lane, class, &self.policy);
                    (started, deadline, normal)
                }
            };
            self.caller_ran_out(now, since, probe, waited, allowed, &mut fx);
            return (explanation, fx);
        }
        if !probe && source != DeadlineSource::SilentPeer {
            // A censored sample: the peer's latency was at least the deadline. (A probe or
            // a cut deadline of a peer known to be silent says nothing about its latency.)
            // It waits for the peer's next answer, then is recorded and the deadline
            // recomputed at once, since it may be behind: if silence is declared first, it
            // was not slowness. That holds for the tail too (the peer answered since the
            // call started): the last calls sent before a partition run out while the
            // answers sent before it still arrive. (With detection off nothing tells the
            // two apart: it is recorded at once.)
            if self.policy.silent_after_misses > 0 {
                if self.pending.len() < PENDING_MISSES {
                    self.pending.push((class, deadline));
                }
            } else if self.censored(now, class, deadline, &mut fx) {
                self.publish(now, &mut fx);
                let rules = (&self.policy, self.overridden);
                self.classes.recompute(now, class, rules, &mut fx.classes);
            }
        }
        self.miss(now, started, probe, &mut fx);
        (explanation, fx)
    }

    /// A body sent nothing since `since` for its idle deadline, run out at `now`: a miss
    /// like a call's deadline, which may declare the peer silent. A deadline its caller set
    /// comes with what the peer's own rule `allowed`, and is weighed as a head's is.
    #[cfg(feature = "http")]
    pub(super) fn on_body_idle(
        &mut self,
        now: Instant,
        since: Instant,
        allowed: Option<Duration>,
    ) -> Effects {
        let mut fx = Effects::default();
        self.deadline_exceeded += 1;
        match allowed {
            Some(allowed) => {
                let waited = now.saturating_duration_since(since);
                self.caller_ran_out(now, since, false, waited, allowed, &mut fx);
            }
            None => self.miss(now, since, false, &mut fx),
        }
        fx
    }

    /// A wait its caller set ran out at `now`, `waited` after `since` (the call's start,
    /// or its body's last frame), where the peer's own rule allows `allowed`. The caller's
    /// own, shorter, wait says nothing about the peer. A probe cut by it frees the probe
    /// slot. Any other wait is a miss if the peer said nothing since `since` and the
    /// caller waited at least what the peer's own rule allows.
    fn caller_ran_out(
        &mut self,
        now: Instant,
        since: Instant,
        probe: bool,
        waited: Duration,
        allowed: Duration,
        fx: &mut Effects,
    ) {
        let transition = if probe {
            (self.health).on_probe_end(now, ProbeEnd::CallerCut, &self.policy)
        } else if self.health.is_miss(since) && waited >= allowed {
            self.health.on_deadline(now, since, false, &self.policy)
        } else {
            None
        };
        self.judge(transition, fx);
    }

    /// Counts a miss (a wait that started at `started` ran out with no answer).
    fn miss(&mut self, now: Instant, started: Instant, probe: bool, fx: &mut Effects) {
        let transition = self.health.on_deadline(now, started, probe, &self.policy);
        self.judge(transition, fx);
    }

    /// A transition to announce; one that declares the peer silent drops the pending
    /// misses back and asks for every call in flight to be interrupted.
    fn judge(&mut self, transition: Option<Transition>, fx: &mut Effects) {
        if transition.is_some_and(|t| t.to == PeerState::Silent && t.from != PeerState::Probing) {
            self.pending.clear();
            fx.silenced = true;
        }
        fx.transition = transition;
    }

    /// A call ended at `now` without an answer or a deadline (dropped or interrupted);
    /// the peer's probe frees the probe slot.
    pub(super) fn abandoned(&mut self, now: Instant, probe: bool) -> Effects {
        Effects::transition(self.health.on_abandon(probe, now))
    }

    /// Something from the peer arrived at `now` (a body's frame): a heartbeat.
    #[cfg(feature = "http")]
    pub(super) fn heartbeat(&mut self, now: Instant) -> Effects {
        Effects::transition(self.health.on_response(now, &self.policy))
    }

    /// A call whose head was answered ended as answered (its body ended, failed, or was
    /// dropped by its reader): counted now, as a failure if its head was one.
    #[cfg(feature = "http")]
    pub(super) fn body_answered(&mut self, outcome: Outcome) {
        if outcome == Outcome::Failure {
            self.failures += 1;
        } else {
            self.completed += 1;
        }
    }

    /// A call of `class` ran out its `deadline`: a censored sample at it if
    /// [`Lane::censored_counts`] says it may raise the deadline (recorded, and `true`),
    /// else only noted among the histories' outcomes.
    fn censored(
        &mut self,
        now: Instant,
        class: Option<ClassIx>,
        deadline: Duration,
        fx: &mut Effects,
    ) -> bool {
        let counts =
            (self.classes.lane_of(&self.lane, class)).censored_counts(now, deadline, &self.policy);
        if counts {
            self.record(now, std::iter::once((deadline, class)), fx);
        }
        // Recorded, it was noted as an answer: it ran out.
        let note = |lane: &mut Lane| match counts {
            true => lane.mark_ran_out(),
            false => lane.push_outcomes(1, true),
        };
        note(&mut self.lane);
        if let Some(lane) = self.classes.class_lane_mut(class) {
            note(lane);
        }
        counts
    }

    /// Records `samples` (latencies, and their calls' classes) answered by `now`, and
    /// recomputes the deadlines that are due.
    fn record(
        &mut self,
        now: Instant,
        samples: impl Iterator<Item = impl Into<Sample>>,
        fx: &mut Effects,
    ) {
        let rules = (&self.policy, self.overridden);
        if (self.classes).record(&mut self.lane, now, samples, rules, &mut fx.classes) {
            self.publish(now, fx);
        }
    }
}

#[cfg(test)]
mod tests;
