//! The layer over real TCP on 127.0.0.1, in real time: `LineClient -> EchoServer`, keyed by
//! the server's address.
//!
//! Covers: every call's latency lands in its peer's window, the deadline leaves cold start
//! and settles far below it, peers on different ports are kept apart, and a call the server
//! never answers is cut at the adapted deadline rather than the cold-start one.
//!
//! Delays are a few milliseconds and the assertions are structural (counts, sources, lower
//! bounds a sleep guarantees), never upper bounds on latency.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use loopback::{EchoServer, LineClient, LineRequest};
use tower::ServiceExt;
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, DeadlineSource, Interrupted, PeerSnapshot, TimeoutPolicy,
};

use support::line::{by_addr, LineSvc as Svc};

/// A call to the server at `addr` that it answers `OK` after `delay_ms`.
fn ok(addr: SocketAddr, delay_ms: u64) -> LineRequest {
    LineRequest::new(addr, delay_ms, "OK")
}

/// Default policy, but with `min` high enough that a busy machine's loopback latency does
/// not run into it, recomputed often so the deadline tracks the window, and trusting the
/// quantile after 20 samples so a short run leaves cold start.
fn policy() -> TimeoutPolicy {
    TimeoutPolicy::default()
        .min(Duration::from_millis(100))
        .recompute_every(10)
        .min_samples(20)
}

fn stack() -> (Svc, AdaptiveTimeoutHandle<SocketAddr>) {
    support::stack(by_addr().policy(policy()), LineClient::new())
}

/// Outcome counts of a run of calls.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    answered: u64,
    interrupted: u64,
}

/// Makes one call per delay, in order, to `addr`. Every call must either be answered `OK`
/// or interrupted by the layer; anything else fails the test.
async fn drive(svc: &Svc, addr: SocketAddr, delays: impl IntoIterator<Item = u64>) -> Tally {
    let mut tally = Tally::default();
    for delay_ms in delays {
        match svc.clone().oneshot(ok(addr, delay_ms)).await {
            Ok(answer) => {
                assert_eq!(answer, "OK");
                tally.answered += 1;
            }
            Err(e) if e.downcast_ref::<Interrupted>().is_some() => tally.interrupted += 1,
            Err(e) => panic!("call to {addr} failed: {e}"),
        }
    }
    tally
}

/// Asserts the peer's history holds exactly the calls in `tally`, and returns its snapshot.
fn assert_recorded(
    handle: &AdaptiveTimeoutHandle<SocketAddr>,
    addr: SocketAddr,
    tally: &Tally,
) -> PeerSnapshot {
    let snap = handle.peer(&addr).expect("peer is tracked");
    assert_eq!(&*snap.peer, addr.to_string());
    assert_eq!(snap.samples, tally.answered + tally.interrupted);
    assert_eq!(snap.completed, tally.answered);
    assert_eq!(snap.deadline_exceeded, tally.interrupted);
    assert_eq!(snap.in_flight, 0);
    snap
}

/// Asserts the peer's deadline comes from its history and sits far below cold start.
fn assert_adapted(snap: &PeerSnapshot) {
    let source = snap.deadline_source();
    assert!(
        matches!(
            source,
            DeadlineSource::Quantile | DeadlineSource::ClampedMin
        ),
        "deadline still {source}: {snap:?}"
    );
    let cold = policy().cold_start;
    assert!(
        snap.deadline <= cold / 2,
        "deadline {:?} not far below cold start {cold:?}",
        snap.deadline
    );
    assert!(snap.deadline >= policy().min);
}

#[tokio::test]
async fn deadlines_adapt_to_real_tcp_latency() {
    let servers = (EchoServer::start().await, EchoServer::start().await);
    let (fast, slow) = (servers.0.addr(), servers.1.addr());
    let (svc, handle) = stack();

    let fast_tally = drive(&svc, fast, (0..50).map(|i| 1 + i % 3)).await;
    let slow_tally = drive(&svc, slow, [15; 20]).await;
    // A generous floor: a call runs out a deadline of at least 100ms only on a machine
    // stalled far beyond what these delays need.
    assert!(fast_tally.answered >= 45, "{fast_tally:?}");
    assert!(slow_tally.answered >= 15, "{slow_tally:?}");

    let fast_snap = assert_recorded(&handle, fast, &fast_tally);
    let slow_snap = assert_recorded(&handle, slow, &slow_tally);
    assert_adapted(&fast_snap);
    assert_adapted(&slow_snap);

    // A sleep never ends early, so each peer's recorded latency is at least its delay.
    assert!(fast_snap.p50 >= Duration::from_millis(1), "{fast_snap:?}");
    assert!(slow_snap.p50 >= Duration::from_millis(15), "{slow_snap:?}");
    assert_eq!(handle.peer_count(), 2);
}

#[tokio::test]
async fn a_call_never_answered_is_cut_at_the_adapted_deadline() {
    let server = EchoServer::start().await;
    let addr = server.addr();
    let (svc, handle) = stack();
    let warm = drive(&svc, addr, [1; 25]).await;
    let before = assert_recorded(&handle, addr, &warm);
    assert_adapted(&before);

    // The server holds this one far longer than the test runs.
    let err = svc
        .clone()
        .oneshot(ok(addr, 60_000))
        .await
        .expect_err("never answered");
    let interrupted = err.downcast_ref::<Interrupted>().expect("typed error");
    assert_eq!(interrupted.peer(), addr.to_string());
    let deadline = interrupted.deadline().expect("deadline exceeded");
    assert_eq!(deadline, before.deadline);
    assert!(interrupted.elapsed() >= deadline, "{interrupted}");

    let after = handle.peer(&addr).unwrap();
    assert_eq!(after.deadline_exceeded, warm.interrupted + 1);
    // A miss (no answer since it started): its censored sample waits for the next answer.
    assert_eq!(after.samples, before.samples);
    assert_eq!(after.in_flight, 0);
}
