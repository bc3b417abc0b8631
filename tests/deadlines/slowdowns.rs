//! A stall and a slowdown both leave a peer quiet for longer than its deadline; what tells
//! them apart is what follows: after a stall, calls sent once it ended are answered in
//! time again; in a slowdown none are. A stall's answers stay out of the history; a
//! slowdown's are the peer's latency, learned within seconds whether or not the peer
//! learned a floor on silence before. And a peer whose own calls take longer than
//! `cold_start` learns a floor from a short stall like any other.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};
use tower::util::BoxCloneService;
use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, Interrupted, Reason, TimeoutPolicy,
};

use crate::support::ms;

type Svc = BoxCloneService<u64, (), BoxError>;
/// When each call ended, and how.
type Log = Arc<Mutex<Vec<(Instant, &'static str)>>>;

/// The host behind one peer: call `n` takes `latency[n % 2]` ms, and no call is answered
/// before `stall_until` (a stall also holds the answers of calls already in flight).
#[derive(Clone, Default)]
struct Host {
    latency: Arc<[AtomicU64; 2]>,
    stall_until: Arc<Mutex<Option<Instant>>>,
}

impl Host {
    fn new(even: u64, odd: u64) -> Self {
        let host = Host::default();
        host.set(even, odd);
        host
    }

    fn set(&self, even: u64, odd: u64) {
        self.latency[0].store(even, Relaxed);
        self.latency[1].store(odd, Relaxed);
    }

    fn stall(&self, for_: Duration) {
        *self.stall_until.lock().unwrap() = Some(Instant::now() + for_);
    }

    /// The layer (one peer, odd calls of class "fast" if `classed`) over this host.
    fn stack(&self, classed: bool) -> (Svc, AdaptiveTimeoutHandle<u8>) {
        let host = self.clone();
        let inner = service_fn(move |n: u64| {
            let (latency, stall) = (&host.latency[(n % 2) as usize], &host.stall_until);
            let latency = ms(latency.load(Relaxed));
            let stall = Arc::clone(stall);
            async move {
                sleep(latency).await;
                let until = *stall.lock().unwrap();
                if let Some(until) = until {
                    sleep_until(until).await;
                }
                Ok::<_, BoxError>(())
            }
        });
        let builder = AdaptiveTimeoutLayer::builder(|_: &u64| 1u8)
            .policy(TimeoutPolicy::default().min_samples(5));
        let (handle, svc) = if classed {
            let layer = builder
                .latency_class(|n: &u64| (n % 2 == 1).then_some("fast"))
                .build()
                .unwrap();
            (layer.handle(), BoxCloneService::new(layer.layer(inner)))
        } else {
            let layer = builder.build().unwrap();
            (layer.handle(), BoxCloneService::new(layer.layer(inner)))
        };
        (svc, handle)
    }
}

/// Sends call 0, 1, 2, ... one every `every` for `for_`, each in a task of its own; logs
/// how each ended.
fn traffic(svc: Svc, every: Duration, for_: Duration, log: Log) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (until, mut calls) = (Instant::now() + for_, JoinSet::new());
        for n in 0.. {
            if Instant::now() >= until {
                break;
            }
            let (svc, log) = (svc.clone(), Arc::clone(&log));
            calls.spawn(async move {
                let how = match svc.oneshot(n).await {
                    Ok(()) => "ok",
                    Err(e) => {
                        let i = Interrupted::find(&*e).expect("an interrupted call");
                        match (i.reason(), i.was_sent()) {
                            (Reason::PeerSilent { .. }, true) => "silent",
                            (_, false) => "refused",
                            _ => "timeout",
                        }
                    }
                };
                log.lock().unwrap().push((Instant::now(), how));
            });
            sleep(every).await;
        }
        calls.join_all().await;
    })
}

/// How the calls that ended in `[from, to)` ended.
fn ended(log: &Log, from: Instant, to: Instant) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for (_, how) in log
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| (from..to).contains(at))
    {
        *counts.entry(*how).or_default() += 1;
    }
    counts
}

/// A call every 50 ms answered in 10 ms; after 3 s one 300 ms stall if `stall_first`
/// (the peer learns a floor on silence from it); at 6 s the latency goes to 200 ms for
/// good. Returns how long after that the deadline first covered the new latency (polled
/// every 100 ms, up to 20 s), and the floor the peer had then.
async fn follows_a_slowdown(stall_first: bool) -> (Duration, Duration) {
    let host = Host::new(10, 10);
    let (svc, handle) = host.stack(false);
    let log = Log::default();
    let calls = traffic(svc, ms(50), ms(26_000), log);
    sleep(ms(3_000)).await;
    if stall_first {
        host.stall(ms(300));
    }
    sleep(ms(3_000)).await;
    let floor = handle.peer(&1).expect("tracked").learned_silence_floor;
    host.set(200, 200);
    let slowed = Instant::now();
    while handle.peer(&1).expect("tracked").deadline < ms(200) && slowed.elapsed() < ms(20_000) {
        sleep(ms(100)).await;
    }
    let followed = slowed.elapsed();
    calls.await.unwrap();
    (followed, floor)
}

#[tokio::test(start_paused = true)]
async fn a_slowdown_is_learned_within_seconds_without_a_floor_on_silence() {
    let (followed, floor) = follows_a_slowdown(false).await;
    assert_eq!(floor, Duration::ZERO);
    assert!(
        followed <= ms(5_000),
        "deadline followed after {followed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slowdown_is_learned_within_seconds_though_a_floor_holds_its_calls() {
    let (followed, floor) = follows_a_slowdown(true).await;
    // The stall taught a floor well above the 200 ms the calls now take: it holds them all.
    assert!(floor > ms(300), "floor {floor:?}");
    assert!(
        followed <= ms(5_000),
        "deadline followed after {followed:?}"
    );
}

/// Even calls take `slow` ms, odd ones (class "fast") 20 ms; a call every 20 ms. After
/// 45 s (the fast class has the 1,000 answers its p99.9 needs to be its own, shorter than
/// its peer's), two 800 ms stalls 8 s apart. Returns how the calls ended in the 8 s from
/// each.
async fn two_stalls(slow: u64) -> [BTreeMap<&'static str, usize>; 2] {
    let host = Host::new(slow, 20);
    let (svc, handle) = host.stack(true);
    let log = Log::default();
    let calls = traffic(svc, ms(20), ms(61_000), Arc::clone(&log));
    sleep(ms(45_000)).await;
    let mut after = [BTreeMap::new(), BTreeMap::new()];
    for each in &mut after {
        let from = Instant::now();
        host.stall(ms(800));
        sleep(ms(8_000)).await;
        *each = ended(&log, from, Instant::now());
    }
    calls.await.unwrap();
    assert_eq!(handle.peer(&1).expect("tracked").in_flight, 0);
    after
}

#[tokio::test(start_paused = true)]
async fn a_peer_whose_calls_take_longer_than_cold_start_holds_its_second_short_stall() {
    for slow in [100, 1_500] {
        let [first, second] = two_stalls(slow).await;
        // No floor yet: the first stall is cut as a silence.
        assert!(first.contains_key("silent"), "{slow} ms calls: {first:?}");
        // The floor it taught holds the second: no call cut, none refused.
        assert_eq!(second.get("silent"), None, "{slow} ms calls: {second:?}");
        assert_eq!(second.get("refused"), None, "{slow} ms calls: {second:?}");
    }
}
