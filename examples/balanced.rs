//! The layer per endpoint under `tower::balance::p2c`, over real sockets.
//!
//! Three loopback line servers, each behind a fault proxy, answer after 2-7 ms. Eight
//! callers share one p2c balancer over the three endpoints, each made with
//! `layer.for_endpoint(addr)` over a load-measured client. At 2s the third proxy turns into
//! a blackhole (connections accepted, nothing forwarded, no FIN, no RST), or resets every
//! connection (a killed server: each call fails at once); at 5s it forwards again. Each
//! fault is run with `PeakEwma` and with `PendingRequests` as the load, probed by the
//! callers' calls, and once more with probes of the endpoints' own in the background
//! (`probe_with`).
//!
//! Printed per run: the calls started from the fault on until it lifted, how many of them
//! failed (the calls in flight when it began, those that held the endpoint out, and the
//! failed probes), and the returned server's share of the calls in the last second, 3s
//! after it came back. `PeakEwma` remembers the calls the layer cut (the first probe after
//! a silence is a long one, `cold_start`) as round trips that long, fading over its decay
//! (1s here), so it takes a few seconds to give the returned server its share again;
//! `PendingRequests` gives it at once.
//!
//! ```text
//! cargo run --example balanced --features balance
//! ```
//!
//! It runs in real time, about 45 seconds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use loopback::{call_shared, EchoServer, Fault, FaultProxy, LineClient, LineRequest, Rng};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, Load, PeakEwma, PendingRequests};
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, TimeoutPolicy};

/// When the third proxy blackholes and comes back, and when the run ends.
const SILENT_AT: Duration = Duration::from_secs(2);
const BACK_AT: Duration = Duration::from_secs(5);
const RUN: Duration = Duration::from_secs(9);
const CALLERS: u64 = 8;

/// A line client whose calls all go to `addr`, whatever address their request names.
fn client_of(
    addr: SocketAddr,
) -> impl Service<LineRequest, Response = String, Error = std::io::Error, Future: Send> + Clone {
    LineClient::new().map_request(move |req: LineRequest| LineRequest { addr, ..req })
}

/// One run through p2c with `load` around each endpoint's client, `fault` on the third
/// server's proxy, and the endpoints probed in the background if `background`.
async fn run<L>(
    name: &str,
    fault: Fault,
    background: bool,
    load: impl Fn(SocketAddr) -> L,
) -> Result<(), BoxError>
where
    L: Service<LineRequest, Response = String, Error = std::io::Error> + Load + Send + 'static,
    L::Future: Send,
    L::Metric: std::fmt::Debug + Send,
{
    let mut servers = Vec::new();
    let mut proxies = Vec::new();
    for _ in 0..3 {
        let server = EchoServer::start().await;
        proxies.push(FaultProxy::start(server.addr()).await);
        servers.push(server);
    }
    let addrs: Vec<SocketAddr> = proxies.iter().map(FaultProxy::addr).collect();
    let layer = AdaptiveTimeoutLayer::builder(|req: &LineRequest| req.addr)
        .policy(TimeoutPolicy::default().min_samples(50).recompute_every(50))
        .build()?;
    let handle = layer.handle();
    let endpoints: Vec<_> = addrs
        .iter()
        .map(|&addr| {
            let endpoint = layer.for_endpoint(addr);
            let endpoint = match background {
                // A probe straight to the server, below the load measurement.
                true => endpoint.probe_with(move || {
                    client_of(addr).oneshot(LineRequest::new(addr, 0, "probe"))
                }),
                false => endpoint,
            };
            endpoint.layer(load(addr))
        })
        .collect();
    let balance = Arc::new(Mutex::new(Balance::new(ServiceList::new(endpoints))));

    let start = Instant::now();
    let counted = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let (calls, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..CALLERS {
        let (balance, counted) = (balance.clone(), counted.clone());
        let (calls, failed) = (calls.clone(), failed.clone());
        let addrs = addrs.clone();
        callers.spawn(async move {
            let mut rng = Rng::new(caller, 1);
            while start.elapsed() < RUN {
                let req = LineRequest::new(addrs[0], 2 + rng.below(6), "ping");
                let began = Instant::now();
                let result = call_shared(&balance, req).await;
                let from = *counted.lock().unwrap();
                if from.is_some_and(|f| began >= f) && began < start + BACK_AT {
                    calls.fetch_add(1, Relaxed);
                    failed.fetch_add(usize::from(result.is_err()), Relaxed);
                }
            }
        });
    }
    tokio::time::sleep_until(start + SILENT_AT).await;
    let deadline = handle.deadline(&addrs[2]).map_or(Duration::ZERO, |d| d.0);
    proxies[2].set(fault);
    *counted.lock().unwrap() = Some(Instant::now());
    tokio::time::sleep_until(start + BACK_AT).await;

    proxies[2].set(Fault::Pass);
    tokio::time::sleep_until(start + RUN - Duration::from_secs(1)).await;
    let before: Vec<_> = servers.iter().map(EchoServer::connections).collect();
    while callers.join_next().await.is_some() {}
    let last: Vec<_> = servers
        .iter()
        .zip(&before)
        .map(|(s, b)| s.connections() - b)
        .collect();
    let (calls, failed) = (calls.load(Relaxed), failed.load(Relaxed));
    println!(
        "{name:<31} deadline {deadline:>6.1?}: {failed:>3} of {calls:>5} calls failed \
         ({:.2}%); back, it took {:.0}% of the calls in the last second",
        failed as f64 * 100.0 / calls.max(1) as f64,
        last[2] as f64 * 100.0 / last.iter().sum::<usize>().max(1) as f64,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    println!("p2c over 3 loopback servers, {CALLERS} callers; the third faulty {SILENT_AT:?}-{BACK_AT:?}:");
    let ewma = |addr| {
        let decay = Duration::from_secs(1).as_nanos() as f64;
        PeakEwma::new(
            client_of(addr),
            Duration::from_millis(30),
            decay,
            CompleteOnResponse::default(),
        )
    };
    let pending = |addr| PendingRequests::new(client_of(addr), CompleteOnResponse::default());
    for (fault, what) in [(Fault::Blackhole, "blackhole"), (Fault::Reset, "reset")] {
        run(&format!("{what}, PeakEwma"), fault, false, ewma).await?;
        run(&format!("{what}, PendingRequests"), fault, false, pending).await?;
        run(
            &format!("{what}, PendingRequests, bg"),
            fault,
            true,
            pending,
        )
        .await?;
    }
    Ok(())
}
