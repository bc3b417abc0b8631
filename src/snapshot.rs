//! Per-peer snapshots: what the layer knows about each peer, and why its deadline is what
//! it is.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::class::ClassSnapshot;
use crate::explain::{DeadlineExplanation, DeadlineSource};
use crate::peer::health::PeerState;
use crate::peer::{HedgeCount, Peer};

/// A point-in-time reading of one peer.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct PeerSnapshot {
    /// The peer's name: its key's `Debug` form, bounded (see
    /// [`MAX_LABEL_BYTES`](crate::MAX_LABEL_BYTES)), shared with its errors and metrics.
    pub peer: Arc<str>,
    /// Where the peer is in the health state machine.
    pub state: PeerState,
    /// Answers the quantiles below are read from: those the window stands for, or a quiet
    /// peer's last answers (up to `min_samples` of them, from up to `max_history` ago). A
    /// busy peer's window keeps the latency of only some of its answers, each standing for
    /// the answers it was drawn from (README's "Cost"), so this counts about every answer
    /// in the window (and each deadline run out, a censored sample), sampled or not.
    pub samples: u64,
    /// Median latency in the window.
    pub p50: Duration,
    /// 90th percentile latency.
    pub p90: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// 99.9th percentile latency.
    pub p999: Duration,
    /// Highest latency in the window.
    pub max: Duration,
    /// The deadline a new call gets (before a caller's own deadline shortens it): cut to
    /// the policy's `min` for a silent peer with `fail_fast` off.
    pub deadline: Duration,
    /// Why the deadline has its value, with the numbers that went into it.
    pub explanation: DeadlineExplanation,
    /// Calls in flight.
    pub in_flight: usize,
    /// Calls answered by the peer (successfully or with an error), ever. A call with a
    /// watched body counts here when its body ends (or is dropped), unless the layer cut
    /// it: each call counts in one of these counters at most.
    pub completed: u64,
    /// Calls that ran out their deadline, ever: a head's, or a watched body's idle or
    /// total deadline, except the one whose run-out deadline declared the peer silent: it
    /// ends with [`Reason::PeerSilent`](crate::Reason::PeerSilent), and counts in
    /// `silent_interrupts`.
    pub deadline_exceeded: u64,
    /// Calls whose inner service failed to reach the peer (a transport
    /// [`Outcome::Failure`](crate::Outcome::Failure)), ever. Failures are neither latency
    /// samples nor answers: a peer refusing connections is failing, not fast.
    pub failures: u64,
    /// Failures since the peer last answered: alert on a peer whose every call fails.
    pub consecutive_failures: u64,
    /// Calls in flight ended because the peer went silent, ever: the one whose own
    /// deadline run out declared it too, as each is told
    /// [`Reason::PeerSilent`](crate::Reason::PeerSilent).
    pub silent_interrupts: u64,
    /// Calls in flight ended from outside the layer, ever: by hand (through the
    /// [`InterruptHandle`](crate::InterruptHandle) or the caller's token, whatever reason
    /// that carries) or by shutdown. Calls refused after shutdown are in `refused`.
    pub manual_interrupts: u64,
    /// Calls refused at once because the peer was silent, ever.
    pub fail_fast: u64,
    /// Calls refused before they reached the inner service for any other reason, ever:
    /// after [`shutdown`](crate::InterruptHandle::shutdown), or because the caller's
    /// deadline was already spent or its token had fired. Every call made to the peer is
    /// counted once: in flight, or in `completed`, `deadline_exceeded`, `failures`,
    /// `silent_interrupts`, `manual_interrupts`, `fail_fast` or here (a call its caller
    /// drops is in none of them).
    pub refused: u64,
    /// Copies of hedged calls ([`HedgeLayer`](crate::HedgeLayer)) sent to the peer, ever.
    /// Each is a call to the peer too, counted like any other.
    pub hedges_sent: u64,
    /// Copies sent to the peer that answered before the call they copied, ever.
    pub hedges_won: u64,
    /// Calls to the peer ended by the race of their hedged request, ever: the loser, when
    /// the other copy answered first (interrupted with
    /// [`Reason::Hedged`](crate::Reason::Hedged) through its token), and a copy still
    /// running when the request ended with the first's error (its token fired with that
    /// error). Either is dropped, neither a latency sample nor a miss, and in none of the
    /// counters above: with them, every call to the peer is counted once.
    pub hedge_interrupts: u64,
    /// How long since the peer last answered anything (failures are not answers).
    pub last_response_age: Duration,
    /// The floor on silence the peer learned from its stalls: how long it may answer
    /// nothing, with calls outstanding, before they are cut as a silence (when longer than
    /// their deadline and `min_silence`). 1.25 times the longest time the peer recently
    /// said nothing and then answered again by itself within `cold_start` (a GC pause, a
    /// CPU stall), halving every 5 minutes without a new one, at most `cold_start`; zero
    /// for a peer that never stalled, whose silence is detected at its deadline.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use tower::{Layer, ServiceExt};
    /// use tower_adaptive_timeout::AdaptiveTimeoutLayer;
    ///
    /// let layer = AdaptiveTimeoutLayer::builder(|peer: &u32| *peer).build().unwrap();
    /// let handle = layer.handle();
    /// let svc = layer.layer(tower::service_fn(|_: u32| async {
    ///     Ok::<_, std::convert::Infallible>(())
    /// }));
    /// svc.oneshot(7).await.unwrap();
    /// let peer = handle.peer(&7).unwrap();
    /// // Never stalled: a silence of this peer is cut at its deadline.
    /// assert_eq!(peer.learned_silence_floor, Duration::ZERO);
    /// assert_eq!(peer.held_through_stalls, 0);
    /// // How long the peer may say nothing before its calls are cut as a silence (the
    /// // policy's `min_silence`, 0 by default, aside).
    /// let quiet = peer.deadline.max(peer.learned_silence_floor);
    /// assert_eq!(quiet, peer.deadline);
    /// # }
    /// ```
    pub learned_silence_floor: Duration,
    /// Calls that the learned floor held through a stall and that were then answered,
    /// ever: each would have been cut as a silence by its deadline (and `min_silence`).
    /// Their latencies are the stall's, not the peer's: they are not samples.
    pub held_through_stalls: u64,
    /// When a silent peer's next probe may go, from now (zero if due or not silent).
    pub next_probe_in: Duration,
    /// How long since the last call to the peer started.
    pub idle: Duration,
    /// Heap bytes the peer's latency history holds (its window's histograms, allocated
    /// once it is busy, and its last answers), its classes' included.
    pub window_bytes: usize,
    /// The peer's latency classes, in the order they were first seen (see
    /// [`class`](crate::class)); the figures above are over every call.
    pub classes: Vec<ClassSnapshot>,
}

impl PeerSnapshot {
    /// Why the deadline has its value.
    pub fn deadline_source(&self) -> DeadlineSource {
        self.explanation.source
    }

    pub(crate) fn read(peer: &Peer, now: Instant) -> PeerSnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let view = peer.view(now);
        let [p50, p90, p99, p999] = view.quantiles;
        let (learned_silence_floor, held_through_stalls) = view.stalls;
        PeerSnapshot {
            peer: peer.label().clone(),
            state: view.state,
            samples: view.samples,
            p50,
            p90,
            p99,
            p999,
            max: view.max,
            deadline: view.deadline,
            explanation: view.explanation,
            in_flight: peer.in_flight(),
            completed: view.completed,
            deadline_exceeded: view.deadline_exceeded,
            failures: view.failures,
            consecutive_failures: view.consecutive_failures,
            silent_interrupts: peer.counters.silent_interrupts.load(Relaxed),
            manual_interrupts: peer.counters.manual_interrupts.load(Relaxed),
            fail_fast: peer.counters.fail_fast.load(Relaxed),
            refused: peer.counters.refused.load(Relaxed),
            hedges_sent: peer.hedge_count(HedgeCount::Sent),
            hedges_won: peer.hedge_count(HedgeCount::Won),
            hedge_interrupts: peer.hedge_count(HedgeCount::Interrupted),
            last_response_age: now.saturating_duration_since(view.last_response),
            learned_silence_floor,
            held_through_stalls,
            next_probe_in: match view.state {
                PeerState::Silent => view.next_probe_at.saturating_duration_since(now),
                _ => Duration::ZERO,
            },
            idle: peer.idle_for(now),
            window_bytes: view.heap_bytes,
            classes: view.classes,
        }
    }
}
