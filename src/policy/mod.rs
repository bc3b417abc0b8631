//! Deadline policy: how a peer's latency history becomes its deadline.
//!
//! A peer's deadline is `clamp(quantile × factor + margin, min, max)`, where `quantile` is read
//! from the peer's time-decaying latency histogram. A quiet peer, whose window holds fewer
//! than `min_samples`, reads it from its last `min_samples` answers of up to `max_history`
//! ago; with fewer still, from its second answer on, from an upper estimate of the quantile
//! (see [`DeadlineSource::Estimate`]). Before that the peer gets `cold_start`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::explain::{DeadlineExplanation, DeadlineSource, Learned};
use crate::units::to_units;

mod budget;
#[cfg(feature = "serde")]
mod map_only;
mod validate;

pub(crate) use self::budget::{Account, Ledger};

/// Longest `max` (and so longest deadline) a policy accepts.
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest latency window a policy accepts.
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Most sub-windows a policy accepts: each one is a histogram per peer.
pub const MAX_SUB_WINDOWS: u32 = 64;
/// Shortest sub-window (`window / sub_windows`) a policy accepts.
pub const MIN_SUB_WINDOW: Duration = Duration::from_millis(1);
/// Most heap bytes one latency history (histograms and last answers) may hold: a policy
/// whose [`max_window_bytes`](TimeoutPolicy::max_window_bytes) is larger is refused.
///
/// 1 MiB is 21 times the default policy's 48,592 bytes: room for 3 significant figures at
/// the default shape (286,720 bytes) or 64 sub-windows at 2 (432,640), while the largest
/// shape the other limits allow (7.45 MB: 64 sub-windows of 3 significant figures from 1us
/// to 24h) would make 10,000 peers hold 71 GB. A layer holds at most `max_peers` times the
/// largest `max_window_bytes` of its policies, times `1 + max_classes`.
pub const MAX_WINDOW_BYTES: usize = 1 << 20;
/// The default [`TimeoutPolicy::memory_budget`]: 480 MiB, room for the default 10,000 busy
/// peers' own histories at the default policy (486 MB), leaving 32 MiB of 512 for the
/// rest of what a layer holds.
pub const DEFAULT_MEMORY_BUDGET: usize = 480 << 20;
/// Largest [`TimeoutPolicy::memory_budget`] a policy accepts: 1 TiB.
pub const MAX_MEMORY_BUDGET: usize = 1 << 40;
/// Largest `long_probe_spacing` a policy accepts.
pub const MAX_LONG_PROBE_SPACING: u32 = 100;

/// Most answers a latency history keeps, whatever `min_samples` is.
pub(crate) const MAX_RECENT: usize = 1024;

/// Heap bytes per answer a history keeps: its latency in 64 bits and its second (12 bytes,
/// packed), plus a scratch copy of the latency to sort (8).
pub(crate) const BYTES_PER_ANSWER: usize = 20;

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
///
/// With the `serde` feature a policy reads from a map of fields (missing fields take their
/// defaults, unknown ones are refused), never from a list of values by position.
#[derive(Clone, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    // `remote = "Self"`: the derives become inherent functions, which the trait impls in
    // `map_only` call, so that deserializing can insist on a map.
    serde(remote = "Self", default, deny_unknown_fields)
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
    /// Deadline used before a peer's second answer, and the ceiling of its estimate until
    /// `min_samples` unless its answers show a slower peer. Default `1s`.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub cold_start: Duration,
    /// Samples needed before the quantile is trusted. Default `100`: with fewer, the top
    /// sample stands in for a high quantile and underestimates a heavy tail. From the second
    /// sample to this many the deadline is an upper estimate of the quantile instead; a
    /// busy peer (one whose pace puts this many in its window) keeps `cold_start` until
    /// then unless its answers show a slower peer. `1000` makes a busy peer wait for the
    /// answers that hold a p99.9 (EVALUATION.md measures the trade).
    pub min_samples: u64,
    /// How far back latency history reaches, at most 7 days. Default `60s`.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub window: Duration,
    /// How far back a quiet peer's history reaches: while its window holds fewer than
    /// `min_samples`, its deadline is learned from its last `min_samples` answers of up to
    /// this long ago (`window`, if that is longer). At most 7 days. Default `15min`: ten
    /// calls a minute reach the quantile after ten minutes. It costs 20 bytes per answer
    /// kept (at most `min(min_samples, 1024)`, so 2,000 bytes at the default), whatever
    /// its length; a busy peer still forgets after `window`.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max_history: Duration,
    /// Number of sub-windows the window rotates through; a sample counts for between
    /// `window - window / sub_windows` and `window`. Default `6`.
    pub sub_windows: u32,
    /// Significant figures the histograms keep, 1 to 3. Default `2` (1% resolution).
    pub significant_figures: u8,
    /// Recompute the deadline after this many new answers are recorded (it is also
    /// recomputed when a sub-window rotates). Default `256`. From 64 up, a learned peer's
    /// answers may wait in per-core batches, and a busy peer's are sampled (README's
    /// "Cost"); below 64 a learned peer takes its lock for each answer as it comes (unless
    /// a core found the lock taken), and records every one, never sampled.
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
    /// Probes of a silent peer alternate a short deadline (the quantile the deadline from
    /// before the silence was made from, `(deadline - margin) / factor`) with a long one (at least `cold_start`, doubling up to `max`, so a peer
    /// that comes back slower is not locked out; but past the first long deadline only up
    /// to a 100th of the silence so far, so no call to a peer silent for less than 100 s
    /// waits longer than `cold_start` and a probe longer than that wastes under 1% of the
    /// silence). After the `k`-th long probe ran out, only short ones go for
    /// `long_probe_spacing × L`, `L` the first long deadline doubled `k - 1` times (at most
    /// 8 times it). In `1..=100`; default `8`: long probes hold the probe slot at most a
    /// ninth of the time.
    pub long_probe_spacing: u32,
    /// Shortest time a peer must answer nothing, with calls to it outstanding, before
    /// those calls are cut as a silence. A call past its deadline is cut once the peer has
    /// answered nothing for `max(deadline, min_silence)` (since the call started, or since
    /// the peer's last answer if that came later); while the peer keeps answering other
    /// calls it is a straggler on a live peer (a lost packet, a slow route), held up to
    /// `max(2 × deadline, cold_start, min_silence)` (at most `max`, never past its caller's own
    /// deadline). At most `max`; `0` turns the floor off. Default `0`: silence is cut
    /// after one deadline; a floor longer than a host's CPU stalls keeps their calls,
    /// detecting a silence that much later (EVALUATION.md measures the trade).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_adaptive_timeout::TimeoutPolicy;
    ///
    /// let policy = TimeoutPolicy::default().min_silence(Duration::from_millis(350));
    /// assert!(policy.validate().is_ok());
    /// assert!(TimeoutPolicy::default().min_silence(Duration::MAX).validate().is_err());
    /// ```
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub min_silence: Duration,
    /// Most heap bytes a whole layer's latency histories (every peer's own and its latency
    /// classes', histograms and last answers) may hold together, whatever the number of
    /// peers and classes. A history that would pass it keeps no histograms (or, with no
    /// room for its answers, learns nothing and keeps its `cold_start`) while the table
    /// makes room by letting its idlest peers go, at most 8 per call that finds the budget
    /// short. A layer's budget is its default policy's (a per-peer override's is not
    /// used); a new default puts a new budget in force at once. At least one history's
    /// [`max_window_bytes`](Self::max_window_bytes), at most [`MAX_MEMORY_BUDGET`].
    /// Default [`DEFAULT_MEMORY_BUDGET`] (480 MiB).
    pub memory_budget: usize,
    /// The account of the layer the policy is in force in (none outside a layer).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) ledger: Ledger,
}

/// How far past the slowest answer seen a history of fewer than `min_samples` answers lets
/// the extrapolated tail raise its deadline over `cold_start`: four times covers the high
/// quantile of a lognormal tail up to a spread (σ) of about 1.1 read from 30 answers.
pub(crate) const MAX_EXTRAPOLATION: f64 = 8.0;

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
            long_probe_spacing: 8,
            min_silence: Duration::ZERO,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            ledger: Ledger::default(),
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
    /// Sets [`TimeoutPolicy::long_probe_spacing`].
    long_probe_spacing: u32;
    /// Sets [`TimeoutPolicy::min_silence`].
    min_silence: Duration;
    /// Sets [`TimeoutPolicy::memory_budget`].
    ///
    /// ```
    /// use tower_adaptive_timeout::{TimeoutPolicy, MAX_MEMORY_BUDGET};
    ///
    /// // 64 MiB for every history of the layer: about 1,300 busy peers at the defaults.
    /// let policy = TimeoutPolicy::default().memory_budget(64 << 20);
    /// assert!(policy.validate().is_ok());
    /// assert!(TimeoutPolicy::default().memory_budget(0).validate().is_err());
    /// assert!(TimeoutPolicy::default().memory_budget(MAX_MEMORY_BUDGET + 1).validate().is_err());
    /// ```
    memory_budget: usize;
}

/// Every public field; the layer's account is no part of what a policy says.
impl fmt::Debug for TimeoutPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutPolicy")
            .field("quantile", &self.quantile)
            .field("factor", &self.factor)
            .field("margin", &self.margin)
            .field("min", &self.min)
            .field("max", &self.max)
            .field("cold_start", &self.cold_start)
            .field("min_samples", &self.min_samples)
            .field("window", &self.window)
            .field("max_history", &self.max_history)
            .field("sub_windows", &self.sub_windows)
            .field("significant_figures", &self.significant_figures)
            .field("recompute_every", &self.recompute_every)
            .field("silent_after_misses", &self.silent_after_misses)
            .field("fail_fast", &self.fail_fast)
            .field("probe_backoff", &self.probe_backoff)
            .field("probe_backoff_max", &self.probe_backoff_max)
            .field("long_probe_spacing", &self.long_probe_spacing)
            .field("min_silence", &self.min_silence)
            .field("memory_budget", &self.memory_budget)
            .finish()
    }
}

impl TimeoutPolicy {
    /// This policy, its histories charged to `account` (the layer's).
    pub(crate) fn accounted(&self, account: &Arc<Account>) -> TimeoutPolicy {
        TimeoutPolicy {
            ledger: Ledger::new(account.clone()),
            ..self.clone()
        }
    }

    /// Heap bytes of the last answers one history (a peer's, or one of its latency
    /// classes') keeps under this policy, whatever `max_history` is: 20 bytes per answer
    /// (its latency in 64 bits, so any `max` up to [`MAX_DEADLINE`] is kept as it is),
    /// `min(min_samples, 1024)` answers; 2,000 bytes at the default policy, at most 20,480.
    pub fn history_bytes(&self) -> usize {
        self.history_capacity() * BYTES_PER_ANSWER
    }

    /// The most heap bytes one latency history (a peer's, or one of its latency classes')
    /// can hold under this policy: its histograms (`sub_windows + 1`, the ring and its
    /// running sum, each with one `u32` count per bucket hdrhistogram needs for
    /// `[min / 100, max]` at `significant_figures`; allocated as a busy peer first writes
    /// them, none for a quiet one) plus its last answers,
    /// [`history_bytes`](Self::history_bytes). [`validate`](Self::validate) refuses a
    /// policy above [`MAX_WINDOW_BYTES`]; a peer holds at most `1 + max_classes` histories
    /// (see [`Builder::max_classes`](crate::Builder::max_classes)).
    /// [`PeerSnapshot::window_bytes`](crate::PeerSnapshot) is what a peer holds now.
    /// 48,592 bytes for the default policy.
    pub fn max_window_bytes(&self) -> usize {
        self.histogram_bytes().saturating_add(self.history_bytes())
    }

    /// The most heap bytes of one history's histograms: 46,592 for the default policy.
    pub(crate) fn histogram_bytes(&self) -> usize {
        let (low, high, sigfig) = self.histogram_bounds();
        let counts = histogram_counts(low, high, sigfig);
        let histograms = usize::try_from(self.sub_windows)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        histograms.saturating_mul(counts.saturating_mul(std::mem::size_of::<u32>()))
    }

    /// The bounds of this policy's histograms: lowest discernible and highest trackable
    /// value (in the window's units, microseconds) and significant figures.
    ///
    /// Resolution finer than 1% of the shortest deadline is never needed: latencies below
    /// `min / 100` share buckets, which keeps a peer's window under 48 KiB at defaults.
    pub(crate) fn histogram_bounds(&self) -> (u64, u64, u8) {
        let low = (to_units(self.min) / 100).max(1);
        let high = to_units(self.max).max(low.saturating_mul(2));
        (low, high, self.significant_figures)
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

    /// The deadline from an upper estimate of the quantile (seconds, from fewer than
    /// `min_samples` answers): `estimate × factor + margin` within `[min, max]`, held to
    /// `cold_start` (the bound is wide for want of answers) unless the answers show a slower
    /// peer: twice the formula on `slowest`, or the formula on `plain`, the quantile as their
    /// tail extrapolates it, at most [`MAX_EXTRAPOLATION`] times `slowest` (a tail read from
    /// a few answers in two clusters, 20 and 290 ms, extrapolates to tens of seconds).
    pub(crate) fn estimated_deadline(
        &self,
        estimate: f64,
        plain: f64,
        slowest: Duration,
    ) -> Duration {
        let secs = |d: Duration| d.as_secs_f64();
        let formula = |q: f64| q.mul_add(self.factor, secs(self.margin));
        let plain = plain.min(MAX_EXTRAPOLATION * secs(slowest));
        let shown = (2.0 * formula(secs(slowest))).max(formula(plain));
        let raw = formula(estimate).min(secs(self.cold_start).max(shown));
        Duration::try_from_secs_f64(raw.clamp(secs(self.min), secs(self.max))).unwrap_or(self.max)
    }

    /// How many answers a history needs before its `quantile` is seen rather than
    /// extrapolated: `1 / (1 - quantile)`, rounded (1,000 for p99.9). A latency class's
    /// deadline is at least its peer's until its window holds that many.
    pub(crate) fn answers_to_see(&self) -> u64 {
        let n = (1.0 / (1.0 - self.quantile)).round();
        if n.is_finite() && n >= 1.0 {
            n.min(u64::MAX as f64) as u64
        } else {
            u64::MAX
        }
    }

    /// How many answers a history under this policy keeps: `min_samples`, within
    /// `[1, MAX_RECENT]`.
    pub(crate) fn history_capacity(&self) -> usize {
        usize::try_from(self.min_samples)
            .unwrap_or(MAX_RECENT)
            .clamp(1, MAX_RECENT)
    }

    /// Explains a deadline from `source` under this policy, with what the history said.
    pub(crate) fn explain(
        &self,
        source: DeadlineSource,
        (samples, quantile_value, history): Learned,
        per_peer_policy: bool,
    ) -> DeadlineExplanation {
        DeadlineExplanation {
            source,
            quantile: self.quantile,
            quantile_value,
            factor: self.factor,
            margin: self.margin,
            min: self.min,
            max: self.max,
            samples,
            history,
            min_samples: self.min_samples,
            per_peer_policy,
            class: None,
        }
    }

    /// Whether two policies shape the latency window the same way (so it can be kept).
    pub(crate) fn same_window(&self, other: &TimeoutPolicy) -> bool {
        self.history_capacity() == other.history_capacity()
            && self.window == other.window
            && self.sub_windows == other.sub_windows
            && self.significant_figures == other.significant_figures
            && self.min == other.min
            && self.max == other.max
    }
}

/// How many counts hdrhistogram allocates for `new_with_bounds(low, high, sigfig)`, by its
/// own arithmetic (hdrhistogram 7.5: `sub_bucket_count / 2` counts per bucket needed to
/// cover `high`, plus one bucket). Finite for any input; `low` is at least 1.
fn histogram_counts(low: u64, high: u64, sigfig: u8) -> usize {
    // Single-unit resolution up to 2 x 10^sigfig, in a power-of-two number of sub-buckets.
    let largest = 2 * 10u64.pow(u32::from(sigfig.min(5)));
    let sub_bucket_magnitude = u64::BITS - (largest - 1).leading_zeros();
    let unit_magnitude = u64::BITS - 1 - low.max(1).leading_zeros();
    let sub_buckets = 1u128 << sub_bucket_magnitude;
    let mut untrackable = sub_buckets << unit_magnitude;
    let mut buckets = 1u128;
    while untrackable <= u128::from(high) {
        untrackable <<= 1;
        buckets += 1;
    }
    usize::try_from((buckets + 1) * (sub_buckets / 2)).unwrap_or(usize::MAX)
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

    /// The same error, saying which peer's policy it was found in (by its bounded label).
    pub(crate) fn for_peer(mut self, peer: &dyn fmt::Debug) -> Self {
        let peer = crate::label::label(peer);
        self.problem = format!("{} (in the policy for peer {peer})", self.problem);
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

#[cfg(test)]
mod tests {
    use hdrhistogram::Histogram;

    use super::*;

    #[test]
    fn histogram_counts_follow_hdrhistogram() {
        let lows = [1, 2, 3, 7, 10, 100, 999, 1_000, 86_400_000, 864_000_000];
        for low in lows {
            for high in [2 * low, 2 * low + 1, 1 << 20, 30_000_000, 86_400_000_000] {
                for sigfig in 0..=5 {
                    if high < 2 * low {
                        continue;
                    }
                    let h = Histogram::<u32>::new_with_bounds(low, high, sigfig).unwrap();
                    assert_eq!(
                        histogram_counts(low, high, sigfig),
                        h.distinct_values(),
                        "low {low} high {high} sigfig {sigfig}"
                    );
                }
            }
        }
    }

    #[test]
    fn max_window_bytes_is_finite_for_any_policy() {
        let absurd = TimeoutPolicy::default()
            .min(Duration::MAX)
            .max(Duration::MAX)
            .sub_windows(u32::MAX)
            .significant_figures(u8::MAX);
        assert!(absurd.max_window_bytes() > MAX_WINDOW_BYTES);
        assert!(absurd.validate().is_err());
        let zero = TimeoutPolicy::default()
            .min(Duration::ZERO)
            .max(Duration::ZERO);
        assert!(zero.max_window_bytes() > 0);
    }
}
