//! A busy peer's sampled answers, on tokio's paused clock: its quantile follows a shift in
//! latency as fast as when every answer is kept, and its snapshot's `samples` stand for its
//! answers. Also what the call whose miss declares a silence is told and counted as.

use crate::support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, Interrupted, Reason, TimeoutPolicy,
};

use support::ms;

/// One peer whose every call is answered after the latency (in microseconds) `latency`
/// holds now; every call has the latency class "c" if `classed` (a class's answers are all
/// kept, never sampled).
fn peer(
    policy: TimeoutPolicy,
    latency: &Arc<AtomicU64>,
    classed: bool,
) -> (
    BoxCloneService<u32, (), BoxError>,
    AdaptiveTimeoutHandle<u32>,
) {
    let latency = latency.clone();
    let inner = service_fn(move |_: u32| {
        let wait = Duration::from_micros(latency.load(Relaxed));
        async move {
            tokio::time::sleep(wait).await;
            Ok::<_, BoxError>(())
        }
    });
    let builder = AdaptiveTimeoutLayer::builder(|peer: &u32| *peer).policy(policy);
    if classed {
        let layer = builder.latency_class(|_: &u32| Some("c")).build().unwrap();
        let handle = layer.handle();
        (BoxCloneService::new(layer.layer(inner)), handle)
    } else {
        let layer = builder.build().unwrap();
        let handle = layer.handle();
        (BoxCloneService::new(layer.layer(inner)), handle)
    }
}

/// Calls `svc` from `callers` loops until `stop`, each call's error's reason counted in
/// `ended` (a refused call as "refused"); every call's result goes through `seen`.
fn drive(
    svc: &BoxCloneService<u32, (), BoxError>,
    callers: usize,
    stop: &Arc<AtomicBool>,
    set: &mut JoinSet<BTreeMap<String, u64>>,
    seen: impl Fn(&Interrupted) + Clone + Send + 'static,
) {
    for _ in 0..callers {
        let (svc, stop, seen) = (svc.clone(), stop.clone(), seen.clone());
        set.spawn(async move {
            let mut ended = BTreeMap::<String, u64>::new();
            while !stop.load(Relaxed) {
                let what = match svc.clone().oneshot(1).await {
                    Ok(()) => "ok".to_string(),
                    Err(err) => {
                        let err = Interrupted::find(&*err).expect("the layer's error");
                        seen(err);
                        let sent = if err.was_sent() { "" } else { " refused" };
                        // Don't spin on refusals: they take no time.
                        tokio::time::sleep(ms(1)).await;
                        format!("{}{sent}", err.reason().as_str())
                    }
                };
                *ended.entry(what).or_default() += 1;
            }
            ended
        });
    }
}

/// Seconds from a shift of the peer's latency from 2 ms to 10 ms (after 3 s at 10 calls
/// in flight, 15,000 answers) until its median's deadline follows (at least twice the new
/// latency); and the snapshot's `samples` over its `completed` at the shift.
async fn follows_a_shift(classed: bool) -> (f64, f64) {
    let latency = Arc::new(AtomicU64::new(2_000));
    let (svc, handle) = peer(TimeoutPolicy::default().quantile(0.5), &latency, classed);
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    drive(&svc, 10, &stop, &mut set, |_| {});
    tokio::time::sleep(ms(3_000)).await;
    let at_shift = handle.peer(&1).unwrap();
    let share = at_shift.samples as f64 / at_shift.completed as f64;
    latency.store(10_000, Relaxed);
    let shift = Instant::now();
    let followed = loop {
        tokio::time::sleep(ms(100)).await;
        let waited = shift.elapsed();
        if handle.peer(&1).unwrap().deadline >= ms(20) || waited >= ms(50_000) {
            break waited.as_secs_f64();
        }
    };
    stop.store(true, Relaxed);
    let mut cut = BTreeMap::new();
    while let Some(ended) = set.join_next().await {
        for (what, n) in ended.unwrap() {
            *cut.entry(what).or_insert(0) += n;
        }
    }
    println!("classed {classed}: followed after {followed} s; samples / answers at the shift {share:.3}; {cut:?}");
    (followed, share)
}

#[tokio::test(start_paused = true)]
async fn a_sampled_peer_follows_a_shift_about_as_fast_as_one_that_keeps_every_answer() {
    // Every call of a class: every answer kept, as the baseline.
    let (every, all) = follows_a_shift(true).await;
    assert!((all - 1.0).abs() < 0.01, "{all}");
    // 15,000 answers in the window: sampled, each kept latency standing for the answers it
    // was drawn from, so `samples` still counts about every answer.
    let (sampled, share) = follows_a_shift(false).await;
    assert!(
        sampled <= 1.5 * every,
        "sampled followed after {sampled} s, every answer kept after {every} s"
    );
    assert!((0.9..1.1).contains(&share), "samples / answers {share}");
}

/// The peer of [`peer`] answers in 2 ms for 1 s, then in 20 ms: `callers` loops calling it
/// all along (all starting together: in lockstep) find it silent. Returns what the callers
/// were told (each reason's count, a refused call's apart), and the `outstanding` count of
/// every sent `PeerSilent` error, after checking that the snapshot counts what the callers
/// were told (and, with the `metrics` feature, so do the metrics: `scrape`, a recorder the
/// peer's series were registered with, is rendered).
async fn declared_silent(callers: usize) -> (BTreeMap<String, u64>, Vec<usize>) {
    let latency = Arc::new(AtomicU64::new(2_000));
    let (svc, handle) = peer(TimeoutPolicy::default(), &latency, false);
    #[cfg(feature = "metrics")]
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    // The peer and its series are made as its first call is, under the local recorder.
    let mut first = svc.clone();
    first.ready().await.unwrap();
    #[cfg(feature = "metrics")]
    let call = metrics::with_local_recorder(&recorder, || first.call(1));
    #[cfg(not(feature = "metrics"))]
    let call = first.call(1);
    call.await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let outstanding = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = {
        let outstanding = outstanding.clone();
        move |err: &Interrupted| {
            if let (Reason::PeerSilent { outstanding: n, .. }, true) =
                (err.reason(), err.was_sent())
            {
                outstanding.lock().unwrap().push(*n);
            }
        }
    };
    let mut set = JoinSet::new();
    drive(&svc, callers, &stop, &mut set, seen);
    tokio::time::sleep(ms(1_000)).await;
    latency.store(20_000, Relaxed);
    tokio::time::sleep(ms(1_000)).await;
    stop.store(true, Relaxed);
    let mut told = BTreeMap::from([("ok".to_string(), 1)]);
    while let Some(ended) = set.join_next().await {
        for (what, n) in ended.unwrap() {
            *told.entry(what).or_insert(0) += n;
        }
    }
    let p = handle.peer(&1).unwrap();
    let counted = BTreeMap::from([
        ("ok", p.completed),
        ("deadline_exceeded", p.deadline_exceeded),
        ("peer_silent", p.silent_interrupts),
        ("peer_silent refused", p.fail_fast),
    ]);
    let told_of = |what: &str| told.get(what).copied().unwrap_or(0);
    println!("{callers} callers were told {told:?}; the snapshot counted {counted:?}");
    for (what, n) in &counted {
        assert_eq!(
            told_of(what),
            *n,
            "{what}: told {told:?}, counted {counted:?}"
        );
    }
    assert_eq!(told.values().sum::<u64>(), counted.values().sum::<u64>());
    #[cfg(feature = "metrics")]
    {
        let text = recorder.handle().render();
        let series = |name: &str| {
            let line = text.lines().find(|l| l.starts_with(name));
            line.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        let timeouts = series("adaptive_timeout_timeouts_total{peer=\"1\"}");
        let silent = "adaptive_timeout_interrupts_total{peer=\"1\",reason=\"peer_silent\"}";
        assert_eq!(
            timeouts,
            Some(told_of("deadline_exceeded") as f64),
            "{text}"
        );
        assert_eq!(
            series(silent),
            Some(told_of("peer_silent") as f64),
            "{text}"
        );
    }
    let outstanding = outstanding.lock().unwrap().clone();
    (told, outstanding)
}

#[tokio::test(start_paused = true)]
async fn the_call_whose_miss_declares_a_silence_is_counted_as_the_silence_it_is_told() {
    // One caller: its first 20 ms call makes the peer suspect, its second declares it
    // silent and is told so: a silent interrupt, not a timeout, with itself outstanding.
    let (told, outstanding) = declared_silent(1).await;
    assert_eq!(told.get("deadline_exceeded"), Some(&1), "{told:?}");
    assert_eq!(told.get("peer_silent"), Some(&1), "{told:?}");
    assert_eq!(outstanding, [1], "the declaring call was in flight");
    // Fifty in lockstep: one call's miss makes the peer suspect (its caller waits a
    // millisecond before calling again); the call that declares the silence and the 48
    // others in flight are all told it, all counted as silent interrupts, all with the
    // 49 outstanding.
    let (told, outstanding) = declared_silent(50).await;
    assert_eq!(told.get("peer_silent"), Some(&49), "{told:?}");
    assert_eq!(outstanding, [49; 49]);
}
