//! Calls per second with N tasks on N worker threads, for the inner services, load shapes
//! and peer layouts real clients have.
//!
//! Each benchmark runs N tasks on a multi-thread runtime with N workers; task `i` has its
//! own service (its own connection, for `channel`) and makes a batch of calls; the figure
//! is wall time per call per task, so the throughput is `N / figure`. Groups are named
//! `{inner}/{shape}/{N}w`:
//!
//! * inner service: `ready` (the future is ready at its first poll), `pending_once` (it
//!   yields once, so a timeout's timer is really armed), `channel` (the request goes over
//!   a tokio mpsc to a connection task, one per service, which answers at once over a
//!   oneshot, as hyper's client does);
//! * shape: `seq` (one call at a time per task) or `64` (64 calls in flight per task, a
//!   `FuturesUnordered` topped up as calls end; the service is `poll_ready`-ed before each
//!   call);
//! * stack: `bare`, `tower_timeout` (`tower::timeout::Timeout`), and this layer, its N
//!   services made by one layer (one peer table): `layer/one_peer` (every task calls peer
//!   0, one hot peer) and `layer/distinct_peers` (task `i` calls peer `i`).
//!
//! N is 1 and 2, or the list in `BENCH_WORKERS` (e.g. `BENCH_WORKERS=1,2,4,8,16`, or `all`
//! for powers of two up to the core count), capped at `min(available_parallelism, 16)`.
//!
//! Ends with the medians, then two markdown tables ready to paste into BENCHMARKS.md:
//! calls/s per case and N, and the ratios the project targets, from the interleaved
//! medians: channel with 64 in flight, layer / tower::timeout throughput (one peer and
//! distinct peers) >= 0.9 at 1 worker and >= 1.0 at 2; the layer's one-peer /
//! distinct-peer throughput >= 0.9 at 2 workers.

pub mod common;

use std::future::poll_fn;
use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tower::{Layer, Service};

use common::{
    adaptive_layer, channel_inner, drive, multi_thread, pending_once_inner, ready_inner, run_tasks,
    test_mode, with_tower_timeout, Group, Inner, Ratio, Req,
};

/// Measurement time per benchmark: there are 4 per group and 6 groups per worker count.
const MEASUREMENT: Duration = Duration::from_millis(1_500);
/// Warm-up time per benchmark.
const WARM_UP: Duration = Duration::from_millis(500);
/// Calls in flight per task in the `64` shape.
const IN_FLIGHT: usize = 64;
/// The most worker threads measured.
const MAX_WORKERS: usize = 16;
/// Worker counts measured unless `BENCH_WORKERS` says otherwise.
const DEFAULT_WORKERS: [usize; 2] = [1, 2];
/// The environment variable listing worker counts.
const WORKERS_VAR: &str = "BENCH_WORKERS";
/// The worker count the hot-peer target is set at.
const HOT_PEER_TARGET_AT: usize = 2;

/// Peer ids: task `i` calls `PEERS[i]` in `distinct_peers`, every task `PEERS[0]` in
/// `one_peer`.
static PEERS: [u32; MAX_WORKERS] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

/// The inner services, by name.
const INNERS: [&str; 3] = ["ready", "pending_once", "channel"];

/// How each task issues its calls.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// One call at a time.
    Sequential,
    /// `IN_FLIGHT` calls at a time.
    InFlight,
}

const SHAPES: [Shape; 2] = [Shape::Sequential, Shape::InFlight];

impl Shape {
    /// The name in group ids.
    fn id(self) -> &'static str {
        match self {
            Shape::Sequential => "seq",
            Shape::InFlight => "64",
        }
    }

    /// The name in the tables.
    fn label(self) -> &'static str {
        match self {
            Shape::Sequential => "sequential",
            Shape::InFlight => "64 in flight",
        }
    }

    /// Makes `iters` calls through `svc` in this shape; returns the time they took.
    async fn drive<S: Service<Req>>(self, mut svc: S, keys: &[u32], iters: u64) -> Duration {
        match self {
            Shape::Sequential => drive(&mut svc, keys, iters).await,
            Shape::InFlight => drive_in_flight(&mut svc, keys, iters).await,
        }
    }
}

/// Makes `iters` calls through `svc`, the peers taken round-robin from `keys`, keeping
/// `IN_FLIGHT` of them in flight; returns the time they took.
async fn drive_in_flight<S: Service<Req>>(svc: &mut S, keys: &[u32], iters: u64) -> Duration {
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut issued = 0;
    loop {
        while issued < iters && in_flight.len() < IN_FLIGHT {
            if poll_fn(|cx| svc.poll_ready(cx)).await.is_err() {
                panic!("service not ready");
            }
            let peer = keys[(issued % keys.len() as u64) as usize];
            in_flight.push(svc.call(black_box(Req { peer })));
            issued += 1;
        }
        match in_flight.next().await {
            Some(answer) => drop(black_box(answer)),
            None => return start.elapsed(),
        }
    }
}

/// The worker counts to measure, read once.
fn worker_counts() -> &'static [usize] {
    static WORKERS: OnceLock<Vec<usize>> = OnceLock::new();
    WORKERS.get_or_init(read_worker_counts)
}

/// The worker counts to measure: `BENCH_WORKERS` (a comma-separated list, or `all`) or
/// 1 and 2; counts past `min(available_parallelism, 16)` are left out, with a note.
fn read_worker_counts() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cap = cores.min(MAX_WORKERS);
    let Ok(list) = std::env::var(WORKERS_VAR) else {
        return DEFAULT_WORKERS.to_vec();
    };
    let wanted: Vec<usize> = if list.trim() == "all" {
        let mut all: Vec<usize> = (0..).map(|p| 1 << p).take_while(|&n| n < cap).collect();
        all.push(cap);
        all
    } else {
        let parsed = list
            .split(',')
            .map(|n| n.trim().parse::<usize>().ok().filter(|&n| n > 0))
            .collect::<Option<Vec<usize>>>();
        let Some(parsed) = parsed else {
            eprintln!(
                "{WORKERS_VAR}={list:?}: expected worker counts >= 1 separated by commas, or `all`"
            );
            std::process::exit(2);
        };
        parsed
    };
    let (kept, dropped): (Vec<usize>, Vec<usize>) = wanted.into_iter().partition(|&n| n <= cap);
    if !dropped.is_empty() {
        eprintln!(
            "{WORKERS_VAR}: leaving out {dropped:?}: more than min({cores} cores, {MAX_WORKERS})"
        );
    }
    if kept.is_empty() {
        eprintln!("{WORKERS_VAR}={list:?}: no worker count left to measure");
        std::process::exit(2);
    }
    kept
}

/// The peers task `i` of `workers` calls.
fn peers(workers: usize, hot: bool) -> impl Iterator<Item = &'static [u32]> {
    (0..workers).map(move |i| if hot { &PEERS[..1] } else { &PEERS[i..=i] })
}

/// Benchmarks the services `build` makes (on a fresh runtime with `workers` workers, so
/// connection tasks run there), one task per service, each calling its peers in `shape`.
fn bench_stack<S, B>(group: &mut Group<'_>, id: &str, workers: usize, shape: Shape, build: B)
where
    B: FnOnce() -> Vec<(S, &'static [u32])>,
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
{
    let rt = multi_thread(workers);
    let tasks = {
        let _in_runtime = rt.enter();
        build()
    };
    group.bench(id, move |iters| {
        run_tasks(&rt, &tasks, iters, |svc, keys, iters| {
            shape.drive(svc, keys, iters)
        })
    });
}

/// The group for `inner` (made by `make`), `shape` and `workers`: bare, tower::timeout and
/// this layer with one hot peer and with distinct peers.
fn stacks<S: Inner>(c: &mut Criterion, inner: &str, shape: Shape, workers: usize, make: fn() -> S) {
    let name = format!("{inner}/{}/{workers}w", shape.id());
    let mut group = Group::timed(c, &name, MEASUREMENT, WARM_UP);
    bench_stack(&mut group, "bare", workers, shape, || {
        peers(workers, false).map(|k| (make(), k)).collect()
    });
    bench_stack(&mut group, "tower_timeout", workers, shape, || {
        let timeout = |k| (with_tower_timeout(make()), k);
        peers(workers, false).map(timeout).collect()
    });
    for (id, hot) in [("layer/one_peer", true), ("layer/distinct_peers", false)] {
        bench_stack(&mut group, id, workers, shape, || {
            let layer = adaptive_layer();
            peers(workers, hot)
                .map(|k| (layer.layer(make()), k))
                .collect()
        });
    }
    group.finish();
}

fn throughput(c: &mut Criterion) {
    for &workers in worker_counts() {
        for shape in SHAPES {
            stacks(c, "ready", shape, workers, ready_inner);
            stacks(c, "pending_once", shape, workers, pending_once_inner);
            stacks(c, "channel", shape, workers, channel_inner);
        }
    }
}

criterion_group!(benches, throughput);

/// The stacks, as (benchmark id, label in the tables).
const STACKS: [(&str, &str); 4] = [
    ("bare", "bare"),
    ("tower_timeout", "tower::timeout"),
    ("layer/one_peer", "layer, one peer"),
    ("layer/distinct_peers", "layer, distinct peers"),
];

/// The key of benchmark `stack` in the group for `inner`, `shape`, `workers`.
fn key(inner: &str, shape: Shape, workers: usize, stack: &str) -> String {
    format!("{inner}/{}/{workers}w/{stack}", shape.id())
}

/// Calls per second, rounded to three figures with a k or M suffix.
fn rate(calls_per_s: f64) -> String {
    if calls_per_s >= 1e6 {
        format!("{:.2}M", calls_per_s / 1e6)
    } else if calls_per_s >= 1e3 {
        format!("{:.0}k", calls_per_s / 1e3)
    } else {
        format!("{calls_per_s:.0}")
    }
}

/// A markdown table's header for the worker counts.
fn header(first: &[&str], workers: &[usize]) {
    let counts: Vec<String> = workers.iter().map(|n| format!("N={n}")).collect();
    let aligns = vec!["---:"; workers.len()].join("|");
    let lefts = vec!["---"; first.len()].join("|");
    println!("| {} | {} |", first.join(" | "), counts.join(" | "));
    println!("|{lefts}|{aligns}|");
}

/// Prints calls/s per case and worker count.
fn print_rates(workers: &[usize]) {
    println!("\n== throughput: calls/s (N tasks on N workers, interleaved medians) ==\n");
    header(&["case"], workers);
    for inner in INNERS {
        for shape in SHAPES {
            for (stack, label) in STACKS {
                let cells: Vec<String> = workers
                    .iter()
                    .map(|&n| {
                        let ns = common::median(&key(inner, shape, n, stack));
                        ns.map_or("n/a".to_owned(), |ns| rate(n as f64 * 1e9 / ns))
                    })
                    .collect();
                let case = format!("{inner}, {}: {label}", shape.label());
                println!("| {case} | {} |", cells.join(" | "));
            }
        }
    }
}

/// A ratio's target at each worker count (`None`: none there).
#[derive(Clone, Copy)]
struct RowTarget {
    /// The target, as the table says it.
    said: &'static str,
    at_least: fn(usize) -> Option<f64>,
}

/// A ratio row: throughput of stack `num` over stack `den`, for every worker count, with
/// `target` judged at the counts it applies at.
fn ratio_row(
    label: &str,
    (inner, shape): (&str, Shape),
    (num, den): (&str, &str),
    workers: &[usize],
    target: Option<RowTarget>,
) {
    let cells: Vec<String> = workers
        .iter()
        .map(|&n| {
            let at = target.and_then(|t| (t.at_least)(n));
            let num = key(inner, shape, n, num);
            let den = key(inner, shape, n, den);
            let (value, verdict) = Ratio::throughput(label, &num, &den, at).verdict();
            // "target >= 1: met" -> "met": the target has a column of its own.
            let verdict = verdict.rsplit(": ").next().unwrap_or_default();
            format!("{value} {verdict}").trim_end().to_owned()
        })
        .collect();
    let target = target.map_or("", |t| t.said);
    let case = format!("{inner}, {}: {label}", shape.label());
    println!("| {case} | {target} | {} |", cells.join(" | "));
}

/// Prints the throughput ratios the targets use, and the layer's against tower::timeout's
/// everywhere.
fn print_ratios(workers: &[usize]) {
    println!("\n== throughput: ratios of calls/s (interleaved medians) ==\n");
    if test_mode() {
        println!("(test mode: one call per benchmark, ratios are not meaningful)\n");
    }
    header(&["ratio", "target"], workers);
    let vs_tower = RowTarget {
        said: ">= 0.9 at N=1, >= 1.0 at N=2",
        at_least: |n| [None, Some(0.9), Some(1.0)].get(n).copied().flatten(),
    };
    let hot_peer = RowTarget {
        said: ">= 0.9 at N=2",
        at_least: |n| (n == HOT_PEER_TARGET_AT).then_some(0.9),
    };
    for inner in INNERS {
        for shape in SHAPES {
            let channel64 = inner == "channel" && matches!(shape, Shape::InFlight);
            for (stack, label) in &STACKS[2..] {
                let label = format!("{label} / tower::timeout");
                let stacks = (*stack, "tower_timeout");
                let target = channel64.then_some(vs_tower);
                ratio_row(&label, (inner, shape), stacks, workers, target);
            }
            let stacks = ("layer/one_peer", "layer/distinct_peers");
            let label = "layer, one peer / distinct peers";
            ratio_row(label, (inner, shape), stacks, workers, Some(hot_peer));
        }
    }
}

fn main() {
    let workers = worker_counts();
    benches();
    common::criterion_summary();
    common::print_medians("throughput (wall ns / calls per task)");
    print_rates(workers);
    print_ratios(workers);
}
