//! Stalls: a peer that went quiet and then answered again by itself (a GC pause, a
//! noisy neighbour, an overloaded host) was stalled, not dead. Such a peer earns a learned
//! floor on silence: the next time it answers nothing, its calls are held that long before
//! they are cut as a silence ([`Health::cut_at`](super::health::Health::cut_at)), and
//! no miss counts before it ([`Health::on_deadline`](super::health::Health::on_deadline)).
//! A peer that never stalled keeps detection at its deadline. The answers the learned
//! floor held through a stall are no latency samples: the floor covers stalls, the
//! deadline the peer's latency.
//!
//! A slowdown leaves a peer quiet too, between answers that come later than its deadline,
//! but it does not end: after a stall, the calls sent once it ended are answered in time
//! again; in a slowdown they run out their deadlines as the ones before them did. A quiet
//! span that follows the last one with such a call and no answer in time between is a
//! slowdown's ([`Stalls::record`]): its answers are the peer's latency, and samples again.
//!
//! Plain state under the peer's lock, touched only when a silence ends, a held call is
//! answered late or runs out its deadline, and by the first answer after a quiet span:
//! an answer in time then only reads a flag.

use std::time::Duration;

use tokio::time::Instant;

use crate::policy::TimeoutPolicy;

/// The floor is this multiple of the longest recent stall: a stall a little longer than the
/// last one is held too, and the floor covers the time an answer takes after the stall.
const STALL_GRACE: f64 = 1.25;
/// The longest recent stall halves every this long without a new one. Five minutes: a
/// floor of 1.25 stalls still covers a stall as long 96 s later (`0.5^(96 / 300) = 0.8`),
/// three times the period of a host that stalls every 30 s (and each stall held refreshes
/// it), and falls below a quarter of itself within ten minutes of the last one.
pub(crate) const STALL_HALF_LIFE: Duration = Duration::from_secs(300);

/// A peer's longest recent stall, decaying, and the calls its floor held.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stalls {
    /// The longest stall recorded, as of `at` (zero: none).
    longest: Duration,
    /// When it was last recorded.
    at: Instant,
    /// The last stall recorded: from the peer's last answer before it to the answer that
    /// ended it.
    last: (Instant, Instant),
    /// Calls answered after the peer had said nothing for longer than their deadline and
    /// `min_silence`: the learned floor held each, where they would have been cut.
    held: u64,
    /// When the quiet span in progress began: a call's deadline ran out with nothing
    /// answered since it started, and a floor on silence held it.
    quiet_since: Option<Instant>,
    /// A change of [`StallMark`] not yet published to the answer path.
    change: Option<StallMark>,
    /// Whether the last quiet span was a slowdown's, not a stall's ([`record`](Self::record)):
    /// the answers that waited it out are the peer's latency.
    slow: bool,
    /// What the peer did since the last quiet span ended, which tells the next one's kind.
    since: Since,
}

/// What a peer did since its last quiet span ended: after a stall, the calls sent once it
/// ended are answered in time again; in a slowdown none is, and they run past their
/// deadlines as the calls before them did.
#[derive(Clone, Copy, Debug, Default)]
struct Since {
    /// The peer answered something other than a call past its deadline.
    in_time: bool,
    /// A call sent at or after the span's end ran out its deadline of the peer's own (the
    /// straggler rule was asked whether to hold it).
    overdue: bool,
    /// When the peer last answered a call past its deadline: the answer recorded at that
    /// instant is no sign that the peer is back.
    late_at: Option<Instant>,
}

/// What the answer path must know of a peer's stalls to keep their answers out of its
/// latency history without taking the lock for every answer: a stall is in progress
/// (every answer goes to the lock, the first one ends it), or the last one ended then
/// (an answer to a call that started before that goes to the lock, which leaves it out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StallMark {
    /// A floor on silence holds a call the peer has said nothing to since it started.
    InProgress,
    /// The last quiet span ended at this instant.
    Ended(Instant),
}

impl Stalls {
    /// No stall seen yet (`now`: when the peer was first seen).
    pub(crate) fn new(now: Instant) -> Self {
        Stalls {
            longest: Duration::ZERO,
            at: now,
            last: (now, now),
            held: 0,
            quiet_since: None,
            change: None,
            slow: false,
            since: Since::default(),
        }
    }

    /// The longest recent stall at `now`, decayed since it was recorded.
    fn decayed(&self, now: Instant) -> Duration {
        if self.longest.is_zero() {
            return Duration::ZERO;
        }
        let age = now.saturating_duration_since(self.at);
        let halvings = age.as_secs_f64() / STALL_HALF_LIFE.as_secs_f64();
        scaled(self.longest, 0.5f64.powf(halvings))
    }

    /// The learned floor on silence at `now`: `STALL_GRACE` times the longest recent stall,
    /// at most `cold_start` and `max` (zero for a peer that never stalled).
    pub(crate) fn floor(&self, now: Instant, policy: &TimeoutPolicy) -> Duration {
        scaled(self.decayed(now), STALL_GRACE)
            .min(policy.cold_start)
            .min(policy.max)
    }

    /// The peer answered again at `now` by itself after saying nothing for `quiet`: the
    /// answers to calls outstanding through it waited it out ([`waited_out`](Self::waited_out)).
    ///
    /// Only a quiet span up to `longest` (`cold_start` beyond what the peer's answers
    /// normally take: `Health::longest_stall`) is a stall that raises the floor: a partition
    /// of seconds is a silence, and must not slow the detection of the next one. Nor is a
    /// span that follows the last one with a call sent since it ended overdue and nothing
    /// answered in time: the peer did not come back, it is slower than its deadline, and
    /// the answers of such a span are latency samples again (a peer called less often than
    /// its new latency would otherwise take every gap between its answers for a stall, and
    /// never learn it).
    pub(crate) fn record(&mut self, now: Instant, quiet: Duration, longest: Duration) {
        let from = now.checked_sub(quiet).unwrap_or(now);
        // Several answers may end the same span: it began at the earliest they say.
        let from = if self.last.1 == now {
            from.min(self.last.0)
        } else {
            let since = std::mem::take(&mut self.since);
            self.since.late_at = since.late_at;
            self.slow = since.overdue && !since.in_time;
            from
        };
        self.last = (from, now);
        self.quiet_since = None;
        self.change = Some(StallMark::Ended(now));
        if quiet > longest || self.slow {
            return;
        }
        self.longest = self.decayed(now).max(quiet);
        self.at = now;
    }

    /// Whether the last quiet span was a slowdown's.
    pub(crate) fn slowed(&self) -> bool {
        self.slow
    }

    /// The peer answered at `now`, a call in time unless [`late`](Self::late) said so for
    /// this instant: after the last quiet span, a sign that it was a stall.
    pub(crate) fn answered(&mut self, now: Instant) {
        if !self.since.in_time && now >= self.last.1 && self.since.late_at != Some(now) {
            self.since.in_time = true;
        }
    }

    /// The peer answered at `now` a call past its deadline (its answer is recorded next).
    pub(crate) fn late(&mut self, now: Instant) {
        self.since.late_at = Some(now);
    }

    /// A call that started at `started` ran out its deadline of the peer's own: if it was
    /// sent once the last quiet span ended, the peer is slower than its deadline since.
    pub(crate) fn overdue(&mut self, started: Instant) {
        if started >= self.last.1 {
            self.since.overdue = true;
        }
    }

    /// A floor on silence holds a call the peer has said nothing to since `since`: a
    /// quiet span is in progress (the first of such calls says when it began).
    pub(crate) fn quiet_from(&mut self, since: Instant) {
        if self.quiet_since.is_none() {
            self.quiet_since = Some(since);
            self.change = Some(StallMark::InProgress);
        }
    }

    /// Whether a quiet span is in progress (a floor holds a call).
    pub(crate) fn is_quiet(&self) -> bool {
        self.quiet_since.is_some()
    }

    /// The peer answered at `now`: a quiet span in progress ends, and is recorded (a
    /// stall if at most `longest`).
    pub(crate) fn end_quiet(&mut self, now: Instant, longest: Duration) {
        if let Some(from) = self.quiet_since.filter(|from| *from < now) {
            self.record(now, now - from, longest);
        }
    }

    /// The change of [`StallMark`] to publish, if any.
    pub(crate) fn take_change(&mut self) -> Option<StallMark> {
        self.change.take()
    }

    /// Whether a call that started at `started`, answered at `now` within its `deadline`,
    /// was outstanding through the last quiet span, a stall's longer than that deadline:
    /// its latency holds part of the span, and is no sample (a peer that stalls often would
    /// otherwise learn its stalls into its deadline a deadline at a time).
    pub(crate) fn overlapped(&self, now: Instant, started: Instant, deadline: Duration) -> bool {
        self.overlap(now, started, deadline).0
    }

    /// Whether a call outstanding from `started` to `now`, with `deadline`, waited out the
    /// last quiet span: it spent part of it outstanding, the span was longer than its
    /// deadline, and it was a stall's, not a slowdown's. With how much of the span it spent
    /// in it, and how long the span was.
    fn overlap(
        &self,
        now: Instant,
        started: Instant,
        deadline: Duration,
    ) -> (bool, Duration, Duration) {
        let (from, until) = self.last;
        let overlap = until.min(now).saturating_duration_since(from.max(started));
        let span = until.saturating_duration_since(from);
        let waited_out = !self.slow && !overlap.is_zero() && span > deadline;
        (waited_out, overlap, span)
    }

    /// Whether a call that started at `started` with `deadline`, answered at `now`, was
    /// outstanding through the last quiet span, and that span was a stall's longer than its
    /// deadline: its latency is the span's, not the peer's, so it is no sample, whatever
    /// held the call (the learned floor, `min_silence`, a caller's longer deadline). It is
    /// counted as held by the learned floor if it was late only for the span and the span
    /// was longer than `held` (what its deadline and `min_silence` hold).
    pub(crate) fn waited_out(
        &mut self,
        now: Instant,
        started: Instant,
        deadline: Duration,
        held: Duration,
    ) -> bool {
        let (waited_out, overlap, span) = self.overlap(now, started, deadline);
        let latency = now.saturating_duration_since(started);
        let by_floor = span > held && latency.saturating_sub(overlap) <= deadline;
        self.held += u64::from(waited_out && by_floor);
        waited_out
    }

    /// Calls the learned floor held and that were then answered, ever.
    pub(crate) fn held(&self) -> u64 {
        self.held
    }
}

/// `d` times `by` (finite, not negative), saturating at `Duration::MAX`.
fn scaled(d: Duration, by: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * by).unwrap_or(Duration::MAX)
}
