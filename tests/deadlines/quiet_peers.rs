//! Quiet peers on tokio's paused clock: a peer making a few calls a minute learns its
//! deadline from its second answer (an upper estimate of the quantile) and from its last
//! `min_samples` answers of up to `max_history` ago, where a window of one minute never
//! holds `min_samples`; and a quiet peer that goes silent is cut at what it learned.

use crate::support;

use std::ops::Range;
use std::time::Duration;

use tokio::time::Instant;
use tower::{service_fn, BoxError, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, DeadlineSource, Reason, TimeoutPolicy,
};

use support::{interrupted, ms};

/// A call: its peer and how long the peer takes to answer it (`None`: never).
type Call = (&'static str, Option<Duration>);

/// The layer under `policy` over peers that answer each call after its delay.
fn stack(
    policy: TimeoutPolicy,
) -> (
    impl Service<Call, Response = (), Error = BoxError> + Clone,
    AdaptiveTimeoutHandle<&'static str>,
) {
    let inner = service_fn(|(_, delay): Call| async move {
        match delay {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
        Ok::<_, BoxError>(())
    });
    support::stack(
        AdaptiveTimeoutLayer::builder(|c: &Call| c.0).policy(policy),
        inner,
    )
}

/// Whether `a` is within 1% (or 1ms, the timer's resolution) of `b`.
fn near(a: Duration, b: Duration) -> bool {
    a.abs_diff(b) <= (b / 100).max(ms(1))
}

/// The deadline a new call to `peer` gets.
fn deadline(handle: &AdaptiveTimeoutHandle<&'static str>, peer: &'static str) -> Duration {
    handle.deadline(&peer).expect("tracked").0
}

/// Makes calls number `calls` of a steady `per_minute` pace that started at `t0`, each
/// answered in 20ms, one at a time.
async fn steady<S>(svc: &S, peer: &'static str, per_minute: u32, t0: Instant, calls: Range<u32>)
where
    S: Service<Call, Response = (), Error = BoxError> + Clone,
{
    let gap = Duration::from_secs(60) / per_minute;
    for i in calls {
        tokio::time::sleep_until(t0 + gap * i).await;
        svc.clone().oneshot((peer, Some(ms(20)))).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn ten_calls_a_minute_learn_a_deadline_close_to_a_busy_peers() {
    let (svc, handle) = stack(TimeoutPolicy::default());
    let t0 = Instant::now();
    // A busy peer (10 calls a second) sets the mark: p99.9 20ms x 2 + 5ms.
    steady(&svc, "busy", 600, t0, 0..200).await;
    let busy = deadline(&handle, "busy");
    assert!(busy < ms(50), "{busy:?}");

    let t1 = Instant::now();
    steady(&svc, "quiet", 10, t1, 0..10).await;
    let after_ten = handle.deadline(&"quiet").unwrap();
    assert_eq!(after_ten.1, DeadlineSource::Estimate);
    assert!(after_ten.0 < ms(250), "after 10 calls: {after_ten:?}");

    steady(&svc, "quiet", 10, t1, 10..50).await;
    let five_minutes = deadline(&handle, "quiet");
    assert!(
        five_minutes <= busy * 2,
        "{five_minutes:?} vs busy {busy:?}"
    );

    // Ten minutes in, its last 100 answers reach back further than the window. They hold
    // no p99.9 (that takes 1,000), so the estimate stays, as close as 100 answers allow.
    steady(&svc, "quiet", 10, t1, 50..100).await;
    let snap = handle.peer(&"quiet").unwrap();
    assert_eq!(snap.deadline_source(), DeadlineSource::Estimate);
    assert!(
        snap.deadline <= five_minutes && snap.deadline <= busy * 2,
        "{snap:#?}"
    );
    assert!(
        snap.explanation.history > Duration::from_secs(9 * 60),
        "{snap:#?}"
    );
    assert_eq!(snap.samples, 100);
    assert!(
        snap.window_bytes <= 2_000,
        "no histograms: {}",
        snap.window_bytes
    );
}

#[tokio::test(start_paused = true)]
async fn the_estimate_falls_from_cold_start_and_hands_over_to_the_quantile() {
    let (svc, handle) = stack(TimeoutPolicy::default().recompute_every(1));
    let mut deadlines = Vec::new();
    // A call a second: too quiet to fill the window with `min_samples` answers.
    for _ in 0..99 {
        svc.clone().oneshot(("a", Some(ms(20)))).await.unwrap();
        deadlines.push(handle.deadline(&"a").unwrap());
        tokio::time::sleep(ms(980)).await;
    }
    assert_eq!(deadlines[0], (ms(1000), DeadlineSource::ColdStart));
    assert!(deadlines[1..]
        .iter()
        .all(|d| d.1 == DeadlineSource::Estimate));
    assert!(
        deadlines.windows(2).all(|w| w[1].0 <= w[0].0),
        "identical answers only ever lower it: {deadlines:?}"
    );
    let why = handle.peer(&"a").unwrap().explanation.to_string();
    assert!(
        why.starts_with("estimate from 99 of 100 samples: p99.9 <= "),
        "{why}"
    );
    // Busy from now on: the window fills with `min_samples` and hands over to its quantile.
    for _ in 0..100 {
        svc.clone().oneshot(("a", Some(ms(20)))).await.unwrap();
    }
    assert!(near(deadline(&handle, "a"), ms(45)));
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_among_few_keeps_the_estimate_high() {
    let (svc, handle) = stack(TimeoutPolicy::default());
    for delay in [20, 20, 20, 400, 20, 20, 20, 20, 20, 20] {
        svc.clone().oneshot(("a", Some(ms(delay)))).await.unwrap();
    }
    // Ten answers, one of them 20x the others: the tail is heavy, so is the estimate,
    // which rises past the cold start, and past twice the formula on the slowest answer
    // (1.61s): the tail those answers show extrapolates p99.9 to 2.1s (x 2 + 5ms).
    let d = deadline(&handle, "a");
    assert!(d > ms(1610) && d < ms(4300), "{d:?}");
}

#[tokio::test(start_paused = true)]
async fn a_quiet_peer_that_goes_silent_is_cut_at_what_it_learned() {
    let (svc, handle) = stack(TimeoutPolicy::default());
    let t0 = Instant::now();
    steady(&svc, "quiet", 6, t0, 0..12).await;
    let learned = deadline(&handle, "quiet");
    assert!(learned < ms(250), "{learned:?}");

    // Silent: two misses in a row declare it, each cut at the learned deadline, not at
    // the 1s cold start.
    for _ in 0..2 {
        let started = Instant::now();
        let r = svc.clone().oneshot(("quiet", None)).await;
        let reason = interrupted(&r).reason().clone();
        assert!(
            matches!(
                reason,
                Reason::DeadlineExceeded { .. } | Reason::PeerSilent { .. }
            ),
            "{reason:?}"
        );
        assert!(near(started.elapsed(), learned), "{:?}", started.elapsed());
    }
    let r = svc.clone().oneshot(("quiet", None)).await;
    assert!(
        matches!(interrupted(&r).reason(), Reason::PeerSilent { .. }),
        "{r:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_quiet_peer_with_two_clusters_of_latency_keeps_its_deadline_near_its_slowest_answer() {
    // One call a second, so a one-minute window never holds `min_samples` (100): the
    // deadline stays an estimate. From the 20th call on, every third takes 290 ms, the rest
    // 20 ms: two clusters, whose tail extrapolates to tens of seconds (it reached `max`,
    // 30 s, by the 60th answer, though no answer took over 290 ms).
    let (svc, handle) = stack(TimeoutPolicy::default());
    let mut highest = Duration::ZERO;
    for n in 0..120u32 {
        let slow = n >= 20 && n % 3 == 0;
        let delay = ms(if slow { 290 } else { 20 });
        // The first slow ones may be cut at the deadline the fast ones taught.
        let _ = svc.clone().oneshot(("quiet", Some(delay))).await;
        tokio::time::sleep(ms(1_000) - delay).await;
        highest = highest.max(handle.peer(&"quiet").expect("tracked").deadline);
    }
    // At most the formula on eight times the slowest answer: 8 x 290 ms x 2 + 5 ms.
    assert!(highest <= ms(4_645), "the deadline reached {highest:?}");
    assert!(
        highest >= ms(585),
        "the 290 ms answers are covered: {highest:?}"
    );
}
