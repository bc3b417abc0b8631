//! Helpers shared by the integration tests: time in milliseconds, a seeded [`Rng`], common
//! policies, and the stacks several tests build. The loopback servers, clients and fault
//! proxy they run against are the `loopback` crate.
//!
//! Each test binary declares this module `pub mod support;`: each test uses a subset, and the public
//! items of a public module are not dead code.

#[cfg(feature = "http")]
pub mod e2e;
pub mod line;
pub mod peers;
#[cfg(feature = "http")]
pub mod requests;
pub mod trace;

use std::borrow::Borrow;
use std::convert::Infallible;
use std::fmt::Debug;
use std::time::Duration;

pub use loopback::Rng;
use tower::{service_fn, BoxError, Layer, Service};
use tower_adaptive_timeout::{
    AdaptiveTimeout, AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, Builder, Interrupted, PeerKey,
    TimeoutPolicy,
};

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A policy with small windows, so a full table of them stays small.
pub fn lean() -> TimeoutPolicy {
    TimeoutPolicy::default()
        .max(ms(1000))
        .cold_start(ms(200))
        .sub_windows(2)
        .significant_figures(1)
}

/// `builder`'s layer over `inner`, with the layer's handle; panics on an invalid policy.
pub fn stack<K: PeerKey, F: Clone, C: Clone, S>(
    builder: Builder<K, F, C>,
    inner: S,
) -> (AdaptiveTimeout<S, K, F, C>, AdaptiveTimeoutHandle<K>) {
    let layer = builder.build().expect("valid policy");
    let handle = layer.handle();
    (layer.layer(inner), handle)
}

/// A layer keyed by `u64`, under [`lean`] with room for `max_peers`, over a service that
/// answers each key with itself at once: what floods of keys go through.
pub fn echo_keys(
    max_peers: usize,
) -> (
    impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static,
    AdaptiveTimeoutHandle<u64>,
) {
    let builder = AdaptiveTimeoutLayer::builder(|k: &u64| *k)
        .policy(lean())
        .max_peers(max_peers);
    stack(
        builder,
        service_fn(|k: u64| async move { Ok::<_, Infallible>(k) }),
    )
}

/// The [`Interrupted`] a call ended with (given its result or a reference to it); panics if
/// it ended otherwise.
pub fn interrupted<T: Debug>(r: impl Borrow<Result<T, BoxError>>) -> Interrupted {
    let err = r
        .borrow()
        .as_ref()
        .expect_err("the call should have been interrupted");
    err.downcast_ref::<Interrupted>()
        .unwrap_or_else(|| panic!("not an Interrupted: {err}"))
        .clone()
}
