//! The bounded peer table under pressure: admission racing eviction on a multi-threaded
//! runtime, which peer a full table evicts, and calls to new peers when every tracked peer
//! is busy.
//!
//! * A call admitted while its peer is being evicted stays reachable: `interrupt_all` and
//!   `shutdown` end it (tried thousands of times against two flooding tasks).
//! * A silent peer whose calls fail fast is in use, not idle: a full table evicts a quiet
//!   peer before it.
//! * With every tracked peer busy, calls to new peers go untracked without scanning the
//!   table, and an idle peer among busy ones is still found, by rotation. The per-call time
//!   of such untracked calls is printed (no timing is asserted: run it with `--release`
//!   for numbers).

use crate::support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant as WallClock};

use tokio::task::JoinSet;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, InterruptHandle, PeerState, Reason, TimeoutPolicy,
};

use support::peers::{rig_with, P};
use support::{interrupted, lean, ms};

/// A call to peer `key` that is answered at once, or never (`hang`).
#[derive(Clone, Copy, Debug)]
struct Req {
    key: u64,
    hang: bool,
}

/// The layer over a peer that answers at once or never, with a count of the calls that
/// reached it never to be answered.
struct Stack<S> {
    svc: S,
    handle: AdaptiveTimeoutHandle<u64>,
    interrupts: InterruptHandle<u64>,
    arrived: Arc<AtomicU64>,
}

fn stack(
    policy: TimeoutPolicy,
    max_peers: usize,
) -> Stack<impl Service<Req, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static>
{
    let layer = AdaptiveTimeoutLayer::builder(|r: &Req| r.key)
        .policy(policy)
        .max_peers(max_peers)
        .build()
        .unwrap();
    let arrived = Arc::new(AtomicU64::new(0));
    let count = arrived.clone();
    let svc = layer.layer(service_fn(move |r: Req| {
        if r.hang {
            count.fetch_add(1, SeqCst);
        }
        async move {
            if r.hang {
                std::future::pending::<()>().await;
            }
            Ok::<_, Infallible>(r.key)
        }
    }));
    Stack {
        svc,
        handle: layer.handle(),
        interrupts: layer.interrupt_handle(),
        arrived,
    }
}

/// A policy whose calls wait an hour unless interrupted.
fn patient() -> TimeoutPolicy {
    let hour = Duration::from_secs(3600);
    lean().max(hour).cold_start(hour)
}

/// Waits (yielding) until `n` hanging calls have reached the inner service.
async fn arrivals(arrived: &AtomicU64, n: u64) {
    while arrived.load(SeqCst) < n {
        tokio::task::yield_now().await;
    }
}

#[test]
fn a_call_admitted_while_its_peer_is_evicted_is_still_reached_by_interrupts() {
    const TRIES: u64 = 10_000;
    let s = stack(patient(), 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        // Two tasks flood the one-peer table with new keys, each evicting the peer before.
        let stop = Arc::new(AtomicBool::new(false));
        let mut flood = JoinSet::new();
        for t in 0..2u64 {
            let (svc, stop) = (s.svc.clone(), stop.clone());
            flood.spawn(async move {
                let mut key = (t + 1) << 48;
                while !stop.load(SeqCst) {
                    key += 1;
                    let r = svc.clone().oneshot(Req { key, hang: false }).await;
                    // Answered, or refused once the layer is shut down.
                    if !matches!(r, Ok(k) if k == key) {
                        assert_eq!(interrupted(&r).reason(), &Reason::Shutdown);
                    }
                    // Ready calls never yield by themselves.
                    tokio::task::yield_now().await;
                }
            });
        }
        // Each try starts a call that waits until interrupted: to a new peer (inserted, then
        // admitted), or to the same peer through one service's last-peer cache.
        let mut cached = s.svc.clone();
        for i in 0..TRIES {
            let req = Req {
                key: if i % 2 == 0 { 1 << 40 | i } else { 7 },
                hang: true,
            };
            let call = cached.ready().await.unwrap().call(req);
            let call = tokio::spawn(call);
            arrivals(&s.arrived, i + 1).await;
            s.interrupts.interrupt_all("try");
            let ended = tokio::time::timeout(Duration::from_secs(10), call).await;
            let r = ended
                .unwrap_or_else(|_| panic!("try {i}: the interrupt never reached the call"))
                .unwrap();
            assert_eq!(interrupted(&r).reason(), &Reason::Manual("try".into()));
        }
        // Shutdown reaches a call admitted the same way.
        let call = tokio::spawn(s.svc.clone().oneshot(Req { key: 7, hang: true }));
        arrivals(&s.arrived, TRIES + 1).await;
        s.interrupts.shutdown();
        let r = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("shutdown reached the call")
            .unwrap();
        assert_eq!(interrupted(&r).reason(), &Reason::Shutdown);
        stop.store(true, SeqCst);
        flood.join_all().await;
    });
    assert!(s.handle.snapshot().iter().all(|p| p.in_flight == 0));
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_refusing_calls_is_not_the_idlest() {
    // Room for two peers; no probe within the test.
    let policy = TimeoutPolicy::default()
        .cold_start(ms(100))
        .probe_backoff(Duration::from_secs(60))
        .probe_backoff_max(Duration::from_secs(60));
    let rig = rig_with(policy, 2);
    rig.peers.silence(P::A, true);
    let mut set = JoinSet::new();
    rig.spawn(&mut set, P::A);
    rig.spawn(&mut set, P::A);
    tokio::time::sleep(ms(10)).await;
    // B's one call starts after A's last admitted call.
    rig.call(P::B, ms(1)).await.unwrap();
    set.join_all().await;
    assert_eq!(rig.state(P::A), PeerState::Silent);
    // A is called 500 times over the next 5s; every call fails fast.
    for _ in 0..500 {
        tokio::time::sleep(ms(10)).await;
        let r = rig.call(P::A, ms(1)).await;
        assert!(matches!(
            interrupted(&r).reason(),
            Reason::PeerSilent { .. }
        ));
    }
    // A new peer evicts the quiet one, B, not A.
    rig.call(P::Tail, ms(1)).await.unwrap();
    assert!(rig.handle.peer(&P::B).is_none(), "B was quiet for 5s");
    assert_eq!(
        rig.state(P::A),
        PeerState::Silent,
        "A stays tracked, silent"
    );
}

/// Tracked peers, each with one call waiting until the end of the test.
const BUSY: u64 = 10_000;
/// Calls to new peers while every tracked one is busy.
const NEW: u64 = 10_000;

#[tokio::test(start_paused = true)]
async fn calls_to_new_peers_when_every_peer_is_busy_are_untracked_at_a_constant_cost() {
    let s = stack(patient(), BUSY as usize);
    let mut busy = JoinSet::new();
    for key in 0..BUSY {
        busy.spawn(s.svc.clone().oneshot(Req { key, hang: true }));
    }
    arrivals(&s.arrived, BUSY).await;
    assert_eq!(s.handle.peer_count(), BUSY as usize);

    let mut svc = s.svc.clone();
    let started = WallClock::now();
    for key in BUSY..BUSY + NEW {
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(Req { key, hang: false })
            .await;
        assert_eq!(r.unwrap(), key);
    }
    let per_call = started.elapsed() / NEW as u32;
    eprintln!("{NEW} calls to new peers, {BUSY} busy peers tracked: {per_call:?} per call");
    assert_eq!(s.handle.untracked_calls(), NEW);
    assert_eq!(s.handle.peer_count(), BUSY as usize);
    assert!(s.handle.peer(&(BUSY + 1)).is_none());

    // One busy peer's call ends: within one pass over the table a new peer takes its place.
    let mut freed = false;
    for key in BUSY + NEW.. {
        if !freed {
            s.interrupts.interrupt_peer(&1234, "done");
            freed = true;
        }
        tokio::time::sleep(ms(1)).await;
        s.svc
            .clone()
            .oneshot(Req { key, hang: false })
            .await
            .unwrap();
        if s.handle.peer(&1234).is_none() {
            assert!(s.handle.peer(&key).is_some(), "the new peer took its place");
            assert!(key - (BUSY + NEW) <= BUSY / 32 + 1, "after {key} calls");
            break;
        }
    }
    assert_eq!(s.handle.peer_count(), BUSY as usize);
    s.interrupts.interrupt_all("end");
    busy.join_all().await;
}
