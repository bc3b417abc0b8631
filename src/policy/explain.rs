//! Why a deadline has its value: the rule that produced it ([`DeadlineSource`]), the numbers
//! that went into it ([`DeadlineExplanation`]), and a peer's memory of the deadlines it
//! published ([`Explained`]), so a call is explained by the numbers of its own deadline.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::TimeoutPolicy;

/// Why a peer's deadline has the value it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum DeadlineSource {
    /// Fewer than two answers to learn from: the policy's `cold_start`.
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

/// What a history said when a deadline was computed from it: samples learned from, the
/// quantile's value (or its upper estimate), and how far back beyond the window.
pub(crate) type Learned = (u64, Duration, Duration);

impl DeadlineExplanation {
    /// Explains `source` under `policy`, with what the history said.
    pub(crate) fn new(
        source: DeadlineSource,
        policy: &TimeoutPolicy,
        (samples, quantile_value, history): Learned,
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

/// How many runs of equal published deadlines a peer keeps the explanation of.
const EXPLAINED: usize = 6;

/// One published deadline, when it was published, and the numbers it came from.
#[derive(Clone)]
struct Computed {
    at: Instant,
    deadline: Duration,
    source: DeadlineSource,
    policy: Arc<TimeoutPolicy>,
    learned: Learned,
    per_peer_policy: bool,
}

impl Computed {
    fn explanation(&self, source: DeadlineSource) -> DeadlineExplanation {
        let Computed {
            policy,
            learned,
            per_peer_policy,
            ..
        } = self;
        DeadlineExplanation::new(source, policy, *learned, *per_peer_policy)
    }
}

/// Consecutive publications of one deadline (value and source): the first and the last.
struct Run {
    first: Computed,
    last: Computed,
}

impl Run {
    fn gave(&self, deadline: Duration, source: DeadlineSource) -> bool {
        (self.first.deadline, self.first.source) == (deadline, source)
    }

    /// The publication a call that started at `started` got its deadline from: the last
    /// one if it came before, else the first (the ones between are not kept).
    fn for_call(&self, started: Instant) -> &Computed {
        if self.last.at <= started {
            &self.last
        } else {
            &self.first
        }
    }
}

/// The explanations of a peer's latest published deadlines, kept under its lock, so a call
/// is explained by the numbers its own deadline came from even after newer ones were
/// published (a deadline moves while its calls are in flight).
pub(crate) struct Explained {
    /// A ring of the latest runs; `newest` is the one written last.
    runs: [Option<Run>; EXPLAINED],
    newest: usize,
}

impl Explained {
    pub(crate) fn new() -> Self {
        Explained {
            runs: Default::default(),
            newest: 0,
        }
    }

    /// Notes a deadline published at `at` and the numbers it came from.
    pub(crate) fn publish(
        &mut self,
        at: Instant,
        (deadline, source): (Duration, DeadlineSource),
        policy: &Arc<TimeoutPolicy>,
        learned: Learned,
        per_peer_policy: bool,
    ) {
        let computed = Computed {
            at,
            deadline,
            source,
            policy: policy.clone(),
            learned,
            per_peer_policy,
        };
        match &mut self.runs[self.newest] {
            Some(run) if run.gave(deadline, source) => run.last = computed,
            _ => {
                self.newest = (self.newest + 1) % EXPLAINED;
                self.runs[self.newest] = Some(Run {
                    first: computed.clone(),
                    last: computed,
                });
            }
        }
    }

    /// Why a call that started at `started` with `deadline` (from `source`) had it: the
    /// numbers of the latest publication of that deadline before the call started. A
    /// deadline cut for a silent peer was the policy's `min`; a caller's needs no numbers.
    /// One published too long ago to be remembered is explained by the newest numbers, with
    /// the quantile value its formula must have had.
    pub(crate) fn explain(
        &self,
        started: Instant,
        deadline: Duration,
        source: DeadlineSource,
    ) -> DeadlineExplanation {
        let newest_first = (0..EXPLAINED)
            .filter_map(|back| self.runs[(self.newest + EXPLAINED - back) % EXPLAINED].as_ref());
        let mut matching = newest_first
            .clone()
            .filter(|run| run.gave(deadline, source));
        let chosen = matching
            .clone()
            .find(|run| run.first.at <= started)
            .or_else(|| matching.next());
        if let Some(run) = chosen {
            return run.for_call(started).explanation(source);
        }
        let Some(newest) = newest_first.clone().next() else {
            return DeadlineExplanation::untracked();
        };
        let mut explanation = newest.last.explanation(source);
        match source {
            DeadlineSource::SilentPeer => explanation.min = deadline,
            DeadlineSource::Quantile => {
                let raw = deadline.saturating_sub(explanation.margin);
                explanation.quantile_value = raw.div_f64(explanation.factor.max(1.0));
            }
            _ => {}
        }
        explanation
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_explained_by_the_publication_it_started_under() {
        let ms = Duration::from_millis;
        let policy = Arc::new(TimeoutPolicy::default().quantile(0.5));
        let t0 = Instant::now();
        let mut explained = Explained::new();
        let publish = |e: &mut Explained, at: u64, q: u64, samples| {
            let (deadline, source) = policy.deadline(samples, ms(q));
            let learned = (samples, ms(q), Duration::ZERO);
            e.publish(t0 + ms(at), (deadline, source), &policy, learned, false);
            deadline
        };
        let cold = publish(&mut explained, 0, 0, 0);
        publish(&mut explained, 10, 0, 50);
        let first = publish(&mut explained, 20, 100, 100);
        publish(&mut explained, 30, 100, 120);
        publish(&mut explained, 40, 180, 150);
        let quantile = DeadlineSource::Quantile;
        let at = |started| explained.explain(t0 + ms(started), first, quantile);
        assert_eq!(
            at(25).samples,
            100,
            "started between the first and last of the run"
        );
        assert_eq!(
            at(35).samples,
            120,
            "started after the run's last publication"
        );
        assert_eq!(
            at(45).quantile_value,
            ms(100),
            "started under a newer deadline"
        );
        let cold = explained.explain(t0 + ms(15), cold, DeadlineSource::ColdStart);
        assert_eq!((cold.source, cold.samples), (DeadlineSource::ColdStart, 50));
        let cut = explained.explain(t0, ms(10), DeadlineSource::SilentPeer);
        assert_eq!((cut.source, cut.min), (DeadlineSource::SilentPeer, ms(10)));
        // Forgotten: the newest numbers, with the quantile its formula must have had.
        for q in 200..220 {
            publish(&mut explained, 50, q, 200);
        }
        let old = explained.explain(t0 + ms(25), first, quantile);
        assert_eq!(old.quantile_value.mul_f64(old.factor) + old.margin, first);
    }
}
