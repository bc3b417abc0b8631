//! Regressions of the call path's edges, through the public API: inner errors near the
//! deadline, error chains that loop, class labels from hostile paths, slow peers past 32
//! bits of microseconds, calls refused after shutdown in the per-peer counters, and a call
//! moved off a runtime that was dropped.

use crate::support;

use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, ByPeer, HttpPeer, Interrupted, PeerState,
    Propagation, Reason, TimeoutPolicy, MAX_LABEL_BYTES,
};

use support::ms;

/// An error whose `source()` is itself: a chain that never ends. It counts how often its
/// source is asked for, and panics past a bound, so a walk that does not stop fails
/// instead of spinning forever.
#[derive(Debug, Default)]
struct Looping {
    asked: AtomicUsize,
}

/// More `source()` calls than any bounded walk makes.
const RUNAWAY: usize = 100_000;

impl fmt::Display for Looping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an application error")
    }
}

impl Error for Looping {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        let asked = self.asked.fetch_add(1, Ordering::Relaxed);
        assert!(asked < RUNAWAY, "the source chain was walked {asked} times");
        Some(self)
    }
}

/// The default error classifier walks an inner error's chain: a looping one ends, and the
/// error passes through as an answer.
#[tokio::test(start_paused = true)]
async fn a_looping_error_chain_ends_the_default_classifier() {
    let layer = AdaptiveTimeoutLayer::builder(|k: &u64| *k).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: u64| async {
        Err::<(), BoxError>(Box::new(Looping::default()))
    }));
    let err = svc.oneshot(1).await.unwrap_err();
    assert_eq!(err.to_string(), "an application error", "passed through");
    let snapshot = &handle.snapshot()[0];
    assert_eq!(snapshot.completed, 1, "an answer, not a failure");
}

/// `Interrupted::find` (and `status::grpc_error`, which uses it) end on a looping chain.
#[test]
fn a_looping_error_chain_ends_find() {
    let looping = Looping::default();
    assert!(Interrupted::find(&looping).is_none());
    let asked = looping.asked.load(Ordering::Relaxed);
    assert!(asked < 100, "find asked for {asked} sources");
    #[cfg(feature = "tonic")]
    {
        let err = tower_adaptive_timeout::status::grpc_error(Box::new(Looping::default()));
        assert!(
            err.downcast_ref::<Looping>().is_some(),
            "returned untouched"
        );
    }
}

/// A `u64`-keyed layer (default policy: 1s cold start) over a service that fails each
/// call 999.5ms after it starts, half a millisecond before its deadline.
#[tokio::test(start_paused = true)]
async fn an_inner_error_just_before_the_deadline_is_the_inner_error_and_no_miss() {
    let layer = AdaptiveTimeoutLayer::builder(|k: &u64| *k).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: u64| async {
        tokio::time::sleep(Duration::from_micros(999_500)).await;
        Err::<(), BoxError>("the inner service's own error".into())
    }));
    let (a, b) = tokio::join!(svc.clone().oneshot(7), svc.clone().oneshot(7));
    for r in [a, b] {
        let err = r.unwrap_err();
        assert!(err.downcast_ref::<Interrupted>().is_none(), "{err}");
        assert_eq!(err.to_string(), "the inner service's own error");
    }
    let snapshot = &handle.snapshot()[0];
    assert_eq!(
        snapshot.state,
        PeerState::Healthy,
        "both calls were answered"
    );
    assert_eq!((snapshot.completed, snapshot.deadline_exceeded), (2, 0));
}

/// An http layer propagating `grpc-timeout`, and its handle.
fn grpc_layer() -> (
    AdaptiveTimeoutLayer<HttpPeer, ByPeer>,
    AdaptiveTimeoutHandle<HttpPeer>,
) {
    let layer = AdaptiveTimeoutLayer::http()
        .propagation(Propagation::grpc())
        .build()
        .unwrap();
    let handle = layer.handle();
    (layer, handle)
}

/// With `grpc-timeout` propagated, the stack's own timeout (tonic's message) within the
/// millisecond the header rounds off is still taken for the deadline, enforced below (a
/// client's own timer on it): the allowance kept where it belongs.
#[tokio::test(start_paused = true)]
async fn an_error_at_a_propagated_deadline_is_that_deadline() {
    let (layer, handle) = grpc_layer();
    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        assert_eq!(req.headers()["grpc-timeout"], "1000m");
        tokio::time::sleep(Duration::from_micros(999_500)).await;
        Err::<Response<()>, BoxError>("Timeout expired".into())
    }));
    let r = svc.oneshot(support::requests::get("http://a:1/m")).await;
    let err = support::interrupted(r);
    assert!(
        matches!(err.reason(), Reason::DeadlineExceeded { .. }),
        "{err}"
    );
    assert_eq!(handle.snapshot()[0].deadline_exceeded, 1);
}

/// A 60 kB path with a newline and a right-to-left override: its class label (snapshot,
/// error message) is bounded and escaped like a peer's.
#[tokio::test(start_paused = true)]
async fn a_hostile_path_gives_a_bounded_escaped_class_label() {
    let layer = AdaptiveTimeoutLayer::http().build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: Request<()>| async {
        tokio::time::sleep(ms(10)).await;
        Ok::<_, BoxError>(Response::new(()))
    }));
    let path = format!("/a%0A\u{202e}b\n/{}", "x".repeat(60_000));
    let mut req = Request::get("http://a:1/").body(()).unwrap();
    *req.uri_mut() = format!("http://a:1{}", path.replace('\n', "%0A"))
        .parse()
        .unwrap();
    // The URI refuses a raw newline: a named class carries one instead.
    let named = format!("report\n\u{202e}{}", "y".repeat(60_000));
    let mut by_name = Request::get("http://a:1/r").body(()).unwrap();
    by_name
        .extensions_mut()
        .insert(tower_adaptive_timeout::LatencyClass::new(named));
    svc.clone().oneshot(req).await.unwrap();
    svc.clone().oneshot(by_name).await.unwrap();
    let classes = &handle.snapshot()[0].classes;
    assert_eq!(classes.len(), 2);
    for c in classes {
        assert!(c.class.len() <= MAX_LABEL_BYTES, "{} bytes", c.class.len());
        assert!(c.class.ends_with('…'), "cut: {}", &c.class[..40]);
        assert!(!c.class.contains(['\n', '\u{202e}']), "escaped");
    }
    assert!(classes[1].class.starts_with("report\\n\\u{202e}yyy"));
    // A call of a new class runs out the class's cold start: its error names the class.
    let mut hang = Request::get("http://a:1/r").body(()).unwrap();
    let named = format!("slow\n\u{202e}{}", "z".repeat(60_000));
    hang.extensions_mut()
        .insert(tower_adaptive_timeout::LatencyClass::new(named));
    let stuck = AdaptiveTimeoutLayer::http()
        .build()
        .unwrap()
        .layer(service_fn(|_: Request<()>| {
            std::future::pending::<Result<Response<()>, BoxError>>()
        }));
    let err = support::interrupted(stuck.oneshot(hang).await);
    let message = err.to_string();
    assert!(
        message.contains(", class slow\\n\\u{202e}zzz"),
        "{message:.200}"
    );
    assert!(
        message.len() < 2 * MAX_LABEL_BYTES + 200,
        "{} bytes",
        message.len()
    );
    assert!(!message.contains(['\n', '\u{202e}']), "{message:.80}");
}

/// A call started (and waiting) on one runtime, which is then dropped, and polled to its
/// end on another: it ends at its deadline, not never.
#[test]
fn a_call_moved_off_a_dropped_runtime_ends_at_its_deadline() {
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let layer = AdaptiveTimeoutLayer::builder(|k: &u64| *k).build().unwrap();
    let svc = layer.layer(service_fn(|_: u64| {
        std::future::pending::<Result<(), BoxError>>()
    }));
    let first = paused();
    // Made (on its first poll) and left waiting on the first runtime.
    let mut call = Box::pin(svc.oneshot(1));
    let polled = first.block_on(futures_poll_once(call.as_mut()));
    assert!(polled.is_pending(), "waiting on its deadline");
    drop(first);
    let second = paused();
    let ended = second.block_on(async {
        let started = tokio::time::Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(60), &mut call).await;
        (ended, started.elapsed())
    });
    let (ended, waited) = ended;
    let r = ended.expect("the call ended before the minute was up");
    let err = support::interrupted(&r);
    assert!(
        matches!(err.reason(), Reason::DeadlineExceeded { .. }),
        "{err}"
    );
    assert!(
        waited <= Duration::from_secs(1),
        "ended by its 1s deadline: {waited:?}"
    );
}

/// Polls `fut` once.
async fn futures_poll_once<F: std::future::Future + Unpin>(
    mut fut: F,
) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut fut).poll(cx))).await
}

/// Per peer, the counters add up to the calls made, also across `shutdown()`: the calls it
/// refuses after are counted (snapshot and metrics).
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn calls_refused_after_shutdown_are_counted_per_peer() {
    use metrics_exporter_prometheus::PrometheusBuilder;
    use tower::Service;

    let recorder = PrometheusBuilder::new().build_recorder();
    let scrape = recorder.handle();
    let layer = AdaptiveTimeoutLayer::builder(|k: &u64| *k % 10)
        .build()
        .unwrap();
    let (handle, interrupts) = (layer.handle(), layer.interrupt_handle());
    // Key 1 answers at once; key 11 (the same peer) never.
    let svc = layer.layer(service_fn(|k: u64| async move {
        if k > 10 {
            std::future::pending::<()>().await;
        }
        Ok::<_, BoxError>(k)
    }));
    let call = |k: u64| {
        let mut svc = svc.clone();
        metrics::with_local_recorder(&recorder, move || svc.call(k))
    };
    call(1).await.unwrap();
    let held = tokio::spawn(call(11));
    tokio::task::yield_now().await;
    interrupts.shutdown();
    let ended = held.await.unwrap();
    assert_eq!(support::interrupted(&ended).reason(), &Reason::Shutdown);
    for k in [1, 11, 21] {
        let refused = call(k).await;
        assert!(!support::interrupted(&refused).was_sent());
    }
    let made = 5;

    let p = &handle.snapshot()[0];
    assert_eq!((p.completed, p.manual_interrupts, p.refused), (1, 1, 3));
    let counted = p.completed
        + p.deadline_exceeded
        + p.failures
        + p.silent_interrupts
        + p.manual_interrupts
        + p.fail_fast
        + p.refused
        + p.in_flight as u64;
    assert_eq!(counted, made);

    let page = scrape.render();
    let value = |series: &str| -> u64 {
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in {page}"))
            .parse()
            .unwrap()
    };
    let calls = value("adaptive_timeout_calls_total{peer=\"1\"}");
    let fail_fast = value("adaptive_timeout_fail_fast_total{peer=\"1\"}");
    let refused = value("adaptive_timeout_refused_total{peer=\"1\"}");
    assert_eq!((calls, fail_fast, refused), (2, 0, 3));
    assert_eq!(calls + fail_fast + refused, made);
}

/// A peer that answers in two hours, under a policy whose `max` (24h) allows for it: its
/// answers are kept as they are (not cut at 71.6 minutes, 2^32 microseconds), and the
/// deadline learned from them lets the next such call through.
#[tokio::test(start_paused = true)]
async fn a_peer_answering_in_two_hours_learns_a_deadline_above_two_hours() {
    let two_hours = Duration::from_secs(2 * 3600);
    let policy = TimeoutPolicy::default()
        .max(Duration::from_secs(24 * 3600))
        .cold_start(Duration::from_secs(3 * 3600));
    let layer = AdaptiveTimeoutLayer::builder(|k: &u64| *k)
        .policy(policy)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(move |k: u64| async move {
        tokio::time::sleep(two_hours).await;
        Ok::<_, BoxError>(k)
    }));
    let calls = (0..4).map(|_| svc.clone().oneshot(1));
    for r in futures_join_all(calls).await {
        r.unwrap();
    }
    let p = &handle.snapshot()[0];
    assert_eq!(p.max, two_hours, "kept as answered");
    assert!(
        p.deadline > two_hours,
        "{:?} ({})",
        p.deadline,
        p.explanation
    );
    svc.clone().oneshot(1).await.unwrap();
}

/// Awaits every future of `futures`, all at once.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut out = Vec::new();
    let mut pending: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for slot in pending.iter_mut() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out.push(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out
}

/// With `grpc-timeout` propagated, a peer that learned 5 ms answers, then fails two calls
/// with its own error 300 us before the deadline it was told: that error is the peer's
/// answer, not the deadline, and the peer stays healthy and admitted.
#[tokio::test(start_paused = true)]
async fn an_inner_error_just_before_a_propagated_deadline_is_the_peers_answer() {
    let (layer, handle) = grpc_layer();
    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        if req.uri().path() != "/fail" {
            tokio::time::sleep(ms(5)).await;
            return Ok(Response::new(()));
        }
        let told = req.headers()["grpc-timeout"].as_bytes();
        let told = tower_adaptive_timeout::propagate::parse_grpc_timeout(told).unwrap();
        tokio::time::sleep(told - Duration::from_micros(300)).await;
        Err::<Response<()>, BoxError>("the peer's own error reply".into())
    }));
    for _ in 0..30 {
        let r = svc
            .clone()
            .oneshot(support::requests::get("http://a:1/ok"))
            .await;
        r.unwrap();
    }
    for _ in 0..2 {
        let r = svc
            .clone()
            .oneshot(support::requests::get("http://a:1/fail"))
            .await;
        let err = r.unwrap_err();
        assert!(err.downcast_ref::<Interrupted>().is_none(), "{err}");
        assert_eq!(err.to_string(), "the peer's own error reply");
    }
    let r = svc
        .clone()
        .oneshot(support::requests::get("http://a:1/ok"))
        .await;
    assert!(r.is_ok(), "{:?}", r.err());
    let snapshot = &handle.snapshot()[0];
    assert_eq!(snapshot.state, PeerState::Healthy, "{snapshot:#?}");
    assert_eq!(snapshot.deadline_exceeded, 0, "{snapshot:#?}");
}
