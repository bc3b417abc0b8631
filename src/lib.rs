//! Per-peer adaptive deadlines for tower services, with silent-peer detection and typed
//! interrupts.
//!
//! Each call gets a deadline learned from its own peer's recent latency. A peer that stops
//! answering is noticed: every call in flight to it ends at once, and new calls fail fast
//! while one probe at a time checks whether it is back. Every call the layer cuts short
//! ends with an [`Interrupted`] that says why.
//!
//! The main types:
//!
//! * [`AdaptiveTimeoutLayer`] and its [`Builder`]: the layer, which keys each request to
//!   its peer with a [`KeyFn`] (or the request's [`HasPeer`]) and follows a
//!   [`TimeoutPolicy`], checked at `build()`.
//! * [`Interrupted`], [`Reason`] and [`DeadlineExplanation`]: why a call was cut short.
//! * [`Deadline`] and [`Propagation`]: the caller's deadline, read from the request and
//!   passed on to the callee ([`propagate`]).
//! * [`Interrupt`] and [`Chain`]: cooperative interrupt tokens; [`InterruptHandle`]:
//!   interrupts by hand.
//! * [`HedgeLayer`] ([`AdaptiveTimeoutLayer::hedged`]): a copy of a slow request after its
//!   peer's learned quantile, the first answer wins, the loser interrupted.
//! * [`AdaptiveTimeoutHandle`]: [`PeerSnapshot`]s (each peer's [`PeerState`] among them),
//!   policies changed at runtime, [`HealthEvent`]s.
//! * [`classify`]: what an outcome teaches a peer; [`class`]: latency classes and floors.
//! * `BodyTimeoutLayer` (feature `http`): response bodies watched to their end;
//!   [`Endpoint`]: the layer per endpoint, under a balancer.
//!
//! The repository's README.md is the guide; its ARCHITECTURE.md maps the source.
//!
//! # Quick start
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
//! use tower_adaptive_timeout::{AdaptiveTimeoutLayer, Interrupted, TimeoutPolicy};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! struct Call { peer: String }
//!
//! let layer = AdaptiveTimeoutLayer::builder(|c: &Call| c.peer.clone())
//!     .policy(TimeoutPolicy::default().cold_start(Duration::from_millis(200)))
//!     .build()?;
//! let svc = ServiceBuilder::new().layer(layer).service(service_fn(|_: Call| async {
//!     tokio::time::sleep(Duration::from_secs(600)).await; // a peer that never answers
//!     Ok::<_, BoxError>(())
//! }));
//! let err = svc.oneshot(Call { peer: "10.0.0.7:9000".into() }).await.unwrap_err();
//! let interrupted = err.downcast_ref::<Interrupted>().expect("typed error");
//! assert_eq!(interrupted.deadline(), Some(Duration::from_millis(200)));
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]
#![forbid(unsafe_code)]

mod balance;
mod body;
mod call;
pub mod class;
pub mod classify;
mod error;
pub mod events;
mod explain;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod export;
#[cfg(not(feature = "metrics"))]
mod export;
mod fixed;
mod future;
mod handle;
mod hedge;
mod interrupt;
mod invariant;
mod label;
mod layer;
mod peer;
mod policy;
pub mod propagate;
mod service;
mod site;
mod snapshot;
#[cfg(any(feature = "tonic", feature = "http"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "tonic", feature = "http"))))]
pub mod status;
mod stripe;
mod timer;
mod token;
mod units;

#[cfg(feature = "balance")]
pub use balance::EndpointLoad;
pub use balance::{Endpoint, EndpointLayer, DEFAULT_MAX_EJECTION_PERCENT};
pub use balance::{DEFAULT_BASE_EJECTION_TIME, DEFAULT_MAX_EJECTION_TIME};
pub use body::idle::{IdleRule, IdleSource, GAP_WARMUP};
#[cfg(feature = "http")]
pub use body::{BodyDeadline, BodyIdle, BodyTimeout, BodyTimeoutLayer, TimeoutBody, WithBody};
pub use class::{ClassOf, ClassSnapshot, LatencyClass, LatencyHints, MinDeadline};
pub use classify::Outcome;
pub use error::{BoxError, Interrupted, Reason};
pub use events::HealthEvent;
pub use explain::{DeadlineExplanation, DeadlineSource};
pub use fixed::{FixedKey, FixedPeer, FixedPeerLayer};
pub use future::{Head, ResponseFuture};
pub use handle::{AdaptiveTimeoutHandle, InterruptHandle};
pub use hedge::{
    CloneRequest, Hedge, HedgeFuture, HedgeLayer, HedgeStats, Hedging, DEFAULT_HEDGE_BURST,
    DEFAULT_HEDGE_QUANTILE, DEFAULT_MAX_EXTRA_LOAD, MAX_HEDGE_BURST,
};
pub use label::MAX_LABEL_BYTES;
pub use layer::{
    AdaptiveTimeoutLayer, Builder, DEFAULT_IDLE_TTL, DEFAULT_MAX_CLASSES, DEFAULT_MAX_PEERS,
    MAX_CLASSES,
};
pub use peer::health::PeerState;
pub use peer::key::{ByPeer, Classed, HasPeer, KeyFn, PeerKey};
#[cfg(feature = "http")]
pub use peer::key::{HttpKeyFn, HttpPeer, InvalidPeer};
pub use policy::{
    PolicyError, TimeoutPolicy, DEFAULT_MEMORY_BUDGET, MAX_DEADLINE, MAX_LONG_PROBE_SPACING,
    MAX_MEMORY_BUDGET, MAX_SUB_WINDOWS, MAX_WINDOW, MAX_WINDOW_BYTES, MIN_SUB_WINDOW,
};
pub use propagate::{Deadline, Propagation};
pub use service::AdaptiveTimeout;
pub use site::Site;
pub use snapshot::PeerSnapshot;
pub use token::{interruptible, Cancelled, Chain, Interrupt, Interruptible, Step};

/// README.md's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
