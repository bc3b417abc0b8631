//! The service: keys the request, admits it through the peer table, and hands the call to
//! its response future.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use crate::call::{refusal, Call};
use crate::error::BoxError;
use crate::future::ResponseFuture;
use crate::peer::key::{KeyFn, PeerKey};
use crate::peer::table::{Admission, LastPeer, PeerTable};

/// Gives every call the adaptive deadline of its peer. Made by
/// [`AdaptiveTimeoutLayer`](crate::AdaptiveTimeoutLayer); clones share the peer table.
///
/// A call refused at once (its peer is silent, or the caller's deadline was already spent)
/// never reaches the inner service: like any tower filter, it leaves the readiness it was
/// given to the next call.
pub struct AdaptiveTimeout<S, K, F> {
    inner: S,
    table: Arc<PeerTable<K>>,
    key_fn: F,
    /// The last peer this service called: repeated calls to one peer skip the table.
    last: Option<LastPeer<K>>,
}

impl<S, K, F> AdaptiveTimeout<S, K, F> {
    pub(crate) fn new(inner: S, table: Arc<PeerTable<K>>, key_fn: F) -> Self {
        AdaptiveTimeout {
            inner,
            table,
            key_fn,
            last: None,
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
        let token = if self.table.interrupt_tokens() {
            self.key_fn.interrupt_token(&mut req)
        } else {
            None
        };
        let propagation = self.table.propagation();
        let caller_deadline = self.key_fn.caller_deadline(&req, propagation);
        let key = self.key_fn.peer_key(&req);
        let hints = self.key_fn.latency_hints(&req);
        match self
            .table
            .admit(key, start, caller_deadline, hints, &mut self.last)
        {
            Admission::Refused(peer, fired) => {
                ResponseFuture::rejected(refusal(&peer, fired, token.as_ref()))
            }
            Admission::Admitted(peer, ticket) => {
                if propagation.is_on() {
                    self.key_fn
                        .write_deadline(&mut req, ticket.deadline, propagation);
                }
                let call = Call::new(peer, start, ticket, token);
                ResponseFuture::running(self.inner.call(req), call)
            }
        }
    }
}

impl<S: Clone, K: Clone, F: Clone> Clone for AdaptiveTimeout<S, K, F> {
    fn clone(&self) -> Self {
        AdaptiveTimeout {
            inner: self.inner.clone(),
            table: self.table.clone(),
            key_fn: self.key_fn.clone(),
            last: self.last.clone(),
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
