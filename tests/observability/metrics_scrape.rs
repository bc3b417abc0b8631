//! The `metrics` export, scraped as Prometheus text over real HTTP on 127.0.0.1: answered
//! calls, timeouts, a peer declared silent, fail-fast, a manual interrupt, a peer that
//! refuses connections and an untracked call each show up in their series, with the peer
//! label and the counts of calls made.
//!
//! The `metrics` recorder is global to the process, so this binary installs it once and
//! checks everything from one test. The bound on series runs under a recorder of its own,
//! local to its thread.
#![cfg(feature = "metrics")]

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::header::CONTENT_LENGTH;
use hyper::{Method, StatusCode};
use loopback::{page, Loopback};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinSet;
use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutLayer, DeadlineSource, Interrupted, Reason, TimeoutPolicy,
};

use support::{echo_keys, ms};

/// The peer whose calls fail at once with connection refused (its process is down).
const DOWN: &str = "down:6";

/// A call to `peer`, answered after `latency` (never, for `None`); calls to [`DOWN`] fail.
struct Call {
    peer: &'static str,
    latency: Option<Duration>,
}

fn call(peer: &'static str, latency: Option<u64>) -> Call {
    Call {
        peer,
        latency: latency.map(ms),
    }
}

/// The simulated peers behind a layer keyed by `Call::peer`.
fn service(
    layer: &AdaptiveTimeoutLayer<&'static str, fn(&Call) -> &'static str>,
) -> tower::util::BoxCloneService<Call, &'static str, BoxError> {
    let inner = service_fn(|c: Call| async move {
        if c.peer == DOWN {
            return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into());
        }
        match c.latency {
            Some(latency) => tokio::time::sleep(latency).await,
            None => std::future::pending().await,
        }
        Ok::<_, BoxError>(c.peer)
    });
    tower::util::BoxCloneService::new(layer.layer(inner))
}

fn key(c: &Call) -> &'static str {
    c.peer
}

fn reason(r: &Result<&'static str, BoxError>) -> Option<&'static str> {
    let err = r.as_ref().err()?;
    Some(err.downcast_ref::<Interrupted>()?.reason().as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_shows_every_series_with_peer_labels() {
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("adaptive_timeout_latency_seconds".into()),
            &[0.001, 0.01, 0.1, 1.0],
        )
        .unwrap()
        .install_recorder()
        .expect("the only recorder in this binary");
    tower_adaptive_timeout::export::describe_metrics();
    let server = serve(prometheus).await;

    let policy = TimeoutPolicy::default()
        .cold_start(ms(100))
        .min_samples(5)
        .probe_backoff(Duration::from_secs(10))
        .probe_backoff_max(Duration::from_secs(10));
    let layer = AdaptiveTimeoutLayer::builder(key as fn(&Call) -> &'static str)
        .policy(policy.clone())
        .peer_policy("held:3", policy.clone().cold_start(Duration::from_secs(10)))
        .build()
        .unwrap();
    let interrupts = layer.interrupt_handle();
    let handle = layer.handle();
    let svc = service(&layer);

    // fast:1 answers 30 calls in 2ms each, all at once.
    let mut calls = JoinSet::new();
    for _ in 0..30 {
        calls.spawn(svc.clone().oneshot(call("fast:1", Some(2))));
    }
    for r in calls.join_all().await {
        assert_eq!(r.unwrap(), "fast:1");
    }

    // gone:2 never answers: of three calls 10ms apart, the first two run out their 100ms
    // deadline (the second declares the peer silent) and the third is interrupted.
    let mut calls = JoinSet::new();
    for _ in 0..3 {
        calls.spawn(svc.clone().oneshot(call("gone:2", None)));
        tokio::time::sleep(ms(10)).await;
    }
    let mut reasons: Vec<_> = calls.join_all().await.iter().map(reason).collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        [
            Some("deadline_exceeded"),
            Some("peer_silent"),
            Some("peer_silent")
        ],
        "the declaring miss reports the silence"
    );
    // ... and the next call fails fast (the first probe is 10s away).
    let refused = svc.clone().oneshot(call("gone:2", None)).await;
    assert_eq!(reason(&refused), Some("peer_silent"));

    // held:3 is interrupted by hand while its call is in flight.
    let held = tokio::spawn(svc.clone().oneshot(call("held:3", Some(10_000))));
    tokio::time::sleep(ms(20)).await;
    assert!(interrupts.interrupt_peer(&"held:3", "test"));
    assert_eq!(reason(&held.await.unwrap()), Some("manual"));

    // down:6 refuses 5 connections: failures, not answers, and no state change.
    for _ in 0..5 {
        let err = svc.clone().oneshot(call(DOWN, Some(1))).await.unwrap_err();
        assert!(err.downcast_ref::<std::io::Error>().is_some(), "{err}");
    }
    let down = handle.peer(&DOWN).unwrap();
    assert_eq!((down.failures, down.consecutive_failures), (5, 5));

    // A second layer tracks one peer: while solo:4 is busy, overflow:5 goes untracked.
    let small = AdaptiveTimeoutLayer::builder(key as fn(&Call) -> &'static str)
        .policy(policy.cold_start(Duration::from_secs(10)))
        .max_peers(1)
        .build()
        .unwrap();
    let small_svc = service(&small);
    let busy = tokio::spawn(small_svc.clone().oneshot(call("solo:4", Some(50))));
    tokio::time::sleep(ms(10)).await;
    let overflow = small_svc.clone().oneshot(call("overflow:5", Some(1))).await;
    assert_eq!(overflow.unwrap(), "overflow:5");
    assert_eq!(busy.await.unwrap().unwrap(), "solo:4");
    assert_eq!(small.handle().untracked_calls(), 1);

    // Read before the scrape: a handle's read takes the peer's lock, which hands over the
    // answers its stripes deferred under contention and publishes what they make (so the
    // gauge read after it is the deadline every answer made).
    let (deadline, source) = handle.deadline(&"fast:1").unwrap();
    let page = scrape(&server).await;
    let m = Exposition::parse(&page);
    let at = |name: &str, labels: &[(&str, &str)]| m.value(name, labels);
    let expect = |peer: &str, values: &[(&str, f64)]| {
        for (name, value) in values {
            let series = format!("adaptive_timeout_{name}");
            assert_eq!(at(&series, &[("peer", peer)]), *value, "{series} of {peer}");
        }
    };

    // Answered calls.
    let fast = [("peer", "fast:1")];
    expect(
        "fast:1",
        &[
            ("calls_total", 30.0),
            ("responses_total", 30.0),
            ("failures_total", 0.0),
            ("timeouts_total", 0.0),
            ("fail_fast_total", 0.0),
            ("in_flight", 0.0),
            ("state", 0.0),
            ("latency_seconds_count", 30.0),
        ],
    );
    let sum = at("adaptive_timeout_latency_seconds_sum", &fast);
    assert!((0.06..10.0).contains(&sum), "30 calls of 2ms: {sum}s");
    let under_1ms = at(
        "adaptive_timeout_latency_seconds_bucket",
        &[("peer", "fast:1"), ("le", "0.001")],
    );
    assert_eq!(under_1ms, 0.0, "no call answered under its 2ms");
    assert_ne!(source, DeadlineSource::ColdStart);
    assert_eq!(
        at("adaptive_timeout_deadline_seconds", &fast),
        deadline.as_secs_f64(),
        "the gauge follows the republished deadline"
    );
    for to in ["healthy", "suspect", "silent", "probing"] {
        let t = at(
            "adaptive_timeout_transitions_total",
            &[("peer", "fast:1"), ("to", to)],
        );
        assert_eq!(t, 0.0, "fast:1 never changed state (to {to})");
    }

    // The silent peer.
    let gone = [("peer", "gone:2")];
    assert_eq!(at("adaptive_timeout_calls_total", &gone), 3.0);
    assert_eq!(at("adaptive_timeout_responses_total", &gone), 0.0);
    // The miss that declared the silence is counted as the silence its caller was told.
    assert_eq!(at("adaptive_timeout_timeouts_total", &gone), 1.0);
    assert_eq!(at("adaptive_timeout_fail_fast_total", &gone), 1.0);
    assert_eq!(at("adaptive_timeout_in_flight", &gone), 0.0);
    assert_eq!(at("adaptive_timeout_state", &gone), 2.0, "silent");
    assert_eq!(at("adaptive_timeout_deadline_seconds", &gone), 0.1);
    assert_eq!(at("adaptive_timeout_latency_seconds_count", &gone), 0.0);
    let interrupts_of = |peer, reason| {
        at(
            "adaptive_timeout_interrupts_total",
            &[("peer", peer), ("reason", reason)],
        )
    };
    assert_eq!(interrupts_of("gone:2", "peer_silent"), 2.0);
    assert_eq!(interrupts_of("gone:2", "manual"), 0.0);
    assert_eq!(interrupts_of("gone:2", "shutdown"), 0.0);
    let transitions_to = |to| {
        at(
            "adaptive_timeout_transitions_total",
            &[("peer", "gone:2"), ("to", to)],
        )
    };
    assert_eq!(transitions_to("suspect"), 1.0);
    assert_eq!(transitions_to("silent"), 1.0);
    assert_eq!(transitions_to("healthy"), 0.0);
    assert_eq!(transitions_to("probing"), 0.0);

    // The manual interrupt.
    let held = [("peer", "held:3")];
    assert_eq!(at("adaptive_timeout_calls_total", &held), 1.0);
    assert_eq!(interrupts_of("held:3", "manual"), 1.0);
    assert_eq!(interrupts_of("held:3", "peer_silent"), 0.0);
    assert_eq!(at("adaptive_timeout_responses_total", &held), 0.0);
    assert_eq!(at("adaptive_timeout_in_flight", &held), 0.0);

    // The peer that refuses connections: failures only, and its state left as it was.
    expect(
        DOWN,
        &[
            ("calls_total", 5.0),
            ("failures_total", 5.0),
            ("responses_total", 0.0),
            ("timeouts_total", 0.0),
            ("latency_seconds_count", 0.0),
            ("in_flight", 0.0),
            ("state", 0.0),
        ],
    );
    for peer in ["gone:2", "held:3"] {
        expect(peer, &[("failures_total", 0.0)]);
    }

    // The untracked call: counted without a peer label, and no series of its own.
    assert_eq!(
        at("adaptive_timeout_calls_total", &[("peer", "solo:4")]),
        1.0
    );
    assert_eq!(at("adaptive_timeout_untracked_calls_total", &[]), 1.0);
    assert!(
        !page.contains("overflow:5"),
        "an untracked peer has no series"
    );

    // Types and descriptions.
    for (name, kind) in [
        ("adaptive_timeout_calls_total", "counter"),
        ("adaptive_timeout_failures_total", "counter"),
        ("adaptive_timeout_interrupts_total", "counter"),
        ("adaptive_timeout_transitions_total", "counter"),
        ("adaptive_timeout_deadline_seconds", "gauge"),
        ("adaptive_timeout_in_flight", "gauge"),
        ("adaptive_timeout_state", "gauge"),
        ("adaptive_timeout_latency_seconds", "histogram"),
        ("adaptive_timeout_untracked_calls_total", "counter"),
    ] {
        assert!(
            page.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} is a {kind}:\n{page}"
        );
        assert!(
            page.contains(&format!("# HELP {name} ")),
            "{name} is described"
        );
    }
    let series =
        m.0.keys()
            .filter(|(n, _)| n.starts_with("adaptive_timeout_"));
    let peers: std::collections::BTreeSet<_> = series
        .flat_map(|(_, labels)| labels.iter())
        .filter(|(k, _)| k == "peer")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        peers.into_iter().collect::<Vec<_>>(),
        ["down:6", "fast:1", "gone:2", "held:3", "solo:4"],
        "one series set per tracked peer"
    );
    assert!(matches!(
        refused
            .unwrap_err()
            .downcast_ref::<Interrupted>()
            .map(Interrupted::reason),
        Some(Reason::PeerSilent { .. })
    ));
}

#[test]
fn twenty_thousand_keys_through_a_hundred_peers_keep_the_series_bounded() {
    const KEYS: u64 = 20_000;
    const MAX_PEERS: usize = 100;
    let recorder = PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let handle = metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let (svc, handle) = echo_keys(MAX_PEERS);
            for key in 0..KEYS {
                assert_eq!(svc.clone().oneshot(key).await.unwrap(), key);
            }
            handle
        })
    });
    assert_eq!(handle.peer_count(), MAX_PEERS);
    assert_eq!(handle.untracked_calls(), 0);

    let page = prometheus.render();
    let m = Exposition::parse(&page);
    let peers: std::collections::BTreeSet<_> =
        m.0.keys()
            .flat_map(|(_, labels)| labels.iter())
            .filter(|(k, _)| k == "peer")
            .map(|(_, v)| v.as_str())
            .collect();
    let lines = m.0.len();
    eprintln!(
        "{KEYS} keys, max_peers {MAX_PEERS}: {lines} series of {} peer labels, {} bytes",
        peers.len(),
        page.len()
    );
    // The first MAX_PEERS peers keep their own series; the others share `_other`.
    assert_eq!(peers.len(), MAX_PEERS + 1);
    assert!(peers.contains("_other") && peers.contains("0") && peers.contains("99"));
    // Each label: 6 counters, 5 interrupt reasons, 4 transitions, 3 gauges and the
    // latency summary (7 quantiles, sum, count); plus the untracked counter.
    assert!(lines <= (MAX_PEERS + 1) * 27 + 1, "{lines} series");
    let other = [("peer", "_other")];
    let calls = m.value("adaptive_timeout_calls_total", &other);
    assert_eq!(calls, (KEYS - MAX_PEERS as u64) as f64);
    assert_eq!(m.value("adaptive_timeout_in_flight", &other), 0.0);
    assert_eq!(
        m.value("adaptive_timeout_latency_seconds_count", &other),
        calls
    );
    for shared in [
        "adaptive_timeout_deadline_seconds",
        "adaptive_timeout_state",
    ] {
        assert!(
            !m.0.contains_key(&(shared.to_owned(), vec![("peer".into(), "_other".into())])),
            "{shared} has no series for peers without their own"
        );
    }
}

/// Prometheus text, as `(name, sorted labels) -> value`.
struct Exposition(BTreeMap<(String, Vec<(String, String)>), f64>);

impl Exposition {
    fn parse(page: &str) -> Self {
        let mut all = BTreeMap::new();
        for line in page
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = value.parse().expect("a number");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}').expect("closing brace")),
                None => (series, ""),
            };
            let mut labels: Vec<(String, String)> = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once('=').expect("label=value");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            labels.sort();
            all.insert((name.to_owned(), labels), value);
        }
        Exposition(all)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        key.sort();
        *self
            .0
            .get(&(name.to_owned(), key))
            .unwrap_or_else(|| panic!("no series {name}{labels:?}"))
    }
}

/// Serves the recorder's page at `GET /metrics` on a loopback port chosen by the OS.
async fn serve(prometheus: PrometheusHandle) -> Loopback {
    page::serve(move |req| {
        if req.method() == Method::GET && req.uri().path() == "/metrics" {
            (StatusCode::OK, prometheus.render())
        } else {
            (StatusCode::NOT_FOUND, String::new())
        }
    })
    .await
    .unwrap()
}

/// `GET /metrics`; returns the body of a 200 answer.
async fn scrape(server: &Loopback) -> String {
    let response = page::fetch(server.uri("/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{response:?}");
    let length = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|n| n.to_str().ok()?.parse::<usize>().ok());
    assert_eq!(
        length,
        Some(response.body().len()),
        "the whole page arrived"
    );
    response.into_body()
}
