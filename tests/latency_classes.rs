//! Latency classes and per-call floors, with `http::Request`s on tokio's paused clock: one
//! host serving a fast route and a rare slow one, keyed by authority as
//! `AdaptiveTimeoutLayer::http()` does.

pub mod support;

use std::time::Duration;

use http::{Request, Response};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, Deadline, DeadlineSource, HttpPeer, Interrupted,
    MinDeadline, Reason, TimeoutPolicy,
};

use support::ms;

/// The host: `/report...` answers in 500ms, anything else in 10ms; `/hang` never.
async fn host(req: Request<()>) -> Result<Response<()>, BoxError> {
    let path = req.uri().path();
    if path.starts_with("/hang") {
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
    let layer = AdaptiveTimeoutLayer::http()
        .policy(policy)
        .max_classes(max_classes)
        .build()
        .unwrap();
    let handle = layer.handle();
    (layer.layer(service_fn(host)), handle)
}

fn get(path: &str) -> Request<()> {
    Request::get(format!("http://reports.local{path}"))
        .body(())
        .unwrap()
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
    let mut req = get("/hang");
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
