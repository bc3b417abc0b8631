//! Export to the [`metrics`](https://docs.rs/metrics) facade (cargo feature `metrics`).
//!
//! Every tracked peer reports through the globally installed `metrics` recorder (Prometheus,
//! StatsD, ... whichever exporter the application installs). Names are prefixed
//! `adaptive_timeout_` and follow Prometheus conventions: counters end in `_total`, units
//! are in the name (`_seconds`). The `peer` label is the peer's name, its key's `Debug`
//! form bounded to [`MAX_LABEL_BYTES`](crate::MAX_LABEL_BYTES) (the same string as
//! [`PeerSnapshot::peer`](crate::PeerSnapshot::peer)), for at most `max_peers` distinct
//! peers per layer, and `_other` beyond (see *Cardinality*).
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `adaptive_timeout_calls_total` | counter | `peer` | calls admitted to the peer (refusals are not admitted calls) |
//! | `adaptive_timeout_responses_total` | counter | `peer` | calls the peer answered (a success, or an error or a status it sent) |
//! | `adaptive_timeout_failures_total` | counter | `peer` | calls that failed to reach the peer ([`Outcome::Failure`]: connection refused or reset, DNS, TLS) |
//! | `adaptive_timeout_timeouts_total` | counter | `peer` | calls that ran out their deadline |
//! | `adaptive_timeout_interrupts_total` | counter | `peer`, `reason` | calls in flight ended by an interrupt; `reason` is [`Reason::as_str`]: `peer_silent`, `manual`, `shutdown` (others appear once they happen) |
//! | `adaptive_timeout_fail_fast_total` | counter | `peer` | calls refused at once because the peer was silent |
//! | `adaptive_timeout_refused_total` | counter | `peer` | calls refused before the inner service for another reason: after `shutdown()`, or with the caller's deadline spent or its token fired |
//! | `adaptive_timeout_transitions_total` | counter | `peer`, `to` | health state changes, by the state entered ([`PeerState::as_str`]) |
//! | `adaptive_timeout_deadline_seconds` | gauge | `peer` | the deadline new calls get, updated each time it is recomputed (none for `_other`, below) |
//! | `adaptive_timeout_in_flight` | gauge | `peer` | calls in flight |
//! | `adaptive_timeout_state` | gauge | `peer` | the health state, as a number (below; none for `_other`) |
//! | `adaptive_timeout_latency_seconds` | histogram | `peer` | latency of every answered call |
//! | `adaptive_timeout_hedges_total` | counter | `peer`, `result` | hedged calls (`hedged()`): `sent`, a copy went to the peer; `won`, it answered first; `interrupted`, a call to the peer ended by the race (it lost, or its request ended with the other's error) (registered when first counted) |
//! | `adaptive_timeout_untracked_calls_total` | counter | none | calls that went untracked: their request named no peer, or the peer table was full |
//!
//! [`Reason::as_str`]: crate::Reason::as_str
//! [`PeerState::as_str`]: crate::PeerState::as_str
//! [`Outcome::Failure`]: crate::Outcome::Failure
//!
//! Each counter counts from when the peer was first tracked, like the counters of
//! [`PeerSnapshot`](crate::PeerSnapshot). Every call to a tracked peer is in exactly one
//! of `calls`, `fail_fast` and `refused`. An admitted call ends in exactly one of responses,
//! failures, timeouts or interrupts, or is dropped by its caller, which none of them
//! counts. A timeout that declares the peer silent is a `peer_silent` interrupt, like the
//! other calls it ends, as its caller is told. A call whose response body is watched
//! (`with_bodies()`) is counted when its body ends: a response (its head's latency in the histogram) at
//! its last frame, the inner body's error or a drop after the head; a timeout or an
//! interrupt if the layer cut it.
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
//! A peer with series of its own has 17 from the start: 6 plain counters, 3 interrupt
//! reasons, 4 transition states, 3 gauges and the histogram. An interrupt reason that
//! reaches a call only through its token adds one when it first happens, up to one per
//! [`Reason`] (6 today), and hedged calls up to 3 `adaptive_timeout_hedges_total` series,
//! so at most 23.
//!
//! The `metrics` facade cannot remove a series, so what bounds them is the set of `peer`
//! labels: a layer gives series of their own to at most `max_peers` distinct peers over its
//! life, the first it tracks. A peer tracked again after eviction continues its series; a
//! peer first tracked once that bound is reached reports under `peer="_other"`, whose
//! counters, `in_flight` and latency are summed over all such peers, and which has no
//! deadline or state gauge (one value cannot stand for many peers). However many distinct
//! keys a layer sees, it creates at most `23 × (max_peers + 1) + 1` series, the 1 being
//! `adaptive_timeout_untracked_calls_total` (calls the layer could not key or track:
//! no peer named, or the table full; without a peer label). With the Prometheus exporter's default summary, that is at most
//! `31 × (max_peers + 1) + 1` lines: 20,000 keys through a table of 100 peers give about
//! 2,500.
//! Snapshots ([`handle.snapshot()`](crate::AdaptiveTimeoutHandle::snapshot)) name every
//! tracked peer, including those under `_other`.
//!
//! An exporter's expiry of idle series (`PrometheusBuilder::idle_timeout`) does not help
//! here: it also drops the series of a tracked peer that is quiet for a while, and the
//! handles the layer keeps for that peer do not register them again.
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
pub(crate) use self::recorder::{untracked_call, Labels, PeerMetrics};

#[cfg(not(feature = "metrics"))]
pub(crate) use self::off::{untracked_call, Labels, PeerMetrics};

/// The stand-in for when the `metrics` feature is off: every call does nothing.
#[cfg(not(feature = "metrics"))]
mod off {
    use std::time::Duration;

    use crate::error::Reason;
    use crate::peer::health::PeerState;

    /// A call went untracked (no key, or the table was full).
    pub(crate) fn untracked_call() {}

    /// No labels to bound.
    pub(crate) struct Labels;

    impl Labels {
        pub(crate) fn new(_bound: usize) -> Self {
            Labels
        }
    }

    /// No handles: the methods of the real `PeerMetrics`, doing nothing.
    pub(crate) struct PeerMetrics;

    impl PeerMetrics {
        pub(crate) fn new(_label: &std::sync::Arc<str>, _labels: &Labels) -> Self {
            PeerMetrics
        }

        pub(crate) fn admitted(&self) {}

        pub(crate) fn rejected(&self) {}

        pub(crate) fn refused(&self) {}

        pub(crate) fn ended(&self) {}

        pub(crate) fn answered(&self, _latency: Duration) {}

        pub(crate) fn failed(&self) {}

        pub(crate) fn timed_out(&self) {}

        pub(crate) fn interrupted(&self, _reason: &Reason) {}

        pub(crate) fn transitioned(&self, _state: PeerState) {}

        pub(crate) fn hedged(&self, _what: usize) {}

        pub(crate) fn deadline(&self, _deadline: Duration) {}
    }
}
