//! Per-call overhead on a current-thread runtime, one peer.
//!
//! * `ready`: the inner future is ready at its first poll. Bare `service_fn` vs
//!   `tower::timeout::Timeout` vs this layer. Every call goes to peer 0 through one
//!   service, so the layer's last-peer cache hits, as it does for a stack in front of one
//!   peer. `layer_uncached` alternates between peers 0 and 1, so the cache misses on every
//!   call and each call looks its peer up in the table (the path of a service that fans out
//!   to many peers).
//! * `pending_once`: the inner future yields once, so every timeout's timer is really
//!   registered and cancelled. Same stacks, `layer_uncached` too.
//! * `*_tracing`: the same with a `fmt` subscriber at `TRACE` level (writing to `io::sink`)
//!   installed, to show the layer's instrumentation costs nothing on the success path.
//! * `layer_info` (in `ready` and `pending_once`): the layer with a `fmt` subscriber at
//!   `INFO` writing to `io::sink`, as production runs. It sits in the same group as `layer`
//!   so the two are interleaved and their ratio holds on a busy machine.
//! * `vs_adaptive_timeout`: the `adaptive-timeout` crate's per-call work
//!   (`select_timeout_sync` before the call, `record_latency_from` after, two clock reads)
//!   next to this layer's ready path, for 1 and 1,000 peers; `adaptive_timeout_spread` feeds
//!   it latencies spread over 1 ms..1 s, since it reads a quantile on every call.
//!
//! Ends with a table of medians and the ratios the project targets:
//! `(layer - bare) / (tower::timeout - bare)` <= 3.5 (ready) and <= 1.5 (pending once);
//! `layer_info / layer` <= 1.05.

pub mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use adaptive_timeout::{AdaptiveTimeout, SyncLatencyTracker};
use criterion::{criterion_group, Criterion};
use tower::Service;
use tracing::Level;

use common::{
    block_on_traced, current_thread, drive, pending_once_inner, ready_inner, with_layer,
    with_tower_timeout, Group, Ratio, Req,
};

/// Peer counts of the comparison with `adaptive-timeout`.
const PEER_COUNTS: [u32; 2] = [1, 1_000];

/// Benchmarks `svc` in `group` under `id`, calling `keys` round-robin, with a subscriber
/// at `level` or none.
fn bench_stack<S: Service<Req> + 'static>(
    group: &mut Group<'_>,
    id: &str,
    level: Option<Level>,
    keys: &'static [u32],
    mut svc: S,
) {
    let rt = current_thread();
    group.bench(id, move |iters| {
        block_on_traced(&rt, level, drive(&mut svc, keys, iters))
    });
}

/// The three stacks around the inner service `make()` builds, one peer, with a subscriber
/// at `level` or none; with `variants`, the layer again alternating between two peers, and
/// again with an `INFO` subscriber.
fn three_stacks<S, M>(c: &mut Criterion, name: &str, level: Option<Level>, variants: bool, make: M)
where
    M: Fn() -> S,
    S: Service<Req, Response = u32, Error = std::convert::Infallible> + 'static,
{
    let mut group = Group::new(c, name);
    bench_stack(&mut group, "bare", level, &[0], make());
    bench_stack(
        &mut group,
        "tower_timeout",
        level,
        &[0],
        with_tower_timeout(make()),
    );
    bench_stack(&mut group, "layer", level, &[0], with_layer(make()));
    if variants {
        bench_stack(
            &mut group,
            "layer_uncached",
            level,
            &[0, 1],
            with_layer(make()),
        );
        let info = Some(Level::INFO);
        bench_stack(&mut group, "layer_info", info, &[0], with_layer(make()));
    }
    group.finish();
}

fn ready(c: &mut Criterion) {
    three_stacks(c, "ready", None, true, ready_inner);
}

fn pending_once(c: &mut Criterion) {
    three_stacks(c, "pending_once", None, true, pending_once_inner);
}

fn ready_tracing(c: &mut Criterion) {
    three_stacks(c, "ready_tracing", Some(Level::TRACE), false, ready_inner);
}

fn pending_once_tracing(c: &mut Criterion) {
    let trace = Some(Level::TRACE);
    three_stacks(c, "pending_once_tracing", trace, false, pending_once_inner);
}

/// `iters` calls' worth of `adaptive-timeout` bookkeeping: choose the timeout, make the
/// (empty) call, record its latency. With `spread`, the recorded latency cycles through
/// 1 ms..1 s instead of the measured ~0, so the per-call quantile walks a realistic
/// histogram.
fn adaptive_timeout_batch(
    tracker: &SyncLatencyTracker<u32>,
    timeout: &AdaptiveTimeout,
    keys: &[u32],
    spread: bool,
    iters: u64,
) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        let key = &keys[(i % keys.len() as u64) as usize];
        let sent = Instant::now();
        black_box(timeout.select_timeout_sync(tracker, [key], 1, sent));
        let answered = Instant::now();
        if spread {
            let latency = Duration::from_millis(1 + (i * 7919) % 1000);
            tracker.record_latency(key, latency, answered);
        } else {
            black_box(tracker.record_latency_from(key, sent, answered));
        }
    }
    start.elapsed()
}

fn vs_adaptive_timeout(c: &mut Criterion) {
    let mut group = Group::new(c, "vs_adaptive_timeout");
    for peers in PEER_COUNTS {
        let keys: Vec<u32> = (0..peers).collect();
        let rt = current_thread();
        let mut svc = with_layer(ready_inner());
        let layer_keys = keys.clone();
        group.bench(&format!("layer/{peers}"), move |iters| {
            rt.block_on(drive(&mut svc, &layer_keys, iters))
        });
        for (id, spread) in [
            ("adaptive_timeout", false),
            ("adaptive_timeout_spread", true),
        ] {
            let tracker = SyncLatencyTracker::<u32>::default();
            let timeout = AdaptiveTimeout::default();
            let keys = keys.clone();
            group.bench(&format!("{id}/{peers}"), move |iters| {
                adaptive_timeout_batch(&tracker, &timeout, &keys, spread, iters)
            });
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    ready,
    pending_once,
    ready_tracing,
    pending_once_tracing,
    vs_adaptive_timeout
);

fn main() {
    benches();
    common::criterion_summary();
    common::print_medians("overhead");
    let mut ratios = Vec::new();
    for (group, target) in [
        ("ready", 3.5),
        ("pending_once", 1.5),
        ("ready_tracing", 3.5),
        ("pending_once_tracing", 1.5),
    ] {
        ratios.push(Ratio::overhead(
            &format!("{group}: (layer - bare) / (tower_timeout - bare)"),
            &format!("{group}/layer"),
            &format!("{group}/tower_timeout"),
            &format!("{group}/bare"),
            Some(target),
        ));
    }
    for group in ["ready", "pending_once"] {
        ratios.push(Ratio::overhead(
            &format!("{group}: (layer_uncached - bare) / (tower_timeout - bare)"),
            &format!("{group}/layer_uncached"),
            &format!("{group}/tower_timeout"),
            &format!("{group}/bare"),
            None,
        ));
    }
    for group in ["ready", "pending_once"] {
        ratios.push(Ratio::plain(
            &format!("{group}: layer INFO subscriber / none"),
            &format!("{group}/layer_info"),
            &format!("{group}/layer"),
            Some(1.05),
        ));
        ratios.push(Ratio::plain(
            &format!("{group}: layer TRACE subscriber / none"),
            &format!("{group}_tracing/layer"),
            &format!("{group}/layer"),
            None,
        ));
    }
    for peers in PEER_COUNTS {
        for id in ["adaptive_timeout", "adaptive_timeout_spread"] {
            ratios.push(Ratio::plain(
                &format!("{peers} peer(s): {id} / layer"),
                &format!("vs_adaptive_timeout/{id}/{peers}"),
                &format!("vs_adaptive_timeout/layer/{peers}"),
                None,
            ));
        }
    }
    common::print_ratios("overhead", &ratios);
}
