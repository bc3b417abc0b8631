//! A hyper-util HTTP client under the layer, calling three local hyper servers.
//!
//! The servers on 127.0.0.1 answer after about 1ms, 10ms and 40ms. The client is
//! `hyper_util::client::legacy::Client` wrapped with `AdaptiveTimeoutLayer::http()` through
//! `tower::ServiceBuilder`, so each server (keyed by scheme and authority) gets a deadline
//! from its own latency. After some calls the example prints what the layer knows about
//! each peer, then calls a path on the slowest server that never answers: the call is cut
//! at that server's learned deadline, and the example prints the error it ends with.
//!
//! ```text
//! cargo run --example hyper_client
//! ```
//!
//! It runs in real time, in about two seconds.

mod common;

use std::time::Duration;

use loopback::bounded;
use loopback::http_server::{self, get};
use tokio::task::JoinSet;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, HttpPeer, Interrupted, TimeoutPolicy};

use common::{millis, print_snapshots};

/// Calls per server before the table is printed.
const CALLS: usize = 40;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let fast = http_server::start(Duration::from_millis(1)).await?;
    let medium = http_server::start(Duration::from_millis(10)).await?;
    let slow = http_server::start(Duration::from_millis(40)).await?;

    // Deadline = clamp(p99 x 2 + 20ms, 10ms, 30s); 2s until a peer has 20 samples. The
    // margin keeps loopback scheduling hiccups from counting as misses.
    let policy = TimeoutPolicy::default()
        .quantile(0.99)
        .margin(Duration::from_millis(20))
        .cold_start(Duration::from_secs(2))
        .recompute_every(10);
    let layer = AdaptiveTimeoutLayer::http().policy(policy).build()?;
    let handle = layer.handle();
    let client = ServiceBuilder::new()
        .layer(layer)
        .service(http_server::client());

    // One task per server, each making its calls one after another.
    let mut calls = JoinSet::new();
    for server in [&fast, &medium, &slow] {
        let (client, uri) = (client.clone(), server.uri("/"));
        calls.spawn(async move {
            for _ in 0..CALLS {
                let response = client.clone().oneshot(get(uri.clone())).await?;
                assert!(response.status().is_success());
            }
            Ok::<_, BoxError>(())
        });
    }
    while let Some(done) = calls.join_next().await {
        done??;
    }
    println!("after {CALLS} calls to each server:\n");
    print_snapshots(&handle.snapshot());

    // The slowest server's /hang never answers. Without the layer this call would wait
    // until TCP gave up; with it, the call ends at the server's own learned deadline.
    let started = std::time::Instant::now();
    let err = bounded(client.clone().oneshot(get(slow.uri("/hang"))))
        .await
        .expect_err("the server never answers /hang");
    let interrupted = Interrupted::find(&*err).ok_or("expected an Interrupted error")?;
    println!(
        "\nGET {} returned after {}:\n{interrupted}",
        slow.uri("/hang"),
        millis(started.elapsed())
    );
    // The key the layer gave these calls: the server's scheme and authority.
    let slow_peer: HttpPeer = format!("http://{}", slow.addr()).parse()?;
    let after = handle
        .peer(&slow_peer)
        .ok_or("the slow server is tracked")?;
    println!(
        "\n{slow_peer} is now {} ({} call cut, recorded as a censored sample)",
        after.state, after.deadline_exceeded
    );
    Ok(())
}
