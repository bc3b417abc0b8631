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
//! from the peer is a heartbeat and makes it Healthy. A probe cut by its caller's deadline
//! or failing at once is a failed probe; one dropped by its caller frees the probe slot
//! but keeps the backoff. With `fail_fast` off the probe goes the same way and the other
//! calls are cut to `min`. A policy with `silent_after_misses` 0 releases a silent peer.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::policy::TimeoutPolicy;

/// Long probes double no further than their first deadline (`max(cold_start, the deadline
/// from before the silence)`) until this share of the silence so far is longer (`1/100`:
/// 1 s after 100 s of silence, a 10 s probe after 17 minutes, `max` = 30 s after 50): a
/// probe longer than `cold_start` wastes under 1% of the silence it is sent in.
pub(crate) const LONG_PROBE_PATIENCE: u32 = 100;
/// What spaces long probes out (`long_probe_spacing` times it, after one ran out) doubles
/// after each, up to this multiple of the first long probe's deadline: 64 s between long
/// probes at the defaults, however short the probes themselves still are.
const LONG_SPACING_GROWTH: u32 = 8;

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
    /// Go ahead as the one probe of a silent peer, with this deadline.
    Probe(Duration),
    /// Go ahead with the deadline cut to the policy's `min` (silent, fail-fast off).
    Shortened,
    /// Fail at once: the peer is silent.
    FailFast,
}

/// How a probe ended without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProbeEnd {
    /// It ran out the probe deadline: the peer may be gone, or slower than the deadline.
    RanOut,
    /// It ran out the caller's shorter deadline: nothing learned about the peer's latency.
    CallerCut,
    /// The inner service failed at once (connection refused, reset, ...): the host is
    /// reachable enough to refuse, so the next probe is a long one.
    Failed,
}

/// The state machine of one peer.
///
/// Probes alternate between two deadlines. A *short* probe gets the deadline the peer had
/// before it went silent: it readmits a peer that comes back as it was, without holding the
/// probe slot long. A *long* probe gets at least `max(cold_start, that deadline)`, doubling
/// after each one that runs out, up to `max`: it readmits a peer that comes back slower, so
/// no peer answering within `max` is locked out. After the `k`-th long probe ran out, only
/// short ones go for `long_probe_spacing × L`, `L` the first long deadline doubled `k - 1`
/// times (up to [`LONG_SPACING_GROWTH`] times it, even while the probes themselves are held
/// shorter), so a peer that comes back as fast as before is rarely kept waiting behind a
/// long one.
///
/// A long probe makes its caller wait at most `max(base, silence / LONG_PROBE_PATIENCE)`,
/// `base` being its first deadline (`cold_start` for a peer that answered faster): no call
/// to a peer silent for less than 100 s waits longer than `base`, a quiet peer, whose every
/// call may be a long probe, does not stall callers for `max` over a silence of minutes, and
/// a peer that comes back slower than `base` is still readmitted once the silence is long
/// enough for a probe at its latency (a 30 s probe after 50 minutes of silence).
#[derive(Clone, Debug)]
pub(crate) struct Health {
    state: PeerState,
    misses: u32,
    last_response: Instant,
    backoff: Duration,
    next_probe_at: Instant,
    /// The peer's deadline while it was last answering (short probes get it).
    answering_deadline: Duration,
    /// The next long probe's deadline.
    long_deadline: Duration,
    /// When the next probe may be a long one.
    next_long_at: Instant,
    /// When the peer was declared silent.
    silent_since: Instant,
    /// The first long probe's deadline; long probes stay within a multiple of it.
    long_base: Duration,
    /// Whether the probe in flight is a long one.
    probe_long: bool,
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
            answering_deadline: Duration::ZERO,
            long_deadline: Duration::ZERO,
            next_long_at: now,
            silent_since: now,
            long_base: Duration::ZERO,
            probe_long: false,
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

    /// Notes the deadline the peer has while it answers; short probes get it once it is
    /// silent. Ignored while silent, so probes keep the deadline from before the silence.
    pub(crate) fn note_deadline(&mut self, deadline: Duration) {
        if self.state.is_open() {
            self.answering_deadline = deadline;
        }
    }

    /// Decides what a new call may do (only consulted when the state is not open).
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        policy: &TimeoutPolicy,
    ) -> (Verdict, Option<Transition>) {
        match self.state {
            PeerState::Healthy | PeerState::Suspect => (Verdict::Go, None),
            _ if policy.silent_after_misses == 0 => {
                // Detection was turned off while the peer was silent: release it.
                (Verdict::Go, self.release("silence detection turned off"))
            }
            PeerState::Silent if now >= self.next_probe_at => {
                self.probe_long = now >= self.next_long_at;
                let deadline = if self.probe_long {
                    // The doubling goes on (it spaces long probes out) while the probe's own
                    // deadline waits for the silence to be long enough.
                    let silence = now.saturating_duration_since(self.silent_since);
                    let spaced =
                        (self.long_base * LONG_SPACING_GROWTH).max(silence / LONG_PROBE_PATIENCE);
                    self.long_deadline = self.long_deadline.min(spaced);
                    self.long_deadline.min(self.long_cap(now))
                } else {
                    self.answering_deadline
                };
                let t = self.go(PeerState::Probing, "probe due");
                (Verdict::Probe(deadline.clamp(policy.min, policy.max)), t)
            }
            PeerState::Silent | PeerState::Probing if !policy.fail_fast => {
                (Verdict::Shortened, None)
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
        self.release(why)
    }

    /// A call that started at `started` ran out its deadline at `now`: a probe that ran
    /// out, or a miss if the peer has not answered since `started`.
    pub(crate) fn on_deadline(
        &mut self,
        now: Instant,
        started: Instant,
        probe: bool,
        policy: &TimeoutPolicy,
    ) -> Option<Transition> {
        if probe && self.state == PeerState::Probing {
            return self.on_probe_end(now, ProbeEnd::RanOut, policy);
        }
        if policy.silent_after_misses == 0 || !self.is_miss(started) {
            // Silence detection is off, or the peer answered since: the tail, not silence.
            return None;
        }
        match self.state {
            PeerState::Healthy | PeerState::Suspect => {
                self.misses += 1;
                if self.misses >= policy.silent_after_misses {
                    self.backoff = policy.probe_backoff;
                    self.next_probe_at = now + self.jittered(self.backoff);
                    self.long_deadline = self
                        .answering_deadline
                        .max(policy.cold_start)
                        .min(policy.max);
                    self.long_base = self.long_deadline;
                    self.silent_since = now;
                    self.next_long_at = now;
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

    /// Whether a call that started at `started` and got no answer is a miss: the peer has
    /// not answered anything since it started.
    pub(crate) fn is_miss(&self, started: Instant) -> bool {
        self.last_response <= started
    }

    /// The probe in flight ended without an answer at `now`: the next one waits out the
    /// backoff, which doubles up to `probe_backoff_max`. A long probe that ran out doubles
    /// the next long probe's deadline and spaces long probes out; a failed one makes the
    /// next probe a long one.
    pub(crate) fn on_probe_end(
        &mut self,
        now: Instant,
        how: ProbeEnd,
        policy: &TimeoutPolicy,
    ) -> Option<Transition> {
        if self.state != PeerState::Probing {
            return None;
        }
        self.backoff = (self.backoff * 2).clamp(policy.probe_backoff, policy.probe_backoff_max);
        self.next_probe_at = now + self.jittered(self.backoff);
        match how {
            ProbeEnd::RanOut if self.probe_long => {
                let spacing = self.long_deadline.saturating_mul(policy.long_probe_spacing);
                self.next_long_at = now + spacing;
                self.long_deadline = (self.long_deadline * 2).min(policy.max);
            }
            ProbeEnd::Failed => self.next_long_at = now,
            ProbeEnd::RanOut | ProbeEnd::CallerCut => {}
        }
        let why = match how {
            ProbeEnd::RanOut => "probe missed its deadline",
            ProbeEnd::CallerCut => "probe cut by the caller's deadline",
            ProbeEnd::Failed => "probe failed",
        };
        self.go(PeerState::Silent, why)
    }

    /// A call ended without an answer or a deadline (dropped or interrupted). A probe
    /// that ends this way frees the probe slot; the next probe still waits out the
    /// current backoff, so callers that give up early cannot hammer a silent peer.
    pub(crate) fn on_abandon(&mut self, probe: bool, now: Instant) -> Option<Transition> {
        if probe && self.state == PeerState::Probing {
            self.next_probe_at = now + self.jittered(self.backoff);
            return self.go(PeerState::Silent, "probe abandoned");
        }
        None
    }

    /// The longest deadline a long probe may have at `now`: the first one, or a share of
    /// the silence so far, whichever is longer.
    fn long_cap(&self, now: Instant) -> Duration {
        let silence = now.saturating_duration_since(self.silent_since);
        self.long_base.max(silence / LONG_PROBE_PATIENCE)
    }

    /// Lets the peer's calls through again (a policy without silence detection).
    pub(crate) fn release_if_detection_off(
        &mut self,
        policy: &TimeoutPolicy,
    ) -> Option<Transition> {
        if policy.silent_after_misses == 0 && !self.state.is_open() {
            return self.release("silence detection turned off");
        }
        None
    }

    fn release(&mut self, why: &'static str) -> Option<Transition> {
        self.misses = 0;
        self.backoff = Duration::ZERO;
        self.go(PeerState::Healthy, why)
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
        assert!(matches!(h.admit(at, &policy).0, Verdict::Probe(_)));
        assert_eq!(h.admit(at, &policy).0, Verdict::FailFast);
        h.on_deadline(at + ms(10), at, true, &policy);
        assert_eq!(h.state(), PeerState::Silent);
        let wait = h.next_probe_at() - (at + ms(10));
        assert!(wait >= ms(200) && wait <= ms(250), "{wait:?}");
        let at = h.next_probe_at();
        assert!(matches!(h.admit(at, &policy).0, Verdict::Probe(_)));
        h.on_deadline(at, at, true, &policy);
        let wait = h.next_probe_at() - at;
        assert!(wait >= ms(300) && wait <= ms(375), "capped: {wait:?}");
        let at = h.next_probe_at();
        h.admit(at, &policy);
        let t = h.on_response(at + ms(1)).unwrap();
        assert_eq!((t.from, t.to), (PeerState::Probing, PeerState::Healthy));
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot_but_keeps_the_backoff() {
        let policy = TimeoutPolicy::default();
        let t0 = Instant::now();
        let mut h = Health::new(t0, 7);
        h.on_deadline(t0, t0, false, &policy);
        h.on_deadline(t0, t0, false, &policy);
        let at = h.next_probe_at();
        assert!(matches!(h.admit(at, &policy).0, Verdict::Probe(_)));
        h.on_abandon(true, at + ms(1));
        assert_eq!(h.state(), PeerState::Silent);
        assert_eq!(h.admit(at + ms(2), &policy).0, Verdict::FailFast);
        let next = h.next_probe_at();
        assert!(next >= at + ms(1) + policy.probe_backoff, "{:?}", next - at);
        assert!(matches!(h.admit(next, &policy).0, Verdict::Probe(_)));
    }

    /// Silent at `t0`, having answered with a 25ms deadline before.
    fn silent(policy: &TimeoutPolicy, t0: Instant) -> Health {
        let mut h = Health::new(t0, 7);
        h.note_deadline(ms(25));
        h.on_deadline(t0, t0, false, policy);
        h.on_deadline(t0, t0, false, policy);
        assert_eq!(h.state(), PeerState::Silent);
        h
    }

    #[test]
    fn probes_alternate_a_long_deadline_that_doubles_with_short_ones() {
        let policy = TimeoutPolicy::default();
        let t0 = Instant::now();
        let mut h = silent(&policy, t0);
        let mut deadlines = Vec::new();
        let mut now = t0;
        for _ in 0..400 {
            now = h.next_probe_at();
            let Verdict::Probe(d) = h.admit(now, &policy).0 else {
                panic!("no probe at {now:?}")
            };
            deadlines.push(d.as_millis());
            now += d;
            h.on_deadline(now, now - d, true, &policy);
        }
        // The first is long (cold start), then short ones at the deadline from before the
        // silence, until long_probe_spacing times the long one has passed; the next long
        // one would double, but stays at cold start while the silence is under 100 s.
        assert_eq!(deadlines[0], 1000);
        assert_eq!(deadlines[1], 25);
        let second_long = deadlines.iter().skip(1).position(|d| *d > 25).unwrap() + 1;
        assert_eq!(deadlines[second_long], 1000);
        assert!(deadlines[1..second_long].iter().all(|d| *d == 25));
        assert!(now >= t0, "{now:?}");
    }

    #[test]
    fn no_probe_waits_longer_than_cold_start_in_the_first_minute_of_a_silence() {
        let policy = TimeoutPolicy::default();
        let t0 = Instant::now();
        let mut h = silent(&policy, t0);
        // Busy callers: a probe as soon as one is due, every one running out.
        let mut now = t0;
        let mut longest = Duration::ZERO;
        while now < t0 + Duration::from_secs(60) {
            now = h.next_probe_at();
            let Verdict::Probe(d) = h.admit(now, &policy).0 else {
                panic!("no probe at {:?}", now - t0)
            };
            longest = longest.max(d);
            now += d;
            h.on_deadline(now, now - d, true, &policy);
        }
        assert_eq!(longest, policy.cold_start);
    }

    #[test]
    fn long_probes_stay_at_the_first_until_the_silence_is_a_hundred_times_longer() {
        let policy = TimeoutPolicy::default();
        let t0 = Instant::now();
        let mut h = silent(&policy, t0);
        // A quiet peer: a call every 10 s, each one a probe.
        let mut longest = Vec::new();
        for minute in 1..=70u64 {
            let mut now = t0 + Duration::from_secs(60 * (minute - 1));
            let mut top = Duration::ZERO;
            while now < t0 + Duration::from_secs(60 * minute) {
                now = now.max(h.next_probe_at());
                let Verdict::Probe(d) = h.admit(now, &policy).0 else {
                    panic!("no probe at {:?}", now - t0)
                };
                top = top.max(d);
                now += d;
                h.on_deadline(now, now - d, true, &policy);
                now += Duration::from_secs(10);
            }
            longest.push(top);
        }
        // Cold start (1 s) for the first 100 s, then at most a 100th of the silence:
        // `max` after 50 minutes.
        assert_eq!(longest[0], ms(1_000));
        for (minute, d) in (1..).zip(&longest) {
            let cap = Duration::from_secs(60 * minute) / LONG_PROBE_PATIENCE;
            assert!(*d <= cap.max(ms(1_000)), "minute {minute}: {longest:?}");
        }
        assert_eq!(longest[55..].iter().max(), Some(&policy.max));
    }

    #[test]
    fn a_failed_probe_makes_the_next_one_long() {
        let policy = TimeoutPolicy::default();
        let t0 = Instant::now();
        let mut h = silent(&policy, t0);
        let at = h.next_probe_at();
        assert_eq!(h.admit(at, &policy).0, Verdict::Probe(ms(1000)));
        h.on_deadline(at + ms(1000), at, true, &policy);
        let at = h.next_probe_at();
        assert_eq!(h.admit(at, &policy).0, Verdict::Probe(ms(25)));
        h.on_probe_end(at + ms(1), ProbeEnd::Failed, &policy);
        // Long at once, at cold start while the silence is under 100 s.
        let at = h.next_probe_at();
        assert_eq!(h.admit(at, &policy).0, Verdict::Probe(ms(1000)));
    }

    #[test]
    fn a_probe_cut_by_its_caller_frees_the_slot() {
        let policy = TimeoutPolicy::default();
        let t0 = Instant::now();
        let mut h = silent(&policy, t0);
        let at = h.next_probe_at();
        assert!(matches!(h.admit(at, &policy).0, Verdict::Probe(_)));
        let t = h
            .on_probe_end(at + ms(5), ProbeEnd::CallerCut, &policy)
            .unwrap();
        assert_eq!((t.from, t.to), (PeerState::Probing, PeerState::Silent));
        assert!(matches!(
            h.admit(h.next_probe_at(), &policy).0,
            Verdict::Probe(_)
        ));
    }

    #[test]
    fn fail_fast_off_probes_one_call_and_shortens_the_rest() {
        let policy = TimeoutPolicy::default().fail_fast(false);
        let t0 = Instant::now();
        let mut h = silent(&policy, t0);
        assert_eq!(h.admit(t0, &policy).0, Verdict::Shortened);
        let at = h.next_probe_at();
        assert!(matches!(h.admit(at, &policy).0, Verdict::Probe(_)));
        assert_eq!(h.admit(at, &policy).0, Verdict::Shortened);
        let t = h.on_response(at + ms(20)).unwrap();
        assert_eq!(t.to, PeerState::Healthy);
    }

    #[test]
    fn turning_detection_off_releases_a_silent_peer() {
        let policy = TimeoutPolicy::default();
        let t0 = Instant::now();
        let mut h = silent(&policy, t0);
        let off = policy.clone().silent_after_misses(0);
        let t = h.release_if_detection_off(&off).unwrap();
        assert_eq!(t.to, PeerState::Healthy);
        let mut h = silent(&policy, t0);
        assert_eq!(h.admit(t0, &off).0, Verdict::Go);
        assert_eq!(h.state(), PeerState::Healthy);
    }
}
