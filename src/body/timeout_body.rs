//! [`TimeoutBody`]: a response body that carries its call on until its last frame.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};

use super::idle::{IdleRule, IdleSource};
use crate::call::Call;
use crate::classify::Outcome;
use crate::error::BoxError;
use crate::future::poll_interrupts as interrupt_fired;
use crate::timer::yield_before_expiry;

/// Frames closer together than this report one heartbeat to the silence detector: a fast
/// stream does not take its peer's lock per frame (deadlines are at least a millisecond).
/// One call's body settings, from its request's extensions.
#[derive(Clone, Copy, Debug)]
pub(super) struct BodySettings {
    pub(super) idle: Idle,
    pub(super) total: Option<Duration>,
}

/// Where a body's idle deadline comes from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Idle {
    Rule(IdleRule),
    Requested(Duration),
}

const HEARTBEAT_EVERY: Duration = Duration::from_millis(1);

pin_project! {
    /// A response body watched to its end, from [`BodyTimeout`](crate::BodyTimeout).
    ///
    /// Frames, trailers and size hints pass through untouched until the layer ends the
    /// body (then it is at its end, size zero). The body ends with
    /// [`Interrupted`](crate::Interrupted) (as a body error) when an interrupt reaches its
    /// call, when no frame comes for its idle deadline ([`Reason::BodyIdle`](crate::Reason),
    /// a miss for its peer unless its caller asked for less than the peer's own), or when
    /// its total deadline ([`BodyDeadline`](crate::BodyDeadline)) passes. The inner body is
    /// polled first: a frame that is ready wins. A body the layer ended stays ended: later
    /// polls give `None`, without reaching the inner body. Dropping the body after its
    /// head ends the call as answered (its head was).
    pub struct TimeoutBody<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: Option<Sleep>,
        #[pin]
        token_wake: Option<OwnedNotified>,
        open: Option<OpenCall>,
        // Whether the layer ended the body (an interrupt, a deadline).
        cut: bool,
        // Whether the body has yielded once since its deadline fired (see
        // `crate::timer::yield_before_expiry`).
        yielded: bool,
    }
}

/// A body's call while it is in flight.
struct OpenCall {
    call: Call,
    idle_from: Idle,
    /// The idle deadline now in force and why; `None` when off.
    idle: Option<(Duration, IdleSource)>,
    /// The total deadline, from the call's start.
    total: Option<Duration>,
    /// When the last frame (or the head) arrived.
    last_frame: Instant,
    /// When a frame was last reported as a heartbeat.
    heartbeat_at: Instant,
    /// Until when the peer's floor on silence holds the body past its idle deadline: the
    /// peer said nothing to anyone meanwhile, and may be stalled (`None`: not held).
    held: Option<Instant>,
}

impl OpenCall {
    fn new(call: Call, with: BodySettings, now: Instant) -> Self {
        let mut open = OpenCall {
            call,
            idle_from: with.idle,
            idle: None,
            total: with.total,
            last_frame: now,
            heartbeat_at: now,
            held: None,
        };
        open.refresh_idle();
        open
    }

    /// Reads the idle deadline again: a learned one follows the peer as it learns.
    fn refresh_idle(&mut self) {
        self.idle = match self.idle_from {
            Idle::Requested(d) => Some((d, IdleSource::Request)),
            Idle::Rule(rule) => self.call.idle_deadline(rule),
        };
    }

    /// A frame arrived at `now`.
    fn frame(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last_frame);
        let heartbeat = now.saturating_duration_since(self.heartbeat_at) >= HEARTBEAT_EVERY;
        self.call.frame(now, gap, heartbeat);
        if heartbeat {
            self.heartbeat_at = now;
        }
        self.last_frame = now;
        self.held = None;
        self.refresh_idle();
    }

    /// When the body's idle deadline passes, if it has one: a deadline too far off for
    /// the clock to hold is none.
    fn idle_due(&self) -> Option<Instant> {
        let due = self
            .idle
            .and_then(|(d, _)| self.last_frame.checked_add(d))?;
        Some(self.held.map_or(due, |held| held.max(due)))
    }

    /// Whether the idle deadline that just passed is held further, like a head's
    /// deadline, by its peer's floor on silence (`Peer::body_cut_at`); a deadline the
    /// request set is not.
    fn hold(&mut self) -> bool {
        let Some((idle, source)) = self.idle else {
            return false;
        };
        if source == IdleSource::Request {
            return false;
        }
        let later = self.call.body_cut_at(self.last_frame, idle);
        match later.filter(|later| *later > Instant::now()) {
            Some(later) => {
                self.held = Some(later);
                true
            }
            None => false,
        }
    }

    /// When the body's total deadline passes, if it has one (as for the idle deadline).
    fn total_due(&self) -> Option<Instant> {
        self.total.and_then(|d| self.call.started().checked_add(d))
    }

    /// When the body's next deadline passes, if it has one.
    fn due(&self) -> Option<Instant> {
        match (self.idle_due(), self.total_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<B> TimeoutBody<B> {
    /// `inner`, carrying `call` on, its head recorded as `outcome`. An inner body already
    /// at its end ends the call at once.
    pub(super) fn new(inner: B, mut call: Call, outcome: Outcome, with: BodySettings) -> Self
    where
        B: Body,
    {
        let now = Instant::now();
        let open = if inner.is_end_stream() {
            call.answered_whole(outcome);
            None
        } else {
            call.head(now, outcome);
            Some(OpenCall::new(call, with, now))
        };
        TimeoutBody {
            inner,
            timer: None,
            token_wake: None,
            open,
            cut: false,
            yielded: false,
        }
    }

    /// `inner` passed through with no call to carry.
    pub(crate) fn unwatched(inner: B) -> Self {
        TimeoutBody {
            inner,
            timer: None,
            token_wake: None,
            open: None,
            cut: false,
            yielded: false,
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Whether the body's call is still in flight (its end not yet seen).
    pub fn is_watched(&self) -> bool {
        self.open.is_some()
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let Some(w) = this.open.as_mut() else {
            if *this.cut {
                return Poll::Ready(None);
            }
            // Over at the inner body's end or error, or never watched: the inner body as
            // it is.
            return this.inner.poll_frame(cx).map_err(Into::into);
        };
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                w.frame(Instant::now());
                *this.yielded = false;
                if this.inner.is_end_stream() {
                    end(this.open);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(other) => {
                // The end of the body, or the inner body's own error: over either way.
                end(this.open);
                return Poll::Ready(other.map(|r| r.map_err(Into::into)));
            }
            Poll::Pending => {}
        }
        if let Some(fired) = interrupt_fired(&mut w.call, this.token_wake, cx) {
            *this.cut = true;
            let call = take(this.open);
            return Poll::Ready(call.map(|c| Err(c.body_interrupted(fired).mid_body().into())));
        }
        let total_passed = loop {
            let Some(due) = w.due() else {
                return Poll::Pending;
            };
            match this.timer.as_mut().as_pin_mut() {
                Some(timer) if timer.deadline() != due => timer.reset(due),
                Some(_) => {}
                None => this.timer.set(Some(tokio::time::sleep_until(due))),
            }
            if let Some(timer) = this.timer.as_mut().as_pin_mut() {
                ready!(timer.poll(cx));
            }
            if !*this.yielded {
                // Before the deadline counts, a frame that came meanwhile is let in.
                *this.yielded = true;
                ready!(yield_before_expiry(cx));
            }
            // A deadline passed: the total one if its time has come, else the idle one,
            // unless the peer's floor on silence holds it (then armed again, later).
            let total_passed = w.total_due().is_some_and(|at| Instant::now() >= at);
            if total_passed || !w.hold() {
                break total_passed;
            }
            *this.yielded = false;
        };
        let Some(w) = this.open.take() else {
            return Poll::Ready(None);
        };
        *this.cut = true;
        let err = match (total_passed, w.idle) {
            (false, Some((idle, source))) => w.call.body_idle(idle, source, w.last_frame),
            _ => w
                .call
                .body_expired(w.total.unwrap_or_default(), w.last_frame),
        };
        Poll::Ready(Some(Err(err.mid_body().into())))
    }

    fn is_end_stream(&self) -> bool {
        self.cut || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.cut {
            return SizeHint::with_exact(0);
        }
        self.inner.size_hint()
    }
}

/// Ends the body's call, if it is still in flight.
fn end(open: &mut Option<OpenCall>) {
    if let Some(w) = open.take() {
        w.call.body_end();
    }
}

/// Takes the body's call out, ending the open.
fn take(open: &mut Option<OpenCall>) -> Option<Call> {
    open.take().map(|w| w.call)
}

impl<B: std::fmt::Debug> std::fmt::Debug for TimeoutBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutBody")
            .field("inner", &self.inner)
            .field("open", &self.open.is_some())
            .finish_non_exhaustive()
    }
}
