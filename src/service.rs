//! The service: finds the call's peer, reads its deadline, and starts the clock.

use std::panic::Location;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_service::Service;

use crate::error::Interrupted;
use crate::future::{Call, ResponseFuture, Target};
use crate::peer::key::{KeyFn, PeerKey};
use crate::peer::state::Admission;
use crate::peer::table::PeerTable;
use crate::policy::DeadlineSource;
use crate::BoxError;

/// Gives every call the adaptive deadline of its peer. Made by
/// [`AdaptiveTimeoutLayer`](crate::AdaptiveTimeoutLayer); clones share the peer table.
pub struct AdaptiveTimeout<S, K, F> {
    inner: S,
    table: Arc<PeerTable<K>>,
    key_fn: F,
}

impl<S, K, F> AdaptiveTimeout<S, K, F> {
    pub(crate) fn new(inner: S, table: Arc<PeerTable<K>>, key_fn: F) -> Self {
        AdaptiveTimeout {
            inner,
            table,
            key_fn,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, K, F> Service<Req> for AdaptiveTimeout<S, K, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: PeerKey,
    F: KeyFn<Req, Key = K>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let start = Instant::now();
        let token = if self.table.tokens() {
            self.key_fn.interrupt_token(&mut req)
        } else {
            None
        };
        let Some(peer) = self
            .key_fn
            .peer_key(&req)
            .and_then(|key| self.table.peer(&key, start))
        else {
            let interrupts = self.table.untracked_interrupts().clone();
            let generation = interrupts.generation();
            let deadline = self.table.untracked_deadline();
            let source = DeadlineSource::Untracked;
            let call = Call::new(
                Target::Untracked(interrupts),
                start,
                deadline,
                source,
                generation,
                false,
                token,
            );
            return ResponseFuture::new(self.inner.call(req), call);
        };
        match peer.admit(start) {
            Admission::Go {
                deadline,
                source,
                generation,
                probe,
            } => {
                let call = Call::new(
                    Target::Peer(peer),
                    start,
                    deadline,
                    source,
                    generation,
                    probe,
                    token,
                );
                ResponseFuture::new(self.inner.call(req), call)
            }
            Admission::Reject(fired) => {
                // Fail fast: the peer is silent and this call is not its probe.
                let err = Interrupted::new(
                    fired.reason,
                    peer.label(),
                    Duration::ZERO,
                    fired.fired_at,
                    Location::caller(),
                );
                if let Some(token) = &token {
                    token.fire(err.clone());
                }
                let call = Call::new(
                    Target::Peer(peer),
                    start,
                    Duration::ZERO,
                    DeadlineSource::SilentPeer,
                    0,
                    false,
                    token,
                );
                ResponseFuture::rejected(err.into(), call)
            }
        }
    }
}

impl<S: Clone, K, F: Clone> Clone for AdaptiveTimeout<S, K, F> {
    fn clone(&self) -> Self {
        AdaptiveTimeout {
            inner: self.inner.clone(),
            table: self.table.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

impl<S: std::fmt::Debug, K, F> std::fmt::Debug for AdaptiveTimeout<S, K, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveTimeout")
            .field("inner", &self.inner)
            .field("peers", &self.table.len())
            .finish_non_exhaustive()
    }
}
