//! Recovery on tokio's paused clock: a peer that comes back is let back in, whatever its
//! callers' deadlines, however it comes back (slower, after refusing connections), and
//! silences leave its deadline where its answers put it.

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, ByPeer, HasPeer, PeerState, Propagation,
    TimeoutPolicy,
};

use support::ms;

/// How the peer treats a call that arrives now.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Never answers (a blackhole).
    Silent,
    /// Fails at once with connection refused (its process is down).
    Refusing,
    /// Answers after this long.
    Answering(Duration),
}

/// A call, with the caller's own deadline if it has one.
#[derive(Clone, Copy, Debug)]
struct Ask {
    budget: Option<Duration>,
}

impl HasPeer for Ask {
    type Key = u8;
    fn peer(&self) -> Option<u8> {
        Some(1)
    }
    fn caller_deadline(&self, _: &Propagation) -> Option<Duration> {
        self.budget
    }
}

/// The one peer: its mode, and when each call reached it.
#[derive(Default)]
struct Peer {
    mode: Mutex<Option<Mode>>,
    arrivals: Mutex<Vec<Instant>>,
}

impl Peer {
    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = Some(mode);
    }

    fn arrivals_since(&self, t: Instant) -> usize {
        self.arrivals
            .lock()
            .unwrap()
            .iter()
            .filter(|a| **a >= t)
            .count()
    }
}

type Svc = tower_adaptive_timeout::AdaptiveTimeout<
    BoxCloneSyncService<Ask, (), std::io::Error>,
    u8,
    ByPeer,
>;

struct Rig {
    svc: Svc,
    handle: AdaptiveTimeoutHandle<u8>,
    peer: Arc<Peer>,
}

fn rig(policy: TimeoutPolicy) -> Rig {
    let peer = Arc::new(Peer::default());
    let p = peer.clone();
    let inner = BoxCloneSyncService::new(service_fn(move |_: Ask| {
        p.arrivals.lock().unwrap().push(Instant::now());
        let mode = p.mode.lock().unwrap().unwrap_or(Mode::Answering(ms(10)));
        async move {
            match mode {
                Mode::Silent => std::future::pending().await,
                Mode::Refusing => Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
                Mode::Answering(d) => {
                    tokio::time::sleep(d).await;
                    Ok(())
                }
            }
        }
    }));
    let layer = AdaptiveTimeoutLayer::by_peer::<u8>()
        .policy(policy)
        .jitter_seed(7)
        .build()
        .unwrap();
    Rig {
        handle: layer.handle(),
        svc: layer.layer(inner),
        peer,
    }
}

impl Rig {
    async fn call(&self, budget: Option<Duration>) -> Result<(), BoxError> {
        self.svc.clone().oneshot(Ask { budget }).await
    }

    /// 150 answers at `latency`, one after the other.
    async fn warm(&self, latency: Duration) {
        self.peer.set(Mode::Answering(latency));
        for _ in 0..150 {
            self.call(None).await.unwrap();
        }
    }

    /// Blackholes the peer and makes two calls at once: both miss, and the peer is silent.
    async fn silence(&self) {
        self.peer.set(Mode::Silent);
        let (a, b) = tokio::join!(self.call(None), self.call(None));
        assert!(a.is_err() && b.is_err());
        assert_eq!(self.state(), PeerState::Silent);
    }

    fn state(&self) -> PeerState {
        self.handle.peer(&1).unwrap().state
    }

    fn deadline(&self) -> Duration {
        self.handle.deadline(&1).unwrap().0
    }

    /// Calls every `every` for `span` (each with `budget`); returns when the first one
    /// succeeded, if any did.
    async fn keep_calling(
        &self,
        every: Duration,
        span: Duration,
        budget: Option<Duration>,
    ) -> Option<Instant> {
        let end = Instant::now() + span;
        let mut calls = tokio::task::JoinSet::new();
        while Instant::now() < end {
            let svc = self.svc.clone();
            calls.spawn(async move {
                let ok = svc.oneshot(Ask { budget }).await.is_ok();
                ok.then(Instant::now)
            });
            tokio::time::sleep(every).await;
        }
        calls.join_all().await.into_iter().flatten().min()
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_cut_by_the_callers_deadline_frees_the_probe_slot() {
    let rig = rig(TimeoutPolicy::default());
    rig.warm(ms(10)).await;
    rig.silence().await;
    // Every caller gives the call 20ms of its own, shorter than any probe's deadline: the
    // probes that go while the peer is still silent are cut by their callers. Then the
    // peer comes back, answering in 2ms.
    rig.keep_calling(ms(50), ms(3_000), Some(ms(20))).await;
    rig.peer.set(Mode::Answering(ms(2)));
    let back = Instant::now();
    let first = rig.keep_calling(ms(50), ms(10_000), Some(ms(20))).await;
    assert!(first.is_some_and(|t| t - back < ms(3000)), "{first:?}");
    assert_eq!(rig.state(), PeerState::Healthy);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_off_readmits_a_peer_slower_than_min() {
    let rig = rig(TimeoutPolicy::default().fail_fast(false));
    rig.warm(ms(20)).await;
    rig.silence().await;
    rig.peer.set(Mode::Answering(ms(20)));
    let back = Instant::now();
    let first = rig.keep_calling(ms(70), ms(5_000), None).await;
    assert!(first.is_some_and(|t| t - back < ms(3000)), "{first:?}");
    assert_eq!(rig.state(), PeerState::Healthy);
}

#[tokio::test(start_paused = true)]
async fn callers_that_give_up_early_do_not_hammer_a_silent_peer() {
    let rig = rig(TimeoutPolicy::default());
    // A deadline above 50ms, so probes are dropped by their callers before it.
    rig.warm(ms(40)).await;
    assert!(rig.deadline() > ms(50), "{:?}", rig.deadline());
    rig.silence().await;
    // Callers with their own 50ms timeout drop every call that takes longer, probes too.
    let since = Instant::now();
    while Instant::now() - since < ms(10_000) {
        let _ = tokio::time::timeout(ms(50), rig.call(None)).await;
        tokio::time::sleep(ms(45)).await;
    }
    let span = Instant::now() - since;
    let reached = rig.peer.arrivals_since(since);
    let most = span.as_millis() / TimeoutPolicy::default().probe_backoff.as_millis() + 1;
    assert!(
        reached as u128 <= most,
        "{reached} calls reached the silent peer in {span:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn calls_cut_by_short_caller_budgets_still_detect_silence() {
    // Blackholed from the start (cold start, 1s deadline); every caller allows 300ms.
    let rig = rig(TimeoutPolicy::default());
    rig.peer.set(Mode::Silent);
    let since = Instant::now();
    for _ in 0..50 {
        let _ = rig.call(Some(ms(300))).await;
    }
    assert_eq!(rig.state(), PeerState::Silent);
    assert!(
        rig.peer.arrivals_since(since) <= 5,
        "{} calls waited on the silent peer",
        rig.peer.arrivals_since(since)
    );
}

#[tokio::test(start_paused = true)]
async fn turning_detection_off_releases_silent_peers() {
    let rig = rig(TimeoutPolicy::default());
    rig.warm(ms(10)).await;
    rig.silence().await;
    rig.peer.set(Mode::Answering(ms(10)));
    rig.handle
        .set_default_policy(TimeoutPolicy::default().silent_after_misses(0))
        .unwrap();
    assert_eq!(rig.state(), PeerState::Healthy);
    for _ in 0..100 {
        rig.call(None).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_back_ten_times_slower_after_a_restart_is_readmitted_within_three_probes_and_two_seconds(
) {
    let rig = rig(TimeoutPolicy::default());
    rig.warm(ms(10)).await;
    let before = rig.deadline();
    assert!(before < ms(100), "{before:?}");
    // The process hangs (blackhole), is killed and restarted (connection refused), and
    // comes back answering 10x slower, above its old deadline.
    rig.silence().await;
    tokio::time::sleep(ms(3_000)).await;
    rig.peer.set(Mode::Refusing);
    rig.keep_calling(ms(20), ms(2_000), None).await;
    assert_eq!(rig.state(), PeerState::Silent);
    let failures = rig.handle.peer(&1).unwrap().failures;
    assert!(failures >= 1, "probes met the refusing port");
    rig.peer.set(Mode::Answering(ms(100)));
    let back = Instant::now();
    let first = rig.keep_calling(ms(20), ms(3_000), None).await;
    let probes = rig.peer.arrivals.lock().unwrap()[..]
        .iter()
        .filter(|a| **a >= back && first.is_some_and(|f| **a < f))
        .count();
    assert!(first.is_some_and(|t| t - back <= ms(2_000)), "{first:?}");
    assert!(probes <= 3, "{probes} probes");
    // The window was re-seeded: the deadline follows the new latency.
    assert_eq!(rig.state(), PeerState::Healthy);
    assert!(rig.deadline() > ms(100), "{:?}", rig.deadline());
}

#[tokio::test(start_paused = true)]
async fn repeated_partitions_leave_the_deadline_and_the_time_to_declare_silence_unchanged() {
    let rig = rig(TimeoutPolicy::default());
    rig.warm(ms(10)).await;
    let before = rig.deadline();
    let mut to_declare = Vec::new();
    for _ in 0..4 {
        // Ten callers at once when the partition starts.
        rig.peer.set(Mode::Silent);
        let start = Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..10 {
            calls.spawn(rig.svc.clone().oneshot(Ask { budget: None }));
        }
        calls.join_all().await;
        to_declare.push(Instant::now() - start);
        assert_eq!(rig.state(), PeerState::Silent);
        tokio::time::sleep(ms(5_000)).await;
        rig.peer.set(Mode::Answering(ms(10)));
        let first = rig.keep_calling(ms(20), ms(5_000), None).await;
        assert!(first.is_some());
        assert_eq!(rig.state(), PeerState::Healthy);
    }
    let after = rig.deadline();
    let drift = after.abs_diff(before).as_secs_f64() / before.as_secs_f64();
    assert!(drift <= 0.10, "deadline {before:?} -> {after:?}");
    assert!(
        to_declare.windows(2).all(|w| w[1] <= w[0] + ms(1)),
        "time to declare silence grew: {to_declare:?}"
    );
}
