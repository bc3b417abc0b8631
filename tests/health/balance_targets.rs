//! What a silent balanced endpoint costs the callers of `tower::balance::p2c`, on tokio's
//! paused clock: with background probes one miss holds the endpoint out (a lone caller
//! loses the call in flight, not a second one), and README's `tower::retry` recipe, which
//! retries what never got an answer (refused, cut by silence or by the peer's own
//! deadline), then loses none.
#![cfg(feature = "balance")]

use crate::support;

use std::future::{poll_fn, ready, Ready};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::retry::Policy;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutLayer, DeadlineSource, Interrupted, Reason, TimeoutPolicy,
};

use support::ms;

type Client = BoxCloneSyncService<u64, (), io::Error>;

/// A server that answers in 50 ms, or never while `silent` is set.
fn server(silent: Arc<AtomicBool>) -> Client {
    Client::new(service_fn(move |_: u64| {
        let silent = silent.clone();
        async move {
            while silent.load(Relaxed) {
                tokio::time::sleep(ms(1)).await;
            }
            tokio::time::sleep(ms(50)).await;
            Ok(())
        }
    }))
}

fn layer() -> AdaptiveTimeoutLayer<u64, fn(&u64) -> u64> {
    AdaptiveTimeoutLayer::builder((|_: &u64| 0) as fn(&u64) -> u64)
        .policy(TimeoutPolicy::default().min_samples(20))
        .build()
        .unwrap()
}

/// README's retry recipe's rule: what never got an answer (refused before it was sent
/// unless the caller's budget is spent, cut by its peer's silence, or by the peer's own
/// deadline rather than the caller's) is tried again, at most `left` more times.
#[derive(Clone)]
struct Elsewhere {
    left: usize,
}

impl<T> Policy<u64, T, BoxError> for Elsewhere {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u64, result: &mut Result<T, BoxError>) -> Option<Ready<()>> {
        let err = Interrupted::find(&**result.as_ref().err()?)?;
        let unanswered = match err.reason() {
            Reason::BudgetSpent => false,
            Reason::DeadlineExceeded { explanation, .. } => {
                explanation.source != DeadlineSource::Caller
            }
            _ => err.is_refusal() || err.is_silence(),
        };
        if !unanswered || self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(ready(()))
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

#[tokio::test(start_paused = true)]
async fn with_background_probes_one_miss_holds_the_endpoint_out() {
    let silent = Arc::new(AtomicBool::new(false));
    let probe = server(silent.clone());
    let layer = layer();
    // A second endpoint, so that the ejection cap (half of them) lets one be held out.
    let _other = layer.for_endpoint(1).layer(server(Arc::default()));
    let mut endpoint = layer
        .for_endpoint(0)
        .probe_with(move || probe.clone().oneshot(0))
        .layer(server(silent.clone()));
    for n in 0..30 {
        endpoint.ready().await.unwrap().call(n).await.unwrap();
    }
    silent.store(true, Relaxed);
    let missed = endpoint.ready().await.unwrap().call(30).await;
    let err = Interrupted::find(&*missed.unwrap_err()).cloned().unwrap();
    assert!(err.is_timeout(), "the call in flight ran out: {err}");
    // No second caller's call goes: the background probe confirms the silence.
    let ready = poll_fn(|cx| Poll::Ready(endpoint.poll_ready(cx).is_ready())).await;
    assert!(!ready, "held out after one miss");
    assert!(endpoint.is_held_out());
    // And it comes back without a caller's call once its peer does.
    silent.store(false, Relaxed);
    tokio::time::timeout(Duration::from_secs(5), endpoint.ready())
        .await
        .expect("a background probe brought it back")
        .unwrap();
}

/// One caller (20 ms between calls) through p2c over two endpoints with background probes,
/// one silent from 2 s to 12 s; the calls that failed, with the recipe's retries or not.
async fn lone_caller(retries: usize) -> (u64, usize) {
    let layer = layer();
    let flags: Vec<_> = (0..2).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let endpoints: Vec<_> = (0..2u64)
        .map(|i| {
            let probe = server(flags[i as usize].clone());
            let load = PendingRequests::new(
                server(flags[i as usize].clone()),
                CompleteOnResponse::default(),
            );
            layer
                .for_endpoint(i)
                .probe_with(move || probe.clone().oneshot(0))
                .layer(load)
        })
        .collect();
    let mut balance = Balance::new(ServiceList::new(endpoints));
    let start = Instant::now();
    let (mut calls, mut failed) = (0, 0);
    while start.elapsed() < Duration::from_secs(15) {
        let at = start.elapsed();
        flags[1].store(at >= ms(2_000) && at < ms(12_000), Relaxed);
        let mut policy = Elsewhere { left: retries };
        let mut result = balance.ready().await.unwrap().call(calls).await;
        while policy.retry(&mut 0, &mut result).is_some() {
            result = balance.ready().await.unwrap().call(calls).await;
        }
        (calls, failed) = (calls + 1, failed + usize::from(result.is_err()));
        tokio::time::sleep(ms(20)).await;
    }
    assert!(calls > 150, "{calls} calls");
    (calls, failed)
}

#[tokio::test(start_paused = true)]
async fn a_lone_caller_loses_one_call_to_a_silent_endpoint_and_none_with_the_retry_recipe() {
    let (calls, failed) = lone_caller(0).await;
    assert_eq!(failed, 1, "only the call in flight, of {calls}");
    let (calls, failed) = lone_caller(2).await;
    assert_eq!(failed, 0, "of {calls}, with README's retry recipe");
}
