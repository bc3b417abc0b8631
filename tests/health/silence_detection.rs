//! Silent peers on tokio's paused clock (deterministic): detection, fan-out interrupts,
//! fail-fast, probe cadence, recovery, and that a healthy slow-tailed peer is never
//! declared silent.

use crate::support;

use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceExt};
use tower_adaptive_timeout::{DeadlineSource, Interrupted, PeerState, Reason, TimeoutPolicy};

use support::peers::{rig, Ended, Req, Rig, P};
use support::{interrupted, ms, Rng};

/// Whether the call ended because its peer was silent.
fn is_silent(r: &Result<P, BoxError>) -> bool {
    r.as_ref().is_err_and(|e| {
        matches!(
            e.downcast_ref::<Interrupted>().map(Interrupted::reason),
            Some(Reason::PeerSilent { .. })
        )
    })
}

/// Silences `peer` with five calls in flight started 1ms apart; returns their results,
/// the silence start and the peer's deadline.
async fn five_in_flight(rig: &Rig, peer: P) -> (Vec<Ended>, Instant, Duration) {
    rig.warm(peer, ms(10), 150).await;
    let (deadline, _) = rig.handle.deadline(&peer).unwrap();
    rig.peers.silence(peer, true);
    let silence = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..5 {
        rig.spawn(&mut set, peer);
        tokio::time::sleep(ms(1)).await;
    }
    (set.join_all().await, silence, deadline)
}

#[tokio::test(start_paused = true)]
async fn every_call_in_flight_to_a_silent_peer_ends_within_two_deadlines() {
    let rig = rig(TimeoutPolicy::default());
    let (results, silence, deadline) = five_in_flight(&rig, P::A).await;
    assert!(
        deadline < ms(40),
        "deadline followed the 10ms latency: {deadline:?}"
    );
    for (r, ended) in &results {
        interrupted(r);
        assert!(
            *ended - silence <= deadline * 2,
            "cut {:?} after silence",
            *ended - silence
        );
    }
    // The first miss only makes the peer suspect; the second declares it silent and ends
    // the other three at once.
    assert_eq!(results.iter().filter(|(r, _)| is_silent(r)).count(), 4);
    let first = results.iter().find(|(r, _)| !is_silent(r)).unwrap();
    assert!(interrupted(&first.0).deadline().is_some());
    let snap = rig.handle.peer(&P::A).unwrap();
    assert_eq!(snap.state, PeerState::Silent);
    assert_eq!(snap.in_flight, 0);
    // The declaring miss is counted as the silence its caller is told.
    assert_eq!(snap.silent_interrupts, 4);
    assert_eq!(snap.deadline_exceeded, 1);
}

#[tokio::test(start_paused = true)]
async fn with_one_miss_to_confirm_all_five_end_as_peer_silent() {
    let rig = rig(TimeoutPolicy::default().silent_after_misses(1));
    let (results, silence, deadline) = five_in_flight(&rig, P::A).await;
    for (r, ended) in &results {
        assert!(is_silent(r), "{r:?}");
        assert!(*ended - silence <= deadline * 2);
    }
    let err = interrupted(&results[0].0);
    let Reason::PeerSilent { since, outstanding } = err.reason() else {
        unreachable!()
    };
    assert!(
        *since >= deadline,
        "silent since at least a deadline: {since:?}"
    );
    assert_eq!(*outstanding, 5, "the five calls were outstanding");
    assert!(
        err.fired_at().file().ends_with("peer/silence.rs"),
        "{}",
        err.fired_at()
    );
    assert!(
        err.recognized_at().file().ends_with("future.rs"),
        "{}",
        err.recognized_at()
    );
}

#[tokio::test(start_paused = true)]
async fn new_calls_to_a_silent_peer_fail_fast_without_reaching_it() {
    let rig = rig(TimeoutPolicy::default());
    five_in_flight(&rig, P::A).await;
    let reached = rig.peers.arrivals(P::A).len();
    let start = Instant::now();
    let r = rig.call(P::A, ms(10)).await;
    assert!(is_silent(&r));
    assert_eq!(Instant::now(), start, "no time passed");
    assert_eq!(interrupted(&r).elapsed(), Duration::ZERO);
    assert_eq!(
        rig.peers.arrivals(P::A).len(),
        reached,
        "the peer was not called"
    );
    assert_eq!(rig.handle.peer(&P::A).unwrap().fail_fast, 1);
}

#[tokio::test(start_paused = true)]
async fn another_peer_is_unaffected() {
    let rig = rig(TimeoutPolicy::default());
    rig.warm(P::B, ms(10), 30).await;
    five_in_flight(&rig, P::A).await;
    assert_eq!(rig.call(P::B, ms(10)).await.unwrap(), P::B);
    assert_eq!(rig.state(P::B), PeerState::Healthy);
    assert_eq!(rig.handle.peer(&P::B).unwrap().silent_interrupts, 0);
}

#[tokio::test(start_paused = true)]
async fn probes_follow_the_backoff_and_a_good_probe_recovers_the_peer() {
    let policy = TimeoutPolicy::default()
        .probe_backoff(ms(200))
        .probe_backoff_max(ms(1000));
    let short = |deadline: Duration| deadline.saturating_sub(policy.margin) / 2;
    assert_eq!(policy.factor, 2.0);
    let rig = rig(policy.clone());
    five_in_flight(&rig, P::A).await;
    let declared = Instant::now();
    let before = rig.peers.arrivals(P::A).len();
    // Callers keep trying every 10ms for 3s while the peer stays silent.
    let mut set = JoinSet::new();
    for _ in 0..300 {
        rig.spawn(&mut set, P::A);
        tokio::time::sleep(ms(10)).await;
    }
    set.join_all().await;
    let probes: Vec<Duration> = rig.peers.arrivals(P::A)[before..]
        .iter()
        .map(|t| *t - declared)
        .collect();
    let (deadline, _) = rig.handle.deadline(&P::A).unwrap();
    // Waits of 200ms, 400ms, 800ms, then 1000ms (capped), each plus up to 25% jitter and
    // after the previous probe's deadline; one probe at a time. The first probe is a long
    // one (cold start, 1s); the next ones, for three times that, are short (the quantile
    // the deadline from before the silence came from: `(deadline - margin) / factor`).
    let mut expected_wait = ms(200);
    let mut last_end = Duration::ZERO;
    for (i, at) in probes.iter().enumerate() {
        let wait = at.saturating_sub(last_end);
        assert!(
            wait >= expected_wait && wait <= expected_wait * 5 / 4 + ms(10),
            "probe {i} waited {wait:?}, expected {expected_wait:?} + jitter: {probes:?}"
        );
        let probe_deadline = if i == 0 { ms(1000) } else { short(deadline) };
        last_end = *at + probe_deadline;
        expected_wait = (expected_wait * 2).min(ms(1000));
    }
    assert!(probes.len() >= 3, "{probes:?}");
    assert_eq!(rig.state(P::A), PeerState::Silent);

    // The peer comes back: the next probe is answered and calls flow again.
    rig.peers.silence(P::A, false);
    tokio::time::sleep(ms(1300)).await;
    let r = rig.call(P::A, ms(10)).await;
    assert_eq!(r.unwrap(), P::A, "the probe itself is answered");
    assert_eq!(rig.state(P::A), PeerState::Healthy);
    assert_eq!(rig.call(P::A, ms(10)).await.unwrap(), P::A);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_off_only_cuts_deadlines_to_min() {
    let min = ms(15);
    let rig = rig(TimeoutPolicy::default().fail_fast(false).min(min));
    five_in_flight(&rig, P::A).await;
    let start = Instant::now();
    let r = rig.call(P::A, ms(10)).await;
    let err = interrupted(&r);
    assert_eq!(err.deadline(), Some(min));
    assert_eq!(Instant::now() - start, min);
    rig.peers.silence(P::A, false);
    assert_eq!(rig.call(P::A, ms(5)).await.unwrap(), P::A);
    assert_eq!(rig.state(P::A), PeerState::Healthy);
}

#[tokio::test(start_paused = true)]
async fn a_healthy_slow_tailed_peer_is_never_declared_silent() {
    let rig = rig(TimeoutPolicy::default());
    let mut set = JoinSet::new();
    // Eight callers, 2,500 calls each, lognormal latency (median 10ms, p99.9 ~ 220ms).
    for worker in 0..8u64 {
        let svc = rig.svc.clone();
        set.spawn(async move {
            let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15, worker + 1);
            let mut silent = 0;
            for _ in 0..2_500 {
                let delay = ms(10).mul_f64(rng.lognormal(1.0, 1.0));
                let r = svc
                    .clone()
                    .oneshot(Req {
                        peer: P::Tail,
                        delay,
                    })
                    .await;
                silent += usize::from(is_silent(&r));
            }
            silent
        });
    }
    let silent: usize = set.join_all().await.into_iter().sum();
    let snap = rig.handle.peer(&P::Tail).unwrap();
    assert_eq!(silent, 0);
    assert_eq!((snap.silent_interrupts, snap.fail_fast), (0, 0));
    assert_ne!(snap.state, PeerState::Silent);
    assert_eq!(snap.completed + snap.deadline_exceeded, 20_000);
    assert!(
        snap.deadline_exceeded < 100,
        "{} tail timeouts",
        snap.deadline_exceeded
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_calls_leave_no_outstanding_and_free_the_probe_slot() {
    let rig = rig(TimeoutPolicy::default());
    let mut svc = rig.svc.clone();
    let fut = svc.ready().await.unwrap().call(Req {
        peer: P::A,
        delay: ms(50),
    });
    assert_eq!(rig.handle.peer(&P::A).unwrap().in_flight, 1);
    drop(fut);
    let snap = rig.handle.peer(&P::A).unwrap();
    assert_eq!((snap.in_flight, snap.samples), (0, 0));

    five_in_flight(&rig, P::A).await;
    tokio::time::sleep(TimeoutPolicy::default().probe_backoff * 2).await;
    let before = rig.peers.arrivals(P::A).len();
    let probe = svc.ready().await.unwrap().call(Req {
        peer: P::A,
        delay: ms(10),
    });
    assert_eq!(
        rig.peers.arrivals(P::A).len(),
        before + 1,
        "the probe went out"
    );
    assert_eq!(rig.state(P::A), PeerState::Probing);
    drop(probe);
    assert_eq!(rig.state(P::A), PeerState::Silent);
    // The slot is free, but the next probe still waits out the backoff.
    assert!(is_silent(&rig.call(P::A, ms(10)).await));
    tokio::time::sleep(TimeoutPolicy::default().probe_backoff * 5 / 4).await;
    let again = svc.ready().await.unwrap().call(Req {
        peer: P::A,
        delay: ms(10),
    });
    assert_eq!(
        rig.peers.arrivals(P::A).len(),
        before + 2,
        "a new probe went after the backoff"
    );
    drop(again);
    assert_eq!(rig.handle.peer(&P::A).unwrap().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn snapshots_and_the_handle_report_the_deadline_a_new_call_gets() {
    let min = ms(15);
    let rig = rig(TimeoutPolicy::default().fail_fast(false).min(min));
    five_in_flight(&rig, P::A).await;
    assert_eq!(rig.state(P::A), PeerState::Silent);
    let reported = rig.handle.deadline(&P::A).unwrap();
    let snap = rig.handle.peer(&P::A).unwrap();
    // What a new call gets: the deadline cut to min.
    let start = Instant::now();
    let err = interrupted(&rig.call(P::A, ms(10)).await).clone();
    assert_eq!(Instant::now() - start, min);
    assert_eq!(err.deadline(), Some(min));
    assert_eq!(reported, (min, DeadlineSource::SilentPeer));
    assert_eq!((snap.deadline, snap.deadline_source()), reported);
    assert_eq!(snap.explanation.min, min);
    // Back to the learned deadline once the peer answers.
    rig.peers.silence(P::A, false);
    rig.call(P::A, ms(5)).await.unwrap();
    let (deadline, source) = rig.handle.deadline(&P::A).unwrap();
    assert_ne!(source, DeadlineSource::SilentPeer);
    assert_eq!(rig.handle.peer(&P::A).unwrap().deadline, deadline);
}
