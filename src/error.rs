//! The typed error a call ends with when the layer cuts it short.
//!
//! An [`Interrupted`] says why the call was stopped ([`Reason`]), which peer it was for, how
//! long it had run, who fired the interrupt and where the chain recognized it. The layer's
//! error type is `BoxError`; find it with `err.downcast_ref::<Interrupted>()`, or with
//! [`Interrupted::find`] in a source chain (down to 64 errors deep).
//!
//! Whether a call may be tried again: [`Interrupted::was_sent`] is false for a call refused
//! before it reached the inner service (any request may be retried), and the predicates
//! ([`is_timeout`](Interrupted::is_timeout), [`is_silence`](Interrupted::is_silence),
//! [`is_refusal`](Interrupted::is_refusal), [`is_cancel`](Interrupted::is_cancel)) sort the
//! reasons the way retry policies and status codes need.

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use crate::body::idle::IdleSource;
use crate::explain::{DeadlineExplanation, DeadlineSource};
use crate::site::Site;

/// The error type of the layer's service: the inner service's error, or [`Interrupted`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Most errors a walk down a `source()` chain looks at, the first one included.
pub(crate) const MAX_SOURCE_DEPTH: usize = 64;

/// `err` and the errors of its `source()` chain, at most [`MAX_SOURCE_DEPTH`] of them: a
/// chain that leads back into itself, or runs deeper, ends the walk there. Every walk of a
/// source chain in the crate goes through here.
pub(crate) fn sources<'a>(
    err: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |&e| e.source()).take(MAX_SOURCE_DEPTH)
}

/// What the timeouts of the stacks a call runs through say, in their `Display`: tonic's
/// `TimeoutExpired` (a `Channel`'s timer on `grpc-timeout`), tower's `Elapsed`, tokio's
/// `Elapsed`. Compared whole, ignoring ASCII case.
const TIMEOUT_MESSAGES: [&str; 3] = [
    "timeout expired",
    "request timed out",
    "deadline has elapsed",
];

/// Whether `err` is a timeout of the stack below the layer (it, or an error of its bounded
/// source chain): an `io::Error` of kind `TimedOut`, tokio's `Elapsed`, tonic's
/// `TimeoutExpired` (by type with the `tonic` feature), or an error whose message is one of
/// [`TIMEOUT_MESSAGES`] (tower's `Elapsed`, tonic's). Any other error is the inner
/// service's own answer.
pub(crate) fn is_stack_timeout(err: &(dyn Error + 'static)) -> bool {
    sources(err).any(|e| {
        let typed = e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || e.is::<tokio::time::error::Elapsed>();
        #[cfg(feature = "tonic")]
        let typed = typed || e.is::<tonic::TimeoutExpired>();
        typed || TIMEOUT_MESSAGES.iter().any(|m| says(e, m))
    })
}

/// Whether `err`'s message is `message` (ASCII, any case). Formatting stops at the first
/// byte that differs: a long message costs no more than `message`.
fn says(err: &dyn Error, message: &str) -> bool {
    /// What is left of the expected message; a write that does not match it fails.
    struct Rest<'a>(&'a [u8]);
    impl fmt::Write for Rest<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            match self.0.split_at_checked(s.len()) {
                Some((head, rest)) if head.eq_ignore_ascii_case(s.as_bytes()) => {
                    self.0 = rest;
                    Ok(())
                }
                _ => Err(fmt::Error),
            }
        }
    }
    let mut rest = Rest(message.as_bytes());
    fmt::write(&mut rest, format_args!("{err}")).is_ok() && rest.0.is_empty()
}

/// Why a call was interrupted.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Reason {
    /// The call ran out its deadline.
    DeadlineExceeded {
        /// The deadline the call had.
        deadline: Duration,
        /// Why the deadline had that value.
        explanation: Box<DeadlineExplanation>,
    },
    /// The peer stopped answering: every call in flight to it is ended at once. The call
    /// whose own run-out deadline declared the silence ends with this reason too (so a retry
    /// policy sees the peer is gone), and each of them is counted as a silent interrupt
    /// (`PeerSnapshot::silent_interrupts`).
    PeerSilent {
        /// How long ago the peer last answered anything.
        since: Duration,
        /// Calls in flight to the peer when it was declared silent, the one whose miss
        /// declared it among them (for a call refused because the peer is silent, the
        /// calls in flight as it was refused).
        outstanding: usize,
    },
    /// Somebody interrupted the call by hand, saying why.
    Manual(Cow<'static, str>),
    /// The layer was shut down ([`InterruptHandle::shutdown`](crate::InterruptHandle::shutdown)):
    /// the calls in flight then, and every call after.
    Shutdown,
    /// The caller's deadline had already passed when the call was made.
    BudgetSpent,
    /// A response body sent no frame for its idle deadline: the peer stopped mid-body.
    BodyIdle {
        /// How long the body had waited for its next frame.
        idle: Duration,
        /// Why the idle deadline had that value.
        source: IdleSource,
    },
    /// The call was one of two copies of a hedged request ([`HedgeLayer`](crate::HedgeLayer))
    /// and the other answered first. Fired into the losing copy's token, so work deeper in
    /// its chain stops; the caller gets the winner's answer and never sees this.
    Hedged,
}

impl Reason {
    /// A short, stable name, for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::DeadlineExceeded { .. } => "deadline_exceeded",
            Reason::PeerSilent { .. } => "peer_silent",
            Reason::Manual(_) => "manual",
            Reason::Shutdown => "shutdown",
            Reason::BudgetSpent => "budget_spent",
            Reason::BodyIdle { .. } => "body_idle",
            Reason::Hedged => "hedged",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::DeadlineExceeded {
                deadline,
                explanation,
            } => write!(f, "deadline {} exceeded ({explanation})", Human(*deadline)),
            Reason::PeerSilent { since, outstanding } => write!(
                f,
                "peer silent since {}, {outstanding} call{} outstanding",
                Human(*since),
                if *outstanding == 1 { "" } else { "s" }
            ),
            Reason::Manual(why) => write!(f, "interrupted by hand: {why}"),
            Reason::Shutdown => f.write_str("layer shutting down"),
            Reason::BudgetSpent => f.write_str("the caller's deadline budget was already spent"),
            Reason::BodyIdle { idle, source } => {
                write!(f, "no body frame for {} ({source})", Human(*idle))
            }
            Reason::Hedged => f.write_str("another copy of the request answered first"),
        }
    }
}

/// A call that the layer (or an interrupt) stopped before the peer answered.
///
/// `Display` says what happened: `call to 10.0.0.7:9000 interrupted after 52ms: deadline
/// 52ms exceeded (p99.9 23.5ms x 2 + 5ms)`, or `call to ... refused: ...` for a call that
/// never reached the inner service. The alternate form (`{:#}`) adds where the interrupt
/// was fired and recognized, as paths relative to their crate.
#[derive(Clone, Debug)]
pub struct Interrupted {
    reason: Reason,
    peer: Arc<str>,
    elapsed: Duration,
    fired_at: Site,
    recognized_at: Site,
    sent: bool,
    /// The response's head had arrived: the call was cut in its body.
    mid_body: bool,
}

impl Interrupted {
    pub(crate) fn new(
        reason: Reason,
        peer: &Arc<str>,
        elapsed: Duration,
        fired_at: &'static Location<'static>,
        recognized_at: &'static Location<'static>,
    ) -> Self {
        Interrupted {
            reason,
            peer: peer.clone(),
            elapsed,
            fired_at: Site::new(fired_at),
            recognized_at: Site::new(recognized_at),
            sent: true,
            mid_body: false,
        }
    }

    /// The same interrupt, recognized at another place.
    pub(crate) fn recognized(mut self, at: &'static Location<'static>) -> Self {
        self.recognized_at = Site::new(at);
        self
    }

    /// The same interrupt, for a call cut in its response's body: it had an answer.
    #[cfg(feature = "http")]
    pub(crate) fn mid_body(mut self) -> Self {
        self.mid_body = true;
        self
    }

    /// The same interrupt, for a call refused before it reached the inner service.
    pub(crate) fn refused(mut self) -> Self {
        self.sent = false;
        self
    }

    /// Why the call was stopped.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }

    /// The peer the call was for: its name, as [`PeerSnapshot::peer`](crate::PeerSnapshot)
    /// shows it.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// How long the call had run when it was stopped.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The deadline the call had, when the reason is [`Reason::DeadlineExceeded`] (or the
    /// idle deadline of a body, for [`Reason::BodyIdle`]).
    pub fn deadline(&self) -> Option<Duration> {
        match &self.reason {
            Reason::DeadlineExceeded { deadline, .. } => Some(*deadline),
            Reason::BodyIdle { idle, .. } => Some(*idle),
            _ => None,
        }
    }

    /// Where the interrupt was fired: the code that called the firing method, or the
    /// layer's own code for deadlines and silent peers.
    pub fn fired_at(&self) -> Site {
        self.fired_at
    }

    /// Where the call chain noticed the interrupt: the layer's response future, or a
    /// cooperative checkpoint.
    pub fn recognized_at(&self) -> Site {
        self.recognized_at
    }

    /// Whether the request reached the inner service. `false` for a call refused at once:
    /// its peer was silent (fail-fast), its caller's deadline was already spent, its
    /// caller's token had already fired, or the layer was shutting down. Such a request
    /// was never sent anywhere, so it may be retried whatever it does.
    pub fn was_sent(&self) -> bool {
        self.sent
    }

    /// Whether the call was refused before it reached the inner service (`!was_sent()`).
    pub fn is_refusal(&self) -> bool {
        !self.sent
    }

    /// Whether a deadline ran out: the call's ([`Reason::DeadlineExceeded`]), the caller's
    /// before the call began ([`Reason::BudgetSpent`]), or a body's idle deadline
    /// ([`Reason::BodyIdle`]).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.reason,
            Reason::DeadlineExceeded { .. } | Reason::BudgetSpent | Reason::BodyIdle { .. }
        )
    }

    /// Whether the call ended because its peer was declared silent
    /// ([`Reason::PeerSilent`]): in flight when it happened, or refused after.
    pub fn is_silence(&self) -> bool {
        matches!(self.reason, Reason::PeerSilent { .. })
    }

    /// Whether somebody stopped the call on purpose: by hand ([`Reason::Manual`]), by
    /// shutting the layer down ([`Reason::Shutdown`]), or because its other copy answered
    /// first ([`Reason::Hedged`]).
    pub fn is_cancel(&self) -> bool {
        matches!(
            self.reason,
            Reason::Manual(_) | Reason::Shutdown | Reason::Hedged
        )
    }

    /// Whether the call got no answer and is worth trying at another peer: its peer is
    /// silent (refused at once, or cut in flight; the call whose deadline, even its
    /// caller's, found the peer quiet longer than the peer's own deadline and declared the
    /// silence ends with [`Reason::PeerSilent`] too), or the peer's own deadline ran out (not
    /// the caller's, [`DeadlineSource::Caller`]). A call that was sent may have reached its
    /// peer: retry those only if the request is idempotent. A spent budget is spent for the
    /// next attempt too, a body cut mid-way (idle, [`Reason::BodyIdle`], or for any other
    /// reason, its peer's silence included) had an answer,
    /// a hedge's losing copy ([`Reason::Hedged`]) lost to an answer, and a cancel (by hand,
    /// a fired token, a shutdown) is final.
    ///
    /// ```
    /// use tower_adaptive_timeout::Interrupted;
    ///
    /// /// README's retry rule: try again elsewhere what got no answer.
    /// fn again(err: &tower::BoxError) -> bool {
    ///     Interrupted::find(&**err).is_some_and(Interrupted::is_unanswered)
    /// }
    /// # let _ = again;
    /// ```
    pub fn is_unanswered(&self) -> bool {
        if self.mid_body {
            return false; // Its head was the answer, whatever cut the body.
        }
        match &self.reason {
            Reason::DeadlineExceeded { explanation, .. } => {
                explanation.source != DeadlineSource::Caller
            }
            Reason::PeerSilent { .. } => true,
            Reason::BudgetSpent
            | Reason::BodyIdle { .. }
            | Reason::Manual(_)
            | Reason::Hedged
            | Reason::Shutdown => false,
        }
    }

    /// Finds an `Interrupted` in `err` or in its `source()` chain, looking at most 64
    /// errors deep (a chain that loops back into itself ends there, found or not).
    pub fn find<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a Interrupted> {
        sources(err).find_map(|e| e.downcast_ref::<Interrupted>())
    }
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sent {
            let elapsed = Human(self.elapsed);
            write!(f, "call to {} interrupted after {elapsed}", self.peer)?;
        } else {
            write!(f, "call to {} refused", self.peer)?;
        }
        write!(f, ": {}", self.reason)?;
        if f.alternate() {
            let (fired, recognized) = (self.fired_at, self.recognized_at);
            write!(f, " (fired at {fired}, recognized at {recognized})")?;
        }
        Ok(())
    }
}

impl Error for Interrupted {}

impl fmt::Display for DeadlineExplanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let formula = |f: &mut fmt::Formatter<'_>| {
            write!(
                f,
                "p{} {} x {} + {}",
                self.quantile * 100.0,
                Human(self.quantile_value),
                self.factor,
                Human(self.margin)
            )
        };
        match self.source {
            DeadlineSource::ColdStart => write!(
                f,
                "cold start: {} of {} samples",
                self.samples, self.min_samples
            ),
            DeadlineSource::Estimate => write!(
                f,
                "estimate from {} of {} samples: p{} <= {} x {} + {}",
                self.samples,
                self.min_samples,
                self.quantile * 100.0,
                Human(self.quantile_value),
                self.factor,
                Human(self.margin)
            ),
            DeadlineSource::Quantile => formula(f),
            DeadlineSource::ClampedMin => {
                formula(f)?;
                write!(f, ", raised to min {}", Human(self.min))
            }
            DeadlineSource::ClampedMax => {
                formula(f)?;
                write!(f, ", cut to max {}", Human(self.max))
            }
            DeadlineSource::Caller => f.write_str("the caller's deadline"),
            DeadlineSource::Floor => f.write_str("the call's floor (MinDeadline)"),
            DeadlineSource::SilentPeer => write!(f, "peer silent: cut to min {}", Human(self.min)),
            DeadlineSource::Untracked => f.write_str("untracked peer: default cold start"),
        }?;
        if !self.history.is_zero() {
            write!(f, ", over the last {}", Human(self.history))?;
        }
        if let Some(class) = &self.class {
            write!(f, ", class {class}")?;
        }
        if self.per_peer_policy {
            f.write_str(", per-peer policy")?;
        }
        Ok(())
    }
}

/// A duration printed for people: `1.2s`, `250ms`, `40us`.
pub(crate) struct Human(pub(crate) Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let (value, unit) = if d >= Duration::from_secs(1) {
            (d.as_secs_f64(), "s")
        } else if d >= Duration::from_millis(1) {
            (d.as_secs_f64() * 1e3, "ms")
        } else {
            (d.as_secs_f64() * 1e6, "us")
        };
        let text = format!("{value:.1}");
        let text = text.strip_suffix(".0").unwrap_or(&text);
        write!(f, "{text}{unit}")
    }
}

/// Why an idle deadline had its value, for [`Reason::BodyIdle`]'s message.
impl fmt::Display for IdleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdleSource::Gaps { gap } => {
                write!(f, "from the peer's gaps between frames, {}", Human(*gap))
            }
            IdleSource::ColdStart => f.write_str("cold start: too few gaps between frames seen"),
            IdleSource::PeerDeadline => f.write_str("the peer's call deadline"),
            IdleSource::Request => f.write_str("the request's override"),
        }
    }
}

#[cfg(test)]
mod tests;
