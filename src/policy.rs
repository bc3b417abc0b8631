//! Deadline policy: how a peer's latency history becomes its deadline.
//!
//! A peer's deadline is `clamp(quantile × factor + margin, min, max)`, where `quantile` is read
//! from the peer's time-decaying latency histogram. A quiet peer, whose window holds fewer
//! than `min_samples`, reads it from its last `min_samples` answers of up to `max_history`
//! ago; with fewer still, from its second answer on, from an upper estimate of the quantile
//! (see [`DeadlineSource::Estimate`]). Before that the peer gets `cold_start`.

use std::fmt;
use std::time::Duration;

/// Longest `max` (and so longest deadline) a policy accepts.
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest latency window a policy accepts.
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Most sub-windows a policy accepts: each one is a histogram per peer.
pub const MAX_SUB_WINDOWS: u32 = 64;
/// Shortest sub-window (`window / sub_windows`) a policy accepts.
pub const MIN_SUB_WINDOW: Duration = Duration::from_millis(1);

/// How each peer's deadline is derived from its latency history.
///
/// Build one with [`TimeoutPolicy::default`] and the chainable setters; every field is also
/// public for reading. [`TimeoutPolicy::validate`] (called by the layer's `build()` and by
/// every runtime policy change) refuses values that make no sense, naming the field.
///
/// ```
/// use std::time::Duration;
/// use tower_adaptive_timeout::TimeoutPolicy;
///
/// let policy = TimeoutPolicy::default()
///     .quantile(0.99)
///     .factor(3.0)
///     .min(Duration::from_millis(50));
/// assert!(policy.validate().is_ok());
/// assert!(TimeoutPolicy::default().quantile(1.5).validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct TimeoutPolicy {
    /// Quantile of the latency window the deadline follows, in `(0, 1]`. Default `0.999`.
    pub quantile: f64,
    /// Multiplier applied to the quantile, at least `1`. Default `2`.
    pub factor: f64,
    /// Constant added after the multiplication. Default `5ms`.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub margin: Duration,
    /// Shortest deadline. Default `10ms`.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub min: Duration,
    /// Longest deadline, at most 24h. Default `30s`.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max: Duration,
    /// Deadline used while the window holds fewer than `min_samples`. Default `1s`.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub cold_start: Duration,
    /// Samples needed before the quantile is trusted. Default `100`: with fewer, the top
    /// sample stands in for a high quantile and underestimates a heavy tail. From the second
    /// sample to this many the deadline is an upper estimate of the quantile instead.
    pub min_samples: u64,
    /// How far back latency history reaches, at most 7 days. Default `60s`.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub window: Duration,
    /// How far back a quiet peer's history reaches: while its window holds fewer than
    /// `min_samples`, its deadline is learned from its last `min_samples` answers of up to
    /// this long ago (`window`, if that is longer). At most 7 days. Default `15min`: ten
    /// calls a minute reach the quantile after ten minutes. It costs 12 bytes per answer
    /// kept (at most `min(min_samples, 1024)`, so 1,200 bytes at the default), whatever
    /// its length; a busy peer still forgets after `window`.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max_history: Duration,
    /// Number of sub-windows the window rotates through; a sample counts for between
    /// `window - window / sub_windows` and `window`. Default `6`.
    pub sub_windows: u32,
    /// Significant figures the histograms keep, 1 to 3. Default `2` (1% resolution).
    pub significant_figures: u8,
    /// Recompute the deadline after this many new samples (it is also recomputed when a
    /// sub-window rotates). Default `256`.
    pub recompute_every: u64,
    /// Independent misses that declare a peer silent: calls that ran out their deadline
    /// with no answer from the peer since they started. The first makes the peer
    /// suspect. `0` turns silence detection off. Default `2`.
    pub silent_after_misses: u32,
    /// Whether new calls to a silent peer fail at once (all but one probe at a time).
    /// When off they go through with the deadline cut to `min`. Default `true`.
    pub fail_fast: bool,
    /// Wait before the first probe of a silent peer; doubles after each failed probe, with
    /// up to 25% random jitter added. Default `10ms`: one probe is in flight at a time and
    /// most of them carry the peer's old deadline, so probing a blackhole costs little,
    /// while a peer that comes back waits at most a probe and a gap (EVALUATION.md has
    /// the sweep these defaults were picked from).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub probe_backoff: Duration,
    /// Longest wait between probes. Default `100ms`.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub probe_backoff_max: Duration,
}

impl Default for TimeoutPolicy {
    fn default() -> Self {
        TimeoutPolicy {
            quantile: 0.999,
            factor: 2.0,
            margin: Duration::from_millis(5),
            min: Duration::from_millis(10),
            max: Duration::from_secs(30),
            cold_start: Duration::from_secs(1),
            min_samples: 100,
            window: Duration::from_secs(60),
            max_history: Duration::from_secs(15 * 60),
            sub_windows: 6,
            significant_figures: 2,
            recompute_every: 256,
            silent_after_misses: 2,
            fail_fast: true,
            probe_backoff: Duration::from_millis(10),
            probe_backoff_max: Duration::from_millis(100),
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        impl TimeoutPolicy {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$name = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Sets [`TimeoutPolicy::quantile`].
    quantile: f64;
    /// Sets [`TimeoutPolicy::factor`].
    factor: f64;
    /// Sets [`TimeoutPolicy::margin`].
    margin: Duration;
    /// Sets [`TimeoutPolicy::min`].
    min: Duration;
    /// Sets [`TimeoutPolicy::max`].
    max: Duration;
    /// Sets [`TimeoutPolicy::cold_start`].
    cold_start: Duration;
    /// Sets [`TimeoutPolicy::min_samples`].
    min_samples: u64;
    /// Sets [`TimeoutPolicy::window`].
    window: Duration;
    /// Sets [`TimeoutPolicy::max_history`].
    max_history: Duration;
    /// Sets [`TimeoutPolicy::sub_windows`].
    sub_windows: u32;
    /// Sets [`TimeoutPolicy::significant_figures`].
    significant_figures: u8;
    /// Sets [`TimeoutPolicy::recompute_every`].
    recompute_every: u64;
    /// Sets [`TimeoutPolicy::silent_after_misses`].
    silent_after_misses: u32;
    /// Sets [`TimeoutPolicy::fail_fast`].
    fail_fast: bool;
    /// Sets [`TimeoutPolicy::probe_backoff`].
    probe_backoff: Duration;
    /// Sets [`TimeoutPolicy::probe_backoff_max`].
    probe_backoff_max: Duration;
}

impl TimeoutPolicy {
    /// Checks every field; the first bad one is named in the error.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let fail = |field, problem: String| Err(PolicyError { field, problem });
        if !(self.quantile > 0.0 && self.quantile <= 1.0) {
            return fail(
                "quantile",
                format!("must be in (0, 1], got {}", self.quantile),
            );
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return fail(
                "factor",
                format!("must be a finite number >= 1, got {}", self.factor),
            );
        }
        if self.min.is_zero() {
            return fail("min", "must be greater than zero".into());
        }
        if self.max > MAX_DEADLINE {
            return fail(
                "max",
                format!("must be at most {MAX_DEADLINE:?}, got {:?}", self.max),
            );
        }
        if self.min > self.max {
            return fail(
                "min",
                format!("({:?}) must not exceed max ({:?})", self.min, self.max),
            );
        }
        if self.margin > self.max {
            return fail(
                "margin",
                format!("({:?}) must not exceed max ({:?})", self.margin, self.max),
            );
        }
        if self.cold_start < self.min || self.cold_start > self.max {
            return fail(
                "cold_start",
                format!(
                    "({:?}) must lie within [min, max] = [{:?}, {:?}]",
                    self.cold_start, self.min, self.max
                ),
            );
        }
        if self.min_samples == 0 {
            return fail("min_samples", "must be at least 1".into());
        }
        if self.window.is_zero() || self.window > MAX_WINDOW {
            return fail(
                "window",
                format!("must be in (0, {MAX_WINDOW:?}], got {:?}", self.window),
            );
        }
        if self.max_history > MAX_WINDOW {
            return fail(
                "max_history",
                format!("must be at most {MAX_WINDOW:?}, got {:?}", self.max_history),
            );
        }
        if self.sub_windows == 0 || self.sub_windows > MAX_SUB_WINDOWS {
            return fail(
                "sub_windows",
                format!("must be in 1..={MAX_SUB_WINDOWS}, got {}", self.sub_windows),
            );
        }
        if self.sub_window() < MIN_SUB_WINDOW {
            return fail(
                "sub_windows",
                format!(
                    "window / sub_windows = {:?} is shorter than {MIN_SUB_WINDOW:?}",
                    self.sub_window()
                ),
            );
        }
        if !(1..=3).contains(&self.significant_figures) {
            return fail(
                "significant_figures",
                format!("must be 1, 2 or 3, got {}", self.significant_figures),
            );
        }
        if self.recompute_every == 0 {
            return fail("recompute_every", "must be at least 1".into());
        }
        if self.probe_backoff.is_zero() || self.probe_backoff > MAX_DEADLINE {
            return fail(
                "probe_backoff",
                format!(
                    "must be in (0, {MAX_DEADLINE:?}], got {:?}",
                    self.probe_backoff
                ),
            );
        }
        if self.probe_backoff_max < self.probe_backoff || self.probe_backoff_max > MAX_DEADLINE {
            return fail(
                "probe_backoff_max",
                format!(
                    "({:?}) must lie within [probe_backoff, {MAX_DEADLINE:?}]",
                    self.probe_backoff_max
                ),
            );
        }
        Ok(())
    }

    /// Heap bytes of the last answers one history (a peer's, or one of its latency
    /// classes') keeps under this policy, whatever `max_history` is: 12 bytes per answer,
    /// `min(min_samples, 1024)` answers; 1,200 bytes at the default policy, at most 12,288.
    pub fn history_bytes(&self) -> usize {
        crate::peer::history::capacity(self) * crate::peer::history::BYTES_PER_ANSWER
    }

    /// Length of one sub-window.
    pub fn sub_window(&self) -> Duration {
        self.window / self.sub_windows.max(1)
    }

    /// The deadline for a peer whose window holds `samples` samples and whose configured
    /// quantile is `quantile_value` (ignored during cold start).
    pub fn deadline(&self, samples: u64, quantile_value: Duration) -> (Duration, DeadlineSource) {
        if samples < self.min_samples {
            return (self.cold_start, DeadlineSource::ColdStart);
        }
        let raw = quantile_value
            .as_secs_f64()
            .mul_add(self.factor, self.margin.as_secs_f64());
        let Ok(raw) = Duration::try_from_secs_f64(raw) else {
            // Too large for a Duration: far past max.
            return (self.max, DeadlineSource::ClampedMax);
        };
        if raw < self.min {
            (self.min, DeadlineSource::ClampedMin)
        } else if raw > self.max {
            (self.max, DeadlineSource::ClampedMax)
        } else {
            (raw, DeadlineSource::Quantile)
        }
    }

    /// The deadline from an upper estimate of the quantile (`estimate`, in seconds, from
    /// fewer than `min_samples` answers, the slowest `slowest`): `estimate × factor +
    /// margin`, but never above `cold_start` unless the answers show a peer slower than
    /// it, and then at most twice the quantile formula on the slowest answer; within
    /// `[min, max]`.
    pub(crate) fn estimated_deadline(&self, estimate: f64, slowest: Duration) -> Duration {
        let secs = |d: Duration| d.as_secs_f64();
        let learned = estimate.mul_add(self.factor, secs(self.margin));
        let ceiling =
            secs(self.cold_start).max(2.0 * secs(slowest).mul_add(self.factor, secs(self.margin)));
        let raw = learned.min(ceiling).clamp(secs(self.min), secs(self.max));
        Duration::try_from_secs_f64(raw).unwrap_or(self.max)
    }

    /// Whether two policies shape the latency window the same way (so it can be kept).
    pub(crate) fn same_window(&self, other: &TimeoutPolicy) -> bool {
        crate::peer::history::capacity(self) == crate::peer::history::capacity(other)
            && self.window == other.window
            && self.sub_windows == other.sub_windows
            && self.significant_figures == other.significant_figures
            && self.min == other.min
            && self.max == other.max
    }
}

/// Why a peer's deadline has the value it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum DeadlineSource {
    /// Fewer than two answers to learn from: the policy's `cold_start`.
    ColdStart,
    /// From two answers to `min_samples`: an upper estimate of the quantile (the larger
    /// of a log-normal prediction bound and a Pareto tail extrapolation, never below the
    /// slowest answer) × factor + margin, at most `cold_start` unless the answers show a
    /// slower peer; within `[min, max]`.
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

/// A policy value that was refused, naming the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    field: &'static str,
    problem: String,
}

impl PolicyError {
    /// The policy field (or layer setting) that was refused.
    pub fn field(&self) -> &'static str {
        self.field
    }

    pub(crate) fn new(field: &'static str, problem: impl Into<String>) -> Self {
        PolicyError {
            field,
            problem: problem.into(),
        }
    }

    /// The same error, saying which peer's policy it was found in.
    pub(crate) fn for_peer(mut self, peer: &dyn fmt::Debug) -> Self {
        self.problem = format!("{} (in the policy for peer {peer:?})", self.problem);
        self
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid timeout policy: `{}` {}",
            self.field, self.problem
        )
    }
}

impl std::error::Error for PolicyError {}

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
    /// Samples the deadline was learned from.
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

impl DeadlineExplanation {
    /// Explains `source` under `policy`, with what the history said (samples, the
    /// quantile's value or estimate, how far back beyond the window).
    pub(crate) fn new(
        source: DeadlineSource,
        policy: &TimeoutPolicy,
        (samples, quantile_value, history): (u64, Duration, Duration),
        per_peer_policy: bool,
    ) -> Self {
        DeadlineExplanation {
            source,
            quantile: policy.quantile,
            quantile_value,
            factor: policy.factor,
            margin: policy.margin,
            min: policy.min,
            max: policy.max,
            samples,
            history,
            min_samples: policy.min_samples,
            per_peer_policy,
            class: None,
        }
    }
}

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
