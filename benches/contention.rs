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
//! `tower::timeout::Timeout` and this layer. Ends with medians and the ratio the project
//! targets: layer / tower::timeout <= 1.5.

mod common;

use std::time::Instant;

use criterion::{criterion_group, Criterion};
use tower::Service;

use common::{
    drive, multi_thread, pending_once_inner, ready_inner, with_layer, with_tower_timeout, Group,
    Ratio, Req,
};

/// Tasks calling at once (and worker threads).
const TASKS: usize = 2;

/// The peer each task calls, by case.
const CASES: [(&str, [u32; TASKS]); 2] = [("same_peer", [0, 0]), ("different_peers", [0, 1])];

/// Benchmarks `svc` with one task per entry of `peers`, each making a batch of calls.
fn bench_tasks<S>(group: &mut Group<'_>, id: &str, peers: [u32; TASKS], svc: S)
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
{
    let rt = multi_thread(TASKS);
    group.bench(id, move |iters| {
        rt.block_on(async {
            let start = Instant::now();
            let tasks: Vec<_> = peers
                .iter()
                .map(|&peer| {
                    let mut svc = svc.clone();
                    tokio::spawn(async move { drive(&mut svc, &[peer], iters).await })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
            start.elapsed()
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
    for (case, peers) in CASES {
        let mut group = Group::new(c, &format!("{inner}/{case}"));
        bench_tasks(&mut group, "bare", peers, make());
        bench_tasks(
            &mut group,
            "tower_timeout",
            peers,
            with_tower_timeout(make()),
        );
        bench_tasks(&mut group, "layer", peers, with_layer(make()));
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
        for (case, _) in CASES {
            let group = format!("{inner}/{case}");
            ratios.push(Ratio::plain(
                &format!("{group}: layer / tower_timeout"),
                &format!("{group}/layer"),
                &format!("{group}/tower_timeout"),
                Some(1.5),
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
