use std::sync::Arc;
use std::time::Duration;

use tokio::time::{advance, Instant};

use crate::class::LatencyHints;
use crate::classify::Outcome;
use crate::explain::DeadlineSource;
use crate::peer::health::{PeerState, Transition};
use crate::peer::locked::{Effects, Locked};
use crate::peer::table::tests::table;
use crate::peer::table::{Admission, PeerTable};
use crate::peer::{InFlight, Peer, PeerRef, Ticket};
use crate::policy::TimeoutPolicy;

/// A table and its peer 1, as a call holds it.
fn one_peer() -> (PeerTable<u32>, PeerRef) {
    let t = table(4);
    let peer = PeerRef::Shared(t.peer(&1, Instant::now()).unwrap());
    (t, peer)
}

/// Admits a call to `peer` starting at `start`.
fn admit(peer: &PeerRef, start: Instant) -> (InFlight, Ticket) {
    match Peer::admit(peer, start, 0, LatencyHints::new()) {
        Some(Admission::Admitted(in_flight, ticket)) => (in_flight, ticket),
        _ => panic!("refused"),
    }
}

/// Admits a call to `peer` now and answers it after `took`.
async fn answered(peer: &PeerRef, took: Duration) {
    let (mut in_flight, ticket) = admit(peer, Instant::now());
    advance(took).await;
    let probe = in_flight.is_probe();
    in_flight.end();
    peer.on_outcome(Instant::now(), &ticket, probe, Outcome::Sample);
}

#[tokio::test(start_paused = true)]
async fn an_answer_deferred_in_a_stripe_is_seen_before_a_miss_is_judged() {
    let (_table, peer) = one_peer();
    // As if another core had held the peer's lock: this one defers its answers. Its
    // first goes to the window at once; the next, within the millisecond, is deferred.
    peer.stripes.mine().contended(peer.nanos(Instant::now()));
    answered(&peer, Duration::from_micros(10)).await;
    let (mut waiting, ticket) = admit(&peer, Instant::now());
    answered(&peer, Duration::from_micros(100)).await;
    // The waiting call runs out: the peer answered since it started (the deferred answer),
    // so it is slowness, not a miss.
    advance(ticket.deadline).await;
    waiting.end();
    let (_, silenced) = peer.on_deadline(Instant::now(), &ticket, false, None);
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

// The bookkeeping itself, as plain functions of the locked state: no runtime, no peer.

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A peer's locked state under `policy`, first seen at `t0`.
fn locked(policy: TimeoutPolicy, t0: Instant) -> Locked {
    Locked::new(Arc::new(policy), false, t0, 7)
}

/// A call started at `started` with a learned deadline of 100 ms.
fn ticket(started: Instant) -> Ticket {
    Ticket {
        deadline: ms(100),
        source: DeadlineSource::Quantile,
        generation: 0,
        class: None,
        started,
        started_ns: 0,
    }
}

fn to(from: PeerState, to: PeerState) -> impl Fn(&Effects) -> bool {
    move |fx| {
        fx.transition
            .is_some_and(|t: Transition| (t.from, t.to) == (from, to))
    }
}

#[test]
fn a_deadline_run_out_waits_unpublished_until_the_next_answer_publishes_it() {
    let t0 = Instant::now();
    let mut state = locked(TimeoutPolicy::default(), t0);
    let (_, fx) = state.on_deadline(t0 + ms(100), &ticket(t0), false, None);
    assert!(fx.publish.is_none() && !fx.silenced, "{fx:?}");
    assert!(to(PeerState::Healthy, PeerState::Suspect)(&fx), "{fx:?}");
    assert_eq!((state.pending.len(), state.deadline_exceeded), (1, 1));

    let fx = state.answered(t0 + ms(150), 1, std::iter::empty());
    assert!(state.pending.is_empty());
    assert!(
        fx.publish.is_some(),
        "the censored sample moves the deadline"
    );
    assert_eq!(fx.failing, Some(0));
    assert!(to(PeerState::Suspect, PeerState::Healthy)(&fx), "{fx:?}");
}

#[test]
fn the_miss_that_declares_silence_asks_to_interrupt_and_drops_the_pending_samples() {
    let t0 = Instant::now();
    let mut state = locked(TimeoutPolicy::default().silent_after_misses(2), t0);
    let (_, first) = state.on_deadline(t0 + ms(100), &ticket(t0), false, None);
    assert!(!first.silenced);
    let (_, fx) = state.on_deadline(t0 + ms(101), &ticket(t0 + ms(1)), false, None);
    assert!(fx.silenced);
    assert!(to(PeerState::Suspect, PeerState::Silent)(&fx), "{fx:?}");
    assert!(state.pending.is_empty(), "silence says nothing of latency");
}

#[test]
fn a_callers_own_shorter_deadline_asks_for_nothing() {
    let t0 = Instant::now();
    let mut state = locked(TimeoutPolicy::default(), t0);
    let caller = Ticket {
        deadline: ms(1),
        source: DeadlineSource::Caller,
        ..ticket(t0)
    };
    let (_, fx) = state.on_deadline(t0 + ms(1), &caller, false, None);
    assert_eq!(fx, Effects::default());
    assert_eq!((state.pending.len(), state.deadline_exceeded), (0, 1));
}

#[test]
fn a_failure_publishes_the_failures_in_a_row_and_an_answer_clears_them() {
    let t0 = Instant::now();
    let mut state = locked(TimeoutPolicy::default(), t0);
    for n in 1..=2 {
        let fx = state.answer(
            t0 + ms(n),
            &ticket(t0),
            false,
            Outcome::Failure,
            true,
            ms(100),
        );
        assert_eq!(
            (fx.failing, fx.transition, fx.publish),
            (Some(n), None, None)
        );
    }
    assert_eq!(state.failures, 2);
    // An answer deferred from before the last failure does not end the run.
    let fx = state.answered(t0 + ms(1), 1, std::iter::empty());
    assert_eq!((fx.failing, state.consecutive_failures), (None, 2));
    let fx = state.answered(t0 + ms(3), 1, std::iter::empty());
    assert_eq!((fx.failing, state.consecutive_failures), (Some(0), 0));
}

/// A busy class's answers are sampled as far as the class is busy, a quiet class's never:
/// its few answers are all its deadline has.
#[tokio::test(start_paused = true)]
async fn a_busy_class_is_sampled_and_a_quiet_one_keeps_every_answer() {
    use crate::class::ClassOf;
    use crate::peer::table::tests::table_under;
    // The median needs 64 / 0.5 = 128 samples; sampling starts at twice that.
    let policy = TimeoutPolicy::default().quantile(0.5).recompute_every(64);
    let t = table_under(policy, 4).with_max_classes(2);
    let peer = PeerRef::Shared(t.peer(&1, Instant::now()).unwrap());
    // Slots in the order of the classes' first calls: the quiet class's comes first.
    let (quiet, busy) = (0, 1);
    let (mut drawn, mut taken) = ([(0u64, 0u64); 2], 0);
    for i in 0..24_000u64 {
        // One call in 100 is of the quiet class.
        let name = if i % 100 == 0 { "quiet" } else { "busy" };
        let hints = LatencyHints::new().class(ClassOf::Named(name));
        let Some(Admission::Admitted(mut in_flight, ticket)) =
            Peer::admit(&peer, Instant::now(), 0, hints)
        else {
            panic!("refused");
        };
        advance(Duration::from_micros(100 + i % 100)).await;
        in_flight.end();
        peer.on_outcome(Instant::now(), &ticket, false, Outcome::Sample);
        if i < 20_000 {
            continue;
        }
        if i == 20_000 {
            let every = |c| peer.classes.sample_every(c);
            assert!(every(busy) > 1, "the busy class is sampled");
            assert_eq!(every(quiet), 1, "the quiet class is not");
        }
        // From then on, what the stripe holds is taken before it reaches the histories:
        // each sample and the answers it stands for.
        for batch in peer.stripes.take_all(peer.nanos(Instant::now())) {
            taken += batch.count();
            for sample in batch.answers() {
                let c = usize::from(sample.class.expect("every call has a class"));
                drawn[c] = (drawn[c].0 + 1, drawn[c].1 + sample.answers);
            }
        }
    }
    let (samples, stood_for) = drawn[usize::from(quiet)];
    assert_eq!(
        samples, stood_for,
        "a quiet class's samples each stand for one answer"
    );
    assert!(
        samples >= 30,
        "{samples} of the quiet class's last 40 answers"
    );
    let (samples, stood_for) = drawn[usize::from(busy)];
    assert!(
        stood_for >= 2 * samples,
        "{samples} samples for {stood_for} answers"
    );
    assert!(
        stood_for > 3_000,
        "{stood_for} of the busy class's last 3,960 answers"
    );
    let counted = peer.view(Instant::now()).completed;
    assert_eq!(
        counted + taken,
        24_000,
        "every answer counted, or taken here"
    );
}
