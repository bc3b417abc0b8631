//! Hedged calls over `http::Request`s on tokio's paused clock: what a copy's callee is told
//! of its deadline under propagation, and the delay each latency class waits.

use crate::hedge::policy;
use crate::support::{interrupted, ms};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutLayer, Deadline, Hedging, Propagation, DEFAULT_MAX_CLASSES,
};

/// A hedged layer over `http::Request`s with `grpc-timeout` propagation, whose peer answers
/// in 10 ms but hangs on a request with an `x-hang` header (the same latency class);
/// each arrival's instant and `grpc-timeout` are kept.
mod propagated {
    use super::*;

    type Seen = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

    fn copy(r: &http::Request<()>) -> Option<http::Request<()>> {
        let mut c = http::Request::new(());
        *c.uri_mut() = r.uri().clone();
        *c.headers_mut() = r.headers().clone();
        *c.extensions_mut() = r.extensions().clone();
        Some(c)
    }

    fn rig() -> (BoxCloneService<http::Request<()>, (), BoxError>, Seen) {
        let seen = Seen::default();
        let inner = service_fn({
            let seen = seen.clone();
            move |req: http::Request<()>| {
                let told = req.headers().get("grpc-timeout");
                let told = told.map(|v| v.to_str().unwrap().to_owned());
                seen.lock().unwrap().push((Instant::now(), told));
                let hang = req.headers().contains_key("x-hang");
                async move {
                    match hang {
                        true => std::future::pending().await,
                        false => tokio::time::sleep(ms(10)).await,
                    }
                    Ok::<_, BoxError>(())
                }
            }
        });
        let layer = AdaptiveTimeoutLayer::http()
            .policy(policy())
            .propagation(Propagation::grpc())
            .build()
            .expect("valid policy");
        let hedged = layer
            .hedged(Hedging::new(copy as fn(&_) -> _).max_extra_load(1.0))
            .expect("valid hedging");
        (BoxCloneService::new(hedged.layer(inner)), seen)
    }

    /// `grpc-timeout`'s value (`300m`, `25000u`, ...).
    fn budget(v: &str) -> Duration {
        let (n, unit) = v.split_at(v.len() - 1);
        let n: u64 = n.parse().unwrap();
        match unit {
            "m" => ms(n),
            "u" => Duration::from_micros(n),
            "n" => Duration::from_nanos(n),
            "S" => Duration::from_secs(n),
            other => panic!("unit {other}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_copys_callee_is_never_told_more_time_than_the_request_has() {
        let (svc, seen) = rig();
        for _ in 0..40 {
            let req = http::Request::get("http://p.test/").body(()).unwrap();
            svc.clone().oneshot(req).await.expect("answered");
        }
        let deadlines = [None, Some(Deadline::within(ms(300)))];
        for (i, deadline) in deadlines.into_iter().enumerate() {
            let req = http::Request::get("http://p.test/").header("x-hang", "1");
            let mut req = req.body(()).unwrap();
            if let Some(d) = deadline {
                req.extensions_mut().insert(d);
            }
            seen.lock().unwrap().clear();
            let start = Instant::now();
            let err = interrupted(svc.clone().oneshot(req).await);
            let ended = Instant::now();
            let seen = seen.lock().unwrap().clone();
            assert_eq!(
                seen.len(),
                2,
                "case {i}: the request and its copy: {seen:?} ({err})"
            );
            assert!(seen[1].0 > start, "case {i}: the copy went later");
            for (at, told) in seen {
                let told = budget(&told.expect("told a deadline"));
                assert!(
                    at + told <= ended + ms(1),
                    "case {i}: told {told:?} at +{:?}, the request ended at +{:?} ({err})",
                    at - start,
                    ended - start,
                );
            }
        }
    }
}

/// A hedged `http()` layer (a latency class per path) whose peer answers `/fast` in 10 ms
/// and `/slow` in 100 ms, or after the `x-delay-ms` header's milliseconds.
mod classes {
    use super::*;

    fn copy(r: &http::Request<()>) -> Option<http::Request<()>> {
        let mut c = http::Request::new(());
        *c.uri_mut() = r.uri().clone();
        *c.headers_mut() = r.headers().clone();
        Some(c)
    }

    fn get(path: &str, delay: Option<u64>) -> http::Request<()> {
        let mut req = http::Request::get(format!("http://p.test{path}"));
        if let Some(ms) = delay {
            req = req.header("x-delay-ms", ms);
        }
        req.body(()).unwrap()
    }

    /// A hedged `http()` layer of at most `max_classes` classes over the peer, and a read of
    /// the copies it sent.
    fn hedged(
        max_classes: usize,
    ) -> (
        BoxCloneService<http::Request<()>, (), BoxError>,
        impl Fn() -> u64,
    ) {
        let inner = service_fn(|req: http::Request<()>| {
            let header = req.headers().get("x-delay-ms");
            let delay = header.map(|v| v.to_str().unwrap().parse().unwrap());
            let delay = delay.unwrap_or(if req.uri().path() == "/slow" { 100 } else { 10 });
            async move {
                tokio::time::sleep(ms(delay)).await;
                Ok::<_, BoxError>(())
            }
        });
        let layer = AdaptiveTimeoutLayer::http()
            .max_classes(max_classes)
            .policy(policy())
            .build()
            .expect("valid policy");
        let hedged = layer
            .hedged(Hedging::new(copy as fn(&_) -> _).max_extra_load(1.0))
            .expect("valid hedging");
        let svc = BoxCloneService::new(hedged.layer(inner));
        (svc, move || hedged.stats().sent)
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_is_hedged_at_its_own_latency_classs_quantile() {
        let (svc, sent) = hedged(DEFAULT_MAX_CLASSES);
        // The slow route is 1 call in 80: the peer's own p98 is the fast route's 10 ms.
        for i in 0..2_400 {
            let path = if i % 80 == 0 { "/slow" } else { "/fast" };
            let answered = svc.clone().oneshot(get(path, None)).await;
            answered.expect("answered");
        }
        let before = sent();
        // A slow-route call answering in 90 ms is within its class's p98 (100 ms): no copy.
        let answered = svc.clone().oneshot(get("/slow", Some(90))).await;
        answered.expect("answered");
        assert_eq!(sent(), before, "no copy before its own class's quantile");
        // A fast-route call answering in 20 ms is past its class's 10 ms: a copy.
        let answered = svc.clone().oneshot(get("/fast", Some(20))).await;
        answered.expect("answered");
        assert_eq!(sent(), before + 1, "a copy after its class's quantile");
    }

    #[tokio::test(start_paused = true)]
    async fn a_class_beyond_max_classes_is_hedged_at_its_peers_quantile_from_its_first_call() {
        let (svc, sent) = hedged(1);
        for _ in 0..40 {
            let answered = svc.clone().oneshot(get("/a", None)).await;
            answered.expect("answered");
        }
        // `/b` has no slot (one class at most): its very first call goes with the peer's
        // own learned window, so it is hedged at the peer's p98 (10 ms).
        let answered = svc.clone().oneshot(get("/b", Some(20))).await;
        answered.expect("answered");
        assert_eq!(sent(), 1, "a copy from the first call");
    }
}
