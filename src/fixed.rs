//! Fixed-peer mode: the layer over one direct client whose calls all go to one peer (a
//! tonic `Channel`, a connection pool to one host), whatever its requests name.
//!
//! A [`FixedPeer`] is the keyed layer's service with the key fixed: its `poll_ready` is
//! its inner service's and never waits on the peer's health, and a call to a silent peer
//! fails fast (one probe at a time goes), exactly as through the keyed layer. It suits a
//! client that has no other peer to turn to, where failing at once is the most useful
//! answer. Under a balancer, which does have other endpoints, use
//! [`for_endpoint`](crate::AdaptiveTimeoutLayer::for_endpoint) instead.
//!
//! ```
//! use std::net::SocketAddr;
//! use tower::{service_fn, BoxError, Layer};
//! use tower_adaptive_timeout::AdaptiveTimeoutLayer;
//!
//! # fn main() -> Result<(), BoxError> {
//! let layer = AdaptiveTimeoutLayer::builder(|addr: &SocketAddr| *addr).build()?;
//! let peer: SocketAddr = "10.0.0.7:50051".parse()?;
//! // Whatever address a request names, its call counts for `peer`.
//! let client = service_fn(|a: SocketAddr| async move { Ok::<_, BoxError>(a) });
//! let svc = layer.for_peer(peer).layer(client);
//! assert_eq!(*svc.peer(), peer);
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::class::LatencyHints;
use crate::classify::AllSamples;
use crate::peer::key::{KeyFn, PeerKey};
use crate::peer::table::PeerTable;
use crate::propagate::Propagation;
use crate::service::AdaptiveTimeout;
use crate::token::Interrupt;

/// The layer over a direct client of one peer: every call goes to that peer, fixed when
/// it was made (the request's own key is not asked for; its token, `Deadline` and
/// propagated budget still are). Ready when the inner service is; calls to a silent peer
/// fail fast, but one probe at a time. Clones share the peer. From
/// [`AdaptiveTimeoutLayer::for_peer`](crate::AdaptiveTimeoutLayer::for_peer).
pub type FixedPeer<S, K, F, C = AllSamples> = AdaptiveTimeout<S, K, FixedKey<K, F>, C>;

impl<S, K, F, C> FixedPeer<S, K, F, C> {
    /// The peer this service calls.
    pub fn peer(&self) -> &K {
        self.key_fn().key()
    }
}

/// Makes [`FixedPeer`]s for one peer; from
/// [`AdaptiveTimeoutLayer::for_peer`](crate::AdaptiveTimeoutLayer::for_peer).
#[derive(Clone)]
pub struct FixedPeerLayer<K, F, C = AllSamples> {
    table: Arc<PeerTable<K>>,
    key_fn: FixedKey<K, F>,
    classify: C,
}

impl<K, F, C> FixedPeerLayer<K, F, C> {
    pub(crate) fn new(table: Arc<PeerTable<K>>, key_fn: FixedKey<K, F>, classify: C) -> Self {
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
        AdaptiveTimeout::new(inner, table, key_fn, self.classify.clone())
    }
}

/// The key function of a [`FixedPeer`] (and of a balanced
/// [`Endpoint`](crate::Endpoint)): the peer is fixed; the token, the caller's deadline,
/// propagation and latency class are the layer's key function's.
#[derive(Clone, Debug)]
pub struct FixedKey<K, F> {
    key: K,
    key_fn: F,
}

impl<K, F> FixedKey<K, F> {
    pub(crate) fn new(key: K, key_fn: F) -> Self {
        FixedKey { key, key_fn }
    }

    /// The fixed peer.
    pub fn key(&self) -> &K {
        &self.key
    }
}

impl<Req, K: PeerKey, F: KeyFn<Req, Key = K>> KeyFn<Req> for FixedKey<K, F> {
    type Key = K;

    fn peer_key(&self, _req: &Req) -> Option<K> {
        Some(self.key.clone())
    }

    fn goes_to(&self, _req: &Req, peer: &K) -> bool {
        *peer == self.key
    }

    fn interrupt_token(&self, req: &mut Req) -> Option<Interrupt> {
        self.key_fn.interrupt_token(req)
    }

    fn caller_deadline(&self, req: &Req, propagation: &Propagation) -> Option<Duration> {
        self.key_fn.caller_deadline(req, propagation)
    }

    fn write_deadline(&self, req: &mut Req, deadline: Duration, propagation: &Propagation) {
        self.key_fn.write_deadline(req, deadline, propagation);
    }

    fn propagates(&self) -> bool {
        self.key_fn.propagates()
    }

    fn latency_hints<'r>(&self, req: &'r Req) -> LatencyHints<'r> {
        self.key_fn.latency_hints(req)
    }
}
