//! Balancer mode on tokio's paused clock: an endpoint is not ready while its peer is silent
//! and no probe is due, wakes when the probe comes due, and never more than the ejection
//! cap of a layer's endpoints is held out; under `tower::balance::p2c` over three endpoints
//! with 8 concurrent callers, one going silent, at most 1% of the calls fail from one
//! deadline after the silence on, with either load metric, and it rejoins after.
#![cfg(feature = "balance")]

use crate::support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_test::task;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, Load, PeakEwma, PendingRequests};
use tower::util::BoxCloneSyncService;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, Endpoint, EndpointLoad, PeerState, TimeoutPolicy,
};

use loopback::call_shared;
use support::{ms, Rng};

/// One simulated server: answers after 3-7 ms, or never while blackholed (the calls it
/// holds are answered when it comes back).
#[derive(Default)]
struct Server {
    blackholed: AtomicBool,
    arrivals: AtomicUsize,
}

impl Server {
    fn client(self: &Arc<Self>, seed: u64) -> Client {
        let server = self.clone();
        Client::new(service_fn(move |n: u64| {
            server.arrivals.fetch_add(1, SeqCst);
            let latency = ms(3 + Rng::new(seed, n).below(5));
            let server = server.clone();
            async move {
                while server.blackholed.load(SeqCst) {
                    tokio::time::sleep(ms(1)).await;
                }
                tokio::time::sleep(latency).await;
                Ok(())
            }
        }))
    }
}

/// A client of one simulated server.
type Client = BoxCloneSyncService<u64, (), Infallible>;

/// How the layer keys calls (every endpoint has its peer fixed, so it is never asked).
type Key = fn(&u64) -> usize;

/// A layer keyed by server index: deadlines learn from 50 samples; a held-out endpoint
/// is probed after 250ms, then at most every second.
fn layer() -> AdaptiveTimeoutLayer<usize, Key> {
    AdaptiveTimeoutLayer::builder((|_: &u64| 0) as Key)
        .policy(TimeoutPolicy::default().min_samples(50).recompute_every(50))
        .ejection_time(ms(250), ms(1000))
        .jitter_seed(7)
        .build()
        .unwrap()
}

/// What the callers saw of a run.
struct Run {
    calls: usize,
    failed: usize,
    /// The silenced server's share of the calls in the run's last second, 2s after it
    /// came back.
    rejoined: f64,
}

/// 8 callers through p2c over three servers for 10s; server 2 is blackholed from 3s to
/// 7s. Counts the calls started one deadline after the blackhole on (until it ends), and
/// those of them that failed.
async fn run<L>(load: impl Fn(usize, Arc<Server>) -> L) -> Run
where
    L: Service<u64, Response = (), Error = Infallible, Future: Send> + Load + Send + 'static,
    L::Metric: std::fmt::Debug + Send,
{
    let layer = layer();
    let handle = layer.handle();
    let servers: Vec<Arc<Server>> = (0..3).map(|_| Arc::default()).collect();
    let endpoints: Vec<_> = (0..3)
        .map(|i| layer.for_endpoint(i).layer(load(i, servers[i].clone())))
        .collect();
    let balance = Balance::new(ServiceList::new(endpoints));
    let svc = Arc::new(Mutex::new(balance));
    let start = Instant::now();
    let (off, on) = (start + ms(3000), start + ms(7000));
    let counted_from = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let tally = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let mut callers = tokio::task::JoinSet::new();
    for c in 0..8u64 {
        let (svc, tally, from) = (svc.clone(), tally.clone(), counted_from.clone());
        callers.spawn(async move {
            let mut n = c << 32;
            while Instant::now() < start + ms(10_000) {
                n += 1;
                let began = Instant::now();
                let result = call_shared(&svc, n).await;
                let from = *from.lock().unwrap();
                if from.is_some_and(|f| began >= f) && began < on {
                    tally[0].fetch_add(1, SeqCst);
                    if result.is_err() {
                        tally[1].fetch_add(1, SeqCst);
                    }
                }
            }
        });
    }
    tokio::time::sleep_until(off).await;
    let deadline = handle.deadline(&2).unwrap().0;
    servers[2].blackholed.store(true, SeqCst);
    *counted_from.lock().unwrap() = Some(off + deadline);
    tokio::time::sleep_until(on).await;
    let state = handle.peer(&2).unwrap().state;
    assert!(
        matches!(state, PeerState::Silent | PeerState::Probing),
        "{state}"
    );
    servers[2].blackholed.store(false, SeqCst);
    tokio::time::sleep_until(start + ms(9000)).await;
    let arrivals = || {
        servers
            .iter()
            .map(|s| s.arrivals.load(SeqCst))
            .collect::<Vec<_>>()
    };
    let before = arrivals();
    while callers.join_next().await.is_some() {}
    let last: Vec<_> = arrivals().iter().zip(&before).map(|(a, b)| a - b).collect();
    Run {
        calls: tally[0].load(SeqCst),
        failed: tally[1].load(SeqCst),
        rejoined: last[2] as f64 / last.iter().sum::<usize>() as f64,
    }
}

fn check(name: &str, run: Run) {
    let rate = run.failed as f64 / run.calls as f64;
    println!(
        "{name}: {} of {} calls failed ({:.3}%); back, the server took {:.0}% of the calls",
        run.failed,
        run.calls,
        rate * 100.0,
        run.rejoined * 100.0
    );
    assert!(run.calls > 5_000, "{name}: {} calls", run.calls);
    assert!(rate <= 0.01, "{name}: {:.3}% failed", rate * 100.0);
    assert!(
        run.rejoined > 0.2,
        "{name}: rejoined with {:.3}",
        run.rejoined
    );
}

#[tokio::test(start_paused = true)]
async fn p2c_with_peak_ewma_routes_around_a_silent_endpoint() {
    let run = run(|i, server| {
        let client = server.client(i as u64);
        PeakEwma::new(client, ms(30), 1e9, CompleteOnResponse::default())
    })
    .await;
    check("PeakEwma", run);
}

#[tokio::test(start_paused = true)]
async fn p2c_with_pending_requests_routes_around_a_silent_endpoint() {
    let run = run(|i, server| {
        PendingRequests::new(server.client(i as u64), CompleteOnResponse::default())
    })
    .await;
    check("PendingRequests", run);
}

/// Makes the endpoint's peer silent: its server is blackholed, and two calls in flight
/// to it run out their deadlines.
async fn silence<S>(endpoint: &mut S, server: &Server)
where
    S: Service<u64, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    server.blackholed.store(true, SeqCst);
    let calls = [endpoint.clone().oneshot(1), endpoint.clone().oneshot(2)];
    for result in futures_join(calls).await {
        assert!(result.is_err());
    }
}

/// Runs both calls at once.
async fn futures_join<F: std::future::Future>(calls: [F; 2]) -> [F::Output; 2] {
    let [a, b] = calls;
    let (a, b) = tokio::join!(a, b);
    [a, b]
}

fn endpoints(
    layer: &AdaptiveTimeoutLayer<usize, Key>,
    servers: &[Arc<Server>],
) -> Vec<Endpoint<Client, usize, Key>> {
    servers
        .iter()
        .enumerate()
        .map(|(i, s)| layer.for_endpoint(i).layer(s.client(i as u64)))
        .collect()
}

fn state(handle: &AdaptiveTimeoutHandle<usize>, peer: usize) -> PeerState {
    handle.peer(&peer).unwrap().state
}

#[tokio::test(start_paused = true)]
async fn a_silent_endpoint_is_not_ready_until_its_probe_is_due() {
    let layer = layer();
    let handle = layer.handle();
    let servers: Vec<Arc<Server>> = (0..2).map(|_| Arc::default()).collect();
    let mut all = endpoints(&layer, &servers);
    silence(&mut all[0], &servers[0]).await;
    assert_eq!(state(&handle, 0), PeerState::Silent);

    let mut ready = task::spawn(());
    let polled = ready.enter(|cx, _| all[0].poll_ready(cx));
    assert!(polled.is_pending(), "held out while silent");
    assert!(all[0].is_held_out());
    assert!(ready.enter(|cx, _| all[1].poll_ready(cx)).is_ready());

    // Woken when the probe is due (the peer's own backoff, and the endpoint's first
    // ejection, 250ms), and ready for it.
    let due = handle.peer(&0).unwrap().next_probe_in.max(ms(250));
    tokio::time::sleep(due).await;
    assert!(ready.is_woken(), "woken for the probe");
    assert!(ready.enter(|cx, _| all[0].poll_ready(cx)).is_ready());
    assert!(!all[0].is_held_out());

    // The probe goes (the server is still gone): held out while it is in flight, woken
    // when it ends.
    let probe = tokio::spawn(all[0].call(3));
    tokio::task::yield_now().await;
    assert_eq!(state(&handle, 0), PeerState::Probing);
    let mut waiting = task::spawn(());
    assert!(waiting.enter(|cx, _| all[0].poll_ready(cx)).is_pending());
    servers[0].blackholed.store(false, SeqCst);
    probe
        .await
        .unwrap()
        .expect("the probe is answered once the server is back");
    assert!(waiting.is_woken(), "woken when the probe was answered");
    assert!(waiting.enter(|cx, _| all[0].poll_ready(cx)).is_ready());
    assert_eq!(state(&handle, 0), PeerState::Healthy);
}

#[tokio::test(start_paused = true)]
async fn at_most_the_cap_of_endpoints_is_held_out() {
    let layer = layer();
    let servers: Vec<Arc<Server>> = (0..3).map(|_| Arc::default()).collect();
    let mut all = endpoints(&layer, &servers);
    // All three go silent at once: none has a probe due yet.
    let mut silencing = tokio::task::JoinSet::new();
    for (endpoint, server) in all.iter().zip(&servers) {
        let (mut endpoint, server) = (endpoint.clone(), server.clone());
        silencing.spawn(async move { silence(&mut endpoint, &server).await });
    }
    while silencing.join_next().await.is_some() {}
    // 50% of 3 endpoints, rounded down: one is held out, the others stay ready (and their
    // calls fail fast, refused without being sent).
    let mut cx = task::spawn(());
    let pending = (0..3)
        .filter(|&i| cx.enter(|cx, _| all[i].poll_ready(cx)).is_pending())
        .count();
    assert_eq!(pending, 1);
    let refused = all[2].call(9).await.unwrap_err();
    let refused = tower_adaptive_timeout::Interrupted::find(&*refused).unwrap();
    assert!(refused.is_silence() && !refused.was_sent());

    // Dropping the held-out endpoint frees its place for another.
    let held = (0..3).find(|&i| all[i].is_held_out()).unwrap();
    all.remove(held);
    let pending = (0..2)
        .filter(|&i| cx.enter(|cx, _| all[i].poll_ready(cx)).is_pending())
        .count();
    assert_eq!(pending, 1, "2 endpoints: 1 may be held out");
}

#[tokio::test(start_paused = true)]
async fn a_silent_endpoint_reports_the_worst_load() {
    let layer = layer();
    let server = Arc::new(Server::default());
    let client = PendingRequests::new(server.client(0), CompleteOnResponse::default());
    let mut endpoint = layer.for_endpoint(0).layer(client);
    std::future::poll_fn(|cx| endpoint.poll_ready(cx))
        .await
        .unwrap();
    assert!(matches!(endpoint.load(), EndpointLoad::Load(_)));
    let mut other = layer.for_endpoint(0).layer(server.client(0));
    silence(&mut other, &server).await;
    // Not polled since its peer went silent (a balancer keeps it among the ready ones):
    // picked first, so that it is polled; polled, the worst (the set's only peer is over
    // the cap: ready, but with no probe due).
    assert_eq!(endpoint.load(), EndpointLoad::ProbeDue);
    let _ = task::spawn(()).enter(|cx, _| endpoint.poll_ready(cx));
    assert_eq!(endpoint.load(), EndpointLoad::Silent);
    assert!(EndpointLoad::Load(u32::MAX) < EndpointLoad::Silent);
}
