//! Prometheus metrics: per-peer counters, gauges and latency, scraped over HTTP.
//!
//! Installs the `metrics-exporter-prometheus` recorder, serves its page at
//! `http://127.0.0.1:<port>/metrics` (a hyper server), sends calls to three simulated peers (one of which
//! never answers, so it times out, is declared silent and then fails fast), scrapes the
//! page over HTTP and prints the `adaptive_timeout_` series. Runs in about half a second:
//!
//! ```text
//! cargo run --example metrics --features metrics
//! ```

use std::time::Duration;

use hyper::StatusCode;
use loopback::{page, Loopback};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinSet;
use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, TimeoutPolicy};

/// A call to `peer`, answered after `latency` (never, for `None`).
struct Call {
    peer: &'static str,
    latency: Option<Duration>,
}

const LATENCY_BUCKETS: [f64; 8] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25];

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The recorder first: peers register their series when they are first tracked.
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("adaptive_timeout_latency_seconds".into()),
            &LATENCY_BUCKETS,
        )?
        .install_recorder()?;
    tower_adaptive_timeout::export::describe_metrics();
    let server = serve(prometheus).await?;
    println!("scrape endpoint: {}", server.uri("/metrics"));

    let layer = AdaptiveTimeoutLayer::builder(|c: &Call| c.peer)
        .policy(
            TimeoutPolicy::default()
                .cold_start(Duration::from_millis(100))
                .min_samples(5),
        )
        .build()?;
    let svc = layer.layer(service_fn(|c: Call| async move {
        match c.latency {
            Some(latency) => tokio::time::sleep(latency).await,
            None => std::future::pending().await,
        }
        Ok::<_, BoxError>(c.peer)
    }));

    // Two answering peers, twenty calls each, all at once.
    let mut calls = JoinSet::new();
    for i in 0..20 {
        for (peer, ms) in [("cache:6379", 2 + i % 3), ("db:5432", 10 + i % 7)] {
            let latency = Some(Duration::from_millis(ms));
            calls.spawn(svc.clone().oneshot(Call { peer, latency }));
        }
    }
    // A peer that stopped answering: three calls 10ms apart. The first two run out their
    // deadline (the second declares the peer silent), which interrupts the third.
    for _ in 0..3 {
        let call = Call {
            peer: "gone:9000",
            latency: None,
        };
        calls.spawn(svc.clone().oneshot(call));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let results = calls.join_all().await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    println!("{} calls, {failed} interrupted", results.len());

    // The silent peer now fails fast.
    let refused = svc
        .clone()
        .oneshot(Call {
            peer: "gone:9000",
            latency: None,
        })
        .await
        .unwrap_err();
    println!("next call to gone:9000: {refused}\n");

    let page = scrape(&server).await?;
    let mut series: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("adaptive_timeout_"))
        .collect();
    series.sort_unstable();
    for line in series {
        println!("{line}");
    }
    Ok(())
}

/// Serves the recorder's page to every request on a loopback port chosen by the OS.
async fn serve(prometheus: PrometheusHandle) -> std::io::Result<Loopback> {
    page::serve(move |_| (StatusCode::OK, prometheus.render())).await
}

/// `GET /metrics`; returns the body.
async fn scrape(server: &Loopback) -> Result<String, BoxError> {
    let response = page::fetch(server.uri("/metrics")).await?;
    if response.status() != StatusCode::OK {
        return Err(format!("scrape failed: {}", response.status()).into());
    }
    Ok(response.into_body())
}
