//! Latency classes and per-call floors, with `http::Request`s on tokio's paused clock: one
//! host serving a fast route and a rare slow one, keyed by authority as
//! `AdaptiveTimeoutLayer::http()` does.

use crate::support;

use std::time::Duration;

use http::{Request, Response};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, Deadline, DeadlineSource, HttpPeer, Interrupted,
    LatencyClass, MinDeadline, Reason, TimeoutPolicy,
};

use support::ms;

/// The host: `/report...` answers in 500ms, anything else in 10ms; a request with an
/// `x-hang` header never.
async fn host(req: Request<()>) -> Result<Response<()>, BoxError> {
    let path = req.uri().path();
    if req.headers().contains_key("x-hang") {
        std::future::pending::<()>().await;
    }
    let delay = if path.starts_with("/report") { 500 } else { 10 };
    tokio::time::sleep(ms(delay)).await;
    Ok(Response::new(()))
}

/// The http layer under `policy` (with `max_classes` classes per peer) over [`host`].
fn stack(
    policy: TimeoutPolicy,
    max_classes: usize,
) -> (
    impl Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone,
    AdaptiveTimeoutHandle<HttpPeer>,
) {
    let builder = AdaptiveTimeoutLayer::http()
        .policy(policy)
        .max_classes(max_classes);
    support::stack(builder, service_fn(host))
}

fn get(path: &str) -> Request<()> {
    Request::get(format!("http://reports.local{path}"))
        .body(())
        .unwrap()
}

/// A request to `path` the host never answers.
fn hang(path: &str) -> Request<()> {
    let mut req = get(path);
    req.headers_mut().insert("x-hang", "1".parse().unwrap());
    req
}

fn peer() -> HttpPeer {
    "http://reports.local".parse().unwrap()
}

/// Calls `path` once; the `Interrupted` it ended with, if it did.
async fn call<S>(svc: &S, req: Request<()>) -> Option<Interrupted>
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone,
{
    let err = svc.clone().oneshot(req).await.err()?;
    Some(
        err.downcast_ref::<Interrupted>()
            .expect("an Interrupted")
            .clone(),
    )
}

/// Warms the host up with `n` fast calls.
async fn warm<S>(svc: &S, n: usize)
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone,
{
    for i in 0..n {
        assert!(call(svc, get(&format!("/items/{i}"))).await.is_none());
    }
}

#[tokio::test(start_paused = true)]
async fn a_floor_raises_the_deadline_up_to_max_and_a_caller_deadline_still_cuts() {
    let (svc, handle) = stack(TimeoutPolicy::default().max(ms(2000)), 0);
    warm(&svc, 200).await;
    let (learned, _) = handle.deadline(&peer()).unwrap();
    assert!(learned < ms(30), "{learned:?}");

    // Without a floor the report is cut at the learned deadline.
    let cut = call(&svc, get("/report")).await.expect("cut");
    assert_eq!(cut.deadline(), Some(learned));

    // With one it is answered.
    let mut req = get("/report");
    req.extensions_mut().insert(MinDeadline(ms(800)));
    assert!(call(&svc, req).await.is_none());

    // A floor past the policy's max is cut to max; the explanation says why.
    let mut req = hang("/report");
    req.extensions_mut().insert(MinDeadline(ms(60_000)));
    let cut = call(&svc, req).await.expect("cut");
    assert_eq!(cut.deadline(), Some(ms(2000)));
    let Reason::DeadlineExceeded { explanation, .. } = cut.reason() else {
        panic!("{cut}")
    };
    assert_eq!(explanation.source, DeadlineSource::Floor);
    assert!(cut.to_string().contains("the call's floor"), "{cut}");

    // A caller's deadline shorter than the floor still wins. (An answer first: two misses
    // in a row would declare the host silent.)
    warm(&svc, 1).await;
    let mut req = get("/report");
    req.extensions_mut().insert(MinDeadline(ms(800)));
    req.extensions_mut().insert(Deadline(ms(100)));
    let cut = call(&svc, req).await.expect("cut");
    assert_eq!(cut.deadline(), Some(ms(100)));
}

/// Makes `calls` calls, one at a time: every `every`-th is the report (with `floor`, if
/// any), the rest fast lookups of ever-changing ids. Returns how many reports were cut,
/// and how many of the others.
async fn mixed<S>(svc: &S, calls: usize, every: usize, floor: Option<Duration>) -> (usize, usize)
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone,
{
    let (mut reports_cut, mut fast_cut) = (0, 0);
    for i in 1..=calls {
        if i % every == 0 {
            let mut req = get("/report");
            if let Some(floor) = floor {
                req.extensions_mut().insert(MinDeadline(floor));
            }
            reports_cut += usize::from(call(svc, req).await.is_some());
        } else {
            fast_cut += usize::from(call(svc, get(&format!("/items/{i}"))).await.is_some());
        }
    }
    (reports_cut, fast_cut)
}

#[tokio::test(start_paused = true)]
async fn a_rare_slow_route_is_never_cut_with_classes_and_every_time_without() {
    // 1 call in 2,000 is the 500ms report; the host's p99.9 is the 10ms lookups'.
    let (svc, handle) = stack(TimeoutPolicy::default(), 0);
    assert_eq!(
        mixed(&svc, 40_000, 2_000, None).await,
        (20, 0),
        "keyed by host alone"
    );
    let (deadline, _) = handle.deadline(&peer()).unwrap();
    assert!(deadline < ms(30), "{deadline:?}");

    // Classes by path: the report's class starts at cold start (1s), then learns its own.
    let (svc, handle) = stack(TimeoutPolicy::default(), 8);
    assert_eq!(mixed(&svc, 40_000, 2_000, None).await, (0, 0));
    let snap = handle.peer(&peer()).unwrap();
    let classes: Vec<_> = snap.classes.iter().map(|c| c.class.as_str()).collect();
    assert_eq!(classes, ["/items/:id", "/report"], "ids share a template");
    let report = &snap.classes[1];
    assert_eq!(report.samples, 20);
    assert!(report.deadline > ms(500), "{report:#?}");
    assert_eq!(report.explanation.class.as_deref(), Some("/report"));
    assert!(
        snap.deadline < ms(30),
        "the host's own deadline is the lookups': {snap:#?}"
    );

    // With a floor on the report: none cut, from the first.
    let (svc, _) = stack(TimeoutPolicy::default(), 8);
    assert_eq!(mixed(&svc, 40_000, 2_000, Some(ms(1000))).await, (0, 0));
}

#[tokio::test(start_paused = true)]
async fn classes_past_the_bound_share_the_peers_history_and_silence_is_per_peer() {
    let (svc, handle) = stack(TimeoutPolicy::default(), 2);
    warm(&svc, 150).await;
    for path in ["/a", "/b", "/c", "/d"] {
        assert!(call(&svc, get(path)).await.is_none());
    }
    let snap = handle.peer(&peer()).unwrap();
    let classes: Vec<_> = snap.classes.iter().map(|c| c.class.as_str()).collect();
    assert_eq!(classes, ["/items/:id", "/a"], "the first two seen");
    assert_eq!(snap.completed, 154);

    // A named class takes the place of the path's.
    let mut req = get("/items/1");
    req.extensions_mut().insert(LatencyClass::new("named"));
    assert!(call(&svc, req).await.is_none());

    // Two misses on different classes make the host silent: health is per peer.
    let cut = call(&svc, hang("/a")).await.expect("cut");
    assert!(
        matches!(cut.reason(), Reason::DeadlineExceeded { .. }),
        "{cut}"
    );
    assert!(cut.to_string().contains("class /a"), "{cut}");
    let cut = call(&svc, hang("/items/1")).await.expect("cut");
    assert!(matches!(cut.reason(), Reason::PeerSilent { .. }), "{cut}");
    let refused = call(&svc, get("/a")).await.expect("refused");
    assert!(
        matches!(refused.reason(), Reason::PeerSilent { .. }),
        "{refused}"
    );
}

#[tokio::test(start_paused = true)]
async fn any_request_type_names_its_class_with_a_closure() {
    type Query = (&'static str, &'static str, u64);
    let layer = AdaptiveTimeoutLayer::builder(|q: &Query| q.0)
        .latency_class(|q: &Query| (q.1 == "report").then_some("report"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|q: Query| async move {
        tokio::time::sleep(ms(q.2)).await;
        Ok::<_, BoxError>(())
    }));
    for _ in 0..200 {
        svc.clone().oneshot(("db", "get", 5)).await.unwrap();
    }
    // The report's class starts at cold start, not at the peer's 15ms.
    svc.clone().oneshot(("db", "report", 300)).await.unwrap();
    let snap = handle.peer(&"db").unwrap();
    assert!(snap.deadline < ms(20), "{snap:#?}");
    assert_eq!(
        snap.classes.len(),
        1,
        "unclassed calls stay in the peer's history"
    );
    let report = &snap.classes[0];
    assert_eq!((report.class.as_str(), report.samples), ("report", 1));
    assert_eq!(snap.completed, 201);

    let err = AdaptiveTimeoutLayer::builder(|q: &Query| q.0)
        .max_classes(65)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_classes");
}

/// A host behind a lossy link: `/items/...` answers in 10ms, `/stream` in 1ms; a request
/// with an `x-retransmit` header waits 200ms more (a reply segment sent again); one with
/// `x-hang` is never answered.
async fn lossy(req: Request<()>) -> Result<Response<()>, BoxError> {
    if req.headers().contains_key("x-hang") {
        std::future::pending::<()>().await;
    }
    let base = if req.uri().path().starts_with("/stream") {
        1
    } else {
        10
    };
    let lost = if req.headers().contains_key("x-retransmit") {
        200
    } else {
        0
    };
    tokio::time::sleep(ms(base + lost)).await;
    Ok(Response::new(()))
}

fn retransmitted(path: &str) -> Request<()> {
    let mut req = get(path);
    req.headers_mut()
        .insert("x-retransmit", "1".parse().unwrap());
    req
}

/// 500 lookups, one in 50 retransmitted, and a fast stream call after every fifth: the
/// peer's history has seen the link's 200ms; the stream's 100 answers have not.
async fn lossy_start<S>(svc: &S)
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone,
{
    for i in 1..=500 {
        let req = match i % 50 {
            0 => retransmitted(&format!("/items/{i}")),
            _ => get(&format!("/items/{i}")),
        };
        assert!(call(svc, req).await.is_none());
        if i % 5 == 0 {
            assert!(call(svc, get("/stream")).await.is_none());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_class_short_of_its_quantiles_answers_keeps_its_peers_deadline() {
    let builder = AdaptiveTimeoutLayer::http().policy(TimeoutPolicy::default());
    let (svc, handle) = support::stack(builder, service_fn(lossy));
    lossy_start(&svc).await;
    let snap = handle.peer(&peer()).unwrap();
    let stream = snap.classes.iter().find(|c| c.class == "/stream").unwrap();
    assert_eq!(stream.samples, 100);
    assert!(snap.deadline > ms(400), "{snap:#?}");
    assert_eq!(stream.deadline, snap.deadline, "{stream:#?}");
    assert_eq!(
        stream.explanation.class, None,
        "the peer's numbers: {stream:#?}"
    );

    // A stream call the link delays is answered, not cut at the stream's own 10ms.
    assert!(call(&svc, retransmitted("/stream")).await.is_none());

    // Once the stream's class holds the 1,000 answers its p99.9 needs (and the delayed one
    // is rarer than one in 1,000), its own deadline rules, shorter than its peer's: a
    // stalled stream call is cut at it.
    for _ in 0..3_000 {
        assert!(call(&svc, get("/stream")).await.is_none());
    }
    let snap = handle.peer(&peer()).unwrap();
    let stream = snap.classes.iter().find(|c| c.class == "/stream").unwrap();
    assert!(stream.samples >= 1_000, "{stream:#?}");
    assert!(stream.deadline < ms(30), "{stream:#?}");
    assert!(snap.deadline > ms(400), "{snap:#?}");
    let cut = call(&svc, hang("/stream")).await.expect("cut");
    assert_eq!(cut.deadline(), Some(stream.deadline));
    assert!(cut.to_string().contains("class /stream"), "{cut}");
}

#[tokio::test(start_paused = true)]
async fn a_callers_deadline_on_a_class_short_of_its_answers_is_weighed_against_its_peer() {
    let builder = AdaptiveTimeoutLayer::http().policy(TimeoutPolicy::default());
    let (svc, handle) = support::stack(builder, service_fn(lossy));
    lossy_start(&svc).await;
    // A lookup waits a retransmission while two stream calls, each with its caller's
    // 50 ms, wait one too: the callers' deadlines run out, but they are shorter than the
    // delays the peer (whose deadline the young class keeps) normally shows, so they are
    // no misses: the peer stays healthy and the lookup is answered.
    let lookup = call(&svc, retransmitted("/items/7"));
    let streams = async {
        let mut ended = Vec::new();
        for _ in 0..2 {
            let mut req = retransmitted("/stream");
            req.extensions_mut().insert(Deadline(ms(50)));
            ended.push(call(&svc, req).await.expect("cut at the caller's deadline"));
        }
        ended
    };
    let (lookup, streams) = tokio::join!(lookup, streams);
    assert!(lookup.is_none(), "{lookup:?}");
    for cut in streams {
        assert_eq!(cut.deadline(), Some(ms(50)), "{cut}");
        assert!(
            matches!(cut.reason(), Reason::DeadlineExceeded { .. }),
            "{cut}"
        );
    }
    let snap = handle.peer(&peer()).unwrap();
    assert_eq!(snap.state.as_str(), "healthy", "{snap:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_probe_of_a_silent_peer_is_explained_by_the_peers_numbers_not_its_class() {
    let (svc, _handle) = stack(TimeoutPolicy::default(), 8);
    warm(&svc, 200).await;
    // A busy class still short of `min_samples`: its own deadline is `cold_start`.
    for i in 0..30 {
        assert!(call(&svc, get(&format!("/cold/{i}"))).await.is_none());
    }
    // The host stops answering: the class's calls are cut, the host goes silent, and
    // the calls that go through are its probes, with a probe's deadline.
    let mut probes = 0;
    for _ in 0..40 {
        let cut = call(&svc, hang("/cold/1")).await.expect("cut or refused");
        if let Reason::DeadlineExceeded { explanation, .. } = cut.reason() {
            let deadline = cut.deadline().unwrap();
            if deadline < ms(1_000) {
                probes += 1;
                assert_eq!(explanation.class, None, "{cut}");
                assert_ne!(explanation.source, DeadlineSource::ColdStart, "{cut}");
            }
        }
        tokio::time::sleep(ms(50)).await;
    }
    assert!(probes > 5, "{probes} probes");
}
