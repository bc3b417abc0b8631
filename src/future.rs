//! The response future: races the inner future against the call's deadline and the peer's
//! interrupts, and records the outcome into the peer's history and state machine.
//!
//! The inner future is polled first, so an answer that is ready wins. The deadline timer and
//! the interrupt registrations are made only if the inner future is not ready at its first
//! poll: calls answered at once pay for neither.

use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};

use crate::error::{Interrupted, Reason};
use crate::interrupt::Fired;
use crate::peer::{CallPeer, Ticket};
use crate::policy::{DeadlineExplanation, DeadlineSource};
use crate::token::Interrupt;
use crate::BoxError;

pin_project! {
    /// The future returned by [`AdaptiveTimeout`](crate::AdaptiveTimeout): the inner
    /// service's answer, or [`Interrupted`] when the deadline or an interrupt comes first.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Option<Sleep>,
        #[pin]
        peer_wake: Option<OwnedNotified>,
        #[pin]
        token_wake: Option<OwnedNotified>,
        call: Call,
    }
}

/// One call's bookkeeping.
pub(crate) struct Call {
    target: CallPeer,
    start: Instant,
    deadline: Duration,
    source: DeadlineSource,
    generation: u64,
    probe: bool,
    done: bool,
    token: Option<Interrupt>,
    rejected: Option<BoxError>,
    /// A trace-level span per call: disabled (and nearly free) unless a subscriber wants it.
    span: tracing::Span,
}

impl Call {
    pub(crate) fn new(
        target: CallPeer,
        start: Instant,
        ticket: Ticket,
        token: Option<Interrupt>,
    ) -> Self {
        let span = tracing::trace_span!(
            "adaptive_timeout",
            peer = target.label(),
            deadline = ?ticket.deadline,
            source = ticket.source.as_str(),
        );
        Call {
            span,
            target,
            start,
            deadline: ticket.deadline,
            source: ticket.source,
            generation: ticket.generation,
            probe: ticket.probe,
            done: false,
            token,
            rejected: None,
        }
    }

    /// Whether the call's deadline has passed (read only on the error path).
    fn past_deadline(&self) -> bool {
        Instant::now() >= self.start + self.deadline
    }

    /// The peer answered.
    fn answered(&mut self) {
        self.done = true;
        if let CallPeer::Tracked(p) = &self.target {
            p.on_response(Instant::now(), self.start);
        }
    }

    /// The deadline passed first. The miss that declares the peer silent ends with the
    /// silence as its reason; any other with the deadline and why it had its value.
    fn expired(&mut self) -> Interrupted {
        self.done = true;
        let now = Instant::now();
        let (explanation, silenced) = match &self.target {
            CallPeer::Tracked(p) => {
                p.on_deadline(now, self.start, self.deadline, self.source, self.probe)
            }
            CallPeer::Untracked(_) => (DeadlineExplanation::untracked(), None),
        };
        let (peer, deadline, elapsed) = (self.target.label(), self.deadline, now - self.start);
        tracing::debug!(peer, ?deadline, ?elapsed, source = %self.source, "deadline exceeded");
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
        self.end_with(err)
    }

    /// An interrupt reached the call.
    fn interrupted(&mut self, fired: Fired) -> Interrupted {
        self.done = true;
        let now = Instant::now();
        if let CallPeer::Tracked(p) = &self.target {
            p.on_abandon(now, self.probe, Some(&fired.reason));
        }
        let (peer, elapsed) = (self.target.label(), now - self.start);
        tracing::debug!(
            peer,
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
        self.end_with(err)
    }

    /// Fires the call's token with `err`, so work deeper in the chain stops too.
    fn end_with(&self, err: Interrupted) -> Interrupted {
        if let Some(token) = &self.token {
            token.fire(err.clone());
        }
        err
    }

    /// Registers for the peer's and the token's interrupts, and returns one if it fired.
    fn watch(
        &self,
        mut peer_wake: Pin<&mut Option<OwnedNotified>>,
        mut token_wake: Pin<&mut Option<OwnedNotified>>,
        cx: &mut Context<'_>,
    ) -> Option<Fired> {
        // Each wake-up means something fired, so this settles on the second pass.
        for _ in 0..3 {
            if peer_wake.is_none() {
                peer_wake.set(Some(self.target.interrupts().notified()));
            }
            if let (Some(token), true) = (&self.token, token_wake.is_none()) {
                token_wake.set(Some(token.notified()));
            }
            if let Some(fired) = self.target.interrupts().fired_since(self.generation) {
                return Some(fired);
            }
            if let Some(err) = self.token.as_ref().and_then(Interrupt::fired) {
                return Some(Fired {
                    reason: err.reason().clone(),
                    fired_at: err.fired_at(),
                });
            }
            let mut woke = false;
            for mut wake in [peer_wake.as_mut(), token_wake.as_mut()] {
                if let Some(Poll::Ready(())) = wake.as_mut().as_pin_mut().map(|w| w.poll(cx)) {
                    wake.set(None);
                    woke = true;
                }
            }
            if !woke {
                return None;
            }
        }
        None
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let (false, CallPeer::Tracked(p)) = (self.done, &self.target) {
            // Dropped by its caller: nothing to record, but it is no longer in flight.
            p.on_abandon(Instant::now(), self.probe, None);
        }
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, call: Call) -> Self {
        ResponseFuture {
            inner: Some(inner),
            sleep: None,
            peer_wake: None,
            token_wake: None,
            call,
        }
    }

    /// A call refused before it reached the inner service: `err` is fired into its token
    /// and returned at the first poll.
    pub(crate) fn rejected(
        err: Interrupted,
        target: CallPeer,
        start: Instant,
        token: Option<Interrupt>,
    ) -> Self {
        let ticket = Ticket {
            deadline: Duration::ZERO,
            source: DeadlineSource::Caller,
            generation: 0,
            probe: false,
        };
        let mut call = Call::new(target, start, ticket, token);
        call.done = true;
        call.rejected = Some(call.end_with(err).into());
        ResponseFuture {
            inner: None,
            sleep: None,
            peer_wake: None,
            token_wake: None,
            call,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let span = this.call.span.clone();
        let _entered = span.enter();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            let err = this.call.rejected.take();
            return Poll::Ready(Err(err.unwrap_or_else(|| "polled after completion".into())));
        };
        if let Poll::Ready(result) = inner.poll(cx) {
            this.inner.set(None);
            if result.is_err() && this.call.past_deadline() {
                // An error at the deadline is most likely the inner stack enforcing the
                // budget this layer propagated: the deadline won the race.
                return Poll::Ready(Err(this.call.expired().into()));
            }
            this.call.answered();
            return Poll::Ready(result.map_err(Into::into));
        }
        if let Some(fired) = this.call.watch(this.peer_wake, this.token_wake, cx) {
            this.inner.set(None);
            return Poll::Ready(Err(this.call.interrupted(fired).into()));
        }
        if this.sleep.is_none() {
            let at = this.call.start + this.call.deadline;
            this.sleep.set(Some(tokio::time::sleep_until(at)));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
        }
        this.inner.set(None);
        Poll::Ready(Err(this.call.expired().into()))
    }
}
