//! When a held-out balanced endpoint gets its next probe: after Envoy's outlier
//! detection, it is ejected for `base × 2^(n-1)` (at most `max`), `n` counting the
//! ejections in a row, so a peer that stays away costs its callers fewer and fewer probes.

use std::time::Duration;

use tokio::time::Instant;

use crate::peer::table::EjectionTimes;

/// Calls that failed to reach the peer (refused, reset) in a row that hold an endpoint out.
pub(crate) const FAILURES_TO_HOLD: u32 = 2;

/// One endpoint's ejections in a row.
#[derive(Debug)]
pub(super) struct Ejection {
    /// Ejections in a row: the first, and one per failed probe since.
    count: u32,
    /// When the probe may go.
    until: Instant,
    /// Whether the probe's time has come (and the endpoint was let in for it).
    open: bool,
    /// Whether the probe went: a call was made while `open`.
    probed: bool,
}

impl Ejection {
    /// The first ejection, at `now`; shorter if probes go in the `background`.
    pub(super) fn start(now: Instant, times: EjectionTimes, background: bool) -> Self {
        let first = match background {
            true => between_background_probes(times),
            false => times.base.min(times.max),
        };
        Ejection {
            count: 1,
            until: later(now, first),
            open: false,
            probed: false,
        }
    }

    /// Still out at `now`: if the probe went, it failed, and the next ejection is twice as
    /// long as the last (at most `max`).
    pub(super) fn update(&mut self, now: Instant, times: EjectionTimes) {
        if !self.probed {
            return;
        }
        self.count = self.count.saturating_add(1);
        let doubled = 2u32
            .checked_pow(self.count - 1)
            .and_then(|n| times.base.checked_mul(n))
            .unwrap_or(Duration::MAX);
        self.until = later(now, doubled.min(times.max));
        (self.open, self.probed) = (false, false);
    }

    /// A probe was sent in the background at `now`: the next may go
    /// [`between_background_probes`] later.
    pub(super) fn sent(&mut self, now: Instant, times: EjectionTimes) {
        self.until = later(now, between_background_probes(times));
        (self.open, self.probed) = (false, false);
    }

    /// When the probe may go.
    pub(super) fn until(&self) -> Instant {
        self.until
    }

    /// The probe's time has come: the endpoint is let in for it.
    pub(super) fn open(&mut self) {
        self.open = true;
    }

    /// Whether the endpoint is let in for its probe, which has not gone yet (for its
    /// load).
    #[cfg(any(feature = "balance", test))]
    pub(super) fn probe_due(&self) -> bool {
        self.open && !self.probed
    }

    /// A call was made: if the endpoint was let in for its probe, this is it.
    pub(super) fn called(&mut self) {
        self.probed |= self.open;
    }
}

/// The spacing of background probes: a quarter of `base`, with no doubling (they cost
/// the callers nothing, and a peer back is readmitted promptly), and never under 10ms, so
/// a `base` of zero cannot send them in a loop.
fn between_background_probes(times: EjectionTimes) -> Duration {
    (times.base.min(times.max) / 4).max(MIN_BACKGROUND_SPACING)
}

/// The shortest spacing of background probes.
const MIN_BACKGROUND_SPACING: Duration = Duration::from_millis(10);

/// `now + d`, or far in the future if that overflows (`Duration::MAX` is no limit).
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(base: u64, max: u64) -> EjectionTimes {
        EjectionTimes {
            base: Duration::from_millis(base),
            max: Duration::from_millis(max),
        }
    }

    #[test]
    fn each_failed_probe_doubles_the_ejection_up_to_max() {
        let t0 = Instant::now();
        let times = times(500, 3000);
        let mut e = Ejection::start(t0, times, false);
        assert_eq!(e.until() - t0, Duration::from_millis(500));
        let mut gaps = Vec::new();
        for _ in 0..5 {
            e.update(t0, times);
            assert!(!e.probe_due(), "not yet due");
            e.open();
            assert!(e.probe_due());
            e.called();
            assert!(!e.probe_due(), "one probe");
            e.update(t0, times);
            gaps.push((e.until() - t0).as_millis());
        }
        assert_eq!(gaps, [1000, 2000, 3000, 3000, 3000]);
    }

    #[test]
    fn calls_before_the_probe_is_due_are_no_probe() {
        let t0 = Instant::now();
        let mut e = Ejection::start(t0, times(500, 3000), false);
        e.called();
        e.update(t0, times(500, 3000));
        assert_eq!(e.until() - t0, Duration::from_millis(500));
    }

    #[test]
    fn background_probes_are_spaced_even_with_no_ejection_time() {
        let t0 = Instant::now();
        let mut e = Ejection::start(t0, times(0, 0), true);
        assert_eq!(e.until() - t0, Duration::from_millis(10));
        e.sent(t0, times(0, 0));
        assert_eq!(e.until() - t0, Duration::from_millis(10));
        e.sent(t0, times(1000, 4000));
        assert_eq!(e.until() - t0, Duration::from_millis(250));
    }

    #[test]
    fn no_limit_does_not_overflow() {
        let t0 = Instant::now();
        let times = EjectionTimes {
            base: Duration::MAX,
            max: Duration::MAX,
        };
        let mut e = Ejection::start(t0, times, false);
        for _ in 0..40 {
            e.open();
            e.called();
            e.update(t0, times);
        }
        assert!(e.until() > t0 + Duration::from_secs(86_400 * 365));
    }
}
