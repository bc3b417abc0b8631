//! Policy changes at runtime reach exactly the peers they name: an override set or removed
//! touches its own peer only, and a new default leaves peers with an override as they are.
//!
//! A peer's deadline is republished every `recompute_every` samples: between two, its
//! published deadline lags its window. These tests keep a peer in that state and check that
//! a change meant for another peer does not republish it.

use crate::support;

use std::time::Duration;

use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, Builder, TimeoutPolicy};

use support::ms;

/// A call to `peer`, answered after `delay`.
struct Call {
    peer: &'static str,
    delay: Duration,
}

type Key = fn(&Call) -> &'static str;

/// Warm after 10 samples, then republished only every 256.
fn lagging() -> TimeoutPolicy {
    TimeoutPolicy::default()
        .min_samples(10)
        .silent_after_misses(0)
}

fn builder() -> Builder<&'static str, Key> {
    AdaptiveTimeoutLayer::builder((|c: &Call| c.peer) as Key).policy(lagging())
}

fn stack(
    b: Builder<&'static str, Key>,
) -> (
    impl Service<Call, Response = (), Error = BoxError> + Clone,
    AdaptiveTimeoutHandle<&'static str>,
) {
    let inner = service_fn(|c: Call| async move {
        tokio::time::sleep(c.delay).await;
        Ok::<_, BoxError>(())
    });
    support::stack(b, inner)
}

/// One call to `peer`, answered after `delay`.
async fn call<S>(svc: &S, peer: &'static str, delay: Duration)
where
    S: Service<Call, Response = (), Error = BoxError> + Clone,
{
    svc.clone().oneshot(Call { peer, delay }).await.unwrap();
}

/// Warms `peer` on 10ms answers (deadline about 25ms), then answers 50 calls in 20ms
/// without republishing; returns the deadline it still publishes.
async fn lag<S>(
    svc: &S,
    handle: &AdaptiveTimeoutHandle<&'static str>,
    peer: &'static str,
) -> Duration
where
    S: Service<Call, Response = (), Error = BoxError> + Clone,
{
    for delay in [ms(10); 10].into_iter().chain([ms(20); 50]) {
        call(svc, peer, delay).await;
    }
    let (deadline, _) = handle.deadline(&peer).unwrap();
    assert!(
        deadline < ms(30),
        "{deadline:?}: warm on 10ms, not republished since"
    );
    deadline
}

#[tokio::test(start_paused = true)]
async fn an_override_set_or_removed_touches_its_own_peer_only() {
    let (svc, handle) = stack(builder());
    call(&svc, "a", ms(1)).await;
    let b = lag(&svc, &handle, "b").await;

    let special = lagging().cold_start(ms(300));
    handle.set_peer_policy("a", special).unwrap();
    assert_eq!(handle.deadline(&"a").unwrap().0, ms(300));
    assert_eq!(handle.deadline(&"b").unwrap().0, b, "b is not republished");
    handle.set_peer_policy("untracked", lagging()).unwrap();
    assert_eq!(handle.deadline(&"b").unwrap().0, b);

    assert!(handle.remove_peer_policy(&"a"));
    assert_eq!(handle.deadline(&"a").unwrap().0, lagging().cold_start);
    assert_eq!(handle.deadline(&"b").unwrap().0, b, "b is not republished");
}

#[tokio::test(start_paused = true)]
async fn a_new_default_leaves_peers_with_an_override_alone() {
    let (svc, handle) = stack(builder().peer_policy("c", lagging().margin(ms(4))));
    call(&svc, "a", ms(1)).await;
    let c = lag(&svc, &handle, "c").await;

    handle
        .set_default_policy(lagging().cold_start(ms(250)))
        .unwrap();
    assert_eq!(handle.deadline(&"a").unwrap().0, ms(250));
    assert_eq!(handle.deadline(&"c").unwrap().0, c, "c is not republished");
    assert!(handle.peer(&"c").unwrap().explanation.per_peer_policy);
}

#[tokio::test(start_paused = true)]
async fn an_override_per_peer_loads_in_time_independent_of_the_table() {
    const PEERS: u64 = 4_000;
    const OVERRIDES: u64 = 1_000;
    let layer = AdaptiveTimeoutLayer::builder(|k: &u64| *k)
        .policy(support::lean())
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|k: u64| async move { Ok::<_, BoxError>(k) }));
    for key in 0..PEERS {
        svc.clone().oneshot(key).await.unwrap();
    }
    let own = support::lean().cold_start(ms(150));
    let started = std::time::Instant::now();
    for key in 0..OVERRIDES {
        handle.set_peer_policy(key, own.clone()).unwrap();
    }
    let per_call = started.elapsed() / OVERRIDES as u32;
    eprintln!("set_peer_policy with {PEERS} peers tracked: {per_call:?} per call");
    for key in [0, OVERRIDES - 1] {
        assert_eq!(handle.deadline(&key).unwrap().0, ms(150));
    }
    assert_eq!(
        handle.deadline(&OVERRIDES).unwrap().0,
        support::lean().cold_start
    );
}
