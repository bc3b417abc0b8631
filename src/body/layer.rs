//! The body layer and service: [`BodyTimeoutLayer`], [`BodyTimeout`], the extensions a
//! request sets ([`BodyIdle`], [`BodyDeadline`]), and the response future that wraps the
//! head's body in a [`TimeoutBody`].

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use super::idle::IdleRule;
use super::timeout_body::{BodySettings, Idle, TimeoutBody};
use crate::call::Ended;
use crate::classify::{AllSamples, ClassifyResponse};
use crate::error::BoxError;
use crate::fixed::FixedKey;
use crate::future::ResponseFuture;
use crate::handle::{AdaptiveTimeoutHandle, InterruptHandle};
use crate::layer::AdaptiveTimeoutLayer;
use crate::peer::key::{KeyFn, PeerKey};
use crate::propagate::Deadline;
use crate::service::{AdaptiveTimeout, Propagated};

/// A request's own idle deadline for its response body, in place of the layer's
/// [`IdleRule`]. Put it in the request's extensions.
///
/// It ends the body as asked, but counts against the peer (a miss for the silence
/// detector) only when it is at least the idle deadline the peer's own rule
/// ([`IdleRule::Learned`]) gives: a caller that asks for less says nothing about the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyIdle {
    /// At most this long between frames (too long for the clock, e.g. `Duration::MAX`:
    /// no idle deadline).
    After(Duration),
    /// No idle deadline for this body.
    Off,
}

/// A request's total deadline for the whole exchange, head and body, counted from the
/// call's start. Put it in the request's extensions. Without it a body has no total
/// deadline: only its idle deadline and interrupts end it.
///
/// It is the caller's deadline: it caps the head's deadline as a [`Deadline`] does (a head
/// it ends is no miss, [`DeadlineSource::Caller`](crate::DeadlineSource::Caller); one
/// already spent is refused with [`Reason::BudgetSpent`](crate::Reason::BudgetSpent)
/// before it reaches the inner service), and a body it ends is a miss for its peer only if
/// the body waited since its last frame at least the peer's own idle deadline. With
/// [`Propagation`](crate::Propagation) on, it is what the callee is told (shortened by
/// the caller's deadline, if that is shorter); a deadline too long for a header, such as
/// `Duration::MAX`, is no limit and is not written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyDeadline {
    /// The exchange must be over within this long (too long for the clock, e.g.
    /// `Duration::MAX`: no total deadline).
    Within(Duration),
    /// The request's [`Deadline`] extension covers the whole exchange, not only the head
    /// (no total deadline if the request has none).
    Caller,
}

/// How a [`BodyTimeout`]'s answer becomes a watched body: the call's body settings and
/// the layer's response classifier `C`. The marker of its [`ResponseFuture`].
#[derive(Clone, Copy, Debug)]
pub struct WithBody<C = AllSamples> {
    body: BodySettings,
    classify: C,
}

/// Wraps services in [`BodyTimeout`]: [`AdaptiveTimeout`] whose response bodies are
/// watched to their end. Made by [`AdaptiveTimeoutLayer::with_bodies`].
///
/// ```
/// use tower_adaptive_timeout::{AdaptiveTimeoutLayer, IdleRule};
///
/// # fn main() -> Result<(), tower_adaptive_timeout::PolicyError> {
/// let layer = AdaptiveTimeoutLayer::http().build()?;
/// let handle = layer.handle(); // the same table, with or without bodies
/// let bodies = layer.with_bodies().idle_rule(IdleRule::Learned);
/// # let _ = (handle, bodies);
/// # Ok(()) }
/// ```
pub struct BodyTimeoutLayer<K, F, C = AllSamples> {
    layer: AdaptiveTimeoutLayer<K, F, C>,
    idle: IdleRule,
}

impl<K, F, C> AdaptiveTimeoutLayer<K, F, C> {
    /// This layer, its services wrapping each response body in a [`TimeoutBody`] (same
    /// peer table, handles, policies and classifiers). The body's idle deadline follows
    /// [`IdleRule::Learned`] unless [`BodyTimeoutLayer::idle_rule`] says otherwise.
    pub fn with_bodies(self) -> BodyTimeoutLayer<K, F, C> {
        BodyTimeoutLayer {
            layer: self,
            idle: IdleRule::default(),
        }
    }
}

impl<K: PeerKey, F, C> BodyTimeoutLayer<K, F, C> {
    /// How bodies without a [`BodyIdle`] override get their idle deadline.
    pub fn idle_rule(mut self, rule: IdleRule) -> Self {
        self.idle = rule;
        self
    }

    /// The body layer for a direct client of one peer (a tonic `Channel`), as
    /// [`AdaptiveTimeoutLayer::for_peer`] is without bodies: every call goes to `peer`
    /// whatever its request names, its services are ready when the client is, and calls
    /// to a silent peer fail fast.
    ///
    /// ```
    /// use tower::{service_fn, BoxError, Layer};
    /// use tower_adaptive_timeout::{AdaptiveTimeoutLayer, HttpPeer};
    ///
    /// # fn main() -> Result<(), BoxError> {
    /// let layer = AdaptiveTimeoutLayer::http().build()?;
    /// let peer: HttpPeer = "http://10.0.0.7:50051".parse()?;
    /// // A path-only request (as a tonic client sends to its channel) counts for `peer`.
    /// let client = service_fn(|_: http::Request<String>| async {
    ///     Ok::<_, BoxError>(http::Response::new(String::new()))
    /// });
    /// let svc = layer.with_bodies().for_peer(peer).layer(client);
    /// # let _ = svc;
    /// # Ok(()) }
    /// ```
    pub fn for_peer(&self, peer: K) -> BodyTimeoutLayer<K, FixedKey<K, F>, C>
    where
        F: Clone,
        C: Clone,
    {
        BodyTimeoutLayer {
            layer: self.layer.fixed(peer),
            idle: self.idle,
        }
    }

    /// A handle to fire interrupts into calls (and bodies) in flight.
    pub fn interrupt_handle(&self) -> InterruptHandle<K> {
        self.layer.interrupt_handle()
    }

    /// A handle to read and steer the layer at runtime.
    pub fn handle(&self) -> AdaptiveTimeoutHandle<K> {
        self.layer.handle()
    }
}

impl<S, K, F: Clone, C: Clone> Layer<S> for BodyTimeoutLayer<K, F, C> {
    type Service = BodyTimeout<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyTimeout {
            inner: self.layer.layer(inner),
            idle: self.idle,
        }
    }
}

impl<K, F: Clone, C: Clone> Clone for BodyTimeoutLayer<K, F, C> {
    fn clone(&self) -> Self {
        BodyTimeoutLayer {
            layer: self.layer.clone(),
            idle: self.idle,
        }
    }
}

impl<K, F, C> std::fmt::Debug for BodyTimeoutLayer<K, F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyTimeoutLayer")
            .field("layer", &self.layer)
            .field("idle", &self.idle)
            .finish()
    }
}

/// [`AdaptiveTimeout`] for `http` services whose response bodies are watched to their
/// end: its response is `http::Response<TimeoutBody<B>>`.
#[derive(Clone, Debug)]
pub struct BodyTimeout<S, K, F, C = AllSamples> {
    inner: AdaptiveTimeout<S, K, F, C>,
    idle: IdleRule,
}

impl<S, K, F, C> BodyTimeout<S, K, F, C> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner.into_inner()
    }
}

impl<S, K, F, C, ReqBody, B> Service<http::Request<ReqBody>> for BodyTimeout<S, K, F, C>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    K: PeerKey,
    F: KeyFn<http::Request<ReqBody>, Key = K>,
    B: http_body::Body,
    C: ClassifyResponse<http::Response<B>> + Clone,
{
    type Response = http::Response<TimeoutBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, WithBody<C>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let ext = req.extensions();
        let idle = match ext.get::<BodyIdle>() {
            Some(BodyIdle::After(d)) => Idle::Requested(*d),
            Some(BodyIdle::Off) => Idle::Rule(IdleRule::Off),
            None => Idle::Rule(self.idle),
        };
        let total = match ext.get::<BodyDeadline>() {
            Some(BodyDeadline::Within(d)) => Some(*d),
            Some(BodyDeadline::Caller) => ext
                .get::<Deadline>()
                .map(|d| d.remaining(tokio::time::Instant::now())),
            None => None,
        };
        let body = BodySettings { idle, total };
        let propagated = Propagated::Whole { total };
        let call = self.inner.call_propagating(req, propagated);
        call.map_finish(|head| WithBody {
            body,
            classify: head.into_classifier(),
        })
    }
}

impl<F, B, E, C> Future for ResponseFuture<F, WithBody<C>>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: http_body::Body,
    C: ClassifyResponse<http::Response<B>>,
{
    type Output = Result<http::Response<TimeoutBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (ended, with) = ready!(self.poll_ended(cx));
        let (call, ended) = ended?;
        Poll::Ready(match ended {
            Ended::Answered(Ok(response)) => {
                let outcome = with.classify.classify(&response);
                let body = with.body;
                Ok(response.map(|inner| TimeoutBody::new(inner, call, outcome, body)))
            }
            ended => {
                let mut call = call;
                call.end(ended, &with.classify)
                    .map(|response| response.map(TimeoutBody::unwatched))
            }
        })
    }
}
