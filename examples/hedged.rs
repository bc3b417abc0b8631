//! Hedged calls over real sockets: three loopback servers, one of which delays 5% of its
//! answers by 200 ms (a GC pause, a retransmission). Each request goes to one server; a
//! hedged request still unanswered after its server's learned p98 sends a copy to the same
//! server, which delays it (or not) independently, and the first answer wins.
//!
//! Three runs on fresh layers, each after a warm-up: unhedged; hedged at the defaults; and
//! hedged with no request opted in. It prints the latency of every request and the extra
//! calls the servers saw, and checks the targets: p99 at least 3x lower hedged, extra calls
//! within the budget, and a request without the opt-in never sent twice.
//!
//! ```text
//! cargo run --release --example hedged
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loopback::{LineClient, LineRequest, Loopback, Rng};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, Hedging, DEFAULT_MAX_EXTRA_LOAD};

/// Concurrent callers.
const CALLERS: usize = 8;
/// Requests per caller before measuring (the servers' latencies are learned), and measured.
const WARM: usize = 150;
const MEASURED: usize = 750;
/// The slow server's slow share and delay.
const SLOW_SHARE: f64 = 0.05;
const SLOW_BY: Duration = Duration::from_millis(200);

/// A line server that answers each request at once, or, with probability `slow`, after
/// [`SLOW_BY`]: it decides, so a copy is delayed independently of its request.
async fn server(slow: f64, seed: u64) -> Loopback {
    let rng = Arc::new(Mutex::new(Rng::new(seed, 0)));
    Loopback::start(move |stream| {
        let delayed = rng.lock().unwrap().open_unit() < slow;
        async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            if delayed {
                tokio::time::sleep(SLOW_BY).await;
            }
            let payload = line.trim_end().split_once(' ').map_or("", |(_, p)| p);
            let _ = write.write_all(format!("{payload}\n").as_bytes()).await;
        }
    })
    .await
    .expect("bind a loopback listener")
}

/// Which stack a run uses.
#[derive(Clone, Copy, PartialEq)]
enum Run {
    Unhedged,
    Hedged,
    NotOptedIn,
}

impl Run {
    fn name(self) -> &'static str {
        match self {
            Run::Unhedged => "unhedged",
            Run::Hedged => "hedged (defaults)",
            Run::NotOptedIn => "hedged, no request opted in",
        }
    }
}

struct Measured {
    latencies: Vec<Duration>,
    requests: usize,
    calls: usize,
    errors: usize,
}

async fn run(run: Run, servers: &[SocketAddr]) -> Measured {
    let client = LineClient::new();
    let layer = AdaptiveTimeoutLayer::builder(|r: &LineRequest| r.addr)
        .build()
        .expect("valid policy");
    let svc: BoxCloneService<LineRequest, String, BoxError> = match run {
        Run::Unhedged => BoxCloneService::new(layer.layer(client.clone())),
        Run::Hedged | Run::NotOptedIn => {
            let opted_in = run == Run::Hedged;
            let clone = move |r: &LineRequest| opted_in.then(|| r.clone());
            let hedged = layer.hedged(Hedging::new(clone)).expect("valid hedging");
            BoxCloneService::new(hedged.layer(client.clone()))
        }
    };
    let call = |svc: BoxCloneService<_, _, _>, addr, i| async move {
        let start = Instant::now();
        let ok = svc
            .oneshot(LineRequest::new(addr, 0, format!("r{i}")))
            .await
            .is_ok();
        (start.elapsed(), ok)
    };
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let (svc, servers) = (svc.clone(), servers.to_vec());
        tasks.push(tokio::spawn(async move {
            for i in 0..WARM {
                call(svc.clone(), servers[(caller + i) % servers.len()], i).await;
            }
            let mut ended = Vec::new();
            for i in 0..MEASURED {
                ended.push(call(svc.clone(), servers[(caller + i) % servers.len()], i).await);
            }
            ended
        }));
    }
    // Latencies are measured after the warm-up; the extra calls are every call the servers
    // saw over every request of the run, the warm-up's included.
    let mut ended = Vec::new();
    for task in tasks {
        ended.extend(task.await.expect("caller"));
    }
    let mut latencies: Vec<Duration> = ended.iter().map(|e| e.0).collect();
    latencies.sort();
    Measured {
        latencies,
        requests: CALLERS * (WARM + MEASURED),
        calls: client.calls(),
        errors: ended.iter().filter(|e| !e.1).count(),
    }
}

fn at(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let servers = [
        server(0.0, 1).await,
        server(0.0, 2).await,
        server(SLOW_SHARE, 3).await,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(Loopback::addr).collect();
    println!(
        "3 loopback servers, one delaying {:.0}% of its answers by {} ms; {CALLERS} callers, \
         {WARM} warm-up and {MEASURED} measured requests each\n",
        SLOW_SHARE * 100.0,
        SLOW_BY.as_millis()
    );
    println!("| run | requests measured | extra calls | errors | p50 ms | p99 ms | p99.9 ms |");
    println!("|---|---|---|---|---|---|---|");
    let mut p99 = Vec::new();
    let mut extra = Vec::new();
    for kind in [Run::Unhedged, Run::Hedged, Run::NotOptedIn] {
        let m = run(kind, &addrs).await;
        let share = m.calls as f64 / m.requests as f64 - 1.0;
        println!(
            "| {} | {} | {:.2}% | {} | {} | {} | {} |",
            kind.name(),
            m.latencies.len(),
            share * 100.0,
            m.errors,
            ms(at(&m.latencies, 0.5)),
            ms(at(&m.latencies, 0.99)),
            ms(at(&m.latencies, 0.999)),
        );
        p99.push(at(&m.latencies, 0.99));
        extra.push((share, m.calls, m.requests));
    }
    let ratio = p99[0].as_secs_f64() / p99[1].as_secs_f64().max(1e-9);
    println!();
    println!(
        "p99 unhedged / hedged: {ratio:.1}x (target >= 3x): {}",
        if ratio >= 3.0 { "met" } else { "NOT met" }
    );
    // The budget: at most max_extra_load of the requests, plus the burst it saves up.
    let budget = DEFAULT_MAX_EXTRA_LOAD * extra[1].2 as f64 + 10.0;
    let within = (extra[1].1 - extra[1].2) as f64 <= budget;
    println!(
        "extra calls hedged: {:.2}% (budget {:.0}% + a burst of 10): {}",
        extra[1].0 * 100.0,
        DEFAULT_MAX_EXTRA_LOAD * 100.0,
        if within { "met" } else { "NOT met" }
    );
    println!(
        "requests not opted in: {} calls for {} requests: {}",
        extra[2].1,
        extra[2].2,
        if extra[2].1 == extra[2].2 {
            "never sent twice"
        } else {
            "SENT TWICE"
        }
    );
}
