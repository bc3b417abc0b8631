//! What callers and proxies are told: every reason maps to its gRPC and HTTP status (on
//! tokio's paused clock); a tonic client over real TCP sees `DEADLINE_EXCEEDED` for a hung
//! call, with no source paths in the message; tonic clients keyed by their channel's
//! endpoint are tracked, and calls the layer cannot key are counted; a closure key with
//! propagation is refused at `build()`.
#![cfg(all(feature = "tonic", feature = "http"))]

use crate::support;

use std::time::Duration;

use http::StatusCode;
use loopback::grpc::{start_server, PingerClient};
use loopback::{bounded, Loopback};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tower::{service_fn, BoxError, Layer, ServiceBuilder, ServiceExt};
use tower_adaptive_timeout::{
    status, AdaptiveTimeoutLayer, ByPeer, Deadline, HttpPeer, Interrupted, PeerState, Propagation,
    TimeoutPolicy,
};

use support::e2e::{loopback_policy, LoopbackPeer};
use support::ms;
use support::peers::{rig, P};

/// The gRPC and HTTP statuses of `err`'s `Interrupted`.
fn codes(err: &BoxError) -> (Code, StatusCode) {
    let interrupted = Interrupted::find(&**err).expect("an Interrupted");
    let grpc = tonic::Status::from(interrupted.clone()).code();
    (grpc, status::http_status(interrupted))
}

#[tokio::test(start_paused = true)]
async fn every_reason_maps_to_its_status() {
    let rig = rig(TimeoutPolicy::default().cold_start(ms(100)));
    rig.warm(P::A, ms(5), 3).await;
    rig.peers.silence(P::A, true);
    let mut calls = JoinSet::new();
    rig.spawn(&mut calls, P::A);
    rig.spawn(&mut calls, P::A);
    let mut ended = Vec::new();
    while let Some(call) = calls.join_next().await {
        ended.push(codes(&call.unwrap().0.unwrap_err()));
    }
    ended.sort_by_key(|(code, _)| *code as i32);
    let expired = (Code::DeadlineExceeded, StatusCode::GATEWAY_TIMEOUT);
    let silenced = (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ended, [expired, silenced], "a miss, then the silence");
    let refused = rig.call(P::A, ms(5)).await.unwrap_err();
    assert_eq!(codes(&refused), silenced, "a fail-fast refusal");

    let cancelled = (Code::Cancelled, StatusCode::SERVICE_UNAVAILABLE);
    for fire in [
        |rig: &support::peers::Rig| {
            rig.interrupts.interrupt_peer(&P::B, "drain");
        },
        |rig: &support::peers::Rig| rig.interrupts.shutdown(),
    ] {
        let mut calls = JoinSet::new();
        rig.spawn_delay(&mut calls, P::B, ms(50));
        tokio::time::sleep(ms(1)).await;
        fire(&rig);
        let err = calls.join_next().await.unwrap().unwrap().0.unwrap_err();
        assert_eq!(codes(&err), cancelled);
    }

    // A spent budget is a timeout too; the proxy's helper answers it with a 504.
    let layer = AdaptiveTimeoutLayer::http().build().unwrap();
    let svc = layer.layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, BoxError>(http::Response::new(()))
    }));
    let mut req = http::Request::get("http://b:1/").body(()).unwrap();
    req.extensions_mut().insert(Deadline::at(Instant::now()));
    let err = svc.oneshot(req).await.unwrap_err();
    assert_eq!(codes(&err), expired);
    let response = status::http_response::<String>(err).unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let other: BoxError = "the client's own error".into();
    assert!(status::http_response::<String>(other).is_err());
    let other = status::grpc_error("the client's own error".into());
    assert!(other.downcast_ref::<tonic::Status>().is_none());
}

/// A loopback gRPC server, a channel to it, and a layer that propagates `grpc-timeout`
/// (cold start 5s, learned after 10 samples).
async fn grpc() -> (Loopback, Channel, AdaptiveTimeoutLayer<HttpPeer, ByPeer>) {
    let server = start_server(false).await.unwrap();
    let endpoint = Endpoint::from(server.uri(""));
    let channel = bounded(endpoint.connect()).await.unwrap();
    let layer = AdaptiveTimeoutLayer::http()
        .policy(loopback_policy(Duration::from_secs(5), 10))
        .propagation(Propagation::grpc())
        .build()
        .unwrap();
    (server, channel, layer)
}

#[tokio::test]
async fn a_tonic_client_sees_deadline_exceeded_without_source_paths() {
    let (server, channel, layer) = grpc().await;
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .map_err(status::grpc_error)
        .layer(layer)
        .service(channel);
    let mut client = PingerClient::with_origin(svc, server.uri(""));
    for _ in 0..10 {
        bounded(client.ping_after(ms(1))).await.unwrap();
    }
    let hung = bounded(client.ping_after(Duration::from_secs(3600))).await;
    let status = hung.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(!status.message().contains(".rs:"), "{}", status.message());
    let cut = Interrupted::find(&status).expect("the Interrupted is the status's source");
    assert!(cut.is_timeout() && cut.was_sent());
    assert!(format!("{cut:#}").contains("fired at src/"), "{cut:#}");
    let peer = handle.peer(&server.peer()).unwrap();
    assert_eq!(peer.state, PeerState::Suspect);
}

#[tokio::test]
async fn tonic_clients_keyed_by_their_channel_endpoint_and_untracked_calls_counted() {
    let (server, channel, layer) = grpc().await;
    let handle = layer.handle();

    // `new(channel)` sends path-only URIs: the layer cannot key them, and counts them.
    let mut unkeyed = PingerClient::new(layer.layer(channel.clone()));
    for _ in 0..2 {
        bounded(unkeyed.ping_after(ms(1))).await.unwrap();
    }
    assert_eq!((handle.peer_count(), handle.untracked_calls()), (0, 2));

    // The layer for the channel's endpoint: every call is that peer's, whatever its URI.
    let mut keyed = PingerClient::new(layer.for_peer(server.peer()).layer(channel));
    for _ in 0..3 {
        bounded(keyed.ping_after(ms(1))).await.unwrap();
    }
    assert_eq!(handle.peer(&server.peer()).unwrap().samples, 3);
    assert_eq!(handle.untracked_calls(), 2);
}

#[test]
fn a_closure_key_with_propagation_is_refused_at_build() {
    let closure = |_: &http::Request<()>| "peer";
    let err = AdaptiveTimeoutLayer::builder(closure)
        .propagation(Propagation::grpc())
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "propagation");
    assert!(err.to_string().contains("http_keyed"), "{err}");
    assert!(AdaptiveTimeoutLayer::builder(closure).build().is_ok());
    let keyed = AdaptiveTimeoutLayer::http_keyed(|_: &http::Request<()>| Some("peer"));
    assert!(keyed.propagation(Propagation::grpc()).build().is_ok());
}
