//! The unit latencies are recorded in: microseconds, in every histogram and history.

use std::time::Duration;

/// Nanoseconds per histogram unit.
pub(crate) const UNIT_NANOS: u64 = 1_000;

/// A duration in histogram units (rounded down; `u64::MAX` past it). In whole seconds and
/// the microseconds past them: no 128-bit division on a path every answer takes.
pub(crate) fn to_units(d: Duration) -> u64 {
    const _: () = assert!(UNIT_NANOS == 1_000, "the units are microseconds");
    (d.as_secs().saturating_mul(1_000_000)).saturating_add(u64::from(d.subsec_micros()))
}

/// Histogram units back to a duration.
pub(crate) fn from_units(v: u64) -> Duration {
    Duration::from_nanos(v.saturating_mul(UNIT_NANOS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_whole_microseconds_saturated() {
        let by_nanos =
            |d: Duration| u64::try_from(d.as_nanos() / u128::from(UNIT_NANOS)).unwrap_or(u64::MAX);
        let max_secs = u64::MAX / 1_000_000;
        for d in [
            Duration::ZERO,
            Duration::from_nanos(999),
            Duration::from_nanos(1_000),
            Duration::from_nanos(1_999_999_999),
            Duration::from_secs(86_400),
            Duration::new(max_secs, 551_615_999),
            Duration::new(max_secs, 551_616_000),
            Duration::new(max_secs, 999_999_999),
            Duration::new(max_secs + 1, 0),
            Duration::MAX,
        ] {
            assert_eq!(to_units(d), by_nanos(d), "{d:?}");
        }
    }
}
