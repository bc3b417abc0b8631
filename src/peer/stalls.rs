//! Stalls: a peer that went quiet and then answered again by itself (a GC pause, a
//! noisy neighbour, an overloaded host) was stalled, not dead. Such a peer earns a learned
//! floor on silence: the next time it answers nothing, its calls are held that long before
//! they are cut as a silence ([`Health::cut_at`](super::health::Health::cut_at)), and
//! no miss counts before it ([`Health::on_deadline`](super::health::Health::on_deadline)).
//! A peer that never stalled keeps detection at its deadline. The answers the learned
//! floor held through a stall are no latency samples: the floor covers stalls, the
//! deadline the peer's latency.
//!
//! Plain state under the peer's lock, touched only when a silence ends or a held call is
//! answered late: nothing on the path of a call that is answered in time.

use std::time::Duration;

use tokio::time::Instant;

use crate::policy::TimeoutPolicy;

/// The floor is this multiple of the longest recent stall: a stall a little longer than the
/// last one is held too, and the floor covers the time an answer takes after the stall.
const STALL_GRACE: f64 = 1.25;
/// The longest recent stall halves every this long without a new one. Five minutes: a
/// floor of 1.25 stalls still covers a stall as long 96 s later (`0.5^(96 / 300) = 0.8`),
/// three times the period of a host that stalls every 30 s (and each stall held refreshes
/// it), and falls below a quarter of itself within ten minutes of the last one.
pub(crate) const STALL_HALF_LIFE: Duration = Duration::from_secs(300);

/// A peer's longest recent stall, decaying, and the calls its floor held.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stalls {
    /// The longest stall recorded, as of `at` (zero: none).
    longest: Duration,
    /// When it was last recorded.
    at: Instant,
    /// The last stall recorded: from the peer's last answer before it to the answer that
    /// ended it.
    last: (Instant, Instant),
    /// Calls answered after the peer had said nothing for longer than their deadline and
    /// `min_silence`: the learned floor held each, where they would have been cut.
    held: u64,
}

impl Stalls {
    /// No stall seen yet (`now`: when the peer was first seen).
    pub(crate) fn new(now: Instant) -> Self {
        Stalls {
            longest: Duration::ZERO,
            at: now,
            last: (now, now),
            held: 0,
        }
    }

    /// The longest recent stall at `now`, decayed since it was recorded.
    fn decayed(&self, now: Instant) -> Duration {
        if self.longest.is_zero() {
            return Duration::ZERO;
        }
        let age = now.saturating_duration_since(self.at);
        let halvings = age.as_secs_f64() / STALL_HALF_LIFE.as_secs_f64();
        scaled(self.longest, 0.5f64.powf(halvings))
    }

    /// The learned floor on silence at `now`: `STALL_GRACE` times the longest recent stall,
    /// at most `cold_start` and `max` (zero for a peer that never stalled).
    pub(crate) fn floor(&self, now: Instant, policy: &TimeoutPolicy) -> Duration {
        scaled(self.decayed(now), STALL_GRACE)
            .min(policy.cold_start)
            .min(policy.max)
    }

    /// The peer answered again at `now` by itself after saying nothing for `quiet`. Only
    /// a quiet span up to `cold_start` is a stall: a partition of seconds is a silence,
    /// and must not slow the detection of the next one.
    pub(crate) fn record(&mut self, now: Instant, quiet: Duration, policy: &TimeoutPolicy) {
        if quiet > policy.cold_start {
            return;
        }
        self.longest = self.decayed(now).max(quiet);
        self.at = now;
        self.last = (now.checked_sub(quiet).unwrap_or(now), now);
    }

    /// Whether a call that started at `started` with `deadline`, answered at `now`, was
    /// late only for waiting out the last stall, and that stall was longer than `held`
    /// (what the call's deadline and `min_silence` hold): the learned floor held it. It
    /// is counted, and its latency is the stall's, not the peer's.
    pub(crate) fn held_through(
        &mut self,
        now: Instant,
        started: Instant,
        deadline: Duration,
        held: Duration,
    ) -> bool {
        let (from, until) = self.last;
        let overlap = until.min(now).saturating_duration_since(from.max(started));
        let latency = now.saturating_duration_since(started);
        let through = !overlap.is_zero()
            && until.saturating_duration_since(from) > held
            && latency.saturating_sub(overlap) <= deadline;
        self.held += u64::from(through);
        through
    }

    /// Calls the learned floor held and that were then answered, ever.
    pub(crate) fn held(&self) -> u64 {
        self.held
    }
}

/// `d` times `by` (finite, not negative), saturating at `Duration::MAX`.
fn scaled(d: Duration, by: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * by).unwrap_or(Duration::MAX)
}
