//! The in-flight call guard: one admitted call's bookkeeping, from its ticket to its
//! outcome. It records the outcome exactly once: the outcome methods end it through its
//! [`InFlight`], which hands its peer out the first time only, and a guard dropped
//! without one (its caller went away) records the call as abandoned (or, once
//! its head was answered and its body ended or was dropped, as answered), through that
//! place among its peer's calls it carries from admission on (ARCHITECTURE.md, invariant 4).
//!
//! A call refused at admission has no guard: it never was in flight. [`refusal`] builds its
//! error.

use std::panic::Location;
use std::task::Waker;
use std::time::Duration;

use tokio::sync::futures::OwnedNotified;
use tokio::time::Instant;

use crate::classify::{ClassifyResponse, Outcome};
use crate::error::{is_stack_timeout, BoxError, Interrupted, Reason};
use crate::explain::DeadlineExplanation;
use crate::interrupt::{Fired, Origin};
use crate::peer::{CallPeer, InFlight, Ticket};
use crate::token::Interrupt;

#[cfg(feature = "http")]
mod body;

/// How much earlier than the call's own deadline the inner stack may enforce it: a deadline
/// propagated in a header is rounded down to whole milliseconds, so a timer armed from it
/// (a tonic `Channel`'s, on `grpc-timeout`) can fire up to this much before the call's.
const PROPAGATED_PRECISION: Duration = Duration::from_millis(1);

/// What ended a running call, as the response future saw it.
pub(crate) enum Ended<T> {
    /// The inner future finished first (with the inner service's answer or error).
    Answered(T),
    /// The deadline passed first.
    Expired,
    /// An interrupt (the peer's broadcast, or the call's token) came first.
    Interrupted(Fired, Origin),
}

/// One admitted call in flight.
pub(crate) struct Call {
    /// The call's place among its peer's calls in flight: the outcome methods end it;
    /// dropped with the guard, it records the call as abandoned.
    in_flight: InFlight,
    /// What the call was admitted with, its start among it.
    ticket: Ticket,
    token: Option<Interrupt>,
    /// A trace-level span per call: disabled (and nearly free) unless a subscriber wants it.
    span: tracing::Span,
}

impl Call {
    #[inline(always)]
    pub(crate) fn new(in_flight: InFlight, ticket: Ticket, token: Option<Interrupt>) -> Self {
        let span = tracing::trace_span!(
            "adaptive_timeout",
            peer = &**in_flight.peer().label(),
            deadline = ?ticket.deadline,
            source = ticket.source.as_str(),
        );
        Call {
            in_flight,
            ticket,
            token,
            span,
        }
    }

    /// The layer wrote the call's deadline into its request: an inner error at that
    /// deadline may be the inner stack enforcing it.
    pub(crate) fn set_propagated(&mut self) {
        self.in_flight.set_propagated();
    }

    /// Whom the call is for.
    fn peer(&self) -> &CallPeer {
        self.in_flight.peer()
    }

    /// The call's span, entered while its future is polled.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// When the call's deadline passes.
    #[inline]
    pub(crate) fn deadline_at(&self) -> Instant {
        self.ticket.started + self.ticket.deadline
    }

    /// When the call, its deadline run out, is cut (`None`: now): later only for a
    /// straggler on a peer that still answers ([`crate::peer::Peer::cut_at`]).
    pub(crate) fn cut_at(&self) -> Option<Instant> {
        match self.peer() {
            CallPeer::Tracked(p) => p.cut_at(&self.ticket, self.in_flight.is_probe()),
            CallPeer::Untracked(_) => None,
        }
    }

    /// When the call's caller stops waiting, `deadline` after the start (`None`: no limit).
    #[inline]
    pub(crate) fn caller_until(&self, deadline: Option<Duration>) -> Option<Instant> {
        self.ticket.started.checked_add(deadline?)
    }

    /// Whether the layer propagated the call's deadline and it has passed, to the precision
    /// it is propagated with (read only on the error path): a timeout of the inner stack
    /// ([`is_stack_timeout`]) this close to a deadline the callee was told is the inner
    /// stack enforcing it. Any other inner error, and any without propagation, is the inner
    /// service's own, whenever it comes.
    fn past_propagated_deadline(&self) -> bool {
        self.in_flight.propagated()
            && self
                .deadline_at()
                .checked_duration_since(Instant::now())
                .is_none_or(|left| left <= PROPAGATED_PRECISION)
    }

    /// Whether the call is to yield before its fired deadline counts: true once per arming
    /// (see [`crate::timer::yield_before_expiry`]).
    pub(crate) fn yield_once(&mut self) -> bool {
        self.in_flight.yield_once()
    }

    /// The call's deadline was armed again: it yields once more when that one fires.
    pub(crate) fn rearm_yield(&mut self) {
        self.in_flight.rearm_yield();
    }

    /// Registers `waker` to be woken by the next fire into the call's peer (once; later
    /// calls update the waker). The registration ends with the call.
    pub(crate) fn wait_for_peer(&mut self, waker: &Waker) {
        self.in_flight.wait(waker);
    }

    /// What the call's queued deadline watches to be woken by its peer's interrupts.
    pub(crate) fn watch(&self) -> crate::timer::Watch {
        self.peer().interrupts().watch()
    }

    /// Whether the call is registered with its peer's interrupts.
    #[cfg(test)]
    pub(crate) fn is_waiting(&self) -> bool {
        self.in_flight.is_waiting()
    }

    /// A registration woken when the call's token fires, if it has a token.
    pub(crate) fn token_notified(&self) -> Option<OwnedNotified> {
        self.token.as_ref().map(Interrupt::notified)
    }

    /// The interrupt that reached the call since it started, if any: fired into its peer,
    /// or into its token (by its caller: the layer fires a call's token only as it ends).
    pub(crate) fn fired(&self) -> Option<(Fired, Origin)> {
        if let Some(fired) = self.peer().interrupts().fired_since(self.ticket.generation) {
            return Some((fired, Origin::Peer));
        }
        Some((self.token.as_ref()?.fired_record()?, Origin::Caller))
    }

    /// Records how the call ended and gives its result: a response as `classify` says, an
    /// inner error as the peer's error classifier says, except a timeout of the stack below
    /// at the deadline the layer propagated ([`Call::past_propagated_deadline`]), which is
    /// that deadline passing. The error of an interrupted or
    /// expired call says it was recognized where this is called.
    #[track_caller]
    pub(crate) fn end<T, E: Into<BoxError>>(
        &mut self,
        ended: Ended<Result<T, E>>,
        classify: &impl ClassifyResponse<T>,
    ) -> Result<T, BoxError> {
        let _entered = self.span.clone().entered();
        match ended {
            Ended::Answered(result) => {
                let result = result.map_err(Into::into);
                if let Err(err) = &result {
                    if self.past_propagated_deadline() && is_stack_timeout(&**err) {
                        // The stack below enforcing the deadline this layer propagated to
                        // it: the deadline won the race.
                        return Err(self.expired(None).into());
                    }
                }
                let outcome = match (&result, self.peer()) {
                    (Ok(response), _) => classify.classify(response),
                    (Err(err), CallPeer::Tracked(p)) => p.classify(err),
                    (Err(_), CallPeer::Untracked(_)) => Outcome::Sample,
                };
                self.answered(outcome);
                result
            }
            Ended::Expired => Err(self.expired(None).into()),
            Ended::Interrupted(fired, origin) => Err(self.interrupted(fired, origin).into()),
        }
    }

    /// The inner service answered, as `outcome` says.
    fn answered(&mut self, outcome: Outcome) {
        let probe = self.in_flight.is_probe();
        if let Some(p) = self.in_flight.end() {
            p.on_outcome(Instant::now(), &self.ticket, probe, outcome);
        }
    }

    /// The deadline passed first (for a call whose head was answered, its body's total
    /// deadline, its last frame at `body_since`). The miss that declares the peer silent
    /// ends with the silence as its reason; any other with the deadline and why it had
    /// its value.
    #[track_caller]
    fn expired(&mut self, body_since: Option<Instant>) -> Interrupted {
        let now = Instant::now();
        let Ticket {
            deadline, source, ..
        } = self.ticket;
        let probe = self.in_flight.is_probe();
        let (explanation, silenced) = match self.in_flight.end() {
            Some(p) => p.on_deadline(now, &self.ticket, probe, body_since),
            None => (DeadlineExplanation::untracked(), None),
        };
        let (peer, elapsed) = (self.peer().label(), now - self.ticket.started);
        tracing::debug!(peer = &**peer, ?deadline, ?elapsed, source = %source, "deadline exceeded");
        let here = Location::caller();
        let err = match silenced {
            Some(fired) => Interrupted::new(fired.reason, peer, elapsed, fired.fired_at, here),
            None => {
                let reason = Reason::DeadlineExceeded {
                    deadline,
                    explanation: Box::new(explanation),
                };
                Interrupted::new(reason, peer, elapsed, here, here)
            }
        };
        fire_token(self.token.as_ref(), err)
    }

    /// An interrupt reached the call.
    #[track_caller]
    fn interrupted(&mut self, fired: Fired, origin: Origin) -> Interrupted {
        let now = Instant::now();
        let probe = self.in_flight.is_probe();
        if let Some(p) = self.in_flight.end() {
            p.on_abandon(now, probe, Some((&fired.reason, origin)));
        }
        let (peer, elapsed) = (self.peer().label(), now - self.ticket.started);
        tracing::debug!(
            peer = &**peer,
            ?elapsed,
            reason = fired.reason.as_str(),
            "call interrupted"
        );
        let err = Interrupted::new(
            fired.reason,
            peer,
            elapsed,
            fired.fired_at,
            Location::caller(),
        );
        fire_token(self.token.as_ref(), err)
    }
}

/// The error of a call refused at admission (its peer is silent, or the caller's deadline
/// was spent), recognized where this is called. It is fired into the call's token, so work
/// deeper in the chain stops too.
#[track_caller]
pub(crate) fn refusal(peer: &CallPeer, fired: Fired, token: Option<&Interrupt>) -> Interrupted {
    let here = Location::caller();
    let err = Interrupted::new(
        fired.reason,
        peer.label(),
        Duration::ZERO,
        fired.fired_at,
        here,
    )
    .refused();
    fire_token(token, err)
}

/// Fires `token` (if any) with `err`, so work deeper in the chain stops too.
fn fire_token(token: Option<&Interrupt>, err: Interrupted) -> Interrupted {
    if let Some(token) = token {
        token.fire(err.clone());
    }
    err
}

#[cfg(test)]
mod tests {
    /// A call is moved into its future and with it; within 128 bytes a move is a few
    /// register copies, past it a `memcpy` call (the overhead bench's ready path slowed by
    /// about a tenth when it grew to 160).
    #[test]
    fn a_call_stays_within_128_bytes() {
        assert!(std::mem::size_of::<super::Call>() <= 128);
        assert!(std::mem::size_of::<crate::peer::InFlight>() <= 32);
    }
}
