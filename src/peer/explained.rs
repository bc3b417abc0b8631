//! A peer's memory of the deadlines it published and the numbers each came from, so a call
//! is explained by the numbers of its own deadline even after newer ones were published.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::explain::{DeadlineExplanation, DeadlineSource, Learned};
use crate::policy::TimeoutPolicy;

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
        policy.explain(source, *learned, *per_peer_policy)
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

    /// Whether one of the publications kept gave `deadline` from `source`.
    pub(crate) fn gave(&self, deadline: Duration, source: DeadlineSource) -> bool {
        self.runs
            .iter()
            .flatten()
            .any(|run| run.gave(deadline, source))
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
