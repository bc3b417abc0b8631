//! Responses classified, on tokio's paused clock: a peer that sheds load with fast 503s
//! does not teach the window that it is fast (with `HttpStatus`; without, the same burst
//! pulls the deadline to `min` and the first real answers are cut), a 503 is still proof
//! that the peer is alive, a response a classifier takes for a failure is not, and bodies
//! are classified by their head.
#![cfg(feature = "http")]

use crate::support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::classify::{AllSamples, ClassifyResponse, HttpStatus};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, HttpPeer, Outcome, PeerState, TimeoutPolicy,
};

use support::ms;
use support::requests::{get, PeerKeyOf};

const URI: &str = "http://api.internal:8080/";

/// How the peer answers now: with this status, after this long.
#[derive(Clone, Default)]
struct Peer(Arc<Mutex<Option<(StatusCode, Duration)>>>);

impl Peer {
    fn set(&self, status: u16, after: Duration) {
        let status = StatusCode::from_u16(status).unwrap();
        *self.0.lock().unwrap() = Some((status, after));
    }

    /// The peer as an `http` service whose responses have the body `B`.
    fn service<B: Default>(
        &self,
    ) -> impl Service<Request<()>, Response = Response<B>, Error = Infallible, Future: Send>
           + Clone
           + Send
           + 'static {
        let peer = self.clone();
        service_fn(move |_: Request<()>| {
            let answer = *peer.0.lock().unwrap();
            async move {
                let Some((status, after)) = answer else {
                    return std::future::pending().await;
                };
                tokio::time::sleep(after).await;
                let mut response = Response::new(B::default());
                *response.status_mut() = status;
                Ok(response)
            }
        })
    }
}

/// A peer behind the http layer at default settings, its responses classified by
/// `classify`.
fn rig<C>(
    classify: C,
) -> (
    impl Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone,
    AdaptiveTimeoutHandle<HttpPeer>,
    Peer,
)
where
    C: ClassifyResponse<Response<()>> + Clone,
{
    let layer = AdaptiveTimeoutLayer::http()
        .classify_responses(classify)
        .jitter_seed(7)
        .build()
        .unwrap();
    let handle = layer.handle();
    let peer = Peer::default();
    (layer.layer(peer.service()), handle, peer)
}

fn key() -> HttpPeer {
    get(URI).peer_key()
}

/// The peer answers 200 calls in 100ms, then sheds load for 70 s (longer than the 60 s
/// window) with a 503 in 1ms to a call every 10ms, then answers in 100ms again. Returns
/// the deadline before the burst, the lowest during it, and how the first 20 calls after
/// it ended.
async fn shed_load<C>(classify: C) -> (Duration, Duration, Vec<Result<(), BoxError>>)
where
    C: ClassifyResponse<Response<()>> + Clone,
{
    let (svc, handle, peer) = rig(classify);
    let deadline = || handle.deadline(&key()).unwrap().0;
    peer.set(200, ms(100));
    for _ in 0..200 {
        svc.clone().oneshot(get(URI)).await.unwrap();
    }
    let before = deadline();
    peer.set(503, ms(1));
    let mut lowest = before;
    for _ in 0..7_000 {
        let response = svc.clone().oneshot(get(URI)).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        lowest = lowest.min(deadline());
        tokio::time::sleep(ms(9)).await;
    }
    peer.set(200, ms(100));
    let mut after = Vec::new();
    for _ in 0..20 {
        after.push(svc.clone().oneshot(get(URI)).await.map(drop));
    }
    (before, lowest, after)
}

#[tokio::test(start_paused = true)]
async fn a_long_burst_of_fast_503s_does_not_pull_the_deadline_down() {
    let (before, lowest, after) = shed_load(HttpStatus).await;
    assert!(before > ms(200), "learned from 100ms answers: {before:?}");
    assert!(lowest >= before, "{before:?} fell to {lowest:?}");
    assert!(after.iter().all(Result::is_ok), "{after:?}");
}

#[tokio::test(start_paused = true)]
async fn without_classification_the_same_burst_pulls_the_deadline_to_min() {
    let (before, lowest, after) = shed_load(AllSamples).await;
    assert!(before > ms(200), "{before:?}");
    assert_eq!(lowest, TimeoutPolicy::default().min);
    assert!(after[0].is_err(), "the first real answer is cut");
}

#[tokio::test(start_paused = true)]
async fn a_503_is_an_answer_only_and_readmits_a_silent_peer() {
    let (svc, handle, peer) = rig(HttpStatus);
    peer.set(200, ms(10));
    for _ in 0..150 {
        svc.clone().oneshot(get(URI)).await.unwrap();
    }
    let learned = handle.deadline(&key()).unwrap().0;
    // Blackholed: two calls at once miss, and the peer is silent.
    *peer.0.lock().unwrap() = None;
    let (a, b) = tokio::join!(svc.clone().oneshot(get(URI)), svc.clone().oneshot(get(URI)));
    assert!(a.is_err() && b.is_err());
    assert_eq!(handle.peer(&key()).unwrap().state, PeerState::Silent);
    // Back, overloaded: the first probe's 503 proves it is alive.
    peer.set(503, ms(1));
    let mut readmitted = false;
    for _ in 0..100 {
        tokio::time::sleep(ms(10)).await;
        if svc.clone().oneshot(get(URI)).await.is_ok() {
            readmitted = true;
            break;
        }
    }
    assert!(readmitted);
    let p = handle.peer(&key()).unwrap();
    assert_eq!(p.state, PeerState::Healthy);
    assert_eq!((p.samples, p.completed), (150, 151), "{p:#?}");
    assert_eq!(handle.deadline(&key()).unwrap().0, learned);
}

#[tokio::test(start_paused = true)]
async fn a_response_classified_as_a_failure_is_neither_sample_nor_heartbeat() {
    // A sidecar's 502 says the peer behind it was not reached.
    let sidecar = |r: &Response<()>| match r.status() {
        StatusCode::BAD_GATEWAY => Outcome::Failure,
        _ => HttpStatus.classify(r),
    };
    let (svc, handle, peer) = rig(sidecar);
    peer.set(200, ms(10));
    svc.clone().oneshot(get(URI)).await.unwrap();
    peer.set(502, ms(1));
    for _ in 0..5 {
        svc.clone().oneshot(get(URI)).await.unwrap();
    }
    let p = handle.peer(&key()).unwrap();
    assert_eq!((p.samples, p.completed), (1, 1), "{p:#?}");
    assert_eq!((p.failures, p.consecutive_failures), (5, 5));
    assert!(p.last_response_age >= ms(5), "{p:#?}");
}

#[tokio::test(start_paused = true)]
async fn bodies_are_classified_by_their_head() {
    let layer = AdaptiveTimeoutLayer::http()
        .classify_responses(HttpStatus)
        .build()
        .unwrap()
        .with_bodies();
    let handle = layer.handle();
    let peer = Peer::default();
    let svc = layer.layer(peer.service::<Empty<Bytes>>());
    for (status, n) in [(200, 3), (503, 4)] {
        peer.set(status, ms(5));
        for _ in 0..n {
            let response = svc.clone().oneshot(get(URI)).await.unwrap();
            assert_eq!(response.status().as_u16(), status);
        }
    }
    let p = handle.peer(&key()).unwrap();
    assert_eq!((p.samples, p.completed, p.in_flight), (3, 7, 0), "{p:#?}");
}
