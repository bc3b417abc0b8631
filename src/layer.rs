//! The layer and its builder: policy, per-peer overrides and table bounds, checked once at
//! `build()`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::balance::{EndpointLayer, DEFAULT_MAX_EJECTION_PERCENT};
use crate::classify::{AllSamples, Classifier, Outcome};
use crate::fixed::{FixedKey, FixedPeerLayer};
use crate::handle::{AdaptiveTimeoutHandle, InterruptHandle};
use crate::peer::key::Classed;
use crate::peer::key::{ByPeer, KeyFn, PeerKey};
use crate::peer::table::{EjectionTimes, DEFAULT_BASE_EJECTION_TIME, DEFAULT_MAX_EJECTION_TIME};
use crate::peer::table::{PeerTable, Policies};
use crate::policy::{PolicyError, TimeoutPolicy, MAX_DEADLINE};
use crate::propagate::Propagation;
use crate::service::AdaptiveTimeout;

/// Default bound on tracked peers.
pub const DEFAULT_MAX_PEERS: usize = 10_000;
/// Default time after which a peer with no calls may be forgotten.
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(10 * 60);
/// Default bound on latency classes per peer.
pub const DEFAULT_MAX_CLASSES: usize = 8;
/// Most latency classes per peer a layer accepts.
pub const MAX_CLASSES: usize = 64;

/// Wraps services in [`AdaptiveTimeout`]. Every service made from one layer (and every clone
/// of those) shares one peer table.
///
/// ```
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_adaptive_timeout::{AdaptiveTimeoutLayer, TimeoutPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// struct Req { peer: &'static str }
/// let layer = AdaptiveTimeoutLayer::builder(|r: &Req| r.peer)
///     .policy(TimeoutPolicy::default())
///     .build()?;
/// let handle = layer.handle();
/// let svc = ServiceBuilder::new()
///     .layer(layer)
///     .service(service_fn(|_: Req| async { Ok::<_, tower::BoxError>("pong") }));
/// assert_eq!(svc.oneshot(Req { peer: "10.0.0.7:9000" }).await?, "pong");
/// assert_eq!(&*handle.snapshot()[0].peer, "10.0.0.7:9000");
/// # Ok(()) }
/// ```
pub struct AdaptiveTimeoutLayer<K, F, C = AllSamples> {
    table: Arc<PeerTable<K>>,
    key_fn: F,
    classify: C,
}

impl AdaptiveTimeoutLayer<(), ()> {
    /// Starts a layer that keys requests with `key_fn` (any `Fn(&Req) -> K`).
    ///
    /// A closure sees only the key: for `http::Request`s, use [`http`](Self::http) or
    /// [`http_keyed`](Self::http_keyed), which also read the caller's
    /// [`Deadline`](crate::Deadline), hand out interrupt tokens and propagate deadlines;
    /// `build()` refuses a closure with a [`Propagation`].
    pub fn builder<Req, F: KeyFn<Req>>(key_fn: F) -> Builder<F::Key, F> {
        let propagates = key_fn.propagates();
        Builder {
            propagates,
            ..Builder::new(key_fn)
        }
    }

    /// Starts a layer for `http::Request`s, keyed by scheme and authority.
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn http() -> Builder<crate::HttpPeer, ByPeer> {
        Builder::new(ByPeer)
    }

    /// Starts a layer for `http::Request`s keyed by your own function, which still gets
    /// interrupt tokens, [`Deadline`](crate::Deadline) and propagation.
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn http_keyed<B, K, F>(key_fn: F) -> Builder<K, crate::HttpKeyFn<F>>
    where
        K: PeerKey,
        F: Fn(&http::Request<B>) -> Option<K>,
    {
        Builder::new(crate::HttpKeyFn(key_fn))
    }

    /// Starts a layer for requests that name their peer through
    /// [`HasPeer`](crate::HasPeer), with key type `K`.
    pub fn by_peer<K: PeerKey>() -> Builder<K, ByPeer> {
        Builder::new(ByPeer)
    }
}

impl<K: PeerKey, F, C> AdaptiveTimeoutLayer<K, F, C> {
    /// A handle to fire interrupts into calls in flight.
    pub fn interrupt_handle(&self) -> InterruptHandle<K> {
        InterruptHandle::new(self.table.clone())
    }

    /// A handle to read and steer the layer at runtime.
    pub fn handle(&self) -> AdaptiveTimeoutHandle<K> {
        AdaptiveTimeoutHandle::new(self.table.clone())
    }

    /// The layer for a direct client of one peer (a tonic `Channel`, a pool to one host),
    /// whose calls all go to `peer` whatever their requests name: a [`FixedPeer`], ready
    /// when its inner service is, whose calls to a silent peer fail fast as through this
    /// layer. Not for a balancer: use [`for_endpoint`](Self::for_endpoint) there. With
    /// response bodies watched (feature `http`), `with_bodies().for_peer(peer)`.
    ///
    /// [`FixedPeer`]: crate::FixedPeer
    pub fn for_peer(&self, peer: K) -> FixedPeerLayer<K, F, C>
    where
        F: Clone,
        C: Clone,
    {
        let fixed = self.fixed(peer);
        FixedPeerLayer::new(fixed.table, fixed.key_fn, fixed.classify)
    }

    /// This layer with every call's peer fixed to `peer` (the key function still gives
    /// tokens, deadlines and classes): the layer under [`for_peer`](Self::for_peer) and
    /// the body layer's own.
    pub(crate) fn fixed(&self, peer: K) -> AdaptiveTimeoutLayer<K, FixedKey<K, F>, C>
    where
        F: Clone,
        C: Clone,
    {
        AdaptiveTimeoutLayer {
            table: self.table.clone(),
            key_fn: FixedKey::new(peer, self.key_fn.clone()),
            classify: self.classify.clone(),
        }
    }

    /// The layer for one endpoint of a balancer (`tower::balance`), whose calls all go to
    /// `peer`: its services are *not ready* while `peer` is silent or refuses calls, so
    /// the balancer routes around it (see [`Endpoint`]). Endpoints made from one layer
    /// share its peer table and its
    /// [`max_ejection_percent`](Builder::max_ejection_percent). Not for a direct client,
    /// whose calls would wait in `poll_ready`: use [`for_peer`](Self::for_peer) there.
    ///
    /// [`Endpoint`]: crate::Endpoint
    pub fn for_endpoint(&self, peer: K) -> EndpointLayer<K, F, C>
    where
        F: Clone,
        C: Clone,
    {
        let (key_fn, classify) = (self.key_fn.clone(), self.classify.clone());
        EndpointLayer::new(self.table.clone(), key_fn, classify, peer)
    }
}

impl<K, F, C> AdaptiveTimeoutLayer<K, F, C> {
    /// The layer's peer table (for [`hedged`](Self::hedged)).
    pub(crate) fn table(&self) -> &Arc<PeerTable<K>> {
        &self.table
    }
}

impl<S, K, F: Clone, C: Clone> Layer<S> for AdaptiveTimeoutLayer<K, F, C> {
    type Service = AdaptiveTimeout<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let (table, key_fn) = (self.table.clone(), self.key_fn.clone());
        AdaptiveTimeout::new(inner, table, key_fn, self.classify.clone())
    }
}

impl<K, F: Clone, C: Clone> Clone for AdaptiveTimeoutLayer<K, F, C> {
    fn clone(&self) -> Self {
        AdaptiveTimeoutLayer {
            table: self.table.clone(),
            key_fn: self.key_fn.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<K, F, C> std::fmt::Debug for AdaptiveTimeoutLayer<K, F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveTimeoutLayer")
            .field("peers", &self.table.len())
            .finish_non_exhaustive()
    }
}

/// Configures an [`AdaptiveTimeoutLayer`]; nothing is checked until [`Builder::build`].
#[derive(Debug)]
#[must_use = "call .build() to get the layer"]
pub struct Builder<K, F, C = AllSamples> {
    key_fn: F,
    classify: C,
    policy: TimeoutPolicy,
    overrides: Vec<(K, TimeoutPolicy)>,
    max_peers: usize,
    idle_ttl: Duration,
    interrupt_tokens: bool,
    propagation: Propagation,
    jitter_seed: Option<u64>,
    classifier: Classifier,
    max_ejection_percent: u8,
    ejection_times: EjectionTimes,
    /// Whether the key function honours a `Propagation`.
    propagates: bool,
    max_classes: usize,
}

impl<K: PeerKey, F> Builder<K, F> {
    fn new(key_fn: F) -> Self {
        Builder {
            key_fn,
            classify: AllSamples,
            policy: TimeoutPolicy::default(),
            overrides: Vec::new(),
            max_peers: DEFAULT_MAX_PEERS,
            idle_ttl: DEFAULT_IDLE_TTL,
            interrupt_tokens: true,
            propagation: Propagation::none(),
            jitter_seed: None,
            classifier: Classifier::default(),
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
            ejection_times: EjectionTimes {
                base: DEFAULT_BASE_EJECTION_TIME,
                max: DEFAULT_MAX_EJECTION_TIME,
            },
            propagates: true,
            max_classes: DEFAULT_MAX_CLASSES,
        }
    }
}

impl<K: PeerKey, F, C> Builder<K, F, C> {
    /// The policy for every peer without an override.
    pub fn policy(mut self, policy: TimeoutPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// A policy for one peer, in place of the default.
    pub fn peer_policy(mut self, peer: K, policy: TimeoutPolicy) -> Self {
        self.overrides.push((peer, policy));
        self
    }

    /// At most this many peers are tracked (default 10,000). Calls to further peers get the
    /// default policy's cold-start deadline. With the `metrics` feature, at most this many
    /// distinct peers get series of their own over the layer's life (see the `export`
    /// module).
    pub fn max_peers(mut self, max_peers: usize) -> Self {
        self.max_peers = max_peers;
        self
    }

    /// A peer with no calls for this long may be forgotten (default 10 minutes).
    pub fn idle_ttl(mut self, idle_ttl: Duration) -> Self {
        self.idle_ttl = idle_ttl;
        self
    }

    /// Whether to give each call a cooperative [`Interrupt`](crate::Interrupt) token where
    /// its request can carry one (`http::Request` extensions). On by default; a token costs
    /// five allocations per call: the token (two), and the extensions map that holds it in
    /// a request that has none yet (three; fewer in one that has).
    pub fn interrupt_tokens(mut self, on: bool) -> Self {
        self.interrupt_tokens = on;
        self
    }

    /// Which headers carry the caller's deadline in and out of `http::Request`s (default:
    /// none). The request's [`Deadline`](crate::Deadline) extension applies either way.
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// Seeds the random jitter added to probe backoff, for reproducible runs. By default
    /// each layer draws its own seed, so many clients do not probe a silent peer in step.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    /// Decides what an inner service's error says about its peer (see [`classify`]):
    /// a latency sample, an answer only, or a failure to reach it. The default,
    /// [`default_classifier`], takes transport errors for failures and any other error
    /// for an answer only. Successful responses are classified by
    /// [`classify_responses`](Self::classify_responses).
    ///
    /// [`classify`]: crate::classify
    /// [`default_classifier`]: crate::classify::default_classifier
    pub fn classify_errors<E>(mut self, classify: E) -> Self
    where
        E: Fn(&(dyn std::error::Error + 'static)) -> Outcome + Send + Sync + 'static,
    {
        self.classifier = Classifier::new(classify);
        self
    }

    /// How long a balanced endpoint ([`AdaptiveTimeoutLayer::for_endpoint`]) held out
    /// waits before its next probe: `base` (default 1s) the first time, twice as long
    /// after each failed probe, at most `max` (default 4s). Longer ejections cost the
    /// callers fewer probes of a peer that stays away (each waits out its deadline, or
    /// fails at once), and readmit one that came back later. `Duration::ZERO` probes as
    /// often as the peer's own probe backoff allows (as a direct client does); a `base`
    /// longer than `max`, or a `max` over [`MAX_DEADLINE`] (24h; `Duration::MAX` would
    /// hold an endpoint out for good), is refused at [`build`](Self::build).
    pub fn ejection_time(mut self, base: Duration, max: Duration) -> Self {
        self.ejection_times = EjectionTimes { base, max };
        self
    }

    /// At most this share (in percent, default 50) of the balanced endpoints made from the
    /// layer ([`AdaptiveTimeoutLayer::for_endpoint`]) is held out at once, rounded down: a
    /// cause they all share cannot empty a balancer. 0 never holds one out.
    pub fn max_ejection_percent(mut self, percent: u8) -> Self {
        self.max_ejection_percent = percent;
        self
    }

    /// At most this many latency classes per peer (default 8, at most 64; `0` turns
    /// classes off): see [`class`](crate::class). Each holds a latency history of its own,
    /// so a peer holds at most `1 + max_classes` of them, up to `1 + max_classes` times
    /// its policy's [`max_window_bytes`](TimeoutPolicy::max_window_bytes).
    pub fn max_classes(mut self, max_classes: usize) -> Self {
        self.max_classes = max_classes;
        self
    }

    /// Names each request's latency class with `classify` (see [`class`](crate::class)):
    /// requests of one peer and one class share a latency history and a deadline; `None`
    /// leaves a call in its peer's own history. For `http::Request`s the path (or a
    /// [`LatencyClass`](crate::LatencyClass) extension) already names it.
    ///
    /// ```
    /// use tower_adaptive_timeout::AdaptiveTimeoutLayer;
    ///
    /// struct Query { host: String, report: bool }
    /// let layer = AdaptiveTimeoutLayer::builder(|q: &Query| q.host.clone())
    ///     .latency_class(|q: &Query| q.report.then_some("report"))
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn latency_class<Req, L>(self, classify: L) -> Builder<K, Classed<F, L>, C>
    where
        L: Fn(&Req) -> Option<&str>,
    {
        self.retype(|key_fn| Classed::new(key_fn, classify), |c| c)
    }

    /// Decides what each successful response says about its peer (see [`classify`]): a
    /// latency sample (the default, [`AllSamples`], for every response), an answer only
    /// (e.g. [`HttpStatus`] for an HTTP 5xx or 429 or a gRPC error status), or a failure.
    /// `classify` is any [`ClassifyResponse`] of the inner service's response type,
    /// closures `Fn(&Response) -> Outcome` included; it becomes a type parameter of the
    /// layer, its services and their futures, so the default costs nothing per call.
    ///
    /// [`classify`]: crate::classify
    /// [`ClassifyResponse`]: crate::classify::ClassifyResponse
    /// [`HttpStatus`]: crate::classify::HttpStatus
    pub fn classify_responses<C2>(self, classify: C2) -> Builder<K, F, C2> {
        self.retype(|key_fn| key_fn, |_| classify)
    }

    /// The same settings with the key function and the response classifier mapped.
    fn retype<F2, C2>(
        self,
        key_fn: impl FnOnce(F) -> F2,
        classify: impl FnOnce(C) -> C2,
    ) -> Builder<K, F2, C2> {
        Builder {
            key_fn: key_fn(self.key_fn),
            classify: classify(self.classify),
            policy: self.policy,
            overrides: self.overrides,
            max_peers: self.max_peers,
            idle_ttl: self.idle_ttl,
            interrupt_tokens: self.interrupt_tokens,
            propagation: self.propagation,
            jitter_seed: self.jitter_seed,
            classifier: self.classifier,
            max_ejection_percent: self.max_ejection_percent,
            ejection_times: self.ejection_times,
            propagates: self.propagates,
            max_classes: self.max_classes,
        }
    }

    /// Checks the configuration and builds the layer.
    pub fn build(self) -> Result<AdaptiveTimeoutLayer<K, F, C>, PolicyError> {
        self.policy.validate()?;
        let mut overrides = HashMap::with_capacity(self.overrides.len());
        for (peer, policy) in self.overrides {
            policy.validate().map_err(|e| e.for_peer(&peer))?;
            overrides.insert(peer, Arc::new(policy));
        }
        if self.max_peers == 0 {
            return Err(PolicyError::new("max_peers", "must be at least 1"));
        }
        if self.idle_ttl.is_zero() {
            return Err(PolicyError::new("idle_ttl", "must be greater than zero"));
        }
        if self.propagation.is_on() && !self.propagates {
            let why = "the key function cannot read or write deadline headers (a closure sees \
                       only the key): key http::Request with http() or http_keyed(..)";
            return Err(PolicyError::new("propagation", why));
        }
        if self.max_ejection_percent > 100 {
            let why = "must be a percentage, at most 100";
            return Err(PolicyError::new("max_ejection_percent", why));
        }
        if self.ejection_times.base > self.ejection_times.max {
            let why = "the first ejection (base) must not be longer than the longest (max)";
            return Err(PolicyError::new("ejection_time", why));
        }
        if self.ejection_times.max > MAX_DEADLINE {
            // Longer is "held out for good": a balancer whose endpoints all are would hang.
            let why = format!(
                "the longest ejection (max) must be at most {MAX_DEADLINE:?}, got {:?}",
                self.ejection_times.max
            );
            return Err(PolicyError::new("ejection_time", why));
        }
        if self.max_classes > MAX_CLASSES {
            return Err(PolicyError::new(
                "max_classes",
                format!("must be at most {MAX_CLASSES}, got {}", self.max_classes),
            ));
        }
        let policies = Policies {
            default: Arc::new(self.policy),
            overrides,
        };
        let table = PeerTable::new(
            policies,
            self.max_peers,
            self.idle_ttl,
            self.interrupt_tokens,
            self.propagation,
            self.jitter_seed.unwrap_or_else(random_seed),
        )
        .with_classifier(self.classifier)
        .with_max_classes(self.max_classes);
        table.endpoints.set_max_percent(self.max_ejection_percent);
        table.endpoints.set_times(self.ejection_times);
        Ok(AdaptiveTimeoutLayer {
            table: Arc::new(table),
            key_fn: self.key_fn,
            classify: self.classify,
        })
    }
}

/// A seed no other layer (in this or another process) is likely to share.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
