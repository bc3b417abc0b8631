//! The scripted test peer of the body reliability tests, and the layer over it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::time::{Instant, Sleep};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, HttpPeer, IdleRule, InterruptHandle, Interrupted,
    Propagation, Reason, TimeoutBody, TimeoutPolicy,
};

pub(super) const URI: &str = "http://stream.test/";

/// What the test peer does with a request: its head after `head`, then one frame after
/// each of `gaps`, then its end (or nothing more, with `stall`). With `grpc_server`, it
/// ends the stream with an error once the `grpc-timeout` it was sent passes, as a gRPC
/// server applies it to the whole call.
#[derive(Clone, Default)]
pub(super) struct Script {
    pub(super) head: Duration,
    pub(super) gaps: Vec<Duration>,
    pub(super) stall: bool,
    pub(super) grpc_server: bool,
}

impl Script {
    pub(super) fn new(head: Duration, gaps: Vec<Duration>) -> Self {
        Script {
            head,
            gaps,
            ..Script::default()
        }
    }

    pub(super) fn stalled(mut self) -> Self {
        self.stall = true;
        self
    }
}

/// The test peer's response body, as its [`Script`] says.
pub(super) struct Scripted {
    pub(super) gaps: std::vec::IntoIter<Duration>,
    /// When the next frame is sent, once it is set.
    timer: Pin<Box<Sleep>>,
    armed: bool,
    pub(super) stall: bool,
    /// When the server gives up on the call, from the `grpc-timeout` it was sent.
    server_deadline: Option<Pin<Box<Sleep>>>,
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(deadline) = this.server_deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err("the server's deadline passed".into())));
            }
        }
        if !this.armed {
            let Some(gap) = this.gaps.next() else {
                return if this.stall {
                    Poll::Pending
                } else {
                    Poll::Ready(None)
                };
            };
            this.timer.as_mut().reset(Instant::now() + gap);
            this.armed = true;
        }
        std::task::ready!(this.timer.as_mut().poll(cx));
        this.armed = false;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
    }
}

pub(super) type Req = http::Request<Script>;
pub(super) type Res = http::Response<TimeoutBody<Scripted>>;

/// The peer: answers each request as its script says; the headers it was sent go to
/// `seen`.
pub(super) fn peer(
    seen: tokio::sync::mpsc::UnboundedSender<http::HeaderMap>,
) -> impl Service<Req, Response = http::Response<Scripted>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    service_fn(move |req: Req| {
        let seen = seen.clone();
        async move {
            let (parts, script) = req.into_parts();
            let server_deadline = match parts.headers.get("grpc-timeout") {
                Some(v) if script.grpc_server => {
                    let budget =
                        tower_adaptive_timeout::propagate::parse_grpc_timeout(v.as_bytes())
                            .expect("a valid grpc-timeout");
                    Some(Box::pin(tokio::time::sleep(budget)))
                }
                _ => None,
            };
            let _ = seen.send(parts.headers);
            tokio::time::sleep(script.head).await;
            Ok(http::Response::new(Scripted {
                gaps: script.gaps.into_iter(),
                timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
                armed: false,
                stall: script.stall,
                server_deadline,
            }))
        }
    })
}

/// A layer watching bodies over the test peer, and what the peer was sent.
pub(super) struct Rig<S> {
    pub(super) svc: S,
    pub(super) handle: AdaptiveTimeoutHandle<HttpPeer>,
    pub(super) interrupts: InterruptHandle<HttpPeer>,
    pub(super) seen: tokio::sync::mpsc::UnboundedReceiver<http::HeaderMap>,
}

pub(super) fn rig_with(
    policy: TimeoutPolicy,
    propagation: Propagation,
) -> Rig<impl Service<Req, Response = Res, Error = BoxError, Future: Send> + Clone + Send + 'static>
{
    let layer = AdaptiveTimeoutLayer::http()
        .policy(policy)
        .propagation(propagation)
        .build()
        .unwrap();
    let handle = layer.handle();
    let interrupts = layer.interrupt_handle();
    let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
    let svc = layer
        .with_bodies()
        .idle_rule(IdleRule::Learned)
        .layer(peer(tx));
    Rig {
        svc,
        handle,
        interrupts,
        seen,
    }
}

pub(super) fn rig(
) -> Rig<impl Service<Req, Response = Res, Error = BoxError, Future: Send> + Clone + Send + 'static>
{
    rig_with(TimeoutPolicy::default(), Propagation::none())
}

pub(super) fn request(script: Script) -> Req {
    http::Request::get(URI).body(script).unwrap()
}

pub(super) fn with<T: Clone + Send + Sync + 'static>(mut req: Req, ext: T) -> Req {
    req.extensions_mut().insert(ext);
    req
}

impl<S: Service<Req, Response = Res, Error = BoxError> + Clone> Rig<S> {
    pub(super) fn call(&self, req: Req) -> tower::util::Oneshot<S, Req> {
        self.svc.clone().oneshot(req)
    }

    /// Calls and reads the whole body: how many frames came, and the body's error.
    pub(super) async fn read(&self, req: Req) -> (usize, Option<BoxError>) {
        super::read_body(self.call(req)).await
    }

    pub(super) fn snapshot(&self) -> tower_adaptive_timeout::PeerSnapshot {
        self.handle.snapshot().pop().expect("one peer")
    }
}

pub(super) fn reason(err: &BoxError) -> &Reason {
    Interrupted::find(&**err)
        .unwrap_or_else(|| panic!("not an Interrupted: {err}"))
        .reason()
}
