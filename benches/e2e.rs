//! End to end: hyper-util's pooled client calling a hyper server on loopback over HTTP/1.1
//! keep-alive, bare, under `tower::timeout` (1 s) and under this layer (`http()`, default
//! policy), with 1 and 2 client workers and 1 and 64 calls in flight per worker.
//!
//! The server runs on a runtime of its own (one worker) and answers `ok` at once. Each
//! client worker runs one task with its own clone of the stack's client, keeping its calls
//! in flight for a round; a call is timed from `call` to its body's last byte. The three
//! stacks wrap clones of one client, so they share one connection pool: the same
//! connections, the same server-side state, only the middleware differs (with a pool each,
//! the bare client read up to a fifth slower than `tower::timeout` in one run). They take
//! turns round by round, in every order of the three over six rounds (interleaved, so load
//! from elsewhere and whatever a round leaves behind fall on all alike, and no stack always
//! runs in the same place). It prints, per case, the
//! median calls/s over the rounds, the p99 latency of all of them, and the layer's ratios
//! to `tower::timeout`'s against the targets: calls/s >= 0.98x (the median of the rounds'
//! ratios, each round's layer against the `tower::timeout` round beside it), p99 <= 1.02x.
//!
//! A second table gives each stack's CPU time per call: every thread of the process (client
//! and server) over all of the stack's rounds, from Linux's per-thread scheduler
//! statistics. With 2 workers and 64 calls in flight the machine's 2 cores are busy, so
//! calls/s is bound by it; and it moves far less between rounds than calls/s does.
//!
//! `cargo bench --bench e2e` (about 40 s; `E2E_ROUNDS=30` for five times as many rounds); as a test (`cargo test --benches`) each case
//! runs one short round and the ratios mean nothing. `E2E_LAYER=lean` runs the layer
//! without what `http()` adds by default beyond a deadline per peer (no interrupt token per
//! request, no latency class per route): how much of its cost those two are;
//! `E2E_LAYER=no_tokens` and `E2E_LAYER=no_classes` leave out one of the two.
//! `E2E_WORKERS=2` runs that worker count's cases alone.

pub mod common;

use std::future::poll_fn;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use loopback::http_server::{self, get};
use tower::timeout::Timeout;
use tower::{Layer, Service};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, DEFAULT_MAX_CLASSES};

use common::{multi_thread, test_mode, FIXED_TIMEOUT};

/// Client worker counts measured.
const WORKERS: [usize; 2] = [1, 2];
/// Calls in flight per worker.
const IN_FLIGHT: [usize; 2] = [1, 64];
/// The stacks, in the order they take turns.
const STACKS: [&str; 3] = ["bare", "tower::timeout", "layer"];
/// Rounds per case, and how long each lasts.
const ROUNDS: usize = 6;
const ROUND: Duration = Duration::from_millis(500);
/// The layer's calls/s over tower::timeout's must be at least this.
const RATE_TARGET: f64 = 0.98;
/// The layer's p99 over tower::timeout's must be at most this.
const P99_TARGET: f64 = 1.02;

/// What one task's round saw: calls ended, calls failed, their latencies.
type Ended = (u64, u64, Histogram<u64>);

/// What one case measured: calls/s per round (in round order), calls that failed, every
/// call's latency in nanoseconds, and the calls ended with the CPU time the whole process
/// (client and server) spent over their rounds.
struct Measured {
    rates: Vec<f64>,
    failed: u64,
    latencies: Histogram<u64>,
    calls: u64,
    cpu_ns: u64,
}

impl Measured {
    fn new() -> Measured {
        Measured {
            rates: Vec::new(),
            failed: 0,
            latencies: Histogram::new(3).expect("3 significant figures"),
            calls: 0,
            cpu_ns: 0,
        }
    }

    /// The process's CPU time per call in microseconds (`None` where the kernel does not
    /// tell it).
    fn cpu_us(&self) -> Option<f64> {
        (self.cpu_ns > 0).then(|| self.cpu_ns as f64 / self.calls.max(1) as f64 / 1e3)
    }

    /// The median calls/s over the rounds.
    fn rate(&self) -> f64 {
        median(self.rates.clone())
    }

    /// The median over the rounds of this case's calls/s over `other`'s in the same round.
    fn paired_rate(&self, other: &Measured) -> f64 {
        median(
            self.rates
                .iter()
                .zip(&other.rates)
                .map(|(a, b)| a / b)
                .collect(),
        )
    }

    /// The p99 latency in microseconds.
    fn p99_us(&self) -> f64 {
        self.latencies.value_at_quantile(0.99) as f64 / 1e3
    }
}

/// The CPU time every thread of this process has run so far, in nanoseconds (Linux's
/// per-thread scheduler statistics; 0 elsewhere). The server and the client share the
/// process, so a round's difference is what one stack's calls cost both ends; with the
/// machine's cores all busy (2 workers, 64 calls in flight each, on 2 cores), calls/s is
/// bound by it, and it moves far less between rounds than calls/s does.
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The median of `values` (0 for none).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Keeps `in_flight` calls to `uri` going through `svc` until `until`; returns how many
/// ended, how many of them failed, and their latencies.
async fn drive<S>(mut svc: S, uri: Uri, in_flight: usize, until: Instant) -> Ended
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>>,
{
    let mut latencies = Histogram::new(3).expect("3 significant figures");
    let mut calls = FuturesUnordered::new();
    let (mut ended, mut failed) = (0, 0);
    loop {
        while calls.len() < in_flight && Instant::now() < until {
            if poll_fn(|cx| svc.poll_ready(cx)).await.is_err() {
                panic!("service not ready");
            }
            let start = Instant::now();
            let call = svc.call(get(uri.clone()));
            calls.push(async move {
                // A call that fails (the layer's deadline on a stalled machine) counts as
                // an error, timed to its end like the others.
                let ok = match call.await {
                    Ok(response) => response.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                (start.elapsed(), ok)
            });
        }
        match calls.next().await {
            Some((took, ok)) => {
                latencies
                    .record(took.as_nanos() as u64)
                    .expect("an auto-resizing histogram");
                ended += 1;
                failed += u64::from(!ok);
            }
            None => return (ended, failed, latencies),
        }
    }
}

/// One round of `svc` on `rt`: one task per worker, each with its own clone.
fn round<S>(
    rt: &tokio::runtime::Runtime,
    svc: &S,
    workers: usize,
    uri: &Uri,
    in_flight: usize,
    length: Duration,
    into: Option<&mut Measured>,
) where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
{
    let cpu_before = cpu_ns();
    let (ended, failed, latencies) = rt.block_on(async {
        let until = Instant::now() + length;
        let tasks: Vec<_> = (0..workers)
            .map(|_| tokio::spawn(drive(svc.clone(), uri.clone(), in_flight, until)))
            .collect();
        let mut all = Histogram::<u64>::new(3).expect("3 significant figures");
        let (mut ended, mut failed) = (0, 0);
        for task in tasks {
            let (n, f, h) = task.await.expect("task");
            (ended, failed) = (ended + n, failed + f);
            all.add(h).expect("same bounds");
        }
        (ended, failed, all)
    });
    let cpu = cpu_ns().saturating_sub(cpu_before);
    if let Some(m) = into {
        m.rates.push(ended as f64 / length.as_secs_f64());
        m.calls += ended;
        m.cpu_ns += cpu;
        m.failed += failed;
        m.latencies.add(latencies).expect("same bounds");
    }
}

/// Measures the three stacks with `workers` client workers against the server at `uri`.
/// The order the three stacks take their turns in, round by round: every order of the
/// three, so over six rounds each stack runs first, second and last twice, and after and
/// before each other stack alike. With the order only reversed every other round,
/// `tower::timeout` always ran second, and its p99 read 1.4-1.5 times the bare client's in
/// the same cells: the place in the round, not the middleware, set it.
const ORDERS: [[usize; 3]; 6] = [
    [0, 1, 2],
    [2, 1, 0],
    [1, 2, 0],
    [0, 2, 1],
    [2, 0, 1],
    [1, 0, 2],
];

fn measure(workers: usize, uri: &Uri, rounds: usize, length: Duration) -> Vec<[Measured; 3]> {
    let rt = multi_thread(workers);
    let _in_runtime = rt.enter();
    // One pool for all three: clones of a client share it.
    let bare = http_server::client();
    let tower = Timeout::new(bare.clone(), FIXED_TIMEOUT);
    let variant = std::env::var("E2E_LAYER").unwrap_or_default();
    let tokens = !matches!(variant.as_str(), "lean" | "no_tokens");
    let classes = !matches!(variant.as_str(), "lean" | "no_classes");
    let layer = AdaptiveTimeoutLayer::http()
        .interrupt_tokens(tokens)
        .max_classes(if classes { DEFAULT_MAX_CLASSES } else { 0 })
        .build()
        .expect("the default policy is valid")
        .layer(bare.clone());
    let mut results: Vec<[Measured; 3]> = IN_FLIGHT
        .iter()
        .map(|_| [Measured::new(), Measured::new(), Measured::new()])
        .collect();
    // A warm-up round each: connections opened, the layer's deadline learned.
    for &k in &IN_FLIGHT {
        round(&rt, &bare, workers, uri, k, length, None);
        round(&rt, &tower, workers, uri, k, length, None);
        round(&rt, &layer, workers, uri, k, length, None);
    }
    for r in 0..rounds {
        for (i, &k) in IN_FLIGHT.iter().enumerate() {
            let [b, t, l] = &mut results[i];
            let turns: [&mut dyn FnMut(); 3] = [
                &mut || round(&rt, &bare, workers, uri, k, length, Some(&mut *b)),
                &mut || round(&rt, &tower, workers, uri, k, length, Some(&mut *t)),
                &mut || round(&rt, &layer, workers, uri, k, length, Some(&mut *l)),
            ];
            for stack in ORDERS[r % ORDERS.len()] {
                turns[stack]();
            }
        }
    }
    results
}

/// `value` against `target` (`at_most`: a cost), or nothing in test mode.
fn verdict(value: f64, target: f64, at_most: bool) -> &'static str {
    let met = if at_most {
        value <= target
    } else {
        value >= target
    };
    match (test_mode(), met) {
        (true, _) => "",
        (false, true) => "met",
        (false, false) => "MISSED",
    }
}

fn main() {
    let (rounds, length) = if test_mode() {
        (1, Duration::from_millis(20))
    } else {
        // `E2E_ROUNDS=30` for a longer run, when a few percent between runs matter.
        let rounds = std::env::var("E2E_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok());
        (rounds.filter(|r| *r > 0).unwrap_or(ROUNDS), ROUND)
    };
    let server_rt = multi_thread(1);
    let server = server_rt
        .block_on(http_server::start(Duration::ZERO))
        .expect("a loopback server");
    let uri = server.uri("/");
    println!("\n== e2e: hyper client -> hyper server on loopback, HTTP/1.1 keep-alive ==");
    println!("({rounds} interleaved rounds of {length:?} per case; calls/s: median of the rounds; layer / tower: median of the rounds' ratios; p99 of every call; one shared pool)\n");
    println!(
        "| workers | in flight | calls/s: {} | {} | {} | layer / tower (>= {RATE_TARGET}) | p99 us: {} | {} | {} | layer / tower (<= {P99_TARGET}) | failed: {} / {} / {} |",
        STACKS[0], STACKS[1], STACKS[2], STACKS[0], STACKS[1], STACKS[2], STACKS[0], STACKS[1], STACKS[2]
    );
    println!("|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|");
    // `E2E_WORKERS=2`: that worker count's cases alone.
    let only: Option<usize> = std::env::var("E2E_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok());
    let mut cpu = Vec::new();
    for workers in WORKERS.into_iter().filter(|w| only.is_none_or(|o| o == *w)) {
        let results = measure(workers, &uri, rounds, length);
        for (k, [b, t, l]) in IN_FLIGHT.iter().zip(&results) {
            cpu.push(cpu_row(workers, *k, [b, t, l]));
            let rate = l.paired_rate(t);
            let p99 = l.p99_us() / t.p99_us();
            println!(
                "| {workers} | {k} | {:.0} | {:.0} | {:.0} | {rate:.3} {} | {:.1} | {:.1} | {:.1} | {p99:.3} {} | {} / {} / {} |",
                b.rate(),
                t.rate(),
                l.rate(),
                verdict(rate, RATE_TARGET, false),
                b.p99_us(),
                t.p99_us(),
                l.p99_us(),
                verdict(p99, P99_TARGET, true),
                b.failed,
                t.failed,
                l.failed,
            );
        }
    }
    println!("\nCPU time per call, client and server together (us; all rounds of a stack):\n");
    println!(
        "| workers | in flight | {} | {} | {} | layer - tower | layer / tower |",
        STACKS[0], STACKS[1], STACKS[2]
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for row in cpu {
        println!("{row}");
    }
    drop(server);
}

/// A row of the CPU table: each stack's CPU time per call, and the layer's beside
/// `tower::timeout`'s.
fn cpu_row(workers: usize, in_flight: usize, stacks: [&Measured; 3]) -> String {
    let [b, t, l] = stacks.map(|m| m.cpu_us().unwrap_or(f64::NAN));
    format!(
        "| {workers} | {in_flight} | {b:.2} | {t:.2} | {l:.2} | {:.2} | {:.3} |",
        l - t,
        l / t
    )
}
