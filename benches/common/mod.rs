//! Shared pieces of the benches: the request type, the inner services, the three stacks
//! compared (bare, `tower::timeout::Timeout`, this layer), runtimes, the call loop, tasks
//! calling at once, and a recorder that keeps every measured sample so each bench can print
//! medians and ratios.
//!
//! Every benchmark is timed with `iter_custom`: a batch of `iters` calls runs inside one
//! `block_on`, so the runtime's entry cost is spread over the batch and the per-call figure
//! is the cost of the stack itself.
//!
//! Each bench declares it `pub mod common;`: each uses a different subset, and the public
//! items of a public module are not dead code.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use tokio::sync::{mpsc, oneshot};
use tower::timeout::Timeout;
use tower::{service_fn, Layer, Service};
use tower_adaptive_timeout::{AdaptiveTimeout, AdaptiveTimeoutLayer};

/// Samples per benchmark.
pub const SAMPLE_SIZE: usize = 30;
/// Measurement time per benchmark.
pub const MEASUREMENT: Duration = Duration::from_secs(3);
/// Warm-up time per benchmark.
pub const WARM_UP: Duration = Duration::from_secs(1);
/// The fixed timeout `tower::timeout::Timeout` is given (never reached).
pub const FIXED_TIMEOUT: Duration = Duration::from_secs(1);

/// A request: only its peer matters.
#[derive(Clone, Copy, Debug)]
pub struct Req {
    pub peer: u32,
}

/// What the inner services of the benches are: they answer a `Req` with its peer, never
/// fail, and can be cloned into tasks on any thread.
pub trait Inner:
    Service<Req, Response = u32, Error = Infallible, Future = <Self as Inner>::Call>
    + Clone
    + Send
    + 'static
{
    /// The future of a call.
    type Call: Future<Output = Result<u32, Infallible>> + Send;
}

impl<S> Inner for S
where
    S: Service<Req, Response = u32, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Call = S::Future;
}

/// An inner service whose future is ready at its first poll.
pub fn ready_inner() -> impl Inner {
    service_fn(|r: Req| std::future::ready(Ok::<_, Infallible>(r.peer)))
}

/// An inner service whose future returns `Pending` once (it yields to the runtime), then
/// `Ready`, so a timeout's timer really is registered.
pub fn pending_once_inner() -> impl Inner {
    service_fn(|r: Req| async move {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(r.peer)
    })
}

/// A request on its way to a connection task, with where to send the answer.
type Envelope = (Req, oneshot::Sender<u32>);

/// An inner service that hands each request to a connection task over an unbounded mpsc
/// and waits for the answer on a oneshot, as hyper's client hands requests to its
/// connection task. The task answers at once. Clones share the connection.
#[derive(Clone, Debug)]
pub struct Channel {
    to_conn: mpsc::UnboundedSender<Envelope>,
}

/// The answer of a [`Channel`] call.
pub struct ChannelCall(oneshot::Receiver<u32>);

impl Future for ChannelCall {
    type Output = Result<u32, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| Ok(answer.expect("the connection task answers every request")))
    }
}

impl Service<Req> for Channel {
    type Response = u32;
    type Error = Infallible;
    type Future = ChannelCall;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> ChannelCall {
        let (answer, rx) = oneshot::channel();
        self.to_conn
            .send((req, answer))
            .expect("the connection task outlives its services");
        ChannelCall(rx)
    }
}

/// A [`Channel`] and its connection task, spawned on the current runtime (call it inside
/// one, e.g. under `Runtime::enter`). The task ends when the last clone is dropped.
pub fn channel_inner() -> Channel {
    let (to_conn, mut requests) = mpsc::unbounded_channel::<Envelope>();
    tokio::spawn(async move {
        while let Some((req, answer)) = requests.recv().await {
            let _ = answer.send(req.peer);
        }
    });
    Channel { to_conn }
}

/// This layer with the default policy, keyed by `Req::peer`.
pub fn adaptive_layer() -> AdaptiveTimeoutLayer<u32, impl Fn(&Req) -> u32 + Clone> {
    AdaptiveTimeoutLayer::builder(|r: &Req| r.peer)
        .build()
        .expect("the default policy is valid")
}

/// `inner` wrapped in `tower::timeout::Timeout`.
pub fn with_tower_timeout<S>(inner: S) -> Timeout<S> {
    Timeout::new(inner, FIXED_TIMEOUT)
}

/// `inner` wrapped in a fresh instance of this layer.
pub fn with_layer<S>(inner: S) -> AdaptiveTimeout<S, u32, impl Fn(&Req) -> u32 + Clone> {
    adaptive_layer().layer(inner)
}

/// A single-threaded runtime, as the per-call overhead benches use.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A multi-threaded runtime with `workers` worker threads.
pub fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Makes `iters` calls through `svc`, the peers taken round-robin from `keys`; returns the
/// time they took.
pub async fn drive<S: Service<Req>>(svc: &mut S, keys: &[u32], iters: u64) -> Duration {
    let start = Instant::now();
    let mut next = 0;
    for _ in 0..iters {
        let req = Req { peer: keys[next] };
        next += 1;
        if next == keys.len() {
            next = 0;
        }
        if poll_fn(|cx| svc.poll_ready(cx)).await.is_err() {
            panic!("service not ready");
        }
        let _ = black_box(svc.call(black_box(req)).await);
    }
    start.elapsed()
}

/// Spawns one task per entry of `tasks` on `rt`, each running `run` with its own clone of
/// its service, its peers and `iters`, and waits for all of them; returns the wall time.
/// Dividing by `iters` gives wall time per call per task.
pub fn run_tasks<S, R, F>(
    rt: &tokio::runtime::Runtime,
    tasks: &[(S, &'static [u32])],
    iters: u64,
    run: R,
) -> Duration
where
    S: Clone,
    R: Fn(S, &'static [u32], u64) -> F,
    F: Future + Send + 'static,
    F::Output: Send,
{
    rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = tasks
            .iter()
            .map(|(svc, keys)| tokio::spawn(run(svc.clone(), keys, iters)))
            .collect();
        for handle in handles {
            handle.await.expect("task");
        }
        start.elapsed()
    })
}

/// Runs `fut` on `rt` with a `fmt` subscriber at `level` (writing to `io::sink`, as a
/// production subscriber writes to its log) installed on this thread, or with none.
pub fn block_on_traced<F: Future>(
    rt: &tokio::runtime::Runtime,
    level: Option<tracing::Level>,
    fut: F,
) -> F::Output {
    let _guard = level.map(|level| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::set_default(subscriber)
    });
    rt.block_on(fut)
}

/// True when the bench binary runs as a test (`cargo test`): every benchmark then runs
/// once, and the benches shrink their set-up work.
pub fn test_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test")
}

/// The resident set size of this process, from `/proc/self/status` (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Per-sample nanoseconds per call, by benchmark id, in the order they were taken: as
/// criterion sampled them, and from the interleaved pass.
static CRITERION: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());
static INTERLEAVED: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

/// Rounds of the interleaved pass.
const ROUNDS: usize = 30;
/// Wall time of one batch in the interleaved pass.
const BATCH: Duration = Duration::from_millis(4);

/// A batch of calls: takes how many, returns how long they took (per task).
type Batch = Box<dyn FnMut(u64) -> Duration>;

fn record(into: &Mutex<BTreeMap<String, Vec<f64>>>, key: &str, took: Duration, iters: u64) {
    let per_call = took.as_nanos() as f64 / iters.max(1) as f64;
    let mut samples = into.lock().unwrap_or_else(|e| e.into_inner());
    samples.entry(key.to_owned()).or_default().push(per_call);
}

fn median_of(from: &Mutex<BTreeMap<String, Vec<f64>>>, key: &str) -> Option<f64> {
    let samples = from.lock().unwrap_or_else(|e| e.into_inner());
    let all = samples.get(key)?;
    // Criterion takes its warm-up batches first, then exactly `SAMPLE_SIZE` samples.
    let mut measured = all[all.len().saturating_sub(SAMPLE_SIZE)..].to_vec();
    measured.sort_by(f64::total_cmp);
    let n = measured.len();
    Some(if n % 2 == 1 {
        measured[n / 2]
    } else {
        (measured[n / 2 - 1] + measured[n / 2]) / 2.0
    })
}

/// A criterion group whose benchmarks are timed with `iter_custom` and recorded. When the
/// group ends, its benchmarks run again, interleaved (one batch of each in turn, for
/// `ROUNDS` rounds), so that load from other processes on the machine falls on all of
/// them alike and their ratios stay meaningful.
pub struct Group<'a> {
    name: String,
    inner: BenchmarkGroup<'a, WallTime>,
    batches: Vec<(String, Batch)>,
}

impl<'a> Group<'a> {
    /// A group with the modest sampling settings every bench here uses.
    pub fn new(c: &'a mut Criterion, name: &str) -> Self {
        Self::timed(c, name, MEASUREMENT, WARM_UP)
    }

    /// A group with `SAMPLE_SIZE` samples taken over `measurement`, after `warm_up`: for
    /// benches with so many cases that the default times would make them too long.
    pub fn timed(
        c: &'a mut Criterion,
        name: &str,
        measurement: Duration,
        warm_up: Duration,
    ) -> Self {
        let mut inner = c.benchmark_group(name);
        inner
            .sample_size(SAMPLE_SIZE)
            .measurement_time(measurement)
            .warm_up_time(warm_up);
        Group {
            name: name.to_owned(),
            inner,
            batches: Vec::new(),
        }
    }

    /// Benchmarks `batch`, which makes the given number of calls and returns how long they
    /// took (per task, when several tasks run at once).
    pub fn bench(&mut self, id: &str, batch: impl FnMut(u64) -> Duration + 'static) {
        let key = format!("{}/{id}", self.name);
        let mut batch: Batch = Box::new(batch);
        self.inner.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let took = batch(iters);
                record(&CRITERION, &key, took, iters);
                took
            })
        });
        self.batches.push((key, batch));
    }

    /// Ends the group, then runs the interleaved pass (not in test mode).
    pub fn finish(mut self) {
        self.inner.finish();
        if test_mode() {
            return;
        }
        let sizes: Vec<u64> = self
            .batches
            .iter()
            .map(|(key, _)| {
                let ns = median_of(&CRITERION, key).unwrap_or(1_000.0).max(1.0);
                (BATCH.as_nanos() as f64 / ns).max(1.0) as u64
            })
            .collect();
        for _ in 0..ROUNDS {
            for ((key, batch), &iters) in self.batches.iter_mut().zip(&sizes) {
                let took = batch(iters);
                record(&INTERLEAVED, key, took, iters);
            }
        }
    }
}

/// The median ns per call of benchmark `key` ("group/id"): from the interleaved pass when
/// there was one, else from criterion's samples.
pub fn median(key: &str) -> Option<f64> {
    median_of(&INTERLEAVED, key).or_else(|| median_of(&CRITERION, key))
}

/// Prints the median of every benchmark recorded so far, as criterion sampled it and from
/// the interleaved pass.
pub fn print_medians(title: &str) {
    let keys: Vec<String> = CRITERION
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect();
    let show = |m: Option<f64>| m.map_or("n/a".to_owned(), |m| format!("{m:.1}"));
    println!("\n== {title}: median ns per call ==");
    println!(
        "{:<48} {:>10} {:>12}",
        "benchmark", "criterion", "interleaved"
    );
    for key in keys {
        let c = show(median_of(&CRITERION, &key));
        let i = show(median_of(&INTERLEAVED, &key));
        println!("{key:<48} {c:>10} {i:>12}");
    }
}

/// What a ratio must be to meet its target.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// At most this (a cost).
    AtMost(f64),
    /// At least this (a throughput).
    AtLeast(f64),
}

impl Target {
    /// Whether `value` meets the target.
    pub fn met(self, value: f64) -> bool {
        match self {
            Target::AtMost(t) => value <= t,
            Target::AtLeast(t) => value >= t,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::AtMost(t) => write!(f, "<= {t}"),
            Target::AtLeast(t) => write!(f, ">= {t}"),
        }
    }
}

/// One line of a bench's ratio table.
pub struct Ratio {
    pub label: String,
    pub value: Option<f64>,
    pub target: Option<Target>,
}

impl Ratio {
    /// `median(num) / median(den)`, which must be at most `target`.
    pub fn plain(label: &str, num: &str, den: &str, target: Option<f64>) -> Ratio {
        let value = median(num).zip(median(den)).map(|(n, d)| n / d);
        Ratio {
            label: label.to_owned(),
            value,
            target: target.map(Target::AtMost),
        }
    }

    /// The throughput of `num` over that of `den`: `median(den) / median(num)`, which must
    /// be at least `target`.
    pub fn throughput(label: &str, num: &str, den: &str, target: Option<f64>) -> Ratio {
        let value = median(num).zip(median(den)).map(|(n, d)| d / n);
        Ratio {
            label: label.to_owned(),
            value,
            target: target.map(Target::AtLeast),
        }
    }

    /// `(median(num) - median(bare)) / (median(den) - median(bare))`: overhead over overhead.
    pub fn overhead(label: &str, num: &str, den: &str, bare: &str, target: Option<f64>) -> Ratio {
        let value = match (median(num), median(den), median(bare)) {
            (Some(n), Some(d), Some(b)) if d > b => Some((n - b) / (d - b)),
            _ => None,
        };
        Ratio {
            label: label.to_owned(),
            value,
            target: target.map(Target::AtMost),
        }
    }

    /// The value and, when there is a target and not in test mode, whether it is met.
    pub fn verdict(&self) -> (String, String) {
        let value = self.value.map_or("n/a".to_owned(), |v| format!("{v:.2}"));
        let verdict = match (self.value, self.target) {
            _ if test_mode() => String::new(),
            (Some(v), Some(t)) if t.met(v) => format!("target {t}: met"),
            (Some(_), Some(t)) => format!("target {t}: MISSED"),
            _ => String::new(),
        };
        (value, verdict)
    }
}

/// Prints the ratio table (from the interleaved medians); in test mode the figures come
/// from a single call each and mean nothing.
pub fn print_ratios(title: &str, ratios: &[Ratio]) {
    println!("\n== {title}: ratios (interleaved medians) ==");
    if test_mode() {
        println!("(test mode: one call per benchmark, ratios are not meaningful)");
    }
    for r in ratios {
        let (value, verdict) = r.verdict();
        println!("{:<56} {value:>8}  {verdict}", r.label);
    }
}

/// What `criterion_main!` does after the groups run.
pub fn criterion_summary() {
    Criterion::default().configure_from_args().final_summary();
}
