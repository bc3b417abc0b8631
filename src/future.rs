//! The response future: races the inner future against the call's deadline and its
//! interrupts, then hands what ended the call to the call guard, which records it.
//!
//! The inner future is polled first, so an answer that is ready wins, even over an interrupt
//! already fired or a deadline already past. The deadline (an entry in the thread's deadline
//! queue, [`crate::timer`]) and the interrupt registration are made only if the inner
//! future is not ready at its first poll: calls answered at once pay for neither.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Instant;

use crate::call::{Call, Ended};
use crate::classify::{AllSamples, ClassifyResponse};
use crate::error::{BoxError, Interrupted};
use crate::interrupt::{Fired, Origin};
#[cfg(feature = "http")]
use crate::invariant::broken;
use crate::timer::{yield_before_expiry, CallTimer};

/// The error of a future polled again after it finished.
const POLLED_AFTER_COMPLETION: &str = "polled after completion";

pin_project! {
    /// The future returned by [`AdaptiveTimeout`](crate::AdaptiveTimeout): the inner
    /// service's answer, or [`Interrupted`] when the deadline or an interrupt comes first.
    ///
    /// `M` says what the answer becomes: [`Head`] (the default) gives it as it is and ends
    /// the call; [`WithBody`](crate::WithBody) keeps the call going in the response's body.
    /// Either carries the layer's response classifier (see [`crate::classify`]).
    pub struct ResponseFuture<F, M = Head> {
        #[pin]
        state: State<F>,
        finish: M,
    }
}

/// The call ends when the response arrives: the answer is given as the inner service gave
/// it, and recorded as `C` classifies it. What [`AdaptiveTimeout`](crate::AdaptiveTimeout)
/// returns.
#[derive(Clone, Copy, Debug, Default)]
pub struct Head<C = AllSamples> {
    classify: C,
}

impl<C> Head<C> {
    /// Answers classified by `classify`.
    pub(crate) fn new(classify: C) -> Self {
        Head { classify }
    }

    /// The classifier.
    #[cfg(feature = "http")]
    pub(crate) fn into_classifier(self) -> C {
        self.classify
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateReplace]
    enum State<F> {
        /// Refused at admission (`Admission::Refused`, made the call's `Interrupted` by
        /// the service): the error is returned at the first poll.
        Rejected { error: Option<BoxError> },
        /// Admitted: racing, with the guard that records the outcome.
        Running {
            #[pin]
            race: Race<F>,
            call: Call,
        },
        /// The outcome is recorded.
        Done,
    }
}

pin_project! {
    /// What a running call waits on: its inner future first, then its interrupts and its
    /// deadline, both armed at the first poll that finds the inner future pending (the
    /// peer's interrupts watched from the deadline's queue entry).
    struct Race<F> {
        #[pin]
        inner: F,
        deadline: CallTimer,
        // Past its deadline, a straggler is held until this instant (`None`: its deadline).
        held: Option<Instant>,
        // When the caller stops waiting: a straggler is never held past it.
        caller: Option<Instant>,
        #[pin]
        token_wake: Option<OwnedNotified>,
    }
}

impl<F> State<F> {
    /// The race of a running call and its guard, or the error of a call refused at
    /// admission (or polled again after it ended).
    fn running(self: Pin<&mut Self>) -> Result<(Pin<&mut Race<F>>, &mut Call), BoxError> {
        match self.project() {
            StateProj::Running { race, call } => Ok((race, call)),
            StateProj::Rejected { error } => Err(error
                .take()
                .unwrap_or_else(|| POLLED_AFTER_COMPLETION.into())),
            StateProj::Done => Err(POLLED_AFTER_COMPLETION.into()),
        }
    }
}

impl<F, M> ResponseFuture<F, M> {
    /// An admitted call: `inner` races its deadline and interrupts, `call` records the end,
    /// `finish` makes the answer what the caller gets; `caller_deadline` (from the call's
    /// start) is the caller's own, past which a straggler is not held.
    #[inline(always)]
    pub(crate) fn running(
        inner: F,
        call: Call,
        finish: M,
        caller_deadline: Option<Duration>,
    ) -> Self {
        let race = Race {
            inner,
            deadline: CallTimer::Unarmed,
            held: None,
            caller: call.caller_until(caller_deadline),
            token_wake: None,
        };
        ResponseFuture {
            state: State::Running { race, call },
            finish,
        }
    }

    /// A call refused at admission, which never reached the inner service: it ends with
    /// `error` at its first poll.
    pub(crate) fn rejected(error: Interrupted, finish: M) -> Self {
        ResponseFuture {
            state: State::Rejected {
                error: Some(error.into()),
            },
            finish,
        }
    }

    /// The same call, its answer made into something else: `finish` makes the new marker
    /// from the old one.
    #[cfg(feature = "http")]
    pub(crate) fn map_finish<N>(self, finish: impl FnOnce(M) -> N) -> ResponseFuture<F, N> {
        ResponseFuture {
            state: self.state,
            finish: finish(self.finish),
        }
    }
}

impl<F, M> ResponseFuture<F, M> {
    /// When the call's deadline passes (`None`: refused, or ended).
    pub(crate) fn deadline_at(&self) -> Option<Instant> {
        match &self.state {
            State::Running { call, .. } => Some(call.deadline_at()),
            State::Rejected { .. } | State::Done => None,
        }
    }
}

/// How a call's race ended: its guard and what ended it, or the error of a refused call.
#[cfg(feature = "http")]
pub(crate) type RaceEnd<T> = Result<(Call, Ended<T>), BoxError>;

impl<F: fmt::Debug, M: fmt::Debug> fmt::Debug for ResponseFuture<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("ResponseFuture");
        match &self.state {
            State::Rejected { error } => out.field("rejected", error),
            State::Running { race, .. } => out.field("inner", &race.inner),
            State::Done => out.field("done", &true),
        };
        out.field("finish", &self.finish).finish()
    }
}

#[cfg(feature = "http")]
impl<F, M, T, E> ResponseFuture<F, M>
where
    F: Future<Output = Result<T, E>>,
{
    /// Runs the race; once it is over, gives the call guard and what ended the call, with
    /// the inner future, the deadline and the registrations dropped: for a call that goes
    /// on in its body, which takes the guard (a head's call ends in place instead: see its
    /// `poll`). A refused call (or a future polled again after it finished) gives its
    /// error instead.
    pub(crate) fn poll_ended(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<(RaceEnd<F::Output>, &mut M)> {
        let this = self.project();
        let mut state = this.state;
        let (race, call) = match state.as_mut().running() {
            Ok(running) => running,
            Err(error) => return Poll::Ready((Err(error), this.finish)),
        };
        let ended = ready!(race.poll_in_span(call, cx));
        Poll::Ready((
            match state.project_replace(State::Done) {
                StateReplace::Running { call, .. } => Ok((call, ended)),
                StateReplace::Rejected { .. } | StateReplace::Done => broken(
                    "a call's state was `Running` just above",
                    Err(POLLED_AFTER_COMPLETION.into()),
                ),
            },
            this.finish,
        ))
    }
}

impl<F, T, E, C> Future for ResponseFuture<F, Head<C>>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: ClassifyResponse<T>,
{
    type Output = Result<T, BoxError>;

    /// Ends the call where it lies, then lets the race go: moving the guard out first
    /// would copy it and what ended the call once more on every call's last poll.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut state = this.state;
        let (race, call) = state.as_mut().running()?;
        let ended = ready!(race.poll_in_span(call, cx));
        let result = call.end(ended, &this.finish.classify);
        state.set(State::Done);
        Poll::Ready(result)
    }
}

impl<F, T, E> Race<F>
where
    F: Future<Output = Result<T, E>>,
{
    /// Polls the inner future, then the interrupts, then the deadline; the first that is
    /// ready ends the call. A deadline that runs out while the peer still answers other
    /// calls is armed again for when the call is cut ([`Call::cut_at`]), never past the
    /// caller's own. Polled within the call's span, so what the inner future traces nests
    /// under it.
    fn poll_in_span(
        self: Pin<&mut Self>,
        call: &mut Call,
        cx: &mut Context<'_>,
    ) -> Poll<Ended<F::Output>> {
        let span = call.span().clone();
        let _entered = span.enter();
        self.poll(call, cx)
    }

    /// The race of [`poll_in_span`](Self::poll_in_span), the span aside.
    fn poll(self: Pin<&mut Self>, call: &mut Call, cx: &mut Context<'_>) -> Poll<Ended<F::Output>> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(Ended::Answered(result));
        }
        loop {
            let at = this.held.unwrap_or_else(|| call.deadline_at());
            // One registration for both: the deadline's entry in its thread's queue also
            // watches the peer's interrupts (without a queue, the peer registers the call).
            let due = this.deadline.poll_watching(at, call.watch(), cx);
            if !this.deadline.watches() {
                call.wait_for_peer(cx.waker());
            }
            if let Some((fired, origin)) = poll_fired(call, this.token_wake.as_mut(), cx) {
                return Poll::Ready(Ended::Interrupted(fired, origin));
            }
            ready!(due);
            if call.yield_once() {
                // Before the deadline counts, an answer that came meanwhile is let in.
                ready!(yield_before_expiry(cx));
            }
            // `None` from the peer is at once, whatever the caller allows.
            let caller = *this.caller;
            let later = call.cut_at().map(|at| caller.map_or(at, |c| at.min(c)));
            match later.filter(|&later| later > Instant::now()) {
                // Armed again for a later instant: the next pass registers it, and checks
                // the interrupts again, since it watches them from its new entry.
                Some(later) => {
                    *this.held = Some(later);
                    *this.deadline = CallTimer::Unarmed;
                    call.rearm_yield();
                }
                None => return Poll::Ready(Ended::Expired),
            }
        }
    }
}

/// Registers for the call's interrupts (its peer's broadcast and its token) and returns
/// one that fired since the call started, or `None` with this task registered for the next.
/// For a call whose peer registration is not made elsewhere: a response body's.
#[cfg(feature = "http")]
pub(crate) fn poll_interrupts(
    call: &mut Call,
    token_wake: Pin<&mut Option<OwnedNotified>>,
    cx: &mut Context<'_>,
) -> Option<(Fired, Origin)> {
    call.wait_for_peer(cx.waker());
    poll_fired(call, token_wake, cx)
}

/// The interrupt that reached the call since it started, if any, with the call's token
/// registered for the next; the task must already be registered for its peer's.
///
/// No wake-up is lost: each pass registers first and checks second, and every fire
/// publishes its reason (generation bumped, token set) before it wakes. A fire before the
/// check is seen by the check; a fire after it finds this task's waker registered.
///
/// The peer's registration is the call's, made once and kept up to date with the task's
/// waker (in its deadline's queue entry, or with its peer). The token notifies with
/// `notify_waiters`, which stores no permit, so its registration is ready only if a fire
/// came after it was made; a pass that finds it ready clears it, and the next pass
/// registers again and its check finds that fire, since fires are never undone: the loop
/// settles by its second pass. (ARCHITECTURE.md, invariant 3: register before checking.)
fn poll_fired(
    call: &mut Call,
    mut token_wake: Pin<&mut Option<OwnedNotified>>,
    cx: &mut Context<'_>,
) -> Option<(Fired, Origin)> {
    loop {
        if token_wake.is_none() {
            token_wake.set(call.token_notified());
        }
        if let Some(fired) = call.fired() {
            return Some(fired);
        }
        match token_wake.as_mut().as_pin_mut().map(|w| w.poll(cx)) {
            Some(Poll::Ready(())) => token_wake.set(None),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::interrupt::Interrupts;
    use crate::peer::{InFlight, Ticket};
    use crate::token::Interrupt;

    struct Noop;

    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    /// An untracked call with a token and a 100ms deadline.
    fn call() -> Call {
        let ticket = Ticket::untracked(Instant::now(), Duration::from_millis(100), 0);
        let in_flight = InFlight::untracked(Arc::new(Interrupts::new()));
        Call::new(in_flight, ticket, Some(Interrupt::new()))
    }

    /// Polls a race over `inner` once; returns whether it ended, and whether it armed its
    /// timer, its peer registration and its token registration.
    fn poll_once<F: Future<Output = Result<(), ()>>>(inner: F) -> (bool, [bool; 3]) {
        let mut call = call();
        let mut race = std::pin::pin!(Race {
            inner,
            deadline: CallTimer::Unarmed,
            held: None,
            caller: None,
            token_wake: None,
        });
        let waker = std::task::Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        let ended = race.as_mut().poll(&mut call, &mut cx).is_ready();
        let armed = [
            race.deadline.is_armed(),
            race.deadline.watches() || call.is_waiting(),
            race.token_wake.is_some(),
        ];
        (ended, armed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_inner_future_arms_nothing() {
        assert_eq!(poll_once(std::future::ready(Ok(()))), (true, [false; 3]));
        assert_eq!(poll_once(std::future::ready(Err(()))), (true, [false; 3]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_inner_future_arms_the_timer_and_both_registrations() {
        assert_eq!(poll_once(std::future::pending()), (false, [true; 3]));
    }
}
