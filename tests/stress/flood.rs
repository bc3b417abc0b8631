//! A million distinct peer keys (hostile input) through a table of 10,000 peers: the table
//! stays at `max_peers`, idle peers are evicted to make room (no call goes untracked), and
//! resident memory stays under a bound derived from `max_peers`. Alone in its own test
//! binary, so no other test's allocations count in the process's RSS.

use crate::support;

use std::time::Instant as WallClock;

use tower::{Service, ServiceExt};

use support::echo_keys;

/// Every call is to a new peer; every call after the first 10,000 inserts one peer and
/// evicts another (about 25 s in a debug build on two cores).
const KEYS: u64 = 1_000_000;
const MAX_PEERS: usize = 10_000;

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<usize>().ok())
        .expect("a VmRSS line in kB");
    kb * 1024
}

#[tokio::test(start_paused = true)]
async fn a_million_keys_keep_the_table_and_memory_bounded() {
    let (mut svc, handle) = echo_keys(MAX_PEERS);

    svc.ready().await.unwrap().call(0).await.unwrap();
    let per_peer = handle.peer(&0).expect("tracked").window_bytes;
    assert!(per_peer > 0);
    let before = rss();
    let started = WallClock::now();
    for key in 1..KEYS {
        assert_eq!(svc.ready().await.unwrap().call(key).await.unwrap(), key);
        if key % 65_536 == 0 {
            assert!(handle.peer_count() <= MAX_PEERS, "{}", handle.peer_count());
        }
    }
    let elapsed = started.elapsed();
    let grown = rss().saturating_sub(before);
    // Each peer: its window, plus the peer itself (measured ~3.4 KiB: its locked state,
    // the ring of recent explanations, the class slots, the gap window's shell), its label
    // and its map slot; and room for the allocator's own bookkeeping.
    let bound = MAX_PEERS * (per_peer + 5120) + (64 << 20);
    eprintln!(
        "{KEYS} keys in {elapsed:?} ({:.0} keys/s); {per_peer} window bytes per peer; \
         RSS grew {} KiB (bound {} KiB)",
        KEYS as f64 / elapsed.as_secs_f64(),
        grown >> 10,
        bound >> 10,
    );
    assert_eq!(handle.peer_count(), MAX_PEERS);
    assert_eq!(handle.snapshot().len(), MAX_PEERS);
    assert!(grown < bound, "RSS grew {grown} bytes, bound {bound}");
    assert_eq!(
        handle.untracked_calls(),
        0,
        "idle peers made room for every key"
    );
}
