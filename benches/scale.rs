//! How the layer scales with the number of peers, in time and memory.
//!
//! * Time (`ready` group, current-thread runtime, ready inner future): one peer vs 10,000
//!   peers called round-robin. Keys are precomputed `u32`s, so building keys is not
//!   measured; the one-peer case walks an equally long array of one key. Target: 10,000
//!   peers within 1.3x of one peer. `tower::timeout::Timeout` over 10,000 keys is shown as
//!   the peer-blind reference.
//! * Memory, before the timings: a fresh layer on a paused-clock runtime gets one call per
//!   peer for 10,000 peers, then `WARM_CALLS` more per peer with latencies spread over
//!   100 us..800 ms (the clock advancing, so every sub-window turns over, as on a busy
//!   peer). Printed: the heap bytes of one peer's window (`PeerSnapshot::window_bytes`) and
//!   the growth of the process's resident set (`VmRSS`) per peer after each stage.
//!
//! In test mode (`cargo test`) the memory stage uses 100 peers and the timings run once.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use tower::{service_fn, Layer};

use common::{
    adaptive_layer, current_thread, drive, ready_inner, rss_bytes, test_mode, with_layer,
    with_tower_timeout, Group, Ratio, Req,
};

/// Peers in the many-peer case.
const MANY: u32 = 10_000;
/// Calls per peer after the first in the memory stage.
const WARM_CALLS: u64 = 60;
/// Latencies the memory stage's inner service takes, in microseconds, cycled through.
const LATENCIES_US: [u64; 8] = [100, 450, 1_300, 4_700, 16_000, 55_000, 210_000, 800_000];

/// What the memory stage found.
struct Memory {
    peers: u32,
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
    let mut svc = layer.layer(service_fn(|r: Req| async move {
        let n = CALLS.fetch_add(1, Relaxed) as usize;
        tokio::time::sleep(Duration::from_micros(LATENCIES_US[n % LATENCIES_US.len()])).await;
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
    rt.block_on(drive(&mut svc, &keys, u64::from(peers) * WARM_CALLS));
    let rss2 = rss_bytes();
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.len(), peers as usize, "every peer is tracked");
    Memory {
        peers,
        window_bytes: snapshot[0].window_bytes,
        rss_fresh_per_peer: per_peer(rss0, rss1),
        rss_warm_per_peer: per_peer(rss0, rss2),
    }
}

fn ready(c: &mut Criterion) {
    let mut group = Group::new(c, "ready");
    let one = vec![0; MANY as usize];
    let many: Vec<u32> = (0..MANY).collect();
    let rt = current_thread();
    for (id, keys) in [("layer/1_peer", one), ("layer/10000_peers", many.clone())] {
        let rt = current_thread();
        let mut svc = with_layer(ready_inner());
        group.bench(id, move |iters| rt.block_on(drive(&mut svc, &keys, iters)));
    }
    let mut svc = with_tower_timeout(ready_inner());
    group.bench("tower_timeout/10000_keys", move |iters| {
        rt.block_on(drive(&mut svc, &many, iters))
    });
    group.finish();
}

criterion_group!(benches, ready);

fn print_memory(m: &Memory) {
    let kib = |b: f64| format!("{:.1} KiB", b / 1024.0);
    println!("\n== scale: memory, {} peers ==", m.peers);
    println!(
        "{:<56} {:>10}",
        "window heap bytes per peer (PeerSnapshot::window_bytes)",
        kib(m.window_bytes as f64)
    );
    for (label, value) in [
        ("RSS growth per peer, one call each", m.rss_fresh_per_peer),
        ("RSS growth per peer, windows warm", m.rss_warm_per_peer),
    ] {
        println!("{label:<56} {:>10}", value.map_or("n/a".to_owned(), kib));
    }
}

fn main() {
    let memory = measure_memory(if test_mode() { 100 } else { MANY });
    benches();
    common::criterion_summary();
    common::print_medians("scale");
    print_memory(&memory);
    common::print_ratios(
        "scale",
        &[
            Ratio::plain(
                "layer: 10,000 peers / 1 peer",
                "ready/layer/10000_peers",
                "ready/layer/1_peer",
                Some(1.3),
            ),
            Ratio::plain(
                "10,000 peers: layer / tower_timeout",
                "ready/layer/10000_peers",
                "ready/tower_timeout/10000_keys",
                None,
            ),
        ],
    );
}
