//! Userinfo is no part of an HTTP peer: one peer for URIs that differ only in it, and no
//! password in errors, snapshots or traces.

use crate::support;

use http::Request;
use tower::{Layer, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, TimeoutPolicy};

use support::interrupted;
use support::ms;
use support::requests::{fast_or_hang, get};
use support::trace::capture;

#[tokio::test(start_paused = true)]
async fn userinfo_is_no_part_of_an_http_peer_and_never_shown() {
    let (out, _guard) = capture();

    let layer = AdaptiveTimeoutLayer::http()
        .policy(TimeoutPolicy::default().cold_start(ms(50)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(fast_or_hang());

    let secret = "http://admin:hunter2@db:5432/fast";
    svc.clone().oneshot(get(secret)).await.unwrap();
    svc.clone()
        .oneshot(get("http://db:5432/fast"))
        .await
        .unwrap();
    let err = interrupted(
        svc.clone()
            .oneshot(get("http://root:s3cret@db:5432/"))
            .await,
    );
    let host_header = Request::get("/fast")
        .header("host", "admin:hunter2@db:5432")
        .body(())
        .unwrap();
    svc.clone().oneshot(host_header).await.unwrap();

    let shown = [
        err.to_string(),
        format!("{err:?}"),
        format!("{:?}", handle.snapshot()),
        out.text(),
    ];
    assert!(
        out.text().contains("db:5432"),
        "the trace names the peer: {}",
        out.text()
    );
    for text in &shown {
        for secret in ["hunter2", "s3cret", "admin", "root"] {
            assert!(!text.contains(secret), "{secret} shown in: {text}");
        }
    }
    // The three URIs are one peer; the Host header names another (no scheme).
    let peers: Vec<_> = handle.snapshot().into_iter().map(|s| s.peer).collect();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(peers.iter().any(|p| &**p == "http://db:5432"), "{peers:?}");
    assert!(peers.iter().any(|p| &**p == "db:5432"), "{peers:?}");
    assert_eq!(err.peer(), "http://db:5432");
    assert_eq!(
        handle
            .peer(&"http://db:5432".parse().unwrap())
            .unwrap()
            .completed,
        2
    );
}
