//! How late calls end after their deadline, on the real clock: calls to an inner service
//! that never answers, each cut at its deadline, on a 2-worker runtime. Prints the
//! distribution of `ended - (started + deadline)` (the deadline the call's error reports:
//! each cut call's censored sample moves its peer's deadline on) per starting deadline, and
//! the share within the layer's promise, 1 ms + 1% of the deadline; `tower::timeout::Timeout`
//! at the same deadlines beside it. A measurement, not a test: nothing is asserted
//! (`cargo test --all-targets` runs it once, small).

pub mod common;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use tower::timeout::Timeout;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, Interrupted, TimeoutPolicy};

use common::{multi_thread, test_mode, Req};

/// The deadlines measured (each peer keeps its cold-start deadline: it never answers).
const DEADLINES_MS: [u64; 4] = [10, 50, 250, 1_000];

/// Calls per deadline, started 0.1 ms apart so their deadlines spread over the queue.
const CALLS: usize = 2_000;

/// How late each of `calls` calls to peers starting at deadline `deadline` ended, and
/// whether it was within 1 ms + 1% of its own deadline.
async fn layer_lateness(deadline: Duration, calls: usize) -> Vec<(Duration, bool)> {
    let policy = TimeoutPolicy::default()
        .cold_start(deadline)
        .min(deadline.min(Duration::from_millis(10)))
        .silent_after_misses(0);
    let layer = AdaptiveTimeoutLayer::builder(|r: &Req| r.peer)
        .policy(policy)
        .build()
        .expect("a valid policy");
    let svc = layer.layer(hung());
    let own = |err: &BoxError| err.downcast_ref::<Interrupted>()?.deadline();
    lateness(svc, calls, own).await
}

/// The same with `tower::timeout::Timeout` at `deadline`.
async fn tower_lateness(deadline: Duration, calls: usize) -> Vec<(Duration, bool)> {
    lateness(Timeout::new(hung(), deadline), calls, move |_| {
        Some(deadline)
    })
    .await
}

/// An inner service that never answers.
fn hung() -> impl Service<Req, Response = u32, Error = Infallible, Future: Send> + Clone + Send {
    service_fn(|_: Req| std::future::pending::<Result<u32, Infallible>>())
}

/// Makes `calls` calls through clones of `svc`, 0.1 ms apart over 8 peers; each ends with
/// an error whose deadline `own` tells. Returns how late each ended, sorted, and whether
/// within 1 ms + 1% of its deadline.
async fn lateness<S>(
    svc: S,
    calls: usize,
    own: impl Fn(&BoxError) -> Option<Duration> + Copy + Send + 'static,
) -> Vec<(Duration, bool)>
where
    S: Service<Req, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut tasks = Vec::with_capacity(calls);
    for i in 0..calls {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let err = svc.oneshot(Req { peer: i as u32 % 8 }).await.err();
            let elapsed = started.elapsed();
            let own = err
                .as_ref()
                .and_then(own)
                .expect("every call is cut at its deadline");
            let late = elapsed.saturating_sub(own);
            (late, late <= Duration::from_millis(1) + own / 100)
        }));
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut late = Vec::with_capacity(calls);
    for task in tasks {
        late.push(task.await.expect("call"));
    }
    late.sort();
    late
}

fn main() {
    let calls = if test_mode() { 50 } else { CALLS };
    let rt = multi_thread(2);
    println!("== lateness: how long after its deadline each call ended (real clock, 2 workers) ==");
    println!();
    println!("| stack | starting deadline | calls | p50 | p99 | p99.9 | max | within 1 ms + 1% |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (stack, ms) in DEADLINES_MS
        .iter()
        .flat_map(|ms| [("layer", *ms), ("tower::timeout", *ms)])
    {
        let deadline = Duration::from_millis(ms);
        let ended = match stack {
            "layer" => rt.block_on(layer_lateness(deadline, calls)),
            _ => rt.block_on(tower_lateness(deadline, calls)),
        };
        let within = ended.iter().filter(|(_, within)| *within).count();
        let late: Vec<Duration> = ended.into_iter().map(|(late, _)| late).collect();
        let at = |q: f64| late[((late.len() - 1) as f64 * q) as usize];
        println!(
            "| {stack} | {ms} ms | {} | {:?} | {:?} | {:?} | {:?} | {:.2}% |",
            late.len(),
            at(0.5),
            at(0.99),
            at(0.999),
            late[late.len() - 1],
            100.0 * within as f64 / late.len() as f64,
        );
    }
}
