//! Cooperative tokens with `http::Request`s, on tokio's paused clock: the layer's token
//! reaches code deeper in the chain and stops it at its next step with the layer's own
//! reason; a token fired by hand ends one call only.

pub mod support;

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use tokio::sync::oneshot;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutLayer, Chain, Interrupt, Interrupted, Reason, TimeoutPolicy,
};

use support::ms;
use support::requests::{get, interrupted, PeerKeyOf};

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
