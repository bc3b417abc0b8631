//! The metric series a peer gets, read through a local `metrics` recorder (so this binary
//! installs no global one): a peer tracked again starts with its state gauge healthy, and
//! no label shows an HTTP peer's userinfo.
#![cfg(feature = "metrics")]

use crate::support;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use tower::{Layer, Service};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, PeerState, TimeoutPolicy};

use support::ms;
use support::requests::{fast_or_hang, get};

/// The value of `adaptive_timeout_state` for `peer` in a Prometheus page.
fn state_gauge(page: &str, peer: &str) -> Option<f64> {
    let series = format!("adaptive_timeout_state{{peer=\"{peer}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.parse().unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_peer_tracked_again_starts_healthy_and_labels_hide_userinfo() {
    let recorder: PrometheusRecorder = PrometheusBuilder::new().build_recorder();
    let scrape = recorder.handle();
    let layer = AdaptiveTimeoutLayer::http()
        .policy(TimeoutPolicy::default().cold_start(ms(50)))
        .max_peers(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(fast_or_hang());
    // A call made (and its peer tracked) under the local recorder, awaited after.
    let call = |uri: &str| {
        let mut svc = svc.clone();
        let req = get(uri);
        metrics::with_local_recorder(&recorder, move || svc.call(req))
    };

    // Two misses make db silent.
    for _ in 0..2 {
        assert!(call("http://admin:hunter2@db:1/").await.is_err());
    }
    let db = "http://db:1".parse().unwrap();
    assert_eq!(handle.peer(&db).unwrap().state, PeerState::Silent);
    assert_eq!(state_gauge(&scrape.render(), "http://db:1"), Some(2.0));
    // Another peer takes db's place in the table, then db takes it back.
    call("http://other:1/fast").await.unwrap();
    assert!(handle.peer(&db).is_none(), "db was evicted");
    call("http://admin:hunter2@db:1/fast").await.unwrap();
    assert_eq!(handle.peer(&db).unwrap().state, PeerState::Healthy);

    let page = scrape.render();
    assert_eq!(state_gauge(&page, "http://db:1"), Some(0.0), "{page}");
    assert!(
        !page.contains("hunter2") && !page.contains("admin"),
        "{page}"
    );
}
