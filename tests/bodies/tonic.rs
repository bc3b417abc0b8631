//! gRPC server streams over real TCP on 127.0.0.1: the loopback `ping.Pinger/Stream`
//! method, a tonic `Channel` under `AdaptiveTimeoutLayer::http().with_bodies()`.
//!
//! Covers: a stream whose server goes silent mid-way ends within two idle deadlines of its
//! last reply with a `Status` whose source is `Interrupted` (`BodyIdle`), a miss for the
//! peer; a slow but steady stream runs to its end; an interrupt into the peer ends an open
//! stream, and a tonic request carries a `BodyIdle` override. The `Channel`'s response body
//! is `tonic::body::Body`, and `TimeoutBody` over it meets tonic's client bounds as it is
//! (data `Bytes`, `Send + 'static`, error `BoxError`): no adapter.
//!
//! How a cut stream surfaces: tonic turns the body's error into `Status::from_error`, a
//! `Status` with code `Unknown`, the `Interrupted`'s text as its message and the
//! `Interrupted` as its `source()`, as for a cut unary call; with the body's errors mapped
//! through `status::grpc_error` the caller sees the code for what happened
//! (`DEADLINE_EXCEEDED` for a stalled stream).
#![cfg(feature = "http")]

use crate::support;

use std::time::{Duration, Instant};

use loopback::grpc::{start_server, PingReply, PingerClient, StreamRequest};
use loopback::{bounded, Loopback};
use tonic::client::GrpcService;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tower::ServiceBuilder;
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, BodyIdle, BodyTimeout, ByPeer, HttpPeer,
    InterruptHandle, Interrupted, Reason, TimeoutBody, TimeoutPolicy,
};

use support::e2e::{channel, LoopbackPeer};
use support::ms;

/// The cold-start deadline, and so the idle deadline of the peer's streams.
const IDLE: Duration = Duration::from_millis(500);

type Svc = BodyTimeout<Channel, HttpPeer, ByPeer>;

/// What tonic's client reads is the watched body itself.
const _: fn() = || {
    fn grpc<T: GrpcService<tonic::body::Body, ResponseBody = TimeoutBody<tonic::body::Body>>>() {}
    grpc::<Svc>();
};

/// A server, and a client to it through the layer with its handles.
struct Rig {
    server: Loopback,
    client: PingerClient<Svc>,
    handle: AdaptiveTimeoutHandle<HttpPeer>,
    interrupts: InterruptHandle<HttpPeer>,
}

async fn rig() -> Rig {
    let server = start_server(false).await.expect("bind 127.0.0.1");
    let layer = AdaptiveTimeoutLayer::http()
        .policy(TimeoutPolicy::default().cold_start(IDLE))
        .build()
        .expect("a valid policy");
    let (handle, interrupts) = (layer.handle(), layer.interrupt_handle());
    let svc = ServiceBuilder::new()
        .layer(layer.with_bodies())
        .service(channel(&server).await);
    let client = PingerClient::with_origin(svc, server.uri(""));
    Rig {
        server,
        client,
        handle,
        interrupts,
    }
}

impl Rig {
    /// Opens a server stream: its replies, to be read.
    async fn open(
        &mut self,
        request: impl tonic::IntoRequest<StreamRequest>,
    ) -> Streaming<PingReply> {
        bounded(self.client.stream(request))
            .await
            .expect("the head")
            .into_inner()
    }

    /// The peer's in-flight calls, answered calls and misses.
    fn counts(&self) -> (usize, u64, u64) {
        let p = self.handle.peer(&self.server.peer()).expect("tracked");
        (p.in_flight, p.completed, p.deadline_exceeded)
    }
}

/// Reads `stream` to its end: how many replies came, when the last one did, and how the
/// stream ended.
async fn drain(stream: &mut Streaming<PingReply>) -> (usize, Instant, Result<(), Status>) {
    let (mut replies, mut last) = (0, Instant::now());
    loop {
        match bounded(stream.message()).await {
            Ok(Some(_)) => {
                replies += 1;
                last = Instant::now();
            }
            Ok(None) => return (replies, last, Ok(())),
            Err(status) => return (replies, last, Err(status)),
        }
    }
}

/// The `Interrupted` a stream's status carries as its source, after checking how tonic
/// shows it.
fn cut(status: &Status) -> &Interrupted {
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    let cut = Interrupted::find(status).expect("the Interrupted is the status's source");
    assert_eq!(status.message(), cut.to_string());
    cut
}

#[tokio::test]
async fn a_stream_stalled_mid_way_ends_within_two_idle_deadlines() {
    let mut rig = rig().await;
    let mut stream = rig
        .open(StreamRequest::steady(10, ms(20)).stalling_after(3))
        .await;
    let (replies, last, end) = drain(&mut stream).await;
    let waited = last.elapsed();
    let status = end.expect_err("the stalled stream is cut");
    let cut = cut(&status);
    let Reason::BodyIdle { idle, .. } = cut.reason() else {
        panic!("{cut}")
    };
    assert_eq!(*idle, IDLE, "the cold-start idle deadline");
    assert_eq!(replies, 3, "the replies before the stall arrived");
    assert!(waited < 2 * IDLE, "cut {waited:?} after the last reply");
    assert_eq!(rig.counts(), (0, 0, 1), "one outcome: a miss");
}

#[tokio::test]
async fn a_slow_but_steady_stream_runs_to_its_end() {
    let mut rig = rig().await;
    let started = Instant::now();
    let mut stream = rig.open(StreamRequest::steady(12, ms(100))).await;
    let (replies, _, end) = drain(&mut stream).await;
    end.expect("a clean end");
    assert_eq!(replies, 12);
    assert!(
        started.elapsed() > 2 * IDLE,
        "the stream outlasts its idle deadline: each reply restarts it"
    );
    assert_eq!(rig.counts(), (0, 1, 0), "ended once, no miss");
}

#[tokio::test]
async fn an_interrupt_into_the_peer_ends_an_open_stream() {
    let mut rig = rig().await;
    // No idle deadline for this stream: only the interrupt can end it.
    let mut req = tonic::Request::new(StreamRequest::steady(10, ms(10)).stalling_after(1));
    req.extensions_mut().insert(BodyIdle::Off);
    let mut stream = rig.open(req).await;
    bounded(stream.message()).await.expect("the first reply");
    let reader = tokio::spawn(async move { drain(&mut stream).await.2 });
    let line = line!() + 1;
    assert!(rig.interrupts.interrupt_peer(&rig.server.peer(), "drained"));
    let status = bounded(reader).await.unwrap().expect_err("interrupted");
    let cut = cut(&status);
    assert_eq!(cut.reason(), &Reason::Manual("drained".into()));
    assert_eq!(
        (cut.fired_at().file(), cut.fired_at().line()),
        (file!(), line)
    );
    let p = rig.handle.peer(&rig.server.peer()).unwrap();
    assert_eq!(
        (p.in_flight, p.manual_interrupts, p.deadline_exceeded),
        (0, 1, 0)
    );
}

/// With the body's errors mapped through `status::grpc_error`, a stalled stream reaches
/// the caller with the code for what happened instead of `Unknown`.
#[cfg(feature = "tonic")]
#[tokio::test]
async fn a_stalled_stream_mapped_to_a_status_says_deadline_exceeded() {
    use http_body_util::BodyExt;
    use tower_adaptive_timeout::{status, BoxError};

    type Mapped = http_body_util::combinators::MapErr<
        TimeoutBody<tonic::body::Body>,
        fn(BoxError) -> BoxError,
    >;
    let server = start_server(false).await.expect("bind 127.0.0.1");
    let layer = AdaptiveTimeoutLayer::http()
        .policy(TimeoutPolicy::default().cold_start(IDLE))
        .build()
        .expect("a valid policy");
    let svc = ServiceBuilder::new()
        .map_response(|r: http::Response<TimeoutBody<tonic::body::Body>>| {
            r.map(|body| -> Mapped { body.map_err(status::grpc_error) })
        })
        .layer(layer.with_bodies())
        .service(channel(&server).await);
    let mut client = PingerClient::with_origin(svc, server.uri(""));
    let request = StreamRequest::steady(10, ms(20)).stalling_after(2);
    let mut stream = bounded(client.stream(request))
        .await
        .expect("the head")
        .into_inner();
    let (replies, _, end) = drain(&mut stream).await;
    let status = end.expect_err("the stalled stream is cut");
    assert_eq!(replies, 2);
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let cut = Interrupted::find(&status).expect("the Interrupted is the status's source");
    assert!(matches!(cut.reason(), Reason::BodyIdle { .. }), "{cut}");
}
