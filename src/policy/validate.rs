//! [`TimeoutPolicy::validate`]'s checks, in named groups: the formula, the deadline's
//! bounds, the latency window (and its memory), the probes. The first field that fails is
//! the one reported.

use super::{
    PolicyError, TimeoutPolicy, MAX_DEADLINE, MAX_LONG_PROBE_SPACING, MAX_MEMORY_BUDGET,
    MAX_SUB_WINDOWS, MAX_WINDOW, MAX_WINDOW_BYTES, MIN_SUB_WINDOW,
};

/// A failed check: `field` and what is wrong with it.
fn fail(field: &'static str, problem: String) -> Result<(), PolicyError> {
    Err(PolicyError { field, problem })
}

impl TimeoutPolicy {
    /// Checks every field; the first bad one is named in the error. Every policy in force
    /// passed it, which the histogram bounds rely on (ARCHITECTURE.md, invariant 8).
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.check_formula()?;
        self.check_bounds()?;
        self.check_window()?;
        self.check_probes()
    }

    /// `quantile × factor + margin`: a quantile in (0, 1] and a finite factor >= 1.
    fn check_formula(&self) -> Result<(), PolicyError> {
        if !(self.quantile > 0.0 && self.quantile <= 1.0) {
            return fail(
                "quantile",
                format!("must be in (0, 1], got {}", self.quantile),
            );
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return fail(
                "factor",
                format!("must be a finite number >= 1, got {}", self.factor),
            );
        }
        Ok(())
    }

    /// `min`, `max`, `margin` and `cold_start`: a deadline in `[min, max]`, at most a day.
    fn check_bounds(&self) -> Result<(), PolicyError> {
        if self.min.is_zero() {
            return fail("min", "must be greater than zero".into());
        }
        if self.max > MAX_DEADLINE {
            return fail(
                "max",
                format!("must be at most {MAX_DEADLINE:?}, got {:?}", self.max),
            );
        }
        if self.min > self.max {
            return fail(
                "min",
                format!("({:?}) must not exceed max ({:?})", self.min, self.max),
            );
        }
        if self.margin > self.max {
            return fail(
                "margin",
                format!("({:?}) must not exceed max ({:?})", self.margin, self.max),
            );
        }
        if self.cold_start < self.min || self.cold_start > self.max {
            return fail(
                "cold_start",
                format!(
                    "({:?}) must lie within [min, max] = [{:?}, {:?}]",
                    self.cold_start, self.min, self.max
                ),
            );
        }
        Ok(())
    }

    /// The latency window and history: their reach, ring and resolution, and the memory they take.
    fn check_window(&self) -> Result<(), PolicyError> {
        if self.min_samples == 0 {
            return fail("min_samples", "must be at least 1".into());
        }
        if self.window.is_zero() || self.window > MAX_WINDOW {
            return fail(
                "window",
                format!("must be in (0, {MAX_WINDOW:?}], got {:?}", self.window),
            );
        }
        if self.max_history > MAX_WINDOW {
            return fail(
                "max_history",
                format!("must be at most {MAX_WINDOW:?}, got {:?}", self.max_history),
            );
        }
        if self.sub_windows == 0 || self.sub_windows > MAX_SUB_WINDOWS {
            return fail(
                "sub_windows",
                format!("must be in 1..={MAX_SUB_WINDOWS}, got {}", self.sub_windows),
            );
        }
        if self.sub_window() < MIN_SUB_WINDOW {
            return fail(
                "sub_windows",
                format!(
                    "window / sub_windows = {:?} is shorter than {MIN_SUB_WINDOW:?}",
                    self.sub_window()
                ),
            );
        }
        if !(1..=3).contains(&self.significant_figures) {
            return fail(
                "significant_figures",
                format!("must be 1, 2 or 3, got {}", self.significant_figures),
            );
        }
        let window_bytes = self.max_window_bytes();
        if window_bytes > MAX_WINDOW_BYTES {
            let (low, high, sigfig) = self.histogram_bounds();
            return fail(
                "sub_windows",
                format!(
                    "({}) + 1 histograms of {} bytes ({sigfig} significant figures from {low}us \
                     to {high}us, set by min / 100 and max) and {} bytes of last answers make \
                     {window_bytes} bytes per history, above the ceiling of {MAX_WINDOW_BYTES} \
                     bytes: use fewer sub_windows or significant_figures, or a narrower \
                     [min, max]",
                    self.sub_windows,
                    self.histogram_bytes() / (self.sub_windows as usize + 1),
                    self.history_bytes(),
                ),
            );
        }
        if self.recompute_every == 0 {
            return fail("recompute_every", "must be at least 1".into());
        }
        self.check_budget(window_bytes)
    }

    /// The layer's memory budget: room for one history (`window_bytes`), at most 1 TiB.
    fn check_budget(&self, window_bytes: usize) -> Result<(), PolicyError> {
        let budget = self.memory_budget;
        if budget < window_bytes || budget > MAX_MEMORY_BUDGET {
            return fail(
                "memory_budget",
                format!(
                    "must be in [{window_bytes}, {MAX_MEMORY_BUDGET}] bytes (room for at least \
                     one history under this policy, at most 1 TiB), got {budget}"
                ),
            );
        }
        Ok(())
    }

    /// Silence and probing: the silence floor, backoff, its ceiling, and the spacing of long
    /// probes.
    fn check_probes(&self) -> Result<(), PolicyError> {
        if self.probe_backoff.is_zero() || self.probe_backoff > MAX_DEADLINE {
            return fail(
                "probe_backoff",
                format!(
                    "must be in (0, {MAX_DEADLINE:?}], got {:?}",
                    self.probe_backoff
                ),
            );
        }
        if self.probe_backoff_max < self.probe_backoff || self.probe_backoff_max > MAX_DEADLINE {
            return fail(
                "probe_backoff_max",
                format!(
                    "({:?}) must lie within [probe_backoff, {MAX_DEADLINE:?}]",
                    self.probe_backoff_max
                ),
            );
        }
        if !(1..=MAX_LONG_PROBE_SPACING).contains(&self.long_probe_spacing) {
            return fail(
                "long_probe_spacing",
                format!(
                    "must be in 1..={MAX_LONG_PROBE_SPACING}, got {}",
                    self.long_probe_spacing
                ),
            );
        }
        if self.min_silence > self.max {
            return fail(
                "min_silence",
                format!(
                    "({:?}) must not exceed max ({:?})",
                    self.min_silence, self.max
                ),
            );
        }
        Ok(())
    }
}
