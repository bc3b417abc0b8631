//! A direct client of each of two peers through `layer.for_peer(addr)` (a `FixedPeer`),
//! beside the same clients under `tower::timeout` of 1s, in the same run over real
//! sockets: two loopback line servers per stack, each behind a fault proxy, answering
//! after 2-7 ms; 16 callers per stack, 8 per server, calling back to back (1 ms apart
//! after an error). At 3s the
//! second server of both stacks turns into a blackhole (connections accepted, nothing
//! forwarded, no FIN, no RST) for 10s.
//!
//! Printed per stack, for the calls to the silenced server started during the silence:
//! the caller-seconds they waited (of the 80 there are: 8 callers for 10s), the longest
//! wait, and how many waited longer than twice the peer's deadline from before the
//! silence, and how many of those at most were in flight at once (one: the probes go
//! one at a time); and how much of the wait was in calls refused at once (under 5 ms).
//!
//! ```text
//! cargo run --example fixed_peer
//! ```
//!
//! It runs in real time, about 15 seconds.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loopback::{EchoServer, Fault, FaultProxy, LineClient, LineRequest, Rng};
use tokio::time::Instant;
use tower::timeout::Timeout;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::AdaptiveTimeoutLayer;

const SILENT_AT: Duration = Duration::from_secs(3);
const SILENCE: Duration = Duration::from_secs(10);
const RUN: Duration = Duration::from_secs(15);
const CALLERS_PER_SERVER: u64 = 8;

type Client = BoxCloneSyncService<LineRequest, String, BoxError>;

/// A line client whose calls all go to `addr`.
fn client_of(addr: SocketAddr) -> Client {
    let client = LineClient::new().map_request(move |req: LineRequest| LineRequest { addr, ..req });
    Client::new(client.map_err(BoxError::from))
}

/// One stack: two servers behind proxies, and a client of each.
struct Stack {
    _servers: Vec<EchoServer>,
    proxies: Vec<FaultProxy>,
    clients: Vec<Client>,
}

impl Stack {
    async fn start(stack: impl Fn(SocketAddr) -> Client) -> Self {
        let (mut servers, mut proxies, mut clients) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..2 {
            let server = EchoServer::start().await;
            let proxy = FaultProxy::start(server.addr()).await;
            clients.push(stack(proxy.addr()));
            servers.push(server);
            proxies.push(proxy);
        }
        Stack {
            _servers: servers,
            proxies,
            clients,
        }
    }

    /// Runs the callers; returns when each call to the second server started during
    /// the silence began, and how long it waited.
    async fn run(&self, start: Instant) -> Vec<(Instant, Duration)> {
        let waits = Arc::new(Mutex::new(Vec::new()));
        let mut set = tokio::task::JoinSet::new();
        for (i, client) in self.clients.iter().enumerate() {
            for c in 0..CALLERS_PER_SERVER {
                let (client, waits) = (client.clone(), waits.clone());
                let any: SocketAddr = ([127, 0, 0, 1], 9).into();
                set.spawn(async move {
                    let mut rng = Rng::new(c, i as u64);
                    while start.elapsed() < RUN {
                        let req = LineRequest::new(any, 2 + rng.below(6), "ping");
                        let began = Instant::now();
                        let failed = client.clone().oneshot(req).await.is_err();
                        let at = began - start;
                        if i == 1 && at >= SILENT_AT && at < SILENT_AT + SILENCE {
                            waits.lock().unwrap().push((began, began.elapsed()));
                        }
                        if failed {
                            // A caller takes a breath after an error (and a fail-fast
                            // loop leaves the runtime's threads to the other tasks).
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                });
            }
        }
        while set.join_next().await.is_some() {}
        let waits = std::mem::take(&mut *waits.lock().unwrap());
        waits
    }
}

/// Prints what the callers of the silenced server waited.
fn report(name: &str, waits: &[(Instant, Duration)], deadline: Duration) -> f64 {
    let total: f64 = waits.iter().map(|(_, d)| d.as_secs_f64()).sum();
    let max = waits.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let long: Vec<_> = waits.iter().filter(|(_, d)| *d > deadline * 2).collect();
    // The most of the long calls in flight at once.
    let at_once = long
        .iter()
        .map(|(b, _)| {
            long.iter()
                .filter(|(b2, d2)| *b2 <= *b && *b < *b2 + *d2)
                .count()
        })
        .max()
        .unwrap_or(0);
    // The calls that ended within 5 ms: refused at once (fail fast), their wait the time
    // the runtime took to run them beside the other callers.
    let quick: f64 = waits
        .iter()
        .filter(|(_, d)| *d < Duration::from_millis(5))
        .map(|(_, d)| d.as_secs_f64())
        .fold(0.0, |a, b| a + b);
    println!(
        "{name:<26} {:>6} calls, {total:>6.1} caller-seconds waited ({quick:.1} in calls under \
         5ms), longest {max:>8.1?}, {} longer than 2 x {deadline:.1?} (at most {at_once} at once)",
        waits.len(),
        long.len(),
    );
    total
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let layer = AdaptiveTimeoutLayer::builder(|req: &LineRequest| req.addr).build()?;
    let handle = layer.handle();
    let fixed = Stack::start(|addr| Client::new(layer.for_peer(addr).layer(client_of(addr)))).await;
    let timeout = Stack::start(|addr| {
        let client = Timeout::new(client_of(addr), Duration::from_secs(1));
        Client::new(client)
    })
    .await;
    let start = Instant::now();
    let silent = fixed.proxies[1].addr();
    let faults = async {
        tokio::time::sleep_until(start + SILENT_AT).await;
        let deadline = handle.deadline(&silent).map_or(Duration::ZERO, |d| d.0);
        fixed.proxies[1].set(Fault::Blackhole);
        timeout.proxies[1].set(Fault::Blackhole);
        tokio::time::sleep_until(start + SILENT_AT + SILENCE).await;
        fixed.proxies[1].set(Fault::Pass);
        timeout.proxies[1].set(Fault::Pass);
        deadline
    };
    let (deadline, fixed_waits, timeout_waits) =
        tokio::join!(faults, fixed.run(start), timeout.run(start));
    println!(
        "16 callers per stack, 8 per server; the second server silent {SILENT_AT:?}-{:?}:",
        SILENT_AT + SILENCE
    );
    let a = report("for_peer (FixedPeer)", &fixed_waits, deadline);
    let b = report("tower::timeout(1s)", &timeout_waits, deadline);
    println!(
        "for_peer waited {:.1}% of tower::timeout's caller-seconds",
        a * 100.0 / b.max(1e-9)
    );
    Ok(())
}
