//! The race of a hedged request: its first call, the delay, the copy, and the loser's
//! interrupt.

use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::{Count, Shared};
use crate::classify::ClassifyResponse;
use crate::error::{BoxError, Interrupted, Reason};
use crate::future::{Head, ResponseFuture};
use crate::peer::key::{KeyFn, PeerKey};
use crate::peer::{HedgeCount, Peer};
use crate::service::AdaptiveTimeout;
use crate::timer::CallTimer;
use crate::token::Interrupt;

/// How much longer than the request has left a copy's callee is told (see `Race::send`).
const PROPAGATION_SLACK: Duration = Duration::from_millis(1);

/// One copy of the request in flight: the layer's own call future.
type Copy<S, C, Req> = ResponseFuture<<S as Service<Req>>::Future, Head<C>>;

pin_project! {
    /// The future of a [`Hedge`](super::Hedge) call: the first answer of the request and
    /// its copy, if one was sent.
    pub struct HedgeFuture<S, K, F, C, Req>
    where
        S: Service<Req>,
    {
        // The request as first sent; `None` once it ended.
        #[pin]
        first: Option<Copy<S, C, Req>>,
        // Its copy, once sent; `None` before, and once it ended.
        #[pin]
        second: Option<Copy<S, C, Req>>,
        race: Option<Box<Race<AdaptiveTimeout<S, K, F, C>, Req>>>,
    }
}

/// What a hedged request keeps besides its futures.
pub(super) struct Race<Svc, Req> {
    /// A clone of the service, to send the copy through.
    svc: Svc,
    /// When the copy is due (`None` once due), and its place in the thread's deadline
    /// queue: no tokio timer per hedged request (`src/timer.rs`).
    due: Option<Instant>,
    timer: CallTimer,
    /// The copy, until it is sent or given up.
    copy: Option<Req>,
    /// Whether the copy passed the peer's state, its in-flight limit and the budget (a
    /// token taken), waiting only for the service to be ready.
    admitted: bool,
    /// Each copy's own token, and when it started.
    tokens: [Option<Interrupt>; 2],
    started: [Instant; 2],
    /// The first copy's error, while the second still runs.
    first_err: Option<BoxError>,
    /// The request's peer: its state, and its counts.
    peer: Arc<Peer>,
    shared: Arc<Shared>,
}

impl<Svc, Req> Race<Svc, Req> {
    pub(super) fn new(
        svc: Svc,
        (copy, after): (Req, Duration),
        token: Option<Interrupt>,
        peer: Arc<Peer>,
        shared: Arc<Shared>,
    ) -> Self {
        let now = Instant::now();
        Race {
            svc,
            due: now.checked_add(after),
            timer: CallTimer::Unarmed,
            copy: Some(copy),
            admitted: false,
            tokens: [token, None],
            started: [now, now],
            first_err: None,
            peer,
            shared,
        }
    }

    /// The copy `loser` (0: first, 1: second) lost: its token is fired with
    /// [`Reason::Hedged`] so work deeper in its chain stops; the caller drops its future,
    /// which records neither a sample nor a miss (invariant 4).
    #[track_caller]
    fn interrupt(&self, loser: usize) {
        let here = Location::caller();
        if let Some(token) = &self.tokens[loser] {
            let elapsed = self.started[loser].elapsed();
            let label = self.peer.label();
            token.fire(Interrupted::new(Reason::Hedged, label, elapsed, here, here));
        }
        self.peer.count_hedge(HedgeCount::Interrupted);
        self.shared.count(Count::Interrupted);
        let (peer, loser) = (&**self.peer.label(), ["first", "copy"][loser]);
        tracing::debug!(peer, loser, "hedged call: loser interrupted");
    }

    /// The request ended with the first's error `err` while its copy ran: the copy's token
    /// is fired with the same error, and the caller drops its future.
    fn end_copy(&self, err: &(dyn std::error::Error + 'static)) {
        if let (Some(token), Some(err)) = (&self.tokens[1], Interrupted::find(err)) {
            token.fire(err.clone());
        }
        // Ended by the race like a loser: counted with them, so every call to the peer
        // is counted once.
        self.peer.count_hedge(HedgeCount::Interrupted);
        self.shared.count(Count::Interrupted);
        tracing::debug!(
            peer = &**self.peer.label(),
            "hedged call: ended with its first copy"
        );
    }

    /// The copy answered first.
    fn won(&self) {
        self.peer.count_hedge(HedgeCount::Won);
        self.shared.count(Count::Won);
        tracing::debug!(peer = &**self.peer.label(), "hedged call: the copy won");
    }
}

impl<S, K, F, C, Req> Race<AdaptiveTimeout<S, K, F, C>, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: PeerKey,
    F: KeyFn<Req, Key = K>,
    C: ClassifyResponse<S::Response> + Clone,
{
    /// Sends the copy once the delay has passed: `Ready(Some)` with its future, `Pending`
    /// while the service is not ready, `Ready(None)` if it is not to be sent (the peer
    /// refuses copies, the budget is spent, the service failed). With propagation on, the
    /// copy's callee is told the time left to the first's deadline (`first_until`), when
    /// the request ends: never more than anyone waits.
    fn send(
        &mut self,
        cx: &mut Context<'_>,
        first_until: Option<Instant>,
    ) -> Poll<Option<Copy<S, C, Req>>> {
        if !self.admitted {
            if !self.shared.admit_copy(&self.peer) {
                self.copy = None;
                return Poll::Ready(None);
            }
            self.admitted = true;
        }
        if ready!(self.svc.poll_ready(cx)).is_err() {
            self.shared.budget.refund();
            self.copy = None;
            return Poll::Ready(None);
        }
        let Some(mut copy) = self.copy.take() else {
            // Not reached: `send` is called only while the copy is kept.
            return Poll::Ready(None);
        };
        self.tokens[1] = self.svc.key_fn().interrupt_token(&mut copy);
        self.started[1] = Instant::now();
        let propagation = self.svc.propagation();
        if let Some(until) = first_until.filter(|_| propagation.is_on()) {
            // A millisecond more than is left, the precision a deadline is propagated
            // with: the copy, whose own deadline this becomes, never runs out before the
            // first, which ends the request; so the copy is dropped, never a miss, and a
            // silence takes as many misses as without hedging.
            let left = until.saturating_duration_since(self.started[1]) + PROPAGATION_SLACK;
            self.svc
                .key_fn()
                .write_deadline(&mut copy, left, propagation);
        }
        self.peer.count_hedge(HedgeCount::Sent);
        self.shared.count(Count::Sent);
        let after = self.started[1].saturating_duration_since(self.started[0]);
        tracing::debug!(
            peer = &**self.peer.label(),
            ?after,
            "hedged call: copy sent"
        );
        Poll::Ready(Some(self.svc.call(copy)))
    }
}

impl<S, K, F, C, Req> HedgeFuture<S, K, F, C, Req>
where
    S: Service<Req>,
{
    /// A request sent once.
    pub(super) fn single(first: Copy<S, C, Req>) -> Self {
        HedgeFuture {
            first: Some(first),
            second: None,
            race: None,
        }
    }

    /// A request whose copy goes when `race` says, unless it is answered first.
    pub(super) fn hedged(
        first: Copy<S, C, Req>,
        race: Race<AdaptiveTimeout<S, K, F, C>, Req>,
    ) -> Self {
        HedgeFuture {
            first: Some(first),
            second: None,
            race: Some(Box::new(race)),
        }
    }
}

impl<S, K, F, C, Req> Future for HedgeFuture<S, K, F, C, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: PeerKey,
    F: KeyFn<Req, Key = K>,
    C: ClassifyResponse<S::Response> + Clone,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(race) = this.race.as_mut() else {
            return match this.first.as_mut().as_pin_mut() {
                Some(first) => first.poll(cx),
                None => Poll::Ready(Err(polled_after_end())),
            };
        };
        // At most twice round: the second time with the copy just sent, to poll it once.
        for _ in 0..2 {
            if let Some(Poll::Ready(result)) = this.first.as_mut().as_pin_mut().map(|f| f.poll(cx))
            {
                this.first.set(None);
                match result {
                    Ok(answer) => {
                        if this.second.is_some() {
                            this.second.set(None);
                            race.interrupt(1);
                        }
                        race.copy = None;
                        return Poll::Ready(Ok(answer));
                    }
                    // The inner service failed: the copy runs on, its answer may still come.
                    Err(err) if this.second.is_some() && Interrupted::find(&*err).is_none() => {
                        race.first_err = Some(err)
                    }
                    // The layer ended the first (its deadline, its peer's silence, an
                    // interrupt): so ends the request, as it would have without hedging,
                    // and the copy is dropped, neither a sample nor a miss: a peer gone
                    // quiet is declared silent after as many misses as without hedging.
                    Err(err) => {
                        if this.second.is_some() {
                            this.second.set(None);
                            race.end_copy(&*err);
                        }
                        race.copy = None;
                        return Poll::Ready(Err(err));
                    }
                }
            }
            if let Some(Poll::Ready(result)) = this.second.as_mut().as_pin_mut().map(|f| f.poll(cx))
            {
                this.second.set(None);
                match (result, race.first_err.take()) {
                    (Ok(answer), _) => {
                        race.won();
                        if this.first.is_some() {
                            this.first.set(None);
                            race.interrupt(0);
                        }
                        return Poll::Ready(Ok(answer));
                    }
                    // Both failed: the first's error, which the caller would have had
                    // without hedging.
                    (Err(_), Some(first)) => return Poll::Ready(Err(first)),
                    // The first runs on.
                    (Err(_), None) => {}
                }
            }
            if this.first.is_none() && this.second.is_none() {
                return Poll::Ready(Err(race.first_err.take().unwrap_or_else(polled_after_end)));
            }
            if race.copy.is_none() {
                return Poll::Pending;
            }
            if let Some(due) = race.due {
                ready!(race.timer.poll_at(due, cx));
                (race.due, race.timer) = (None, CallTimer::Unarmed);
            }
            let first_until = this
                .first
                .as_ref()
                .as_pin_ref()
                .and_then(|f| f.deadline_at());
            match ready!(race.send(cx, first_until)) {
                Some(second) => this.second.set(Some(second)),
                None => return Poll::Pending,
            }
        }
        Poll::Pending
    }
}

/// The error of a future polled after it gave its result (a caller's mistake): an error,
/// never a panic.
fn polled_after_end() -> BoxError {
    "hedged call polled after it ended".into()
}
