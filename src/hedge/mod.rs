//! Hedged calls: after the request's own learned quantile (its latency class's at its
//! peer, or the peer's), a second copy of a slow request goes out, the first answer wins,
//! and the loser is interrupted through its token.
//!
//! The delay comes from the per-peer and per-class histograms the layer already keeps:
//! each peer publishes its hedge delays (the [`Hedging::quantile`] of its window and of
//! each class's) where it publishes its deadlines, so a hedged call reads one atomic word and computes no quantile
//! (ARCHITECTURE.md, invariant 5). A copy goes only
//!
//! * for a request [`CloneRequest`] copies (the opt-in: nothing else is ever sent twice),
//! * to a peer whose window (its class's, for a call of a latency class) holds `min_samples`
//!   answers (never on a guess),
//! * to a peer that is neither silent nor probing, with fewer than
//!   [`Hedging::max_in_flight`] calls in flight,
//! * within the budget ([`budget`]): at most [`Hedging::max_extra_load`] more calls than
//!   requests, saved up to [`Hedging::burst`].
//!
//! The first answer wins. The loser's token (a [`child`](crate::Interrupt::child) of the
//! caller's, its own) is fired with [`Reason::Hedged`](crate::Reason::Hedged), so work
//! deeper in its chain stops, and its call is dropped: like a call its caller drops, it is
//! neither a latency sample nor a miss (`InFlight::drop`, invariant 4), and it counts in
//! [`PeerSnapshot::hedge_interrupts`](crate::PeerSnapshot::hedge_interrupts).
//!
//! An error does not win: while the other copy runs, it is awaited. If both fail, the
//! caller gets the first copy's error, the one it would have had without hedging (a retry
//! policy above sees the same errors either way). A request that fails before its copy was
//! sent ends with its error at once: hedging is not retrying.

mod budget;
mod future;
mod settings;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use self::budget::Budget;
pub use self::future::HedgeFuture;
pub use self::settings::{
    CloneRequest, Hedging, DEFAULT_HEDGE_BURST, DEFAULT_HEDGE_QUANTILE, DEFAULT_MAX_EXTRA_LOAD,
    MAX_HEDGE_BURST,
};
use crate::classify::ClassifyResponse;
use crate::error::BoxError;
use crate::layer::AdaptiveTimeoutLayer;
use crate::peer::key::{KeyFn, PeerKey};
use crate::peer::table::PeerTable;
use crate::peer::Peer;
use crate::policy::PolicyError;
use crate::service::AdaptiveTimeout;

impl<K, F, C> AdaptiveTimeoutLayer<K, F, C> {
    /// This layer, with the requests `hedging` copies hedged: the service it makes sends a
    /// copy of a request still unanswered after its peer's [`Hedging::quantile`], takes
    /// the first answer and interrupts the other (see [`HedgeLayer`]). Every setting is
    /// checked here.
    ///
    /// The layer's peers publish their hedge delay from then on (each at its next
    /// recompute); a layer has one hedge quantile, the last one given.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
    /// use tower_adaptive_timeout::{AdaptiveTimeoutLayer, Hedging};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), BoxError> {
    /// #[derive(Clone)]
    /// struct Get { peer: &'static str }
    ///
    /// let layer = AdaptiveTimeoutLayer::builder(|r: &Get| r.peer).build()?;
    /// let hedged = layer.hedged(Hedging::new(|r: &Get| Some(r.clone())))?;
    /// let stats = hedged.clone();
    /// let svc = ServiceBuilder::new().layer(hedged).service(service_fn(|_: Get| async {
    ///     tokio::time::sleep(Duration::from_millis(5)).await;
    ///     Ok::<_, BoxError>("value")
    /// }));
    /// assert_eq!(svc.oneshot(Get { peer: "10.0.0.7:9000" }).await?, "value");
    /// // Nothing learned yet: no copy.
    /// assert_eq!(stats.stats().sent, 0);
    /// # Ok(()) }
    /// ```
    pub fn hedged<P>(&self, hedging: Hedging<P>) -> Result<HedgeLayer<K, F, C, P>, PolicyError>
    where
        F: Clone,
        C: Clone,
    {
        hedging.validate()?;
        let table = self.table().clone();
        table.hedge_quantile.set(hedging.quantile);
        let shared = Arc::new(Shared {
            budget: Budget::new(hedging.max_extra_load, hedging.burst),
            max_in_flight: hedging.max_in_flight,
            counts: Default::default(),
        });
        Ok(HedgeLayer {
            layer: self.clone(),
            table,
            clone: hedging.clone,
            shared,
        })
    }
}

/// The adaptive layer with hedged calls: made by
/// [`AdaptiveTimeoutLayer::hedged`]. Its services ([`Hedge`]) wrap the layer's own
/// ([`AdaptiveTimeout`]), so each copy is an ordinary call with its own deadline, and need
/// the inner service to be `Clone` (a `tower::buffer::Buffer` makes any service so). Clones
/// share the budget and the counts.
pub struct HedgeLayer<K, F, C, P> {
    layer: AdaptiveTimeoutLayer<K, F, C>,
    table: Arc<PeerTable<K>>,
    clone: P,
    shared: Arc<Shared>,
}

impl<K, F, C, P> HedgeLayer<K, F, C, P> {
    /// The counts of every service this layer made, since it was made.
    pub fn stats(&self) -> HedgeStats {
        self.shared.stats()
    }
}

impl<K, F: Clone, C: Clone, P: Clone> Clone for HedgeLayer<K, F, C, P> {
    fn clone(&self) -> Self {
        HedgeLayer {
            layer: self.layer.clone(),
            table: self.table.clone(),
            clone: self.clone.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<K, F, C, P> std::fmt::Debug for HedgeLayer<K, F, C, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<S, K, F: Clone, C: Clone, P: Clone> Layer<S> for HedgeLayer<K, F, C, P> {
    type Service = Hedge<S, K, F, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge {
            inner: self.layer.layer(inner),
            table: self.table.clone(),
            clone: self.clone.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// Counts of a [`HedgeLayer`]'s services, since the layer was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HedgeStats {
    /// Requests the services were called with, hedged or not.
    pub requests: u64,
    /// Copies sent: the extra calls. `sent / requests` is the extra load.
    pub sent: u64,
    /// Copies that answered before the request they copied.
    pub won: u64,
    /// Calls ended by the race: losers interrupted (with
    /// [`Reason::Hedged`](crate::Reason::Hedged)) because the other copy answered first,
    /// and copies still running when the request ended with the first's error.
    pub interrupted: u64,
    /// Copies due but not sent because the budget was spent.
    pub over_budget: u64,
    /// Copies due but not sent because the peer was silent or probing, or had
    /// [`Hedging::max_in_flight`] calls in flight.
    pub peer_refused: u64,
}

/// What a layer's services share: the budget and the counts.
struct Shared {
    budget: Budget,
    max_in_flight: usize,
    /// [`HedgeStats`]' fields, in order.
    counts: [AtomicU64; 6],
}

/// Which of [`HedgeStats`] to bump.
#[derive(Clone, Copy)]
enum Count {
    Requests = 0,
    Sent = 1,
    Won = 2,
    Interrupted = 3,
    OverBudget = 4,
    PeerRefused = 5,
}

impl Shared {
    fn count(&self, what: Count) {
        self.counts[what as usize].fetch_add(1, Relaxed);
    }

    fn stats(&self) -> HedgeStats {
        let [requests, sent, won, interrupted, over_budget, peer_refused] =
            self.counts.each_ref().map(|c| c.load(Relaxed));
        HedgeStats {
            requests,
            sent,
            won,
            interrupted,
            over_budget,
            peer_refused,
        }
    }

    /// Whether a copy may go to `peer` now: it is neither silent nor probing, it is under
    /// the in-flight limit, and the budget has a token (taken here).
    fn admit_copy(&self, peer: &Peer) -> bool {
        if !peer.state().is_open() || peer.in_flight() >= self.max_in_flight {
            self.count(Count::PeerRefused);
            return false;
        }
        if !self.budget.withdraw() {
            self.count(Count::OverBudget);
            return false;
        }
        true
    }
}

/// The adaptive service with hedged calls: made by [`HedgeLayer`]. A request its
/// [`CloneRequest`] copies, to a peer that has learned its latency, gets a copy after the
/// peer's hedge delay; every other request is one call, as without hedging.
pub struct Hedge<S, K, F, C, P> {
    inner: AdaptiveTimeout<S, K, F, C>,
    table: Arc<PeerTable<K>>,
    clone: P,
    shared: Arc<Shared>,
}

impl<S: Clone, K: Clone, F: Clone, C: Clone, P: Clone> Clone for Hedge<S, K, F, C, P> {
    fn clone(&self) -> Self {
        Hedge {
            inner: self.inner.clone(),
            table: self.table.clone(),
            clone: self.clone.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: std::fmt::Debug, K, F, C, P> std::fmt::Debug for Hedge<S, K, F, C, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, C, P> Hedge<S, K, F, C, P> {
    /// The request's peer and its hedge delay, if it has learned one: a table lookup and
    /// one atomic load.
    fn plan<Req>(&self, req: &Req) -> Option<(Arc<Peer>, Duration)>
    where
        K: PeerKey,
        F: KeyFn<Req, Key = K>,
    {
        let key_fn = self.inner.key_fn();
        let peer = self.table.get(&key_fn.peer_key(req)?)?;
        let after = peer.hedge_after(&key_fn.latency_hints(req))?;
        Some((peer, after))
    }
}

impl<S, Req, K, F, C, P> Service<Req> for Hedge<S, K, F, C, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    K: PeerKey,
    F: KeyFn<Req, Key = K> + Clone,
    C: ClassifyResponse<S::Response> + Clone,
    P: CloneRequest<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = HedgeFuture<S, K, F, C, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        self.shared.budget.deposit();
        self.shared.count(Count::Requests);
        // The clone function runs before anything is sent: if it panics, the panic leaves
        // here with nothing in flight and nothing counted but the request.
        let copy = self
            .plan(&req)
            .and_then(|(peer, after)| Some((peer, after, self.clone.clone_request(&req)?)));
        let Some((peer, after, copy)) = copy else {
            return HedgeFuture::single(self.inner.call(req));
        };
        // Each copy gets a token of its own (a child of the caller's, if the request carries
        // one), so interrupting the loser leaves the winner and the caller alone. The copy
        // was taken before, so it does not carry the first's token.
        let token = self.inner.key_fn().interrupt_token(&mut req);
        let first = self.inner.call(req);
        let shared = self.shared.clone();
        let race = future::Race::new(self.inner.clone(), (copy, after), token, peer, shared);
        HedgeFuture::hedged(first, race)
    }
}
