//! Cooperative tokens and per-call limits with `http::Request`s, on tokio's paused clock:
//! the layer's token reaches code deeper in the chain and stops it at its next step with
//! the layer's own reason; a token fired by hand ends one call only; the `Deadline`
//! extension and propagated budgets cap a call and are written back; a spent budget ends
//! the call before it reaches the inner service.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Request, Response};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::propagate::parse_grpc_timeout;
use tower_adaptive_timeout::{
    AdaptiveTimeoutLayer, Chain, Deadline, DeadlineSource, Interrupt, Interrupted, Propagation,
    Reason, TimeoutPolicy,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

fn interrupted(r: Result<Response<()>, BoxError>) -> Interrupted {
    let err = r.expect_err("the call should have been interrupted");
    err.downcast_ref::<Interrupted>()
        .expect("an Interrupted")
        .clone()
}

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
        .ends_with("tokens_and_budgets.rs"));
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

/// The peer key of an http request, as the layer computes it.
trait PeerKeyOf {
    fn peer_key(&self) -> tower_adaptive_timeout::HttpPeer;
}

impl PeerKeyOf for Request<()> {
    fn peer_key(&self) -> tower_adaptive_timeout::HttpPeer {
        tower_adaptive_timeout::HasPeer::peer(self).unwrap()
    }
}

/// An inner service that answers after 1s with the budget headers it received.
fn header_echo(
    reached: Arc<AtomicUsize>,
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Clone {
    service_fn(move |req: Request<()>| {
        reached.fetch_add(1, Ordering::Relaxed);
        async move {
            tokio::time::sleep(ms(1000)).await;
            let mut resp = Response::new(());
            *resp.headers_mut() = req.headers().clone();
            Ok(resp)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn the_shortest_limit_wins_and_is_propagated() {
    let name = HeaderName::from_static("x-request-timeout-ms");
    let layer = AdaptiveTimeoutLayer::http()
        .policy(TimeoutPolicy::default().cold_start(ms(2000)))
        .propagation(Propagation::grpc().millis_header(name.clone()))
        .build()
        .unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(header_echo(reached.clone()));

    // No limit of its own: the adaptive (cold-start) deadline is written out.
    let resp = svc.clone().oneshot(get("http://b:1/")).await.unwrap();
    let grpc = parse_grpc_timeout(resp.headers()["grpc-timeout"].as_bytes()).unwrap();
    assert_eq!(grpc, ms(2000));
    assert_eq!(resp.headers()[&name], "2000");

    // An incoming budget of 500ms caps the call, which then runs out.
    let capped = Request::get("http://b:1/")
        .header("grpc-timeout", "500m")
        .body(())
        .unwrap();
    let start = Instant::now();
    let err = interrupted(svc.clone().oneshot(capped).await);
    assert_eq!(Instant::now() - start, ms(500));
    let Reason::DeadlineExceeded { explanation, .. } = err.reason() else {
        panic!("{err}")
    };
    assert_eq!(explanation.source, DeadlineSource::Caller);

    // The Deadline extension caps it further; a malformed header is ignored.
    let mut req = Request::get("http://b:1/")
        .header("grpc-timeout", "soon")
        .body(())
        .unwrap();
    req.extensions_mut().insert(Deadline(ms(300)));
    assert_eq!(
        interrupted(svc.clone().oneshot(req).await).deadline(),
        Some(ms(300))
    );

    // A spent budget ends the call before it reaches the inner service.
    let before = reached.load(Ordering::Relaxed);
    let spent = Request::get("http://b:1/")
        .header("grpc-timeout", "0m")
        .body(())
        .unwrap();
    let err = interrupted(svc.oneshot(spent).await);
    assert_eq!(err.reason(), &Reason::BudgetSpent);
    assert_eq!(err.elapsed(), Duration::ZERO);
    assert_eq!(reached.load(Ordering::Relaxed), before);
}

#[tokio::test(start_paused = true)]
async fn caller_limits_neither_teach_the_window_nor_count_as_misses() {
    let layer = AdaptiveTimeoutLayer::http().build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(header_echo(Arc::new(AtomicUsize::new(0))));
    for _ in 0..5 {
        let mut req = get("http://c:1/");
        req.extensions_mut().insert(Deadline(ms(10)));
        interrupted(svc.clone().oneshot(req).await);
    }
    let snap = handle.peer(&get("http://c:1/").peer_key()).unwrap();
    assert_eq!(
        snap.samples, 0,
        "a caller's own limit says nothing about the peer"
    );
    assert_eq!(snap.state, tower_adaptive_timeout::PeerState::Healthy);
    assert_eq!(snap.deadline_exceeded, 5);
}

#[tokio::test(start_paused = true)]
async fn an_inner_error_at_the_propagated_deadline_counts_as_a_miss() {
    let layer = AdaptiveTimeoutLayer::http()
        .policy(TimeoutPolicy::default().cold_start(ms(200)))
        .propagation(Propagation::grpc())
        .build()
        .unwrap();
    let handle = layer.handle();
    let early = layer.layer(service_fn(|_: Request<()>| async {
        Err::<Response<()>, BoxError>("refused".into())
    }));
    // The inner stack enforces the budget it was handed, as tonic's Channel does.
    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        let budget = parse_grpc_timeout(req.headers()["grpc-timeout"].as_bytes()).unwrap();
        tokio::time::sleep(budget).await;
        Err::<Response<()>, BoxError>("timeout expired".into())
    }));
    let err = interrupted(svc.clone().oneshot(get("http://d:1/")).await);
    assert_eq!(err.deadline(), Some(ms(200)));
    let snap = handle.peer(&"http://d:1".parse().unwrap()).unwrap();
    assert_eq!((snap.completed, snap.deadline_exceeded), (0, 1));
    // An error before the deadline is the inner service's own and passes through.
    let err = early.oneshot(get("http://d:1/")).await.unwrap_err();
    assert!(err.downcast_ref::<Interrupted>().is_none(), "{err}");
}
