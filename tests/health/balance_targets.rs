//! What a silent balanced endpoint costs the callers of `tower::balance::p2c`, on tokio's
//! paused clock and over real sockets: with background probes one miss holds the endpoint
//! out (a lone caller loses the call in flight, not a second one), and README's
//! `tower::retry` recipe, which retries what never got an answer (refused, cut by silence
//! or by the peer's own deadline), then loses none.
#![cfg(feature = "balance")]

use crate::support;

use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use std::net::SocketAddr;

use loopback::{bounded, call_shared, EchoServer, Fault, FaultProxy, LineClient, LineRequest};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, Load, PeakEwma, PendingRequests};
use tower::util::BoxCloneSyncService;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, Interrupted, TimeoutPolicy};

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

/// Whether README's retry recipe tries `result` again: it got no answer.
fn again<T>(result: &Result<T, BoxError>) -> bool {
    let err = result.as_ref().err();
    err.and_then(|e| Interrupted::find(&**e))
        .is_some_and(Interrupted::is_unanswered)
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
    assert!(err.is_unanswered(), "worth trying elsewhere: {err}");
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

#[tokio::test(start_paused = true)]
async fn what_got_no_answer_is_worth_trying_elsewhere_and_a_cancel_is_not() {
    let silent = Arc::new(AtomicBool::new(false));
    let layer = layer();
    let mut svc = layer.for_peer(0).layer(server(silent.clone()));
    for n in 0..30 {
        svc.ready().await.unwrap().call(n).await.unwrap();
    }
    silent.store(true, Relaxed);
    let mut errors = Vec::new();
    for n in 0..3 {
        let err = svc.ready().await.unwrap().call(n).await.unwrap_err();
        errors.push(Interrupted::find(&*err).cloned().unwrap());
    }
    let [missed, declared, refused] = &errors[..] else {
        unreachable!()
    };
    assert!(missed.is_timeout() && missed.is_unanswered(), "{missed}");
    assert!(
        declared.is_silence() && declared.is_unanswered(),
        "{declared}"
    );
    assert!(refused.is_refusal() && refused.is_unanswered(), "{refused}");
    layer.interrupt_handle().shutdown();
    let err = svc.ready().await.unwrap().call(3).await.unwrap_err();
    let shut = Interrupted::find(&*err).unwrap();
    assert!(shut.is_refusal() && !shut.is_unanswered(), "{shut}");
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
        let mut result = balance.ready().await.unwrap().call(calls).await;
        for _ in 0..retries {
            if !again(&result) {
                break;
            }
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

/// Three loopback servers behind fault proxies under p2c, each endpoint stacked as README
/// shows (its load, `probe_with`); the third blackholed while `calls` calls go through
/// `callers` callers. Returns how many calls failed at the blackholed peer (calls cut at a
/// healthy one, on a machine busy with other tests, are not counted), once the endpoint
/// took calls again after the blackhole lifted.
async fn blackholed<E>(callers: usize, endpoint: impl Fn(&Sockets, SocketAddr) -> E) -> usize
where
    E: Service<LineRequest, Response = String, Error = BoxError> + Load + Send + 'static,
    E::Future: Send,
    E::Metric: std::fmt::Debug,
{
    let (mut servers, mut proxies) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let server = EchoServer::start().await;
        proxies.push(FaultProxy::start(server.addr()).await);
        servers.push(server);
    }
    let key: fn(&LineRequest) -> SocketAddr = |req| req.addr;
    let layer = AdaptiveTimeoutLayer::builder(key)
        .policy(TimeoutPolicy::default().min_samples(20))
        .build()
        .unwrap();
    let addrs: Vec<_> = proxies.iter().map(FaultProxy::addr).collect();
    let endpoints: Vec<_> = addrs.iter().map(|&a| endpoint(&layer, a)).collect();
    let balance = Arc::new(Mutex::new(Balance::new(ServiceList::new(endpoints))));
    let (faulty, to) = (format!("{:?}", addrs[2]), addrs[0]);
    let run = |calls: usize| {
        let (balance, faulty) = (balance.clone(), faulty.clone());
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..callers {
                let (balance, faulty) = (balance.clone(), faulty.clone());
                tasks.spawn(async move {
                    let mut failed = 0;
                    for _ in 0..calls / callers {
                        let req = LineRequest::new(to, 2, "ping");
                        let result = call_shared(&balance, req).await;
                        // An I/O error, or an interrupt of a call to the faulty peer.
                        let there = result.err().is_some_and(|e| {
                            Interrupted::find(&*e).is_none_or(|i| i.peer() == faulty)
                        });
                        failed += usize::from(there);
                    }
                    failed
                });
            }
            let mut failed = 0;
            while let Some(n) = tasks.join_next().await {
                failed += n.unwrap();
            }
            failed
        }
    };
    bounded(run(120)).await;
    proxies[2].set(Fault::Blackhole);
    let failed = bounded(run(400)).await;
    proxies[2].set(Fault::Pass);
    let before = proxies[2].connections();
    bounded(async {
        while proxies[2].connections() < before + 10 {
            run(callers * 4).await;
        }
    })
    .await;
    drop(servers);
    failed
}

/// The layer of the tests over sockets.
type Sockets = AdaptiveTimeoutLayer<SocketAddr, fn(&LineRequest) -> SocketAddr>;

/// An endpoint of `addr` over `load`, with a background probe straight to the server.
fn probed<L>(
    layer: &Sockets,
    addr: SocketAddr,
    load: L,
) -> impl Service<LineRequest, Response = String, Error = BoxError, Future: Send>
       + Load<Metric: std::fmt::Debug>
       + Send
       + 'static
where
    L: Service<LineRequest, Response = String, Error = io::Error> + Load + Send + 'static,
    L::Future: Send + 'static,
    L::Metric: std::fmt::Debug,
{
    let probe = client_of(addr);
    layer
        .for_endpoint(addr)
        .probe_with(move || probe.clone().oneshot(LineRequest::new(addr, 0, "probe")))
        .layer(load)
}

/// A line client whose calls all go to `addr`.
fn client_of(
    addr: SocketAddr,
) -> impl Service<LineRequest, Response = String, Error = io::Error, Future: Send + 'static>
       + Clone
       + Send
       + Sync
       + 'static {
    LineClient::new().map_request(move |req: LineRequest| LineRequest { addr, ..req })
}

#[tokio::test]
async fn over_sockets_a_blackholed_endpoint_costs_a_lone_caller_one_call() {
    for callers in [1, 8] {
        // tower's PeakEwma defaults, README's, and PendingRequests.
        for (rtt, decay) in [(50, 10_000), (30, 1_000)] {
            let failed = blackholed(callers, |layer, addr| {
                let decay = ms(decay).as_nanos() as f64;
                let complete = CompleteOnResponse::default();
                probed(
                    layer,
                    addr,
                    PeakEwma::new(client_of(addr), ms(rtt), decay, complete),
                )
            })
            .await;
            // The calls in flight when the blackhole began: with one caller, one.
            let most = if callers == 1 { 1 } else { 2 * callers };
            assert!(
                failed <= most,
                "{callers} callers, PeakEwma {rtt} ms / {decay} ms: {failed} failed"
            );
        }
        let failed = blackholed(callers, |layer, addr| {
            let load = PendingRequests::new(client_of(addr), CompleteOnResponse::default());
            probed(layer, addr, load)
        })
        .await;
        let most = if callers == 1 { 1 } else { 2 * callers };
        assert!(
            failed <= most,
            "{callers} callers, PendingRequests: {failed} failed"
        );
    }
}
