//! One latency history and the deadline learned from it: a peer's own, or one of its
//! latency classes'.
//!
//! The deadline goes through three regimes as answers come: `cold_start` before the second,
//! an upper estimate of the quantile until `min_samples` ([`DeadlineSource::Estimate`]),
//! then the quantile of the window (or, for a quiet peer, of its last `min_samples` answers
//! of up to `max_history` ago). A busy peer, whose pace fills its window with
//! `min_samples` answers, keeps `cold_start` until then unless its answers show a slower
//! peer: the estimate serves quiet peers.
//!
//! A history re-seeded by a probe that answered slower than the peer's deadline
//! ([`Lane::seed`]) starts from a cold-start deadline that the probe's latency fits in,
//! not below it, until its first two answers give an estimate.
//!
//! It is recomputed here, under the peer's lock, never per call: on every answer while it
//! is still learning from its last answers (fewer than `min_samples`, and than the
//! `MAX_RECENT` they are kept up to: at most that many are sorted), else on a rotation or
//! every `recompute_every` answers.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::explained::Explained;
use super::window::{Reading, Window};
use crate::explain::{DeadlineSource, Learned};
use crate::policy::TimeoutPolicy;

/// How many of a history's last outcomes are kept: those that say whether it slowed down
/// as a whole or has calls that never answer among calls that do.
const OUTCOMES: u64 = u16::BITS as u64;

/// A history whose last this many outcomes all ran out their deadlines, with no answer
/// between them, slowed down as a whole: a chance run of hangs this long among answers is
/// rare (one in 390,000 positions at a 20% hang rate, one in 15,000 at 30%).
const RUN_OUT_IN_A_ROW: u32 = 8;

/// A latency history and what was last learned from it.
pub(crate) struct Lane {
    pub(crate) window: Window,
    /// Why the deadline last computed has its value.
    pub(crate) source: DeadlineSource,
    /// Samples it was learned from, the quantile's value (or estimate), and how far back
    /// beyond the window the samples reach.
    learned: Learned,
    /// The deadlines last published from this history and what each came from, so a call
    /// is explained by the numbers of its own deadline.
    pub(crate) explained: Explained,
    since_recompute: u64,
    /// The cold-start deadline a probe's latency asked for ([`Lane::seed`]; zero: none),
    /// used instead of a shorter `cold_start` until the history learns from its answers.
    seed: Duration,
    /// When a call of this history was last answered past its deadline (a held
    /// straggler): evidence that waiting past a deadline gets answers.
    late_at: Option<Instant>,
    /// The last [`OUTCOMES`] outcomes of this history's calls, newest in bit 0: 1 a
    /// deadline run out, 0 an answer; `outcomes_seen` of them are real.
    outcomes: u16,
    outcomes_seen: u8,
}

impl Lane {
    /// An empty history under `policy`, starting at `now`.
    pub(crate) fn new(policy: &TimeoutPolicy, now: Instant) -> Lane {
        Lane {
            window: Window::new(policy, now),
            source: DeadlineSource::ColdStart,
            learned: (0, Duration::ZERO, Duration::ZERO),
            explained: Explained::new(),
            since_recompute: 0,
            seed: Duration::ZERO,
            late_at: None,
            outcomes: 0,
            outcomes_seen: 0,
        }
    }

    /// A probe of the silent peer was answered in `latency`, slower than its deadline:
    /// until this history has two answers to estimate from, its cold-start deadline is
    /// one that latency fits in, `latency × factor + margin` within `[cold_start, max]`
    /// (the quantile formula on that one answer). The probe's latency is no sample (it
    /// may have waited out the rest of a partition), but a probe waits at most its own
    /// deadline, so this is bounded too: a peer back as fast as before has it for its
    /// first answer only, then its estimate; one back slower than `cold_start` is no
    /// longer cut below the latency it was just seen to answer in. A later seed only
    /// raises it.
    pub(crate) fn seed(&mut self, latency: Duration, policy: &TimeoutPolicy) {
        let secs = latency
            .as_secs_f64()
            .mul_add(policy.factor, policy.margin.as_secs_f64());
        let fits = Duration::try_from_secs_f64(secs).unwrap_or(policy.max);
        self.seed = self.seed.max(fits.max(policy.cold_start).min(policy.max));
    }

    /// Records `latencies`, answered by `now`, each with the answers it stands for.
    /// Returns whether the deadline is due to be recomputed: the window rotated, the
    /// deadline is still learning, or `recompute_every` answers came since it was.
    pub(crate) fn record(
        &mut self,
        now: Instant,
        latencies: impl Iterator<Item = (Duration, u64)>,
        policy: &TimeoutPolicy,
    ) -> bool {
        let rotated = self.window.advance(now);
        let before = self.since_recompute;
        for (latency, answers) in latencies {
            self.window.record_n(latency, answers, now);
            self.since_recompute = self.since_recompute.saturating_add(answers);
        }
        self.push_outcomes(self.since_recompute.saturating_sub(before), false);
        // Still learning, every answer counts while its last answers fill their ring (at
        // most `MAX_RECENT`, which bounds the sort); past that, with a `min_samples` larger
        // than the ring, every `recompute_every` like a learned history, not on every call.
        let filling = self.learned.0 < policy.history_capacity() as u64;
        rotated || filling || self.since_recompute >= policy.recompute_every
    }

    /// Recomputes the deadline from the history at `now` under `policy` (`overridden`:
    /// a per-peer one), and remembers what it came from.
    pub(crate) fn recompute(
        &mut self,
        now: Instant,
        policy: &Arc<TimeoutPolicy>,
        overridden: bool,
    ) -> (Duration, DeadlineSource) {
        self.since_recompute = 0;
        let reading = self.window.read(now, policy);
        if !matches!(reading, Reading::Few { .. }) {
            // Learned from its own answers: the seed has served (a history that empties
            // later starts again from `cold_start`, as any other).
            self.seed = Duration::ZERO;
        }
        let (deadline, source, learned) = match reading {
            Reading::Few { samples } => (
                policy.cold_start.max(self.seed),
                DeadlineSource::ColdStart,
                (samples, Duration::ZERO, Duration::ZERO),
            ),
            Reading::Estimate {
                value,
                plain,
                slowest,
                samples,
                history,
                busy,
            } => {
                let shown = Duration::try_from_secs_f64(value.min(policy.max.as_secs_f64()));
                let deadline = policy.estimated_deadline(value, plain, slowest);
                // A deadline its caps held below the estimate's formula is explained by
                // the value whose formula gives it.
                let held = deadline
                    .saturating_sub(policy.margin)
                    .div_f64(policy.factor.max(1.0));
                let learned = (samples, shown.unwrap_or(policy.max).min(held), history);
                if busy && deadline <= policy.cold_start {
                    // A busy peer waits for `min_samples` real answers.
                    (policy.cold_start, DeadlineSource::ColdStart, learned)
                } else {
                    (deadline, DeadlineSource::Estimate, learned)
                }
            }
            Reading::Quantile {
                value,
                samples,
                history,
            } => {
                let (deadline, source) = policy.deadline(samples, value);
                (deadline, source, (samples, value, history))
            }
        };
        self.source = source;
        self.learned = learned;
        (self.explained).publish(now, (deadline, source), policy, learned, overridden);
        (deadline, source)
    }

    /// A call of this history was answered at `now`, past its deadline.
    pub(crate) fn note_late(&mut self, now: Instant) {
        self.late_at = Some(now);
    }

    /// Notes `n` outcomes of this history's calls: deadlines run out, or answers.
    pub(crate) fn push_outcomes(&mut self, n: u64, ran_out: bool) {
        let n = n.min(OUTCOMES) as u32;
        self.outcomes = self.outcomes.checked_shl(n).unwrap_or(0);
        if ran_out {
            self.outcomes |= u16::MAX.checked_shr(u16::BITS - n).unwrap_or(0);
        }
        self.outcomes_seen = (u64::from(self.outcomes_seen) + u64::from(n)).min(OUTCOMES) as u8;
    }

    /// The newest outcome noted (an answer, as a censored sample is recorded) was a
    /// deadline run out.
    pub(crate) fn mark_ran_out(&mut self) {
        self.outcomes |= 1;
    }

    /// Whether a deadline run out at `deadline` (a call of this history) may raise the
    /// deadline at `now` as a censored sample: up to `cold_start` always; past it only if
    /// a call of this history was answered past its deadline within the last `window`
    /// (waiting longer got answers), or if this one ends a run of [`RUN_OUT_IN_A_ROW`]
    /// run-out deadlines with no answer between (the history slowed down as a whole).
    /// Nothing tells a call that would have answered later from one that never will: a
    /// history whose calls answer in time but for some that never answer (a hung worker)
    /// would otherwise double its deadline with each hang, up to `max`.
    pub(crate) fn censored_counts(
        &self,
        now: Instant,
        deadline: Duration,
        policy: &TimeoutPolicy,
    ) -> bool {
        let before = RUN_OUT_IN_A_ROW - 1;
        let run =
            u32::from(self.outcomes_seen) >= before && self.outcomes.trailing_ones() >= before;
        deadline <= policy.cold_start
            || (self.late_at).is_some_and(|at| now.saturating_duration_since(at) <= policy.window)
            || run
    }

    /// How many answers the deadline last computed was learned from.
    pub(crate) fn samples(&self) -> u64 {
        self.learned.0
    }

    /// How long answers normally take: the quantile once it is read from `min_samples`,
    /// else the slowest answer kept; at least `min`. A caller's deadline shorter than this
    /// proves nothing when it runs out.
    pub(crate) fn normal_latency(&self, policy: &TimeoutPolicy) -> Duration {
        let seen = match self.source {
            DeadlineSource::ColdStart | DeadlineSource::Estimate => self.window.max(),
            _ => self.learned.1,
        };
        seen.max(policy.min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of `n` answers of `latency` each made `lane` due to be recomputed (and were
    /// recomputed), one a millisecond apart from `now`.
    fn dues(lane: &mut Lane, policy: &Arc<TimeoutPolicy>, now: &mut Instant, n: u64) -> u64 {
        let mut due = 0;
        for _ in 0..n {
            *now += Duration::from_millis(1);
            if lane.record(
                *now,
                std::iter::once((Duration::from_millis(10), 1)),
                policy,
            ) {
                lane.recompute(*now, policy, false);
                due += 1;
            }
        }
        due
    }

    #[tokio::test(start_paused = true)]
    async fn a_seed_holds_until_two_answers_within_cold_start_and_max() {
        let policy = Arc::new(TimeoutPolicy::default().min_samples(5));
        let now = Instant::now();
        let mut lane = Lane::new(&policy, now);
        lane.seed(Duration::from_millis(1_500), &policy);
        let seeded = (Duration::from_millis(3_005), DeadlineSource::ColdStart);
        assert_eq!(lane.recompute(now, &policy, false), seeded);
        // A faster probe lowers nothing; a shorter latency never goes below `cold_start`.
        lane.seed(Duration::from_millis(100), &policy);
        assert_eq!(lane.recompute(now, &policy, false), seeded);
        let mut fresh = Lane::new(&policy, now);
        fresh.seed(Duration::from_millis(100), &policy);
        assert_eq!(fresh.recompute(now, &policy, false).0, policy.cold_start);
        // Any latency, however long, is held to `max`.
        fresh.seed(Duration::MAX, &policy);
        assert_eq!(fresh.recompute(now, &policy, false).0, policy.max);
        // One answer: still the seed. Two: what they say (for these, a millisecond apart,
        // a busy peer's `cold_start` until `min_samples`), and the seed is spent.
        let mut now = now;
        dues(&mut lane, &policy, &mut now, 1);
        assert_eq!(lane.recompute(now, &policy, false), seeded);
        dues(&mut lane, &policy, &mut now, 1);
        let cold = (policy.cold_start, DeadlineSource::ColdStart);
        assert_eq!(lane.recompute(now, &policy, false), cold);
        assert_eq!(lane.seed, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_min_samples_past_the_ring_is_not_recomputed_on_every_answer() {
        // The default learns on every answer until it has its 100.
        let policy = Arc::new(TimeoutPolicy::default());
        let mut now = Instant::now();
        let mut lane = Lane::new(&policy, now);
        assert_eq!(dues(&mut lane, &policy, &mut now, 100), 100);
        assert!(dues(&mut lane, &policy, &mut now, 1_000) <= 5);
        // Ten million: every answer while its last 1,024 fill, then one in 256.
        let policy = Arc::new(TimeoutPolicy::default().min_samples(10_000_000));
        let mut lane = Lane::new(&policy, now);
        assert_eq!(dues(&mut lane, &policy, &mut now, 1_024), 1_024);
        let later = dues(&mut lane, &policy, &mut now, 25_600);
        assert!(
            later <= 100 + 10,
            "{later} recomputations in 25,600 answers"
        );
    }
}
