//! Stragglers and silence: a call past its deadline on a peer that still answers other calls
//! is held (a lost packet, a slow route) up to its straggler cap, while a peer that answers
//! nothing is still cut a deadline after its last answer; `min_silence` keeps the calls of
//! a short stall of the whole host, at the cost of detecting a silence that much later, and
//! a host that stalled once learns a floor of its own that keeps its next stalls' calls.
//! On tokio's paused clock.

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutLayer, DeadlineSource, PeerState, Reason, TimeoutPolicy,
};

use crate::real_networks::{callers, link_callers, over_link, LinkSvc};
use support::ms;
use support::peers::{rig, Rig, P};

/// A rig under `policy` whose `P::A` answers 8 callers and has learned its quantile.
async fn busy(policy: TimeoutPolicy) -> (Rig, Arc<AtomicBool>, JoinSet<()>, Duration) {
    let rig = rig(policy);
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    callers(&rig, 8, &stop, &mut set);
    tokio::time::sleep(ms(20_000)).await;
    let (deadline, source) = rig.handle.deadline(&P::A).expect("tracked");
    assert_eq!(source, DeadlineSource::Quantile);
    assert!(deadline < ms(100), "{deadline:?}");
    (rig, stop, set, deadline)
}

#[tokio::test(start_paused = true)]
async fn a_straggler_on_a_peer_that_answers_others_is_held_to_its_cap_not_cut() {
    let (rig, stop, set, deadline) = busy(TimeoutPolicy::default()).await;
    // A lost packet and its retransmission: 200 ms, then 600 ms, five times the deadline
    // and more, while the other callers' answers keep coming.
    for delay in [ms(200), ms(600)] {
        assert_eq!(rig.call(P::A, delay).await.ok(), Some(P::A), "{delay:?}");
    }
    // Past the cap (`cold_start`, 1 s, above 2 deadlines) it is cut all the same.
    let start = Instant::now();
    let cut = rig.call(P::A, ms(1_500)).await;
    let waited = Instant::now() - start;
    let e = support::interrupted(&cut);
    assert!(matches!(e.reason(), Reason::DeadlineExceeded { .. }), "{e}");
    assert!(
        waited >= ms(1_000) && waited < ms(1_010),
        "{waited:?}, {deadline:?}"
    );
    assert_eq!(rig.state(P::A), PeerState::Healthy);
    stop.store(true, Ordering::Relaxed);
    set.join_all().await;
}

#[tokio::test(start_paused = true)]
async fn a_held_straggler_is_cut_by_silence_a_deadline_after_the_peer_stopped_answering() {
    let (rig, stop, set, deadline) = busy(TimeoutPolicy::default()).await;
    let mut straggler = JoinSet::new();
    rig.spawn_delay(&mut straggler, P::A, ms(5_000));
    tokio::time::sleep(deadline + ms(20)).await;
    // Held past its deadline: the peer answers the other callers.
    assert!(straggler.try_join_next().is_none());
    let silent_from = Instant::now();
    rig.peers.silence(P::A, true);
    let (result, ended) = straggler.join_next().await.expect("spawned").expect("ran");
    let e = support::interrupted(&result);
    // Its own deadline after the peer's last answer (or the silence, if declared first).
    assert!(
        matches!(
            e.reason(),
            Reason::DeadlineExceeded { .. } | Reason::PeerSilent { .. }
        ),
        "{e}"
    );
    // The last answer sent before the silence comes up to 16 ms after it.
    let after = ended - silent_from;
    assert!(
        after <= deadline + ms(17),
        "{after:?}, deadline {deadline:?}"
    );
    stop.store(true, Ordering::Relaxed);
    set.join_all().await;
}

#[tokio::test(start_paused = true)]
async fn a_lone_straggler_is_cut_a_deadline_after_the_last_answer() {
    let rig = rig(TimeoutPolicy::default());
    rig.warm(P::A, ms(10), 200).await;
    let deadline = rig.handle.deadline(&P::A).expect("tracked").0;
    // A long call, then a short one answered after it started: the long one is a
    // straggler until the peer has said nothing for a deadline.
    let mut long = JoinSet::new();
    let start = Instant::now();
    rig.spawn_delay(&mut long, P::A, ms(5_000));
    tokio::time::sleep(ms(1)).await;
    rig.call(P::A, ms(10)).await.expect("answered");
    let last = Instant::now();
    let (result, ended) = long.join_next().await.expect("spawned").expect("ran");
    assert!(result.is_err());
    assert!(ended - start > deadline, "held past its own deadline");
    assert!(
        ended - last <= deadline + ms(1),
        "{:?} after the last answer",
        ended - last
    );
    // Not a miss: the peer answered since it started (misses are calls sent after the
    // peer's last answer, and two of them declare the silence).
    assert_eq!(rig.state(P::A), PeerState::Healthy);
}

/// 8 callers of a host that stalls for 200 ms every 5 s, four times, under `policy`:
/// the calls cut, the deadline and the learned floor on silence then, and how long a real
/// silence then took to cut a call.
async fn stalls(policy: TimeoutPolicy) -> (usize, Duration, Duration, Duration) {
    // A call sent while the host is stalled waits for the stall to end.
    let (host, handle, svc) = over_link(policy);
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    link_callers(&svc, &stop, &mut set);
    tokio::time::sleep(ms(20_000)).await;
    for _ in 0..4 {
        host.cut.send_replace(true);
        tokio::time::sleep(ms(200)).await;
        host.cut.send_replace(false);
        tokio::time::sleep(ms(5_000)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let cut = set.join_all().await.into_iter().sum();
    let deadline = handle.deadline(&1).expect("tracked").0;
    let floor = handle.peer(&1).expect("tracked").learned_silence_floor;
    // Then a silence that does not end: how long its first call waits.
    host.cut.send_replace(true);
    let start = Instant::now();
    assert!(svc.oneshot(ms(10)).await.is_err());
    (cut, deadline, floor, Instant::now() - start)
}

#[tokio::test(start_paused = true)]
async fn a_floor_on_silence_longer_than_a_cpu_stall_keeps_its_calls_and_still_cuts_a_silence() {
    let (cut, deadline, learned, waited) = stalls(TimeoutPolicy::default()).await;
    assert!(
        cut > 0,
        "a first 200 ms stall looks like silence to a {deadline:?} deadline"
    );
    // At the defaults the host learned a floor from its first stall, which held the calls
    // of the next ones; their answers are in the window, so the deadline learned them too.
    // A silence is cut at the longer of the two.
    let quiet = deadline.max(learned);
    assert!(
        waited >= quiet && waited <= quiet + ms(1),
        "{waited:?}, {deadline:?}, learned {learned:?}"
    );
    let floor = TimeoutPolicy::default().min_silence(ms(350));
    let (cut, deadline, learned, waited) = stalls(floor).await;
    assert_eq!(
        cut, 0,
        "no call of a 200 ms stall is cut under a 350 ms floor"
    );
    // The stalls' answers are in the window: the deadline learned them. The stalls the
    // floor held are learned too, shorter than it.
    assert!(learned < ms(350), "{learned:?}");
    let quiet = deadline.max(ms(350));
    assert!(
        waited >= quiet && waited <= quiet + ms(1),
        "{waited:?}, {deadline:?}"
    );
}

/// 8 callers of the link under `svc` until `stop`, adding each call cut to `cut`.
fn counted_callers(svc: &LinkSvc, stop: &Arc<AtomicBool>, cut: &Arc<AtomicUsize>) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for caller in 0..8u64 {
        let (svc, stop, cut) = (svc.clone(), stop.clone(), cut.clone());
        set.spawn(async move {
            let mut i = caller;
            while !stop.load(Ordering::Relaxed) {
                i = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                if svc.clone().oneshot(ms(8 + (i >> 33) % 9)).await.is_err() {
                    cut.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(ms(10)).await;
            }
        });
    }
    set
}

#[tokio::test(start_paused = true)]
async fn at_the_defaults_a_host_that_stalled_keeps_the_calls_of_its_next_stalls_and_still_cuts_a_silence(
) {
    let policy = TimeoutPolicy::default();
    let (host, handle, svc) = over_link(policy.clone());
    let (stop, cut) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let set = counted_callers(&svc, &stop, &cut);
    tokio::time::sleep(ms(20_000)).await;
    let deadline = handle.deadline(&1).expect("tracked").0;
    assert!(deadline < ms(100), "{deadline:?}");
    // Four 200 ms stalls of the whole host, 5 s apart: what each cut.
    let mut per_stall = Vec::new();
    for _ in 0..4 {
        let before = cut.load(Ordering::Relaxed);
        host.cut.send_replace(true);
        tokio::time::sleep(ms(200)).await;
        host.cut.send_replace(false);
        tokio::time::sleep(ms(5_000)).await;
        per_stall.push(cut.load(Ordering::Relaxed) - before);
    }
    // The first looks like a silence (calls cut, the host readmitted by a probe); the
    // host learned it, and the next ones cut nothing.
    assert!(per_stall[0] > 0, "{per_stall:?}");
    assert_eq!(per_stall[1..], [0, 0, 0], "{per_stall:?}");
    let peer = handle.peer(&1).expect("tracked");
    let floor = peer.learned_silence_floor;
    assert!(floor > ms(200) && floor <= policy.cold_start, "{floor:?}");
    assert!(peer.held_through_stalls > 0, "{peer:?}");
    stop.store(true, Ordering::Relaxed);
    set.join_all().await;
    // A real silence: its call is cut once the host said nothing for the learned floor,
    // within `cold_start`, and the host is declared silent. The answers the floor held
    // waited out the stalls: they are not the host's latency, and left its deadline.
    host.cut.send_replace(true);
    let peer = handle.peer(&1).expect("tracked");
    assert!(peer.deadline < ms(100), "{peer:?}");
    let quiet = peer.learned_silence_floor;
    assert!(quiet <= policy.cold_start, "{peer:?}");
    let start = Instant::now();
    assert!(svc.clone().oneshot(ms(10)).await.is_err());
    let waited = Instant::now() - start;
    assert!(
        waited >= quiet && waited <= quiet + ms(1),
        "{waited:?}, {peer:?}"
    );
    assert!(svc.oneshot(ms(10)).await.is_err());
    assert_eq!(handle.peer(&1).expect("tracked").state, PeerState::Silent);
}

#[test]
fn min_silence_is_refused_above_max_and_a_clear_error_for_duration_max() {
    assert!(TimeoutPolicy::default()
        .min_silence(Duration::ZERO)
        .validate()
        .is_ok());
    for bad in [ms(30_001), Duration::MAX] {
        let e = TimeoutPolicy::default()
            .min_silence(bad)
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), "min_silence", "{e}");
    }
    let e = AdaptiveTimeoutLayer::builder((|_: &u8| 1u8) as fn(&u8) -> u8)
        .policy(TimeoutPolicy::default().min_silence(Duration::MAX))
        .build();
    let Err(e) = e else {
        panic!("min_silence(Duration::MAX) built a layer")
    };
    assert!(e.to_string().contains("min_silence"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_straggler_is_not_held_past_its_callers_own_deadline() {
    use tower_adaptive_timeout::Deadline;
    // One peer: `x-delay` milliseconds, else 8-16 ms.
    let peer = tower::service_fn(|req: http::Request<()>| async move {
        let delay = req.headers().get("x-delay").and_then(|v| v.to_str().ok());
        let delay = delay.and_then(|v| v.parse().ok()).unwrap_or(8);
        tokio::time::sleep(ms(delay)).await;
        Ok::<_, std::convert::Infallible>(http::Response::new(()))
    });
    let layer = AdaptiveTimeoutLayer::http().build().unwrap();
    let svc = layer.layer(peer);
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    for caller in 0..8u64 {
        let (svc, stop) = (svc.clone(), stop.clone());
        set.spawn(async move {
            let mut i = caller;
            while !stop.load(Ordering::Relaxed) {
                i = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let delay = (8 + (i >> 33) % 9).to_string();
                let req = http::Request::get("http://a:1/").header("x-delay", delay);
                let _ = svc.clone().oneshot(req.body(()).unwrap()).await;
                tokio::time::sleep(ms(10)).await;
            }
        });
    }
    tokio::time::sleep(ms(20_000)).await;
    // The peer's deadline is tens of milliseconds; the caller allows 300 ms, the cap 1 s.
    let req = http::Request::get("http://a:1/").header("x-delay", "5000");
    let mut req = req.body(()).unwrap();
    req.extensions_mut().insert(Deadline(ms(300)));
    let start = Instant::now();
    let cut = svc.clone().oneshot(req).await;
    assert!(cut.is_err());
    assert_eq!(Instant::now() - start, ms(300));
    stop.store(true, Ordering::Relaxed);
    set.join_all().await;
}
