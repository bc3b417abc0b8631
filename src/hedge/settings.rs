//! What a hedged call may do: which requests may be sent twice, when a copy goes, and how
//! many extra calls are allowed. Checked once, when the layer is made
//! ([`AdaptiveTimeoutLayer::hedged`](crate::AdaptiveTimeoutLayer::hedged)).

use crate::policy::PolicyError;

/// The default quantile of a peer's latency at which a copy goes out. A peer's window
/// holds the winners' latencies only (a loser records no sample), so it learns a faster
/// peer than it would unhedged, and an early quantile asks for more copies than the
/// budget gives: in the simulator's heavy-tail workload (EVALUATION.md), p90 and p95 spent
/// the 5% budget and left slow calls without a copy, p99 came too late; p98 cut the
/// p99.9 most, for under 4% extra calls, on both seeds measured.
pub const DEFAULT_HEDGE_QUANTILE: f64 = 0.98;

/// The default budget of extra calls: at most 5% more calls than requests.
pub const DEFAULT_MAX_EXTRA_LOAD: f64 = 0.05;

/// The default number of copies the budget saves up for a burst of slow answers.
pub const DEFAULT_HEDGE_BURST: u32 = 10;

/// The most copies a budget may save up ([`Hedging::burst`]).
pub const MAX_HEDGE_BURST: u32 = 100_000;

/// Which requests may be sent twice: a copy of the request, or `None` to send it once
/// (as `tower::retry::Policy::clone_request`). Asked once per request, before it is sent,
/// and only when its peer has learned a hedge delay. Any `Fn(&Req) -> Option<Req>` is one.
///
/// Return a copy only for a request that is safe to send twice (idempotent, or
/// deduplicated by the callee): both copies may reach the peer. It is asked inside the
/// service's `call`, before the request is sent: a clone function that panics unwinds out
/// of `call` with nothing in flight (the panic is not caught; the request is counted in
/// [`HedgeStats::requests`](crate::HedgeStats::requests) and nowhere else).
pub trait CloneRequest<Req> {
    /// A copy of `req` to send if the first is slow, or `None`.
    fn clone_request(&self, req: &Req) -> Option<Req>;
}

impl<Req, F: Fn(&Req) -> Option<Req>> CloneRequest<Req> for F {
    fn clone_request(&self, req: &Req) -> Option<Req> {
        self(req)
    }
}

/// Hedging settings: which requests may be sent twice (`P`, a [`CloneRequest`]), the
/// quantile of the peer's latency after which the copy goes, and the budget of extra
/// calls.
///
/// ```
/// use tower_adaptive_timeout::Hedging;
///
/// #[derive(Clone)]
/// struct Get { peer: &'static str, key: u64 }
///
/// let hedging = Hedging::new(|r: &Get| Some(r.clone()))
///     .quantile(0.95)
///     .max_extra_load(0.02)
///     .burst(20);
/// # let _ = hedging;
/// ```
#[derive(Clone, Debug)]
pub struct Hedging<P> {
    pub(crate) clone: P,
    pub(crate) quantile: f64,
    pub(crate) max_extra_load: f64,
    pub(crate) burst: u32,
    pub(crate) max_in_flight: usize,
}

impl<P> Hedging<P> {
    /// Hedging of the requests `clone` copies, at the defaults: the copy after the peer's
    /// [`DEFAULT_HEDGE_QUANTILE`], at most [`DEFAULT_MAX_EXTRA_LOAD`] extra calls saved up
    /// to [`DEFAULT_HEDGE_BURST`], no limit on the peer's calls in flight.
    pub fn new(clone: P) -> Self {
        Hedging {
            clone,
            quantile: DEFAULT_HEDGE_QUANTILE,
            max_extra_load: DEFAULT_MAX_EXTRA_LOAD,
            burst: DEFAULT_HEDGE_BURST,
            max_in_flight: usize::MAX,
        }
    }

    /// The quantile of the peer's latency (its time-decaying window, once it holds
    /// `min_samples` answers) after which the copy goes: in `(0, 1)`.
    pub fn quantile(mut self, quantile: f64) -> Self {
        self.quantile = quantile;
        self
    }

    /// At most this fraction more calls than requests: in `(0, 1]`.
    pub fn max_extra_load(mut self, fraction: f64) -> Self {
        self.max_extra_load = fraction;
        self
    }

    /// Copies the budget saves up while few are needed, for a burst of slow answers:
    /// `1..=MAX_HEDGE_BURST`.
    pub fn burst(mut self, copies: u32) -> Self {
        self.burst = copies;
        self
    }

    /// No copy goes to a peer with this many calls in flight or more (the call it copies
    /// among them): at least 1; `usize::MAX` (the default) is no limit.
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.max_in_flight = calls;
        self
    }

    /// Checks every setting, naming the first one refused.
    pub(crate) fn validate(&self) -> Result<(), PolicyError> {
        let q = self.quantile;
        if !(q.is_finite() && q > 0.0 && q < 1.0) {
            let problem = format!("must be a number between 0 and 1 (exclusive), got {q}");
            return Err(PolicyError::new("hedging.quantile", problem));
        }
        let f = self.max_extra_load;
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            let problem = format!(
                "must be a fraction in (0, 1] (more than 0, at most one copy per request), got {f}"
            );
            return Err(PolicyError::new("hedging.max_extra_load", problem));
        }
        if !(1..=MAX_HEDGE_BURST).contains(&self.burst) {
            let problem = format!("must be 1 to {MAX_HEDGE_BURST} copies, got {}", self.burst);
            return Err(PolicyError::new("hedging.burst", problem));
        }
        if self.max_in_flight == 0 {
            let problem = "must be at least 1 (usize::MAX for no limit), got 0";
            return Err(PolicyError::new("hedging.max_in_flight", problem));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Hedging;

    fn refused(h: Hedging<()>) -> &'static str {
        h.validate().expect_err("refused").field()
    }

    #[test]
    fn absurd_settings_are_refused_by_name() {
        let h = || Hedging::new(());
        assert!(h().validate().is_ok());
        for q in [0.0, 1.0, -0.5, 2.0, f64::NAN, f64::INFINITY, f64::MAX] {
            assert_eq!(refused(h().quantile(q)), "hedging.quantile");
        }
        for f in [
            0.0,
            1.5,
            -0.01,
            f64::NAN,
            f64::INFINITY,
            f64::MAX,
            f64::MIN_POSITIVE * 0.0,
        ] {
            assert_eq!(refused(h().max_extra_load(f)), "hedging.max_extra_load");
        }
        for b in [0, u32::MAX, super::MAX_HEDGE_BURST + 1] {
            assert_eq!(refused(h().burst(b)), "hedging.burst");
        }
        assert_eq!(refused(h().max_in_flight(0)), "hedging.max_in_flight");
        assert!(h()
            .max_extra_load(1.0)
            .burst(1)
            .max_in_flight(usize::MAX)
            .validate()
            .is_ok());
        assert!(h().max_extra_load(f64::MIN_POSITIVE).validate().is_ok());
    }
}
