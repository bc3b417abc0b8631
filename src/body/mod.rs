//! Response bodies watched to their end: the layer's watch goes on past the head.
//!
//! [`AdaptiveTimeout`](crate::AdaptiveTimeout) ends a call when the head arrives; a peer
//! that sends headers and then goes silent mid-body stalls its reader until TCP gives up.
//! [`BodyTimeoutLayer`] (made from a built layer with
//! [`AdaptiveTimeoutLayer::with_bodies`](crate::AdaptiveTimeoutLayer::with_bodies), sharing
//! its peer table, handles and policies) wraps each response body in a [`TimeoutBody`] that
//! carries the call on: the call stays in flight until its body ends or is dropped, an
//! interrupt into its peer (silence, [`InterruptHandle`](crate::InterruptHandle), shutdown)
//! or its token ends the body at once, an idle deadline between frames ends a stalled body
//! as a miss (a caller's own, shorter than the peer's, is no miss), and frames are
//! heartbeats for the silence detector.
//!
//! It is a second layer type rather than a setting so that users who do not wrap bodies
//! keep [`AdaptiveTimeout`](crate::AdaptiveTimeout)'s types and pay nothing: the wrapping
//! service is [`BodyTimeout`], its future `ResponseFuture<_, WithBody>` and its response
//! `http::Response<TimeoutBody<B>>`, all nameable. A wrapped body allocates nothing: its
//! timer and registrations live inside it.
//!
//! Where a body's call lives: `layer.rs` (the layer, the service, the request's body
//! extensions), `timeout_body.rs` (the body: frames, idle and total deadlines, interrupts),
//! `idle.rs` (the idle rule, and why an idle deadline had its value; compiled without the
//! `http` feature too, since [`Reason::BodyIdle`](crate::Reason::BodyIdle) names it); the
//! call guard's side is `call/body.rs`, and a peer's gaps between frames `peer/gaps.rs`.

pub(crate) mod idle;
#[cfg(feature = "http")]
mod layer;
#[cfg(feature = "http")]
mod timeout_body;

#[cfg(feature = "http")]
pub use self::layer::{BodyDeadline, BodyIdle, BodyTimeout, BodyTimeoutLayer, WithBody};
#[cfg(feature = "http")]
pub use self::timeout_body::TimeoutBody;
