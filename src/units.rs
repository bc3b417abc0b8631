//! The unit latencies are recorded in: microseconds, in every histogram and history.

use std::time::Duration;

/// Nanoseconds per histogram unit.
pub(crate) const UNIT_NANOS: u64 = 1_000;

/// A duration in histogram units.
pub(crate) fn to_units(d: Duration) -> u64 {
    u64::try_from(d.as_nanos() / u128::from(UNIT_NANOS)).unwrap_or(u64::MAX)
}

/// Histogram units back to a duration.
pub(crate) fn from_units(v: u64) -> Duration {
    Duration::from_nanos(v.saturating_mul(UNIT_NANOS))
}
