//! How the layer learns and applies deadlines, on tokio's paused clock (deterministic, no
//! wall-clock sleeps).
//!
//! Covers: the cold-start deadline, the deadline following the latency distribution once
//! `min_samples` exist, clamping to `min` and `max`, window decay, censored samples raising
//! the deadline of a peer whose calls time out, peer independence, per-peer overrides (from
//! the builder and at runtime) and their removal, runtime default-policy changes, inner
//! errors passing through untouched, dropped calls, the contents of [`Interrupted`], shared
//! state between layer clones, and use inside `tower::ServiceBuilder`.

use crate::support;

use std::time::Duration;

use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_adaptive_timeout::{DeadlineSource, Interrupted, Reason, TimeoutPolicy};

use support::ms;

mod rig;

use rig::*;

#[tokio::test(start_paused = true)]
async fn cold_start_deadline_comes_first() {
    let policy = eager().cold_start(ms(300)).min_samples(5);
    let (svc, handle) = stack(builder(policy));
    assert_eq!(handle.deadline(&"a"), None, "no call yet: not tracked");

    let answers = calls(&svc, "a", ms(10), 1).await;
    assert_eq!(answers, vec![ms(10)]);
    assert_eq!(
        handle.deadline(&"a"),
        Some((ms(300), DeadlineSource::ColdStart))
    );
    let snap = snapshot(&handle, "a");
    assert_eq!(snap.samples, 1);
    assert_eq!(snap.deadline_source(), DeadlineSource::ColdStart);
    assert_eq!(snap.explanation.min_samples, 5);

    // Still in cold start: a slow call is cut at exactly the cold-start deadline.
    let err = interrupted(&svc, call("a", ms(1000))).await;
    assert_eq!(err.deadline(), Some(ms(300)));
}

#[tokio::test(start_paused = true)]
async fn deadline_follows_the_distribution_after_min_samples() {
    let policy = eager().factor(2.0).margin(ms(5)).min_samples(20);
    let (svc, handle) = stack(builder(policy));
    calls(&svc, "a", ms(10), 19).await;
    // Answers back to back: a peer this busy waits for `min_samples` of them.
    let (estimate, source) = handle.deadline(&"a").unwrap();
    assert_eq!(source, DeadlineSource::ColdStart);

    calls(&svc, "a", ms(10), 1).await;
    let (deadline, source) = handle.deadline(&"a").unwrap();
    assert_eq!(source, DeadlineSource::Quantile);
    // 10ms x 2 + 5ms, below the estimate it replaces.
    assert_near(deadline, ms(25));
    assert!(estimate > deadline, "{estimate:?}");

    let snap = snapshot(&handle, "a");
    assert_eq!(snap.samples, 20);
    assert_near(snap.p50, ms(10));
    assert_near(snap.explanation.quantile_value, ms(10));
    assert_eq!(snap.deadline, deadline);
    assert_eq!(snap.completed, 20);
    assert_eq!(snap.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn deadline_is_clamped_to_min_and_max() {
    let policy = eager()
        .margin(Duration::ZERO)
        .min(ms(10))
        .max(ms(150))
        .cold_start(ms(150))
        .min_samples(5);
    let (svc, handle) = stack(builder(policy));

    // 1ms x 2 is below min.
    calls(&svc, "fast", ms(1), 5).await;
    assert_eq!(
        handle.deadline(&"fast"),
        Some((ms(10), DeadlineSource::ClampedMin))
    );
    // 100ms x 2 is above max.
    calls(&svc, "slow", ms(100), 5).await;
    assert_eq!(
        handle.deadline(&"slow"),
        Some((ms(150), DeadlineSource::ClampedMax))
    );
    let why = snapshot(&handle, "slow").explanation.to_string();
    assert!(why.contains("cut to max 150ms"), "{why}");
    let why = snapshot(&handle, "fast").explanation.to_string();
    assert!(why.contains("raised to min 10ms"), "{why}");
}

#[tokio::test(start_paused = true)]
async fn old_samples_expire_with_the_window() {
    let policy = eager().window(ms(600)).sub_windows(6).min_samples(10);
    let (svc, handle) = stack(builder(policy));
    let t0 = Instant::now();

    // Slow answers in the first sub-window, fast ones in the second.
    burst(&svc, "a", ms(50), 10).await;
    tokio::time::sleep_until(t0 + ms(150)).await;
    burst(&svc, "a", ms(5), 10).await;
    let both = snapshot(&handle, "a");
    assert_eq!(both.samples, 20);
    assert_near(both.deadline, ms(105));

    // Once the first sub-window is recycled only the fast answers are left.
    tokio::time::sleep_until(t0 + ms(650)).await;
    let fast = snapshot(&handle, "a");
    assert_eq!(fast.samples, 10);
    assert_eq!(fast.deadline_source(), DeadlineSource::Quantile);
    assert_near(fast.deadline, ms(15));
    assert_eq!(
        handle.deadline(&"a"),
        Some((fast.deadline, DeadlineSource::Quantile))
    );

    // A whole window later the window is empty, but its last `min_samples` answers are
    // history for up to `max_history`: the peer is quiet, not new. Ten answers hold no
    // p99.9, so it is estimated from them.
    tokio::time::sleep_until(t0 + ms(1400)).await;
    let quiet = snapshot(&handle, "a");
    assert_eq!(quiet.samples, 10);
    assert_eq!(quiet.deadline_source(), DeadlineSource::Estimate);
    assert!(
        quiet.deadline > ms(15) && quiet.deadline < ms(100),
        "{quiet:#?}"
    );
    let why = quiet.explanation.to_string();
    assert!(why.ends_with(", over the last 1s"), "{why}");

    // Past `max_history` nothing is left: back to cold start.
    tokio::time::sleep_until(t0 + ms(2_000) + TimeoutPolicy::default().max_history).await;
    let empty = snapshot(&handle, "a");
    assert_eq!(empty.samples, 0);
    assert_eq!(empty.deadline_source(), DeadlineSource::ColdStart);
    assert_eq!(empty.deadline, TimeoutPolicy::default().cold_start);
    assert_eq!(empty.completed, 20, "counters outlive the window");
}

#[tokio::test(start_paused = true)]
async fn censored_samples_raise_the_deadline_of_a_slowing_peer() {
    let max = ms(2000);
    // Silence detection off: this is about censoring alone, not about fail-fast.
    let policy = eager()
        .silent_after_misses(0)
        .cold_start(ms(50))
        .max(max)
        .min_samples(5)
        .factor(2.0)
        .margin(ms(5));
    let (svc, handle) = stack(builder(policy));

    // The peer never answers in time: every call runs out its deadline.
    let mut deadlines = Vec::new();
    for _ in 0..12 {
        let err = interrupted(&svc, call("hung", ms(60_000))).await;
        deadlines.push(err.deadline().expect("deadline exceeded"));
    }
    assert_eq!(&deadlines[..2], &[ms(50); 2], "cold start first");
    assert!(
        deadlines[2] > ms(50),
        "an estimate from the second: {deadlines:?}"
    );
    assert!(
        deadlines.windows(2).all(|w| w[0] <= w[1]),
        "the deadline never drops while calls time out: {deadlines:?}"
    );
    assert!(deadlines[5] > ms(100), "{deadlines:?}");
    assert_eq!(*deadlines.last().unwrap(), max);
    assert_eq!(
        handle.deadline(&"hung"),
        Some((max, DeadlineSource::ClampedMax))
    );
    // Samples: the two run out at `cold_start`, then those past it from the eighth run-out
    // in a row (a history that slowed down as a whole, not a few hung calls).
    let snap = snapshot(&handle, "hung");
    assert_eq!(snap.samples, 7);
    assert_eq!(snap.deadline_exceeded, 12);
    assert_eq!(snap.completed, 0);
    assert_eq!(snap.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn peers_are_independent() {
    let (svc, handle) = stack(builder(eager().min_samples(10)));
    calls(&svc, "fast", ms(5), 10).await;
    calls(&svc, "slow", ms(200), 10).await;
    calls(&svc, "cold", ms(5), 1).await;

    assert_near(handle.deadline(&"fast").unwrap().0, ms(15));
    assert_near(handle.deadline(&"slow").unwrap().0, ms(405));
    assert_eq!(
        handle.deadline(&"cold"),
        Some((
            TimeoutPolicy::default().cold_start,
            DeadlineSource::ColdStart
        ))
    );
    let all = handle.snapshot();
    let names: Vec<_> = all.iter().map(|s| &*s.peer).collect();
    assert_eq!(names, ["cold", "fast", "slow"], "sorted by peer");
    let samples: Vec<_> = all.iter().map(|s| s.samples).collect();
    assert_eq!(samples, [1, 10, 10]);
}

#[tokio::test(start_paused = true)]
async fn builder_peer_policy_overrides_the_default() {
    let special = eager().cold_start(ms(300));
    let (svc, handle) = stack(builder(eager()).peer_policy("b", special));
    let err = interrupted(&svc, call("b", ms(60_000))).await;
    assert_eq!(err.deadline(), Some(ms(300)));
    let err = interrupted(&svc, call("a", ms(60_000))).await;
    assert_eq!(err.deadline(), Some(TimeoutPolicy::default().cold_start));

    assert!(snapshot(&handle, "b").explanation.per_peer_policy);
    assert!(!snapshot(&handle, "a").explanation.per_peer_policy);
}

#[tokio::test(start_paused = true)]
async fn runtime_peer_policy_is_set_and_removed() {
    let (svc, handle) = stack(builder(eager()));
    let default_cold = TimeoutPolicy::default().cold_start;
    calls(&svc, "a", ms(5), 1).await;

    // On a tracked peer the change shows at once.
    handle
        .set_peer_policy("a", eager().cold_start(ms(200)))
        .unwrap();
    assert_eq!(
        handle.deadline(&"a"),
        Some((ms(200), DeadlineSource::ColdStart))
    );
    assert!(snapshot(&handle, "a").explanation.per_peer_policy);
    assert_eq!(
        interrupted(&svc, call("a", ms(60_000))).await.deadline(),
        Some(ms(200))
    );

    // A peer not tracked yet gets its policy on its first call.
    handle
        .set_peer_policy("new", eager().cold_start(ms(400)))
        .unwrap();
    assert_eq!(handle.deadline(&"new"), None);
    assert_eq!(
        interrupted(&svc, call("new", ms(60_000))).await.deadline(),
        Some(ms(400))
    );

    assert!(handle.remove_peer_policy(&"a"));
    assert!(!handle.remove_peer_policy(&"a"), "already removed");
    // Two samples (5ms, and the 200ms cut): an estimate, as high as the cold start.
    assert_eq!(
        handle.deadline(&"a"),
        Some((default_cold, DeadlineSource::Estimate))
    );
    assert!(!snapshot(&handle, "a").explanation.per_peer_policy);
    assert_eq!(
        interrupted(&svc, call("a", ms(60_000))).await.deadline(),
        Some(default_cold)
    );
}

#[tokio::test(start_paused = true)]
async fn default_policy_change_reaches_new_calls() {
    let (svc, handle) = stack(builder(eager()));
    calls(&svc, "a", ms(5), 1).await;

    let changed = eager().cold_start(ms(250));
    handle.set_default_policy(changed.clone()).unwrap();
    assert_eq!(handle.default_policy(), changed);
    assert_eq!(
        handle.deadline(&"a"),
        Some((ms(250), DeadlineSource::ColdStart))
    );
    // Tracked and new peers alike.
    for peer in ["a", "b"] {
        let err = interrupted(&svc, call(peer, ms(60_000))).await;
        assert_eq!(err.deadline(), Some(ms(250)), "peer {peer}");
    }
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_untouched() {
    let (svc, handle) = stack(builder(eager()));
    let failing = Call {
        fail: true,
        ..call("a", ms(3))
    };
    let err = svc.clone().oneshot(failing).await.expect_err("inner error");
    assert!(err.downcast_ref::<Interrupted>().is_none());
    assert!(Interrupted::find(&*err).is_none());
    assert_eq!(err.to_string(), "peer a refused the call");

    // An application error is an answer from the peer, but not a latency sample: how fast
    // it fails is not how fast it works.
    let snap = snapshot(&handle, "a");
    assert_eq!(snap.samples, 0);
    assert_eq!(snap.completed, 1);
    assert_eq!((snap.failures, snap.deadline_exceeded), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_records_nothing() {
    let (svc, handle) = stack(builder(eager()));
    let mut svc = svc.clone();
    let fut = svc.ready().await.unwrap().call(call("a", ms(60_000)));
    assert_eq!(snapshot(&handle, "a").in_flight, 1);

    // The caller gives up first: the future is polled, then dropped.
    let gave_up = tokio::time::timeout(ms(20), fut).await;
    assert!(gave_up.is_err());
    let snap = snapshot(&handle, "a");
    assert_eq!(snap.in_flight, 0);
    assert_eq!(snap.samples, 0);
    assert_eq!(snap.completed, 0);
    assert_eq!(snap.deadline_exceeded, 0);

    // Dropped without ever being polled, too.
    drop(svc.call(call("a", ms(60_000))));
    assert_eq!(snapshot(&handle, "a").in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn interrupted_says_who_when_and_why() {
    let policy = eager().cold_start(ms(40)).min_samples(3);
    let (svc, _handle) = stack(builder(policy));

    let cold = interrupted(&svc, call("10.0.0.7:9000", ms(60_000))).await;
    assert_eq!(cold.peer(), "10.0.0.7:9000");
    assert_eq!(cold.deadline(), Some(ms(40)));
    assert!(
        cold.elapsed() >= ms(40) && cold.elapsed() < ms(45),
        "{cold:?}"
    );
    let Reason::DeadlineExceeded {
        deadline,
        explanation,
    } = cold.reason()
    else {
        panic!("unexpected reason {:?}", cold.reason());
    };
    assert_eq!(*deadline, ms(40));
    assert_eq!(explanation.source, DeadlineSource::ColdStart);
    assert_eq!(cold.reason().as_str(), "deadline_exceeded");
    let line = cold.to_string();
    for part in [
        "call to 10.0.0.7:9000",
        "deadline 40ms exceeded",
        "cold start",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }

    // Warmed up on fast answers, the deadline comes from the quantile.
    calls(&svc, "10.0.0.8:9000", ms(20), 3).await;
    let warm = interrupted(&svc, call("10.0.0.8:9000", ms(60_000))).await;
    let Reason::DeadlineExceeded { explanation, .. } = warm.reason() else {
        panic!("unexpected reason {:?}", warm.reason());
    };
    assert_eq!(explanation.source, DeadlineSource::Quantile);
    assert_near(warm.deadline().unwrap(), ms(45));
    let line = warm.to_string();
    assert!(line.contains(" x 2 + 5ms"), "formula missing from {line}");
    assert!(!line.contains("cold start"), "{line}");
}

#[tokio::test(start_paused = true)]
async fn layer_clones_share_one_table() {
    let layer = builder(eager()).build().unwrap();
    let clone = layer.clone();
    let mut one = layer.layer(service_fn(answer));
    let mut two = clone.layer(service_fn(answer));
    for (which, peer) in [(0, "a"), (1, "a"), (1, "b")] {
        let svc = if which == 0 { &mut one } else { &mut two };
        svc.ready()
            .await
            .unwrap()
            .call(call(peer, ms(5)))
            .await
            .unwrap();
    }

    for handle in [layer.handle(), clone.handle()] {
        assert_eq!(handle.peer_count(), 2);
        assert_eq!(snapshot(&handle, "a").samples, 2);
    }
    // A policy change through one handle reaches services made from the other layer.
    layer
        .handle()
        .set_peer_policy("b", eager().cold_start(ms(70)))
        .unwrap();
    let err = interrupted(&two, call("b", ms(60_000))).await;
    assert_eq!(err.deadline(), Some(ms(70)));
}

#[tokio::test(start_paused = true)]
async fn works_inside_service_builder() {
    let layer = builder(eager().cold_start(ms(100))).build().unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .map_request(|(peer, delay): (&'static str, u64)| call(peer, ms(delay)))
        .layer(layer)
        .map_response(|d: Duration| d.as_millis())
        .service_fn(answer);

    assert_eq!(svc.clone().oneshot(("a", 7)).await.unwrap(), 7);
    let err = svc.oneshot(("a", 60_000)).await.unwrap_err();
    let found = Interrupted::find(&*err).expect("Interrupted through the stack");
    assert_eq!(found.deadline(), Some(ms(100)));
    let snap = snapshot(&handle, "a");
    assert_eq!((snap.completed, snap.deadline_exceeded), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn deadline_is_recomputed_every_recompute_every_samples() {
    let policy = TimeoutPolicy::default().min_samples(5).recompute_every(10);
    let (svc, handle) = stack(builder(policy));
    calls(&svc, "a", ms(10), 5).await;
    let warm = handle.deadline(&"a").unwrap().0;
    assert_near(warm, ms(25));

    // Slower answers do not move the published deadline until ten have come in.
    calls(&svc, "a", ms(12), 9).await;
    assert_eq!(handle.deadline(&"a").unwrap().0, warm);
    calls(&svc, "a", ms(12), 1).await;
    assert_near(handle.deadline(&"a").unwrap().0, ms(29));
}

#[tokio::test(start_paused = true)]
async fn a_full_table_leaves_calls_untracked_with_the_default_cold_start() {
    let (mut svc, handle) = stack(builder(eager().cold_start(ms(80))).max_peers(1));
    // Peer "a" has a call in flight, so it cannot be evicted for "b".
    let pending = svc.ready().await.unwrap().call(call("a", ms(60_000)));
    let err = interrupted(&svc, call("b", ms(60_000))).await;
    assert_eq!(err.deadline(), Some(ms(80)));
    assert!(err.to_string().contains("untracked peer"), "{err}");
    assert_eq!(handle.untracked_calls(), 1);
    assert_eq!(handle.peer_count(), 1);
    assert!(handle.peer(&"b").is_none());
    drop(pending);
}

#[tokio::test(start_paused = true)]
async fn the_explanation_matches_the_deadline_the_call_had() {
    let policy = eager()
        .silent_after_misses(0)
        .cold_start(ms(50))
        .min_samples(3);
    let (svc, _handle) = stack(builder(policy));
    let mut errs = Vec::new();
    for _ in 0..4 {
        errs.push(interrupted(&svc, call("hung", ms(60_000))).await);
    }
    // The second call still had the cold-start deadline, with one sample behind it, the
    // third an estimate from two.
    let second = explained(&errs[1]);
    assert_eq!(second.source, DeadlineSource::ColdStart);
    assert_eq!((second.samples, second.min_samples), (1, 3));
    let third = explained(&errs[2]);
    assert_eq!(third.source, DeadlineSource::Estimate);
    assert_eq!((third.samples, third.min_samples), (2, 3));
    // The fourth call's deadline is the formula over the numbers its explanation shows.
    let fourth = explained(&errs[3]);
    let formula = fourth.quantile_value.mul_f64(fourth.factor) + fourth.margin;
    assert_eq!(errs[3].deadline(), Some(formula), "{fourth:?}");
}

#[tokio::test(start_paused = true)]
async fn a_service_forgets_its_last_peer_once_the_table_evicts_it() {
    let (svc, handle) = stack(builder(eager()).max_peers(1));
    let mut mine = svc.clone();
    calls(&mine, "a", ms(5), 3).await;
    // Another clone's call to "b" evicts the idle "a" from the one-slot table.
    calls(&svc, "b", ms(5), 1).await;
    assert!(handle.peer(&"a").is_none());
    // This service called "a" last, but must not keep feeding the evicted peer.
    mine.ready().await.unwrap();
    mine.call(call("a", ms(5))).await.unwrap();
    let a = snapshot(&handle, "a");
    assert_eq!(
        (a.completed, a.samples),
        (1, 1),
        "a fresh peer in the table"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_explains_the_numbers_its_deadline_came_from() {
    let (svc, handle) = stack(builder(eager().quantile(0.5).min_samples(10)));
    calls(&svc, "p", ms(100), 10).await;
    let (deadline, source) = handle.deadline(&"p").unwrap();
    assert_eq!(source, DeadlineSource::Quantile);
    // A call that never answers starts with that deadline (p50 100ms x 2 + 5ms); while it
    // is in flight, 30 answers after 180ms move the peer's deadline on.
    let hung = tokio::spawn(svc.clone().oneshot(call("p", ms(60_000))));
    tokio::task::yield_now().await;
    burst(&svc, "p", ms(180), 30).await;
    assert!(handle.deadline(&"p").unwrap().0 > deadline * 3 / 2);
    let err = hung.await.unwrap().unwrap_err();
    let err = err.downcast_ref::<Interrupted>().unwrap();
    let e = explained(err);
    let formula = e.quantile_value.mul_f64(e.factor) + e.margin;
    assert_eq!(err.deadline(), Some(deadline));
    assert_eq!(
        (e.source, formula, e.samples),
        (DeadlineSource::Quantile, deadline, 10)
    );
}
