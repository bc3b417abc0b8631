//! Watched response bodies at their edges, on tokio's paused clock: a caller's own body
//! deadlines say nothing against a healthy peer, "no limit" is no limit, what is
//! propagated under `with_bodies()` is a deadline for the whole call, a body the layer
//! ended stays ended, a policy change reaches the idle deadline, and every call counts
//! exactly one outcome.
#![cfg(feature = "http")]

use crate::support;

use std::future::Future;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::time::Instant;
use tower::{BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutLayer, BodyDeadline, BodyIdle, Deadline, DeadlineSource, Interrupted, PeerState,
    Propagation, Reason, TimeoutPolicy,
};

use support::ms;

mod rig;

use rig::*;

/// Two calls whose own body deadline (`ask`) runs out before their first frame (20 ms
/// after the head), beside a healthy call whose head comes after 50 ms: the healthy call
/// is answered and the peer stays healthy.
async fn a_callers_body_deadline_leaves_the_peer_healthy(ask: impl Fn(Req) -> Req) {
    let rig = rig();
    let healthy = tokio::spawn({
        let svc = rig.svc.clone();
        svc.oneshot(request(Script::new(ms(50), vec![])))
    });
    let mut cut = Vec::new();
    for _ in 0..2 {
        let req = ask(request(Script::new(Duration::ZERO, vec![ms(20)])));
        cut.push(tokio::spawn(read_body(rig.call(req))));
    }
    for reader in cut {
        let (frames, err) = reader.await.unwrap();
        let err = err.expect("cut by the caller's own deadline");
        assert_eq!(frames, 0);
        assert!(
            matches!(
                reason(&err),
                Reason::BodyIdle { .. } | Reason::DeadlineExceeded { .. }
            ),
            "{err}"
        );
    }
    let answered = healthy.await.unwrap();
    assert!(answered.is_ok(), "{:?}", answered.err());
    let peer = rig.snapshot();
    assert_eq!(peer.state, PeerState::Healthy);
    assert_eq!(peer.silent_interrupts, 0);
}

#[tokio::test(start_paused = true)]
async fn a_callers_short_idle_deadline_is_not_a_miss() {
    a_callers_body_deadline_leaves_the_peer_healthy(|r| with(r, BodyIdle::After(ms(1)))).await;
}

#[tokio::test(start_paused = true)]
async fn a_callers_short_total_deadline_is_not_a_miss() {
    let total = |r| with(r, BodyDeadline::Within(ms(15)));
    a_callers_body_deadline_leaves_the_peer_healthy(total).await;
    let caller = |r| with(with(r, BodyDeadline::Caller), Deadline::within(ms(15)));
    a_callers_body_deadline_leaves_the_peer_healthy(caller).await;
}

#[tokio::test(start_paused = true)]
async fn a_callers_idle_deadline_as_long_as_the_peers_own_still_counts() {
    // The peer's own idle deadline is its 1 s cold start: a caller that waits 2 s for a
    // frame that never comes has seen the peer go silent.
    let rig = rig();
    let mut readers = Vec::new();
    for _ in 0..2 {
        let req = with(
            request(Script::new(Duration::ZERO, vec![]).stalled()),
            BodyIdle::After(ms(2_000)),
        );
        readers.push(tokio::spawn(read_body(rig.call(req))));
    }
    for reader in readers {
        let err = reader.await.unwrap().1.expect("cut");
        assert!(
            matches!(
                reason(&err),
                Reason::BodyIdle { .. } | Reason::PeerSilent { .. }
            ),
            "{err}"
        );
    }
    assert_eq!(rig.snapshot().state, PeerState::Silent);
}

/// Reads a called response's whole body: how many frames came, and the body's error.
async fn read_body(call: impl Future<Output = Result<Res, BoxError>>) -> (usize, Option<BoxError>) {
    let mut body = Box::pin(call.await.expect("the head").into_body());
    let mut frames = 0;
    loop {
        match body.frame().await {
            Some(Ok(_)) => frames += 1,
            Some(Err(err)) => return (frames, Some(err)),
            None => return (frames, None),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn duration_max_is_no_limit_for_a_body() {
    let rig = rig_with(TimeoutPolicy::default(), Propagation::grpc());
    let never = [
        |r| with(r, BodyIdle::After(Duration::MAX)),
        |r| with(r, BodyDeadline::Within(Duration::MAX)),
        |r| {
            with(
                with(r, BodyDeadline::Caller),
                Deadline::Within(Duration::MAX),
            )
        },
        |r| with(r, Deadline::Within(Duration::MAX)),
    ];
    for ask in never {
        // Frames 500 ms apart (inside the 1 s cold start): nothing cuts them.
        let req = ask(request(Script::new(ms(20), vec![ms(500); 4])));
        assert_eq!(rig.read(req).await.0, 4);
    }
    // A huge total leaves the layer's own idle deadline in force.
    let stalled = with(
        request(Script::new(ms(20), vec![ms(500)]).stalled()),
        BodyDeadline::Within(Duration::MAX),
    );
    let (frames, err) = rig.read(stalled).await;
    assert_eq!(frames, 1);
    let err = err.expect("cut by the idle deadline");
    assert!(matches!(reason(&err), Reason::BodyIdle { .. }), "{err}");
    // The caller's "never" for the idle deadline, over a stalled body: never cut.
    let req = with(
        request(Script::new(ms(20), vec![]).stalled()),
        BodyIdle::After(Duration::MAX),
    );
    let mut body = Box::pin(rig.call(req).await.unwrap().into_body());
    let waited = tokio::time::timeout(ms(3_600_000), body.frame()).await;
    assert!(waited.is_err(), "still waiting after an hour");
    assert!(body.is_watched());
    // A point in time ten years ahead, for the head and the body.
    let far = Deadline::at(Instant::now() + Duration::from_secs(10 * 365 * 24 * 3600));
    let req = with(request(Script::new(ms(20), vec![ms(5)])), far);
    let req = with(req, BodyDeadline::Caller);
    assert_eq!(rig.read(req).await.0, 1);
}

/// A server stream of 20 messages, one every 100 ms, from a server that ends the call
/// when the `grpc-timeout` it was sent passes.
fn grpc_stream() -> Req {
    let mut script = Script::new(ms(5), vec![ms(100); 20]);
    script.grpc_server = true;
    request(script)
}

#[tokio::test(start_paused = true)]
async fn a_stream_under_propagation_is_not_cut_by_the_heads_deadline() {
    let mut rig = rig_with(TimeoutPolicy::default(), Propagation::grpc());
    // A new method of a peer: the head's deadline is the 1 s cold start; the stream runs
    // 2 s, which the layer itself lets run.
    let (frames, err) = rig.read(grpc_stream()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(frames, 20);
    let sent = rig.seen.recv().await.unwrap();
    assert_eq!(
        sent.get("grpc-timeout"),
        None,
        "no deadline for the whole call"
    );
}

#[tokio::test(start_paused = true)]
async fn the_whole_calls_deadline_is_what_is_propagated_under_bodies() {
    let millis = http::HeaderName::from_static("x-timeout-ms");
    let mut rig = rig_with(
        TimeoutPolicy::default(),
        Propagation::grpc().millis_header(millis.clone()),
    );
    let mut sent = async |req: Req| {
        let (frames, err) = rig.read(req).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(frames, 20);
        let headers = rig.seen.recv().await.unwrap();
        let value = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        (value("grpc-timeout"), value(millis.as_str()))
    };
    let both = |v: &str, m: &str| (Some(v.to_owned()), Some(m.to_owned()));
    // The body's total.
    let total = with(grpc_stream(), BodyDeadline::Within(ms(5_000)));
    assert_eq!(sent(total).await, both("5000m", "5000"));
    // The caller's deadline, over the whole call (3 s, of which the head takes 5 ms).
    let caller = with(grpc_stream(), Deadline::within(ms(3_000)));
    assert_eq!(
        sent(with(caller, BodyDeadline::Caller)).await,
        both("3000m", "3000")
    );
    // The caller's deadline, even when it bounds the layer's watch of the head alone: a
    // gRPC deadline is the whole call's.
    let caller = with(grpc_stream(), Deadline::within(ms(4_000)));
    assert_eq!(sent(caller).await, both("4000m", "4000"));
    // A deadline the request's headers carried in, shortened by a shorter total.
    let mut upstream = with(grpc_stream(), BodyDeadline::Within(ms(2_500)));
    let header = http::HeaderValue::from_static("3S");
    upstream.headers_mut().insert("grpc-timeout", header);
    assert_eq!(sent(upstream).await, both("2500m", "2500"));
}

#[tokio::test(start_paused = true)]
async fn a_body_the_layer_ended_stays_ended() {
    let rig = rig();
    // Cut at 100 ms by its idle deadline; its inner body would send a frame at 2 s.
    let cut_by = [
        |r| with(r, BodyIdle::After(ms(100))),
        |r| with(r, BodyDeadline::Within(ms(100))),
    ];
    for ask in cut_by {
        let req = ask(request(Script::new(Duration::ZERO, vec![ms(2_000)])));
        let mut body = Box::pin(rig.call(req).await.unwrap().into_body());
        let err = body.frame().await.expect("an end").expect_err("cut");
        assert!(Interrupted::find(&*err).is_some(), "{err}");
        assert!(body.is_end_stream(), "ended");
        let started = Instant::now();
        assert!(
            body.frame().await.is_none(),
            "nothing after the layer's end"
        );
        assert!(body.frame().await.is_none(), "nothing, again");
        assert_eq!(started.elapsed(), Duration::ZERO, "at once");
    }
    // And one ended by an interrupt.
    let req = request(Script::new(Duration::ZERO, vec![ms(2_000)]));
    let mut body = Box::pin(rig.call(req).await.unwrap().into_body());
    let handle = rig.interrupts.clone();
    tokio::spawn(async move {
        tokio::time::sleep(ms(10)).await;
        handle.interrupt_all("maintenance");
    });
    let err = body.frame().await.expect("an end").expect_err("cut");
    assert!(matches!(reason(&err), Reason::Manual(_)), "{err}");
    assert!(body.frame().await.is_none());
    assert!(body.is_end_stream());
}

#[tokio::test(start_paused = true)]
async fn a_policy_change_reaches_the_learned_idle_deadline() {
    let rig = rig();
    // The peer is tracked under the default policy (cold start 1 s).
    assert_eq!(rig.read(request(Script::new(ms(5), vec![]))).await.0, 0);
    let tight = TimeoutPolicy::default().max(ms(200)).cold_start(ms(200));
    rig.handle.set_default_policy(tight).unwrap();
    let stalled = request(Script::new(Duration::ZERO, vec![]).stalled());
    let started = Instant::now();
    let (_, err) = rig.read(stalled).await;
    let err = err.expect("cut");
    assert!(matches!(reason(&err), Reason::BodyIdle { .. }), "{err}");
    assert_eq!(
        started.elapsed(),
        ms(200),
        "the new cold start, not the old 1 s"
    );

    // Once gaps are learned (here 500 ms apart), a lower max still bounds them.
    let rig = self::rig();
    for _ in 0..2 {
        let req = request(Script::new(Duration::ZERO, vec![ms(500); 20]));
        assert_eq!(rig.read(req).await.0, 20);
    }
    rig.handle
        .set_default_policy(TimeoutPolicy::default().max(ms(300)).cold_start(ms(300)))
        .unwrap();
    let stalled = request(Script::new(Duration::ZERO, vec![]).stalled());
    let started = Instant::now();
    let (_, err) = rig.read(stalled).await;
    let Reason::BodyIdle { idle, .. } = reason(err.as_ref().expect("cut")) else {
        panic!("{err:?}")
    };
    assert_eq!(*idle, ms(300));
    assert_eq!(started.elapsed(), ms(300));
}

/// The peer's outcome counts: completed, deadline_exceeded, failures, silent and manual
/// interrupts; and calls in flight.
fn outcomes(p: &tower_adaptive_timeout::PeerSnapshot) -> ([u64; 5], usize) {
    let counts = [
        p.completed,
        p.deadline_exceeded,
        p.failures,
        p.silent_interrupts,
        p.manual_interrupts,
    ];
    (counts, p.in_flight)
}

#[tokio::test(start_paused = true)]
async fn a_call_with_a_body_counts_exactly_one_outcome() {
    let rig = rig();
    // Ended at its last frame: one answer.
    let (frames, _) = rig.read(request(Script::new(ms(5), vec![ms(5)]))).await;
    assert_eq!(frames, 1);
    assert_eq!(outcomes(&rig.snapshot()), ([1, 0, 0, 0, 0], 0));
    // In flight in its body: nothing counted yet.
    let stalled = || request(Script::new(ms(5), vec![]).stalled());
    let mut open = Box::pin(rig.call(stalled()).await.unwrap().into_body());
    assert_eq!(outcomes(&rig.snapshot()), ([1, 0, 0, 0, 0], 1));
    // Cut by its idle deadline: a timeout, not also an answer.
    let err = open.frame().await.unwrap().expect_err("cut");
    assert!(matches!(reason(&err), Reason::BodyIdle { .. }), "{err}");
    assert_eq!(outcomes(&rig.snapshot()), ([1, 1, 0, 0, 0], 0));
    // Cut by an interrupt: an interrupt, not also an answer.
    let mut open = Box::pin(rig.call(stalled()).await.unwrap().into_body());
    rig.interrupts.interrupt_all("maintenance");
    let err = open.frame().await.unwrap().expect_err("cut");
    assert!(matches!(reason(&err), Reason::Manual(_)), "{err}");
    assert_eq!(outcomes(&rig.snapshot()), ([1, 1, 0, 0, 1], 0));
    // Cut by its total deadline: a timeout.
    let req = with(stalled(), BodyDeadline::Within(ms(50)));
    let (_, err) = rig.read(req).await;
    let err = err.expect("cut");
    assert!(
        matches!(reason(&err), Reason::DeadlineExceeded { .. }),
        "{err}"
    );
    assert_eq!(outcomes(&rig.snapshot()), ([1, 2, 0, 0, 1], 0));
    // Dropped by its reader after the head: the head was its answer.
    let open = rig.call(stalled()).await.unwrap().into_body();
    drop(open);
    assert_eq!(outcomes(&rig.snapshot()), ([2, 2, 0, 0, 1], 0));
}

#[tokio::test(start_paused = true)]
async fn duration_max_is_no_limit_for_a_head_and_its_deadline_is_propagated_without_bodies() {
    let layer = AdaptiveTimeoutLayer::http()
        .propagation(Propagation::grpc())
        .build()
        .unwrap();
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let svc = layer.layer(peer(tx));
    let far = Deadline::at(Instant::now() + Duration::from_secs(10 * 365 * 24 * 3600));
    for deadline in [Deadline::Within(Duration::MAX), far] {
        let req = with(request(Script::new(ms(20), vec![])), deadline);
        let response = svc.clone().oneshot(req).await;
        assert!(response.is_ok(), "{:?}", response.err());
        // Without bodies the call ends at its head: the head's deadline (the 1 s cold
        // start, shorter than the caller's) is what the callee is told.
        let sent = seen.recv().await.unwrap();
        assert_eq!(sent["grpc-timeout"], "1000m");
    }
}

/// The value of the series `name{peer="http://stream.test:80",...}` on a Prometheus page
/// (its other labels, if any, as `extra`).
#[cfg(feature = "metrics")]
fn series(page: &str, name: &str, extra: &str) -> f64 {
    let head = format!("{name}{{peer=\"http://stream.test:80\"{extra}}} ");
    let line = page.lines().find(|l| l.starts_with(&head));
    let value = line.unwrap_or_else(|| panic!("no {head} in\n{page}"));
    value[head.len()..].parse().unwrap()
}

#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn a_call_with_a_body_is_one_outcome_in_the_metrics() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    // This thread's recorder: the test's runtime runs every call on it.
    let local = metrics::set_default_local_recorder(&recorder);
    let rig = rig();
    let stalled = || request(Script::new(ms(5), vec![]).stalled());
    // Answered at its last frame; cut by its idle deadline; interrupted; dropped after
    // its head.
    let whole = request(Script::new(ms(5), vec![ms(5)]));
    assert_eq!(rig.read(whole).await.0, 1);
    assert!(rig.read(stalled()).await.1.is_some());
    let mut open = Box::pin(rig.call(stalled()).await.unwrap().into_body());
    rig.interrupts.interrupt_all("maintenance");
    assert!(open.frame().await.unwrap().is_err());
    drop(rig.call(stalled()).await.unwrap());
    drop(local);
    let page = prometheus.render();
    let value = |name| series(&page, name, "");
    assert_eq!(value("adaptive_timeout_calls_total"), 4.0);
    assert_eq!(value("adaptive_timeout_responses_total"), 2.0);
    assert_eq!(value("adaptive_timeout_timeouts_total"), 1.0);
    let manual = series(
        &page,
        "adaptive_timeout_interrupts_total",
        ",reason=\"manual\"",
    );
    assert_eq!(manual, 1.0);
    assert_eq!(value("adaptive_timeout_latency_seconds_count"), 2.0);
    assert_eq!(value("adaptive_timeout_in_flight"), 0.0);
}

/// A body's total deadline bounds its head as a caller's deadline does (the peer's head
/// takes 500 ms): spent, the call is refused before it reaches the peer; shorter than the
/// head, it ends the call at its time as the caller's deadline, no miss for the peer.
#[tokio::test(start_paused = true)]
async fn a_bodys_total_deadline_bounds_its_head() {
    let mut rig = rig_with(TimeoutPolicy::default(), Propagation::grpc());
    let slow = || request(Script::new(ms(500), vec![]));
    let start = Instant::now();
    let spent = with(slow(), BodyDeadline::Within(Duration::ZERO));
    let err = rig.call(spent).await.err().expect("refused");
    assert_eq!(reason(&err), &Reason::BudgetSpent, "{err}");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(rig.seen.try_recv().is_err(), "the peer was reached");
    for _ in 0..2 {
        let start = Instant::now();
        let short = with(slow(), BodyDeadline::Within(ms(2)));
        let err = rig.call(short).await.err().expect("ended at its deadline");
        assert_eq!(start.elapsed(), ms(2), "{err}");
        let Reason::DeadlineExceeded {
            deadline,
            explanation,
        } = reason(&err)
        else {
            panic!("not the deadline: {err}");
        };
        assert_eq!(*deadline, ms(2));
        assert_eq!(explanation.source, DeadlineSource::Caller);
        let sent = rig.seen.recv().await.unwrap();
        assert_eq!(sent["grpc-timeout"], "2m");
    }
    let peer = rig.snapshot();
    assert_eq!(peer.state, PeerState::Healthy, "{peer:#?}");
    assert_eq!(peer.refused, 1, "{peer:#?}");
}
