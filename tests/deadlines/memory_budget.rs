//! The layer's memory budget on tokio's paused clock: peers made busy one after another,
//! more than the budget holds, never take the histories' bytes past it, and the idlest
//! peer goes first to make room.

use crate::support;

use std::convert::Infallible;
use std::time::Duration;

use tower::{service_fn, Service, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, TimeoutPolicy};

/// Calls to `peer`, each answered at once, with the histories' bytes checked against the
/// budget after every one.
async fn calls<S>(svc: &mut S, handle: &AdaptiveTimeoutHandle<u32>, peer: u32, n: usize)
where
    S: Service<u32, Response = u32, Error = tower::BoxError>,
{
    for _ in 0..n {
        svc.ready().await.unwrap().call(peer).await.unwrap();
        let (used, budget) = handle.memory();
        assert!(
            used <= budget,
            "peer {peer}: {used} bytes held, budget {budget}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn histories_stay_within_the_memory_budget_and_the_idlest_peer_goes_first() {
    let history = TimeoutPolicy::default().max_window_bytes();
    // Room for three busy histories at the default policy.
    let policy = TimeoutPolicy::default().memory_budget(3 * history);
    let (mut svc, handle) = support::stack(
        AdaptiveTimeoutLayer::builder(|k: &u32| *k).policy(policy),
        service_fn(|k: u32| async move { Ok::<_, Infallible>(k) }),
    );
    // Peers 0, 1, 2 fill the budget: 150 answers each, past `min_samples`.
    for peer in 0..3 {
        calls(&mut svc, &handle, peer, 150).await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(handle.memory(), (3 * history, 3 * history));
    // Peer 0 is used again: peer 1 is now the idlest.
    calls(&mut svc, &handle, 0, 1).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    // Peers 3 and 4 get busy: each makes room by letting the idlest peer go.
    for peer in 3..5 {
        calls(&mut svc, &handle, peer, 150).await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let tracked = |peer| handle.peer(&peer).is_some();
    assert_eq!(
        (0..5).map(tracked).collect::<Vec<_>>(),
        [true, false, false, true, true]
    );
    for peer in [0, 3, 4] {
        let snapshot = handle.peer(&peer).unwrap();
        assert!(
            snapshot.window_bytes > TimeoutPolicy::default().history_bytes(),
            "{peer}"
        );
        assert!(
            snapshot.samples >= 100,
            "peer {peer} learns from its window"
        );
    }
    assert_eq!(handle.memory(), (3 * history, 3 * history));
}

#[tokio::test(start_paused = true)]
async fn a_smaller_budget_put_in_force_at_runtime_is_met_by_letting_idle_peers_go() {
    let history = TimeoutPolicy::default().max_window_bytes();
    let (mut svc, handle) = support::stack(
        AdaptiveTimeoutLayer::builder(|k: &u32| *k),
        service_fn(|k: u32| async move { Ok::<_, Infallible>(k) }),
    );
    for peer in 0..4 {
        calls(&mut svc, &handle, peer, 150).await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(handle.memory().0, 4 * history);
    let smaller = TimeoutPolicy::default().memory_budget(2 * history);
    handle.set_default_policy(smaller).unwrap();
    // Room is made at once: the two idlest peers go, before any call.
    assert_eq!(handle.memory(), (2 * history, 2 * history));
    calls(&mut svc, &handle, 3, 1).await;
    assert_eq!(handle.memory(), (2 * history, 2 * history));
    assert!(handle.peer(&0).is_none() && handle.peer(&1).is_none());
    assert!(handle.peer(&2).is_some() && handle.peer(&3).is_some());
}

#[test]
fn a_budget_of_zero_too_small_for_one_history_or_past_1_tib_is_refused_at_build() {
    let one = TimeoutPolicy::default().max_window_bytes();
    let refused = [
        0,
        one - 1,
        tower_adaptive_timeout::MAX_MEMORY_BUDGET + 1,
        usize::MAX,
    ];
    for budget in refused {
        let policy = TimeoutPolicy::default().memory_budget(budget);
        let built = AdaptiveTimeoutLayer::builder(|k: &u32| *k)
            .policy(policy)
            .build();
        let err = built.expect_err("refused");
        assert_eq!(err.field(), "memory_budget", "{budget}: {err}");
    }
    for budget in [one, tower_adaptive_timeout::MAX_MEMORY_BUDGET] {
        let policy = TimeoutPolicy::default().memory_budget(budget);
        assert!(AdaptiveTimeoutLayer::builder(|k: &u32| *k)
            .policy(policy)
            .build()
            .is_ok());
    }
}

/// Eight latency classes, answered in 10, 30, ... 150 ms.
const CLASSES: [&str; 8] = ["/c0", "/c1", "/c2", "/c3", "/c4", "/c5", "/c6", "/c7"];

#[tokio::test(start_paused = true)]
async fn a_lone_peer_wanting_more_histories_than_the_budget_holds_is_not_let_go_by_its_own_calls() {
    let history = TimeoutPolicy::default().min_samples(5).max_window_bytes();
    // Room for three busy histories; the one peer would have nine (its own and 8 classes).
    let policy = TimeoutPolicy::default()
        .min_samples(5)
        .memory_budget(3 * history);
    let (svc, handle) = support::stack(
        AdaptiveTimeoutLayer::builder(|(peer, _): &(u32, usize)| *peer)
            .latency_class(|(_, class): &(u32, usize)| CLASSES.get(*class).copied())
            .policy(policy),
        service_fn(|(_, class): (u32, usize)| async move {
            tokio::time::sleep(Duration::from_millis(10 + 20 * class as u64)).await;
            Ok::<_, Infallible>(class)
        }),
    );
    let mut completed = 0;
    for i in 0..2_000usize {
        svc.clone()
            .oneshot((0, i % CLASSES.len()))
            .await
            .expect("answered");
        let snapshot = handle.peer(&0).expect("still tracked");
        assert!(
            snapshot.completed > completed,
            "call {i}: the peer was let go and started again ({} after {completed})",
            snapshot.completed
        );
        completed = snapshot.completed;
        let (used, budget) = handle.memory();
        assert!(
            used <= budget,
            "call {i}: {used} bytes held, budget {budget}"
        );
    }
    let snapshot = handle.peer(&0).expect("tracked");
    assert_eq!(snapshot.completed, 2_000);
    assert!(snapshot.deadline < Duration::from_secs(1), "{snapshot:?}");
}
