//! A stall of the caller's own thread (blocking code on the runtime, a CPU starved by its
//! neighbours) is no silence of the peer: answers that came during it wait in socket
//! buffers, and the calls' deadlines have passed by the time the thread runs again. Those
//! answers must win, as under a fixed timeout longer than the stall.

use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use http_body_util::BodyExt;
use loopback::http_server::{self, get};
use tower::{Layer, Service};
use tower_adaptive_timeout::AdaptiveTimeoutLayer;

/// Calls in flight through the stall.
const IN_FLIGHT: usize = 32;
/// How long the server takes to answer: the calls are in flight when the thread blocks.
const LATENCY: Duration = Duration::from_millis(20);

/// One call through `svc`, its body read; whether it failed.
async fn one<S>(mut svc: S, req: http::Request<http_body_util::Empty<bytes::Bytes>>) -> bool
where
    S: Service<
        http::Request<http_body_util::Empty<bytes::Bytes>>,
        Response = http::Response<hyper::body::Incoming>,
    >,
{
    if std::future::poll_fn(|cx| svc.poll_ready(cx)).await.is_err() {
        return true;
    }
    match svc.call(req).await {
        Ok(response) => response.into_body().collect().await.is_err(),
        Err(_) => true,
    }
}

#[test]
fn answers_that_came_while_the_callers_thread_was_blocked_win_over_their_deadlines() {
    // The server on a thread of its own: it answers while the caller's thread is blocked.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let server = server_rt
        .block_on(http_server::start(LATENCY))
        .expect("a loopback server");
    let uri = server.uri("/");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let failed = rt.block_on(async {
        let layer = AdaptiveTimeoutLayer::http().build().expect("valid");
        let handle = layer.handle();
        let svc = layer.layer(http_server::client());
        // Learn the peer's deadline (twice its p99.9, plus a margin: tens of milliseconds),
        // over as many connections as the stall will have calls in flight.
        for _ in 0..10 {
            let round: Vec<_> = (0..IN_FLIGHT)
                .map(|_| one(svc.clone(), get(uri.clone())))
                .collect();
            for failed in futures_util::future::join_all(round).await {
                assert!(!failed, "a healthy call failed while learning");
            }
        }
        let deadline = handle.snapshot()[0].deadline;
        assert!(
            deadline < Duration::from_millis(200),
            "learned {deadline:?}"
        );
        let mut calls: FuturesUnordered<_> = (0..IN_FLIGHT)
            .map(|_| one(svc.clone(), get(uri.clone())))
            .collect();
        // Send them all, then block this thread past their deadline: the server answers
        // meanwhile, into the sockets.
        tokio::select! {
            _ = calls.next() => panic!("an answer before the server's latency"),
            _ = tokio::time::sleep(LATENCY / 4) => {}
        }
        std::thread::sleep(deadline * 4);
        let mut failed = 0;
        while let Some(f) = calls.next().await {
            failed += usize::from(f);
        }
        failed
    });
    assert_eq!(failed, 0, "{failed} of {IN_FLIGHT} answered calls were cut");
    drop(server);
}
