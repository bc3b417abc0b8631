//! A watched response body, one poll at a time on tokio's paused clock (tokio-test).
//!
//! Covers: `interrupt_peer`, `interrupt_all`, `shutdown` and the call's token each wake a
//! body pending on a frame that never comes, which ends at its next poll with the reason and
//! the line that fired it, no time having passed; a body dropped mid-stream counts its call
//! as answered (its peer's snapshot is unchanged but for `in_flight` and `completed`) and
//! frees its inner body; a body that ends (at its last frame, or with trailers and then its
//! end) ends its call exactly once. Each check reads the peer's snapshot: one outcome per
//! call, nothing left in flight. A call whose head was answered has recorded its sample;
//! its outcome is counted when its body ends: `completed`, or what cut it.
#![cfg(feature = "http")]

use crate::support;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;
use tokio_test::task::{self, Spawn};
use tokio_test::{assert_pending, assert_ready};
use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, BodyTimeoutLayer, ByPeer, HasPeer, HttpPeer,
    Interrupt, InterruptHandle, Interrupted, PeerSnapshot, Reason, TimeoutBody,
};

use support::ms;

const URI: &str = "http://stream.test/";

/// A body whose frames the test sends; it ends when the sender is dropped.
struct Feed(mpsc::UnboundedReceiver<Frame<Bytes>>);

type Sender = mpsc::UnboundedSender<Frame<Bytes>>;

fn feed() -> (Sender, Feed) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Feed(rx))
}

impl Body for Feed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

fn data() -> Frame<Bytes> {
    Frame::data(Bytes::from_static(b"part"))
}

/// A layer watching bodies, under the default policy (idle deadline: a 1s cold start).
struct Rig {
    layer: BodyTimeoutLayer<HttpPeer, ByPeer>,
    handle: AdaptiveTimeoutHandle<HttpPeer>,
    interrupts: InterruptHandle<HttpPeer>,
}

fn rig() -> Rig {
    let layer = AdaptiveTimeoutLayer::http().build().unwrap();
    Rig {
        handle: layer.handle(),
        interrupts: layer.interrupt_handle(),
        layer: layer.with_bodies(),
    }
}

/// The peer's outcome counts.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Counts {
    samples: u64,
    completed: u64,
    deadline_exceeded: u64,
    silent_interrupts: u64,
    manual_interrupts: u64,
    in_flight: usize,
}

/// A call whose head was answered, in flight in its body: not counted yet.
const OPEN: Counts = Counts {
    samples: 1,
    completed: 0,
    deadline_exceeded: 0,
    silent_interrupts: 0,
    manual_interrupts: 0,
    in_flight: 1,
};

/// [`OPEN`], its body over: counted as answered.
const ENDED: Counts = Counts {
    completed: 1,
    in_flight: 0,
    ..OPEN
};

impl Rig {
    /// A call carrying `token`, which its peer answers at once with `body`: the watched
    /// body, to be polled by hand.
    async fn open<B>(&self, body: B, token: &Interrupt) -> Spawn<TimeoutBody<B>>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        let peer = service_fn(|req: http::Request<B>| async {
            Ok::<_, Infallible>(http::Response::new(req.into_body()))
        });
        let mut req = http::Request::get(URI).body(body).unwrap();
        req.extensions_mut().insert(token.clone());
        let response = self.layer.layer(peer).oneshot(req).await.expect("the head");
        task::spawn(response.into_body())
    }

    fn peer(&self) -> HttpPeer {
        http::Request::get(URI).body(()).unwrap().peer().unwrap()
    }

    fn snapshot(&self) -> PeerSnapshot {
        self.handle.peer(&self.peer()).expect("tracked")
    }

    fn counts(&self) -> Counts {
        let s = self.snapshot();
        Counts {
            samples: s.samples,
            completed: s.completed,
            deadline_exceeded: s.deadline_exceeded,
            silent_interrupts: s.silent_interrupts,
            manual_interrupts: s.manual_interrupts,
            in_flight: s.in_flight,
        }
    }
}

type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

/// Whether the body's call is still in flight in it.
fn watched<B>(body: &mut Spawn<TimeoutBody<B>>) -> bool {
    body.enter(|_, body| body.is_watched())
}

/// Polls the body once for its next frame.
fn poll<B>(body: &mut Spawn<TimeoutBody<B>>) -> Polled
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    body.enter(|cx, body| body.poll_frame(cx))
}

/// Opens a body pending on a frame that never comes; `fire` interrupts it (its peer, or
/// the call's token) and says on which line. The body must be woken and end at its next
/// poll with `reason`, fired on that line, at once, with one outcome counted.
async fn ends_at_once(reason: Reason, fire: impl FnOnce(&Rig, &Interrupt) -> u32) {
    let rig = rig();
    let (_tx, inner) = feed();
    let token = Interrupt::new();
    let mut body = rig.open(inner, &token).await;
    assert_pending!(poll(&mut body));
    assert_pending!(poll(&mut body), "no frame, nothing fired");
    assert!(!body.is_woken());
    assert_eq!(rig.counts(), OPEN);

    let line = fire(&rig, &token);
    assert!(body.is_woken(), "the interrupt woke the body");
    let err = match assert_ready!(poll(&mut body)) {
        Some(Err(err)) => err,
        other => panic!("not ended by the interrupt: {other:?}"),
    };
    let cut = Interrupted::find(&*err).unwrap_or_else(|| panic!("not an Interrupted: {err}"));
    assert_eq!(cut.reason(), &reason);
    let fired_at = (cut.fired_at().file(), cut.fired_at().line());
    assert_eq!(fired_at, (file!(), line), "{cut}");
    assert_eq!(cut.peer(), &*rig.snapshot().peer);
    assert!(cut.elapsed().is_zero(), "at once: {cut}");
    assert!(!watched(&mut body));
    let one = Counts {
        manual_interrupts: 1,
        in_flight: 0,
        ..OPEN
    };
    assert_eq!(rig.counts(), one);
    drop(body);
    assert_eq!(rig.counts(), one, "nothing more at the drop");
}

#[tokio::test(start_paused = true)]
async fn interrupt_peer_ends_an_open_body_at_once() {
    let reason = Reason::Manual("drained".into());
    ends_at_once(reason, |rig, _| {
        let line = line!() + 1;
        assert!(rig.interrupts.interrupt_peer(&rig.peer(), "drained"));
        line
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn interrupt_all_ends_an_open_body_at_once() {
    let reason = Reason::Manual("maintenance".into());
    ends_at_once(reason, |rig, _| {
        let line = line!() + 1;
        rig.interrupts.interrupt_all("maintenance");
        line
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_an_open_body_at_once() {
    ends_at_once(Reason::Shutdown, |rig, _| {
        let line = line!() + 1;
        rig.interrupts.shutdown();
        line
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_calls_token_ends_its_open_body_at_once() {
    let reason = Reason::Manual("user went away".into());
    ends_at_once(reason, |_, token| {
        let line = line!() + 1;
        assert!(token.interrupt("user went away"));
        line
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_body_dropped_mid_stream_counts_its_answer() {
    let rig = rig();
    let (tx, inner) = feed();
    let mut body = rig.open(inner, &Interrupt::new()).await;
    tokio::time::advance(ms(5)).await;
    tx.send(data()).unwrap();
    assert!(matches!(assert_ready!(poll(&mut body)), Some(Ok(_))));
    assert_pending!(poll(&mut body));
    let before = rig.snapshot();
    assert_eq!(rig.counts(), OPEN);

    drop(body);
    assert!(tx.is_closed(), "the inner body went with it");
    let mut expected = before.clone();
    expected.in_flight = 0;
    expected.completed = 1;
    assert_eq!(
        rig.snapshot(),
        expected,
        "nothing recorded but the end of its flight, answered"
    );
    // Nothing of the body outlives it: no idle deadline passes later as a miss.
    tokio::time::advance(ms(5_000)).await;
    let later = rig.snapshot();
    assert_eq!((later.in_flight, later.deadline_exceeded), (0, 0));
    assert_eq!((later.state, later.completed), (before.state, 1));
}

#[tokio::test(start_paused = true)]
async fn a_body_ending_at_its_last_frame_ends_its_call_there_once() {
    let rig = rig();
    let whole = Full::new(Bytes::from_static(b"whole"));
    let mut body = rig.open(whole, &Interrupt::new()).await;
    assert_eq!(rig.counts(), OPEN);
    assert!(matches!(assert_ready!(poll(&mut body)), Some(Ok(f)) if f.is_data()));
    assert_eq!(rig.counts(), ENDED, "over at its last frame");
    assert!(!watched(&mut body));
    assert!(assert_ready!(poll(&mut body)).is_none());
    rig.interrupts.interrupt_all("after the end");
    assert!(assert_ready!(poll(&mut body)).is_none());
    drop(body);
    assert_eq!(
        rig.counts(),
        ENDED,
        "nothing more: its end, an interrupt, its drop"
    );

    // A body at its end with its head ends its call with the head.
    let mut empty = rig.open(Empty::<Bytes>::new(), &Interrupt::new()).await;
    assert!(!watched(&mut empty));
    let twice = Counts {
        samples: 2,
        completed: 2,
        ..ENDED
    };
    assert_eq!(rig.counts(), twice);
}

#[tokio::test(start_paused = true)]
async fn a_body_ending_with_trailers_ends_its_call_once() {
    let rig = rig();
    let (tx, inner) = feed();
    let mut body = rig.open(inner, &Interrupt::new()).await;
    tx.send(data()).unwrap();
    tx.send(Frame::trailers(http::HeaderMap::new())).unwrap();
    drop(tx);
    assert!(matches!(assert_ready!(poll(&mut body)), Some(Ok(f)) if f.is_data()));
    assert!(matches!(assert_ready!(poll(&mut body)), Some(Ok(f)) if f.is_trailers()));
    assert!(assert_ready!(poll(&mut body)).is_none());
    assert_eq!(rig.counts(), ENDED);
    assert!(assert_ready!(poll(&mut body)).is_none());
    drop(body);
    assert_eq!(rig.counts(), ENDED, "nothing more: polled again, dropped");
}
