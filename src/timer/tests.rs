//! The deadline queues on the paused clock: precision, early registrations, leaving, and
//! runtimes coming and going on one thread.

use std::future::poll_fn;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use super::*;

/// Waits on a queued deadline at `at`; returns when it ended.
async fn wait(at: Instant) -> Instant {
    let mut deadline = CallTimer::Unarmed;
    poll_fn(|cx| {
        let polled = deadline.poll_at(at, cx);
        assert!(matches!(deadline, CallTimer::Queued(_)), "not in a queue");
        polled
    })
    .await;
    Instant::now()
}

/// The calls in the current thread's queue.
fn live() -> usize {
    QUEUE.with(|q| q.borrow().as_ref().map_or(0, |q| q.live()))
}

/// Asserts a call with deadline `at`, started at `start`, ended at `end`: not before its
/// deadline, and within 1 ms + 1% after it.
fn assert_on_time(start: Instant, at: Instant, end: Instant) {
    let slack = Duration::from_millis(1) + (at - start) / 100;
    assert!(end >= at, "ended {:?} early", at - end);
    assert!(end <= at + slack, "ended {:?} late", end - at);
}

/// A single-threaded runtime on the paused clock.
fn paused() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// Runs calls with `n` deadlines spread over about a second, registered out of order and
/// with sub-millisecond parts; asserts each ends on time.
async fn many_on_time(n: u64) {
    let start = Instant::now();
    let mut calls = JoinSet::new();
    for i in 0..n {
        // A permutation of 0..n (7919 is prime), each step 0.37 ms apart.
        let at =
            start + Duration::from_millis(5) + Duration::from_micros(370) * (i * 7919 % n) as u32;
        calls.spawn(async move { (at, wait(at).await) });
    }
    while let Some(ended) = calls.join_next().await {
        let (at, end) = ended.expect("call");
        assert_on_time(start, at, end);
    }
    assert_eq!(live(), 0);
}

#[tokio::test(start_paused = true)]
async fn every_call_ends_within_a_millisecond_and_a_percent_of_its_deadline() {
    many_on_time(2_000).await;
}

#[tokio::test(start_paused = true)]
async fn a_call_registered_earlier_than_the_armed_instant_ends_on_time() {
    let start = Instant::now();
    let late = tokio::spawn(wait(start + Duration::from_secs(10)));
    tokio::task::yield_now().await; // The driver is armed for 10s.
    tokio::time::advance(Duration::from_millis(3)).await;
    let early = Instant::now() + Duration::from_micros(4_500);
    assert_on_time(Instant::now(), early, wait(early).await);
    assert_on_time(
        start,
        start + Duration::from_secs(10),
        late.await.expect("call"),
    );
}

#[tokio::test(start_paused = true)]
async fn advancing_the_clock_past_a_deadline_wakes_the_call_before_it_returns() {
    let at = Instant::now() + Duration::from_millis(10);
    let mut call = tokio_test::task::spawn(wait(at));
    assert!(call.poll().is_pending());
    tokio::time::advance(Duration::from_millis(9)).await;
    assert!(!call.is_woken());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(call.is_woken(), "the deadline woke the call");
    assert_eq!(call.poll(), Poll::Ready(at));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_leaves_no_entry_behind() {
    let start = Instant::now();
    let mut calls = JoinSet::new();
    for i in 0..100u64 {
        calls.spawn(wait(start + Duration::from_millis(50 + i)));
    }
    for _ in 0..10 {
        tokio::task::yield_now().await; // Every call polled once, and waiting.
    }
    assert_eq!(live(), 100);
    calls.abort_all();
    while calls.join_next().await.is_some() {}
    assert_eq!(live(), 0);
    // The queue still serves the calls that come after.
    let at = Instant::now() + Duration::from_millis(20);
    assert_on_time(Instant::now(), at, wait(at).await);
}

/// The runtime the current thread's queue belongs to.
fn queue_runtime() -> Option<Id> {
    QUEUE.with(|q| q.borrow().as_ref().map(|q| q.runtime))
}

#[test]
fn a_runtime_used_after_another_one_was_dropped_gets_its_own_queue() {
    let mut runtimes = Vec::new();
    for _ in 0..2 {
        let rt = paused();
        rt.block_on(many_on_time(200));
        runtimes.push(queue_runtime());
        drop(rt); // With the queue's timer armed for a call that is gone.
    }
    assert_ne!(runtimes[0], runtimes[1]);
}

#[test]
fn runtimes_used_in_turn_each_serve_their_own_calls() {
    let (one, two) = (paused(), paused());
    for _ in 0..3 {
        // Each runtime's calls end on time while the other one is not running.
        one.block_on(many_on_time(50));
        let left = QUEUE.with(|q| q.borrow().as_ref().map(Arc::downgrade));
        two.block_on(many_on_time(50));
        // The queue left behind went away with its last call, and no task is left.
        assert!(left.is_some_and(|q| q.upgrade().is_none()));
        assert_eq!(one.metrics().num_alive_tasks(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_held_unpolled_keeps_no_other_call_past_its_deadline() {
    let ms = Duration::from_millis;
    let start = Instant::now();
    let first = tokio::spawn(wait(start + ms(5)));
    tokio::task::yield_now().await;
    // Registered by a poll, then held and never polled again (its waker does nothing):
    // after the first deadline fires, it is the earliest left in the queue.
    let mut held = CallTimer::Unarmed;
    let mut cx = Context::from_waker(Waker::noop());
    assert!(held.poll_at(start + ms(10), &mut cx).is_pending());
    let last = start + ms(20);
    let ended = tokio::time::timeout(ms(1_000), wait(last)).await;
    assert_on_time(
        start,
        last,
        ended.expect("the last call ended by its deadline"),
    );
    assert_on_time(start, start + ms(5), first.await.expect("call"));
    drop(held);
    assert_eq!(live(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_fire_wakes_the_queued_calls_that_watch_it_and_no_other() {
    let at = Instant::now() + Duration::from_secs(10);
    let watching = |watch: Watch| {
        let mut deadline = CallTimer::Unarmed;
        tokio_test::task::spawn(poll_fn(move |cx| deadline.poll_watching(at, watch, cx)))
    };
    let (mut one, mut other, mut none) = (watching(1), watching(2), watching(NO_WATCH));
    for call in [&mut one, &mut other, &mut none] {
        assert!(call.poll().is_pending());
    }
    // From another thread, as a peer's fire may be: every queue is looked through.
    std::thread::spawn(|| wake_watching(|w| w == 1))
        .join()
        .expect("fire");
    assert!(one.is_woken(), "the call watching the fire is woken");
    assert!(!other.is_woken() && !none.is_woken());
    wake_watching(|_| true);
    assert!(other.is_woken(), "a fire into every watch wakes it");
    assert!(
        !none.is_woken(),
        "a deadline that watches nothing is woken by none"
    );
    // Woken, a call is still queued for its deadline.
    assert!(one.poll().is_pending());
    assert_eq!(live(), 3);
}
