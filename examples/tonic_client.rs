//! A tonic `Channel` under the layer, with the call's deadline propagated as `grpc-timeout`.
//!
//! A local gRPC server (`ping.Pinger/Ping`, answering after the request's `delay_ms`) prints
//! the `grpc-timeout` header each call arrives with. The client is a tonic `Channel` wrapped
//! with `AdaptiveTimeoutLayer::http().propagation(Propagation::grpc())`: the server first
//! sees the cold-start deadline, then, once the peer has enough samples, the deadline the
//! layer learned. A call the server sits on is cut at that deadline. Tonic turns the layer's
//! error into a `Status` (code `Unknown`, the message is the error's text) whose source is
//! the `Interrupted`. But a `Channel` also enforces the `grpc-timeout` header it is given,
//! with a timer of its own started a moment after the layer's: when that timer wins, the
//! call ends with tonic's `Status` `Cancelled` ("Timeout expired") at the same deadline.
//!
//! Keying: a client built with `new(channel)` sends path-only URIs (`/ping.Pinger/Ping`);
//! the `Channel` adds its endpoint's authority below the layer, so
//! `AdaptiveTimeoutLayer::http()` sees no peer and the calls go untracked (they get the
//! default policy's cold-start deadline and no history). Either build the client with
//! `with_origin(svc, endpoint_uri)`, as here, so the layer sees the authority, or key the
//! layer yourself: `AdaptiveTimeoutLayer::http_keyed(|_: &http::Request<tonic::body::Body>|
//! Some("pinger"))` names every call on the channel as one peer.
//!
//! ```text
//! cargo run --example tonic_client
//! ```
//!
//! It runs in real time, in well under a second.

mod common;

use std::time::Duration;

use loopback::bounded;
use loopback::grpc::{start_server, PingRequest, PingerClient};
use tonic::transport::Endpoint;
use tower::{BoxError, ServiceBuilder};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, Interrupted, Propagation, TimeoutPolicy};

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
    let svc = ServiceBuilder::new().layer(layer).service(channel);

    println!("a client built with new(channel): path-only URIs, the call goes untracked");
    let mut untracked = PingerClient::new(svc.clone());
    untracked
        .ping(PingRequest::after(Duration::ZERO, "new"))
        .await?;
    println!("  peers tracked: {}\n", handle.peer_count());

    println!("a client built with with_origin(svc, {origin}): keyed by its authority");
    let mut client = PingerClient::with_origin(svc, origin.clone());
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
    match Interrupted::find(&status) {
        Some(interrupted) => println!("  its source: {interrupted}"),
        // The Channel enforces the grpc-timeout the layer wrote, with its own timer: when
        // that timer wins the race, tonic reports its own `TimeoutExpired` instead.
        None => println!("  cut by the Channel's own timer on the propagated grpc-timeout"),
    }
    println!();
    print_snapshots(&handle.snapshot());
    Ok(())
}
