//! The response future: races the inner future against the call's deadline and records the
//! outcome into the peer's history.
//!
//! The deadline timer is created only if the inner future is not ready at its first poll,
//! so calls answered at once pay for no timer.

use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::error::{Interrupted, Reason};
use crate::peer::state::Peer;
use crate::policy::{DeadlineExplanation, DeadlineSource};
use crate::BoxError;

pin_project! {
    /// The future returned by [`AdaptiveTimeout`](crate::AdaptiveTimeout): the inner
    /// service's answer, or [`Interrupted`] when the deadline passes first.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        start: Instant,
        deadline: Duration,
        source: DeadlineSource,
        call: InFlight,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: F,
        peer: Option<Arc<Peer>>,
        untracked: Duration,
        start: Instant,
    ) -> Self {
        let (deadline, source) = match &peer {
            Some(peer) => {
                peer.begin(start);
                peer.deadline()
            }
            None => (untracked, DeadlineSource::Untracked),
        };
        ResponseFuture {
            inner,
            sleep: None,
            start,
            deadline,
            source,
            call: InFlight(peer),
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
        if let Poll::Ready(result) = this.inner.poll(cx) {
            if let Some(peer) = this.call.0.take() {
                let now = Instant::now();
                peer.record(now, now.saturating_duration_since(*this.start), false);
            }
            return Poll::Ready(result.map_err(Into::into));
        }
        if this.sleep.is_none() {
            let at = *this.start + *this.deadline;
            this.sleep.set(Some(tokio::time::sleep_until(at)));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
        }
        let elapsed = this.start.elapsed();
        let deadline = *this.deadline;
        let (label, explanation) = match this.call.0.take() {
            Some(peer) => {
                // A censored sample: the peer's latency was at least the deadline.
                peer.record(Instant::now(), deadline, true);
                let view = peer.view(Instant::now());
                let explanation = DeadlineExplanation::new(
                    *this.source,
                    &view.policy,
                    view.samples,
                    view.quantile_value,
                    view.overridden,
                );
                (Some(peer), explanation)
            }
            None => (None, DeadlineExplanation::untracked()),
        };
        let peer = label.as_deref().map_or(UNTRACKED, Peer::label);
        tracing::debug!(peer, ?deadline, ?elapsed, source = %this.source, "deadline exceeded");
        let here = Location::caller();
        let reason = Reason::DeadlineExceeded {
            deadline,
            explanation,
        };
        Poll::Ready(Err(
            Interrupted::new(reason, peer, elapsed, here, here).into()
        ))
    }
}

/// How an untracked call's peer is named in errors.
const UNTRACKED: &str = "<untracked peer>";

/// A call counted in its peer's in-flight total until it is recorded or dropped.
struct InFlight(Option<Arc<Peer>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(peer) = self.0.take() {
            peer.end();
        }
    }
}
