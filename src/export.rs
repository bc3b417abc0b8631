//! Export to the [`metrics`](https://docs.rs/metrics) facade (cargo feature `metrics`).
//!
//! Every tracked peer reports through the globally installed `metrics` recorder (Prometheus,
//! StatsD, ... whichever exporter the application installs). Names are prefixed
//! `adaptive_timeout_` and follow Prometheus conventions: counters end in `_total`, units
//! are in the name (`_seconds`). The `peer` label is the peer's name, its key's `Debug`
//! form (the same as [`PeerSnapshot::peer`](crate::PeerSnapshot::peer)).
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `adaptive_timeout_calls_total` | counter | `peer` | calls admitted to the peer (fail-fast rejections are not calls) |
//! | `adaptive_timeout_responses_total` | counter | `peer` | calls the peer answered (a success, or an error or a status it sent) |
//! | `adaptive_timeout_failures_total` | counter | `peer` | calls that failed to reach the peer ([`Outcome::Failure`]: connection refused or reset, DNS, TLS) |
//! | `adaptive_timeout_timeouts_total` | counter | `peer` | calls that ran out their deadline |
//! | `adaptive_timeout_interrupts_total` | counter | `peer`, `reason` | calls in flight ended by an interrupt; `reason` is [`Reason::as_str`]: `peer_silent`, `manual`, `shutdown` (others appear once they happen) |
//! | `adaptive_timeout_fail_fast_total` | counter | `peer` | calls refused at once because the peer was silent |
//! | `adaptive_timeout_transitions_total` | counter | `peer`, `to` | health state changes, by the state entered ([`PeerState::as_str`]) |
//! | `adaptive_timeout_deadline_seconds` | gauge | `peer` | the deadline new calls get, updated each time it is recomputed |
//! | `adaptive_timeout_in_flight` | gauge | `peer` | calls in flight |
//! | `adaptive_timeout_state` | gauge | `peer` | the health state, as a number (below) |
//! | `adaptive_timeout_latency_seconds` | histogram | `peer` | latency of every answered call |
//! | `adaptive_timeout_untracked_calls_total` | counter | none | calls that went untracked because the peer table was full |
//!
//! [`Reason::as_str`]: crate::Reason::as_str
//! [`PeerState::as_str`]: crate::PeerState::as_str
//! [`Outcome::Failure`]: crate::Outcome::Failure
//!
//! Each counter counts from when the peer was first tracked, like the counters of
//! [`PeerSnapshot`](crate::PeerSnapshot). A call ends in exactly one of responses,
//! failures, timeouts or interrupts, or is dropped by its caller, which none of them
//! counts. A timeout that declares the peer silent is a timeout; the other calls it ends
//! are `peer_silent` interrupts.
//!
//! A peer whose process is down refuses every connection: its calls fail at once and are
//! neither answers nor misses, so its state stays what it was (it is let back in at its
//! first answer). Alert on failures without responses, e.g.
//! `increase(adaptive_timeout_failures_total[1m]) > 0 unless
//! increase(adaptive_timeout_responses_total[1m]) > 0`: the series' side of
//! [`PeerSnapshot::consecutive_failures`](crate::PeerSnapshot::consecutive_failures).
//!
//! `adaptive_timeout_state` is one series per peer whose value is the state's number:
//! `0` healthy, `1` suspect, `2` silent, `3` probing (the order of
//! [`PeerState`](crate::PeerState); a state added later takes the next number). Alert on
//! `adaptive_timeout_state >= 2` for a peer that stopped answering; count changes with
//! `adaptive_timeout_transitions_total`, which does have one series per state.
//!
//! # Cost
//!
//! The handles of a peer's series are registered once, when the peer is first tracked, and
//! kept with it; a call only increments or records on those handles (no label is built, no
//! string formatted, no registry looked up). Install the recorder before the layer sees
//! traffic: a peer tracked while no recorder is installed keeps no-op handles.
//!
//! # Cardinality
//!
//! A tracked peer has 16 series from the start: 5 plain counters, 3 interrupt reasons,
//! 4 transition states, 3 gauges and the histogram. An interrupt reason that reaches a call
//! only through its token adds one when it first happens, up to one per [`Reason`] (5
//! today), so at most 18. The layer's `max_peers` bounds how many peers have series at
//! once: at most `18 × max_peers + 1` series, the 1 being
//! `adaptive_timeout_untracked_calls_total`, which counts calls to further peers without a
//! peer label. A forgotten peer's series stay with the recorder until it expires them (for
//! Prometheus, `PrometheusBuilder::idle_timeout`); a peer tracked again continues the same
//! series, and one that replaces it adds its own, so without expiry the count grows with
//! every distinct peer ever tracked.
//!
//! [`Reason`]: crate::Reason
//!
//! With `metrics-exporter-prometheus` the latency histogram renders as a summary unless
//! buckets are configured for it, e.g. `set_buckets_for_metric(Matcher::Full(
//! "adaptive_timeout_latency_seconds".into()), &[..])`.
//!
//! Without the feature the layer calls the same methods on a do-nothing stand-in of size
//! zero, so the peer code carries no `cfg` of its own and compiles to nothing extra.

#[cfg(feature = "metrics")]
mod recorder;

#[cfg(feature = "metrics")]
pub use self::recorder::describe_metrics;
#[cfg(feature = "metrics")]
pub(crate) use self::recorder::{untracked_call, PeerMetrics};

#[cfg(not(feature = "metrics"))]
pub(crate) use self::off::{untracked_call, PeerMetrics};

/// The stand-in for when the `metrics` feature is off: every call does nothing.
#[cfg(not(feature = "metrics"))]
mod off {
    use std::time::Duration;

    use crate::error::Reason;
    use crate::peer::health::PeerState;

    /// A call went untracked because the table was full.
    pub(crate) fn untracked_call() {}

    /// No handles: the methods of the real `PeerMetrics`, doing nothing.
    pub(crate) struct PeerMetrics;

    impl PeerMetrics {
        pub(crate) fn new(_label: &str) -> Self {
            PeerMetrics
        }

        pub(crate) fn admitted(&self) {}

        pub(crate) fn rejected(&self) {}

        pub(crate) fn ended(&self) {}

        pub(crate) fn answered(&self, _latency: Duration) {}

        pub(crate) fn failed(&self) {}

        pub(crate) fn timed_out(&self) {}

        pub(crate) fn interrupted(&self, _reason: &Reason) {}

        pub(crate) fn transitioned(&self, _state: PeerState) {}

        pub(crate) fn deadline(&self, _deadline: Duration) {}
    }
}
