//! Per-call limits with `http::Request`s, on tokio's paused clock: the `Deadline`
//! extension and propagated budgets cap a call and are written back; a spent budget ends
//! the call before it reaches the inner service; a caller's own limit neither teaches the
//! window nor counts as a miss.

use crate::support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Request, Response};
use tokio::time::Instant;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::propagate::{parse_grpc_timeout, parse_millis};
use tower_adaptive_timeout::{
    AdaptiveTimeoutLayer, BodyDeadline, ByPeer, Deadline, DeadlineSource, HttpPeer, Interrupted,
    Propagation, Reason, TimeoutPolicy,
};

use support::interrupted;
use support::ms;
use support::requests::{get, PeerKeyOf};

/// An inner service that answers after 1s with the budget headers it received.
fn header_echo(
    reached: Arc<AtomicUsize>,
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Clone {
    service_fn(move |req: Request<()>| {
        reached.fetch_add(1, Ordering::Relaxed);
        async move {
            tokio::time::sleep(ms(1000)).await;
            let mut resp = Response::new(());
            *resp.headers_mut() = req.headers().clone();
            Ok(resp)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn the_shortest_limit_wins_and_is_propagated() {
    let name = HeaderName::from_static("x-request-timeout-ms");
    let layer = AdaptiveTimeoutLayer::http()
        .policy(TimeoutPolicy::default().cold_start(ms(2000)))
        .propagation(Propagation::grpc().millis_header(name.clone()))
        .build()
        .unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(header_echo(reached.clone()));

    // No limit of its own: the adaptive (cold-start) deadline is written out.
    let resp = svc.clone().oneshot(get("http://b:1/")).await.unwrap();
    let grpc = parse_grpc_timeout(resp.headers()["grpc-timeout"].as_bytes()).unwrap();
    assert_eq!(grpc, ms(2000));
    assert_eq!(resp.headers()[&name], "2000");

    // An incoming budget of 500ms caps the call, which then runs out.
    let capped = Request::get("http://b:1/")
        .header("grpc-timeout", "500m")
        .body(())
        .unwrap();
    let start = Instant::now();
    let err = interrupted(svc.clone().oneshot(capped).await);
    assert_eq!(Instant::now() - start, ms(500));
    let Reason::DeadlineExceeded { explanation, .. } = err.reason() else {
        panic!("{err}")
    };
    assert_eq!(explanation.source, DeadlineSource::Caller);

    // The Deadline extension caps it further; a malformed header is ignored.
    let mut req = Request::get("http://b:1/")
        .header("grpc-timeout", "soon")
        .body(())
        .unwrap();
    req.extensions_mut().insert(Deadline(ms(300)));
    assert_eq!(
        interrupted(svc.clone().oneshot(req).await).deadline(),
        Some(ms(300))
    );

    // A spent budget ends the call before it reaches the inner service.
    let before = reached.load(Ordering::Relaxed);
    let spent = Request::get("http://b:1/")
        .header("grpc-timeout", "0m")
        .body(())
        .unwrap();
    let err = interrupted(svc.oneshot(spent).await);
    assert_eq!(err.reason(), &Reason::BudgetSpent);
    assert_eq!(err.elapsed(), Duration::ZERO);
    assert_eq!(reached.load(Ordering::Relaxed), before);
}

#[tokio::test(start_paused = true)]
async fn caller_limits_neither_teach_the_window_nor_count_as_misses() {
    let layer = AdaptiveTimeoutLayer::http().build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(header_echo(Arc::new(AtomicUsize::new(0))));
    // Limits below the policy's `min` (and the peer's normal latency) are not misses.
    for _ in 0..5 {
        let mut req = get("http://c:1/");
        req.extensions_mut().insert(Deadline(ms(5)));
        interrupted(svc.clone().oneshot(req).await);
    }
    let snap = handle.peer(&get("http://c:1/").peer_key()).unwrap();
    assert_eq!(
        snap.samples, 0,
        "a caller's own limit says nothing about the peer"
    );
    assert_eq!(snap.state, tower_adaptive_timeout::PeerState::Healthy);
    assert_eq!(snap.deadline_exceeded, 5);
}

#[tokio::test(start_paused = true)]
async fn an_inner_error_at_the_propagated_deadline_counts_as_a_miss() {
    let layer = AdaptiveTimeoutLayer::http()
        .policy(TimeoutPolicy::default().cold_start(ms(200)))
        .propagation(Propagation::grpc())
        .build()
        .unwrap();
    let handle = layer.handle();
    let early = layer.layer(service_fn(|_: Request<()>| async {
        Err::<Response<()>, BoxError>("refused".into())
    }));
    // The inner stack enforces the budget it was handed, as tonic's Channel does.
    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        let budget = parse_grpc_timeout(req.headers()["grpc-timeout"].as_bytes()).unwrap();
        tokio::time::sleep(budget).await;
        Err::<Response<()>, BoxError>("timeout expired".into())
    }));
    let err = interrupted(svc.clone().oneshot(get("http://d:1/")).await);
    assert_eq!(err.deadline(), Some(ms(200)));
    let snap = handle.peer(&"http://d:1".parse().unwrap()).unwrap();
    assert_eq!((snap.completed, snap.deadline_exceeded), (0, 1));
    // An error before the deadline is the inner service's own and passes through.
    let err = early.oneshot(get("http://d:1/")).await.unwrap_err();
    assert!(err.downcast_ref::<Interrupted>().is_none(), "{err}");
}

/// The budget headers a call to a layer with grpc and millis propagation hands its callee,
/// for a request built by `req`.
async fn propagated(req: Request<()>) -> (String, String) {
    let resp = budget_layer().layer(service_fn(echo::<()>)).oneshot(req);
    let (grpc, millis) = written(resp.await.unwrap().headers());
    (
        grpc.expect("grpc-timeout written"),
        millis.expect("millis written"),
    )
}

/// The name of the milliseconds header these tests propagate.
const MILLIS: &str = "x-request-timeout-ms";

/// A layer propagating `grpc-timeout` and the milliseconds header.
fn budget_layer() -> AdaptiveTimeoutLayer<HttpPeer, ByPeer> {
    AdaptiveTimeoutLayer::http()
        .propagation(Propagation::grpc().millis_header(HeaderName::from_static(MILLIS)))
        .build()
        .unwrap()
}

/// An inner service that answers at once with the headers it received.
async fn echo<B: Default>(req: Request<()>) -> Result<Response<B>, Infallible> {
    let mut resp = Response::new(B::default());
    *resp.headers_mut() = req.headers().clone();
    Ok(resp)
}

/// The `grpc-timeout` and milliseconds values in `headers`, each written at most once.
fn written(headers: &http::HeaderMap) -> (Option<String>, Option<String>) {
    let text = |n: &str| {
        let all: Vec<_> = headers.get_all(n).iter().collect();
        assert!(all.len() <= 1, "{n} written at most once: {all:?}");
        all.first().map(|v| v.to_str().unwrap().to_owned())
    };
    (text("grpc-timeout"), text(MILLIS))
}

fn with_deadline(d: Duration) -> Request<()> {
    let mut req = get("http://e:1/");
    req.extensions_mut().insert(Deadline(d));
    req
}

#[tokio::test(start_paused = true)]
async fn a_live_budget_never_propagates_as_zero_nor_grows() {
    // Under a millisecond: the millis header says 1 (0 would read as spent), gRPC says
    // the nanoseconds exactly.
    let (grpc, millis) = propagated(with_deadline(Duration::from_micros(400))).await;
    assert_eq!((grpc.as_str(), millis.as_str()), ("400000n", "1"));
    let (grpc, millis) = propagated(with_deadline(Duration::from_nanos(1))).await;
    assert_eq!((grpc.as_str(), millis.as_str()), ("1n", "1"));
    // From a millisecond on: whole milliseconds, rounded down, in both.
    let (grpc, millis) = propagated(with_deadline(Duration::from_micros(1_999))).await;
    assert_eq!((grpc.as_str(), millis.as_str()), ("1m", "1"));
    let (grpc, millis) = propagated(with_deadline(Duration::from_micros(250_700))).await;
    assert_eq!((grpc.as_str(), millis.as_str()), ("250m", "250"));
}

#[tokio::test(start_paused = true)]
async fn duplicate_budget_headers_give_the_smallest_valid_budget() {
    // A malformed first value must not hide a valid one, nor a larger one a smaller one.
    let req = Request::get("http://e:1/")
        .header("grpc-timeout", "soon")
        .header("grpc-timeout", "800m")
        .header("grpc-timeout", "5m")
        .body(())
        .unwrap();
    assert_eq!(propagated(req).await, ("5m".into(), "5".into()));
    let req = Request::get("http://e:1/")
        .header("x-request-timeout-ms", "-1")
        .header("x-request-timeout-ms", "7")
        .header("x-request-timeout-ms", "900")
        .body(())
        .unwrap();
    assert_eq!(propagated(req).await, ("7m".into(), "7".into()));
}

/// The budget headers the callee saw for `req`, through a layer watching bodies: `None`
/// for a header not written.
async fn propagated_whole(req: Request<()>) -> (Option<String>, Option<String>) {
    let svc = budget_layer()
        .with_bodies()
        .layer(service_fn(echo::<String>));
    written(svc.oneshot(req).await.unwrap().headers())
}

#[tokio::test(start_paused = true)]
async fn whole_call_deadlines_past_a_header_are_not_written_and_the_rest_parse_back() {
    let whole = |ext: BodyDeadline, caller: Option<Duration>| {
        let mut req = get("http://e:1/");
        req.extensions_mut().insert(ext);
        if let Some(d) = caller {
            req.extensions_mut().insert(Deadline::Within(d));
        }
        req
    };
    // `Duration::MAX` is no limit: nothing is written, as a body or a caller's deadline.
    let none = (None, None);
    let req = whole(BodyDeadline::Within(Duration::MAX), None);
    assert_eq!(propagated_whole(req).await, none);
    let req = whole(BodyDeadline::Caller, Some(Duration::MAX));
    assert_eq!(propagated_whole(req).await, none);
    let mut req = get("http://e:1/");
    req.extensions_mut().insert(Deadline::Within(Duration::MAX));
    assert_eq!(propagated_whole(req).await, none);

    // Every value written parses back with the crate's own parsers, no larger than the
    // deadline; a header that cannot hold a deadline is not written.
    let grpc_max = Duration::from_secs(99_999_999 * 3600);
    let millis_max = Duration::from_millis(9_999_999_999_999_999_999);
    let boundaries = [
        grpc_max,
        grpc_max + Duration::from_nanos(3_599_999_999_999),
        grpc_max + Duration::from_secs(3600),
        millis_max,
        millis_max + Duration::from_nanos(999_999),
        millis_max + Duration::from_millis(1),
        Duration::from_millis(u64::MAX),
        Duration::MAX - Duration::from_nanos(1),
    ];
    for d in boundaries {
        let (grpc, millis) = propagated_whole(whole(BodyDeadline::Within(d), None)).await;
        assert_eq!(
            grpc.is_some(),
            d < grpc_max + Duration::from_secs(3600),
            "{d:?}"
        );
        assert_eq!(
            millis.is_some(),
            d < millis_max + Duration::from_millis(1),
            "{d:?}"
        );
        if let Some(grpc) = grpc {
            let back = parse_grpc_timeout(grpc.as_bytes()).expect("grpc-timeout parses back");
            assert!(back <= d, "{grpc} for {d:?}");
        }
        if let Some(millis) = millis {
            let back = parse_millis(millis.as_bytes()).expect("the millis header parses back");
            assert!(back <= d, "{millis} for {d:?}");
        }
    }
}
