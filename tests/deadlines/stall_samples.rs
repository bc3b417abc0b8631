//! A stall leaves no mark on a peer's deadline: the answers to calls that were
//! outstanding through it waited it out, and are no latency samples, whatever held them
//! (`min_silence`, or the floor the peer learned from its stalls). Otherwise a peer whose
//! host stalls often enough learns its stalls into its deadline, and a silence is then cut
//! only after that inflated deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_adaptive_timeout::{PeerState, TimeoutPolicy};

use crate::real_networks::{link_callers, over_link};
use crate::support::ms;

/// The peer's deadline after 20 s of 8 callers, then after each of `stalls` stalls of the
/// whole host (`stall` long, `every` apart); then how long a real silence took to cut a
/// call, counted from the host's last answer (at most 16 ms before the silence).
async fn stalled(
    policy: TimeoutPolicy,
    stalls: usize,
    stall: Duration,
    every: Duration,
) -> (Duration, Vec<Duration>, Duration) {
    let (host, handle, svc) = over_link(policy);
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    link_callers(&svc, &stop, &mut set);
    // And calls that do not wait for each other, one every 5 ms: some start in a stall's
    // last deadline, and are answered within it.
    let (open, stopped) = (svc.clone(), stop.clone());
    set.spawn(async move {
        let mut calls = JoinSet::new();
        while !stopped.load(Ordering::Relaxed) {
            calls.spawn(open.clone().oneshot(ms(10)));
            tokio::time::sleep(ms(5)).await;
        }
        calls.join_all().await;
        0
    });
    tokio::time::sleep(ms(20_000)).await;
    let deadline = || handle.deadline(&1).expect("tracked").0;
    let before = deadline();
    let mut after = Vec::new();
    for _ in 0..stalls {
        host.cut.send_replace(true);
        tokio::time::sleep(stall).await;
        host.cut.send_replace(false);
        tokio::time::sleep(every - stall).await;
        after.push(deadline());
    }
    stop.store(true, Ordering::Relaxed);
    set.join_all().await;
    host.cut.send_replace(true);
    let start = Instant::now();
    assert!(svc.clone().oneshot(ms(10)).await.is_err());
    let cut = Instant::now() - start;
    assert!(svc.oneshot(ms(10)).await.is_err());
    assert_eq!(handle.peer(&1).expect("tracked").state, PeerState::Silent);
    (before, after, cut)
}

#[tokio::test(start_paused = true)]
async fn with_min_silence_a_stall_it_holds_leaves_the_deadline_and_a_silence_is_cut_at_the_floor() {
    let floor = ms(350);
    let (before, after, cut) = stalled(
        TimeoutPolicy::default().min_silence(floor),
        4,
        ms(300),
        ms(5_000),
    )
    .await;
    for d in &after {
        assert!(
            d.abs_diff(before).as_secs_f64() <= 0.10 * before.as_secs_f64(),
            "deadline {before:?}, after each stall {after:?}"
        );
    }
    // The floor is `min_silence`, or what the peer learned from the stalls (1.25 x 300 ms).
    assert!(cut >= floor && cut <= ms(380), "silence cut after {cut:?}");
}

#[tokio::test(start_paused = true)]
async fn at_the_defaults_frequent_stalls_leave_the_deadline_and_a_silence_is_cut_at_the_learned_floor(
) {
    // A 300 ms stall every 3 s: a tenth of the time, far more than the 0.1% a p99.9
    // deadline leaves out. The first stall is cut as a silence; the peer learns the floor
    // and holds the rest.
    let (before, after, cut) = stalled(TimeoutPolicy::default(), 12, ms(300), ms(3_000)).await;
    for d in &after {
        assert!(
            d.abs_diff(before).as_secs_f64() <= 0.10 * before.as_secs_f64(),
            "deadline {before:?}, after each stall {after:?}"
        );
    }
    assert!(
        cut <= TimeoutPolicy::default().cold_start,
        "silence cut after {cut:?}"
    );
}
