//! Per-peer adaptive deadlines for tower services.
//!
//! A call to a peer that has silently gone away (unplugged, partitioned, hung: no FIN, no
//! RST) stalls until a fixed timeout or TCP gives up, often for minutes, and holds up every
//! call chain waiting on it. A fixed timeout is either too short (spurious failures in the
//! slow tail) or too long (the stall). This layer gives each call a deadline derived from
//! its own peer's recent latency:
//!
//! ```text
//! request -> peer key -> peer (table) -> deadline (one atomic read) -> ResponseFuture
//!         -> response | Interrupted -> latency window -> deadline recomputed off the hot path
//! ```
//!
//! * [`KeyFn`] maps a request to its peer (any `Fn(&Req) -> K`; `http::Request` is keyed by
//!   scheme, host and port).
//! * Each peer has a time-decaying latency histogram (a ring of hdrhistogram sub-windows).
//!   What an outcome teaches it is [`classify`]'s call: a response is a sample, an error
//!   the peer sent (or a 5xx, with [`classify::HttpStatus`]) an answer only, a transport
//!   failure neither.
//! * [`TimeoutPolicy`] turns it into a deadline: `clamp(quantile × factor + margin, min,
//!   max)`, with a cold-start deadline until enough samples exist. It is recomputed when the
//!   window rotates or every `recompute_every` samples, never per call.
//! * A call that runs out its deadline ends with [`Interrupted`], which says why, for which
//!   peer, after how long, and why the deadline had its value. Its latency is recorded as a
//!   censored sample, so the deadline rises while a peer slows.
//! * A per-peer state machine ([`PeerState`]) notices a peer that stopped answering: calls
//!   that ran out their deadline with no answer from it since they started. Once it is
//!   silent, every call in flight to it ends at once with [`Reason::PeerSilent`], and new
//!   calls fail fast while one probe at a time checks whether it is back.
//! * [`InterruptHandle`] fires interrupts by hand; each [`Interrupted`] names who fired it
//!   and where it was recognized. An [`Interrupt`] token travels in `http::Request`
//!   extensions so work deeper in the chain stops at its next [`checkpoint`](Interrupt::checkpoint)
//!   with the same reason ([`Chain`], [`interruptible`]).
//! * The caller's deadline ([`Deadline`]) can shorten a call's deadline; with
//!   [`Propagation`] it is read from and the call's deadline written to `grpc-timeout` or a
//!   milliseconds header ([`propagate`]).
//! * [`AdaptiveTimeoutHandle`] reads per-peer [`PeerSnapshot`]s and changes policies at
//!   runtime.
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
#![forbid(unsafe_code)]

mod balance;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
mod body;
mod call;
pub mod class;
pub mod classify;
mod error;
pub mod events;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod export;
#[cfg(not(feature = "metrics"))]
mod export;
mod fixed;
mod future;
mod handle;
mod idle;
mod interrupt;
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
#[cfg(feature = "http")]
pub use body::{BodyDeadline, BodyIdle, BodyTimeout, BodyTimeoutLayer, TimeoutBody, WithBody};
pub use class::{ClassOf, ClassSnapshot, LatencyClass, LatencyHints, MinDeadline};
pub use classify::Outcome;
pub use error::{BoxError, Interrupted, Reason};
pub use events::HealthEvent;
pub use fixed::{FixedKey, FixedPeer, FixedPeerLayer};
pub use future::{Head, ResponseFuture};
pub use handle::{AdaptiveTimeoutHandle, InterruptHandle};
pub use idle::{IdleRule, IdleSource, GAP_WARMUP};
pub use layer::{
    AdaptiveTimeoutLayer, Builder, DEFAULT_IDLE_TTL, DEFAULT_MAX_CLASSES, DEFAULT_MAX_PEERS,
    MAX_CLASSES,
};
pub use peer::health::PeerState;
pub use peer::key::{ByPeer, Classed, HasPeer, KeyFn, PeerKey, MAX_LABEL_BYTES};
#[cfg(feature = "http")]
pub use peer::key::{HttpKeyFn, HttpPeer, InvalidPeer};
pub use policy::{
    DeadlineExplanation, DeadlineSource, PolicyError, TimeoutPolicy, MAX_DEADLINE,
    MAX_LONG_PROBE_SPACING, MAX_SUB_WINDOWS, MAX_WINDOW, MAX_WINDOW_BYTES, MIN_SUB_WINDOW,
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
