//! A waker is the caller's code: cloning, waking or dropping it may fire an interrupt (into
//! the same layer or another one). The layer must never clone, wake or drop one under a lock
//! that a fire takes, or that fire waits on itself. Each test runs on a thread of its own and
//! fails, rather than hangs, if it does not finish within 10 s.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Wake, Waker};
use std::time::Duration;

use tower::util::BoxCloneService;
use tower::{service_fn, BoxError, Layer, Service};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, InterruptHandle, Interrupted, Reason};

/// `(peer, answers)`: a call to `peer` that its inner service never answers unless `answers`.
type Req = (u32, bool);
type Svc = BoxCloneService<Req, (), BoxError>;
type Call = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

fn layer() -> (Svc, InterruptHandle<u32>) {
    let layer = AdaptiveTimeoutLayer::builder(|r: &Req| r.0)
        .build()
        .unwrap();
    let interrupts = layer.interrupt_handle();
    let inner = service_fn(|(_, answers): Req| async move {
        if !answers {
            std::future::pending::<()>().await;
        }
        Ok::<_, BoxError>(())
    });
    (BoxCloneService::new(layer.layer(inner)), interrupts)
}

/// Runs `test` on a current-thread runtime of a thread of its own; panics if it is not done
/// within 10 s (a deadlock) or panicked.
fn within_10s(test: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async { test() });
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(10)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("deadlocked"),
        Err(_) => panic!("the test panicked"),
    }
}

struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

fn noop() -> Waker {
    Waker::from(Arc::new(Noop))
}

/// A call polled once with `waker`, still waiting.
fn waiting(svc: &mut Svc, peer: u32, waker: &Waker) -> Call {
    let mut call: Call = Box::pin(svc.call((peer, false)));
    assert!(call
        .as_mut()
        .poll(&mut Context::from_waker(waker))
        .is_pending());
    call
}

/// Whether `call` ended with a manual interrupt.
fn manually_interrupted(call: &mut Call) -> bool {
    match call.as_mut().poll(&mut Context::from_waker(&noop())) {
        Poll::Ready(Err(err)) => {
            let err = Interrupted::find(&*err).expect("an Interrupted");
            matches!(err.reason(), Reason::Manual(_))
        }
        _ => false,
    }
}

/// A waker that fires into `target` when its last clone is dropped.
struct FiresOnDrop {
    interrupts: InterruptHandle<u32>,
    target: u32,
    fired: Arc<AtomicUsize>,
}

impl Wake for FiresOnDrop {
    fn wake(self: Arc<Self>) {}
}

impl Drop for FiresOnDrop {
    fn drop(&mut self) {
        self.interrupts
            .interrupt_peer(&self.target, "a waker dropped");
        self.fired.fetch_add(1, SeqCst);
    }
}

/// A call waits with a waker the layer holds the last clone of, then is polled with
/// another, so the layer drops the first, whose drop fires into `target` of `interrupts`.
fn replace_a_waker_that_fires(svc: &mut Svc, interrupts: InterruptHandle<u32>, target: u32) {
    let fired = Arc::new(AtomicUsize::new(0));
    let first = Waker::from(Arc::new(FiresOnDrop {
        interrupts,
        target,
        fired: fired.clone(),
    }));
    let mut call = waiting(svc, 1, &first);
    drop(first);
    assert_eq!(fired.load(SeqCst), 0, "the layer holds a clone");
    let poll = call.as_mut().poll(&mut Context::from_waker(&noop()));
    assert!(poll.is_pending());
    assert_eq!(fired.load(SeqCst), 1, "the replaced waker was dropped");
}

#[test]
fn a_waker_the_layer_drops_may_fire_into_another_peer() {
    within_10s(|| {
        let (mut svc, interrupts) = layer();
        let mut other = waiting(&mut svc, 2, &noop());
        replace_a_waker_that_fires(&mut svc, interrupts, 2);
        assert!(manually_interrupted(&mut other));
    });
}

#[test]
fn a_waker_the_layer_drops_may_fire_into_another_layer() {
    within_10s(|| {
        let (mut svc, _) = layer();
        let (mut elsewhere, interrupts) = layer();
        let mut other = waiting(&mut elsewhere, 7, &noop());
        replace_a_waker_that_fires(&mut svc, interrupts, 7);
        assert!(manually_interrupted(&mut other));
    });
}

#[test]
fn a_waker_the_layer_drops_may_fire_into_its_own_peer() {
    within_10s(|| {
        let (mut svc, interrupts) = layer();
        let fired = Arc::new(AtomicUsize::new(0));
        let first = Waker::from(Arc::new(FiresOnDrop {
            interrupts,
            target: 1,
            fired: fired.clone(),
        }));
        let mut call = waiting(&mut svc, 1, &first);
        drop(first);
        // Replaced (and dropped), the waker fires into the call's own peer: the same poll
        // or the next ends the call with it.
        let ended = call.as_mut().poll(&mut Context::from_waker(&noop()));
        assert_eq!(fired.load(SeqCst), 1);
        assert!(ended.is_ready() || manually_interrupted(&mut call));
    });
}

/// The data of a waker whose first clone fires into `target`.
struct FiresOnClone {
    interrupts: InterruptHandle<u32>,
    target: u32,
    clones: AtomicUsize,
}

const VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop_data);

/// The waker of `data`: its vtable's pointer is an `Arc<FiresOnClone>`'s.
fn fires_on_clone(data: Arc<FiresOnClone>) -> Waker {
    let raw = RawWaker::new(Arc::into_raw(data).cast(), &VTABLE);
    // SAFETY: the vtable's functions treat the pointer as the `Arc` it came from, each
    // clone owning one strong count and each drop or wake by value giving one back.
    unsafe { Waker::from_raw(raw) }
}

unsafe fn clone(data: *const ()) -> RawWaker {
    // SAFETY: `data` is a live `Arc<FiresOnClone>`'s (see `fires_on_clone`).
    let fires = unsafe { &*data.cast::<FiresOnClone>() };
    if fires.clones.fetch_add(1, SeqCst) == 0 {
        fires
            .interrupts
            .interrupt_peer(&fires.target, "a waker cloned");
    }
    // SAFETY: as above; the clone owns the count taken here.
    unsafe { Arc::increment_strong_count(data.cast::<FiresOnClone>()) };
    RawWaker::new(data, &VTABLE)
}

unsafe fn wake(data: *const ()) {
    // SAFETY: a wake by value gives back the waker's count.
    drop(unsafe { Arc::from_raw(data.cast::<FiresOnClone>()) });
}

unsafe fn wake_by_ref(_: *const ()) {}

unsafe fn drop_data(data: *const ()) {
    // SAFETY: a drop gives back the waker's count.
    drop(unsafe { Arc::from_raw(data.cast::<FiresOnClone>()) });
}

#[test]
fn a_waker_the_layer_clones_may_fire_into_another_peer() {
    within_10s(|| {
        let (mut svc, interrupts) = layer();
        let mut other = waiting(&mut svc, 2, &noop());
        let waker = fires_on_clone(Arc::new(FiresOnClone {
            interrupts,
            target: 2,
            clones: AtomicUsize::new(0),
        }));
        let _call = waiting(&mut svc, 1, &waker);
        assert!(manually_interrupted(&mut other));
    });
}

/// A response body waits for its peer's interrupts with the peer itself: a waker it
/// replaces may fire into that peer too.
#[cfg(feature = "http")]
#[test]
fn a_waker_a_watched_body_drops_may_fire_into_its_peer() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_adaptive_timeout::HttpPeer;

    within_10s(|| {
        let layer = AdaptiveTimeoutLayer::http().build().unwrap();
        let interrupts = layer.interrupt_handle();
        let peer = service_fn(|_: http::Request<()>| async {
            // A body whose frame never comes.
            let body = http_body_util::StreamBody::new(futures_util::stream::pending::<
                Result<hyper::body::Frame<bytes::Bytes>, BoxError>,
            >());
            Ok::<_, BoxError>(http::Response::new(body))
        });
        let svc = layer.with_bodies().layer(peer);
        let req = http::Request::get("http://stream.test/").body(()).unwrap();
        let head = svc.oneshot(req);
        let mut head = std::pin::pin!(head);
        let Poll::Ready(Ok(response)) = head.as_mut().poll(&mut Context::from_waker(&noop()))
        else {
            panic!("the head is answered at once");
        };
        let target: HttpPeer = "http://stream.test/".parse().unwrap();
        let fired = Arc::new(AtomicUsize::new(0));
        struct FiresOnDrop(InterruptHandle<HttpPeer>, HttpPeer, Arc<AtomicUsize>);
        impl Wake for FiresOnDrop {
            fn wake(self: Arc<Self>) {}
        }
        impl Drop for FiresOnDrop {
            fn drop(&mut self) {
                self.0.interrupt_peer(&self.1, "a waker dropped");
                self.2.fetch_add(1, SeqCst);
            }
        }
        let first = Waker::from(Arc::new(FiresOnDrop(interrupts, target, fired.clone())));
        let mut body = Box::pin(response.into_body());
        let frame = body.frame();
        let mut frame = std::pin::pin!(frame);
        assert!(frame
            .as_mut()
            .poll(&mut Context::from_waker(&first))
            .is_pending());
        drop(first);
        let ended = frame.as_mut().poll(&mut Context::from_waker(&noop()));
        assert_eq!(fired.load(SeqCst), 1, "the replaced waker was dropped");
        let ended = match ended {
            Poll::Pending => frame.as_mut().poll(&mut Context::from_waker(&noop())),
            ready => ready,
        };
        let Poll::Ready(Some(Err(err))) = ended else {
            panic!("the body ends with the interrupt");
        };
        let err = Interrupted::find(&*err).expect("an Interrupted");
        assert!(matches!(err.reason(), Reason::Manual(_)));
    });
}
