//! The export itself, through the `metrics` facade: one peer's handles, registered once,
//! under a `peer` label from a bounded set.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, SharedString, Unit,
};

use crate::error::Reason;
use crate::peer::health::PeerState;

const CALLS: &str = "adaptive_timeout_calls_total";
const RESPONSES: &str = "adaptive_timeout_responses_total";
const FAILURES: &str = "adaptive_timeout_failures_total";
const TIMEOUTS: &str = "adaptive_timeout_timeouts_total";
const INTERRUPTS: &str = "adaptive_timeout_interrupts_total";
const FAIL_FAST: &str = "adaptive_timeout_fail_fast_total";
const REFUSED: &str = "adaptive_timeout_refused_total";
const TRANSITIONS: &str = "adaptive_timeout_transitions_total";
const DEADLINE: &str = "adaptive_timeout_deadline_seconds";
const IN_FLIGHT: &str = "adaptive_timeout_in_flight";
const STATE: &str = "adaptive_timeout_state";
const LATENCY: &str = "adaptive_timeout_latency_seconds";
const UNTRACKED: &str = "adaptive_timeout_untracked_calls_total";
const HEDGES: &str = "adaptive_timeout_hedges_total";

/// The `result` label of [`HEDGES`], by `HedgeCount`'s number.
const HEDGE_RESULTS: [&str; 3] = ["sent", "won", "interrupted"];

/// The `peer` label shared by the peers tracked after the layer's bound on labels was
/// reached.
const OTHER: &str = "_other";

/// The interrupt reasons whose series every peer has from the start.
const REASONS: [&str; 3] = ["peer_silent", "manual", "shutdown"];

/// Describes every metric (help text and unit) to the installed recorder. Optional: call it
/// once after installing the recorder, for `# HELP` lines and units in the exposition.
pub fn describe_metrics() {
    describe_counter!(CALLS, "Calls admitted to the peer.");
    describe_counter!(RESPONSES, "Calls the peer answered.");
    describe_counter!(FAILURES, "Calls that failed to reach the peer.");
    describe_counter!(TIMEOUTS, "Calls that ran out their adaptive deadline.");
    describe_counter!(
        INTERRUPTS,
        "Calls in flight ended by an interrupt, by reason."
    );
    describe_counter!(
        FAIL_FAST,
        "Calls refused at once because the peer was silent."
    );
    describe_counter!(
        REFUSED,
        "Calls refused before the inner service: shutdown, or the caller's budget spent."
    );
    describe_counter!(TRANSITIONS, "Health state changes, by the state entered.");
    describe_counter!(
        HEDGES,
        "Hedged calls' copies sent to the peer, copies that won, calls interrupted as losers."
    );
    describe_gauge!(
        DEADLINE,
        Unit::Seconds,
        "The deadline new calls to the peer get."
    );
    describe_gauge!(IN_FLIGHT, "Calls to the peer in flight.");
    describe_gauge!(
        STATE,
        "Health state: 0 healthy, 1 suspect, 2 silent, 3 probing."
    );
    describe_histogram!(LATENCY, Unit::Seconds, "Latency of answered calls.");
    describe_counter!(
        UNTRACKED,
        "Calls untracked: their request named no peer, or the peer table was full."
    );
}

/// A call went untracked, with no key or no room (a cold path: no handle is kept).
pub(crate) fn untracked_call() {
    counter!(UNTRACKED).increment(1);
}

/// The `peer` labels one layer has given series of their own: at most `bound` (its
/// `max_peers`) over its life. The `metrics` facade cannot remove a series, so a label
/// once given is kept (a peer tracked again continues its series) and never handed to
/// another peer; peers beyond the bound share [`OTHER`].
pub(crate) struct Labels {
    bound: usize,
    given: Mutex<HashSet<Arc<str>>>,
}

impl Labels {
    pub(crate) fn new(bound: usize) -> Self {
        Labels {
            bound,
            given: Mutex::new(HashSet::new()),
        }
    }

    /// The label of `peer`'s own series, if it has them or there is room for them.
    fn claim(&self, peer: &Arc<str>) -> Option<SharedString> {
        let mut given = self.given.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(label) = given.get(peer) {
            return Some(SharedString::from(label.clone()));
        }
        if given.len() >= self.bound {
            return None;
        }
        given.insert(peer.clone());
        Some(SharedString::from(peer.clone()))
    }
}

/// One peer's metric handles, registered when the peer is first tracked.
pub(crate) struct PeerMetrics {
    peer: SharedString,
    calls: Counter,
    responses: Counter,
    failures: Counter,
    timeouts: Counter,
    fail_fast: Counter,
    refused: Counter,
    /// By [`REASONS`].
    interrupts: [Counter; REASONS.len()],
    /// By [`PeerState::ALL`].
    transitions: [Counter; PeerState::ALL.len()],
    /// No-op under [`OTHER`], which many peers share.
    deadline: Gauge,
    in_flight: Gauge,
    /// No-op under [`OTHER`].
    state: Gauge,
    latency: Histogram,
}

impl PeerMetrics {
    /// The handles of the peer named `label`, under its own label if `labels` has room
    /// for it, else under [`OTHER`]: counts, `in_flight` and latency summed over those
    /// peers, and no deadline or state gauge (one value cannot stand for many peers). A
    /// peer tracked again finds its former series with the recorder: its state gauge
    /// starts over at healthy, as the peer does (the deadline gauge is set when the peer
    /// publishes its first deadline).
    pub(crate) fn new(label: &Arc<str>, labels: &Labels) -> Self {
        let own = labels.claim(label);
        let shared = own.is_none();
        let peer = own.unwrap_or(SharedString::const_str(OTHER));
        let p = || peer.clone();
        let single = |name: &'static str| match shared {
            false => gauge!(name, "peer" => p()),
            true => Gauge::noop(),
        };
        let state = single(STATE);
        state.set(PeerState::Healthy.index() as f64);
        PeerMetrics {
            calls: counter!(CALLS, "peer" => p()),
            responses: counter!(RESPONSES, "peer" => p()),
            failures: counter!(FAILURES, "peer" => p()),
            timeouts: counter!(TIMEOUTS, "peer" => p()),
            fail_fast: counter!(FAIL_FAST, "peer" => p()),
            refused: counter!(REFUSED, "peer" => p()),
            interrupts: REASONS.map(|r| counter!(INTERRUPTS, "peer" => p(), "reason" => r)),
            transitions: PeerState::ALL
                .map(|s| counter!(TRANSITIONS, "peer" => p(), "to" => s.as_str())),
            deadline: single(DEADLINE),
            in_flight: gauge!(IN_FLIGHT, "peer" => p()),
            state,
            latency: histogram!(LATENCY, "peer" => p()),
            peer,
        }
    }

    /// A call was admitted.
    pub(crate) fn admitted(&self) {
        self.calls.increment(1);
        self.in_flight.increment(1.0);
    }

    /// A call was refused at once because the peer was silent.
    pub(crate) fn rejected(&self) {
        self.fail_fast.increment(1);
    }

    /// A call was refused before the inner service for another reason (shutdown, the
    /// caller's budget spent).
    pub(crate) fn refused(&self) {
        self.refused.increment(1);
    }

    /// An admitted call ended, however.
    pub(crate) fn ended(&self) {
        self.in_flight.decrement(1.0);
    }

    /// The peer answered a call after `latency`.
    pub(crate) fn answered(&self, latency: Duration) {
        self.responses.increment(1);
        self.latency.record(latency.as_secs_f64());
    }

    /// A call failed to reach the peer.
    pub(crate) fn failed(&self) {
        self.failures.increment(1);
    }

    /// A call ran out its deadline.
    pub(crate) fn timed_out(&self) {
        self.timeouts.increment(1);
    }

    /// A call in flight was interrupted for `reason`.
    pub(crate) fn interrupted(&self, reason: &Reason) {
        let name = reason.as_str();
        match REASONS.iter().position(|r| *r == name) {
            Some(i) => self.interrupts[i].increment(1),
            // A reason that reaches a call only through its token (rare): registered now.
            None => {
                counter!(INTERRUPTS, "peer" => self.peer.clone(), "reason" => name).increment(1)
            }
        }
    }

    /// A hedge event (`HedgeCount`'s number): registered when it first happens, as hedging
    /// is opt-in and its events are a few percent of calls.
    pub(crate) fn hedged(&self, what: usize) {
        if let Some(result) = HEDGE_RESULTS.get(what) {
            counter!(HEDGES, "peer" => self.peer.clone(), "result" => *result).increment(1);
        }
    }

    /// The peer entered `state`.
    pub(crate) fn transitioned(&self, state: PeerState) {
        let index = state.index();
        if let Some(c) = self.transitions.get(index) {
            c.increment(1);
        }
        self.state.set(index as f64);
    }

    /// The deadline new calls get was (re)published.
    pub(crate) fn deadline(&self, deadline: Duration) {
        self.deadline.set(deadline.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eager_reasons_are_reason_names() {
        let reasons = [
            Reason::PeerSilent {
                since: Duration::ZERO,
                outstanding: 0,
            },
            Reason::Manual("x".into()),
            Reason::Shutdown,
        ];
        assert_eq!(reasons.map(|r| r.as_str()), REASONS);
    }

    #[test]
    fn state_numbers_follow_the_state_order() {
        let names = PeerState::ALL.map(PeerState::as_str);
        assert_eq!(names, ["healthy", "suspect", "silent", "probing"]);
    }
}
