//! Two tasks calling at once on a 2-worker multi-thread runtime.
//!
//! Each benchmark spawns two tasks that each make the same number of calls through clones
//! of one service (clones of this layer's service share its peer table); the figure is
//! wall time divided by calls per task. Cases:
//!
//! * `same_peer`: both tasks call peer 0, so they share one peer's atomics and lock.
//! * `different_peers`: task 0 calls peer 0, task 1 calls peer 1.
//!
//! each for a ready inner future and one that is pending once, and for bare `service_fn`,
//! `tower::timeout::Timeout` and this layer. Each task keeps its clone for the whole batch,
//! as a caller holding a service does, so the service's last-peer cache hits on every call
//! after the first. `layer_uncached` shows the path without that cache: each task
//! alternates between its peer and a second one (`same_peer`: both tasks alternate between
//! peers 0 and 1; `different_peers`: task 0 between 0 and 2, task 1 between 1 and 3), so
//! every call goes through the shared peer table. Ends with medians and the ratio the
//! project targets: layer / tower::timeout <= 1.5.

pub mod common;

use criterion::{criterion_group, Criterion};
use tower::Service;

use common::{
    drive, multi_thread, pending_once_inner, ready_inner, run_tasks, with_layer,
    with_tower_timeout, Group, Ratio, Req,
};

/// Tasks calling at once (and worker threads).
const TASKS: usize = 2;

/// A case: its name, the peer each task calls, and the peers each task alternates between
/// in `layer_uncached`.
type Case = (
    &'static str,
    [&'static [u32]; TASKS],
    [&'static [u32]; TASKS],
);

/// The cases.
const CASES: [Case; 2] = [
    ("same_peer", [&[0], &[0]], [&[0, 1], &[1, 0]]),
    ("different_peers", [&[0], &[1]], [&[0, 2], &[1, 3]]),
];

/// Benchmarks `svc` with one task per entry of `peers`, each making a batch of calls to
/// its peers round-robin through its own clone of `svc`.
fn bench_tasks<S>(group: &mut Group<'_>, id: &str, peers: [&'static [u32]; TASKS], svc: S)
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
{
    let rt = multi_thread(TASKS);
    let tasks = peers.map(|keys| (svc.clone(), keys));
    group.bench(id, move |iters| {
        run_tasks(&rt, &tasks, iters, |mut svc, keys, iters| async move {
            drive(&mut svc, keys, iters).await
        })
    });
}

/// The three stacks around the inner service `make()` builds, for every case.
fn cases<S, M>(c: &mut Criterion, inner: &str, make: M)
where
    M: Fn() -> S,
    S: Service<Req, Response = u32, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    for (case, peers, alternating) in CASES {
        let mut group = Group::new(c, &format!("{inner}/{case}"));
        bench_tasks(&mut group, "bare", peers, make());
        bench_tasks(
            &mut group,
            "tower_timeout",
            peers,
            with_tower_timeout(make()),
        );
        bench_tasks(&mut group, "layer", peers, with_layer(make()));
        bench_tasks(
            &mut group,
            "layer_uncached",
            alternating,
            with_layer(make()),
        );
        group.finish();
    }
}

fn ready(c: &mut Criterion) {
    cases(c, "ready", ready_inner);
}

fn pending_once(c: &mut Criterion) {
    cases(c, "pending_once", pending_once_inner);
}

criterion_group!(benches, ready, pending_once);

fn main() {
    benches();
    common::criterion_summary();
    common::print_medians("contention (2 tasks, 2 workers; wall ns / calls per task)");
    let mut ratios = Vec::new();
    for inner in ["ready", "pending_once"] {
        for (case, _, _) in CASES {
            let group = format!("{inner}/{case}");
            ratios.push(Ratio::plain(
                &format!("{group}: layer / tower_timeout"),
                &format!("{group}/layer"),
                &format!("{group}/tower_timeout"),
                Some(1.5),
            ));
            ratios.push(Ratio::plain(
                &format!("{group}: layer_uncached / tower_timeout"),
                &format!("{group}/layer_uncached"),
                &format!("{group}/tower_timeout"),
                None,
            ));
            ratios.push(Ratio::overhead(
                &format!("{group}: (layer - bare) / (tower_timeout - bare)"),
                &format!("{group}/layer"),
                &format!("{group}/tower_timeout"),
                &format!("{group}/bare"),
                None,
            ));
        }
    }
    common::print_ratios("contention", &ratios);
}
