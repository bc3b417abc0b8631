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
//! started: a slow call overtaken by other answers is the tail, not silence, and is held
//! past its deadline as a straggler ([`Health::cut_at`]) while the peer answers. Any answer
//! from the peer is a heartbeat and makes it Healthy. A probe cut by its caller's deadline
//! or failing at once is a failed probe; one dropped by its caller frees the probe slot
//! but keeps the backoff. With `fail_fast` off the probe goes the same way and the other
//! calls are cut to `min`. A policy with `silent_after_misses` 0 releases a silent peer.
//!
//! A peer that went quiet and then answered again by itself within `cold_start` beyond
//! its normal latency (a stall, not a death) earns a learned floor on silence
//! ([`Stalls`]): its calls are held, and no miss counts, until it has answered nothing for
//! that long. A peer whose answers keep coming later than its deadline, with none in time
//! between, slowed down: its quiet spans are no stalls, and its answers are samples.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::stalls::{StallMark, Stalls};
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
/// A straggler (a call past its deadline on a peer that still answers other calls) is held
/// up to this multiple of its deadline, and at least `cold_start`: a lost packet's
/// retransmission (200 ms and more on Linux) or a rare slow route fits in, a call of a
/// busy peer whose answers stopped does not wait on it (silence cuts it at once).
pub(crate) const STRAGGLER_FACTOR: u32 = 2;

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
/// Probes alternate between two deadlines. A *short* probe gets the quantile the peer's
/// deadline from before the silence was made from (`(deadline - margin) / factor`): it
/// readmits a peer that comes back as it was, without holding the probe slot long (a probe
/// sent into a blackhole holds it, and so the peer's return, until it runs out). A *long* probe gets at least `max(cold_start, that deadline)`, doubling
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
    /// The peer's deadline while it was last answering (short probes get its quantile).
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
    /// The longest recent stall, which sets the learned floor on silence.
    stalls: Stalls,
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
            stalls: Stalls::new(now),
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

    /// Notes the deadline the peer has while it answers; short probes get its quantile once
    /// it is silent. Ignored while silent, so probes keep the deadline from before the silence.
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
                    self.short_probe(policy)
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

    /// The peer answered a call (a heartbeat). A silent peer that answers was stalled, not
    /// gone, for as long as it said nothing: a stall up to `cold_start` beyond its normal
    /// latency raises its learned floor on silence. An open peer's answer is one in time
    /// unless [`on_late_answer`](Self::on_late_answer) just said otherwise.
    pub(crate) fn on_response(
        &mut self,
        now: Instant,
        policy: &TimeoutPolicy,
    ) -> Option<Transition> {
        if self.state.is_open() {
            self.end_quiet(now, policy);
            self.stalls.answered(now);
        } else {
            let quiet = now.saturating_duration_since(self.last_response);
            self.stalls.record(now, quiet, self.longest_stall(policy));
        }
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
    /// out, or a miss if the peer has not answered since `started`, for at least its
    /// floor on silence ([`silence_floor`](Self::silence_floor)): a wait shorter than
    /// that (a caller's own deadline, say) ends its call but does not declare a silence,
    /// which would cut the calls the floor holds ([`cut_at`](Self::cut_at)).
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
        let waited = now.saturating_duration_since(started);
        if policy.silent_after_misses == 0 || !self.is_miss(started) {
            // Silence detection is off, or the peer answered since: the tail, not silence.
            return None;
        }
        if waited < self.silence_floor(now, policy) {
            // Not quiet for its floor yet: it may be stalled, and this call is held.
            self.stalls.quiet_from(self.last_response.max(started));
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

    /// When a call that started at `started` with the peer's `deadline` is cut, asked at
    /// `now`, once that deadline ran out; `None` for at once. A call is cut when the peer
    /// has answered nothing for `max(deadline, floor on silence)` since the later of its
    /// start and the peer's last answer (silence, with calls outstanding), or at the
    /// straggler cap, `max(STRAGGLER_FACTOR × deadline, cold_start)` within `[that, max]`,
    /// whichever comes first: a call overtaken by answers to later calls is a straggler
    /// on a live peer. A peer that is not open is cut at once (its interrupt reached the
    /// rest).
    pub(crate) fn cut_at(
        &self,
        now: Instant,
        started: Instant,
        deadline: Duration,
        policy: &TimeoutPolicy,
    ) -> Option<Instant> {
        if !self.state.is_open() {
            return None;
        }
        let quiet = deadline.max(self.silence_floor(now, policy));
        let cap = deadline
            .saturating_mul(STRAGGLER_FACTOR)
            .max(policy.cold_start)
            .min(policy.max)
            .max(quiet);
        let silent_at = self.last_response.max(started).checked_add(quiet);
        // An instant past what the clock holds is no limit (`Duration::MAX`).
        [silent_at, started.checked_add(cap)]
            .into_iter()
            .flatten()
            .min()
    }

    /// When a body that sent nothing since `since`, at `now` past its `idle` deadline, is
    /// cut, if the floor on silence holds it longer: once the peer has said nothing to
    /// anyone (no answer, no frame counted as a heartbeat) for the floor since the later of
    /// `since` and its last answer. The quiet span is then in progress, as for a head.
    #[cfg(feature = "http")]
    pub(crate) fn body_cut_at(
        &mut self,
        now: Instant,
        since: Instant,
        idle: Duration,
        policy: &TimeoutPolicy,
    ) -> Option<Instant> {
        let floor = self.silence_floor(now, policy);
        if !self.state.is_open() || floor <= idle {
            return None;
        }
        let quiet_from = self.last_response.max(since);
        let at = quiet_from.checked_add(floor).filter(|at| *at > now)?;
        self.stalls.quiet_from(quiet_from);
        Some(at)
    }

    /// How long the peer may answer nothing at `now`, with calls outstanding, before they
    /// are cut as a silence (if longer than their deadline): `min_silence`, or its learned
    /// floor, 1.25 times its longest recent stall, decaying ([`Stalls::floor`]).
    pub(crate) fn silence_floor(&self, now: Instant, policy: &TimeoutPolicy) -> Duration {
        policy.min_silence.max(self.stalls.floor(now, policy))
    }

    /// The peer's learned floor on silence at `now` (zero for a peer that never stalled),
    /// and how many calls it held that were then answered.
    pub(crate) fn stalls(&self, now: Instant, policy: &TimeoutPolicy) -> (Duration, u64) {
        (self.stalls.floor(now, policy), self.stalls.held())
    }

    /// A call that started at `started` with a `deadline` of the peer's own is answered at
    /// `now`, past that deadline (before [`on_response`](Self::on_response) notes the
    /// answer). If the peer answered nothing for longer than the deadline meanwhile, it was
    /// stalled that long and something held the call (a floor on silence): the stall is
    /// recorded (the learned floor keeps up with the stalls it covers). Returns whether the
    /// call was outstanding through the last quiet span longer than its deadline
    /// ([`Stalls::waited_out`]): this answer, or one of the answers that follow a stall's
    /// end, which all waited it out. Its latency is the stall's: no sample.
    pub(crate) fn on_late_answer(
        &mut self,
        now: Instant,
        started: Instant,
        deadline: Duration,
        policy: &TimeoutPolicy,
    ) -> bool {
        if !self.state.is_open() {
            return false;
        }
        self.stalls.late(now);
        let quiet = now.saturating_duration_since(self.last_response.max(started));
        if quiet > deadline {
            self.stalls.record(now, quiet, self.longest_stall(policy));
        }
        let held = deadline.max(policy.min_silence);
        self.stalls.waited_out(now, started, deadline, held)
    }

    /// The peer answered at `now` (before its answer is recorded): a quiet span a floor
    /// held calls through ends here, and is recorded as a stall.
    pub(crate) fn end_quiet(&mut self, now: Instant, policy: &TimeoutPolicy) {
        // Most answers end no quiet span: the cap is worked out only for one that does.
        if self.state.is_open() && self.stalls.is_quiet() {
            self.stalls.end_quiet(now, self.longest_stall(policy));
        }
    }

    /// A call that started at `started` ran out its deadline of the peer's own, and may be
    /// held ([`cut_at`](Self::cut_at) is asked): one sent after the last quiet span ended
    /// says the peer is slower than its deadline since ([`Stalls::record`]).
    pub(crate) fn overdue(&mut self, started: Instant) {
        if self.state.is_open() {
            self.stalls.overdue(started);
        }
    }

    /// The longest quiet span that is a stall, not a silence: `cold_start` beyond what the
    /// peer's answers normally take (the quantile its answering deadline was made from, as
    /// a short probe waits). A quiet span ends with an answer, and holds that answer's own
    /// time: a peer whose calls take 1.5 s is quiet for 1.5 s before any answer, stalled
    /// or not, and a cap of `cold_start` alone would take each of its stalls for a
    /// silence. For a peer answering in milliseconds it is `cold_start`.
    fn longest_stall(&self, policy: &TimeoutPolicy) -> Duration {
        policy.cold_start.saturating_add(self.short_probe(policy))
    }

    /// Whether the peer's last quiet span was a slowdown's, not a stall's
    /// ([`Stalls::record`]): its answers past their deadline say the deadline is behind.
    pub(crate) fn slowed(&self) -> bool {
        self.stalls.slowed()
    }

    /// Whether a call of the peer's own deadline, started at `started` and answered at
    /// `now` within it, was outstanding through the last quiet span longer than that
    /// deadline ([`Stalls::overlapped`]): its latency is no sample.
    pub(crate) fn overlapped_stall(
        &self,
        now: Instant,
        started: Instant,
        deadline: Duration,
    ) -> bool {
        self.stalls.overlapped(now, started, deadline)
    }

    /// What the answer path is to learn of the peer's stalls since it was last told.
    pub(crate) fn take_stall_change(&mut self) -> Option<StallMark> {
        self.stalls.take_change()
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

    /// A short probe's deadline: the quantile the peer's deadline from before the silence
    /// was made from (`(deadline - margin) / factor`): a peer back as it was answers within
    /// it but once in `1 / (1 - quantile)`, and a probe lost in the silence holds the probe
    /// slot, and so the peer's return, a `factor`-th as long.
    fn short_probe(&self, policy: &TimeoutPolicy) -> Duration {
        (self.answering_deadline.saturating_sub(policy.margin)).div_f64(policy.factor)
    }

    /// The longest deadline a long probe may have at `now`: the first one, or a share of
    /// the silence so far, whichever is longer.
    /// A probe longer than the first wastes under 1% of the silence it is sent in: at
    /// the default `cold_start` (1 s) none is before 100 s of silence, with a shorter one
    /// sooner (a peer back slower than it is readmitted sooner too).
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
mod tests;
