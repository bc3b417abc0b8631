//! A fixed number of calls of one `overhead` case, for counting what a call costs in
//! instructions (callgrind, `perf stat -e instructions`) rather than in time, which a
//! shared machine makes noisy.
//!
//! `count <case> <stack> <calls> [warm-up]`: `case` is `ready` or `pending_once`, `stack`
//! is `bare`, `tower_timeout` or `layer` (the `overhead` bench's stacks: one peer, a
//! current-thread runtime); or `case` is `http`: one call at a time from hyper-util's pooled
//! client to a hyper server on loopback, both on one current-thread runtime (`e2e`'s stacks,
//! the layer's `http()` with interrupt tokens, and `layer_no_tokens` without them), where
//! the count is user space only and the server's and the client's share is the same for
//! every stack, so the difference between two stacks is what one adds; `calls` how many calls to make after `warm-up` calls (1,000 by
//! default; 600,000 make the peer busy enough that its answers are sampled, as they are
//! within a second of `overhead`). Run it with `N` and `2N` calls under the counter: the
//! difference divided by `N` is the cost of one call, set-up and warm-up cancelled out. It prints the heap allocations per measured call
//! (counted by this binary's allocator), which must be 0 for the layer's own work.
//!
//! ```sh
//! CARGO_TARGET_DIR=target/bench cargo bench --bench count --no-run
//! for n in 20000 40000; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$n target/bench/release/deps/count-* ready layer $n
//! done
//! ```
//!
//! With `COUNT_TIMES=k` set, a `ready` or `pending_once` run also times `k` runs of `calls`
//! calls after the warm-up, one after another in the process, and prints the fastest and
//! the median nanoseconds per call: a quick comparison of two builds, run in turns (the
//! fastest of many short runs moves least with the machine); `overhead` is the benchmark.
//!
//! Without arguments (as `cargo test --all-targets` runs it) it makes 1,000 calls of each
//! case and stack and checks that none of the layer's allocates.

pub mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use std::time::Duration;

use common::{current_thread, drive, pending_once_inner, ready_inner};
use common::{with_tower_timeout, Inner, Req, FIXED_TIMEOUT};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use loopback::http_server::{self, get};
use tower::timeout::Timeout;
use tower::{Layer, Service};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, TimeoutPolicy};

/// Counts allocations, forwarding each to the system allocator.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Calls made before the measured ones by default: the peer is learned and the service
/// holds its lease.
const WARM_UP: u64 = 1_000;

/// Makes `warm_up` then `calls` calls through `svc`; returns the allocations per measured
/// call.
fn run<S: Service<Req>>(mut svc: S, (warm_up, calls): (u64, u64)) -> f64 {
    let rt = current_thread();
    rt.block_on(async {
        drive(&mut svc, &[0], warm_up).await;
        if let Some(runs) = timed_runs() {
            let mut per_call = Vec::with_capacity(runs);
            for _ in 0..runs {
                let took = drive(&mut svc, &[0], calls).await;
                per_call.push(took.as_nanos() as f64 / calls.max(1) as f64);
            }
            per_call.sort_by(f64::total_cmp);
            let (fastest, median) = (per_call[0], per_call[runs / 2]);
            println!("ns per call over {runs} runs: fastest {fastest:.1}, median {median:.1}");
        }
        let before = ALLOCATIONS.load(Relaxed);
        drive(&mut svc, &[0], calls).await;
        (ALLOCATIONS.load(Relaxed) - before) as f64 / calls.max(1) as f64
    })
}

/// How many timed runs `COUNT_TIMES` asks for (`None`: unset, 0 or not a number).
fn timed_runs() -> Option<usize> {
    let runs = std::env::var("COUNT_TIMES").ok()?.parse().ok()?;
    (runs > 0).then_some(runs)
}

/// `inner` behind this layer, keyed by `Req::peer`, under the default policy but for a
/// `min` (and `cold_start`) of 10 s: an instruction counter runs a call some 50 times slower, and no call
/// may run out its deadline there (a miss takes another path), however slowly it runs.
fn with_layer<I: Inner>(inner: I) -> impl Service<Req> {
    let ten = Duration::from_secs(10);
    let policy = TimeoutPolicy::default().min(ten).cold_start(ten);
    let layer = AdaptiveTimeoutLayer::builder(|r: &Req| r.peer).policy(policy);
    layer.build().expect("a valid policy").layer(inner)
}

/// The `http` case: `warm_up` then `calls` calls, one at a time, through `stack` around a
/// hyper-util client of a loopback hyper server on the same current-thread runtime; each
/// call's body is read to its end. Returns the allocations per measured call.
fn http(stack: &str, counts: (u64, u64)) -> Option<f64> {
    /// Makes `n` calls through `svc` to `uri`.
    async fn make_calls<S>(svc: &mut S, uri: &http::Uri, n: u64)
    where
        S: Service<Request<Empty<bytes::Bytes>>, Response = Response<Incoming>>,
        S::Error: std::fmt::Debug,
    {
        for _ in 0..n {
            std::future::poll_fn(|cx| svc.poll_ready(cx))
                .await
                .expect("ready");
            let response = svc.call(get(uri.clone())).await.expect("an answer");
            response.into_body().collect().await.expect("a body");
        }
    }
    /// `svc`'s calls, counted.
    fn run<S>(mut svc: S, (warm_up, n): (u64, u64)) -> f64
    where
        S: Service<Request<Empty<bytes::Bytes>>, Response = Response<Incoming>>,
        S::Error: std::fmt::Debug,
    {
        current_thread().block_on(async {
            let server = http_server::start(Duration::ZERO).await.expect("a server");
            let uri = server.uri("/");
            make_calls(&mut svc, &uri, warm_up).await;
            let before = ALLOCATIONS.load(Relaxed);
            make_calls(&mut svc, &uri, n).await;
            (ALLOCATIONS.load(Relaxed) - before) as f64 / n.max(1) as f64
        })
    }
    let ten = Duration::from_secs(10);
    let layer = |tokens: bool| {
        AdaptiveTimeoutLayer::http()
            .interrupt_tokens(tokens)
            .policy(TimeoutPolicy::default().min(ten).cold_start(ten))
            .build()
            .expect("a valid policy")
            .layer(http_server::client())
    };
    let client = http_server::client;
    Some(match stack {
        "bare" => run(client(), counts),
        "tower_timeout" => run(Timeout::new(client(), FIXED_TIMEOUT), counts),
        "layer" => run(layer(true), counts),
        "layer_no_tokens" => run(layer(false), counts),
        _ => return None,
    })
}

/// Runs `calls` (warm-up, measured) of `stack` around the inner service `make()` builds.
fn stack<I: Inner>(stack: &str, make: impl Fn() -> I, calls: (u64, u64)) -> Option<f64> {
    Some(match stack {
        "bare" => run(make(), calls),
        "tower_timeout" => run(with_tower_timeout(make()), calls),
        "layer" => run(with_layer(make()), calls),
        _ => return None,
    })
}

/// Runs `calls` (warm-up, measured) of `case` through `name`'s stack.
fn case(case: &str, name: &str, calls: (u64, u64)) -> Option<f64> {
    match case {
        "ready" => stack(name, ready_inner, calls),
        "pending_once" => stack(name, pending_once_inner, calls),
        "http" => http(name, calls),
        _ => None,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [which, name, calls, rest @ ..] = &args[..] {
        let calls: u64 = calls.parse().expect("calls: a whole number");
        let warm_up = rest
            .first()
            .map_or(WARM_UP, |w| w.parse().expect("warm-up: a number"));
        let per_call = case(which, name, (warm_up, calls)).expect(
            "usage: count <ready|pending_once|http> <bare|tower_timeout|layer> <calls> [warm-up]",
        );
        println!("{which}/{name}: {calls} calls, {per_call:.3} allocations per call");
        return;
    }
    // No case named (a test run): every case briefly, and the layer allocates nothing.
    for which in ["ready", "pending_once"] {
        for name in ["bare", "tower_timeout", "layer"] {
            let per_call = case(which, name, (WARM_UP, 1_000)).expect("a known case");
            println!("{which}/{name}: {per_call:.3} allocations per call");
            if name == "layer" {
                assert_eq!(per_call, 0.0, "{which}/layer allocates per call");
            }
        }
    }
}
