//! The simulated peer of the deadline-learning tests, and the layer over it.

use std::time::Duration;

use tokio::task::JoinSet;
use tower::{service_fn, BoxError, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, DeadlineExplanation, Interrupted, PeerSnapshot,
    Reason, TimeoutPolicy,
};

use crate::support::{self, ms};

/// A call to `peer` that the simulated peer answers after `delay`, or with an error.
#[derive(Clone, Debug)]
pub(super) struct Call {
    pub(super) peer: &'static str,
    pub(super) delay: Duration,
    pub(super) fail: bool,
}

pub(super) fn call(peer: &'static str, delay: Duration) -> Call {
    Call {
        peer,
        delay,
        fail: false,
    }
}

/// The simulated peer: sleeps for the call's delay, then answers with it (or fails).
pub(super) async fn answer(c: Call) -> Result<Duration, BoxError> {
    tokio::time::sleep(c.delay).await;
    if c.fail {
        Err(format!("peer {} refused the call", c.peer).into())
    } else {
        Ok(c.delay)
    }
}

pub(super) type Builder = tower_adaptive_timeout::Builder<&'static str, fn(&Call) -> &'static str>;

pub(super) fn builder(policy: TimeoutPolicy) -> Builder {
    AdaptiveTimeoutLayer::builder((|c: &Call| c.peer) as fn(&Call) -> &'static str).policy(policy)
}

/// The layer's service over the simulated peer, and a handle on it.
pub(super) fn stack(
    b: Builder,
) -> (
    impl Service<Call, Response = Duration, Error = BoxError, Future: Send> + Clone + Send + 'static,
    AdaptiveTimeoutHandle<&'static str>,
) {
    support::stack(b, service_fn(answer))
}

/// A policy that recomputes on every sample, so the published deadline is always current.
/// Silence detection is off: these tests time out calls to one peer again and again to
/// watch its deadline, where a silent peer would fail them fast instead.
pub(super) fn eager() -> TimeoutPolicy {
    TimeoutPolicy::default()
        .recompute_every(1)
        .silent_after_misses(0)
}

/// Makes `n` calls to `peer`, one after another, each answered after `delay`.
pub(super) async fn calls<S>(
    svc: &S,
    peer: &'static str,
    delay: Duration,
    n: usize,
) -> Vec<S::Response>
where
    S: Service<Call, Error = BoxError> + Clone,
{
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            svc.clone()
                .oneshot(call(peer, delay))
                .await
                .expect("answered"),
        );
    }
    out
}

/// Makes `n` calls to `peer` at the same time, each answered after `delay`.
pub(super) async fn burst<S>(svc: &S, peer: &'static str, delay: Duration, n: usize)
where
    S: Service<Call, Response = Duration, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut set = JoinSet::new();
    for _ in 0..n {
        set.spawn(svc.clone().oneshot(call(peer, delay)));
    }
    while let Some(done) = set.join_next().await {
        done.expect("task").expect("answered");
    }
}

/// The error a call ended with, which must be an [`Interrupted`].
pub(super) async fn interrupted<S>(svc: &S, c: Call) -> Interrupted
where
    S: Service<Call, Error = BoxError> + Clone,
    S::Response: std::fmt::Debug,
{
    let err = svc.clone().oneshot(c).await.expect_err("interrupted");
    err.downcast_ref::<Interrupted>()
        .unwrap_or_else(|| panic!("expected Interrupted, got {err}"))
        .clone()
}

/// Why the deadline of a call that ran out had its value.
pub(super) fn explained(e: &Interrupted) -> DeadlineExplanation {
    match e.reason() {
        Reason::DeadlineExceeded { explanation, .. } => (**explanation).clone(),
        other => panic!("unexpected reason {other:?}"),
    }
}

pub(super) fn snapshot(
    handle: &AdaptiveTimeoutHandle<&'static str>,
    peer: &'static str,
) -> PeerSnapshot {
    handle.peer(&peer).expect("peer is tracked")
}

/// Asserts `d` is `expected` up to hdrhistogram's 1% resolution (plus the paused clock's
/// millisecond timer granularity), never below.
pub(super) fn assert_near(d: Duration, expected: Duration) {
    assert!(
        d >= expected && d <= expected * 102 / 100 + ms(1),
        "{d:?} is not close to {expected:?}"
    );
}
