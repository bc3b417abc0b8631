//! A tonic `Channel` under the layer, with the call's deadline propagated as `grpc-timeout`
//! and the layer's errors reaching the client as gRPC status codes.
//!
//! A local gRPC server (`ping.Pinger/Ping`, answering after the request's `delay_ms`) prints
//! the `grpc-timeout` header each call arrives with. The client is a tonic `Channel` wrapped
//! with `AdaptiveTimeoutLayer::http().propagation(Propagation::grpc())`: the server first
//! sees the cold-start deadline, then, once the peer has enough samples, the deadline the
//! layer learned. A call the server sits on is cut at that deadline, and with
//! `map_err(status::grpc_error)` over the layer the client sees `DEADLINE_EXCEEDED` (a
//! silent peer is `UNAVAILABLE`, an interrupt by hand `CANCELLED`) with a message that
//! says what happened; the `Status`'s source is the `Interrupted`. (Without the mapping,
//! tonic reports any error of the service under it as `Unknown`.)
//!
//! Keying: a client built with `new(channel)` sends path-only URIs (`/ping.Pinger/Ping`);
//! the `Channel` adds its endpoint's authority below the layer, so
//! `AdaptiveTimeoutLayer::http()` sees no peer and the calls go untracked (the default
//! policy's cold-start deadline, no history; counted in `untracked_calls`). Key the layer
//! by the channel's endpoint instead: `layer.for_peer(peer).layer(channel)`, as here (a
//! `FixedPeer`: ready when the channel is, fail fast while the peer is silent), or build
//! the client with `with_origin(svc, endpoint_uri)`.
//!
//! ```text
//! cargo run --example tonic_client --features tonic
//! ```
//!
//! It runs in real time, in well under a second.

mod common;

use std::time::Duration;

use loopback::bounded;
use loopback::grpc::{start_server, PingRequest, PingerClient};
use tonic::transport::Endpoint;
use tower::{BoxError, ServiceBuilder};
use tower_adaptive_timeout::{
    status, AdaptiveTimeoutLayer, HttpPeer, Interrupted, Propagation, TimeoutPolicy,
};

use common::print_snapshots;

/// Calls before the table is printed.
const CALLS: usize = 14;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = start_server(true).await?;
    let origin = server.uri("");
    let channel = Endpoint::from(origin.clone()).connect().await?;

    // Deadline = clamp(p99 x 2 + 20ms, 10ms, 30s); 1s until a peer has 10 samples.
    let policy = TimeoutPolicy::default()
        .quantile(0.99)
        .margin(Duration::from_millis(20))
        .min_samples(10)
        .recompute_every(5);
    let layer = AdaptiveTimeoutLayer::http()
        .policy(policy)
        .propagation(Propagation::grpc())
        .build()?;
    let handle = layer.handle();

    println!("a client built with new(channel): path-only URIs, the call goes untracked");
    let mut untracked = PingerClient::new(
        ServiceBuilder::new()
            .layer(layer.clone())
            .service(channel.clone()),
    );
    untracked
        .ping(PingRequest::after(Duration::ZERO, "new"))
        .await?;
    let (peers, untracked) = (handle.peer_count(), handle.untracked_calls());
    println!("  peers tracked: {peers}, untracked calls: {untracked}\n");

    println!("a client over the layer for the channel's endpoint, {origin}");
    let peer: HttpPeer = origin.to_string().parse()?;
    let svc = ServiceBuilder::new()
        .map_err(status::grpc_error)
        .layer(layer.for_peer(peer))
        .service(channel);
    let mut client = PingerClient::new(svc);
    for i in 0..CALLS {
        let reply = client
            .ping(PingRequest::after(
                Duration::from_millis(5),
                &format!("#{i}"),
            ))
            .await?
            .into_inner();
        assert!(
            !reply.grpc_timeout.is_empty(),
            "the deadline was propagated"
        );
    }
    println!("\nafter {CALLS} calls:\n");
    print_snapshots(&handle.snapshot());

    println!("\na call the server sits on for a minute:");
    let hung = client.ping(PingRequest::after(Duration::from_secs(60), "hung"));
    let status = bounded(hung)
        .await
        .expect_err("the call is cut before the server answers");
    println!("  tonic::Status {:?}: {}", status.code(), status.message());
    if let Some(interrupted) = Interrupted::find(&status) {
        println!("  where: {interrupted:#}");
    }
    println!();
    print_snapshots(&handle.snapshot());
    Ok(())
}
