//! The service: finds the call's peer, reads its deadline, and starts the clock.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::peer::key::{KeyFn, PeerKey};
use crate::peer::table::PeerTable;
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

    fn call(&mut self, req: Req) -> Self::Future {
        let start = Instant::now();
        let peer = self
            .key_fn
            .peer_key(&req)
            .and_then(|key| self.table.peer(&key, start));
        let deadline = self.table.untracked_deadline();
        ResponseFuture::new(self.inner.call(req), peer, deadline, start)
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
