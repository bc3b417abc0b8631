//! Cooperative tokens with `http::Request`s, on tokio's paused clock: the layer's token
//! reaches code deeper in the chain and stops it at its next step with the layer's own
//! reason; a token fired by hand ends one call only.

use crate::support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Request, Response};
use tokio::sync::oneshot;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutLayer, Chain, Interrupt, Interrupted, Reason, TimeoutPolicy,
};

use support::interrupted;
use support::ms;
use support::requests::{get, PeerKeyOf};

/// Where the chain reports how many steps it finished and how it was stopped.
type Report = Arc<std::sync::Mutex<Option<oneshot::Sender<(u32, Interrupted)>>>>;

/// An inner service that runs a three-step chain of 100ms steps under the request's token,
/// reports how the chain ended, and never answers itself.
fn chain_runner(
    report: Report,
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Clone {
    service_fn(move |req: Request<()>| {
        let token = req.extensions().get::<Interrupt>().cloned();
        let report = report.lock().unwrap().take();
        async move {
            let token = token.expect("the layer put a token in the request");
            tokio::spawn(async move {
                let mut chain = Chain::new(token);
                for _ in 0..3 {
                    if let Err(err) = chain.step(tokio::time::sleep(ms(100))).await {
                        let _ = report.unwrap().send((chain.steps_done(), err));
                        return;
                    }
                }
            });
            std::future::pending::<()>().await;
            Ok(Response::new(()))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn the_layers_interrupt_stops_the_chain_at_its_next_step() {
    let (tx, rx) = oneshot::channel();
    let inner = chain_runner(Arc::new(std::sync::Mutex::new(Some(tx))));
    let layer = AdaptiveTimeoutLayer::http()
        .policy(TimeoutPolicy::default().cold_start(ms(150)))
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    let err = interrupted(svc.oneshot(get("http://10.0.0.7:9000/work")).await);
    assert_eq!(err.deadline(), Some(ms(150)));
    let (steps, chain_err) = rx.await.unwrap();
    assert_eq!(
        steps, 1,
        "the first 100ms step finished, the second was cut"
    );
    assert_eq!(
        chain_err.reason(),
        err.reason(),
        "the same reason reaches the chain"
    );
    assert_eq!(chain_err.peer(), "http://10.0.0.7:9000");
    assert!(chain_err
        .recognized_at()
        .file()
        .ends_with("interrupt_tokens.rs"));
}

#[tokio::test(start_paused = true)]
async fn a_token_fired_by_hand_ends_that_call_only() {
    let layer = AdaptiveTimeoutLayer::http().build().unwrap();
    let handle = layer.handle();
    let inner = service_fn(|_: Request<()>| async {
        tokio::time::sleep(ms(200)).await;
        Ok::<_, Infallible>(Response::new(()))
    });
    let svc = layer.layer(inner);
    let token = Interrupt::new();
    let mut mine = get("http://a:1/");
    mine.extensions_mut().insert(token.clone());
    let (mine, other) = (svc.clone().oneshot(mine), svc.oneshot(get("http://a:1/")));
    let fire = async {
        tokio::time::sleep(ms(50)).await;
        let line = line!() + 1;
        assert!(token.interrupt("user cancelled"));
        line
    };
    let (mine, other, line) = tokio::join!(mine, other, fire);
    let err = interrupted(mine);
    assert_eq!(err.reason(), &Reason::Manual("user cancelled".into()));
    assert_eq!(err.fired_at().line(), line);
    assert!(err.elapsed() < ms(60));
    assert!(
        other.is_ok(),
        "the other call to the same peer is untouched"
    );
    let snap = handle.peer(&get("http://a:1/").peer_key()).unwrap();
    assert_eq!((snap.manual_interrupts, snap.completed), (1, 1));
    assert!(!token.interrupt("again"), "the first reason stands");
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_token_already_fired_never_reaches_the_inner_service() {
    let layer = AdaptiveTimeoutLayer::http().build().unwrap();
    let handle = layer.handle();
    let reached = Arc::new(AtomicUsize::new(0));
    let seen = reached.clone();
    let svc = layer.layer(service_fn(move |_: Request<()>| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(())) }
    }));
    svc.clone().oneshot(get("http://a:1/")).await.unwrap();

    let token = Interrupt::new();
    let line = line!() + 1;
    token.interrupt("caller gave up");
    let mut req = get("http://a:1/");
    req.extensions_mut().insert(token.clone());
    let err = interrupted(svc.clone().oneshot(req).await);
    assert_eq!(err.reason(), &Reason::Manual("caller gave up".into()));
    assert_eq!((err.fired_at().line(), err.peer()), (line, "http://a:1"));
    assert_eq!(err.elapsed(), ms(0));
    assert_eq!(
        reached.load(Ordering::SeqCst),
        1,
        "refused before the inner service"
    );
    let snap = handle.peer(&get("http://a:1/").peer_key()).unwrap();
    assert_eq!(
        (snap.in_flight, snap.completed, snap.manual_interrupts),
        (0, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_shared_by_calls_to_several_peers_ends_only_the_call_cut() {
    let layer = AdaptiveTimeoutLayer::http()
        .policy(TimeoutPolicy::default().cold_start(ms(300)))
        .peer_policy(
            "http://hung:1".parse().unwrap(),
            TimeoutPolicy::default().cold_start(ms(100)),
        )
        .build()
        .unwrap();
    let handle = layer.handle();
    // `hung` never answers; `slow` answers after 200ms.
    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        if req.uri().host() == Some("hung") {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(ms(200)).await;
        Ok::<_, Infallible>(Response::new(()))
    }));
    let caller = Interrupt::new();
    let with_token = |uri| {
        let mut req = get(uri);
        req.extensions_mut().insert(caller.clone());
        req
    };
    let (hung, slow) = tokio::join!(
        svc.clone().oneshot(with_token("http://hung:1/")),
        svc.clone().oneshot(with_token("http://slow:1/")),
    );
    assert_eq!(interrupted(hung).deadline(), Some(ms(100)));
    assert!(slow.is_ok(), "{:?}", slow.err());
    assert!(
        !caller.is_interrupted(),
        "the layer fires the call's own token only"
    );
    let snap = handle.peer(&get("http://slow:1/").peer_key()).unwrap();
    assert_eq!((snap.completed, snap.manual_interrupts), (1, 0));
    // The caller's token goes on serving: a retry with it is not refused.
    svc.oneshot(with_token("http://slow:1/")).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_silence_reaching_a_call_through_its_callers_token_is_not_its_peers() {
    let layer = AdaptiveTimeoutLayer::http()
        .peer_policy(
            "http://hung:1".parse().unwrap(),
            TimeoutPolicy::default()
                .cold_start(ms(100))
                .silent_after_misses(1),
        )
        .build()
        .unwrap();
    let handle = layer.handle();
    // Keeps each call's own token, as work below the layer sees it; never answers.
    let below = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = below.clone();
    let svc = layer.layer(service_fn(move |req: Request<()>| {
        seen.lock()
            .unwrap()
            .extend(req.extensions().get::<Interrupt>().cloned());
        std::future::pending::<Result<Response<()>, Infallible>>()
    }));
    // The first call's own token is the caller's token of a second call, to another peer
    // (work that calls on from inside the first call): the first call's peer goes silent.
    let first = tokio::spawn(svc.clone().oneshot(get("http://hung:1/")));
    tokio::task::yield_now().await;
    let mut second = get("http://other:1/");
    let first_own = below.lock().unwrap()[0].clone();
    second.extensions_mut().insert(first_own);
    let second = interrupted(svc.oneshot(second).await);
    let first = interrupted(first.await.unwrap());
    assert_eq!(first.reason().as_str(), "peer_silent");
    assert_eq!(
        second.reason(),
        first.reason(),
        "the caller's reason reaches it"
    );
    let other = handle.peer(&get("http://other:1/").peer_key()).unwrap();
    assert_eq!(
        (other.silent_interrupts, other.manual_interrupts),
        (0, 1),
        "ended by its caller, not by its own peer's silence"
    );
    assert_eq!(other.state, tower_adaptive_timeout::PeerState::Healthy);
}
