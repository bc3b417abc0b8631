//! The per-peer health state machine, driven by the calls themselves (no pings).
//!
//! ```text
//!            miss                 miss x silent_after_misses
//! Healthy ---------> Suspect ---------------------------------> Silent <----+
//!    ^                  |                                          |        | probe missed
//!    +---- response ----+                     probe due (backoff)  v        | (backoff x 2)
//!    +------------------------------ probe answered ----------- Probing ----+
//! ```
//!
//! A *miss* is a call that ran out its deadline with no answer from the peer since it
//! started: a slow call overtaken by other answers is the tail, not silence. Any answer
//! from the peer is a heartbeat and makes it Healthy.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::policy::TimeoutPolicy;

/// Where a peer is in the health state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum PeerState {
    /// Answering.
    Healthy,
    /// A call ran out its deadline with no answer from the peer since it started.
    Suspect,
    /// Enough independent misses: calls in flight were interrupted; new calls fail fast.
    Silent,
    /// Silent, with one probe call in flight.
    Probing,
}

impl PeerState {
    pub(crate) const ALL: [PeerState; 4] = [
        PeerState::Healthy,
        PeerState::Suspect,
        PeerState::Silent,
        PeerState::Probing,
    ];

    /// A short, stable name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Healthy => "healthy",
            PeerState::Suspect => "suspect",
            PeerState::Silent => "silent",
            PeerState::Probing => "probing",
        }
    }

    /// The state's place in [`PeerState::ALL`] (and its number in the state gauge).
    pub(crate) fn index(self) -> usize {
        PeerState::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }

    /// Whether calls go straight through without consulting the state machine.
    pub(crate) fn is_open(self) -> bool {
        matches!(self, PeerState::Healthy | PeerState::Suspect)
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state, with why it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: PeerState,
    pub(crate) to: PeerState,
    pub(crate) why: &'static str,
}

/// The state machine's verdict on a new call to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go ahead with the peer's deadline.
    Go,
    /// Go ahead as the one probe of a silent peer.
    Probe,
    /// Go ahead with the deadline cut to the policy's `min` (silent, fail-fast off).
    Shortened,
    /// Fail at once: the peer is silent.
    FailFast,
}

/// The state machine of one peer.
#[derive(Clone, Debug)]
pub(crate) struct Health {
    state: PeerState,
    misses: u32,
    last_response: Instant,
    backoff: Duration,
    next_probe_at: Instant,
    /// State of the jitter generator (xorshift64*).
    rng: u64,
}

impl Health {
    /// A healthy peer first seen at `now`; `seed` drives its probe jitter.
    pub(crate) fn new(now: Instant, seed: u64) -> Self {
        Health {
            state: PeerState::Healthy,
            misses: 0,
            last_response: now,
            backoff: Duration::ZERO,
            next_probe_at: now,
            rng: seed | 1,
        }
    }

    pub(crate) fn state(&self) -> PeerState {
        self.state
    }

    /// When the peer last answered anything (or when it was first seen).
    pub(crate) fn last_response(&self) -> Instant {
        self.last_response
    }

    /// When the next probe of a silent peer may go.
    pub(crate) fn next_probe_at(&self) -> Instant {
        self.next_probe_at
    }

    /// Decides what a new call may do (only consulted when the state is not open).
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        policy: &TimeoutPolicy,
    ) -> (Verdict, Option<Transition>) {
        match self.state {
            PeerState::Healthy | PeerState::Suspect => (Verdict::Go, None),
            PeerState::Silent if !policy.fail_fast => (Verdict::Shortened, None),
            PeerState::Silent if now >= self.next_probe_at => {
                let t = self.go(PeerState::Probing, "probe due");
                (Verdict::Probe, t)
            }
            PeerState::Silent | PeerState::Probing => (Verdict::FailFast, None),
        }
    }

    /// The peer answered a call (a heartbeat).
    pub(crate) fn on_response(&mut self, now: Instant) -> Option<Transition> {
        self.last_response = self.last_response.max(now);
        self.misses = 0;
        let why = match self.state {
            PeerState::Healthy => return None,
            PeerState::Probing => "probe answered",
            PeerState::Suspect | PeerState::Silent => "peer answered",
        };
        self.backoff = Duration::ZERO;
        self.go(PeerState::Healthy, why)
    }

    /// A call that started at `started` ran out its deadline at `now`.
    pub(crate) fn on_deadline(
        &mut self,
        now: Instant,
        started: Instant,
        probe: bool,
        policy: &TimeoutPolicy,
    ) -> Option<Transition> {
        if probe && self.state == PeerState::Probing {
            self.backoff = (self.backoff * 2).clamp(policy.probe_backoff, policy.probe_backoff_max);
            self.next_probe_at = now + self.jittered(self.backoff);
            return self.go(PeerState::Silent, "probe missed its deadline");
        }
        if policy.silent_after_misses == 0 || self.last_response > started {
            // Silence detection is off, or the peer answered since: the tail, not silence.
            return None;
        }
        match self.state {
            PeerState::Healthy | PeerState::Suspect => {
                self.misses += 1;
                if self.misses >= policy.silent_after_misses {
                    self.backoff = policy.probe_backoff;
                    self.next_probe_at = now + self.jittered(self.backoff);
                    self.go(
                        PeerState::Silent,
                        "independent misses reached silent_after_misses",
                    )
                } else {
                    self.go(
                        PeerState::Suspect,
                        "a call missed its deadline with no answer since",
                    )
                }
            }
            PeerState::Silent | PeerState::Probing => None,
        }
    }

    /// A call ended without an answer or a deadline (dropped or interrupted). A probe
    /// that ends this way frees the probe slot at once.
    pub(crate) fn on_abandon(&mut self, probe: bool, now: Instant) -> Option<Transition> {
        if probe && self.state == PeerState::Probing {
            self.next_probe_at = now;
            return self.go(PeerState::Silent, "probe abandoned");
        }
        None
    }

    /// `d` plus up to 25% random jitter, so probes of one peer by many clients (each with
    /// its own seed) do not line up.
    fn jittered(&mut self, d: Duration) -> Duration {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 54; // 0..1024
        d + d.mul_f64(r as f64 / 4096.0)
    }

    fn go(&mut self, to: PeerState, why: &'static str) -> Option<Transition> {
        let from = std::mem::replace(&mut self.state, to);
        (from != to).then_some(Transition { from, to, why })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn two_independent_misses_make_a_peer_silent() {
        let policy = TimeoutPolicy::default();
        let t0 = Instant::now();
        let mut h = Health::new(t0, 7);
        let t = h
            .on_deadline(t0 + ms(100), t0 + ms(1), false, &policy)
            .unwrap();
        assert_eq!((t.from, t.to), (PeerState::Healthy, PeerState::Suspect));
        let t = h
            .on_deadline(t0 + ms(110), t0 + ms(2), false, &policy)
            .unwrap();
        assert_eq!(t.to, PeerState::Silent);
        let probe_at = h.next_probe_at();
        assert!(probe_at >= t0 + ms(110) + policy.probe_backoff);
        assert!(probe_at <= t0 + ms(110) + policy.probe_backoff * 5 / 4);
    }

    #[test]
    fn a_miss_overtaken_by_an_answer_is_the_tail() {
        let policy = TimeoutPolicy::default();
        let t0 = Instant::now();
        let mut h = Health::new(t0, 7);
        assert!(h.on_response(t0 + ms(50)).is_none());
        // Started before the answer at 50ms: not independent.
        assert!(h
            .on_deadline(t0 + ms(100), t0 + ms(10), false, &policy)
            .is_none());
        assert_eq!(h.state(), PeerState::Healthy);
    }

    #[test]
    fn probes_go_one_at_a_time_and_back_off() {
        let policy = TimeoutPolicy::default()
            .probe_backoff(ms(100))
            .probe_backoff_max(ms(300));
        let t0 = Instant::now();
        let mut h = Health::new(t0, 7);
        h.on_deadline(t0, t0, false, &policy);
        h.on_deadline(t0, t0, false, &policy);
        assert_eq!(h.state(), PeerState::Silent);
        assert_eq!(h.admit(t0 + ms(50), &policy).0, Verdict::FailFast);
        let at = h.next_probe_at();
        assert_eq!(h.admit(at, &policy).0, Verdict::Probe);
        assert_eq!(h.admit(at, &policy).0, Verdict::FailFast);
        h.on_deadline(at + ms(10), at, true, &policy);
        assert_eq!(h.state(), PeerState::Silent);
        let wait = h.next_probe_at() - (at + ms(10));
        assert!(wait >= ms(200) && wait <= ms(250), "{wait:?}");
        let at = h.next_probe_at();
        assert_eq!(h.admit(at, &policy).0, Verdict::Probe);
        h.on_deadline(at, at, true, &policy);
        let wait = h.next_probe_at() - at;
        assert!(wait >= ms(300) && wait <= ms(375), "capped: {wait:?}");
        let at = h.next_probe_at();
        h.admit(at, &policy);
        let t = h.on_response(at + ms(1)).unwrap();
        assert_eq!((t.from, t.to), (PeerState::Probing, PeerState::Healthy));
    }

    #[test]
    fn fail_fast_off_shortens_instead() {
        let policy = TimeoutPolicy::default().fail_fast(false);
        let t0 = Instant::now();
        let mut h = Health::new(t0, 7);
        h.on_deadline(t0, t0, false, &policy);
        h.on_deadline(t0, t0, false, &policy);
        assert_eq!(h.admit(t0, &policy).0, Verdict::Shortened);
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let policy = TimeoutPolicy::default();
        let t0 = Instant::now();
        let mut h = Health::new(t0, 7);
        h.on_deadline(t0, t0, false, &policy);
        h.on_deadline(t0, t0, false, &policy);
        let at = h.next_probe_at();
        assert_eq!(h.admit(at, &policy).0, Verdict::Probe);
        h.on_abandon(true, at + ms(1));
        assert_eq!(h.admit(at + ms(1), &policy).0, Verdict::Probe);
    }
}
