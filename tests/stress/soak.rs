//! Soak: many calls over several peers while faults switch at random, checking that every
//! call resolves exactly once and nothing is left behind.
//!
//! * Simulated peers on tokio's paused clock: 240,000 calls over eight peers whose modes
//!   switch every few virtual milliseconds (silence on and off, latency shifts, inner
//!   errors, inner panics), with a stream of never-repeated keys pressing on a small peer
//!   table.
//! * Real loopback TCP: 10,000 calls through three `FaultProxy`s to one `EchoServer`, on a
//!   two-worker runtime, while each proxy's fault switches at random.
//!
//! Both check that responses + typed errors (+ panics) == calls issued, that every injected
//! error and panic surfaces exactly once, that no peer has a call in flight at the end, that
//! the peer table never exceeds `max_peers`, and that the runtime's task count returns to
//! its baseline.

use crate::support;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use loopback::{EchoServer, Fault, FaultProxy, LineClient, LineRequest};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, Interrupted, PeerState, TimeoutPolicy,
};

use support::line::by_addr;
use support::{ms, Rng};

/// Seed of every random stream of the soak: the same run every time.
const SEED: u64 = 7;

/// How the calls of a run ended.
#[derive(Debug, Default)]
struct Outcomes {
    ok: AtomicU64,
    interrupted: AtomicU64,
    inner_errors: AtomicU64,
    panics: AtomicU64,
}

impl Outcomes {
    fn count<T>(&self, r: Result<Result<T, BoxError>, tokio::task::JoinError>) {
        let counter = match r {
            Ok(Ok(_)) => &self.ok,
            Ok(Err(e)) if e.downcast_ref::<Interrupted>().is_some() => &self.interrupted,
            Ok(Err(e)) => {
                assert!(
                    e.downcast_ref::<io::Error>().is_some(),
                    "untyped error: {e}"
                );
                &self.inner_errors
            }
            Err(e) => {
                assert!(e.is_panic(), "{e}");
                &self.panics
            }
        };
        counter.fetch_add(1, SeqCst);
    }

    fn total(&self) -> u64 {
        [
            &self.ok,
            &self.interrupted,
            &self.inner_errors,
            &self.panics,
        ]
        .iter()
        .map(|c| c.load(SeqCst))
        .sum()
    }
}

/// Installs (once) a panic hook that keeps injected panics quiet.
fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|s| s.starts_with("injected"));
            if !injected {
                default(info);
            }
        }));
    });
}

/// Every peer has a call in flight no longer, and the table kept its bound.
fn assert_settled<K: tower_adaptive_timeout::PeerKey>(
    handle: &AdaptiveTimeoutHandle<K>,
    max: usize,
) {
    let snaps = handle.snapshot();
    assert!(snaps.len() <= max, "{} peers tracked", snaps.len());
    for s in &snaps {
        assert_eq!(s.in_flight, 0, "{}: {} in flight", s.peer, s.in_flight);
    }
}

/// Spawns `n` workers, each given its index, waits (at most `limit`) until they all finish,
/// then stops `switcher`. Returns the wall time the workers took.
async fn run_workers<F>(
    n: u64,
    limit: Duration,
    switcher: JoinHandle<()>,
    worker: impl Fn(u64) -> F,
) -> Duration
where
    F: Future<Output = ()> + Send + 'static,
{
    let started = std::time::Instant::now();
    let mut workers = JoinSet::new();
    for w in 0..n {
        workers.spawn(worker(w));
    }
    timeout(limit, workers.join_all())
        .await
        .expect("workers finish");
    switcher.abort();
    let _ = switcher.await;
    started.elapsed()
}

/// Reports a run of `calls` calls of the `kind` given, and checks each was counted once.
fn assert_all_counted(o: &Outcomes, calls: u64, kind: &str, wall: Duration) {
    eprintln!("{calls} {kind} calls in {wall:?}: {o:?}");
    assert_eq!(o.total(), calls, "{o:?}");
}

/// Waits (bounded) until the runtime has no more live tasks than `baseline`.
async fn tasks_back_to(baseline: usize) {
    let metrics = tokio::runtime::Handle::current().metrics();
    for _ in 0..500 {
        if metrics.num_alive_tasks() <= baseline {
            return;
        }
        tokio::time::sleep(ms(10)).await;
    }
    panic!(
        "{} tasks alive, baseline {baseline}",
        metrics.num_alive_tasks()
    );
}

// ---------------------------------------------------------------------------------------
// Simulated peers on the paused clock.

const SIM_PEERS: u64 = 8;
const SIM_WORKERS: u64 = 64;
const SIM_CALLS: u64 = SIM_WORKERS * 3_750;
const SIM_MAX_PEERS: usize = 24;
/// Keys from here on are used once each.
const HOSTILE_KEYS: u64 = 1 << 32;

/// What a simulated peer does with the calls it gets.
#[derive(Clone, Copy, Debug)]
struct Mode {
    latency: Duration,
    silent: bool,
    /// Per mille of calls answered with an `io::Error`, and that panic.
    errors: u64,
    panics: u64,
}

impl Mode {
    fn random(rng: &mut Rng) -> Mode {
        Mode {
            latency: ms(1 + rng.below(30)),
            silent: rng.below(6) == 0,
            errors: [0, 0, 20, 200][rng.below(4) as usize],
            panics: [0, 0, 0, 10][rng.below(4) as usize],
        }
    }
}

/// A call, with a roll (0..1000) that decides an error or a panic against the peer's mode.
#[derive(Clone, Copy, Debug)]
struct Call {
    key: u64,
    roll: u64,
}

/// The simulated peers; counts every error and panic it injects.
#[derive(Clone)]
struct Sim {
    modes: Arc<Mutex<Vec<Mode>>>,
    errors: Arc<AtomicU64>,
    panics: Arc<AtomicU64>,
}

impl Service<Call> for Sim {
    type Response = u64;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<u64>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, c: Call) -> Self::Future {
        let mode = match self.modes.lock().unwrap().get(c.key as usize) {
            Some(m) => *m,
            None => Mode {
                latency: ms(2),
                silent: false,
                errors: 0,
                panics: 0,
            },
        };
        let (errors, panics) = (self.errors.clone(), self.panics.clone());
        Box::pin(async move {
            if c.roll < mode.panics {
                panics.fetch_add(1, SeqCst);
                panic!("injected panic");
            }
            if c.roll < mode.panics + mode.errors {
                errors.fetch_add(1, SeqCst);
                return Err(io::Error::other("injected error"));
            }
            if mode.silent {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(mode.latency).await;
            Ok(c.key)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn simulated_peers_under_random_faults_resolve_every_call_once() {
    quiet_injected_panics();
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let mut seed = Rng::new(SEED, 7);
    let modes: Vec<Mode> = (0..SIM_PEERS).map(|_| Mode::random(&mut seed)).collect();
    let sim = Sim {
        modes: Arc::new(Mutex::new(modes)),
        errors: Arc::default(),
        panics: Arc::default(),
    };
    let layer = AdaptiveTimeoutLayer::builder(|c: &Call| c.key)
        .policy(
            TimeoutPolicy::default()
                .min(ms(20))
                .cold_start(ms(100))
                .window(ms(2_000))
                .probe_backoff(ms(20))
                .probe_backoff_max(ms(200)),
        )
        .max_peers(SIM_MAX_PEERS)
        .idle_ttl(ms(500))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(sim.clone());

    // Switches one peer's mode every few virtual milliseconds until told to stop.
    let switcher = {
        let modes = sim.modes.clone();
        tokio::spawn(async move {
            let mut rng = Rng::new(SEED, 11);
            loop {
                tokio::time::sleep(ms(1 + rng.below(10))).await;
                let peer = rng.below(SIM_PEERS) as usize;
                modes.lock().unwrap()[peer] = Mode::random(&mut rng);
            }
        })
    };

    let outcomes = Arc::new(Outcomes::default());
    let wall = run_workers(SIM_WORKERS, Duration::from_secs(24 * 3600), switcher, |w| {
        let (svc, handle, outcomes) = (svc.clone(), handle.clone(), outcomes.clone());
        async move {
            let mut rng = Rng::new(SEED, 100 + w);
            for i in 0..SIM_CALLS / SIM_WORKERS {
                let key = match rng.below(20) {
                    0 => HOSTILE_KEYS + w * SIM_CALLS + i,
                    _ => rng.below(SIM_PEERS),
                };
                let call = Call {
                    key,
                    roll: rng.below(1000),
                };
                let r = tokio::spawn(svc.clone().oneshot(call)).await;
                outcomes.count(r);
                assert!(handle.peer_count() <= SIM_MAX_PEERS);
            }
        }
    })
    .await;

    let o = &outcomes;
    assert_all_counted(o, SIM_CALLS, "simulated", wall);
    assert_eq!(o.inner_errors.load(SeqCst), sim.errors.load(SeqCst));
    assert_eq!(o.panics.load(SeqCst), sim.panics.load(SeqCst));
    for c in [&o.ok, &o.interrupted, &o.inner_errors, &o.panics] {
        assert!(c.load(SeqCst) > 0, "every kind of outcome occurred: {o:?}");
    }
    assert_settled(&handle, SIM_MAX_PEERS);
    tasks_back_to(baseline).await;
}

// ---------------------------------------------------------------------------------------
// Real loopback TCP.

const TCP_WORKERS: u64 = 16;
const TCP_CALLS: u64 = TCP_WORKERS * 625;

/// A fault for the TCP soak, mostly `Pass` so the peers keep coming back.
fn random_fault(rng: &mut Rng) -> Fault {
    match rng.below(10) {
        0 => Fault::Blackhole,
        1 => Fault::Reset,
        2 => Fault::HalfOpen,
        3 | 4 => Fault::Delay(ms(1 + rng.below(10))),
        _ => Fault::Pass,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_peers_under_random_faults_resolve_every_call_once() {
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let server = EchoServer::start().await;
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(Arc::new(FaultProxy::start(server.addr()).await));
    }
    let addrs: Vec<SocketAddr> = proxies.iter().map(|p| p.addr()).collect();
    let layer = by_addr()
        .policy(
            TimeoutPolicy::default()
                .min(ms(100))
                .cold_start(ms(300))
                .min_samples(10)
                .probe_backoff(ms(50))
                .probe_backoff_max(ms(200)),
        )
        .max_peers(addrs.len())
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(LineClient::new());

    let switcher = {
        let proxies = proxies.clone();
        tokio::spawn(async move {
            let mut rng = Rng::new(SEED, 5);
            loop {
                tokio::time::sleep(ms(50 + rng.below(100))).await;
                let p = &proxies[rng.below(proxies.len() as u64) as usize];
                p.set(random_fault(&mut rng));
            }
        })
    };

    let outcomes = Arc::new(Outcomes::default());
    let wall = run_workers(TCP_WORKERS, Duration::from_secs(60), switcher, |w| {
        let (svc, addrs, outcomes) = (svc.clone(), addrs.clone(), outcomes.clone());
        async move {
            let mut rng = Rng::new(SEED, 200 + w);
            for _ in 0..TCP_CALLS / TCP_WORKERS {
                let addr = addrs[rng.below(addrs.len() as u64) as usize];
                let req = LineRequest::new(addr, rng.below(3), "soak");
                let r = timeout(ms(10_000), svc.clone().oneshot(req))
                    .await
                    .expect("a call resolves");
                outcomes.count(Ok(r));
            }
        }
    })
    .await;
    let o = &outcomes;
    assert_all_counted(o, TCP_CALLS, "TCP", wall);
    assert!(o.ok.load(SeqCst) > TCP_CALLS / 2, "{o:?}");
    assert_settled(&handle, addrs.len());

    // With the faults cleared, every peer answers and is Healthy again.
    for (proxy, addr) in proxies.iter().zip(&addrs) {
        proxy.set(Fault::Pass);
        let recovered = async {
            loop {
                let ok = svc.clone().oneshot(LineRequest::new(*addr, 0, "x")).await;
                let state = handle.peer(addr).map(|p| p.state);
                if ok.is_ok() && state == Some(PeerState::Healthy) {
                    break;
                }
                tokio::time::sleep(ms(20)).await;
            }
        };
        timeout(Duration::from_secs(5), recovered)
            .await
            .unwrap_or_else(|_| panic!("{addr} did not recover"));
    }
    assert_settled(&handle, addrs.len());
    drop((svc, proxies, server));
    tasks_back_to(baseline).await;
}
