//! The balancer table, on tokio's paused clock: p2c over 2 or 3 simulated endpoints that
//! answer in 45-55 ms, one of which goes silent (never answers) or refuses every call (a
//! killed server: an error at once) for 30 s, then comes back. Each endpoint is stacked
//! as README shows: `layer.for_endpoint(i).layer(load)` with `PeakEwma` (tower's
//! 50 ms / 10 s decay, and README's 30 ms / 1 s) or `PendingRequests`, then
//! `Balance::new(ServiceList::new(..))`; the policy learns from 20 samples. One caller
//! (20 ms between calls) or 8 callers (5 ms) share the balancer.
//!
//! Printed per run, counting every call started from the fault on until it ended (none
//! left out): the share that failed, the share sent to the faulty endpoint, the p99 of
//! all calls' latency (beside the same run with no fault), and the faulty endpoint's
//! share of the calls in the 5 s after it came back (3 endpoints: a fair share is 33%), and
//! over one decay of `PeakEwma` (at least 5 s). With `retry` the README's `tower::retry`
//! recipe is on top: a call that got no answer (refused before it was sent, cut by its
//! peer's silence or by the peer's own deadline) is tried again (twice at most). The
//! probes are the callers' calls (`caller`), or the endpoints' own in the background
//! (`bg`, `probe_with`); with `+disc` discovery removes the faulty endpoint 1 s into the
//! fault and inserts it again (a new endpoint for the same peer) 15 s into it.
//!
//! ```text
//! cargo run --release --example balanced_table --features balance [bg|caller|discovery]
//! ```

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::io;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::poll_fn;
use loopback::{call_shared, Rng};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tower::balance::p2c::Balance;
use tower::discover::{Change, ServiceList};
use tower::load::{CompleteOnResponse, PeakEwma, PendingRequests};
use tower::retry::Policy;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, Interrupted, TimeoutPolicy};

/// When the fault starts and ends, and when the run ends.
const FAULT_AT: Duration = Duration::from_secs(5);
const BACK_AT: Duration = Duration::from_secs(35);
const END: Duration = Duration::from_secs(50);

/// The request of a background probe.
const PROBE: u64 = u64::MAX;

/// What the faulty endpoint does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    Silent,
    Refusing,
}

/// One simulated server.
#[derive(Default)]
struct Server {
    /// 0: answers, 1: silent, 2: refusing.
    mode: AtomicU8,
    /// Calls that reached it, by second of the run.
    arrivals: std::sync::Mutex<Vec<usize>>,
}

type Client = BoxCloneSyncService<u64, (), io::Error>;

impl Server {
    fn client(self: &Arc<Self>, start: Instant) -> Client {
        let server = self.clone();
        Client::new(service_fn(move |n: u64| {
            let second = start.elapsed().as_secs() as usize;
            let mut arrivals = server.arrivals.lock().unwrap();
            if arrivals.len() <= second {
                arrivals.resize(second + 1, 0);
            }
            // Background probes are no caller's calls.
            arrivals[second] += usize::from(n != PROBE);
            drop(arrivals);
            let latency = Duration::from_millis(45 + Rng::new(n, 3).below(11));
            let server = server.clone();
            async move {
                if server.mode.load(Relaxed) == 2 {
                    return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
                }
                while server.mode.load(Relaxed) == 1 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                tokio::time::sleep(latency).await;
                Ok(())
            }
        }))
    }

    /// Calls that reached it in `[from, to)` seconds.
    fn arrived(&self, from: u64, to: u64) -> usize {
        let arrivals = self.arrivals.lock().unwrap();
        let (from, to) = (from as usize, (to as usize).min(arrivals.len()));
        arrivals.get(from..to).map_or(0, |s| s.iter().sum())
    }
}

/// README's retry recipe, for a balancer: a call that got no answer
/// ([`Interrupted::is_unanswered`]) is tried again, at most `left` more times.
#[derive(Clone)]
struct Again {
    left: usize,
}

impl<T> Policy<u64, T, BoxError> for Again {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u64, result: &mut Result<T, BoxError>) -> Option<Ready<()>> {
        let err = Interrupted::find(&**result.as_ref().err()?)?;
        if !err.is_unanswered() || self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(ready(()))
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

/// Which load each endpoint measures.
#[derive(Clone, Copy, Debug)]
enum Metric {
    /// tower's `PeakEwma` at its usual 50 ms default and 10 s decay.
    EwmaTower,
    /// README's: 30 ms, 1 s decay.
    EwmaReadme,
    Pending,
}

impl Metric {
    fn decay(self) -> Duration {
        match self {
            Metric::EwmaTower => Duration::from_secs(10),
            _ => Duration::from_secs(1),
        }
    }
}

/// What the callers saw of one run.
#[derive(Default)]
struct Seen {
    calls: usize,
    failed: usize,
    latencies: Vec<Duration>,
}

struct Case {
    endpoints: usize,
    callers: u64,
    metric: Metric,
    fault: Fault,
    retry: bool,
    /// Probes sent by the endpoints in the background (`probe_with`), not callers' calls.
    background: bool,
    /// The faulty endpoint is removed by discovery 1 s into the fault and inserted again
    /// (a new endpoint for the same peer) 15 s into it, while its peer is still away.
    discovery: bool,
}

/// When discovery removes the faulty endpoint, and when it inserts it again.
const REMOVED_AT: Duration = Duration::from_secs(6);
const INSERTED_AT: Duration = Duration::from_secs(20);

async fn run(case: &Case) -> (Seen, Vec<Arc<Server>>) {
    let start = Instant::now();
    let layer = AdaptiveTimeoutLayer::builder((|_: &u64| 0) as fn(&u64) -> usize)
        .policy(TimeoutPolicy::default().min_samples(20))
        .jitter_seed(3)
        .build()
        .unwrap();
    let servers: Vec<Arc<Server>> = (0..case.endpoints).map(|_| Arc::default()).collect();
    macro_rules! balance {
        ($load:expr) => {{
            let (servers_, background) = (servers.clone(), case.background);
            let make = move |i: usize| {
                let mut endpoint = layer.for_endpoint(i);
                if background {
                    // A probe straight to the server, below the load measurement.
                    let client = servers_[i].client(start);
                    endpoint = endpoint.probe_with(move || client.clone().oneshot(PROBE));
                }
                endpoint.layer($load(servers_[i].client(start)))
            };
            if case.discovery {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                for i in 0..case.endpoints {
                    tx.send(Change::Insert(i, make(i))).unwrap();
                }
                let last = case.endpoints - 1;
                tokio::spawn(async move {
                    tokio::time::sleep_until(start + REMOVED_AT).await;
                    tx.send(Change::Remove(last)).unwrap();
                    tokio::time::sleep_until(start + INSERTED_AT).await;
                    tx.send(Change::Insert(last, make(last))).unwrap();
                    // Kept open: a closed discovery stream ends the balancer.
                    tokio::time::sleep_until(start + END + Duration::from_secs(60)).await;
                });
                let changes =
                    poll_fn(move |cx| rx.poll_recv(cx).map(|c| c.map(Ok::<_, Infallible>)));
                drive(case, start, &servers, Balance::new(changes)).await
            } else {
                let endpoints: Vec<_> = (0..case.endpoints).map(make).collect();
                drive(
                    case,
                    start,
                    &servers,
                    Balance::new(ServiceList::new(endpoints)),
                )
                .await
            }
        }};
    }
    let seen = match case.metric {
        Metric::EwmaTower | Metric::EwmaReadme => {
            let rtt = match case.metric {
                Metric::EwmaTower => Duration::from_millis(50),
                _ => Duration::from_millis(30),
            };
            let decay = case.metric.decay().as_nanos() as f64;
            balance!(|c| PeakEwma::new(c, rtt, decay, CompleteOnResponse::default()))
        }
        Metric::Pending => balance!(|c| PendingRequests::new(c, CompleteOnResponse::default())),
    };
    (seen, servers)
}

/// Runs the callers through `svc` and the fault on the last server.
async fn drive<S>(case: &Case, start: Instant, servers: &[Arc<Server>], svc: S) -> Seen
where
    S: Service<u64, Response = (), Error = BoxError> + Send + 'static,
    S::Future: Send,
{
    let svc = Arc::new(Mutex::new(svc));
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let gap = Duration::from_millis(if case.callers == 1 { 20 } else { 5 });
    let mut callers = tokio::task::JoinSet::new();
    let retry = case.retry;
    for c in 0..case.callers {
        let (svc, seen) = (svc.clone(), seen.clone());
        callers.spawn(async move {
            let mut n = c << 32;
            while start.elapsed() < END {
                n += 1;
                let began = Instant::now();
                // The retry recipe's policy (`tower::retry` needs a `Buffer` to clone
                // the balancer; the policy is the same).
                let mut policy = Again {
                    left: if retry { 2 } else { 0 },
                };
                let mut result = call_shared(&svc, n).await;
                while policy.retry(&mut n.clone(), &mut result).is_some() {
                    result = call_shared(&svc, n).await;
                }
                let at = began - start;
                if at >= FAULT_AT && at < BACK_AT {
                    let mut seen = seen.lock().unwrap();
                    seen.calls += 1;
                    seen.failed += usize::from(result.is_err());
                    seen.latencies.push(began.elapsed());
                }
                tokio::time::sleep(gap).await;
            }
        });
    }
    let faulty = &servers[servers.len() - 1];
    tokio::time::sleep_until(start + FAULT_AT).await;
    let mode = match case.fault {
        Fault::None => 0,
        Fault::Silent => 1,
        Fault::Refusing => 2,
    };
    faulty.mode.store(mode, Relaxed);
    tokio::time::sleep_until(start + BACK_AT).await;
    faulty.mode.store(0, Relaxed);
    while callers.join_next().await.is_some() {}
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    seen
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    latencies
        .get(latencies.len() * 99 / 100)
        .copied()
        .unwrap_or_default()
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    println!(
        "{:<8} {:<8} {:>3} {:>7} {:<11} {:<5} {:>7} {:>9} {:>7} {:>9} {:>9} {:>8} {:>8}",
        "fault",
        "probes",
        "eps",
        "callers",
        "load",
        "retry",
        "calls",
        "failed",
        "to it",
        "p99",
        "p99 none",
        "back 5s",
        "decay"
    );
    // `bg`, `caller`, `discovery`: only those rows.
    let only = std::env::args().nth(1).unwrap_or_default();
    for (fault, background, retry, discovery) in [
        (Fault::Silent, false, false, false),
        (Fault::Silent, false, true, false),
        (Fault::Refusing, false, false, false),
        (Fault::Silent, true, false, false),
        (Fault::Silent, true, true, false),
        (Fault::Refusing, true, false, false),
        (Fault::Silent, true, false, true),
        (Fault::Silent, false, false, true),
    ] {
        let probes = if background { "bg" } else { "caller" };
        let shown = match only.as_str() {
            "" => true,
            "discovery" => discovery,
            _ => only == probes && !discovery,
        };
        if !shown {
            continue;
        }
        for endpoints in [2, 3] {
            for callers in [1, 8] {
                for metric in [Metric::EwmaTower, Metric::EwmaReadme, Metric::Pending] {
                    let case = Case {
                        endpoints,
                        callers,
                        metric,
                        fault,
                        retry,
                        background,
                        discovery,
                    };
                    rt.block_on(row(case));
                }
            }
        }
    }
}

async fn row(case: Case) {
    let (mut seen, servers) = run(&case).await;
    let baseline = Case {
        fault: Fault::None,
        ..case
    };
    let (mut quiet, _) = run(&baseline).await;
    let faulty = &servers[servers.len() - 1];
    let fault_s = (FAULT_AT.as_secs(), BACK_AT.as_secs());
    let to_it = faulty.arrived(fault_s.0, fault_s.1);
    let back = BACK_AT.as_secs();
    let share = |to: u64| {
        let all: usize = servers.iter().map(|s| s.arrived(back, to)).sum();
        faulty.arrived(back, to) as f64 * 100.0 / all.max(1) as f64
    };
    let pct = |n: usize| n as f64 * 100.0 / seen.calls.max(1) as f64;
    let probes = match (case.background, case.discovery) {
        (true, false) => "bg",
        (false, false) => "caller",
        (true, true) => "bg+disc",
        (false, true) => "call+disc",
    };
    // Within one decay: over the decay of PeakEwma's estimate (at least 5 s).
    let decay = match case.metric {
        Metric::Pending => 5,
        metric => metric.decay().as_secs().max(5),
    };
    println!(
        "{:<8} {:<8} {:>3} {:>7} {:<11} {:<5} {:>7} {:>8.2}% {:>6.2}% {:>9.1?} {:>9.1?} {:>7.0}% {:>7.0}%",
        format!("{:?}", case.fault),
        probes,
        case.endpoints,
        case.callers,
        format!("{:?}", case.metric),
        case.retry,
        seen.calls,
        pct(seen.failed),
        pct(to_it),
        p99(&mut seen.latencies),
        p99(&mut quiet.latencies),
        share(back + 5),
        share(back + decay),
    );
}
