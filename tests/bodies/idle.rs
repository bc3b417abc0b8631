//! The idle deadline between body frames, on tokio's paused clock: which rule leaves a slow
//! but steady stream alone, and that a stalled one is still cut.
//!
//! A peer answers heads at once (its call deadline falls to `min`, 10 ms) and streams a
//! frame every 200 ms. Under `IdleRule::FromDeadline` the idle deadline is that 10 ms and
//! every stream is cut at its first gap; under `IdleRule::Learned` (the default) it is the
//! longer of the deadline and what the peer's own gaps call for, and no stream is cut.
#![cfg(feature = "http")]

use crate::support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::time::Sleep;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, HttpPeer, IdleRule, Interrupted, Reason,
    TimeoutBody, TimeoutPolicy,
};

use support::{ms, Rng};

/// A body whose frames come after the given gaps, then ends (or stalls, with `stall`).
struct Gapped {
    gaps: std::vec::IntoIter<Duration>,
    next: Option<Pin<Box<Sleep>>>,
    stall: bool,
}

impl Gapped {
    fn new(gaps: Vec<Duration>, stall: bool) -> Self {
        Gapped {
            gaps: gaps.into_iter(),
            next: None,
            stall,
        }
    }
}

impl Body for Gapped {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.next.is_none() {
            match self.gaps.next() {
                Some(gap) => self.next = Some(Box::pin(tokio::time::sleep(gap))),
                None if self.stall => return Poll::Pending,
                None => return Poll::Ready(None),
            }
        }
        let sleep = self.next.as_mut().expect("set above");
        std::task::ready!(sleep.as_mut().poll(cx));
        self.next = None;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
    }
}

/// A request that carries the body its peer will answer with (a test double of a server).
type Req = http::Request<Option<Gapped>>;

fn stack(
    rule: IdleRule,
) -> (
    impl Service<Req, Response = http::Response<TimeoutBody<Gapped>>, Error = BoxError> + Clone,
    AdaptiveTimeoutHandle<HttpPeer>,
) {
    let layer = AdaptiveTimeoutLayer::http()
        .policy(TimeoutPolicy::default().min_samples(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let peer = service_fn(|req: Req| async move {
        let body = req
            .into_body()
            .unwrap_or_else(|| Gapped::new(Vec::new(), false));
        Ok::<_, Infallible>(http::Response::new(body))
    });
    (layer.with_bodies().idle_rule(rule).layer(peer), handle)
}

fn request(body: Option<Gapped>) -> Req {
    http::Request::get("http://stream.test/")
        .body(body)
        .unwrap()
}

/// Warms the peer up with quick answers: its call deadline falls to `min`.
async fn warm<S>(svc: &S, handle: &AdaptiveTimeoutHandle<HttpPeer>)
where
    S: Service<Req, Response = http::Response<TimeoutBody<Gapped>>, Error = BoxError> + Clone,
{
    for _ in 0..20 {
        let response = svc.clone().oneshot(request(None)).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(
        handle.snapshot()[0].deadline,
        ms(10),
        "a fast peer: deadline at min"
    );
}

/// Runs `streams` concurrent streams of `frames` gaps each (drawn by `gap`) after warming
/// the peer up with quick answers; returns how many were cut, and the handle.
async fn run(
    rule: IdleRule,
    streams: usize,
    frames: usize,
    mut gap: impl FnMut() -> Duration,
) -> (usize, AdaptiveTimeoutHandle<HttpPeer>) {
    let (svc, handle) = stack(rule);
    warm(&svc, &handle).await;
    let mut readers = Vec::new();
    for _ in 0..streams {
        let gaps = (0..frames).map(|_| gap()).collect();
        let response = svc.clone().oneshot(request(Some(Gapped::new(gaps, false))));
        let body = response.await.unwrap().into_body();
        readers.push(tokio::spawn(async move { body.collect().await.is_err() }));
    }
    let mut cut = 0;
    for reader in readers {
        cut += usize::from(reader.await.unwrap());
    }
    (cut, handle)
}

#[tokio::test(start_paused = true)]
async fn a_frame_every_200ms_for_10s_is_never_cut_under_the_learned_rule() {
    let (cut, handle) = run(IdleRule::Learned, 1, 50, || ms(200)).await;
    assert_eq!(cut, 0);
    let peer = &handle.snapshot()[0];
    assert_eq!((peer.in_flight, peer.deadline_exceeded), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn learned_beats_derived_on_slow_jittered_streams() {
    // 20 streams at once, 50 frames each, gaps 100..300ms.
    let jitter = |seed| {
        let mut rng = Rng::new(seed, 0);
        move || ms(100 + rng.below(201))
    };
    let (learned, _) = run(IdleRule::Learned, 20, 50, jitter(7)).await;
    let (derived, _) = run(IdleRule::FromDeadline, 20, 50, jitter(7)).await;
    eprintln!("streams cut of 20: learned {learned}, from the deadline {derived}");
    assert_eq!(learned, 0);
    assert_eq!(derived, 20);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_is_still_cut_once_the_gaps_are_learned() {
    let (svc, handle) = stack(IdleRule::Learned);
    warm(&svc, &handle).await;
    // The peer's gaps are learned from a first steady stream.
    let steady = Gapped::new(vec![ms(200); 40], false);
    let body = svc.clone().oneshot(request(Some(steady))).await.unwrap();
    body.into_body().collect().await.unwrap();
    // A second one stalls after 5 frames.
    let stalled = Gapped::new(vec![ms(200); 5], true);
    let body = svc
        .oneshot(request(Some(stalled)))
        .await
        .unwrap()
        .into_body();
    let started = tokio::time::Instant::now();
    let err = body.collect().await.expect_err("cut");
    let waited = started.elapsed() - ms(1000);
    let interrupted = Interrupted::find(&*err).expect("typed");
    let Reason::BodyIdle { idle, .. } = interrupted.reason() else {
        panic!("{interrupted}")
    };
    assert!(
        *idle >= ms(400) && *idle < ms(1000),
        "learned from 200ms gaps: {idle:?}"
    );
    // One idle deadline after the last frame, to the timer's millisecond.
    assert!(
        waited >= *idle && waited <= *idle + ms(1),
        "{waited:?} for {idle:?}"
    );
    let peer = &handle.snapshot()[0];
    assert_eq!((peer.in_flight, peer.deadline_exceeded), (0, 1));
}
