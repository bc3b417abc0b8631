//! Why a deadline has its value: the rule that produced it ([`DeadlineSource`]) and the
//! numbers that went into it ([`DeadlineExplanation`]). Errors, snapshots and the peer state
//! all read it; it reads nothing of the crate's, so it sits below them all
//! (ARCHITECTURE.md, invariant 7: no import cycle).

use std::fmt;
use std::time::Duration;

/// Why a peer's deadline has the value it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum DeadlineSource {
    /// Fewer than two answers to learn from: the policy's `cold_start`, or, after a probe
    /// of the silent peer answered slower than that, `latency × factor + margin` on the
    /// probe's latency (at most `max`), so the calls that follow fit in it.
    ColdStart,
    /// From two answers to `min_samples`: an upper estimate of the quantile (the larger
    /// of a log-normal and a Pareto-tail prediction bound, never below the slowest answer)
    /// × factor + margin, at most `cold_start` unless the answers show a slower peer (by
    /// their slowest, or by the quantile their tail extrapolates to); within `[min, max]`.
    Estimate,
    /// `quantile × factor + margin`, within `[min, max]`.
    Quantile,
    /// `quantile × factor + margin` was below `min`.
    ClampedMin,
    /// `quantile × factor + margin` was above `max`.
    ClampedMax,
    /// The caller's deadline ([`Deadline`](crate::Deadline), propagated headers) was
    /// shorter than the peer's.
    Caller,
    /// The call's floor ([`MinDeadline`](crate::MinDeadline)) was longer than the peer's
    /// deadline: the call got the floor, at most the policy's `max`.
    Floor,
    /// The peer is silent and `fail_fast` is off: the deadline is cut to `min`.
    SilentPeer,
    /// The call's peer is not tracked (no key, or the peer table is full): the default
    /// policy's `cold_start`.
    Untracked,
}

impl DeadlineSource {
    pub(crate) const ALL: [DeadlineSource; 9] = [
        DeadlineSource::ColdStart,
        DeadlineSource::Estimate,
        DeadlineSource::Quantile,
        DeadlineSource::ClampedMin,
        DeadlineSource::ClampedMax,
        DeadlineSource::Caller,
        DeadlineSource::Floor,
        DeadlineSource::SilentPeer,
        DeadlineSource::Untracked,
    ];

    /// Whether the deadline was read from a history of at least `min_samples` answers (the
    /// quantile, clamped or not), rather than a default or an estimate from fewer.
    pub(crate) fn is_learned(self) -> bool {
        matches!(
            self,
            DeadlineSource::Quantile | DeadlineSource::ClampedMin | DeadlineSource::ClampedMax
        )
    }

    /// A short, stable name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadlineSource::ColdStart => "cold_start",
            DeadlineSource::Estimate => "estimate",
            DeadlineSource::Quantile => "quantile",
            DeadlineSource::ClampedMin => "clamped_min",
            DeadlineSource::ClampedMax => "clamped_max",
            DeadlineSource::Caller => "caller",
            DeadlineSource::Floor => "floor",
            DeadlineSource::SilentPeer => "silent_peer",
            DeadlineSource::Untracked => "untracked",
        }
    }
}

impl fmt::Display for DeadlineSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a deadline has its value: the source and the numbers that went into it.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct DeadlineExplanation {
    /// Which rule produced the deadline.
    pub source: DeadlineSource,
    /// The policy's quantile.
    pub quantile: f64,
    /// The latency at that quantile (zero during cold start; its upper estimate while
    /// the source is [`DeadlineSource::Estimate`]).
    pub quantile_value: Duration,
    /// The policy's factor.
    pub factor: f64,
    /// The policy's margin.
    pub margin: Duration,
    /// The policy's min.
    pub min: Duration,
    /// The policy's max.
    pub max: Duration,
    /// The answers the deadline was learned from: every answer of its history, a busy
    /// peer's sampled ones counted as the answers they stand for (as
    /// [`PeerSnapshot::samples`](crate::PeerSnapshot::samples)).
    pub samples: u64,
    /// How far back those samples reach when that is beyond the window (a quiet peer's
    /// history, up to `max_history`); zero when they are the window's.
    pub history: Duration,
    /// Samples needed before the quantile is trusted.
    pub min_samples: u64,
    /// Whether the peer runs under a per-peer policy override.
    pub per_peer_policy: bool,
    /// The latency class whose history set the deadline; `None`: the peer's own.
    pub class: Option<String>,
}

/// What a history said when a deadline was computed from it: samples learned from, the
/// quantile's value (or its upper estimate), and how far back beyond the window.
pub(crate) type Learned = (u64, Duration, Duration);

impl DeadlineExplanation {
    /// The explanation for a call whose peer is not tracked.
    pub(crate) fn untracked() -> Self {
        DeadlineExplanation {
            source: DeadlineSource::Untracked,
            quantile: 0.0,
            quantile_value: Duration::ZERO,
            factor: 0.0,
            margin: Duration::ZERO,
            min: Duration::ZERO,
            max: Duration::ZERO,
            samples: 0,
            history: Duration::ZERO,
            min_samples: 0,
            per_peer_policy: false,
            class: None,
        }
    }
}
