//! Deadlines that stay true: a silence leaves no mark on a peer's deadline, however often it
//! comes back; a busy peer is not cut below `cold_start` on a few dozen answers, on tokio's
//! paused clock and over real loopback sockets through a proxy that delays one reply in 50
//! by a retransmission timeout.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_adaptive_timeout::{
    AdaptiveTimeout, AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, DeadlineSource, Interrupted,
    PeerState, Reason, TimeoutPolicy,
};

use loopback::{EchoServer, Fault, FaultProxy, LineClient, LineRequest};
use tower::{Layer, ServiceExt};

use support::line::by_addr;
use support::ms;
use support::peers::{rig, Rig, P};

/// Callers that call `P::A` in a loop (answers in 8-16 ms, 10 ms between calls) until
/// `stop`.
pub(crate) fn callers(rig: &Rig, n: u64, stop: &Arc<AtomicBool>, set: &mut JoinSet<()>) {
    for caller in 0..n {
        let svc = rig.svc.clone();
        let stop = stop.clone();
        set.spawn(async move {
            let mut i = caller;
            while !stop.load(Ordering::Relaxed) {
                i = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let delay = ms(8 + (i >> 33) % 9);
                let req = support::peers::Req { peer: P::A, delay };
                let _ = tower::ServiceExt::oneshot(svc.clone(), req).await;
                tokio::time::sleep(ms(10)).await;
            }
        });
    }
}

/// How long after `since` the peer was declared silent (polled every millisecond).
async fn declared(rig: &Rig, since: Instant) -> Duration {
    while rig.state(P::A) == PeerState::Healthy || rig.state(P::A) == PeerState::Suspect {
        tokio::time::sleep(ms(1)).await;
    }
    Instant::now() - since
}

#[tokio::test(start_paused = true)]
async fn repeated_partitions_with_calls_that_never_end_leave_the_deadline_as_it_was() {
    let rig = rig(TimeoutPolicy::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    callers(&rig, 8, &stop, &mut set);
    tokio::time::sleep(ms(20_000)).await;
    let deadline = || rig.handle.deadline(&P::A).expect("tracked");
    let before = deadline();
    assert_eq!(before.1, DeadlineSource::Quantile, "{before:?}");
    let (mut after, mut to_declare) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        rig.peers.silence(P::A, true);
        let start = Instant::now();
        to_declare.push(declared(&rig, start).await);
        tokio::time::sleep_until(start + ms(5_000)).await;
        rig.peers.silence(P::A, false);
        tokio::time::sleep(ms(5_000)).await;
        assert_eq!(rig.state(P::A), PeerState::Healthy);
        after.push(deadline().0);
    }
    stop.store(true, Ordering::Relaxed);
    // Calls stuck in the last partition are cut by the peer's deadline or its silence.
    set.join_all().await;
    for d in &after {
        let drift = d.abs_diff(before.0).as_secs_f64() / before.0.as_secs_f64();
        assert!(
            drift <= 0.10,
            "deadline {before:?}, after each heal {after:?}"
        );
    }
    // Declared silent within two of the old deadlines each time, after the last answer
    // sent before the partition (up to 16 ms) and a caller's pause (10 ms): a miss is a
    // call started after the peer's last answer, and the second may start up to a
    // deadline after the first.
    assert!(
        to_declare.iter().all(|t| *t <= before.0 * 2 + ms(26)),
        "time to declare silence grew: {to_declare:?}, deadline {before:?}"
    );
}

/// Why the deadline of a call cut at its deadline had its value (`SilentPeer` for a call
/// ended by its peer's silence).
fn source(e: &Interrupted) -> DeadlineSource {
    match e.reason() {
        Reason::DeadlineExceeded { explanation, .. } => explanation.source,
        _ => DeadlineSource::SilentPeer,
    }
}

/// Asserts no call of the `made` was cut: a call the peer answers late while it answers
/// the others is a straggler, held up to `cold_start`.
fn none_cut(made: usize, cut: &[DeadlineSource]) {
    assert!(cut.is_empty(), "{cut:?} of {made} healthy calls cut");
}

/// Starts `n` callers of `P::B` at once, each calling back to back for `span`: answers in
/// 10-13 ms, but one call in 50 waits a 200 ms retransmission. Returns the calls made and
/// the sources of the deadlines of the calls cut.
async fn lossy_callers(rig: &Rig, n: u64, span: Duration) -> (usize, Vec<DeadlineSource>) {
    let end = Instant::now() + span;
    let mut set = JoinSet::new();
    for caller in 0..n {
        let svc = rig.svc.clone();
        set.spawn(async move {
            let (mut made, mut cut) = (0, Vec::new());
            let mut i = caller.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            while Instant::now() < end {
                i = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let mut delay = ms(10 + (i >> 33) % 4);
                if (i >> 40) % 50 == 0 {
                    delay += ms(200);
                }
                let req = support::peers::Req { peer: P::B, delay };
                made += 1;
                let answered = tower::ServiceExt::oneshot(svc.clone(), req).await;
                if answered.is_err() {
                    cut.push(source(&support::interrupted(&answered)));
                }
            }
            (made, cut)
        });
    }
    tally(set).await
}

/// The calls made and the deadline sources of the calls cut, over all the callers of `set`.
async fn tally(set: JoinSet<(usize, Vec<DeadlineSource>)>) -> (usize, Vec<DeadlineSource>) {
    let ended = set.join_all().await.into_iter();
    ended.fold((0, Vec::new()), |(m, mut c), (made, cut)| {
        c.extend(cut);
        (m + made, c)
    })
}

#[tokio::test(start_paused = true)]
async fn a_busy_peer_on_a_lossy_link_has_no_healthy_call_cut() {
    let rig = rig(TimeoutPolicy::default());
    // 24 callers from the first call: a few dozen answers show no 2% mode, and the peer
    // will have `min_samples` real ones within a fraction of a second.
    let (made, cut) = lossy_callers(&rig, 24, ms(3_000)).await;
    assert!(made > 3_000, "{made} calls");
    none_cut(made, &cut);
}

#[tokio::test(start_paused = true)]
async fn with_min_samples_at_the_quantiles_count_a_busy_lossy_peer_has_no_call_cut() {
    // 1,000 answers hold a p99.9: the first 100 of a busy peer are its fastest.
    let rig = rig(TimeoutPolicy::default().min_samples(1_000));
    let (made, cut) = lossy_callers(&rig, 24, ms(3_000)).await;
    assert!(made > 3_000, "{made} calls");
    assert!(cut.is_empty(), "{cut:?} of {made} healthy calls cut");
    // Once the window holds 1,000 it learns the quantile, retransmissions included.
    let (deadline, source) = rig.handle.deadline(&P::B).expect("tracked");
    assert_eq!(source, DeadlineSource::Quantile);
    assert!(deadline > ms(420) && deadline < ms(1_000), "{deadline:?}");
}

/// 24 callers from the first call, back to back until `calls` calls were made (counted,
/// not timed, so a loaded machine makes as many) and at least two retransmission timeouts
/// have passed, over loopback TCP through a proxy that holds one reply in 50 for 200 ms (a
/// retransmission), the layer under `policy`. Returns the calls made, the sources of the
/// deadlines of the calls cut, and the peer's deadline at the end.
///
/// The peer stays busy until every held reply is back: on an idle machine the calls are
/// made in some 25 ms, and a reply held past the last of the others is a peer that answers
/// nothing with calls outstanding, which the layer cuts as a silence once its deadline has
/// passed (a busy peer on a lossy link, the case under test, keeps answering the others).
async fn lossy_sockets(
    policy: TimeoutPolicy,
    calls: usize,
) -> (usize, Vec<DeadlineSource>, (Duration, DeadlineSource)) {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr()).await;
    let rto = ms(200);
    proxy.set(Fault::Retransmit { one_in: 50, rto });
    let busy_until = Instant::now() + rto * 2;
    let layer = by_addr().policy(policy).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(LineClient::new());
    let addr: SocketAddr = proxy.addr();
    let left = Arc::new(AtomicUsize::new(calls));
    let mut set = JoinSet::new();
    for _ in 0..24 {
        let (svc, left) = (svc.clone(), left.clone());
        set.spawn(async move {
            let (mut made, mut cut) = (0, Vec::new());
            let take = |n: usize| n.checked_sub(1);
            while left.fetch_update(Relaxed, Relaxed, take).is_ok() || Instant::now() < busy_until {
                made += 1;
                let answered = svc.clone().oneshot(LineRequest::new(addr, 1, "x")).await;
                if answered.is_err() {
                    cut.push(source(&support::interrupted(&answered)));
                }
            }
            (made, cut)
        });
    }
    let (made, cut) = tally(set).await;
    (made, cut, handle.deadline(&addr).expect("tracked"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_sockets_a_busy_peer_with_a_retransmission_tail_has_no_healthy_call_cut() {
    let (made, cut, _) = lossy_sockets(TimeoutPolicy::default(), 600).await;
    assert!(made >= 600, "{made} calls");
    none_cut(made, &cut);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_sockets_with_min_samples_1000_no_healthy_call_is_cut() {
    let policy = TimeoutPolicy::default().min_samples(1_000);
    // Enough for the window to hold 1,000 answers and learn from them.
    let (made, cut, (deadline, source)) = lossy_sockets(policy, 1_100).await;
    assert!(cut.is_empty(), "{cut:?} of {made} healthy calls cut");
    assert_eq!(source, DeadlineSource::Quantile, "{made} calls");
    // The retransmissions are in the quantile: 200 ms x 2 + 5 ms at least.
    assert!(deadline >= ms(405), "{deadline:?}");
}

/// A peer behind a link that can be cut (or a host that can stall): a call sent while it
/// is cut waits (in a buffer) until the link heals, then is answered after its delay, as
/// TCP delivers it.
#[derive(Clone)]
pub(crate) struct Buffered {
    pub(crate) cut: tokio::sync::watch::Sender<bool>,
}

impl Buffered {
    /// A link that is not cut.
    pub(crate) fn new() -> Self {
        Buffered {
            cut: tokio::sync::watch::channel(false).0,
        }
    }
}

/// The layer (under `policy`) over a [`Buffered`] link to one peer, and its handle.
pub(crate) fn over_link(policy: TimeoutPolicy) -> (Buffered, AdaptiveTimeoutHandle<u8>, LinkSvc) {
    let link = Buffered::new();
    let layer = AdaptiveTimeoutLayer::builder((|_: &Duration| 1u8) as fn(&Duration) -> u8)
        .policy(policy)
        .jitter_seed(7)
        .build()
        .unwrap();
    (link.clone(), layer.handle(), layer.layer(link))
}

/// The layer over a [`Buffered`] link.
pub(crate) type LinkSvc = AdaptiveTimeout<Buffered, u8, fn(&Duration) -> u8>;

/// 8 callers over `svc` (answers in 8-16 ms, 10 ms between calls) until `stop`; each
/// returns how many of its calls were cut.
pub(crate) fn link_callers(svc: &LinkSvc, stop: &Arc<AtomicBool>, set: &mut JoinSet<usize>) {
    for caller in 0..8u64 {
        let (svc, stop) = (svc.clone(), stop.clone());
        set.spawn(async move {
            let (mut i, mut cut) = (caller, 0);
            while !stop.load(Ordering::Relaxed) {
                i = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                cut += usize::from(svc.clone().oneshot(ms(8 + (i >> 33) % 9)).await.is_err());
                tokio::time::sleep(ms(10)).await;
            }
            cut
        });
    }
}

impl tower::Service<Duration> for Buffered {
    type Response = ();
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, delay: Duration) -> Self::Future {
        let mut cut = self.cut.subscribe();
        Box::pin(async move {
            let _ = cut.wait_for(|cut| !*cut).await;
            tokio::time::sleep(delay).await;
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_answered_as_a_partition_heals_leaves_the_deadline_as_it_was() {
    let (link, handle, svc) = over_link(TimeoutPolicy::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    link_callers(&svc, &stop, &mut set);
    tokio::time::sleep(ms(20_000)).await;
    let before = handle.deadline(&1).expect("tracked");
    assert_eq!(before.1, DeadlineSource::Quantile, "{before:?}");
    let mut after = Vec::new();
    for k in 0..3 {
        link.cut.send_replace(true);
        // The first probe of a silence is a long one (cold start): heal while it waits, and
        // it is answered as the link heals, 8-16 ms after, some 400 ms after it started.
        // Readmitted within `cold_start` of its last answer, the peer learns a floor on
        // silence from it (1.25 x 500 ms and more): the next cuts are held through as
        // stalls, their calls answered as the link heals, and no probe goes.
        tokio::time::sleep(ms(500)).await;
        let state = [PeerState::Probing, PeerState::Healthy][usize::from(k > 0)];
        assert_eq!(handle.peer(&1).unwrap().state, state, "cut {k}");
        link.cut.send_replace(false);
        tokio::time::sleep(ms(1_000)).await;
        assert_eq!(handle.peer(&1).unwrap().state, PeerState::Healthy);
        let now = handle.deadline(&1).expect("tracked").0;
        after.push(now);
        let drift = now.abs_diff(before.0).as_secs_f64() / before.0.as_secs_f64();
        assert!(
            drift <= 0.10,
            "deadline {before:?}, a second after each heal {after:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    set.join_all().await;
}
