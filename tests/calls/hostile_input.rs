//! Hostile input: floods of distinct peer keys, absurd policy values, and inner services
//! that panic.
//!
//! * (The million-key flood and its memory bound live in `tests/stress/flood.rs`, alone in
//!   their process.) Calls that find the table full of busy peers go untracked and get the
//!   default policy's cold-start deadline.
//! * Every duration field at `u64::MAX` seconds, NaN and infinite floats, zeroes: `build()`,
//!   `set_default_policy` and policies read from JSON refuse them with an error naming the
//!   field, and any policy they accept is usable.
//! * An inner service that panics (in `call`, at its first poll, or mid-flight) leaves the
//!   peer usable: nothing in flight, nothing poisoned, deadlines still adapt. So does a
//!   panic between admission and the inner call (writing the deadline into the request),
//!   also for a probe; and a header map already at its size limit is not written to.
//! * Peer keys whose `Debug` panics, and concurrent floods on a multi-threaded runtime.

use crate::support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tower::{service_fn, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeout, AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, DeadlineSource, Interrupted,
    KeyFn, PeerState, Propagation, Reason, TimeoutPolicy,
};

use support::{echo_keys, lean, ms};

/// A call to peer `key`: answered at once, after `delay`, never (`hang`), or by a panic.
#[derive(Clone, Copy, Debug)]
struct Req {
    key: u64,
    delay: Duration,
    act: Act,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Answer,
    Hang,
    PanicInCall,
    /// Panics where the layer writes the call's deadline into the request.
    PanicWritingDeadline,
    PanicAtFirstPoll,
    PanicMidFlight,
}

impl Req {
    fn answer(key: u64, delay: Duration) -> Self {
        Req {
            key,
            delay,
            act: Act::Answer,
        }
    }

    fn act(key: u64, act: Act) -> Self {
        Req {
            key,
            delay: ms(5),
            act,
        }
    }
}

/// The simulated peer behind every key; `Service::call` itself panics for
/// [`Act::PanicInCall`].
#[derive(Clone)]
struct Sim;

impl Service<Req> for Sim {
    type Response = u64;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        assert_ne!(req.act, Act::PanicInCall, "injected panic in call");
        Box::pin(async move {
            match req.act {
                Act::Hang => std::future::pending().await,
                Act::PanicAtFirstPoll => panic!("injected panic at first poll"),
                Act::PanicMidFlight => {
                    tokio::time::sleep(req.delay).await;
                    panic!("injected panic mid-flight")
                }
                Act::Answer | Act::PanicInCall | Act::PanicWritingDeadline => {
                    if !req.delay.is_zero() {
                        tokio::time::sleep(req.delay).await;
                    }
                    Ok(req.key)
                }
            }
        })
    }
}

type Svc = AdaptiveTimeout<Sim, u64, fn(&Req) -> u64>;

fn stack(builder_policy: TimeoutPolicy, max_peers: usize) -> (Svc, AdaptiveTimeoutHandle<u64>) {
    let builder = AdaptiveTimeoutLayer::builder((|r: &Req| r.key) as fn(&Req) -> u64)
        .policy(builder_policy)
        .max_peers(max_peers);
    support::stack(builder, Sim)
}

#[tokio::test(start_paused = true)]
async fn a_full_table_of_busy_peers_leaves_new_peers_untracked_with_the_cold_start() {
    let (svc, handle) = stack(lean(), 4);
    let mut hung = tokio::task::JoinSet::new();
    for key in 0..4 {
        hung.spawn(svc.clone().oneshot(Req::act(key, Act::Hang)));
    }
    tokio::task::yield_now().await;
    assert_eq!(handle.peer_count(), 4);
    let start = tokio::time::Instant::now();
    let err = svc
        .clone()
        .oneshot(Req::act(99, Act::Hang))
        .await
        .unwrap_err();
    let err = err.downcast_ref::<Interrupted>().expect("typed error");
    let Reason::DeadlineExceeded {
        deadline,
        explanation,
    } = err.reason()
    else {
        panic!("{err}")
    };
    assert_eq!(*deadline, lean().cold_start);
    assert_eq!(explanation.source, DeadlineSource::Untracked);
    assert_eq!(tokio::time::Instant::now() - start, lean().cold_start);
    assert!(handle.peer(&99).is_none());
    assert_eq!(handle.untracked_calls(), 1);
    // An untracked call that is answered needs no slot either.
    assert_eq!(
        svc.clone().oneshot(Req::answer(98, ms(1))).await.unwrap(),
        98
    );
    assert_eq!(handle.untracked_calls(), 2);
    hung.abort_all();
    while hung.join_next().await.is_some() {}
    assert!(handle.snapshot().iter().all(|p| p.in_flight == 0));
}

const HUGE: Duration = Duration::from_secs(u64::MAX);

/// Policies with absurd values, and the field each must be refused for.
fn absurd() -> Vec<(&'static str, TimeoutPolicy)> {
    let p = TimeoutPolicy::default;
    vec![
        ("quantile", p().quantile(f64::NAN)),
        ("quantile", p().quantile(f64::NEG_INFINITY)),
        ("quantile", p().quantile(0.0)),
        ("factor", p().factor(f64::NAN)),
        ("factor", p().factor(f64::INFINITY)),
        ("factor", p().factor(0.0)),
        ("min", p().min(Duration::ZERO)),
        ("min", p().min(HUGE)),
        ("min", p().min(Duration::MAX)),
        ("max", p().max(HUGE)),
        ("max", p().max(HUGE).min(HUGE).cold_start(HUGE)),
        ("margin", p().margin(HUGE)),
        ("cold_start", p().cold_start(HUGE)),
        ("cold_start", p().cold_start(Duration::ZERO)),
        ("min_samples", p().min_samples(0)),
        ("window", p().window(Duration::ZERO)),
        ("sub_windows", p().sub_windows(0)),
        ("sub_windows", p().sub_windows(u32::MAX)),
        ("sub_windows", p().window(Duration::from_nanos(1))),
        ("significant_figures", p().significant_figures(0)),
        ("significant_figures", p().significant_figures(u8::MAX)),
        ("recompute_every", p().recompute_every(0)),
        ("probe_backoff", p().probe_backoff(Duration::ZERO)),
        ("probe_backoff", p().probe_backoff(HUGE)),
        ("probe_backoff_max", p().probe_backoff_max(HUGE)),
    ]
}

#[test]
fn absurd_policy_values_are_refused_by_build_and_at_runtime() {
    let layer = AdaptiveTimeoutLayer::builder(|r: &u64| *r).build().unwrap();
    let handle = layer.handle();
    for (field, policy) in absurd() {
        let err = AdaptiveTimeoutLayer::builder(|r: &u64| *r)
            .policy(policy.clone())
            .build()
            .expect_err(field);
        assert_eq!(err.field(), field, "{policy:?}");
        assert!(err.to_string().contains(field), "{err}");
        let err = handle.set_default_policy(policy.clone()).expect_err(field);
        assert_eq!(err.field(), field);
        let err = handle.set_peer_policy(7, policy).expect_err(field);
        assert_eq!(err.field(), field);
    }
    assert_eq!(handle.default_policy(), TimeoutPolicy::default());
}

/// Huge values that `validate` has no bound for must still give a usable layer.
async fn accepted_policy_is_usable(policy: TimeoutPolicy) {
    let Ok(layer) = AdaptiveTimeoutLayer::builder((|r: &Req| r.key) as fn(&Req) -> u64)
        .policy(policy.clone())
        .build()
    else {
        return; // Refused with an error: fine.
    };
    let handle = layer.handle();
    let svc = layer.layer(Sim);
    // Run the call in a task so a panic is reported as a failure of this policy.
    let joined = tokio::spawn(svc.oneshot(Req::answer(1, ms(1)))).await;
    let answer = joined.unwrap_or_else(|e| panic!("{policy:?} panicked: {e}"));
    assert_eq!(answer.unwrap(), 1);
    assert_eq!(handle.peer(&1).expect("tracked").in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn large_but_unbounded_values_are_usable() {
    for policy in [
        TimeoutPolicy::default().min_samples(u64::MAX),
        TimeoutPolicy::default().recompute_every(u64::MAX),
        TimeoutPolicy::default().silent_after_misses(u32::MAX),
        TimeoutPolicy::default().factor(f64::MAX),
        TimeoutPolicy::default().factor(1e300).min_samples(1),
        TimeoutPolicy::default().window(Duration::from_secs(100 * 365 * 86_400)),
    ] {
        accepted_policy_is_usable(policy).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_window_of_u64_max_seconds_is_refused_or_usable() {
    accepted_policy_is_usable(TimeoutPolicy::default().window(HUGE).sub_windows(1)).await;
}

#[cfg(feature = "serde")]
mod json {
    use super::*;

    fn parse(json: &str) -> Result<TimeoutPolicy, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn zero_and_huge_durations_in_json_are_errors_not_panics() {
        let huge = format!("{}s", u64::MAX);
        let too_huge = "18446744073709551616s"; // u64::MAX + 1 seconds
        let cases = [
            ("min", r#"{ "min": "0s" }"#.to_owned()),
            ("min", format!(r#"{{ "min": "{huge}" }}"#)),
            ("max", format!(r#"{{ "max": "{huge}" }}"#)),
            ("margin", format!(r#"{{ "margin": "{huge}" }}"#)),
            ("cold_start", format!(r#"{{ "cold_start": "{huge}" }}"#)),
            ("cold_start", r#"{ "cold_start": "0ns" }"#.to_owned()),
            ("window", r#"{ "window": "0s" }"#.to_owned()),
            (
                "probe_backoff",
                format!(r#"{{ "probe_backoff": "{huge}" }}"#),
            ),
            ("probe_backoff", r#"{ "probe_backoff": "0ms" }"#.to_owned()),
            (
                "probe_backoff_max",
                format!(r#"{{ "probe_backoff_max": "{huge}" }}"#),
            ),
            ("sub_windows", r#"{ "sub_windows": 4294967295 }"#.to_owned()),
            ("min_samples", r#"{ "min_samples": 0 }"#.to_owned()),
        ];
        for (field, json) in &cases {
            let policy = parse(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            let err = AdaptiveTimeoutLayer::builder(|r: &u64| *r)
                .policy(policy)
                .build()
                .expect_err(json);
            assert_eq!(err.field(), *field, "{json}");
        }
        for json in [
            format!(r#"{{ "max": "{too_huge}" }}"#),
            r#"{ "window": "99999999999999999999years" }"#.to_owned(),
            r#"{ "quantile": NaN }"#.to_owned(),
            r#"{ "factor": 1e999 }"#.to_owned(),
            r#"{ "significant_figures": 256 }"#.to_owned(),
            r#"{ "min_samples": 18446744073709551616 }"#.to_owned(),
        ] {
            assert!(parse(&json).is_err(), "{json} was accepted");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn inner_panics_leave_the_peer_usable_and_adapting() {
    let policy = TimeoutPolicy::default()
        .min(ms(5))
        .min_samples(5)
        .recompute_every(1);
    let (svc, handle) = stack(policy, 16);
    for _ in 0..20 {
        svc.clone().oneshot(Req::answer(1, ms(10))).await.unwrap();
    }
    let (before, _) = handle.deadline(&1).unwrap();
    for act in [Act::PanicInCall, Act::PanicAtFirstPoll, Act::PanicMidFlight] {
        for _ in 0..3 {
            let joined = tokio::spawn(svc.clone().oneshot(Req::act(1, act))).await;
            let err = joined.expect_err("the call panicked");
            assert!(err.is_panic(), "{act:?}: {err}");
        }
        let snap = handle.peer(&1).unwrap();
        assert_eq!(snap.in_flight, 0, "{act:?}");
        assert_eq!(snap.state, PeerState::Healthy, "{act:?}");
    }
    // The peer slows down (within its deadline of about 25ms): the deadline follows,
    // through the same (unpoisoned) locks.
    for _ in 0..200 {
        svc.clone().oneshot(Req::answer(1, ms(20))).await.unwrap();
    }
    let snap = handle.peer(&1).unwrap();
    assert!(
        snap.deadline > before,
        "{:?} -> {:?}",
        before,
        snap.deadline
    );
    assert_eq!(snap.deadline_source(), DeadlineSource::Quantile);
    assert_eq!((snap.in_flight, snap.completed), (0, 220));
    // A hung call is still cut at the adapted deadline.
    let err = svc
        .clone()
        .oneshot(Req::act(1, Act::Hang))
        .await
        .unwrap_err();
    let err = err.downcast_ref::<Interrupted>().expect("typed error");
    assert_eq!(err.deadline(), Some(snap.deadline));
}

/// A key whose `Debug` panics for odd values: a misbehaving user type.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Touchy(u64);

impl std::fmt::Debug for Touchy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        assert!(self.0.is_multiple_of(2), "injected panic in Debug");
        write!(f, "touchy-{}", self.0)
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_whose_debug_panics_does_not_leak_a_table_slot() {
    let layer = AdaptiveTimeoutLayer::builder(|k: &Touchy| k.clone())
        .max_peers(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(
        |k: Touchy| async move { Ok::<_, Infallible>(k.0) },
    ));
    for odd in [1, 3] {
        let joined = tokio::spawn(svc.clone().oneshot(Touchy(odd))).await;
        assert!(joined.expect_err("Debug panicked").is_panic());
    }
    assert_eq!(
        handle.peer_count(),
        handle.snapshot().len(),
        "peer_count counts peers that were never inserted"
    );
    svc.clone().oneshot(Touchy(2)).await.unwrap();
    assert!(handle.peer(&Touchy(2)).is_some(), "a good key is tracked");
    assert_eq!(handle.untracked_calls(), 0);
}

#[test]
fn concurrent_floods_keep_the_table_within_max_peers() {
    const MAX: usize = 64;
    const THREADS: u64 = 4;
    let (svc, handle) = echo_keys(MAX);
    let over = Arc::new(AtomicUsize::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for t in 0..THREADS {
            let (svc, handle, over) = (svc.clone(), handle.clone(), over.clone());
            set.spawn(async move {
                for i in 0..20_000u64 {
                    svc.clone().oneshot(i * THREADS + t).await.unwrap();
                    over.fetch_max(handle.peer_count(), SeqCst);
                }
            });
        }
        tokio::time::timeout(Duration::from_secs(60), set.join_all())
            .await
            .expect("floods finish");
    });
    let peak = over.load(SeqCst);
    eprintln!("peak peer_count {peak} with max_peers {MAX}");
    assert!(handle.peer_count() <= MAX, "{}", handle.peer_count());
    assert!(peak <= MAX, "peer_count reached {peak} > max_peers {MAX}");
}

/// Keys by `Req::key`, and panics writing the deadline of an [`Act::PanicWritingDeadline`].
#[derive(Clone)]
struct PanicsWriting;

impl KeyFn<Req> for PanicsWriting {
    type Key = u64;

    fn peer_key(&self, req: &Req) -> Option<u64> {
        Some(req.key)
    }

    fn write_deadline(&self, req: &mut Req, _: Duration, _: &Propagation) {
        assert_ne!(req.act, Act::PanicWritingDeadline, "injected panic writing");
    }

    fn propagates(&self) -> bool {
        true
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_between_admission_and_the_inner_call_leaks_no_call_and_no_probe() {
    let policy = TimeoutPolicy::default()
        .cold_start(ms(100))
        .probe_backoff(ms(500))
        .probe_backoff_max(ms(500));
    let layer = AdaptiveTimeoutLayer::builder(PanicsWriting)
        .policy(policy)
        .propagation(Propagation::grpc())
        .build()
        .unwrap();
    let (handle, svc) = (layer.handle(), layer.layer(Sim));
    let panics = |act| tokio::spawn(svc.clone().oneshot(Req::act(1, act)));
    assert!(panics(Act::PanicWritingDeadline)
        .await
        .unwrap_err()
        .is_panic());
    assert_eq!(handle.peer(&1).unwrap().in_flight, 0);

    // Silenced by two misses; its probe, when due, panics the same way.
    for r in [panics(Act::Hang), panics(Act::Hang)] {
        r.await.unwrap().unwrap_err();
    }
    assert_eq!(handle.peer(&1).unwrap().state, PeerState::Silent);
    tokio::time::sleep(ms(700)).await;
    assert!(panics(Act::PanicWritingDeadline)
        .await
        .unwrap_err()
        .is_panic());
    let snap = handle.peer(&1).unwrap();
    assert_eq!((snap.in_flight, snap.state), (0, PeerState::Silent));
    // A later probe goes out, is answered, and the peer is back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(svc.clone().oneshot(Req::answer(1, ms(1))).await.unwrap(), 1);
    assert_eq!(handle.peer(&1).unwrap().state, PeerState::Healthy);
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn a_header_map_at_its_size_limit_is_left_unwritten() {
    use http::{HeaderName, HeaderValue, Request};

    let millis = HeaderName::from_static("x-request-timeout-ms");
    let layer = AdaptiveTimeoutLayer::http()
        .propagation(Propagation::grpc().millis_header(millis.clone()))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        Ok::<_, Infallible>(req.headers().len())
    }));
    let mut req = Request::get("http://10.0.0.7:9000/").body(()).unwrap();
    let headers = req.headers_mut();
    for i in 0.. {
        let name = HeaderName::try_from(format!("x-filler-{i}")).unwrap();
        if headers
            .try_insert(name, HeaderValue::from_static("1"))
            .is_err()
        {
            break;
        }
    }
    let full = headers.len();
    let joined = tokio::spawn(svc.oneshot(req)).await;
    let peer = "http://10.0.0.7:9000".parse().unwrap();
    assert_eq!(handle.peer(&peer).unwrap().in_flight, 0);
    let seen = joined.expect("no panic").unwrap();
    assert_eq!(seen, full, "neither deadline header was added");
}
