//! The layer over the hyper and tonic loopback servers.

use std::time::Duration;

use loopback::{bounded, Loopback};
use tonic::transport::{Channel, Endpoint};
use tower_adaptive_timeout::{HasPeer, HttpPeer, TimeoutPolicy};

/// A policy for loopback peers: deadline = clamp(p99 x 2 + 200ms, 10ms, 30s), `cold_start`
/// until a peer has `min_samples`. The wide margin keeps a loaded machine's scheduling
/// delays from counting as misses.
pub fn loopback_policy(cold_start: Duration, min_samples: u64) -> TimeoutPolicy {
    TimeoutPolicy::default()
        .quantile(0.99)
        .margin(Duration::from_millis(200))
        .cold_start(cold_start)
        .min_samples(min_samples)
        .recompute_every(5)
}

/// The peer a loopback server is to the layer.
pub trait LoopbackPeer {
    /// The key `AdaptiveTimeoutLayer::http()` gives calls to this server.
    fn peer(&self) -> HttpPeer;
}

impl LoopbackPeer for Loopback {
    fn peer(&self) -> HttpPeer {
        let req = http::Request::get(self.uri("/"))
            .body(())
            .expect("a valid request");
        req.peer().expect("the URI names a host")
    }
}

/// A tonic `Channel` connected to `server`.
pub async fn channel(server: &Loopback) -> Channel {
    let endpoint = Endpoint::from(server.uri(""));
    bounded(endpoint.connect())
        .await
        .expect("connect over loopback")
}
