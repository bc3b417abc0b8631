//! How a call's outcome is recorded on its peer: an answer (a sample, a heartbeat, the
//! pending misses committed), a deadline run out (a censored sample, a miss, perhaps
//! silence declared), a failure, or an abandon; and the call leaves the in-flight count.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::MutexGuard;
use std::time::Duration;

use tokio::time::Instant;

use super::class_lanes::ClassIx;
use super::health::{PeerState, ProbeEnd, Transition};
use super::lane::Lane;
use super::per_core::Batch;
use super::{Locked, Peer, Ticket, PENDING_MISSES};
use crate::classify::Outcome;
use crate::error::Reason;
use crate::explain::{DeadlineExplanation, DeadlineSource};
use crate::interrupt::{Fired, Origin};

impl Peer {
    /// The call of `ticket` that started at `started` ended with `outcome` at `now`:
    /// recorded as [`on_head`](Self::on_head) does, and counted (the call leaves the
    /// in-flight count when its `InFlight` is dropped).
    pub(crate) fn on_outcome(
        &self,
        now: Instant,
        started: Instant,
        ticket: &Ticket,
        outcome: Outcome,
    ) {
        self.record_answer(now, started, ticket, outcome, true);
    }

    /// Records the head of a call that started at `started`, answered with `outcome`; the
    /// call stays in flight (its body is still to come) until its `InFlight` is dropped, and is
    /// counted once it ends: as answered ([`on_body_answered`](Self::on_body_answered))
    /// unless its body is cut (a timeout, an interrupt), so each call counts one outcome.
    #[cfg(feature = "http")]
    pub(crate) fn on_head(
        &self,
        now: Instant,
        started: Instant,
        ticket: &Ticket,
        outcome: Outcome,
    ) {
        self.record_answer(now, started, ticket, outcome, false);
    }

    /// A call whose head was answered with `outcome` after `latency` ended as answered
    /// (its body ended, failed, or was dropped by its reader): counted now.
    #[cfg(feature = "http")]
    pub(crate) fn on_body_answered(&self, outcome: Outcome, latency: Duration) {
        let mut locked = self.lock();
        if outcome == Outcome::Failure {
            self.metrics.failed();
            locked.failures += 1;
        } else {
            self.metrics.answered(latency);
            locked.completed += 1;
        }
    }

    /// Records `outcome` of a call that started at `started`, counted in the outcome
    /// counters if `count` (a head whose body is still to come is counted at its end). An
    /// answer is a heartbeat (and commits the pending misses); a [`Outcome::Sample`]
    /// also records its latency. A healthy peer's counted samples are held in the
    /// caller's stripe and handed over in batches ([`per_core`](super::per_core)). A probe
    /// answered slower than the learned deadline re-seeds the window, without its own
    /// latency: the peer came back slower (and its old history would cut every call), or the
    /// probe waited out a partition. A failure records nothing but its count; a failed probe
    /// frees the probe slot.
    fn record_answer(
        &self,
        now: Instant,
        started: Instant,
        ticket: &Ticket,
        outcome: Outcome,
        count: bool,
    ) {
        let (probe, class) = (ticket.probe, ticket.class);
        if count && outcome == Outcome::Sample && !probe && self.state() == PeerState::Healthy {
            let now_ns = self.nanos(now);
            let latency = Duration::from_nanos(now_ns.saturating_sub(ticket.started));
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
                    let sample = Some((latency, class));
                    return self.answered(&mut locked, now, 1, sample.into_iter());
                }
                // Another core is recording: defer this core's answers for a while.
                stripe.contended(now_ns);
            }
            if let Some(batch) = stripe.defer(latency, class, now_ns) {
                self.hand_over(&mut self.lock_alone(), &batch);
            }
            return;
        }
        let latency = now.saturating_duration_since(started);
        let mut locked = self.lock();
        if outcome == Outcome::Failure {
            if count {
                self.metrics.failed();
                locked.failures += 1;
            }
            locked.consecutive_failures += 1;
            locked.failed_at = Some(now);
            self.published.set_failing(locked.consecutive_failures);
            if probe {
                let policy = locked.policy.clone();
                let transition = locked.health.on_probe_end(now, ProbeEnd::Failed, &policy);
                self.transition(transition);
            }
            return;
        }
        if count {
            self.metrics.answered(latency);
        }
        let learned = locked.lane.source != DeadlineSource::ColdStart;
        let reseed = probe && learned && latency > self.deadline().0;
        if reseed {
            locked.lane = Lane::new(&locked.policy, now);
            locked.pending.clear();
            self.publish(&mut locked, now);
        }
        // Such a probe's own latency is not the peer's: it may have waited out the rest of
        // a partition in a buffer (the peer answered as it came back), so the history starts
        // again from the answers that follow.
        let sample = (outcome == Outcome::Sample && !reseed).then_some((latency, class));
        self.answered(&mut locked, now, u64::from(count), sample.into_iter());
    }

    /// Records the answers `batch` deferred, as of its latest.
    pub(super) fn hand_over(&self, locked: &mut MutexGuard<'_, Locked>, batch: &Batch) {
        let answers = batch.answers();
        self.answered(
            locked,
            self.instant(batch.latest),
            answers.len() as u64,
            answers,
        );
    }

    /// The peer gave `answers` answers, the last at `now`, with these latency samples
    /// (and their classes): a heartbeat; the pending misses are committed, and the
    /// samples recorded.
    fn answered(
        &self,
        locked: &mut MutexGuard<'_, Locked>,
        now: Instant,
        answers: u64,
        samples: impl Iterator<Item = (Duration, Option<ClassIx>)>,
    ) {
        locked.completed += answers;
        if locked.failed_at.is_none_or(|failed| now >= failed) {
            locked.consecutive_failures = 0;
            if self.published.set_failing(0) {
                // A balanced endpoint held out for the failures waits for this.
                self.changes.wake();
            }
        }
        if !locked.pending.is_empty() {
            let pending = std::mem::take(&mut locked.pending);
            for &(class, censored) in &pending {
                self.record(locked, now, std::iter::once((censored, class)));
                // Like the tail's, these say the deadline may be behind: recompute at once.
                self.publish_class(locked, now, class);
            }
            self.publish(locked, now);
        }
        self.record(locked, now, samples);
        let transition = locked.health.on_response(now);
        self.transition(transition);
    }

    /// A call of `ticket` that started at `started` ran out its deadline. Records a
    /// censored sample at the deadline, counts a miss, and may declare the peer silent,
    /// interrupting every other call in flight. Returns why the deadline had its value,
    /// and the silence interrupt if this miss declared it. `body_since` is set for a call
    /// whose head was answered: its body's total deadline ran out, its last frame then.
    pub(crate) fn on_deadline(
        &self,
        now: Instant,
        started: Instant,
        ticket: &Ticket,
        body_since: Option<Instant>,
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
        // Explain with the numbers the call's deadline came from, before this miss's own
        // sample moves them.
        let explanation = self.explain(&locked, started, ticket);
        let policy = locked.policy.clone();
        if source == DeadlineSource::Caller {
            // A head waited its deadline since the call started, and the peer's answers
            // normally take their normal latency; a body waited since its last frame, and
            // the peer's own rule allows its learned idle deadline.
            let (since, waited, allowed) = match body_since {
                #[cfg(feature = "http")]
                Some(since) => (since, now.saturating_duration_since(since), self.own_idle()),
                _ => {
                    let normal = self.lane_of(&locked, class).normal_latency(&policy);
                    (started, deadline, normal)
                }
            };
            let silenced = self.caller_ran_out(&mut locked, now, since, probe, waited, allowed);
            return (explanation, silenced);
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
            if policy.silent_after_misses > 0 {
                if locked.pending.len() < PENDING_MISSES {
                    locked.pending.push((class, deadline));
                }
            } else {
                self.record(&mut locked, now, std::iter::once((deadline, class)));
                self.publish(&mut locked, now);
                self.publish_class(&mut locked, now, class);
            }
        }
        (explanation, self.miss(locked, now, started, probe))
    }

    /// A wait its caller set ran out at `now`, `waited` after `since` (the call's start,
    /// or its body's last frame), where the peer's own rule allows `allowed`. The caller's
    /// own, shorter, wait says nothing about the peer. A probe cut by it frees the probe
    /// slot. Any other wait is a miss if the peer said nothing since `since` and the
    /// caller waited at least what the peer's own rule allows. Returns the silence
    /// interrupt if this miss declared it.
    pub(super) fn caller_ran_out(
        &self,
        locked: &mut MutexGuard<'_, Locked>,
        now: Instant,
        since: Instant,
        probe: bool,
        waited: Duration,
        allowed: Duration,
    ) -> Option<Fired> {
        let policy = locked.policy.clone();
        let transition = if probe {
            locked
                .health
                .on_probe_end(now, ProbeEnd::CallerCut, &policy)
        } else if locked.health.is_miss(since) && waited >= allowed {
            locked.health.on_deadline(now, since, false, &policy)
        } else {
            None
        };
        self.on_transition(locked, now, transition)
    }

    /// Counts a miss (a wait that started at `started` ran out with no answer). Returns the silence interrupt if this miss declared the peer silent, after
    /// firing it into every other call in flight.
    pub(super) fn miss(
        &self,
        mut locked: MutexGuard<'_, Locked>,
        now: Instant,
        started: Instant,
        probe: bool,
    ) -> Option<Fired> {
        let policy = locked.policy.clone();
        let transition = locked.health.on_deadline(now, started, probe, &policy);
        self.on_transition(&mut locked, now, transition)
    }

    /// Publishes a transition; one that declares the peer silent drops the pending misses
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
    }

    /// Records `samples` (latencies, and their calls' classes) answered by `now`, and
    /// republishes the deadlines when due.
    fn record(
        &self,
        locked: &mut MutexGuard<'_, Locked>,
        now: Instant,
        samples: impl Iterator<Item = (Duration, Option<ClassIx>)>,
    ) {
        if self.record_lanes(locked, now, samples) {
            self.publish(locked, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::{advance, Instant};

    use crate::class::LatencyHints;
    use crate::classify::Outcome;
    use crate::peer::health::PeerState;
    use crate::peer::table::tests::table;
    use crate::peer::table::PeerTable;
    use crate::peer::{Peer, PeerRef};
    use crate::policy::TimeoutPolicy;

    /// A table and its peer 1, as a call holds it.
    fn one_peer() -> (PeerTable<u32>, PeerRef) {
        let t = table(4);
        let peer = PeerRef::Shared(t.peer(&1, Instant::now()).unwrap());
        (t, peer)
    }

    /// Admits a call to `peer` now and answers it after `took`.
    async fn answered(peer: &PeerRef, took: Duration) {
        let start = Instant::now();
        let (mut in_flight, ticket) = Peer::admit(peer, start, 0, LatencyHints::new())
            .ok()
            .unwrap();
        advance(took).await;
        in_flight.end();
        peer.on_outcome(Instant::now(), start, &ticket, Outcome::Sample);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_deferred_in_a_stripe_is_seen_before_a_miss_is_judged() {
        let (_table, peer) = one_peer();
        // As if another core had held the peer's lock: this one defers its answers. Its
        // first goes to the window at once; the next, within the millisecond, is deferred.
        peer.stripes.mine().contended(peer.nanos(Instant::now()));
        answered(&peer, Duration::from_micros(10)).await;
        let start = Instant::now();
        let (mut waiting, ticket) = Peer::admit(&peer, start, 0, LatencyHints::new())
            .ok()
            .unwrap();
        answered(&peer, Duration::from_micros(100)).await;
        // The waiting call runs out: the peer answered since it started (the deferred answer),
        // so it is slowness, not a miss.
        advance(ticket.deadline).await;
        waiting.end();
        let (_, silenced) = peer.on_deadline(Instant::now(), start, &ticket, None);
        assert!(silenced.is_none());
        assert_eq!(peer.state(), PeerState::Healthy);
        let view = peer.view(Instant::now());
        assert_eq!((view.completed, view.deadline_exceeded), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn every_answer_of_a_contended_burst_reaches_the_window_and_calls_leave_the_count() {
        let (_table, peer) = one_peer();
        peer.stripes.mine().contended(peer.nanos(Instant::now()));
        for _ in 0..1_004 {
            answered(&peer, Duration::ZERO).await;
        }
        assert_eq!(peer.in_flight(), 0);
        let view = peer.view(Instant::now());
        assert_eq!((view.completed, view.samples), (1_004, 1_004));
    }

    #[tokio::test(start_paused = true)]
    async fn a_learned_peer_defers_a_burst_unless_each_answer_moves_its_deadline() {
        let (_table, peer) = one_peer();
        for _ in 0..100 {
            answered(&peer, Duration::from_millis(1)).await;
        }
        assert!(peer.deadline().1.is_learned(), "{:?}", peer.deadline());
        for _ in 0..10 {
            answered(&peer, Duration::ZERO).await;
        }
        let deferred: usize = peer.stripes.take_all(0).map(|b| b.answers().len()).sum();
        assert_eq!(
            deferred, 9,
            "the burst's first answer goes at once, the rest wait"
        );
        // Recomputed on every answer, the deadline may move with each: none waits.
        let policy = TimeoutPolicy::default().recompute_every(1);
        peer.set_policy(Arc::new(policy), false, Instant::now());
        for _ in 0..10 {
            answered(&peer, Duration::ZERO).await;
        }
        assert!(
            peer.stripes.take_all(0).next().is_none(),
            "nothing deferred"
        );
        assert_eq!(peer.view(Instant::now()).completed, 111);
    }

    #[tokio::test(start_paused = true)]
    async fn an_uncontended_answer_goes_to_the_window_at_once() {
        let (_table, peer) = one_peer();
        for _ in 0..3 {
            answered(&peer, Duration::ZERO).await;
        }
        assert!(
            peer.stripes.take_all(0).next().is_none(),
            "nothing deferred"
        );
        peer.stripes.mine().contended(peer.nanos(Instant::now()));
        answered(&peer, Duration::ZERO).await;
        answered(&peer, Duration::ZERO).await;
        assert!(peer.stripes.mine().defers(peer.nanos(Instant::now())));
        let deferred: usize = peer.stripes.take_all(0).map(|b| b.answers().len()).sum();
        assert_eq!(
            deferred, 1,
            "the first answer of a deferring stripe goes at once"
        );
        // Once the core no longer defers, its next answer takes the lock, and what it deferred.
        answered(&peer, Duration::ZERO).await;
        advance(Duration::from_millis(10)).await;
        answered(&peer, Duration::ZERO).await;
        assert!(
            peer.stripes.take_all(0).next().is_none(),
            "nothing deferred"
        );
        // Seven answers, less the one this test took out of the stripe.
        assert_eq!(peer.view(Instant::now()).completed, 6);
    }
}
