//! The per-peer deadline layer skeleton shared by the custom strategies (RFC 6298 RTO, the
//! `adaptive-timeout` crate's formula, phi accrual). A strategy only says, per peer, when a
//! call should be cut and what it learns from each outcome; the skeleton does the racing.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service};

use crate::workload::{PeerId, Req};
use crate::Ending;

/// Safety bound on how often one call re-reads a cut time that keeps moving later (phi
/// accrual pushes it back on every answer from the peer).
const MAX_REARMS: u32 = 10_000_000;

/// A call's start and the deadline it was given.
#[derive(Clone, Copy, Debug)]
pub struct Started {
    /// When the call started.
    pub at: Instant,
    /// The deadline it was given at the start.
    pub deadline: Duration,
}

/// A per-peer rule for cutting calls.
pub trait PeerTimer: Send + Sync + 'static {
    /// How long a call to `peer` starting now would be given before it is cut.
    fn deadline(&self, peer: PeerId, now: Instant) -> Duration;

    /// When the call should be cut, as known now. It is asked again when that time comes,
    /// so a rule whose cut time moves (phi accrual) can push it back. By default: the
    /// deadline the call got at its start.
    fn cut_at(&self, peer: PeerId, call: &Started) -> Instant {
        let _ = peer;
        call.at + call.deadline
    }

    /// The peer answered the call at `now`.
    fn answered(&self, peer: PeerId, call: &Started, now: Instant);

    /// The call was cut at `now`.
    fn cut(&self, peer: PeerId, call: &Started, now: Instant);
}

/// Wraps a service in [`PeerDeadline`] with a shared rule.
pub struct PeerDeadlineLayer<T> {
    timer: Arc<T>,
}

impl<T> PeerDeadlineLayer<T> {
    /// A layer whose services all share `timer`.
    pub fn new(timer: Arc<T>) -> Self {
        PeerDeadlineLayer { timer }
    }
}

impl<S, T> Layer<S> for PeerDeadlineLayer<T> {
    type Service = PeerDeadline<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        PeerDeadline {
            inner,
            timer: self.timer.clone(),
        }
    }
}

/// Races each call against its peer's rule.
pub struct PeerDeadline<S, T> {
    inner: S,
    timer: Arc<T>,
}

impl<S: Clone, T> Clone for PeerDeadline<S, T> {
    fn clone(&self) -> Self {
        PeerDeadline {
            inner: self.inner.clone(),
            timer: self.timer.clone(),
        }
    }
}

impl<S, T> Service<Req> for PeerDeadline<S, T>
where
    S: Service<Req, Response = (), Error = Infallible>,
    S::Future: Send + 'static,
    T: PeerTimer,
{
    type Response = ();
    type Error = Ending;
    type Future = Pin<Box<dyn Future<Output = Result<(), Ending>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Ending>> {
        self.inner.poll_ready(cx).map_err(|e| match e {})
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let timer = self.timer.clone();
        let peer = req.peer;
        let now = Instant::now();
        let call = Started {
            at: now,
            deadline: timer.deadline(peer, now),
        };
        let answer = self.inner.call(req);
        Box::pin(async move {
            tokio::pin!(answer);
            for _ in 0..MAX_REARMS {
                let at = timer.cut_at(peer, &call);
                if let Ok(Ok(())) = tokio::time::timeout_at(at, &mut answer).await {
                    timer.answered(peer, &call, Instant::now());
                    return Ok(());
                }
                if timer.cut_at(peer, &call) <= Instant::now() {
                    break;
                }
            }
            timer.cut(peer, &call, Instant::now());
            Err(Ending::Deadline)
        })
    }
}
