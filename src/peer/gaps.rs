//! What response bodies tell a peer of the gaps between their frames: a second, coarse
//! window per peer, from which the idle deadline is learned. (Frames as heartbeats and a
//! stalled body as a miss are outcomes: `Peer::on_frame` and `Peer::on_body_idle` apply
//! them, `src/peer/mod.rs`, from `src/peer/outcome.rs`.)
//!
//! The gap window is allocated at the first gap a peer's bodies show, so a peer whose
//! responses are never wrapped pays nothing but [`Gaps`] itself (about 100 bytes). Its
//! histograms have one significant figure (10% resolution: the idle deadline is a
//! generous bound, not a latency estimate) and a lowest discernible gap of 1 ms, so at the
//! default policy they hold at most `GAP_WINDOW_BYTES_MAX` bytes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::window::Window;
use crate::body::idle::{IdleRule, IdleSource, GAP_WARMUP};
use crate::policy::TimeoutPolicy;

/// Gaps shorter than this are frames that arrived together, not a wait: not recorded.
const MIN_GAP: Duration = Duration::from_millis(1);
/// Recorded gaps between recomputations of the learned idle deadline.
const RECOMPUTE_EVERY: u64 = 16;
/// A bound on the gap window's histograms at the default policy (measured in the tests
/// below, stated in the README).
#[cfg(test)]
pub(crate) const GAP_WINDOW_BYTES_MAX: usize = 16 * 1024;

/// One peer's gaps between body frames, and the idle deadline learned from them.
pub(crate) struct Gaps {
    /// What the gaps call for (`quantile × factor + margin`, clamped), in nanoseconds:
    /// the policy's `cold_start` until the window is warm.
    idle: AtomicU64,
    /// The gap quantile it came from, in nanoseconds; `COLD` while cold.
    gap: AtomicU64,
    locked: Mutex<Option<GapWindow>>,
}

/// The gap quantile while too few gaps were seen.
const COLD: u64 = u64::MAX;

struct GapWindow {
    window: Window,
    policy: Arc<TimeoutPolicy>,
    since_recompute: u64,
}

impl Gaps {
    pub(crate) fn new(cold_start: Duration) -> Self {
        Gaps {
            idle: AtomicU64::new(nanos(cold_start)),
            gap: AtomicU64::new(COLD),
            locked: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<GapWindow>> {
        self.locked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the gaps call for, and why.
    fn learned(&self) -> (Duration, IdleSource) {
        let idle = Duration::from_nanos(self.idle.load(Relaxed));
        match self.gap.load(Relaxed) {
            COLD => (idle, IdleSource::ColdStart),
            gap => (
                idle,
                IdleSource::Gaps {
                    gap: Duration::from_nanos(gap),
                },
            ),
        }
    }

    /// Records one gap (a frame `gap` after the previous one: shorter than [`MIN_GAP`], it
    /// is none); recomputes what the gaps call for when due. `policy` gives the peer's
    /// policy for a window made at the first gap.
    pub(crate) fn record(
        &self,
        policy: impl FnOnce() -> Arc<TimeoutPolicy>,
        now: Instant,
        gap: Duration,
    ) {
        if gap < MIN_GAP {
            return;
        }
        let mut locked = self.lock();
        let gaps = locked.get_or_insert_with(|| {
            let policy = policy();
            GapWindow {
                window: Window::new(&gap_shape(&policy), now),
                policy,
                since_recompute: 0,
            }
        });
        let rotated = gaps.window.advance(now);
        gaps.window.record(gap, now);
        gaps.since_recompute += 1;
        let due =
            rotated || gaps.since_recompute >= RECOMPUTE_EVERY || self.gap.load(Relaxed) == COLD;
        self.publish(gaps, due);
    }

    /// Publishes what the gaps call for: the cold start while too few were seen, else
    /// (when `due`) `quantile × factor + margin` of the gaps within `[min, max]`.
    fn publish(&self, gaps: &mut GapWindow, due: bool) {
        let p = &gaps.policy;
        if gaps.window.samples() < p.min_samples.min(GAP_WARMUP) {
            self.gap.store(COLD, Relaxed);
            self.idle.store(nanos(p.cold_start), Relaxed);
        } else if due {
            let q = gaps.window.quantile(p.quantile);
            // The policy's own formula: a huge `factor` saturates at `max`.
            let (idle, _) = p.deadline(p.min_samples, q);
            self.gap.store(nanos(q), Relaxed);
            self.idle.store(nanos(idle), Relaxed);
            gaps.since_recompute = 0;
        }
    }

    /// Puts `policy` in force: the window is kept if its shape is the same, and what the
    /// gaps call for is published again under the new policy.
    pub(crate) fn refresh(&self, policy: impl FnOnce() -> Arc<TimeoutPolicy>, now: Instant) {
        let mut locked = self.lock();
        // Read under the gaps' lock (the order `record` takes them in): of two changes
        // racing, the later policy is the one left in force.
        let policy = policy();
        let Some(gaps) = locked.as_mut() else {
            self.idle.store(nanos(policy.cold_start), Relaxed);
            return;
        };
        if !gap_shape(&gaps.policy).same_window(&gap_shape(&policy)) {
            gaps.window = Window::new(&gap_shape(&policy), now);
        }
        gaps.policy = policy;
        self.publish(gaps, true);
    }

    /// Heap bytes of the gap window's histograms.
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.lock().as_ref().map_or(0, |g| g.window.heap_bytes())
    }
}

/// The shape of a gap window: the policy's, with one significant figure, a lowest
/// discernible gap of 1 ms, and histograms from the first gap (it keeps one answer
/// besides).
fn gap_shape(policy: &TimeoutPolicy) -> TimeoutPolicy {
    let mut shape = policy.clone();
    shape.significant_figures = 1;
    shape.min_samples = 1;
    shape.min = shape.min.max(MIN_GAP * 100);
    shape.max = shape.max.max(shape.min * 2);
    shape
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
}

impl Gaps {
    /// The idle deadline of a body under `rule`, its peer's deadline being `deadline`, and
    /// why; `None` when off.
    pub(crate) fn idle_deadline(
        &self,
        rule: IdleRule,
        deadline: Duration,
    ) -> Option<(Duration, IdleSource)> {
        match rule {
            IdleRule::Off => None,
            IdleRule::FromDeadline => Some((deadline, IdleSource::PeerDeadline)),
            IdleRule::Learned => {
                let (learned, source) = self.learned();
                Some(if deadline >= learned {
                    (deadline, IdleSource::PeerDeadline)
                } else {
                    (learned, source)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_gap_window_stays_within_its_memory_bound_at_the_default_policy() {
        let policy = Arc::new(TimeoutPolicy::default());
        let gaps = Gaps::new(policy.cold_start);
        // Every magnitude from 1ms to past the max, in every sub-window.
        for _ in 0..policy.sub_windows {
            let mut gap = MIN_GAP;
            while gap < policy.max * 2 {
                gaps.record(|| policy.clone(), Instant::now(), gap);
                gap = gap.mul_f64(1.05);
            }
            tokio::time::advance(policy.sub_window()).await;
        }
        let bytes = gaps.heap_bytes();
        assert!(bytes > 0 && bytes <= GAP_WINDOW_BYTES_MAX, "{bytes} bytes");
    }

    /// Gaps under `policy`, warmed up with `GAP_WARMUP` gaps of `gap`.
    fn warm(policy: &Arc<TimeoutPolicy>, gap: Duration) -> Gaps {
        let gaps = Gaps::new(policy.cold_start);
        for _ in 0..GAP_WARMUP {
            gaps.record(|| policy.clone(), Instant::now(), gap);
        }
        gaps
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_factor_saturates_the_idle_deadline_at_max() {
        let policy = Arc::new(TimeoutPolicy::default().factor(1e300));
        policy.validate().expect("a valid policy");
        let gaps = warm(&policy, Duration::from_millis(200));
        assert_eq!(gaps.learned().0, policy.max);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_policy_bounds_the_idle_deadline_at_once() {
        let policy = Arc::new(TimeoutPolicy::default());
        let gaps = Gaps::new(policy.cold_start);
        let tight = || {
            let p = TimeoutPolicy::default().max(Duration::from_millis(300));
            Arc::new(p.cold_start(Duration::from_millis(300)))
        };
        // Cold: the new cold start.
        gaps.refresh(tight, Instant::now());
        assert_eq!(
            gaps.learned(),
            (Duration::from_millis(300), IdleSource::ColdStart)
        );
        // Warm under the default policy (gaps of 500 ms call for more than 300 ms), then
        // the tight one: its max.
        let gaps = warm(&policy, Duration::from_millis(500));
        assert!(
            gaps.learned().0 > Duration::from_millis(900),
            "{:?}",
            gaps.learned()
        );
        gaps.refresh(tight, Instant::now());
        assert_eq!(gaps.learned().0, Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn steady_gaps_learn_an_idle_deadline_above_them() {
        let policy = Arc::new(TimeoutPolicy::default());
        let gaps = Gaps::new(policy.cold_start);
        assert_eq!(gaps.learned(), (policy.cold_start, IdleSource::ColdStart));
        for _ in 0..GAP_WARMUP {
            gaps.record(
                || policy.clone(),
                Instant::now(),
                Duration::from_millis(200),
            );
        }
        let (idle, source) = gaps.learned();
        let IdleSource::Gaps { gap } = source else {
            panic!("{source:?}")
        };
        assert!(gap >= Duration::from_millis(190), "{gap:?}");
        assert!(
            idle >= Duration::from_millis(400) && idle < policy.cold_start,
            "{idle:?}"
        );
    }
}
