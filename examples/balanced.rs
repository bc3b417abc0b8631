//! The layer per endpoint under `tower::balance::p2c`, over real sockets.
//!
//! Three loopback line servers, each behind a fault proxy, answer after 2-7 ms. Eight
//! callers share one p2c balancer over the three endpoints, each made with
//! `layer.for_endpoint(addr)` over a load-measured client. At 2s the third proxy turns into
//! a blackhole (connections accepted, nothing forwarded, no FIN, no RST); at 5s it forwards
//! again. The run is done twice, with `PeakEwma` and with `PendingRequests` as the load.
//!
//! Printed per run: the calls started from one deadline after the blackhole until it
//! lifted, how many of them failed (the failed probes: one call at a time, spaced by the
//! probe backoff), and the returned server's share of the calls in the last second, 3s
//! after it came back. `PeakEwma` remembers the calls the layer cut (the first probe after
//! a silence is a long one, `cold_start`) as round trips that long, fading over its decay
//! (1s here), so it takes a few seconds to give the returned server its share again;
//! `PendingRequests` gives it at once.
//!
//! ```text
//! cargo run --example balanced --features balance
//! ```
//!
//! It runs in real time, about 18 seconds.

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

/// One run through p2c with `load` around each endpoint's client.
async fn run<L>(name: &str, load: impl Fn(SocketAddr) -> L) -> Result<(), BoxError>
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
        .map(|&addr| layer.for_endpoint(addr).layer(load(addr)))
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
    proxies[2].set(Fault::Blackhole);
    *counted.lock().unwrap() = Some(Instant::now() + deadline);
    tokio::time::sleep_until(start + BACK_AT).await;
    let state = handle.peer(&addrs[2]).map(|p| p.state);
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
        "{name:<16} deadline {deadline:.1?}, silent peer {}: {failed} of {calls} calls failed \
         ({:.2}%); back, it took {:.0}% of the calls in the last second",
        state.map_or("untracked", |s| s.as_str()),
        failed as f64 * 100.0 / calls.max(1) as f64,
        last[2] as f64 * 100.0 / last.iter().sum::<usize>().max(1) as f64,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    println!("p2c over 3 loopback servers, {CALLERS} callers; the third blackholed {SILENT_AT:?}-{BACK_AT:?}:");
    run("PeakEwma", |addr| {
        let decay = Duration::from_secs(1).as_nanos() as f64;
        PeakEwma::new(
            client_of(addr),
            Duration::from_millis(30),
            decay,
            CompleteOnResponse::default(),
        )
    })
    .await?;
    run("PendingRequests", |addr| {
        PendingRequests::new(client_of(addr), CompleteOnResponse::default())
    })
    .await
}
