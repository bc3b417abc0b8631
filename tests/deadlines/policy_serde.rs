//! Policies from configuration files (`serde` feature).
//!
//! Covers: human-readable durations (`"250ms"`, `"30s"`, `"1m 30s"`), missing fields taking
//! their defaults, unknown fields and malformed durations being refused, round trips through
//! JSON, deserialized policies still being checked by `build()`, and the JSON form of peer
//! snapshots and deadline sources.
#![cfg(feature = "serde")]

use crate::support;

use std::time::Duration;

use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, DeadlineSource, TimeoutPolicy};

use support::ms;

fn parse(json: &str) -> Result<TimeoutPolicy, serde_json::Error> {
    serde_json::from_str(json)
}

#[test]
fn durations_are_human_readable_and_missing_fields_default() {
    let policy = parse(
        r#"{
            "quantile": 0.99,
            "factor": 3.0,
            "margin": "250ms",
            "max": "30s",
            "cold_start": "1m 30s",
            "window": "2m",
            "min_samples": 50
        }"#,
    )
    .unwrap();
    let expected = TimeoutPolicy::default()
        .quantile(0.99)
        .factor(3.0)
        .margin(ms(250))
        .max(Duration::from_secs(30))
        .cold_start(Duration::from_secs(90))
        .window(Duration::from_secs(120))
        .min_samples(50);
    assert_eq!(policy, expected);
    assert_eq!(policy.min, TimeoutPolicy::default().min, "defaulted");
    assert_eq!(parse("{}").unwrap(), TimeoutPolicy::default());
}

#[test]
fn unknown_fields_are_refused() {
    let err = parse(r#"{ "quantile": 0.99, "quantle": 0.9 }"#).unwrap_err();
    assert!(err.to_string().contains("quantle"), "{err}");
}

#[test]
fn malformed_values_are_refused() {
    for json in [
        r#"{ "margin": "soon" }"#,
        r#"{ "margin": 250 }"#,
        r#"{ "max": "-5s" }"#,
        r#"{ "quantile": "high" }"#,
        r#"{ "sub_windows": -1 }"#,
    ] {
        assert!(parse(json).is_err(), "{json} was accepted");
    }
}

#[test]
fn policies_round_trip_through_json() {
    let policy = TimeoutPolicy::default()
        .quantile(0.95)
        .margin(Duration::from_micros(1500))
        .min(ms(20))
        .cold_start(ms(750))
        .sub_windows(12);
    let json = serde_json::to_string(&policy).unwrap();
    assert!(json.contains(r#""cold_start":"750ms""#), "{json}");
    assert!(json.contains(r#""margin":"1ms 500us""#), "{json}");
    assert_eq!(parse(&json).unwrap(), policy);
}

#[test]
fn a_deserialized_policy_is_still_checked() {
    let policy = parse(r#"{ "min": "2s", "max": "1s", "cold_start": "1s" }"#).unwrap();
    let err = AdaptiveTimeoutLayer::builder(|r: &u32| *r)
        .policy(policy)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "min");
}

#[tokio::test(start_paused = true)]
async fn snapshots_and_sources_serialize() {
    let policy = parse(r#"{ "cold_start": "400ms", "recompute_every": 1 }"#).unwrap();
    let layer = AdaptiveTimeoutLayer::builder(|r: &&'static str| *r)
        .policy(policy)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: &'static str| async {
        Ok::<_, BoxError>(())
    }));
    svc.oneshot("10.0.0.7:9000").await.unwrap();

    let json = serde_json::to_value(handle.snapshot()).unwrap();
    let peer = &json[0];
    assert_eq!(peer["peer"], "10.0.0.7:9000");
    assert_eq!(peer["samples"], 1);
    assert_eq!(peer["explanation"]["source"], "cold_start");
    assert_eq!(
        serde_json::to_value(DeadlineSource::ClampedMax).unwrap(),
        "clamped_max"
    );
}

#[test]
fn a_policy_is_a_map_never_a_list() {
    // By position, `[0.5, 3.0]` would set quantile and factor: refused, saying what is wanted.
    for json in ["[0.5, 3.0]", "[]", "null", "3", r#""0.5""#] {
        let err = parse(json).expect_err(json);
        assert!(err.to_string().contains("map"), "{json}: {err}");
    }
    assert_eq!(parse(r#"{ "quantile": 0.5 }"#).unwrap().quantile, 0.5);
}
