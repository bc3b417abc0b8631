//! Calls that never answer among calls that do (a hung worker behind a peer), on tokio's
//! paused clock: a hang is a censored sample like a slow answer, but with no answer ever
//! seen past a deadline it raises the deadline no further than `cold_start`, so the hangs'
//! waits do not climb to `max`.

use std::time::Duration;

use tokio::time::{sleep, Instant};
use tower::util::BoxCloneService;
use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, TimeoutPolicy};

use crate::support::ms;

/// `(route, latency in ms)`; `u64::MAX`: never answered. Route 1 is the report class.
type Req = (u8, u64);
type Svc = BoxCloneService<Req, (), BoxError>;

fn stack(max_classes: usize) -> Svc {
    let layer = AdaptiveTimeoutLayer::builder(|_: &Req| 1u32)
        .latency_class(|r: &Req| (r.0 == 1).then_some("report"))
        .max_classes(max_classes)
        .policy(TimeoutPolicy::default())
        .build()
        .unwrap();
    BoxCloneService::new(layer.layer(service_fn(|(_, latency): Req| async move {
        if latency == u64::MAX {
            std::future::pending::<()>().await;
        }
        sleep(ms(latency)).await;
        Ok::<_, BoxError>(())
    })))
}

/// For 600 s, a 500 ms report every 2 s, one in five never answered (with `lookups`,
/// eight callers of 10 ms lookups beside). Returns how long each hung report waited and
/// how many answered reports were cut.
async fn flaky_reports(svc: Svc, lookups: bool) -> (Vec<Duration>, usize) {
    let t0 = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..if lookups { 8 } else { 0 } {
        let svc = svc.clone();
        callers.push(tokio::spawn(async move {
            while t0.elapsed() < ms(600_000) {
                let _ = svc.clone().oneshot((0, 10)).await;
                sleep(ms(5)).await;
            }
        }));
    }
    let (mut waits, mut cut) = (Vec::new(), 0);
    for i in 1.. {
        if t0.elapsed() >= ms(590_000) {
            break;
        }
        let hang = i % 5 == 0;
        let started = Instant::now();
        let answered = svc
            .clone()
            .oneshot((1, if hang { u64::MAX } else { 500 }))
            .await;
        match (hang, answered) {
            (true, _) => waits.push(started.elapsed()),
            (false, Err(_)) => cut += 1,
            _ => {}
        }
        sleep(ms(2_000)).await;
    }
    for caller in callers {
        caller.await.unwrap();
    }
    (waits, cut)
}

#[tokio::test(start_paused = true)]
async fn hung_calls_among_answered_ones_do_not_raise_the_deadline_to_max() {
    for (max_classes, lookups) in [(8, true), (0, true), (0, false)] {
        let (waits, cut) = flaky_reports(stack(max_classes), lookups).await;
        let longest = waits.iter().max().copied().unwrap_or_default();
        assert!(waits.len() > 30, "{waits:?}");
        assert_eq!(
            cut, 0,
            "classes {max_classes}, lookups {lookups}: {waits:?}"
        );
        assert!(
            longest <= ms(4_100),
            "classes {max_classes}, lookups {lookups}: hung reports waited {waits:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_route_whose_every_call_slows_down_is_still_learned() {
    // Eight callers of 10 ms lookups; a report every 2 s, 500 ms for its first 40, then
    // 5 s for good: most of its calls run out their deadlines, which is a slowdown, not a
    // hang, and the class follows it.
    let svc = stack(8);
    let t0 = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..8 {
        let svc = svc.clone();
        callers.push(tokio::spawn(async move {
            while t0.elapsed() < ms(400_000) {
                let _ = svc.clone().oneshot((0, 10)).await;
                sleep(ms(5)).await;
            }
        }));
    }
    let mut cut = Vec::new();
    for i in 0..80 {
        let latency = if i < 40 { 500 } else { 5_000 };
        cut.push(svc.clone().oneshot((1, latency)).await.is_err());
        sleep(ms(2_000)).await;
    }
    for caller in callers {
        caller.await.unwrap();
    }
    assert!(!cut[..40].contains(&true), "{cut:?}");
    assert!(cut[40], "the first slow report is cut: {cut:?}");
    assert!(
        !cut[60..].contains(&true),
        "learned within 20 reports: {cut:?}"
    );
}
