//! The response future, one poll at a time: the inner future is polled first, so an answer
//! that is ready wins over an interrupt already fired or a deadline already past; a pending
//! call ends at the poll after an interrupt wakes it, and at the second poll after its
//! deadline does (it yields once first, so that an answer that came meanwhile, still in its
//! connection, wins); every call records
//! exactly one outcome, and a dropped call leaves nothing in flight. The ready path and a
//! refusal need no timer: they run with no tokio runtime at all, where making one panics.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::support::interrupted;
use tokio::sync::oneshot;
use tokio_test::task::{self, Spawn};
use tokio_test::{assert_pending, assert_ready};
use tower::service_fn;
use tower::util::ServiceFn;
use tower::{Layer, Service};
use tower_adaptive_timeout::{
    AdaptiveTimeout, AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, BoxError, Deadline,
    InterruptHandle, Reason, ResponseFuture, TimeoutPolicy,
};

const PEER: &str = "db-7";
const DEADLINE: Duration = Duration::from_millis(100);

/// A call whose answer comes when the test sends it.
struct Req {
    answer: oneshot::Receiver<()>,
}

type Inner = ServiceFn<fn(Req) -> oneshot::Receiver<()>>;
type Svc = AdaptiveTimeout<Inner, &'static str, fn(&Req) -> &'static str>;
/// A started call, and the sender of its answer.
type Started = (
    Spawn<ResponseFuture<oneshot::Receiver<()>>>,
    oneshot::Sender<()>,
);

/// A layer over one peer with a 100ms cold-start deadline, and its handles.
struct Rig {
    svc: Svc,
    handle: AdaptiveTimeoutHandle<&'static str>,
    interrupts: InterruptHandle<&'static str>,
}

fn rig() -> Rig {
    let key: fn(&Req) -> &'static str = |_| PEER;
    let layer = AdaptiveTimeoutLayer::builder(key)
        .policy(TimeoutPolicy::default().cold_start(DEADLINE))
        .build()
        .unwrap();
    let answer: fn(Req) -> oneshot::Receiver<()> = |req| req.answer;
    Rig {
        handle: layer.handle(),
        interrupts: layer.interrupt_handle(),
        svc: layer.layer(service_fn(answer)),
    }
}

impl Rig {
    /// Starts a call, not yet polled, and the sender of its answer.
    fn start(&mut self) -> Started {
        let (tx, answer) = oneshot::channel();
        (task::spawn(self.svc.call(Req { answer })), tx)
    }

    /// Starts a call and polls it once, which finds it pending.
    fn pending(&mut self) -> Started {
        let (mut call, tx) = self.start();
        assert_pending!(call.poll());
        (call, tx)
    }
}

/// The peer's outcome counts: answered, ran out their deadline, interrupted by hand, and
/// in flight.
fn counts(rig: &Rig) -> [u64; 4] {
    let s = rig.handle.peer(&PEER).expect("the peer is tracked");
    let in_flight = s.in_flight as u64;
    [
        s.completed,
        s.deadline_exceeded,
        s.manual_interrupts,
        in_flight,
    ]
}

/// What cuts a pending call short.
enum Cut {
    Interrupt,
    Deadline,
}

/// Starts a call and lets it go pending; `cut` wakes it, and its answer arrives before the
/// next poll, which the answer wins.
async fn answer_wins_over(cut: Cut) {
    let mut rig = rig();
    let (mut call, tx) = rig.pending();
    match cut {
        Cut::Interrupt => assert!(rig.interrupts.interrupt_peer(&PEER, "drained")),
        Cut::Deadline => tokio::time::advance(DEADLINE * 2).await,
    }
    assert!(call.is_woken());
    tx.send(()).unwrap();
    assert!(assert_ready!(call.poll()).is_ok());
    assert_eq!(counts(&rig), [1, 0, 0, 0], "answered, not cut short");
}

#[tokio::test(start_paused = true)]
async fn a_ready_answer_wins_over_a_fired_interrupt() {
    answer_wins_over(Cut::Interrupt).await;
}

#[tokio::test(start_paused = true)]
async fn a_ready_answer_wins_over_a_past_deadline() {
    answer_wins_over(Cut::Deadline).await;
}

#[tokio::test(start_paused = true)]
async fn pending_until_an_interrupt_then_ready_with_it() {
    let mut rig = rig();
    let (mut call, _tx) = rig.pending();
    assert!(!call.is_woken());
    assert_pending!(call.poll(), "nothing fired: still pending");
    assert_eq!(counts(&rig), [0, 0, 0, 1]);
    rig.interrupts.interrupt_peer(&PEER, "drained");
    assert!(call.is_woken(), "the interrupt woke the call");
    let err = interrupted(assert_ready!(call.poll()));
    assert_eq!(err.reason(), &Reason::Manual("drained".into()));
    assert_eq!(counts(&rig), [0, 0, 1, 0]);
}

#[tokio::test(start_paused = true)]
async fn pending_until_the_deadline_then_ready_with_it() {
    let mut rig = rig();
    let (mut call, _tx) = rig.pending();
    tokio::time::advance(DEADLINE - Duration::from_millis(1)).await;
    assert!(!call.is_woken());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(call.is_woken(), "the deadline woke the call");
    assert_pending!(call.poll(), "it yields once before the deadline counts");
    tokio::task::yield_now().await;
    assert!(call.is_woken(), "and is woken again by the runtime");
    let err = interrupted(assert_ready!(call.poll()));
    assert_eq!(err.deadline(), Some(DEADLINE));
    assert_eq!(counts(&rig), [0, 1, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn each_call_records_exactly_one_outcome() {
    let mut rig = rig();
    let (mut answered, tx) = rig.pending();
    let (mut expired, _tx) = rig.pending();
    tx.send(()).unwrap();
    assert!(assert_ready!(answered.poll()).is_ok());
    tokio::time::advance(DEADLINE).await;
    assert_pending!(expired.poll(), "it yields once before the deadline counts");
    tokio::task::yield_now().await;
    interrupted(assert_ready!(expired.poll()));
    // Polled again, an ended call says so and records nothing more.
    for call in [&mut answered, &mut expired] {
        let again = assert_ready!(call.poll()).unwrap_err();
        assert_eq!(again.to_string(), "polled after completion");
    }
    rig.interrupts.interrupt_all("after the end");
    drop((answered, expired));
    assert_eq!(counts(&rig), [1, 1, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_leaves_nothing_in_flight() {
    let mut rig = rig();
    let (call, _tx) = rig.pending();
    assert_eq!(counts(&rig), [0, 0, 0, 1]);
    drop(call);
    assert_eq!(counts(&rig), [0, 0, 0, 0], "no outcome, nothing in flight");
    let (never_polled, _tx) = rig.start();
    drop(never_polled);
    assert_eq!(counts(&rig), [0, 0, 0, 0]);
}

#[test]
fn the_ready_path_needs_no_timer() {
    // No tokio runtime here: arming the deadline timer would panic.
    let mut rig = rig();
    let (mut call, tx) = rig.start();
    tx.send(()).unwrap();
    assert!(matches!(call.poll(), Poll::Ready(Ok(()))));
    assert_eq!(call.waker_ref_count(), 1, "nothing kept the task's waker");
    assert_eq!(counts(&rig), [1, 0, 0, 0]);
}

#[test]
fn a_refused_call_needs_no_timer_and_never_reaches_the_inner_service() {
    // No tokio runtime here either. A spent caller's deadline is refused at admission.
    let layer = AdaptiveTimeoutLayer::http().build().unwrap();
    let handle = layer.handle();
    let reached = Arc::new(AtomicUsize::new(0));
    let seen = reached.clone();
    let mut svc = layer.layer(service_fn(move |_: http::Request<()>| {
        seen.fetch_add(1, Relaxed);
        std::future::ready(Ok::<_, Infallible>(()))
    }));
    let mut req = http::Request::get("http://10.0.0.7:9000/")
        .body(())
        .unwrap();
    req.extensions_mut().insert(Deadline(Duration::ZERO));
    let mut call = task::spawn(svc.call(req));
    let result: Result<(), BoxError> = assert_ready!(call.poll());
    let err = interrupted(result);
    assert_eq!(err.reason(), &Reason::BudgetSpent);
    let again: Result<(), BoxError> = assert_ready!(call.poll());
    assert_eq!(again.unwrap_err().to_string(), "polled after completion");
    assert_eq!(reached.load(Relaxed), 0);
    let peer = &handle.snapshot()[0];
    assert_eq!((peer.in_flight, peer.completed), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn the_future_shows_what_it_waits_on() {
    let mut rig = rig();
    let (tx, answer) = oneshot::channel::<()>();
    let shown = format!("{:?}", rig.svc.call(Req { answer }));
    assert!(
        shown.starts_with("ResponseFuture { inner: Receiver"),
        "{shown}"
    );
    assert!(shown.contains("finish: Head"), "{shown}");
    drop(tx);
}
