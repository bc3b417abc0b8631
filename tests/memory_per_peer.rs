//! Heap bytes a tracked peer holds, counted by a global allocator that tracks live bytes:
//! a peer keeps neither its first request's URI (a 60 KB query string) nor more than one
//! bounded label, however long its key's `Debug` form; keying a request allocates nothing.
//!
//! The live bytes are counted for the whole process, so the tests here take turns; the
//! allocations a test makes, on its own thread (the test harness allocates on its own as
//! other tests end).

pub mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicIsize, Ordering::SeqCst};
use std::sync::Mutex;

use http::{Request, Response};
use tower::{service_fn, Layer, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, PeerKey};

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    /// Allocations made on this thread (no destructor, no lazy initialisation: the
    /// allocator may read it on any thread, at any time).
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// Allocations made so far on this thread.
fn allocations() -> usize {
    ALLOCATIONS.try_with(Cell::get).unwrap_or(0)
}

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, SeqCst);
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, SeqCst);
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, SeqCst);
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// One measurement at a time: the count is the whole process's.
static TURN: Mutex<()> = Mutex::new(());

/// Runs `measure` alone, on a paused current-thread runtime of its own.
fn alone<F: Future>(measure: F) -> F::Output {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(measure)
}

const PEERS: usize = 200;

/// Heap bytes held per peer after one answered call to each of `PEERS` peers, keyed by
/// `key` from requests made by `request`, once the requests are gone.
async fn bytes_per_peer<K: PeerKey>(
    key: fn(&Request<()>) -> Option<K>,
    request: impl Fn(usize) -> Request<()>,
) -> usize {
    let layer = AdaptiveTimeoutLayer::http_keyed(key)
        .max_peers(10 * PEERS)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(()))
    }));
    // Warm up whatever is allocated once (the table's shards, the runtime's first use).
    svc.clone().oneshot(request(PEERS)).await.unwrap();
    let before = LIVE.load(SeqCst);
    for i in 0..PEERS {
        svc.clone().oneshot(request(i)).await.unwrap();
    }
    let held = LIVE.load(SeqCst) - before;
    assert_eq!(handle.peer_count(), PEERS + 1);
    usize::try_from(held).unwrap_or(0) / PEERS
}

fn by_uri(req: &Request<()>) -> Option<tower_adaptive_timeout::HttpPeer> {
    tower_adaptive_timeout::HasPeer::peer(req)
}

#[test]
fn a_peer_does_not_keep_its_first_requests_uri() {
    let query = "q".repeat(60_000);
    let short = alone(bytes_per_peer(by_uri, |i| {
        support::requests::get(&format!("http://h{i}:80/"))
    }));
    let long = alone(bytes_per_peer(by_uri, |i| {
        support::requests::get(&format!("http://h{i}:80/search?{query}"))
    }));
    eprintln!("bytes held per peer: {short} (short URI), {long} (60 KB query string)");
    assert!(long < short + 512, "{long} bytes per peer vs {short}");
}

#[test]
fn a_peer_keeps_one_bounded_label() {
    let tiny = alone(bytes_per_peer(
        |r| Some(r.uri().path().to_owned()),
        |i| support::requests::get(&format!("http://h:80/{i}")),
    ));
    // 64 KiB of control bytes per key: each escapes to 6 bytes in its `Debug` form.
    let huge = alone(bytes_per_peer(
        |r| Some(format!("{}{}", "\u{1}".repeat(64 << 10), r.uri().path())),
        |i| support::requests::get(&format!("http://h:80/{i}")),
    ));
    let key = (64 << 10) + 8;
    eprintln!("bytes held per peer: {tiny} (short key), {huge} (64 KiB key)");
    // The key itself, and a label no longer than a short key's by more than its bound.
    assert!(
        huge < tiny + key + 2 * tower_adaptive_timeout::MAX_LABEL_BYTES,
        "{huge} bytes per peer vs {tiny} + a {key} byte key"
    );
}

#[test]
fn keying_a_request_allocates_nothing() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let req = support::requests::get("http://admin:hunter2@h:80/search?q=1");
    let before = allocations();
    let peer = by_uri(&req);
    let allocations = allocations() - before;
    assert_eq!(peer.unwrap().authority(), "h:80");
    assert_eq!(allocations, 0, "the key shares the request's URI");
}
