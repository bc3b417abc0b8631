//! A default policy and per-peer overrides, loaded from a configuration file.
//!
//! `examples/policies.json` holds a `default` policy and one policy per peer, with
//! human-readable durations (`"250ms"`, `"1m"`); fields left out take their defaults. The
//! example loads it through serde, builds the layer (which checks every policy, naming the
//! field and the peer of a bad one), drives simulated calls to five peers, and prints each
//! peer's deadline and why it has that value: clamped to a fast cache's floor, following a
//! quantile, cut to a slow peer's ceiling, or still at a cold start that an override made
//! longer. It then shows how bad configuration is refused.
//!
//! ```text
//! cargo run --example per_peer_policy --features serde [-- path/to/policies.json]
//! ```
//!
//! It runs on tokio's paused clock, so the simulated latencies cost no real time.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, PolicyError, TimeoutPolicy};

use common::print_snapshots;

/// The file's shape: a default policy and overrides by peer name.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    default: TimeoutPolicy,
    #[serde(default)]
    peers: BTreeMap<String, TimeoutPolicy>,
}

/// A simulated call to `peer`, answered after `latency`.
struct Call {
    peer: &'static str,
    latency: Duration,
}

fn peer_of(call: &Call) -> String {
    call.peer.to_owned()
}

type Layer = AdaptiveTimeoutLayer<String, fn(&Call) -> String>;

/// Builds the layer from a parsed file; `build()` checks every policy.
fn layer_from(file: PolicyFile) -> Result<Layer, PolicyError> {
    let mut builder =
        AdaptiveTimeoutLayer::builder(peer_of as fn(&Call) -> String).policy(file.default);
    for (peer, policy) in file.peers {
        builder = builder.peer_policy(peer, policy);
    }
    builder.build()
}

/// Parses `json` and builds the layer from it.
fn load(json: &str) -> Result<Layer, BoxError> {
    let file: PolicyFile = serde_json::from_str(json)?;
    Ok(layer_from(file)?)
}

/// Simulated peers: name, calls, and latency spread in milliseconds.
const PEERS: [(&str, u64, f64, f64); 5] = [
    ("cache:6379", 200, 0.5, 1.5),
    ("users:8080", 200, 5.0, 15.0),
    ("search:9200", 200, 30.0, 60.0),
    ("reports:8443", 100, 60.0, 100.0),
    ("billing:443", 10, 150.0, 250.0),
];

/// Call `i`'s latency: spread over `[low, high)` by a fixed stride.
fn latency(i: u64, low: f64, high: f64) -> Duration {
    let step = (i * 37 % 100) as f64 / 100.0;
    Duration::from_secs_f64((low + (high - low) * step) / 1e3)
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), BoxError> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policies.json").to_owned()
    });
    let layer = load(&std::fs::read_to_string(&path)?)?;
    println!("loaded {path}\n");
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|call: Call| async move {
            tokio::time::sleep(call.latency).await;
            Ok::<_, BoxError>(())
        }));

    for (peer, calls, low, high) in PEERS {
        for i in 0..calls {
            let latency = latency(i, low, high);
            svc.clone().oneshot(Call { peer, latency }).await?;
        }
    }
    print_snapshots(&handle.snapshot());

    println!("\nrefused configuration:");
    let bad = [
        // A value out of range: validation names the field.
        r#"{ "default": { "quantile": 1.5 } }"#,
        // A bad override: the error also names the peer.
        r#"{ "peers": { "cache:6379": { "min": "500ms", "max": "250ms" } } }"#,
        // A misspelt field is a parse error, not a silently ignored setting.
        r#"{ "default": { "quantle": 0.99 } }"#,
        // So is a duration without a unit.
        r#"{ "default": { "margin": 5 } }"#,
    ];
    for json in bad {
        let err = load(json).expect_err("bad configuration is refused");
        println!("  {json}\n    -> {err}");
    }
    Ok(())
}
