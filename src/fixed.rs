//! Fixed-peer mode: the layer over one direct client whose calls all go to one peer (a
//! tonic `Channel`, a connection pool to one host), whatever its requests name.
//!
//! A [`FixedPeer`] is the keyed layer with the key fixed: its `poll_ready` is its inner
//! service's and never waits on the peer's health, and a call to a silent peer fails fast
//! (one probe at a time goes), exactly as through the keyed layer. It suits a client that
//! has no other peer to turn to, where failing at once is the most useful answer. Under a
//! balancer, which does have other endpoints, use
//! [`for_endpoint`](crate::AdaptiveTimeoutLayer::for_endpoint) instead.
//!
//! ```
//! use tower::{service_fn, BoxError, Layer};
//! use tower_adaptive_timeout::{AdaptiveTimeoutLayer, HttpPeer};
//!
//! # fn main() -> Result<(), BoxError> {
//! let layer = AdaptiveTimeoutLayer::http().build()?;
//! // Path-only requests (as a tonic client sends them) still count for this peer.
//! let peer = "http://10.0.0.7:50051".parse::<HttpPeer>()?;
//! let client = service_fn(|_: http::Request<String>| async {
//!     Ok::<_, BoxError>(http::Response::new(String::new()))
//! });
//! let _svc = layer.for_peer(peer).layer(client);
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::balance::Fixed;
use crate::classify::{AllSamples, ClassifyResponse};
use crate::error::BoxError;
use crate::future::{Head, ResponseFuture};
use crate::peer::key::{KeyFn, PeerKey};
use crate::peer::table::PeerTable;
use crate::service::AdaptiveTimeout;

/// Makes [`FixedPeer`]s for one peer; from
/// [`AdaptiveTimeoutLayer::for_peer`](crate::AdaptiveTimeoutLayer::for_peer).
#[derive(Clone)]
pub struct FixedPeerLayer<K, F, C = AllSamples> {
    table: Arc<PeerTable<K>>,
    key_fn: Fixed<K, F>,
    classify: C,
}

impl<K, F, C> FixedPeerLayer<K, F, C> {
    pub(crate) fn new(table: Arc<PeerTable<K>>, key_fn: F, classify: C, key: K) -> Self {
        let key_fn = Fixed::new(key, key_fn);
        FixedPeerLayer {
            table,
            key_fn,
            classify,
        }
    }
}

impl<K: std::fmt::Debug, F, C> std::fmt::Debug for FixedPeerLayer<K, F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedPeerLayer")
            .field("peer", self.key_fn.key())
            .finish_non_exhaustive()
    }
}

impl<S, K: Clone, F: Clone, C: Clone> Layer<S> for FixedPeerLayer<K, F, C> {
    type Service = FixedPeer<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let (table, key_fn) = (self.table.clone(), self.key_fn.clone());
        FixedPeer {
            inner: AdaptiveTimeout::new(inner, table, key_fn, self.classify.clone()),
        }
    }
}

/// The layer over a direct client of one peer: every call goes to that peer, fixed when
/// it was made (the request's own key is not asked for; its token, `Deadline` and
/// propagated budget still are). Ready when the inner service is; calls to a silent peer
/// fail fast, but one probe at a time. Clones share the peer.
#[derive(Clone)]
pub struct FixedPeer<S, K, F, C = AllSamples> {
    inner: AdaptiveTimeout<S, K, Fixed<K, F>, C>,
}

impl<S, K, F, C> FixedPeer<S, K, F, C> {
    /// The peer this service calls.
    pub fn peer(&self) -> &K {
        self.inner.key_fn().key()
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// The wrapped service, taken out.
    pub fn into_inner(self) -> S {
        self.inner.into_inner()
    }
}

impl<S, Req, K, F, C> Service<Req> for FixedPeer<S, K, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: PeerKey,
    F: KeyFn<Req, Key = K>,
    C: ClassifyResponse<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, Head<C>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.inner.call(req)
    }
}

impl<S: std::fmt::Debug, K: std::fmt::Debug, F, C> std::fmt::Debug for FixedPeer<S, K, F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedPeer")
            .field("peer", self.peer())
            .field("inner", self.get_ref())
            .finish_non_exhaustive()
    }
}
