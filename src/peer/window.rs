//! A time-decaying latency histogram: a ring of hdrhistogram sub-windows plus their sum.
//!
//! Samples go into the current sub-window and into `total`. When the current sub-window's
//! time is up the ring advances: the oldest sub-window is subtracted from `total` and cleared.
//! So `total` always holds the last `sub_windows` sub-windows, and a quantile needs no merge.

use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::policy::TimeoutPolicy;

/// Latencies are recorded in microseconds.
const UNIT_NANOS: u64 = 1_000;

/// The time-decaying histogram of one peer. Histograms are allocated when first written,
/// so a peer that made few calls (or a flood of one-call keys) holds little memory.
pub(crate) struct Window {
    subs: Box<[Option<Histogram<u32>>]>,
    total: Option<Histogram<u32>>,
    current: usize,
    current_ends: Instant,
    sub_len: Duration,
    /// Lowest discernible value, highest trackable value, significant figures.
    bounds: (u64, u64, u8),
}

impl Window {
    /// An empty window shaped by `policy` (which must be valid), starting at `now`.
    pub(crate) fn new(policy: &TimeoutPolicy, now: Instant) -> Window {
        Window {
            subs: (0..policy.sub_windows).map(|_| None).collect(),
            total: None,
            current: 0,
            current_ends: now + policy.sub_window(),
            sub_len: policy.sub_window(),
            bounds: policy.histogram_bounds(),
        }
    }

    /// Records one latency; values past the histogram's range count as its highest value.
    pub(crate) fn record(&mut self, latency: Duration) {
        let v = to_units(latency);
        let (low, high, sigfig) = self.bounds;
        let make = || {
            Histogram::<u32>::new_with_bounds(low, high, sigfig)
                .expect("a validated policy gives valid histogram bounds")
        };
        self.subs[self.current]
            .get_or_insert_with(make)
            .saturating_record(v);
        self.total.get_or_insert_with(make).saturating_record(v);
    }

    /// Retires sub-windows whose time has passed. Returns whether anything rotated.
    pub(crate) fn advance(&mut self, now: Instant) -> bool {
        if now < self.current_ends {
            return false;
        }
        let behind = now.duration_since(self.current_ends).as_nanos() / self.sub_len.as_nanos();
        if behind >= self.subs.len() as u128 {
            // Idle for a whole window: everything has expired.
            self.subs.iter_mut().flatten().for_each(Histogram::reset);
            self.total.iter_mut().for_each(Histogram::reset);
            self.current_ends = now + self.sub_len;
            return true;
        }
        while now >= self.current_ends {
            self.current = (self.current + 1) % self.subs.len();
            if let (Some(oldest), Some(total)) = (&mut self.subs[self.current], &mut self.total) {
                if !oldest.is_empty() {
                    // `oldest` was added into `total`, so the subtraction cannot underflow.
                    let _ = total.subtract(&*oldest);
                    oldest.reset();
                }
            }
            self.current_ends += self.sub_len;
        }
        true
    }

    /// When the current sub-window ends.
    pub(crate) fn rotates_at(&self) -> Instant {
        self.current_ends
    }

    /// Samples currently in the window.
    pub(crate) fn samples(&self) -> u64 {
        self.total.as_ref().map_or(0, Histogram::len)
    }

    /// The latency at quantile `q` of the window (zero when empty).
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        from_units(self.total.as_ref().map_or(0, |t| t.value_at_quantile(q)))
    }

    /// The highest latency in the window (zero when empty).
    pub(crate) fn max(&self) -> Duration {
        from_units(self.total.as_ref().map_or(0, Histogram::max))
    }

    /// Heap bytes held by the histograms allocated so far.
    pub(crate) fn heap_bytes(&self) -> usize {
        let sizes = self.subs.iter().chain(std::iter::once(&self.total));
        sizes
            .flatten()
            .map(|h| h.distinct_values() * std::mem::size_of::<u32>())
            .sum()
    }
}

/// A duration in histogram units.
pub(crate) fn to_units(d: Duration) -> u64 {
    u64::try_from(d.as_nanos() / u128::from(UNIT_NANOS)).unwrap_or(u64::MAX)
}

/// Histogram units back to a duration.
pub(crate) fn from_units(v: u64) -> Duration {
    Duration::from_nanos(v.saturating_mul(UNIT_NANOS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn samples_expire_after_the_window() {
        let policy = TimeoutPolicy::default().window(ms(600)).sub_windows(6);
        let t0 = Instant::now();
        let mut w = Window::new(&policy, t0);
        w.record(ms(5));
        assert_eq!(w.samples(), 1);
        // Still counted just before the ring comes round to its sub-window again.
        assert!(w.advance(t0 + ms(599)));
        assert_eq!(w.samples(), 1);
        w.record(ms(7));
        // Sub-window 0 is recycled at 600ms: the first sample goes, the second stays.
        assert!(w.advance(t0 + ms(600)));
        assert_eq!(w.samples(), 1);
        // hdrhistogram reports the top of the 1% bucket the value fell in.
        let q = w.quantile(1.0);
        assert!(q >= ms(7) && q <= ms(7) * 101 / 100, "{q:?}");
    }

    #[test]
    fn a_long_idle_gap_clears_everything() {
        let policy = TimeoutPolicy::default().window(ms(600)).sub_windows(6);
        let t0 = Instant::now();
        let mut w = Window::new(&policy, t0);
        for _ in 0..100 {
            w.record(ms(3));
        }
        assert!(w.advance(t0 + Duration::from_secs(3600)));
        assert_eq!(w.samples(), 0);
        assert!(w.rotates_at() > t0 + Duration::from_secs(3600));
    }

    #[test]
    fn out_of_range_latency_saturates() {
        let policy = TimeoutPolicy::default().max(ms(100)).cold_start(ms(50));
        let mut w = Window::new(&policy, Instant::now());
        w.record(Duration::from_secs(3600));
        assert_eq!(w.samples(), 1);
        assert!(w.quantile(1.0) <= ms(101));
    }

    #[test]
    fn a_default_window_fits_in_48_kib_and_grows_with_use() {
        let policy = TimeoutPolicy::default();
        let t0 = Instant::now();
        let mut w = Window::new(&policy, t0);
        assert_eq!(w.heap_bytes(), 0, "nothing before the first sample");
        w.record(ms(5));
        let two = w.heap_bytes();
        assert!(two > 0);
        // Every sub-window written: the most a default peer holds.
        for i in 1..=6 {
            w.advance(t0 + policy.sub_window() * i);
            w.record(ms(5));
        }
        assert_eq!(w.heap_bytes(), two / 2 * 7);
        assert!(w.heap_bytes() <= 48 * 1024, "{} bytes", w.heap_bytes());
    }

    #[test]
    fn resolution_is_within_one_percent_above_a_hundredth_of_min() {
        let policy = TimeoutPolicy::default();
        let mut w = Window::new(&policy, Instant::now());
        for v in [ms(1), ms(10), ms(250), Duration::from_secs(20)] {
            w.record(v);
            let q = w.quantile(1.0);
            let err = q.abs_diff(v).as_secs_f64();
            assert!(
                err <= v.as_secs_f64() / 100.0 + 1e-4,
                "{v:?} read back as {q:?}"
            );
        }
    }
}
