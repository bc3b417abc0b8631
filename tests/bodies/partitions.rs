//! A silence leaves no mark on a peer whose answers stream a body, on tokio's paused clock.
//!
//! One peer behind a link that can be cut: while it is cut, neither heads nor body frames
//! get through (they wait, as TCP holds them), and when it heals they are delivered. Each
//! answer is a head after 8-16 ms and a body of four frames 5 ms apart; eight callers read
//! whole bodies through `with_bodies()`. After each partition heals, the peer's deadline
//! and its route's are within 10% of what they were before the first, whether the calls
//! were cut (a silence) or held through it (a partition short enough to be a stall).
#![cfg(feature = "http")]

use crate::support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, DeadlineSource, HttpPeer, PeerState, TimeoutBody,
    TimeoutPolicy,
};

use support::ms;

/// Waits until the link is not cut.
async fn through(mut cut: watch::Receiver<bool>) {
    let _ = cut.wait_for(|cut| !*cut).await;
}

/// A body of `frames` frames, each sent `gap` after the one before once the link lets it
/// through.
struct Streamed {
    frames: usize,
    gap: Duration,
    cut: watch::Receiver<bool>,
    next: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.frames == 0 {
            return Poll::Ready(None);
        }
        if self.next.is_none() {
            let (cut, gap) = (self.cut.clone(), self.gap);
            self.next = Some(Box::pin(async move {
                tokio::time::sleep(gap).await;
                through(cut).await;
            }));
        }
        std::task::ready!(self.next.as_mut().expect("set above").as_mut().poll(cx));
        self.next = None;
        self.frames -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"frame")))))
    }
}

type Req = http::Request<()>;

/// The layer with bodies over the peer behind `cut`.
type Svc = BoxCloneSyncService<Req, http::Response<TimeoutBody<Streamed>>, BoxError>;

fn stack(cut: &watch::Sender<bool>) -> (Svc, AdaptiveTimeoutHandle<HttpPeer>) {
    let layer = AdaptiveTimeoutLayer::http()
        .policy(TimeoutPolicy::default())
        .jitter_seed(7)
        .build()
        .unwrap();
    let handle = layer.handle();
    let cut = cut.clone();
    let peer = service_fn(move |req: Req| {
        let cut = cut.subscribe();
        // 8-16 ms, from the request's own number.
        let n: u64 = req.uri().query().and_then(|q| q.parse().ok()).unwrap_or(0);
        let long = req.uri().path() == "/long";
        async move {
            through(cut.clone()).await;
            tokio::time::sleep(ms(8 + n % 9)).await;
            through(cut.clone()).await;
            // `/long`: 50 frames 10 ms apart; anything else 4 frames 5 ms apart.
            let (frames, gap) = match long {
                true => (50, ms(10)),
                false => (4, ms(5)),
            };
            let body = Streamed {
                frames,
                gap,
                cut,
                next: None,
            };
            Ok::<_, Infallible>(http::Response::new(body))
        }
    });
    (
        BoxCloneSyncService::new(layer.with_bodies().layer(peer)),
        handle,
    )
}

/// The peer's deadline, its one latency class's, and where the peer's came from.
fn deadlines(handle: &AdaptiveTimeoutHandle<HttpPeer>) -> (Duration, Duration, DeadlineSource) {
    let peer = &handle.snapshot()[0];
    let [class] = &peer.classes[..] else {
        panic!("one route, one class: {:?}", peer.classes)
    };
    (peer.deadline, class.deadline, peer.explanation.source)
}

fn drift(now: Duration, before: Duration) -> f64 {
    now.abs_diff(before).as_secs_f64() / before.as_secs_f64()
}

/// Eight callers reading whole bodies from `path` in a loop (10 ms between calls) until
/// `stop`; each returns how many of its calls failed, head or body.
fn callers(svc: &Svc, stop: &Arc<AtomicBool>, path: &'static str) -> JoinSet<usize> {
    let mut set = JoinSet::new();
    for caller in 0..8u64 {
        let (svc, stop) = (svc.clone(), stop.clone());
        set.spawn(async move {
            let (mut i, mut failed) = (caller, 0);
            while !stop.load(Relaxed) {
                i = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let uri = format!("http://streamed.test{path}?{}", i >> 33);
                let req = http::Request::get(uri).body(()).unwrap();
                let ok = match svc.clone().oneshot(req).await {
                    Ok(response) => response.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                failed += usize::from(!ok);
                tokio::time::sleep(ms(10)).await;
            }
            failed
        });
    }
    set
}

#[tokio::test(start_paused = true)]
async fn repeated_partitions_leave_a_streaming_peers_deadlines_as_they_were() {
    let (cut, _) = watch::channel(false);
    let (svc, handle) = stack(&cut);
    let stop = Arc::new(AtomicBool::new(false));
    let set = callers(&svc, &stop, "/items");
    tokio::time::sleep(ms(20_000)).await;
    let before = deadlines(&handle);
    assert_eq!(before.2, DeadlineSource::Quantile, "{before:?}");
    let mut after = Vec::new();
    // Four long partitions (calls in flight never answered within them), then three short
    // ones: the first heals while the first probe waits, so it is answered as the link
    // heals; it was a stall (it ended by itself within `cold_start`), so the peer holds
    // the next two's calls through them, and their answers come after the link heals.
    for silence in [5_000, 5_000, 5_000, 5_000, 500, 500, 500] {
        cut.send_replace(true);
        tokio::time::sleep(ms(silence)).await;
        if silence > 1_000 {
            assert_ne!(handle.snapshot()[0].state, PeerState::Healthy);
        }
        cut.send_replace(false);
        tokio::time::sleep(ms(5_000)).await;
        assert_eq!(handle.snapshot()[0].state, PeerState::Healthy);
        after.push(deadlines(&handle));
    }
    stop.store(true, Relaxed);
    set.join_all().await;
    let peer = &handle.snapshot()[0];
    assert!(
        peer.held_through_stalls > 0 && peer.learned_silence_floor > ms(500),
        "the short partitions were held as stalls: {peer:?}"
    );
    for now in &after {
        assert!(
            drift(now.0, before.0) <= 0.10 && drift(now.1, before.1) <= 0.10,
            "(deadline, route deadline) before {before:?}, after each heal {after:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_host_that_stalled_keeps_its_next_stalls_heads_and_bodies() {
    let (cut, _) = watch::channel(false);
    let (svc, handle) = stack(&cut);
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = callers(&svc, &stop, "/long");
    tokio::time::sleep(ms(20_000)).await;
    let before = deadlines(&handle);
    // Long bodies (half a second each, frames 10 ms apart): most calls are mid-body when
    // a stall begins. Four 300 ms stalls, 3 s apart: heads and frames wait them out.
    // Calls failed in each (heads cut or refused, bodies cut), counted by stopping the
    // callers after each, and starting them again 2 s before the next.
    let mut failed = Vec::new();
    for _ in 0..4 {
        cut.send_replace(true);
        tokio::time::sleep(ms(300)).await;
        cut.send_replace(false);
        tokio::time::sleep(ms(700)).await;
        stop.store(true, Relaxed);
        failed.push(
            std::mem::take(&mut set)
                .join_all()
                .await
                .iter()
                .sum::<usize>(),
        );
        stop.store(false, Relaxed);
        set = callers(&svc, &stop, "/long");
        tokio::time::sleep(ms(2_000)).await;
    }
    stop.store(true, Relaxed);
    set.join_all().await;
    // The first is a silence to the layer; the peer learned it, and held the rest.
    assert!(failed[0] > 0, "{failed:?}");
    assert_eq!(failed[1..], [0, 0, 0], "calls failed per stall: {failed:?}");
    let after = deadlines(&handle);
    assert!(
        drift(after.0, before.0) <= 0.10 && drift(after.1, before.1) <= 0.10,
        "(deadline, route deadline) before {before:?}, after {after:?}"
    );
}
