//! The idle deadline between the frames of a response body: the rule that sets it and why a
//! body's deadline had its value.
//!
//! A body waits for its next frame at most its idle deadline. Under [`IdleRule::Learned`]
//! (the default) it is the longer of the peer's own call deadline and `quantile × factor +
//! margin` of the gaps between frames the peer has sent, clamped to the policy's
//! `[min, max]`. Taking the longer of the two means a peer that answers heads in 5 ms but
//! streams a frame every 200 ms is not cut between frames, and a peer whose frames come
//! back to back is still given at least what a call to it gets.

use std::time::Duration;

/// How a response body's idle deadline is set, for bodies with no per-request override.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdleRule {
    /// The longer of the peer's call deadline and what its own gaps between frames call
    /// for (`quantile × factor + margin` of the gaps, with the peer's policy); the
    /// policy's `cold_start` stands in for the gaps until `min_samples` of them (at most
    /// [`GAP_WARMUP`]) were seen. Clamped to `[min, max]`.
    #[default]
    Learned,
    /// The peer's call deadline, as for the head (clamped to `[min, max]`). Cuts a slow
    /// but steady stream whose gaps exceed what the peer's heads take.
    FromDeadline,
    /// No idle deadline: only interrupts and a total deadline end a body.
    Off,
}

/// Gaps a peer's streams must show before the learned gap quantile is trusted, whatever
/// the policy's `min_samples`: a stream's gaps come slower than calls.
pub const GAP_WARMUP: u64 = 20;

/// Why a body's idle deadline had its value (its `Display` is beside [`Reason`](crate::Reason)'s).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum IdleSource {
    /// Learned from the peer's gaps between frames: the gap quantile it came from.
    Gaps {
        /// The gap quantile (`quantile` of the peer's policy).
        gap: Duration,
    },
    /// Too few gaps seen yet: the policy's `cold_start`.
    ColdStart,
    /// The peer's call deadline (it was the longer, or the rule is
    /// [`IdleRule::FromDeadline`]).
    PeerDeadline,
    /// The request's [`BodyIdle`](crate::BodyIdle) override.
    Request,
}
