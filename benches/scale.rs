//! How the layer scales with the number of peers, in time and memory.
//!
//! * Time (`ready` group, current-thread runtime, ready inner future). Keys are
//!   precomputed `u32`s, so building keys is not measured. Each service remembers the last
//!   peer it called and skips the table when the next call goes to the same one, so the
//!   cases separate the cached and uncached paths:
//!   - `layer/1_peer`: one service, one peer (an equally long array of one key): cached.
//!   - `layer/10000_services`: one service per peer, all made by one layer (one shared
//!     table), called round-robin, as a balancer with one stack per endpoint does: every
//!     service's cache hits, but 10,000 peers' state is touched in turn (cache-cold).
//!   - `layer/2_peers_alternating`: one service alternating between two peers: the cache
//!     misses on every call, the table is tiny.
//!   - `layer/10000_peers`: one service, 10,000 peers round-robin: the cache misses on
//!     every call and the table is large.
//!
//!   Target: 10,000 peers within 1.3x of one peer, like for like (cached against cached,
//!   uncached against uncached); the cross ratio `10000_peers / 1_peer` is printed too.
//!   `tower::timeout::Timeout` over 10,000 keys (one service) and over 10,000 services are
//!   the peer-blind references.
//! * Memory, in a child process (this bench's binary run again with `SCALE_MEMORY_PEERS`
//!   set), before the timings: a fresh layer (default policy) on a paused-clock runtime
//!   gets one call per peer for 10,000 peers; then `WARM_ROUNDS` more rounds of one call
//!   per peer, each round starting one sub-window after the last, so that every peer's
//!   calls land in every sub-window in turn, as on a busy peer (a peer's histograms are
//!   allocated when first written, so this is the most a peer holds). Latencies are spread
//!   over 100 us..1.6 ms so a round of 10,000 calls fits in one sub-window. Printed: the
//!   heap bytes of one peer's window (`PeerSnapshot::window_bytes`, the histograms
//!   allocated so far) and the growth of the process's resident set (`VmRSS`) per peer,
//!   after each stage. It runs apart because, with tokio's `test-util` feature (on for
//!   benches: dev-dependencies), once any clock in a process has been paused every
//!   `tokio::time::Instant::now()` in it goes through the runtime's clock mutex; in this
//!   process that would tax the timings.
//!
//! In test mode (`cargo test`) the memory stage uses 100 peers and the timings run once.

pub mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use std::future::poll_fn;
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use tower::{service_fn, Layer, Service};
use tower_adaptive_timeout::TimeoutPolicy;

use common::{
    adaptive_layer, current_thread, drive, ready_inner, rss_bytes, test_mode, with_layer,
    with_tower_timeout, Group, Ratio, Req,
};

/// Peers in the many-peer case.
const MANY: u32 = 10_000;
/// Rounds of one call per peer after the first call, one sub-window apart, in the memory
/// stage: two whole windows at the default policy (6 sub-windows), so sub-windows are
/// also retired and reused.
const WARM_ROUNDS: u32 = 12;
/// Latencies the memory stage's inner service takes, in microseconds, cycled through.
const LATENCIES_US: [u64; 8] = [100, 150, 220, 330, 490, 730, 1_100, 1_600];

/// Set in the child process that runs the memory stage: how many peers to insert.
const MEMORY_CHILD: &str = "SCALE_MEMORY_PEERS";

/// What the memory stage found.
struct Memory {
    peers: u32,
    window_bytes_fresh: usize,
    window_bytes: usize,
    rss_fresh_per_peer: Option<f64>,
    rss_warm_per_peer: Option<f64>,
}

/// Inserts `peers` peers into a fresh layer and measures what they hold.
fn measure_memory(peers: u32) -> Memory {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let layer = adaptive_layer();
    let handle = layer.handle();
    let sub_window = TimeoutPolicy::default().sub_window();
    let mut svc = layer.layer(service_fn(|r: Req| async move {
        let n = CALLS.fetch_add(1, Relaxed) as usize;
        // `advance`, not `sleep`: timers round up to whole milliseconds.
        tokio::time::advance(Duration::from_micros(LATENCIES_US[n % LATENCIES_US.len()])).await;
        Ok::<_, Infallible>(r.peer)
    }));
    let keys: Vec<u32> = (0..peers).collect();
    let per_peer = |before: Option<u64>, after: Option<u64>| {
        before
            .zip(after)
            .map(|(b, a)| a.saturating_sub(b) as f64 / f64::from(peers))
    };
    let rss0 = rss_bytes();
    rt.block_on(drive(&mut svc, &keys, u64::from(peers)));
    let rss1 = rss_bytes();
    let window_bytes_fresh = handle.snapshot()[0].window_bytes;
    rt.block_on(async {
        let t0 = tokio::time::Instant::now();
        for round in 1..=WARM_ROUNDS {
            tokio::time::sleep_until(t0 + sub_window * round).await;
            drive(&mut svc, &keys, u64::from(peers)).await;
        }
        let elapsed = t0.elapsed();
        assert!(
            elapsed < sub_window * (WARM_ROUNDS + 1),
            "a round outlasted its sub-window: {elapsed:?}"
        );
    });
    let rss2 = rss_bytes();
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.len(), peers as usize, "every peer is tracked");
    Memory {
        peers,
        window_bytes_fresh,
        window_bytes: snapshot[0].window_bytes,
        rss_fresh_per_peer: per_peer(rss0, rss1),
        rss_warm_per_peer: per_peer(rss0, rss2),
    }
}

/// Makes `iters` calls, service `i` calling peer `i`, the services taken round-robin;
/// returns the time they took.
async fn drive_services<S: Service<Req>>(svcs: &mut [S], iters: u64) -> Duration {
    let start = Instant::now();
    let len = svcs.len();
    let mut next = 0;
    for _ in 0..iters {
        let svc = &mut svcs[next];
        let req = Req { peer: next as u32 };
        next += 1;
        if next == len {
            next = 0;
        }
        if poll_fn(|cx| svc.poll_ready(cx)).await.is_err() {
            panic!("service not ready");
        }
        let _ = black_box(svc.call(black_box(req)).await);
    }
    start.elapsed()
}

/// Runs the memory stage for `peers` peers in a child process and reads its answer.
fn measure_memory_apart(peers: u32) -> Memory {
    let exe = std::env::current_exe().expect("this bench's path");
    let out = std::process::Command::new(exe)
        .env(MEMORY_CHILD, peers.to_string())
        .output()
        .expect("the memory stage runs");
    assert!(out.status.success(), "the memory stage failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(MEMORY_CHILD))
        .expect("the memory stage's answer");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let rss = |f: &str| f.parse::<f64>().ok().filter(|v| v.is_finite());
    Memory {
        peers: fields[0].parse().expect("peers"),
        window_bytes_fresh: fields[1].parse().expect("window bytes"),
        window_bytes: fields[2].parse().expect("window bytes"),
        rss_fresh_per_peer: rss(fields[3]),
        rss_warm_per_peer: rss(fields[4]),
    }
}

fn ready(c: &mut Criterion) {
    let mut group = Group::new(c, "ready");
    let one = vec![0; MANY as usize];
    let two: Vec<u32> = (0..MANY).map(|i| i % 2).collect();
    let many: Vec<u32> = (0..MANY).collect();
    for (id, keys) in [
        ("layer/1_peer", one),
        ("layer/2_peers_alternating", two),
        ("layer/10000_peers", many.clone()),
    ] {
        let rt = current_thread();
        let mut svc = with_layer(ready_inner());
        group.bench(id, move |iters| rt.block_on(drive(&mut svc, &keys, iters)));
    }
    let rt = current_thread();
    let layer = adaptive_layer();
    let mut svcs: Vec<_> = (0..MANY).map(|_| layer.layer(ready_inner())).collect();
    group.bench("layer/10000_services", move |iters| {
        rt.block_on(drive_services(&mut svcs, iters))
    });
    let rt = current_thread();
    let mut svc = with_tower_timeout(ready_inner());
    group.bench("tower_timeout/10000_keys", move |iters| {
        rt.block_on(drive(&mut svc, &many, iters))
    });
    let rt = current_thread();
    let mut svcs: Vec<_> = (0..MANY)
        .map(|_| with_tower_timeout(ready_inner()))
        .collect();
    group.bench("tower_timeout/10000_services", move |iters| {
        rt.block_on(drive_services(&mut svcs, iters))
    });
    group.finish();
}

criterion_group!(benches, ready);

fn print_memory(m: &Memory) {
    let kib = |b: f64| format!("{:.1} KiB", b / 1024.0);
    println!("\n== scale: memory, {} peers ==", m.peers);
    for (label, bytes) in [
        ("window_bytes per peer, one call each", m.window_bytes_fresh),
        ("window_bytes per peer, windows warm", m.window_bytes),
    ] {
        println!("{label:<56} {:>10}", kib(bytes as f64));
    }
    for (label, value) in [
        ("RSS growth per peer, one call each", m.rss_fresh_per_peer),
        ("RSS growth per peer, windows warm", m.rss_warm_per_peer),
    ] {
        println!("{label:<56} {:>10}", value.map_or("n/a".to_owned(), kib));
    }
}

fn main() {
    if let Some(peers) = std::env::var_os(MEMORY_CHILD) {
        let peers = peers.to_str().and_then(|p| p.parse().ok()).expect("peers");
        let m = measure_memory(peers);
        let show = |v: Option<f64>| v.map_or("none".to_owned(), |v| v.to_string());
        println!(
            "{MEMORY_CHILD} {} {} {} {} {}",
            m.peers,
            m.window_bytes_fresh,
            m.window_bytes,
            show(m.rss_fresh_per_peer),
            show(m.rss_warm_per_peer)
        );
        return;
    }
    let memory = measure_memory_apart(if test_mode() { 100 } else { MANY });
    benches();
    common::criterion_summary();
    common::print_medians("scale");
    print_memory(&memory);
    common::print_ratios(
        "scale",
        &[
            Ratio::plain(
                "cached: 10,000 services / 1 peer",
                "ready/layer/10000_services",
                "ready/layer/1_peer",
                Some(1.3),
            ),
            Ratio::plain(
                "uncached: 10,000 peers / 2 peers alternating",
                "ready/layer/10000_peers",
                "ready/layer/2_peers_alternating",
                Some(1.3),
            ),
            Ratio::plain(
                "cross: 10,000 peers (uncached) / 1 peer (cached)",
                "ready/layer/10000_peers",
                "ready/layer/1_peer",
                None,
            ),
            Ratio::plain(
                "10,000 peers: layer / tower_timeout (one service)",
                "ready/layer/10000_peers",
                "ready/tower_timeout/10000_keys",
                None,
            ),
            Ratio::plain(
                "10,000 services: layer / tower_timeout",
                "ready/layer/10000_services",
                "ready/tower_timeout/10000_services",
                None,
            ),
        ],
    );
}
