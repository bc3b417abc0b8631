//! End to end over real TCP on 127.0.0.1: a hyper server, and the hyper-util legacy client
//! under `AdaptiveTimeoutLayer::http()`.
//!
//! Covers: calls succeed and are recorded under their own peer (scheme + authority); a path
//! that never answers is cut with `Interrupted` (`DeadlineExceeded`) at the learned deadline;
//! a `Deadline` extension caps one call; the milliseconds header carries the call's deadline
//! to the server; the call's own `Interrupt` token (a child of the one a caller put in the
//! request) is fired when the layer interrupts the call, the caller's is left alone and its
//! fire reaches the call (and with tokens turned off the caller's is left alone too).
//!
//! Everything runs in real time under a bounded wait. Assertions are structural, with
//! generous upper bounds only (the cold-start deadline a cut must come well before).
#![cfg(feature = "http")]

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use loopback::http_server::{self, get, Client, SEEN_HEADER, TIMEOUT_HEADER};
use loopback::{bounded, Loopback};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_adaptive_timeout::propagate::parse_millis;
use tower_adaptive_timeout::{
    AdaptiveTimeout, AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, ByPeer, Deadline, DeadlineSource,
    HttpPeer, Interrupt, Interrupted, PeerState, Propagation, Reason,
};

use support::e2e::{loopback_policy, LoopbackPeer};

/// Far above any deadline a warmed-up loopback peer gets: a cut must come well before it.
const COLD_START: Duration = Duration::from_secs(5);
/// Samples a peer needs before its deadline follows its latency.
const MIN_SAMPLES: u64 = 10;

type Svc = AdaptiveTimeout<Client, HttpPeer, ByPeer>;

/// The client under a layer built with `propagation`, and the layer's handle. One latency
/// history per server (no classes): `/hang` would otherwise be a route of its own, which
/// starts at the cold start, and these tests cut it at the server's learned deadline
/// (`tests/deadlines/latency_classes.rs` covers classes).
fn client_with(propagation: Propagation, tokens: bool) -> (Svc, AdaptiveTimeoutHandle<HttpPeer>) {
    let layer = AdaptiveTimeoutLayer::http()
        .max_classes(0)
        .policy(loopback_policy(COLD_START, MIN_SAMPLES))
        .propagation(propagation)
        .interrupt_tokens(tokens)
        .build()
        .expect("a valid policy");
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(http_server::client());
    (svc, handle)
}

fn client() -> (Svc, AdaptiveTimeoutHandle<HttpPeer>) {
    client_with(Propagation::none(), true)
}

/// Sends `req` and returns the response's headers, or the layer's error.
async fn send(svc: &Svc, req: http::Request<Empty<Bytes>>) -> Result<http::HeaderMap, BoxError> {
    let response = bounded(svc.clone().oneshot(req)).await?;
    assert!(response.status().is_success(), "{}", response.status());
    Ok(response.headers().clone())
}

/// Makes `n` successful calls to `server`.
async fn warm_up(svc: &Svc, server: &Loopback, n: u64) {
    for _ in 0..n {
        send(svc, get(server.uri("/"))).await.expect("answered");
    }
}

/// The `Interrupted` a call ended with.
fn interrupted(err: &BoxError) -> &Interrupted {
    Interrupted::find(&**err).unwrap_or_else(|| panic!("expected Interrupted, got {err}"))
}

/// A `GET` of the path that never answers, with `deadline` and `token` in its extensions.
fn hang(
    server: &Loopback,
    deadline: Option<Duration>,
    token: Option<&Interrupt>,
) -> http::Request<Empty<Bytes>> {
    let mut req = get(server.uri("/hang"));
    if let Some(d) = deadline {
        req.extensions_mut().insert(Deadline(d));
    }
    if let Some(t) = token {
        req.extensions_mut().insert(t.clone());
    }
    req
}

#[tokio::test]
async fn calls_succeed_and_are_recorded_per_peer() {
    let a = http_server::start(Duration::from_millis(1)).await.unwrap();
    let b = http_server::start(Duration::from_millis(5)).await.unwrap();
    let (svc, handle) = client();
    warm_up(&svc, &a, 12).await;
    warm_up(&svc, &b, 7).await;

    let snapshot = handle.snapshot();
    assert_eq!(snapshot.len(), 2, "{snapshot:#?}");
    for (server, calls) in [(&a, 12), (&b, 7)] {
        let p = handle.peer(&server.peer()).expect("tracked");
        assert_eq!(&*p.peer, format!("http://{}", server.addr()));
        assert_eq!((p.samples, p.completed), (calls, calls), "{p:#?}");
        assert_eq!((p.deadline_exceeded, p.in_flight), (0, 0));
        assert_eq!(p.state, PeerState::Healthy);
        assert!(p.p50 > Duration::ZERO && p.p50 <= p.max, "{p:#?}");
        // Calls back to back: a peer this busy waits for `MIN_SAMPLES` answers.
        let expected = if calls >= MIN_SAMPLES {
            DeadlineSource::Quantile
        } else {
            DeadlineSource::ColdStart
        };
        assert_eq!(p.deadline_source(), expected);
    }
    let b = handle.peer(&b.peer()).unwrap();
    assert!(
        b.p50 >= Duration::from_millis(5),
        "a sleep bounds latency below"
    );
}

#[tokio::test]
async fn a_never_answered_call_is_cut_at_the_learned_deadline() {
    let server = http_server::start(Duration::from_millis(2)).await.unwrap();
    let (svc, handle) = client();
    warm_up(&svc, &server, MIN_SAMPLES + 2).await;
    let (learned, source) = handle.deadline(&server.peer()).expect("tracked");
    assert_eq!(source, DeadlineSource::Quantile);
    assert!(learned < COLD_START, "{learned:?}");

    let started = Instant::now();
    let err = send(&svc, hang(&server, None, None)).await.unwrap_err();
    let waited = started.elapsed();
    let cut = interrupted(&err);
    match cut.reason() {
        Reason::DeadlineExceeded {
            deadline,
            explanation,
        } => {
            assert_eq!(*deadline, learned);
            assert_eq!(explanation.source, DeadlineSource::Quantile);
            // The numbers the deadline came from: computed as the window reached
            // min_samples, not republished since (recompute_every is 5).
            assert_eq!(explanation.samples, MIN_SAMPLES);
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    assert_eq!(cut.peer(), format!("http://{}", server.addr()));
    assert!(cut.elapsed() >= learned, "{cut}");
    assert!(waited >= learned && waited < COLD_START, "{waited:?}");

    let p = handle.peer(&server.peer()).unwrap();
    assert_eq!(p.deadline_exceeded, 1);
    assert_eq!(
        p.samples,
        MIN_SAMPLES + 2,
        "the cut call is a miss: its censored sample waits for the peer's next answer"
    );
    assert_eq!(p.state, PeerState::Suspect);
}

#[tokio::test]
async fn a_deadline_extension_caps_one_call() {
    let server = http_server::start(Duration::from_millis(1)).await.unwrap();
    let (svc, handle) = client();
    let cap = Duration::from_millis(150);
    let started = Instant::now();
    let err = send(&svc, hang(&server, Some(cap), None))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < COLD_START,
        "cut at the cap, not the cold start"
    );
    let cut = interrupted(&err);
    assert_eq!(cut.deadline(), Some(cap));
    let Reason::DeadlineExceeded { explanation, .. } = cut.reason() else {
        panic!("expected DeadlineExceeded, got {cut}");
    };
    assert_eq!(explanation.source, DeadlineSource::Caller);

    // The caller's own deadline says nothing about the peer's latency: no sample. But the
    // peer said nothing in 150ms, more than any answer it gave: a miss, so suspect.
    let p = handle.peer(&server.peer()).unwrap();
    assert_eq!((p.samples, p.state), (0, PeerState::Suspect));
    assert_eq!(p.deadline_source(), DeadlineSource::ColdStart);
    // A cap longer than the peer's deadline changes nothing.
    let mut req = get(server.uri("/"));
    req.extensions_mut().insert(Deadline(COLD_START * 2));
    send(&svc, req).await.expect("answered");
}

#[tokio::test]
async fn the_millis_header_carries_the_deadline_to_the_server() {
    let server = http_server::start(Duration::from_millis(1)).await.unwrap();
    let (svc, handle) = client_with(Propagation::none().millis_header(TIMEOUT_HEADER), true);
    let seen = |headers: &http::HeaderMap| -> Duration {
        let value = headers.get(SEEN_HEADER).expect("the server saw the header");
        parse_millis(value.as_bytes()).expect("a milliseconds budget")
    };

    // Cold start: the server is told the cold-start deadline.
    let cold = seen(&send(&svc, get(server.uri("/"))).await.unwrap());
    assert!(cold <= COLD_START && cold > COLD_START / 2, "{cold:?}");

    // Warmed up: the server is told the learned deadline (in whole milliseconds).
    warm_up(&svc, &server, MIN_SAMPLES).await;
    let (learned, source) = handle.deadline(&server.peer()).unwrap();
    assert_eq!(source, DeadlineSource::Quantile);
    let told = seen(&send(&svc, get(server.uri("/"))).await.unwrap());
    assert!(
        told <= learned && learned - told < Duration::from_millis(1),
        "{told:?} vs {learned:?}"
    );

    // A shorter budget the request already carries, or a Deadline, is what goes on.
    let budget = learned / 2;
    let mut req = get(server.uri("/"));
    let millis = u64::try_from(budget.as_millis()).unwrap();
    req.headers_mut().insert(TIMEOUT_HEADER, millis.into());
    assert_eq!(
        seen(&send(&svc, req).await.unwrap()).as_millis(),
        budget.as_millis()
    );
    let mut req = get(server.uri("/"));
    req.extensions_mut().insert(Deadline(budget));
    assert!(seen(&send(&svc, req).await.unwrap()) <= budget);
}

#[tokio::test]
async fn the_calls_own_token_is_fired_when_the_layer_interrupts_and_the_callers_reaches_it() {
    let server = http_server::start(Duration::from_millis(1)).await.unwrap();
    // The token the request carries past the layer, as the client below it sees it.
    let below = Arc::new(Mutex::new(None));
    let seen = below.clone();
    let svc = ServiceBuilder::new()
        .layer(
            AdaptiveTimeoutLayer::http()
                .policy(loopback_policy(COLD_START, MIN_SAMPLES))
                .build()
                .unwrap(),
        )
        .map_request(move |req: http::Request<Empty<Bytes>>| {
            *seen.lock().unwrap() = req.extensions().get::<Interrupt>().cloned();
            req
        })
        .service(http_server::client());
    let cap = Duration::from_millis(100);

    // A call that is answered leaves the tokens alone.
    let caller = Interrupt::new();
    let mut req = get(server.uri("/"));
    req.extensions_mut().insert(caller.clone());
    bounded(svc.clone().oneshot(req)).await.expect("answered");
    let own = below
        .lock()
        .unwrap()
        .take()
        .expect("a token below the layer");
    assert!(!own.is_interrupted() && !caller.is_interrupted());

    // The layer's interrupt fires the call's own token, not the caller's.
    let err = bounded(svc.clone().oneshot(hang(&server, Some(cap), Some(&caller))))
        .await
        .unwrap_err();
    assert_eq!(interrupted(&err).deadline(), Some(cap));
    let own = below
        .lock()
        .unwrap()
        .take()
        .expect("a token below the layer");
    assert!(
        !caller.is_interrupted(),
        "other calls with the caller's token go on"
    );
    // Work deeper in the chain stops at its next checkpoint, with the same reason.
    let stopped = own.checkpoint().expect_err("the call's token has fired");
    assert_eq!(stopped.reason(), interrupted(&err).reason());
    let woke = bounded(own.cancelled()).await;
    assert_eq!(woke.deadline(), Some(cap));

    // The caller's interrupt reaches the call and the work below it.
    let call = tokio::spawn(bounded(svc.oneshot(hang(&server, None, Some(&caller)))));
    while below.lock().unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    caller.interrupt("the user went away");
    let err = call.await.unwrap().unwrap_err();
    let reason = Reason::Manual("the user went away".into());
    assert_eq!(interrupted(&err).reason(), &reason);
    let own = below.lock().unwrap().take().unwrap();
    assert_eq!(own.checkpoint().unwrap_err().reason(), &reason);
}

#[tokio::test]
async fn with_tokens_off_the_request_token_is_left_alone() {
    let server = http_server::start(Duration::from_millis(1)).await.unwrap();
    let (svc, _handle) = client_with(Propagation::none(), false);
    let token = Interrupt::new();
    let err = send(
        &svc,
        hang(&server, Some(Duration::from_millis(50)), Some(&token)),
    )
    .await
    .unwrap_err();
    assert!(Interrupted::find(&*err).is_some(), "{err}");
    assert!(!token.is_interrupted());
}
