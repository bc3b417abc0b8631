//! The layer under `tower::retry`, on tokio's paused clock: a `Deadline::at` is one budget
//! for every attempt (each attempt is told what is left, none starts past it); refusals and
//! silence are retried at another peer, and a refusal never reaches the inner service; a
//! retried request never inherits the interrupt of the attempt before it.
#![cfg(feature = "http")]

use crate::support;

use std::future::Ready;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, Uri};
use tokio::time::Instant;
use tower::retry::{Policy, Retry};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::propagate::parse_grpc_timeout;
use tower_adaptive_timeout::{
    AdaptiveTimeoutLayer, Deadline, Interrupt, Interrupted, PeerState, Propagation, Reason,
    TimeoutPolicy,
};

use support::ms;
use support::requests::{get, PeerKeyOf};

/// The retry recipe: a request refused before it was sent, or cut because its peer went
/// silent, is tried at the next peer, up to `attempts` more times. A spent budget is
/// always final; anything else is final unless `every_error`, which retries every other
/// error in place (a deadline too: the budget still bounds it).
#[derive(Clone)]
struct Elsewhere {
    peers: Vec<Uri>,
    attempts: usize,
    every_error: bool,
}

impl Policy<Request<()>, Response<()>, BoxError> for Elsewhere {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        req: &mut Request<()>,
        result: &mut Result<Response<()>, BoxError>,
    ) -> Option<Self::Future> {
        let err = result.as_ref().err()?;
        let interrupted = Interrupted::find(&**err);
        let elsewhere = interrupted.is_some_and(|i| {
            (i.is_refusal() || i.is_silence()) && !matches!(i.reason(), Reason::BudgetSpent)
        });
        let spent = interrupted.is_some_and(|i| matches!(i.reason(), Reason::BudgetSpent));
        let again = !spent && (elsewhere || self.every_error);
        if !again || self.attempts == 0 {
            return None;
        }
        self.attempts -= 1;
        if elsewhere && !self.peers.is_empty() {
            let at = self.peers.iter().position(|p| p == req.uri()).unwrap_or(0);
            *req.uri_mut() = self.peers[(at + 1) % self.peers.len()].clone();
        }
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, req: &Request<()>) -> Option<Request<()>> {
        let mut clone = Request::new(());
        *clone.uri_mut() = req.uri().clone();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

/// What reached the inner service: the URI, when, and the `grpc-timeout` it carried.
type Log = Arc<Mutex<Vec<(Uri, Instant, Option<Duration>)>>>;

/// Peers by host: `busy` fails after 100ms with an error of its own, `slow` answers after
/// 1s, `gone` never answers, anything else answers after 10ms.
fn peers(
    log: Log,
) -> impl Service<Request<()>, Response = Response<()>, Error = BoxError, Future: Send> + Clone {
    service_fn(move |req: Request<()>| {
        let budget = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| parse_grpc_timeout(v.as_bytes()).ok());
        log.lock()
            .unwrap()
            .push((req.uri().clone(), Instant::now(), budget));
        let host = req.uri().host().unwrap_or_default().to_owned();
        async move {
            match host.as_str() {
                "busy" => {
                    tokio::time::sleep(ms(100)).await;
                    return Err::<Response<()>, BoxError>("busy, try again".into());
                }
                "slow" => tokio::time::sleep(ms(1000)).await,
                "gone" => std::future::pending::<()>().await,
                _ => tokio::time::sleep(ms(10)).await,
            }
            Ok(Response::new(()))
        }
    })
}

/// The layer (under `timeouts`, `grpc-timeout` propagated) under a retry of `policy`.
fn stack(
    timeouts: TimeoutPolicy,
    policy: Elsewhere,
) -> (
    impl Service<Request<()>, Response = Response<()>, Error = BoxError, Future: Send>
        + Clone
        + Send
        + 'static,
    tower_adaptive_timeout::AdaptiveTimeoutHandle<tower_adaptive_timeout::HttpPeer>,
    Log,
) {
    let layer = AdaptiveTimeoutLayer::http()
        .policy(timeouts)
        .propagation(Propagation::grpc())
        .build()
        .unwrap();
    let handle = layer.handle();
    let log = Log::default();
    (
        Retry::new(policy, layer.layer(peers(log.clone()))),
        handle,
        log,
    )
}

/// The default policy with a cold start of `cold_start`.
fn cold(cold_start: Duration) -> TimeoutPolicy {
    TimeoutPolicy::default().cold_start(cold_start)
}

fn policy(peers: &[&str], attempts: usize, every_error: bool) -> Elsewhere {
    Elsewhere {
        peers: peers.iter().map(|p| p.parse().unwrap()).collect(),
        attempts,
        every_error,
    }
}

#[tokio::test(start_paused = true)]
async fn a_point_in_time_is_one_budget_for_every_attempt() {
    let (svc, _, log) = stack(cold(ms(10_000)), policy(&[], 5, true));
    let start = Instant::now();
    let mut req = get("http://busy:1/");
    req.extensions_mut().insert(Deadline::at(start + ms(300)));
    let err = svc.clone().oneshot(req).await.unwrap_err();
    // Three attempts were sent, each told what was left (the third ran out at the
    // deadline); the fourth would have started at the deadline and was refused before it
    // reached the peer.
    let budgets: Vec<_> = log.lock().unwrap().iter().map(|e| e.2).collect();
    assert_eq!(budgets, [Some(ms(300)), Some(ms(200)), Some(ms(100))]);
    let err = err.downcast_ref::<Interrupted>().expect("an Interrupted");
    assert_eq!(err.reason(), &Reason::BudgetSpent);
    assert!(!err.was_sent() && err.is_timeout());
    assert_eq!(Instant::now() - start, ms(300));

    // A duration counts anew per attempt: two retries of a slow call take 300ms each
    // (silence detection off, so the misses do not silence the peer).
    let timeouts = TimeoutPolicy::default().silent_after_misses(0);
    let (svc, _, log) = stack(timeouts, policy(&[], 2, true));
    let mut req = get("http://slow:1/");
    req.extensions_mut().insert(Deadline(ms(300)));
    let start = Instant::now();
    let err = svc.oneshot(req).await.unwrap_err();
    assert!(Interrupted::find(&*err).unwrap().is_timeout());
    let budgets: Vec<_> = log.lock().unwrap().iter().map(|e| e.2).collect();
    assert_eq!(budgets, [Some(ms(300)); 3]);
    assert_eq!(Instant::now() - start, ms(900));
}

#[tokio::test(start_paused = true)]
async fn refusals_and_silence_are_retried_at_another_peer() {
    let (svc, handle, log) = stack(
        cold(ms(200)),
        policy(&["http://gone:1/", "http://b:1/"], 2, false),
    );
    // Two calls in flight to `gone` run out their deadlines: it is silent, and the second
    // of them was cut in flight (sent), then retried at `b`.
    let first = tokio::spawn(svc.clone().oneshot(get("http://gone:1/")));
    tokio::time::sleep(ms(1)).await;
    let second = svc.clone().oneshot(get("http://gone:1/")).await;
    assert!(first.await.unwrap().is_err(), "a deadline is not retried");
    assert!(second.is_ok(), "the silenced call was retried at b");
    let gone = get("http://gone:1/").peer_key();
    assert_eq!(handle.peer(&gone).unwrap().state, PeerState::Silent);

    // A new call to `gone` is refused without being sent, and answered by `b`.
    log.lock().unwrap().clear();
    svc.clone().oneshot(get("http://gone:1/")).await.unwrap();
    let hosts: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.0.to_string())
        .collect();
    assert_eq!(hosts, ["http://b:1/"]);
    assert_eq!(handle.peer(&gone).unwrap().fail_fast, 1);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_says_it_was_never_sent() {
    let (svc, _, log) = stack(cold(ms(200)), policy(&[], 0, false));
    let mut spent = get("http://b:1/");
    spent.extensions_mut().insert(Deadline::at(Instant::now()));
    let err = svc.clone().oneshot(spent).await.unwrap_err();
    let err = Interrupted::find(&*err).unwrap();
    assert!(!err.was_sent() && err.is_refusal());
    assert!(
        err.to_string().starts_with("call to http://b:1 refused: "),
        "{err}"
    );
    assert!(log.lock().unwrap().is_empty());

    let cut = svc.oneshot(get("http://slow:1/")).await.unwrap_err();
    let cut = Interrupted::find(&*cut).unwrap();
    assert!(cut.was_sent() && cut.is_timeout() && !cut.is_refusal());
}

#[tokio::test(start_paused = true)]
async fn a_retried_request_does_not_inherit_a_fired_token() {
    let (svc, _, log) = stack(
        cold(ms(200)),
        policy(&["http://gone:1/", "http://b:1/"], 2, false),
    );
    // `gone` goes silent with the caller's token in both calls; the layer fires each
    // call's token as the call ends.
    let caller = Interrupt::new();
    let mut calls = Vec::new();
    for _ in 0..2 {
        let mut req = get("http://gone:1/");
        req.extensions_mut().insert(caller.clone());
        calls.push(tokio::spawn(svc.clone().oneshot(req)));
        tokio::time::sleep(ms(1)).await;
    }
    for call in calls {
        let _ = call.await.unwrap();
    }
    // The silenced attempt is retried at `b` with the caller's token, and answered.
    let b_calls = log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.0.host() == Some("b"))
        .count();
    assert_eq!(b_calls, 1);
    assert!(!caller.is_interrupted(), "the caller did not give up");
}
