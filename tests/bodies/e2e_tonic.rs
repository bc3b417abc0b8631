//! End to end with tonic over real TCP on 127.0.0.1: a hand-written `ping.Pinger` gRPC
//! service, and a tonic `Channel` under the layer.
//!
//! Covers: with `Propagation::grpc()`, the server sees a `grpc-timeout` no longer than the
//! client's deadline (and a caller's own tonic timeout caps it); keying (a client built
//! with `new(channel)` sends path-only URIs and goes untracked under `http()`, while
//! `with_origin` or `http_keyed` tracks it); and how a cut RPC surfaces.
//!
//! How a cut surfaces: tonic turns the layer's error into `Status::from_error`, a `Status`
//! with code `Unknown`, the `Interrupted`'s text as its message and the `Interrupted` as its
//! `source()`, so `Interrupted::find(&status)` finds it. With `grpc-timeout` propagation on,
//! the `Channel` also enforces the header the layer wrote, with its own timer: when that
//! timer wins (as it usually does, being polled first), the call ends with tonic's own
//! `Status` `Cancelled` ("Timeout expired") at the same deadline, and the layer sees an
//! ordinary error from the inner service.
#![cfg(feature = "http")]

use crate::support;

use std::time::{Duration, Instant};

use loopback::grpc::{start_server, PingReply, PingRequest, PingerClient};
use loopback::{bounded, Loopback};
use tonic::transport::Channel;
use tonic::Code;
use tower::ServiceBuilder;
use tower_adaptive_timeout::propagate::parse_grpc_timeout;
use tower_adaptive_timeout::{
    AdaptiveTimeout, AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, ByPeer, DeadlineSource, HttpPeer,
    Interrupted, PeerState, Propagation, Reason,
};

use support::e2e::{channel, loopback_policy, LoopbackPeer};

/// Far above any deadline a warmed-up loopback peer gets: a cut must come well before it.
const COLD_START: Duration = Duration::from_secs(5);
/// Samples a peer needs before its deadline follows its latency.
const MIN_SAMPLES: u64 = 10;

type Svc = AdaptiveTimeout<Channel, HttpPeer, ByPeer>;

/// A server, a client through the layer (built with `with_origin`), and the layer's handle.
async fn setup(
    propagation: Propagation,
) -> (Loopback, PingerClient<Svc>, AdaptiveTimeoutHandle<HttpPeer>) {
    let server = start_server(false).await.expect("bind 127.0.0.1");
    let layer = AdaptiveTimeoutLayer::http()
        .policy(loopback_policy(COLD_START, MIN_SAMPLES))
        .propagation(propagation)
        .build()
        .expect("a valid policy");
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(channel(&server).await);
    let client = PingerClient::with_origin(svc, server.uri(""));
    (server, client, handle)
}

/// Pings with `delay`, returning the reply or the status.
async fn ping<T>(client: &mut PingerClient<T>, delay: Duration) -> Result<PingReply, tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as hyper::body::Body>::Error: Into<tower::BoxError> + Send,
{
    bounded(client.ping_after(delay)).await
}

/// `MIN_SAMPLES` quick calls, after which the peer's deadline follows its latency.
async fn warm_up(client: &mut PingerClient<Svc>) {
    for _ in 0..MIN_SAMPLES {
        ping(client, Duration::from_millis(1)).await.unwrap();
    }
}

/// A call the server would answer only after an hour: its status, and how long it took.
async fn hung_call(client: &mut PingerClient<Svc>) -> (tonic::Status, Duration) {
    let started = Instant::now();
    let status = ping(client, Duration::from_secs(3600)).await.unwrap_err();
    (status, started.elapsed())
}

/// The `grpc-timeout` the server saw.
fn seen(reply: &PingReply) -> Duration {
    parse_grpc_timeout(reply.grpc_timeout.as_bytes())
        .unwrap_or_else(|e| panic!("grpc-timeout {:?}: {e}", reply.grpc_timeout))
}

#[tokio::test]
async fn the_server_sees_a_grpc_timeout_within_the_clients_deadline() {
    let (server, mut client, handle) = setup(Propagation::grpc()).await;

    let cold = seen(&ping(&mut client, Duration::ZERO).await.unwrap());
    let (deadline, source) = handle.deadline(&server.peer()).expect("tracked");
    assert_eq!((deadline, source), (COLD_START, DeadlineSource::ColdStart));
    assert!(cold <= deadline, "{cold:?} vs {deadline:?}");

    warm_up(&mut client).await;
    let (learned, source) = handle.deadline(&server.peer()).unwrap();
    assert_eq!(source, DeadlineSource::Quantile);
    let told = seen(&ping(&mut client, Duration::ZERO).await.unwrap());
    assert!(told <= learned, "{told:?} vs {learned:?}");
    assert!(
        told < COLD_START,
        "the learned deadline, not the cold start"
    );

    // The caller's own tonic timeout is a budget the layer reads: it caps the deadline.
    let budget = learned / 2;
    let mut req = tonic::Request::new(PingRequest::after(Duration::ZERO, "budget"));
    req.set_timeout(budget);
    let capped = seen(bounded(client.ping(req)).await.unwrap().get_ref());
    assert!(capped <= budget, "{capped:?} vs {budget:?}");
    let p = handle.peer(&server.peer()).unwrap();
    assert_eq!(p.samples, MIN_SAMPLES + 3, "every call recorded");
}

#[tokio::test]
async fn keying_a_tonic_client() {
    let server = start_server(false).await.unwrap();
    let channel = channel(&server).await;

    // `new(channel)`: the URI is path-only below the client, so `http()` finds no peer.
    // The call still gets the default policy's cold start, and propagates it.
    let layer = AdaptiveTimeoutLayer::http()
        .policy(loopback_policy(COLD_START, MIN_SAMPLES))
        .propagation(Propagation::grpc())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut untracked =
        PingerClient::new(ServiceBuilder::new().layer(layer).service(channel.clone()));
    let reply = ping(&mut untracked, Duration::ZERO).await.unwrap();
    assert_eq!(seen(&reply), COLD_START);
    assert_eq!(handle.peer_count(), 0, "{:?}", handle.snapshot());

    // `http_keyed`: name the channel's peer yourself, and keep tokens and propagation.
    let layer =
        AdaptiveTimeoutLayer::http_keyed(|_: &http::Request<tonic::body::Body>| Some("pinger"))
            .policy(loopback_policy(COLD_START, MIN_SAMPLES))
            .propagation(Propagation::grpc())
            .build()
            .unwrap();
    let handle = layer.handle();
    let mut keyed = PingerClient::new(ServiceBuilder::new().layer(layer).service(channel));
    for _ in 0..3 {
        ping(&mut keyed, Duration::ZERO).await.unwrap();
    }
    let p = handle.peer(&"pinger").expect("tracked under its own key");
    assert_eq!(p.samples, 3);
}

#[tokio::test]
async fn a_hung_rpc_ends_with_a_status_whose_source_is_interrupted() {
    // No propagation: only the layer's timer runs, so the cut is always the layer's.
    let (server, mut client, handle) = setup(Propagation::none()).await;
    warm_up(&mut client).await;
    let (learned, _) = handle.deadline(&server.peer()).unwrap();

    let (status, waited) = hung_call(&mut client).await;
    assert!(waited < COLD_START, "cut at the learned deadline");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(status.message().contains("interrupted"), "{status:?}");
    let cut = Interrupted::find(&status).expect("the Interrupted is the status's source");
    assert!(
        matches!(cut.reason(), Reason::DeadlineExceeded { .. }),
        "{cut}"
    );
    assert_eq!(cut.deadline(), Some(learned));
    assert_eq!(status.message(), cut.to_string());

    let p = handle.peer(&server.peer()).unwrap();
    assert_eq!((p.deadline_exceeded, p.state), (1, PeerState::Suspect));
}

#[tokio::test]
async fn with_grpc_propagation_a_hung_rpc_is_cut_at_the_same_deadline() {
    let (server, mut client, handle) = setup(Propagation::grpc()).await;
    warm_up(&mut client).await;
    let (learned, _) = handle.deadline(&server.peer()).unwrap();

    let (status, waited) = hung_call(&mut client).await;
    assert!(waited >= learned && waited < COLD_START, "{waited:?}");
    // Whichever timer won, the call ended at the deadline the layer gave it.
    match Interrupted::find(&status) {
        Some(cut) => {
            assert_eq!(status.code(), Code::Unknown, "{status:?}");
            assert_eq!(cut.deadline(), Some(learned));
        }
        None => {
            assert_eq!(status.code(), Code::Cancelled, "{status:?}");
            assert!(status.message().contains("Timeout expired"), "{status:?}");
        }
    }
}

/// When the `Channel`'s own timer on the propagated `grpc-timeout` wins, the layer takes
/// tonic's `TimeoutExpired` (within the millisecond the header rounds off) for the
/// deadline itself: the caller finds the `Interrupted`, and the hung peer gets its miss.
#[tokio::test]
async fn with_grpc_propagation_a_hung_rpc_counts_as_a_miss() {
    let (server, mut client, handle) = setup(Propagation::grpc()).await;
    warm_up(&mut client).await;
    let (status, _) = hung_call(&mut client).await;
    assert!(Interrupted::find(&status).is_some(), "{status:?}");
    let p = handle.peer(&server.peer()).unwrap();
    assert_eq!(
        (p.deadline_exceeded, p.state),
        (1, PeerState::Suspect),
        "{p:#?}"
    );
}
