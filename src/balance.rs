//! Balancer mode: the layer placed per endpoint, under a balancer that routes by readiness.
//! (For a direct client of one peer, see [`FixedPeer`](crate::FixedPeer).)
//!
//! A call to a silent peer fails fast in no time, and a call to a killed server is refused
//! at once, so behind a load balancer such an endpoint looks like the fastest, least
//! loaded one and attracts the traffic. An [`Endpoint`] is instead *held out*, not ready,
//! while its peer is silent or its calls failed to reach it twice in a row (refused,
//! reset), until its probe is due: its `poll_ready` is `Pending`, and it wakes when the
//! probe comes due, the peer answers or changes state, so `tower::balance::p2c` routes
//! around it. Under the `balance` feature its [`Load`](tower::load::Load) is the inner
//! service's, the worst there is while it is held out ([`EndpointLoad::Silent`]).
//!
//! Give each endpoint a probe: with [`EndpointLayer::probe_with`] the endpoint sends probes
//! of its own in the background, every quarter of
//! [`ejection_time`](crate::Builder::ejection_time)'s `base`, no caller's call is a probe,
//! and one miss or one refused call holds it out (the probe confirms the peer is gone or
//! brings the endpoint back), so a lone caller loses only the call in flight. Without one
//! the probe is the next caller's call (the endpoint is ready for it, with the best load),
//! which fails if the peer is still away: the endpoint is held out after two misses (its
//! peer silent) or two refusals, and its probes are spaced as Envoy ejects, `base` (1s)
//! after it is held out, twice as long after each failed probe, at most `max` (4s).
//!
//! At most `max_ejection_percent` (default 50%, like Envoy's outlier detection) of the
//! endpoints made from one layer are held out at once, rounded down: a cause all of them
//! share (the caller's own network) cannot empty the balancer. An endpoint over the cap
//! stays ready: if its peer is silent its calls fail fast (refusals,
//! [`was_sent`](crate::Interrupted::was_sent) false), if its calls fail at once (connections
//! refused) they go through and fail as quickly on their own, until a probe gets through; its
//! load is the worst between its probes, and the
//! best when its probe is due or its peer is back, so a balancer still sends it its probes
//! and takes it back. When endpoints leave, the cap is recomputed and a held-out endpoint
//! over it is let go. After [`shutdown`](crate::InterruptHandle::shutdown) no endpoint is
//! held out: each is ready (woken if it waited), and its calls are refused at once.
//!
//! ```
//! use std::net::SocketAddr;
//! use tower::{discover::ServiceList, service_fn, BoxError, Layer};
//! use tower_adaptive_timeout::AdaptiveTimeoutLayer;
//!
//! # fn main() -> Result<(), BoxError> {
//! let layer = AdaptiveTimeoutLayer::builder(|addr: &SocketAddr| *addr).build()?;
//! let addrs: Vec<SocketAddr> = vec!["10.0.0.7:9000".parse()?, "10.0.0.8:9000".parse()?];
//! let endpoints = addrs.iter().map(|&addr| {
//!     let client = service_fn(|a: SocketAddr| async move { Ok::<_, BoxError>(a) });
//!     layer.for_endpoint(addr).layer(client)
//! });
//! let _discover = ServiceList::new(endpoints.collect::<Vec<_>>());
//! // tower::balance::p2c::Balance::new(_discover), with `PeakEwma` or `PendingRequests`
//! // under each endpoint (feature `balance`) for its load.
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::{AllSamples, ClassifyResponse};
use crate::error::BoxError;
use crate::events::StateChanges;
use crate::fixed::FixedKey;
use crate::future::{Head, ResponseFuture};
use crate::peer::key::{KeyFn, PeerKey};
use crate::peer::table::{EndpointSet, PeerTable};
use crate::peer::Peer;
use crate::service::AdaptiveTimeout;
use crate::PeerState;

mod hold;
mod probe;

use self::hold::{Ejection, FAILURES_TO_HOLD};
use self::probe::Probe;

pub use crate::peer::table::{
    DEFAULT_BASE_EJECTION_TIME, DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_MAX_EJECTION_TIME,
};

/// Makes [`Endpoint`]s for one peer; from
/// [`AdaptiveTimeoutLayer::for_endpoint`](crate::AdaptiveTimeoutLayer::for_endpoint).
#[derive(Clone)]
pub struct EndpointLayer<K, F, C = AllSamples> {
    table: Arc<PeerTable<K>>,
    key_fn: F,
    classify: C,
    key: K,
    probe: Option<Probe>,
}

impl<K, F, C> EndpointLayer<K, F, C> {
    pub(crate) fn new(table: Arc<PeerTable<K>>, key_fn: F, classify: C, key: K) -> Self {
        EndpointLayer {
            table,
            key_fn,
            classify,
            key,
            probe: None,
        }
    }

    /// Probes the endpoint, while it is held out, with calls of its own: `probe` makes
    /// one (a health check, a cheap idempotent request through a clone of the client,
    /// below any load measurement, as fast as the endpoint's calls: it is held to a
    /// probe's deadline, at most the policy's `cold_start`, and a probe slower than that
    /// keeps the endpoint held out), run in the background on the tokio runtime every
    /// quarter of [`ejection_time`](crate::Builder::ejection_time)'s `base` (250ms by
    /// default, at least 10ms), with no doubling: they cost the callers nothing. No
    /// caller's call is then a probe, the endpoint stays held out until a probe is
    /// answered, and one miss (a call that ran out its deadline with no answer from the
    /// peer since it started) or one call that failed to reach the peer is enough to hold
    /// it out: the probe, not a second caller's call, tells whether the peer is gone.
    /// Without a tokio runtime at hand the next caller's call is the probe, as without
    /// `probe_with`.
    pub fn probe_with<G, Fut, T, E>(mut self, probe: G) -> Self
    where
        G: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.probe = Some(probe::boxed(probe));
        self
    }
}

impl<K: std::fmt::Debug, F, C> std::fmt::Debug for EndpointLayer<K, F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointLayer")
            .field("peer", &self.key)
            .finish_non_exhaustive()
    }
}

impl<S, K: PeerKey, F: Clone, C: Clone> Layer<S> for EndpointLayer<K, F, C> {
    type Service = Endpoint<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let key_fn = FixedKey::new(self.key.clone(), self.key_fn.clone());
        let classify = self.classify.clone();
        Endpoint::new(
            AdaptiveTimeout::new(inner, self.table.clone(), key_fn, classify),
            self.table.clone(),
            self.key.clone(),
            self.probe.clone(),
        )
    }
}

/// The layer over one balanced endpoint: every call goes to its peer, fixed when it was
/// made (the request's own key is not asked for; its token, `Deadline` and propagated
/// budget still are). Not ready while it is held out: its peer silent, or its calls
/// refused twice in a row (with background probes: one miss or one refusal), and no probe
/// due. For a balancer only: a direct client wants
/// [`FixedPeer`](crate::FixedPeer). Clones count as the same endpoint.
pub struct Endpoint<S, K: PeerKey, F, C = AllSamples> {
    inner: AdaptiveTimeout<S, K, FixedKey<K, F>, C>,
    /// Makes its probes, if they go in the background.
    probe: Option<Probe>,
    table: Arc<PeerTable<K>>,
    key: K,
    /// The peer, as last looked up.
    peer: Option<Arc<Peer>>,
    /// Whether this endpoint counts as held out in its set.
    held: bool,
    /// What wakes a held-out endpoint: the peer's next change of state, its probe time.
    wake: Option<Pin<Box<Wake>>>,
    /// The ejections in a row while the peer is silent or refusing.
    ejection: Option<Ejection>,
}

/// When `peer`'s endpoint, ejected, may take its next probe: when its `ejection` ends,
/// and for a silent peer no sooner than the peer's own backoff allows (`None`: a probe of
/// the peer is in flight).
fn probe_at(peer: &Peer, ejection: &Ejection, now: Instant) -> Option<Instant> {
    let peer_due = match peer.state().is_open() {
        true => Some(now),
        false => peer.probe_due_at(),
    };
    peer_due.map(|at| at.max(ejection.until()))
}

/// Whether `peer` is out: silent, or its calls failed to reach it in a row. With probes
/// in the `background` one miss (the peer suspect) or one failure is enough: a probe, not
/// a caller's call, then confirms it or brings the endpoint back, so a lone caller loses
/// one call to a dead endpoint instead of two.
fn is_out(peer: &Peer, background: bool) -> bool {
    let state = peer.state();
    if background {
        return state != PeerState::Healthy || peer.failing() >= 1;
    }
    !state.is_open() || peer.failing() >= FAILURES_TO_HOLD
}

/// The layer over an endpoint's client.
type Inner<S, K, F, C> = AdaptiveTimeout<S, K, FixedKey<K, F>, C>;

impl<S, K: PeerKey, F, C> Endpoint<S, K, F, C> {
    fn new(
        inner: Inner<S, K, F, C>,
        table: Arc<PeerTable<K>>,
        key: K,
        probe: Option<Probe>,
    ) -> Self {
        table.endpoints.join(&key);
        Endpoint {
            inner,
            probe,
            table,
            key,
            peer: None,
            held: false,
            wake: None,
            ejection: None,
        }
    }

    /// The peer this endpoint calls.
    pub fn peer(&self) -> &K {
        &self.key
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// Whether the endpoint is held out now: its peer is silent (or probing; with background
    /// probes, suspect too), or its calls failed to reach it in a row, and its probe is not
    /// due. An endpoint over its set's
    /// cap is not held out.
    pub fn is_held_out(&self) -> bool {
        self.held
    }

    /// The tracked peer, looked up again once the table has let it go.
    fn tracked(&mut self) -> Option<Arc<Peer>> {
        match &self.peer {
            Some(peer) if !peer.is_retired() => Some(peer.clone()),
            _ => {
                self.wake = None;
                let peer = self.table.peer(&self.key, Instant::now())?;
                self.peer = Some(peer.clone());
                Some(peer)
            }
        }
    }

    /// Whether to hold the endpoint out now; if so, the task is registered to be woken
    /// when the peer's state changes, the set shrinks, or the probe comes due.
    fn held_out(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let Some(peer) = self.tracked() else {
                self.ejection = None;
                return self.release();
            };
            let wake = self.wake.get_or_insert_with(|| {
                Box::pin(Wake::new(peer.state_changes(), &self.table.endpoints))
            });
            // Registered before the state is read: a change after the read wakes us.
            wake.as_mut().enable();
            // After shutdown every call is refused at once: nothing to hold out for.
            if !is_out(&peer, self.probe.is_some()) || self.table.is_shut_down() {
                (self.ejection, self.wake) = (None, None);
                return self.release();
            }
            let now = Instant::now();
            let times = self.table.endpoints.times();
            let ejection = match &mut self.ejection {
                Some(ejection) => {
                    ejection.update(now, times);
                    ejection
                }
                None => {
                    let background = self.probe.is_some();
                    self.ejection
                        .insert(Ejection::start(now, times, background))
                }
            };
            let due = probe_at(&peer, ejection, now);
            if due.is_some_and(|at| now >= at) {
                let table = &self.table;
                if probe::send(self.probe.as_ref(), table, &self.key) {
                    ejection.sent(now, times);
                    continue;
                }
                ejection.open();
                self.wake = None;
                return self.release();
            }
            if !self.hold() {
                // Over the cap: ready, its ejection kept to space its probes; its load
                // brings the balancer back to it when its probe is due or its peer is back.
                return false;
            }
            match self.wake.as_mut().map(|w| w.as_mut().poll(cx, due)) {
                Some(Poll::Pending) => return true,
                _ => self.wake = None,
            }
        }
    }

    /// Counts the endpoint as held out, if its set's cap allows (still allows, when it
    /// is held out already: endpoints may have left the set since).
    fn hold(&mut self) -> bool {
        self.held = match self.held {
            true => self.table.endpoints.keep(&self.key),
            false => self.table.endpoints.hold(&self.key),
        };
        self.held
    }

    /// No longer held out. Returns `false`, for `held_out`.
    fn release(&mut self) -> bool {
        if std::mem::take(&mut self.held) {
            self.table.endpoints.release(&self.key);
        }
        false
    }
}

impl<S, Req, K, F, C> Service<Req> for Endpoint<S, K, F, C>
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
        if self.held_out(cx) {
            return Poll::Pending;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(ejection) = &mut self.ejection {
            ejection.called();
        }
        self.inner.call(req)
    }
}

impl<S: Clone, K: PeerKey, F: Clone, C: Clone> Clone for Endpoint<S, K, F, C> {
    fn clone(&self) -> Self {
        let (table, key) = (self.table.clone(), self.key.clone());
        Endpoint::new(self.inner.clone(), table, key, self.probe.clone())
    }
}

impl<S, K: PeerKey, F, C> Drop for Endpoint<S, K, F, C> {
    fn drop(&mut self) {
        self.table.endpoints.leave(&self.key, self.held);
    }
}

impl<S: std::fmt::Debug, K: PeerKey, F, C> std::fmt::Debug for Endpoint<S, K, F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("peer", &self.key)
            .field("held_out", &self.held)
            .field("inner", self.inner.get_ref())
            .finish_non_exhaustive()
    }
}

/// An endpoint's load: the inner service's while its peer answers, worse than any while
/// it is held out, and better than any when its probe is due.
///
/// A probe is due only now and then (see
/// [`Builder::ejection_time`](crate::Builder::ejection_time)), and one call goes: it must
/// win over the inner load, which, from the calls cut while the peer was silent, may be
/// high for a long time (a peak-EWMA estimate decays over seconds) and would otherwise
/// keep the peer from ever being probed, and so from rejoining.
#[cfg(feature = "balance")]
#[cfg_attr(docsrs, doc(cfg(feature = "balance")))]
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub enum EndpointLoad<M> {
    /// The endpoint's probe is due: lower than any load, so the probe goes. Also an
    /// endpoint whose peer went out since the balancer last polled it (picked, it is
    /// polled, and held out), and one over the ejection cap whose peer came back since
    /// (picked, it is polled, and its ejection ends).
    ProbeDue,
    /// The inner service's load.
    Load(M),
    /// The peer is silent or refusing calls (or its probe is in flight) and no probe is
    /// due: the worst load there is, held out or over the ejection cap.
    Silent,
}

#[cfg(feature = "balance")]
#[cfg_attr(docsrs, doc(cfg(feature = "balance")))]
impl<S: tower::load::Load, K: PeerKey, F, C> tower::load::Load for Endpoint<S, K, F, C> {
    type Metric = EndpointLoad<S::Metric>;

    fn load(&self) -> Self::Metric {
        use EndpointLoad::{Load, ProbeDue, Silent};
        let load = || Load(self.inner.get_ref().load());
        // A ready endpoint waits in the balancer's ready set, not polled again until it is
        // picked: whatever its peer did since its last poll, its load gets it picked when
        // that poll has something to do.
        let Some(peer) = &self.peer else {
            return load();
        };
        let out = is_out(peer, self.probe.is_some());
        let Some(ejection) = &self.ejection else {
            // Out since the last poll: picked, its poll holds it out.
            return if out { ProbeDue } else { load() };
        };
        let now = Instant::now();
        // Not held out (over the cap) and back since the last poll, or let in for its
        // probe, or its probe due: picked, its poll clears its ejection or lets the probe go.
        let due = || probe_at(peer, ejection, now).is_some_and(|at| at <= now);
        match self.held {
            false if !out || ejection.probe_due() || due() => ProbeDue,
            _ => Silent,
        }
    }
}

pin_project! {
    /// A held-out endpoint's wake-up: its peer's next change of state, endpoints leaving
    /// its set (the cap shrinks), or its probe time.
    struct Wake {
        #[pin]
        changed: OwnedNotified,
        #[pin]
        shrunk: OwnedNotified,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl Wake {
    fn new<K: PeerKey>(watch: &StateChanges, set: &EndpointSet<K>) -> Self {
        Wake {
            changed: watch.notified(),
            shrunk: set.shrunk(),
            sleep: None,
        }
    }

    /// Registers for the notifications, so that one sent from now on wakes the task.
    fn enable(self: Pin<&mut Self>) {
        let this = self.project();
        this.changed.enable();
        this.shrunk.enable();
    }

    /// Ready when the peer's state changed, the set shrank, or `due` (if any) has come.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>, due: Option<Instant>) -> Poll<()> {
        let mut this = self.project();
        if this.changed.poll(cx).is_ready() || this.shrunk.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let Some(due) = due else {
            return Poll::Pending;
        };
        match this.sleep.as_mut().as_pin_mut() {
            Some(sleep) if sleep.deadline() != due => sleep.reset(due),
            Some(_) => {}
            None => this.sleep.set(Some(tokio::time::sleep_until(due))),
        }
        match this.sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx),
            None => Poll::Pending,
        }
    }
}
