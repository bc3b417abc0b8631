//! A download stalled mid-body: `tower::timeout` cannot cut it (the head has already
//! arrived, and its watch ended there), the layer's body wrapper can.
//!
//! A local HTTP server streams a frame every 20 ms; a fault proxy in front of it passes the
//! head and the first few hundred bytes, then holds everything, as a peer that vanished
//! mid-transfer would (no FIN, no RST).
//!
//! ```sh
//! cargo run --example slow_stream
//! ```

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use loopback::http_server::{self, get};
use loopback::{Fault, FaultProxy};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, Interrupted, TimeoutPolicy};

/// How long the demo watches the `tower::timeout` download before giving up on it.
const PATIENCE: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = http_server::start(Duration::ZERO).await?;
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.set(Fault::Truncate { after: 600 });
    let uri: http::Uri = format!("http://{}/stream/0/20", proxy.addr()).parse()?;

    println!("tower::timeout(2s) around the client:");
    let svc = ServiceBuilder::new()
        .timeout(Duration::from_secs(2))
        .service(http_server::client());
    let started = Instant::now();
    let response = svc.oneshot(get(uri.clone())).await?;
    println!(
        "  head after {:?}: {}",
        started.elapsed(),
        response.status()
    );
    let mut body = response.into_body();
    let mut bytes = 0;
    let read = tokio::time::timeout(PATIENCE, async {
        while let Some(frame) = body.frame().await {
            bytes += frame?.data_ref().map_or(0, |d| d.len());
        }
        Ok::<_, BoxError>(())
    });
    match read.await {
        Err(_) => println!(
            "  body: {bytes} bytes, then stuck for {PATIENCE:?} (the demo gives up; \
             TCP would take ~15 minutes)"
        ),
        Ok(end) => println!("  body ended: {end:?}"),
    }

    println!("\nAdaptiveTimeoutLayer::http().with_bodies():");
    let layer = AdaptiveTimeoutLayer::http()
        .policy(TimeoutPolicy::default().cold_start(Duration::from_millis(500)))
        .build()?;
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer.with_bodies())
        .service(http_server::client());
    let started = Instant::now();
    let response = svc.oneshot(get(uri)).await?;
    println!(
        "  head after {:?}: {}",
        started.elapsed(),
        response.status()
    );
    let mut body = std::pin::pin!(response.into_body());
    let mut bytes = 0;
    let end = loop {
        match body.as_mut().frame().await {
            Some(Ok(frame)) => bytes += frame.data_ref().map_or(0, |d| d.len()),
            Some(Err(err)) => break Some(err),
            None => break None,
        }
    };
    match end.as_ref().and_then(|e| Interrupted::find(&**e)) {
        Some(interrupted) => {
            println!(
                "  body: {bytes} bytes, then cut after {:?}:",
                started.elapsed()
            );
            println!("  {interrupted}");
        }
        None => println!("  body ended: {end:?}"),
    }
    for peer in handle.snapshot() {
        println!(
            "  {}: in flight {}, deadline exceeded {}, state {}",
            peer.peer, peer.in_flight, peer.deadline_exceeded, peer.state
        );
    }
    Ok(())
}
