//! Response bodies over real TCP on 127.0.0.1: a hyper server streaming frames, the
//! hyper-util client under `AdaptiveTimeoutLayer::http().with_bodies()`, and a fault proxy
//! that passes the head and part of the body, then holds everything (no FIN, no RST).
//!
//! Covers: a body cut off mid-way ends with `Interrupted` (`BodyIdle`) within two idle
//! deadlines of its last frame; bodies stalled to a peer that other calls declare silent
//! all end at once with `PeerSilent`; a slow but steady stream (a frame every 200 ms for
//! 10 s) is never cut; a whole body passes through; counts return to zero.
//!
//! Real time under a bounded wait; the only timing bounds are the ones the behaviour
//! promises (two idle deadlines), with an idle deadline wide enough for a loaded machine.
#![cfg(feature = "http")]

use crate::support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use loopback::http_server::{self, get, Client, FRAME_BYTES};
use loopback::{bounded, Fault, FaultProxy, Loopback};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, BodyIdle, BodyTimeout, ByPeer, HttpPeer,
    Interrupted, Reason, TimeoutBody, TimeoutPolicy,
};

use support::e2e::LoopbackPeer;

/// The cold-start deadline, and so the idle deadline of a peer's first bodies.
const IDLE: Duration = Duration::from_millis(500);

type Svc = BodyTimeout<Client, HttpPeer, ByPeer>;

fn client() -> (Svc, AdaptiveTimeoutHandle<HttpPeer>) {
    let layer = AdaptiveTimeoutLayer::http()
        .policy(TimeoutPolicy::default().cold_start(IDLE))
        .build()
        .expect("a valid policy");
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer.with_bodies())
        .service(http_server::client());
    (svc, handle)
}

/// Opens `path` on `server` through `svc`: the response's body.
async fn open(
    svc: &Svc,
    server: &impl AddrOf,
    path: &str,
    idle: Option<BodyIdle>,
) -> TimeoutBody<hyper::body::Incoming> {
    let mut req = get(server.uri_of(path));
    if let Some(idle) = idle {
        req.extensions_mut().insert(idle);
    }
    let response = bounded(svc.clone().oneshot(req)).await.expect("the head");
    assert!(response.status().is_success());
    response.into_body()
}

/// Reads `body` to its end: the data frames' bytes, the time the last one came, and how
/// the body ended.
async fn drain(body: TimeoutBody<hyper::body::Incoming>) -> (usize, Instant, Result<(), BoxError>) {
    let mut body = std::pin::pin!(body);
    let (mut bytes, mut last) = (0, Instant::now());
    loop {
        match bounded(body.as_mut().frame()).await {
            None => return (bytes, last, Ok(())),
            Some(Err(e)) => return (bytes, last, Err(e)),
            Some(Ok(frame)) => {
                bytes += frame.data_ref().map_or(0, Bytes::len);
                last = Instant::now();
            }
        }
    }
}

/// Where a server or proxy listens.
trait AddrOf {
    fn uri_of(&self, path: &str) -> http::Uri;
}

impl AddrOf for Loopback {
    fn uri_of(&self, path: &str) -> http::Uri {
        self.uri(path)
    }
}

impl AddrOf for FaultProxy {
    fn uri_of(&self, path: &str) -> http::Uri {
        format!("http://{}{path}", self.addr())
            .parse()
            .expect("a URI")
    }
}

fn reason(err: &BoxError) -> &Reason {
    Interrupted::find(&**err)
        .unwrap_or_else(|| panic!("not an Interrupted: {err}"))
        .reason()
}

#[tokio::test]
async fn a_whole_body_passes_through_and_ends_the_call() {
    let server = http_server::start(Duration::ZERO).await.unwrap();
    let (svc, handle) = client();
    let body = open(&svc, &server, "/stream/5/10", None).await;
    assert_eq!(
        handle.peer(&server.peer()).unwrap().in_flight,
        1,
        "in flight in its body"
    );
    let (bytes, _, end) = drain(body).await;
    end.expect("a clean end");
    assert_eq!(bytes, 5 * FRAME_BYTES);
    let peer = handle.peer(&server.peer()).unwrap();
    assert_eq!(
        (peer.in_flight, peer.completed, peer.deadline_exceeded),
        (0, 1, 0)
    );
}

#[tokio::test]
async fn a_body_cut_off_mid_way_ends_within_two_idle_deadlines() {
    let server = http_server::start(Duration::ZERO).await.unwrap();
    let proxy = FaultProxy::start(server.addr()).await;
    // The head and a few frames get through (each frame is 70 bytes chunked), then nothing.
    proxy.set(Fault::Truncate { after: 600 });
    let (svc, handle) = client();
    let body = open(&svc, &proxy, "/stream/0/20", None).await;
    let (bytes, last, end) = drain(body).await;
    let waited = last.elapsed();
    let err = end.expect_err("the stalled body is cut");
    let Reason::BodyIdle { idle, .. } = reason(&err) else {
        panic!("{err}")
    };
    assert_eq!(*idle, IDLE, "the cold-start idle deadline");
    assert!(
        bytes > 0 && bytes < 600,
        "part of the body arrived: {bytes} bytes"
    );
    assert!(waited < 2 * IDLE, "cut {waited:?} after the last frame");
    let peer = handle.peer(&proxy_peer(&proxy)).unwrap();
    assert_eq!((peer.in_flight, peer.deadline_exceeded), (0, 1), "a miss");
}

fn proxy_peer(proxy: &FaultProxy) -> HttpPeer {
    format!("http://{}", proxy.addr()).parse().expect("a peer")
}

#[tokio::test]
async fn bodies_to_a_peer_declared_silent_all_end_at_once() {
    let server = http_server::start(Duration::ZERO).await.unwrap();
    let (svc, handle) = client();
    // Three bodies whose next frame is far away, with no idle deadline: only silence ends
    // them.
    let mut bodies = Vec::new();
    for _ in 0..3 {
        bodies.push(open(&svc, &server, "/stream/0/600000", Some(BodyIdle::Off)).await);
    }
    let readers: Vec<_> = bodies.into_iter().map(|b| tokio::spawn(drain(b))).collect();
    assert_eq!(handle.peer(&server.peer()).unwrap().in_flight, 3);
    // Two calls that never answer: two misses declare the peer silent.
    let hang = || svc.clone().oneshot(get(server.uri("/hang")));
    let (a, b) = tokio::join!(hang(), hang());
    for reader in readers {
        let (_, _, end) = bounded(reader).await.unwrap();
        let err = end.expect_err("silence ends the body");
        assert!(matches!(reason(&err), Reason::PeerSilent { .. }), "{err}");
        // Its head was the answer: nothing to try again elsewhere.
        let cut = Interrupted::find(&*err).expect("an Interrupted");
        assert!(!cut.is_unanswered(), "{err}");
    }
    for hung in [a, b] {
        let err = hung.expect_err("never answered");
        let cut = Interrupted::find(&*err).expect("an Interrupted");
        assert!(cut.is_unanswered(), "{err}");
    }
    // The three bodies, and the hung call whose miss declared the silence.
    let peer = handle.peer(&server.peer()).unwrap();
    assert_eq!((peer.in_flight, peer.silent_interrupts), (0, 4));
}

#[tokio::test]
async fn a_slow_but_steady_stream_is_never_cut() {
    // A frame every 200 ms for 10 s, three at once: longer than twenty idle deadlines in
    // all, while each gap stays under the learned one.
    let server = http_server::start(Duration::ZERO).await.unwrap();
    let (svc, handle) = client();
    let mut readers = Vec::new();
    for _ in 0..3 {
        let body = open(&svc, &server, "/stream/50/200", None).await;
        readers.push(tokio::spawn(drain(body)));
    }
    for reader in readers {
        let (bytes, _, end) = bounded(reader).await.unwrap();
        end.expect("a steady stream runs to its end");
        assert_eq!(bytes, 50 * FRAME_BYTES);
    }
    let peer = handle.peer(&server.peer()).unwrap();
    assert_eq!(
        (peer.in_flight, peer.completed, peer.deadline_exceeded),
        (0, 3, 0)
    );
}
