//! A peer's latency history: a time-decaying histogram (a ring of hdrhistogram sub-windows
//! plus their sum) for the last `window`, and the last `min_samples` answers for up to
//! `max_history` ([`Recent`]), which a quiet peer's deadline is learned from.
//!
//! Samples go into the current sub-window and into `total`. When the current sub-window's
//! time is up the ring advances: the oldest sub-window is subtracted from `total` and cleared.
//! So `total` always holds the last `sub_windows` sub-windows, and a quantile needs no merge.
//! The histograms are allocated only once the peer is busy enough to fill them (its
//! `min_samples` last answers all came within `window`) and freed when the window empties,
//! so a quiet peer holds its short history alone.

use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::estimate;
use super::history::Recent;
use crate::policy::{Ledger, TimeoutPolicy};
use crate::units::{from_units, to_units, UNIT_NANOS};

/// The latency history of one peer.
pub(crate) struct Window {
    subs: Box<[Option<Histogram<u32>>]>,
    total: Option<Histogram<u32>>,
    current: usize,
    current_ends: Instant,
    sub_len: Duration,
    /// Lowest discernible value, highest trackable value, significant figures.
    bounds: (u64, u64, u8),
    recent: Recent,
    /// When the history began.
    born: Instant,
    /// The layer's account this history charges, and what it holds charged: its last
    /// answers' bytes, and its histograms' at their most while they are allocated.
    ledger: Ledger,
    charged: Charged,
}

/// Bytes a history holds charged to its layer's budget, and when a refused charge for its
/// histograms may be tried again.
struct Charged {
    answers: usize,
    histograms: usize,
    /// Histograms refused room wait until this rotation to ask again.
    retry_at: Instant,
    /// The most its histograms and answers can take.
    sizes: (usize, usize),
}

/// What a history says about the quantile a deadline follows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Reading {
    /// Fewer than two answers: nothing to learn from.
    Few {
        /// Answers in reach.
        samples: u64,
    },
    /// At least `min_samples`: the quantile itself.
    Quantile {
        /// The latency at the policy's quantile.
        value: Duration,
        /// Answers it was read from.
        samples: u64,
        /// How far back they reach beyond the window (zero: the window alone).
        history: Duration,
    },
    /// Between two and `min_samples`: an upper estimate of the quantile.
    Estimate {
        /// The estimate, in seconds (possibly infinite: no bound yet).
        value: f64,
        /// What the answers alone say of the quantile, in seconds, without the allowance
        /// for their count (zero: too few to say).
        plain: f64,
        /// The slowest answer in reach.
        slowest: Duration,
        /// Answers it was estimated from.
        samples: u64,
        /// How far back they reach (zero: within the window).
        history: Duration,
        /// The peer is busy: at its pace its window will hold `min_samples` answers within
        /// `window`, so the estimate must not take its deadline below `cold_start`
        /// meanwhile.
        busy: bool,
    },
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
            recent: Recent::new(policy, now),
            born: now,
            ledger: policy.ledger.clone(),
            charged: Charged {
                answers: 0,
                histograms: 0,
                retry_at: now,
                sizes: (policy.histogram_bytes(), policy.history_bytes()),
            },
        }
    }

    /// Records one latency answered at `now`, standing for itself alone: see
    /// [`record_n`](Self::record_n).
    #[cfg(any(test, feature = "http"))]
    pub(crate) fn record(&mut self, latency: Duration, now: Instant) {
        self.record_n(latency, 1, now);
    }

    /// Records one latency answered at `now`, standing for `answers` answers (a sample
    /// drawn one answer in `k` stands for `k`: `per_core::sample_every`), so the
    /// histograms stand for every answer whatever rate each sub-window was sampled at,
    /// and a quantile follows a shift as fast sampled as not. Values past the histogram's
    /// range count as its highest value. The last answers kept for a quiet peer (which is
    /// never sampled) keep the latency once.
    ///
    /// The answer that makes the peer busy (its last `min_samples` all within the window)
    /// allocates the histograms and puts the answers kept so far into the current
    /// sub-window, so they count for up to a sub-window longer than they would have.
    ///
    /// Each step charges the layer's memory budget first: a history with no room for its
    /// answers keeps none (it stays at `cold_start`), and one with no room for its
    /// histograms reads its answers alone, asking again at its next rotation.
    pub(crate) fn record_n(&mut self, latency: Duration, answers: u64, now: Instant) {
        let v = to_units(latency);
        if !self.recent.is_allocated() {
            let bytes = self.charged.sizes.1;
            if !self.ledger.try_charge(bytes) {
                return;
            }
            self.charged.answers = bytes;
        }
        self.recent.push(v, now);
        if self.total.is_some() {
            self.record_units(v, answers);
        } else if now >= self.charged.retry_at
            && self.recent.full_within(self.span(), now)
            && self.charge_histograms(now)
        {
            // Answers kept one by one: each stands for itself.
            for i in 0..self.recent.len() {
                self.record_units(self.recent.get(i), 1);
            }
        }
    }

    /// Charges the histograms at their most before the first is allocated; refused, the
    /// history asks again when its current sub-window ends.
    fn charge_histograms(&mut self, now: Instant) -> bool {
        let bytes = self.charged.sizes.0;
        if self.ledger.try_charge(bytes) {
            self.charged.histograms = bytes;
            return true;
        }
        self.charged.retry_at = self.current_ends.max(now + self.sub_len);
        false
    }

    fn record_units(&mut self, v: u64, answers: u64) {
        // A count saturates, like a value past the range (`answers` is at most 64).
        let answers = u32::try_from(answers).unwrap_or(u32::MAX);
        let (low, high, sigfig) = self.bounds;
        let make = || {
            Histogram::<u32>::new_with_bounds(low, high, sigfig)
                .expect("a validated policy gives valid histogram bounds")
        };
        self.subs[self.current]
            .get_or_insert_with(make)
            .saturating_record_n(v, answers);
        (self.total.get_or_insert_with(make)).saturating_record_n(v, answers);
    }

    /// Retires sub-windows whose time has passed. Returns whether anything rotated.
    pub(crate) fn advance(&mut self, now: Instant) -> bool {
        if now < self.current_ends {
            return false;
        }
        let behind = now.duration_since(self.current_ends).as_nanos() / self.sub_len.as_nanos();
        if behind >= self.subs.len() as u128 {
            // Idle for a whole window: everything in it has expired.
            self.free_histograms();
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
        if self.total.as_ref().is_some_and(Histogram::is_empty) {
            self.free_histograms();
        }
        true
    }

    /// An emptied window gives its histograms back: a peer gone quiet holds its history.
    fn free_histograms(&mut self) {
        self.subs.iter_mut().for_each(|h| *h = None);
        self.total = None;
        self.ledger
            .release(std::mem::take(&mut self.charged.histograms));
    }

    /// Forgets every answer and histogram, giving their memory (and its charge) back: the
    /// history of a peer the table let go, which no call records into again.
    pub(crate) fn clear(&mut self) {
        self.free_histograms();
        self.recent.clear();
        self.ledger
            .release(std::mem::take(&mut self.charged.answers));
    }

    /// How long the window covers.
    fn span(&self) -> Duration {
        self.sub_len * self.subs.len() as u32
    }

    /// When the current sub-window ends.
    pub(crate) fn rotates_at(&self) -> Instant {
        self.current_ends
    }

    /// Answers the window's histograms stand for now: every answer recorded, a sample
    /// drawn one in `k` counting `k`.
    pub(crate) fn samples(&self) -> u64 {
        self.total.as_ref().map_or(0, Histogram::len)
    }

    /// What the history says at `now` about `policy`'s quantile: from the window once it
    /// holds `min_samples`, else from the answers of the last `max(window, max_history)`
    /// (the quantile itself if they hold it, else its upper estimate).
    /// Sorts at most `min_samples` answers: called when the deadline is recomputed, never
    /// per call.
    ///
    /// A busy peer (one whose pace will bring the window `min_samples` answers within
    /// `window`) has its estimate flagged: it can afford to wait for real answers at
    /// `cold_start`, since a few dozen cannot show a mode of a few percent (a TCP
    /// retransmission, a CPU stall).
    pub(crate) fn read(&mut self, now: Instant, policy: &TimeoutPolicy) -> Reading {
        let in_window = self.samples();
        if in_window >= policy.min_samples {
            return Reading::Quantile {
                value: self.quantile(policy.quantile),
                samples: in_window,
                history: Duration::ZERO,
            };
        }
        let span = self.span();
        let (live, oldest) = self.recent.within(policy.max_history.max(span), now);
        let samples = live.len() as u64;
        let history = if oldest > span {
            oldest
        } else {
            Duration::ZERO
        };
        // Fewer than 1 / (1 - quantile) answers (1,000 at p99.9) hold no such quantile:
        // it would read as their slowest, an extrapolation blind to the count. A quiet
        // peer gets the estimate then, which is at least that slowest answer.
        let observed = samples as f64 * (1.0 - policy.quantile) >= 1.0;
        if samples >= policy.min_samples && observed {
            return Reading::Quantile {
                value: from_units(rank(live, policy.quantile)),
                samples,
                history,
            };
        }
        let slowest = from_units(live.iter().copied().max().unwrap_or(0));
        match estimate::upper_quantile(live, policy.quantile) {
            Some(units) => Reading::Estimate {
                value: units.upper * UNIT_NANOS as f64 / 1e9,
                plain: units.plain * UNIT_NANOS as f64 / 1e9,
                slowest,
                samples,
                history,
                busy: self.busy(policy.min_samples, now),
            },
            None => Reading::Few { samples },
        }
    }

    /// Whether the answers kept come fast enough to put `needed` in the window: the gaps
    /// between them over the time they took (since the history began until the ring is
    /// full, then since its oldest answer, in whole seconds plus one) projected over
    /// `window`.
    fn busy(&self, needed: u64, now: Instant) -> bool {
        let kept = self.recent.len();
        let took = match self.recent.oldest_age(now) {
            None => return false,
            Some(age) if kept >= self.recent.capacity() => Duration::from_secs(age + 1),
            Some(_) => now.saturating_duration_since(self.born),
        };
        let took = took.max(Duration::from_millis(1)).as_micros();
        (kept as u128 - 1) * self.span().as_micros() >= u128::from(needed) * took
    }

    /// The latency at quantile `q` of the window (zero when empty).
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        from_units(self.total.as_ref().map_or(0, |t| t.value_at_quantile(q)))
    }

    /// The latencies at quantiles `qs` and the slowest, with the sample count, from the
    /// window or (when the window holds fewer) the answers kept for up to `reach`: what a
    /// snapshot shows.
    pub(crate) fn quantiles<const N: usize>(
        &mut self,
        qs: [f64; N],
        reach: Duration,
        now: Instant,
    ) -> ([Duration; N], Duration, u64) {
        let in_window = self.samples();
        let (live, _) = self.recent.within(reach.max(self.span()), now);
        if live.len() as u64 <= in_window {
            let max = from_units(self.total.as_ref().map_or(0, Histogram::max));
            return (qs.map(|q| self.quantile(q)), max, in_window);
        }
        let samples = live.len() as u64;
        let values = qs.map(|q| from_units(rank(live, q)));
        let max = from_units(live.iter().copied().max().unwrap_or(0));
        (values, max, samples)
    }

    /// The slowest latency in the window or the answers kept (zero when there are none).
    pub(crate) fn max(&self) -> Duration {
        let window = self.total.as_ref().map_or(0, Histogram::max);
        from_units(window.max(self.recent.slowest()))
    }

    /// Heap bytes held by the histograms allocated so far and the answers kept.
    pub(crate) fn heap_bytes(&self) -> usize {
        let sizes = self.subs.iter().chain(std::iter::once(&self.total));
        let histograms: usize = sizes
            .flatten()
            .map(|h| h.distinct_values() * std::mem::size_of::<u32>())
            .sum();
        histograms + self.recent.heap_bytes()
    }
}

/// A history dropped (its peer let go, its shape changed) gives its bytes back.
impl Drop for Window {
    fn drop(&mut self) {
        (self.ledger).release(self.charged.answers + self.charged.histograms);
    }
}

/// The value at quantile `q` of `values` (reordered), as hdrhistogram ranks it: the
/// smallest with at least `q` of the values at or below it. Zero when empty.
fn rank(values: &mut [u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let n = values.len();
    let at = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    *values.select_nth_unstable(at).1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A policy whose every answer goes into the histograms (`min_samples` 1: always busy).
    fn busy() -> TimeoutPolicy {
        TimeoutPolicy::default().min_samples(1)
    }

    #[test]
    fn samples_expire_after_the_window() {
        let policy = busy().window(ms(600)).sub_windows(6);
        let t0 = Instant::now();
        let mut w = Window::new(&policy, t0);
        w.record(ms(5), t0);
        assert_eq!(w.samples(), 1);
        // Still counted just before the ring comes round to its sub-window again.
        assert!(w.advance(t0 + ms(599)));
        assert_eq!(w.samples(), 1);
        w.record(ms(7), t0 + ms(599));
        // Sub-window 0 is recycled at 600ms: the first sample goes, the second stays.
        assert!(w.advance(t0 + ms(600)));
        assert_eq!(w.samples(), 1);
        // hdrhistogram reports the top of the 1% bucket the value fell in.
        let q = w.quantile(1.0);
        assert!(q >= ms(7) && q <= ms(7) * 101 / 100, "{q:?}");
    }

    #[test]
    fn a_long_idle_gap_clears_everything() {
        let policy = busy().window(ms(600)).sub_windows(6);
        let t0 = Instant::now();
        let mut w = Window::new(&policy, t0);
        for _ in 0..100 {
            w.record(ms(3), t0);
        }
        assert!(w.advance(t0 + secs(3600)));
        assert_eq!(w.samples(), 0);
        assert!(w.rotates_at() > t0 + secs(3600));
    }

    #[test]
    fn out_of_range_latency_saturates() {
        let policy = busy().max(ms(100)).cold_start(ms(50));
        let now = Instant::now();
        let mut w = Window::new(&policy, now);
        w.record(secs(3600), now);
        assert_eq!(w.samples(), 1);
        assert!(w.quantile(1.0) <= ms(101));
    }

    #[test]
    fn a_busy_window_fits_in_48_kib_and_a_quiet_one_in_its_answers() {
        let policy = TimeoutPolicy::default();
        let t0 = Instant::now();
        let mut w = Window::new(&policy, t0);
        assert_eq!(w.heap_bytes(), 0, "nothing before the first sample");
        for _ in 0..99 {
            w.record(ms(5), t0);
        }
        // Fewer than `min_samples` in the window: only the answers are kept.
        assert_eq!(w.heap_bytes(), 100 * crate::policy::BYTES_PER_ANSWER);
        w.record(ms(5), t0);
        let answers = policy.history_bytes();
        let two = w.heap_bytes() - answers;
        assert!(
            two > 0,
            "the 100th answer within the window allocates histograms"
        );
        // Every sub-window written: the most a default peer holds.
        for i in 1..=6 {
            let now = t0 + policy.sub_window() * i;
            w.advance(now);
            w.record(ms(5), now);
        }
        assert_eq!(w.heap_bytes() - answers, two / 2 * 7);
        assert!(w.heap_bytes() <= 48 * 1024, "{} bytes", w.heap_bytes());
        // A window that empties gives its histograms back.
        w.advance(t0 + secs(600));
        assert_eq!(w.heap_bytes(), answers);
    }

    #[test]
    fn resolution_is_within_one_percent_above_a_hundredth_of_min() {
        let policy = busy();
        let now = Instant::now();
        let mut w = Window::new(&policy, now);
        for v in [ms(1), ms(10), ms(250), secs(20)] {
            w.record(v, now);
            let q = w.quantile(1.0);
            let err = q.abs_diff(v).as_secs_f64();
            assert!(
                err <= v.as_secs_f64() / 100.0 + 1e-4,
                "{v:?} read back as {q:?}"
            );
        }
    }

    #[test]
    fn a_quiet_peer_reads_its_answers_beyond_the_window_up_to_max_history() {
        // 10 answers a minute: never 100 within the 60 s window. At p99 the last 100 hold
        // the quantile; at p99.9 they do not, and the estimate stays.
        for (q, holds) in [(0.99, true), (0.999, false)] {
            let policy = TimeoutPolicy::default().quantile(q);
            let t0 = Instant::now();
            let mut w = Window::new(&policy, t0);
            assert_eq!(w.read(t0, &policy), Reading::Few { samples: 0 });
            let mut now = t0;
            for i in 0..200u64 {
                now = t0 + secs(6 * i);
                w.advance(now);
                w.record(ms(20), now);
                let n = (i + 1).min(100);
                let reach = if i >= 99 { secs(6 * 99) } else { secs(6 * i) };
                let history = if reach > policy.window {
                    reach
                } else {
                    Duration::ZERO
                };
                match w.read(now, &policy) {
                    Reading::Few { samples } => assert_eq!((i, samples), (0, 1)),
                    Reading::Estimate {
                        samples,
                        value,
                        history: h,
                        ..
                    } => {
                        assert!(i > 0 && (i < 99 || !holds), "{i}");
                        assert_eq!((samples, h), (n, history));
                        assert!(value >= 0.020, "{value}");
                    }
                    Reading::Quantile {
                        samples,
                        value,
                        history: h,
                    } => {
                        assert!(i >= 99 && holds, "{i}");
                        assert_eq!((samples, h, value), (100, history, ms(20)));
                    }
                }
                assert_eq!(w.samples(), 0, "no histograms for a quiet peer");
            }
            // Silent for longer than max_history: nothing left to learn from.
            let later = now + policy.max_history + secs(1);
            assert_eq!(w.read(later, &policy), Reading::Few { samples: 0 });
        }
    }

    #[test]
    fn a_busy_peer_still_forgets_after_the_window() {
        let policy = TimeoutPolicy::default();
        let t0 = Instant::now();
        let mut w = Window::new(&policy, t0);
        for i in 0..1200u64 {
            let now = t0 + ms(100 * i);
            w.advance(now);
            w.record(if i < 600 { ms(50) } else { ms(5) }, now);
        }
        // The window's last 50-60 s hold only 5ms answers: the 50ms ones are forgotten.
        let now = t0 + secs(120);
        w.advance(now);
        let Reading::Quantile { value, history, .. } = w.read(now, &policy) else {
            panic!("busy")
        };
        assert!(value < ms(6), "{value:?}");
        assert_eq!(history, Duration::ZERO);
    }

    #[test]
    fn a_window_written_everywhere_holds_max_window_bytes() {
        let ms = Duration::from_millis;
        let policies = [
            TimeoutPolicy::default(),
            TimeoutPolicy::default().significant_figures(3),
            TimeoutPolicy::default()
                .significant_figures(1)
                .sub_windows(1),
            TimeoutPolicy::default()
                .min(Duration::from_micros(1))
                .max(crate::MAX_DEADLINE)
                .cold_start(ms(5)),
        ];
        assert_eq!(policies[0].histogram_bytes(), 46_592);
        assert_eq!(policies[0].max_window_bytes(), 46_592 + 2_000);
        for policy in policies {
            let t0 = Instant::now();
            let mut w = Window::new(&policy, t0);
            // A busy peer: `min_samples` answers in every sub-window.
            for i in 0..policy.sub_windows {
                let at = t0 + policy.sub_window() * i;
                w.advance(at);
                for _ in 0..policy.min_samples {
                    w.record(ms(5), at);
                }
            }
            assert_eq!(w.heap_bytes(), policy.max_window_bytes(), "{policy:?}");
        }
    }
}
