//! The floor of a tracked call's cost: each piece of work a call to a tracked peer cannot
//! avoid, timed on its own, next to `tower::timeout::Timeout`'s per-call overhead in the
//! same run, so the pieces can be added up and held against the target "the layer's
//! overhead is no more than tower's".
//!
//! Group `runtime` (a current-thread runtime, as `overhead.rs` uses):
//! * `bare` and `tower_timeout`: calls through an inner future that pends once, bare and
//!   under `tower::timeout::Timeout` (one tokio `Sleep` registered and cancelled per call).
//!   Their difference is tower's per-call overhead.
//! * `clock_read`: `tokio::time::Instant::now()` inside the runtime. A call reads the clock
//!   at its start and at its end.
//! * `bare_timer_armed`: `bare` on a runtime where another task holds a `Sleep` due in an
//!   hour: what an armed timer costs the driver's park per call (any deadline that is armed
//!   while the inner future pends pays it, `tower::timeout`'s included).
//! * `runtime_check`: `Handle::try_current()` and its id: how a call finds which runtime's
//!   deadline queue to join.
//!
//! Group `pieces` (pure CPU, interleaved so load from other processes falls on all alike):
//! * `empty`: the timing loop alone, the share of loop in every figure of this group.
//! * `hdr_record_x2`: `saturating_record` of a latency in 10..100,000 µs into two
//!   `Histogram<u32>` of bounds 1..60,000,000 and 2 significant figures, as a call records
//!   into its window's current sub-window and its sum; `hdr_record_x1` into one. Both
//!   include drawing the latency from a seeded generator (a few multiplies).
//! * `ring_push`: one `(u32, u32)` written into a preallocated ring of 100 slots.
//! * `in_flight_count`: an `AtomicUsize` `fetch_add` then `fetch_sub` (`Relaxed`).
//! * `waker_slab`: a cloned waker inserted into a `Slab<Waker>` holding a few, then removed:
//!   the interrupt registration of a call that waits. The waker is `Arc`-backed, so its
//!   clone and drop are a reference count's increment and decrement, as a task's are.
//! * `deadline_heap`: the per-thread deadline queue's work for a call that waits: a slot in
//!   a slab and a `(deadline, slot)` pushed on a min-`BinaryHeap`, then the slot freed and
//!   stale items popped off the top (lazy removal). 64 calls stay live so the heap has
//!   depth; deadlines grow with arrival and calls end in arrival order.
//! * `mutex_uncontended`: a `std::sync::Mutex<u64>` locked, incremented, unlocked.
//! * `arc_clone_drop`: an `Arc<u64>` cloned and dropped (a call's reference to its peer).
//! * `waker_clone_drop`: a waker cloned and dropped (the one its deadline keeps).
//!
//! Every case is timed as ns per operation with `iter_custom` over batches, by the same
//! loop. Ends with a table: each piece's median, tower's overhead (`tower_timeout - bare`)
//! and the floor of a tracked call's own work (2 x `clock_read` + `hdr_record_x2` +
//! `ring_push` + `in_flight_count` + `waker_slab` + `deadline_heap` + `mutex_uncontended`),
//! with its ratio to tower's overhead; then the floor of a call that waits: that, plus what
//! such a call also cannot avoid (`arc_clone_drop`, `waker_clone_drop`, `runtime_check`,
//! and the armed timer, `bare_timer_armed - bare`), which `tower::timeout`'s figure
//! contains for its own `Sleep` too.

pub mod common;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use hdrhistogram::Histogram;
use loopback::Rng;
use slab::Slab;

use common::{
    current_thread, drive, median, pending_once_inner, test_mode, with_tower_timeout, Group,
};

/// Measurement time per case: short, the operations are nanoseconds each.
const MEASUREMENT: Duration = Duration::from_secs(2);
/// Warm-up time per case.
const WARM_UP: Duration = Duration::from_millis(500);
/// Slots of the ring a call's sample is written into.
const RING: usize = 100;
/// Wakers already registered in the slab of `waker_slab`.
const WAKERS_LIVE: usize = 4;
/// Calls live in the deadline queue of `deadline_heap`.
const DEADLINES_LIVE: usize = 64;

/// The pieces summed into the floor of a tracked call's own work, with how many times a
/// call does each.
const FLOOR: [(&str, f64); 7] = [
    ("runtime/clock_read", 2.0),
    ("pieces/hdr_record_x2", 1.0),
    ("pieces/ring_push", 1.0),
    ("pieces/in_flight_count", 1.0),
    ("pieces/waker_slab", 1.0),
    ("pieces/deadline_heap", 1.0),
    ("pieces/mutex_uncontended", 1.0),
];

/// Pieces shown but not in the floor.
const EXTRA: [&str; 2] = ["pieces/empty", "pieces/hdr_record_x1"];

/// What a call that waits adds to [`FLOOR`], each once (and the armed timer, measured as
/// `bare_timer_armed - bare`).
const WAITING: [&str; 3] = [
    "pieces/arc_clone_drop",
    "pieces/waker_clone_drop",
    "runtime/runtime_check",
];

/// Runs `op` for `0..iters`; returns the time it took. Every case goes through this loop.
#[inline(always)]
fn timed(iters: u64, mut op: impl FnMut(u64)) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        op(i);
    }
    start.elapsed()
}

/// A histogram of a peer's window: microseconds, 1 µs to 60 s, 2 significant figures.
fn window_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
}

/// A waker whose clone and drop touch a reference count, as a task's waker does.
struct CountedWaker;

impl Wake for CountedWaker {
    fn wake(self: Arc<Self>) {}
}

/// The per-thread deadline queue's data: call slots (each holding its deadline, which is
/// unique, so an item whose slot holds another deadline is stale) and the min-heap.
struct DeadlineQueue {
    slots: Slab<u64>,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    /// The live calls' slots, oldest at `next`.
    live: [usize; DEADLINES_LIVE],
    next: usize,
    /// The next deadline: one tick after the previous call's.
    tick: u64,
}

impl DeadlineQueue {
    /// A queue with `DEADLINES_LIVE` calls in it.
    fn new() -> Self {
        let mut queue = DeadlineQueue {
            slots: Slab::with_capacity(DEADLINES_LIVE + 1),
            heap: BinaryHeap::with_capacity(2 * DEADLINES_LIVE),
            live: [0; DEADLINES_LIVE],
            next: 0,
            tick: 0,
        };
        for i in 0..DEADLINES_LIVE {
            queue.live[i] = queue.push();
        }
        queue
    }

    /// A call joins: a slot, and its deadline on the heap.
    fn push(&mut self) -> usize {
        self.tick += 1;
        let key = self.slots.insert(self.tick);
        self.heap.push(Reverse((self.tick, key as u32)));
        key
    }

    /// One call joins and the oldest leaves: its slot is freed, and stale items on top of
    /// the heap are popped.
    fn turn(&mut self) {
        let oldest = self.live[self.next];
        self.slots.remove(oldest);
        while let Some(Reverse((at, key))) = self.heap.peek() {
            if self.slots.get(*key as usize) == Some(at) {
                break;
            }
            self.heap.pop();
        }
        self.live[self.next] = self.push();
        self.next = (self.next + 1) % DEADLINES_LIVE;
    }
}

/// Calls through `svc` on a current-thread runtime of its own, one peer.
fn bench_calls<S>(group: &mut Group<'_>, id: &str, mut svc: S)
where
    S: tower::Service<common::Req> + 'static,
{
    let rt = current_thread();
    group.bench(id, move |iters| rt.block_on(drive(&mut svc, &[0], iters)));
}

fn runtime(c: &mut Criterion) {
    let mut group = Group::timed(c, "runtime", MEASUREMENT, WARM_UP);
    bench_calls(&mut group, "bare", pending_once_inner());
    bench_calls(
        &mut group,
        "tower_timeout",
        with_tower_timeout(pending_once_inner()),
    );
    let armed = current_thread();
    armed.spawn(async { tokio::time::sleep(Duration::from_secs(3_600)).await });
    let mut svc = pending_once_inner();
    group.bench("bare_timer_armed", move |iters| {
        armed.block_on(drive(&mut svc, &[0], iters))
    });
    let rt = current_thread();
    group.bench("runtime_check", move |iters| {
        rt.block_on(async {
            timed(iters, |_| {
                black_box(tokio::runtime::Handle::try_current().map(|h| h.id()).ok());
            })
        })
    });
    let rt = current_thread();
    group.bench("clock_read", move |iters| {
        rt.block_on(async {
            timed(iters, |_| {
                black_box(tokio::time::Instant::now());
            })
        })
    });
    group.finish();
}

/// `hdr_record_x{n}`: a latency recorded into `n` window histograms per operation.
fn bench_hdr<const N: usize>(group: &mut Group<'_>) {
    let mut histograms: [Histogram<u32>; N] = std::array::from_fn(|_| window_histogram());
    let mut rng = Rng::new(7, N as u64);
    group.bench(&format!("hdr_record_x{N}"), move |iters| {
        timed(iters, |_| {
            let micros = 10 + rng.below(99_990);
            for h in black_box(&mut histograms).iter_mut() {
                h.saturating_record(micros);
            }
        })
    });
}

fn pieces(c: &mut Criterion) {
    let mut group = Group::timed(c, "pieces", MEASUREMENT, WARM_UP);
    group.bench("empty", |iters| {
        timed(iters, |i| {
            black_box(i);
        })
    });
    bench_hdr::<2>(&mut group);
    bench_hdr::<1>(&mut group);

    let mut ring = [(0u32, 0u32); RING];
    let mut at = 0;
    group.bench("ring_push", move |iters| {
        timed(iters, |i| {
            black_box(&mut ring)[at] = (i as u32, (i >> 7) as u32);
            at += 1;
            if at == RING {
                at = 0;
            }
        })
    });

    let in_flight = AtomicUsize::new(0);
    group.bench("in_flight_count", move |iters| {
        timed(iters, |_| {
            let count = black_box(&in_flight);
            count.fetch_add(1, Ordering::Relaxed);
            count.fetch_sub(1, Ordering::Relaxed);
        })
    });

    let waker = Waker::from(Arc::new(CountedWaker));
    let mut wakers: Slab<Waker> = (0..WAKERS_LIVE).map(|i| (i, waker.clone())).collect();
    group.bench("waker_slab", move |iters| {
        timed(iters, |_| {
            let key = black_box(&mut wakers).insert(waker.clone());
            drop(black_box(wakers.remove(key)));
        })
    });

    let mut queue = DeadlineQueue::new();
    group.bench("deadline_heap", move |iters| {
        timed(iters, |_| black_box(&mut queue).turn())
    });

    let mutex = Mutex::new(0u64);
    group.bench("mutex_uncontended", move |iters| {
        timed(iters, |_| {
            *black_box(&mutex)
                .lock()
                .unwrap_or_else(PoisonError::into_inner) += 1;
        })
    });

    let arc = Arc::new(0u64);
    group.bench("arc_clone_drop", move |iters| {
        timed(iters, |_| drop(black_box(Arc::clone(&arc))))
    });

    let waker = Waker::from(Arc::new(CountedWaker));
    group.bench("waker_clone_drop", move |iters| {
        timed(iters, |_| drop(black_box(black_box(&waker).clone())))
    });
    group.finish();
}

criterion_group!(benches, runtime, pieces);

/// Prints each piece's median, tower's overhead, and the floor of a tracked call's own work
/// against it.
fn print_floor() {
    let show = |m: Option<f64>| m.map_or("n/a".to_owned(), |m| format!("{m:.1}"));
    let piece = |key: &str, times: &str, m: Option<f64>| {
        println!("{key:<32} {times:>6} {:>10}", show(m));
    };
    let total = |label: &str, value: String| println!("{label:<39} {value:>10}");
    println!("\n== floor: median ns per operation (interleaved) ==");
    if test_mode() {
        println!("(test mode: one operation per case, figures are not meaningful)");
    }
    println!("{:<32} {:>6} {:>10}", "piece", "times", "ns");
    for (key, times) in FLOOR {
        piece(key, &times.to_string(), median(key));
    }
    for key in WAITING {
        piece(key, "waits", median(key));
    }
    let armed = median("runtime/bare_timer_armed")
        .zip(median("runtime/bare"))
        .map(|(a, b)| a - b);
    piece("armed timer (armed - bare)", "waits", armed);
    for key in EXTRA {
        piece(key, "-", median(key));
    }
    let floor: Option<f64> = FLOOR
        .iter()
        .map(|(key, times)| median(key).map(|m| m * times))
        .sum();
    let tower = median("runtime/tower_timeout")
        .zip(median("runtime/bare"))
        .map(|(t, b)| t - b);
    total("tower::timeout overhead (tower - bare)", show(tower));
    total("floor of a tracked call's own work", show(floor));
    let loops: f64 = FLOOR.iter().map(|(_, times)| times).sum();
    let net = floor
        .zip(median("pieces/empty"))
        .map(|(f, e)| f - loops * e);
    total(
        &format!("floor less the timing loop ({loops} x empty)"),
        show(net),
    );
    let ratio = |f: Option<f64>| {
        f.zip(tower)
            .filter(|(_, t)| *t > 0.0)
            .map_or("n/a".to_owned(), |(f, t)| format!("{:.2}", f / t))
    };
    total("floor / tower overhead", ratio(floor));
    let waiting: Option<f64> = WAITING.iter().map(|key| median(key)).sum();
    let waiting = floor.zip(waiting).zip(armed).map(|((f, w), a)| f + w + a);
    total("floor of a call that waits", show(waiting));
    total("floor of a call that waits / tower", ratio(waiting));
}

fn main() {
    benches();
    common::criterion_summary();
    common::print_medians("floor");
    print_floor();
}
