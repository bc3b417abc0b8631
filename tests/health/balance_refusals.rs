//! Balanced endpoints over real sockets (loopback servers behind the fault proxy) whose
//! peer refuses every call at once, as a killed server does: after two failures in a row
//! the endpoint is held out like a silent one, so `tower::balance::p2c` stops sending the
//! callers there (an instant error looks like the fastest round trip, and drew most of
//! the traffic), and it rejoins once a probe is answered.
#![cfg(feature = "balance")]

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;

use loopback::{bounded, call_shared, EchoServer, Fault, FaultProxy, LineClient, LineRequest};
use tokio::sync::Mutex;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, Load, PeakEwma, PendingRequests};
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, Interrupted};

use support::ms;

/// Three echo servers, each behind its own fault proxy.
struct Servers {
    _servers: Vec<EchoServer>,
    proxies: Vec<FaultProxy>,
}

impl Servers {
    async fn start() -> Self {
        let (mut servers, mut proxies) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let server = EchoServer::start().await;
            proxies.push(FaultProxy::start(server.addr()).await);
            servers.push(server);
        }
        Servers {
            _servers: servers,
            proxies,
        }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.proxies.iter().map(FaultProxy::addr).collect()
    }
}

/// A line client whose calls all go to `addr`.
fn client_of(
    addr: SocketAddr,
) -> impl Service<LineRequest, Response = String, Error = std::io::Error, Future: Send> + Clone {
    LineClient::new().map_request(move |req: LineRequest| LineRequest { addr, ..req })
}

/// How the layer keys line requests (each endpoint's peer is fixed: not asked).
fn layer() -> Layer_ {
    let key: fn(&LineRequest) -> SocketAddr = |req| req.addr;
    AdaptiveTimeoutLayer::builder(key).build().unwrap()
}

/// `calls` calls through `balance` by `callers` concurrent callers; how many were sent
/// to a peer that refused them: failed with the client's own I/O error (a call to a
/// healthy server cut at its deadline, on a machine busy with other tests, is an
/// `Interrupted`, and no refusal).
async fn calls<S>(balance: &Arc<Mutex<S>>, to: SocketAddr, callers: usize, calls: usize) -> usize
where
    S: Service<LineRequest, Response = String, Error = BoxError> + Send + 'static,
    S::Future: Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let balance = balance.clone();
        tasks.spawn(async move {
            let mut failed = 0;
            for _ in 0..calls / callers {
                let req = LineRequest::new(to, 0, "ping");
                let result = call_shared(&balance, req).await;
                let refused = result.is_err_and(|e| Interrupted::find(&*e).is_none());
                failed += usize::from(refused);
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

/// The layer the tests make their endpoints from.
type Layer_ = AdaptiveTimeoutLayer<SocketAddr, fn(&LineRequest) -> SocketAddr>;

/// Three servers behind p2c, each endpoint made by `endpoint`; one of them refuses every
/// call (its proxy resets each connection) while 600 calls go through: returns how many
/// of them were sent there and refused (before, the half or more). Then it is back: a probe is answered, and
/// the endpoint takes calls again.
async fn refused_then_back<E>(callers: usize, endpoint: impl Fn(&Layer_, SocketAddr) -> E) -> usize
where
    E: Service<LineRequest, Response = String, Error = BoxError> + Load + Send + 'static,
    E::Future: Send,
    E::Metric: std::fmt::Debug,
{
    let servers = Servers::start().await;
    let layer = layer();
    let endpoints: Vec<_> = servers
        .addrs()
        .into_iter()
        .map(|addr| endpoint(&layer, addr))
        .collect();
    let balance = Arc::new(Mutex::new(Balance::new(ServiceList::new(endpoints))));
    let to = servers.addrs()[0];
    assert_eq!(calls(&balance, to, callers, 60).await, 0, "none refused");
    servers.proxies[2].set(Fault::Reset);
    let failed = calls(&balance, to, callers, 600).await;
    servers.proxies[2].set(Fault::Pass);
    let before = servers.proxies[2].connections();
    bounded(async {
        while servers.proxies[2].connections() < before + 10 {
            calls(&balance, to, callers, callers * 4).await;
        }
    })
    .await;
    failed
}

#[tokio::test]
async fn a_refusing_endpoint_is_held_out_under_pending_requests() {
    for callers in [1, 8] {
        let failed = refused_then_back(callers, |layer, addr| {
            let load = PendingRequests::new(client_of(addr), CompleteOnResponse::default());
            layer.for_endpoint(addr).layer(load)
        })
        .await;
        // The two refusals that hold it out, and a probe or two.
        assert!(failed <= 6, "{callers} callers: {failed} of 600 refused");
    }
}

#[tokio::test]
async fn a_refusing_endpoint_is_held_out_under_peak_ewma_with_background_probes() {
    for callers in [1, 8] {
        let failed = refused_then_back(callers, |layer, addr| {
            let decay = ms(10_000).as_nanos() as f64;
            let complete = CompleteOnResponse::default();
            let load = PeakEwma::new(client_of(addr), ms(50), decay, complete);
            let probe = client_of(addr);
            layer
                .for_endpoint(addr)
                .probe_with(move || probe.clone().oneshot(LineRequest::new(addr, 0, "probe")))
                .layer(load)
        })
        .await;
        // Only the calls that held it out (with 8 callers, those in flight then too): no
        // caller's call is a probe.
        let most = callers.max(2);
        assert!(failed <= most, "{callers} callers: {failed} of 600 refused");
    }
}
