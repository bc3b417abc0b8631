//! A fixed peer (`for_peer`, README's direct-client recipe) over loopback TCP, one server
//! behind the fault proxy, with 1 and 8 callers calling back to back: while the server is
//! blackholed, readiness never waits, the callers wait a small share of what a fixed 1 s
//! timeout would hold them, and no call waits past `cold_start`; once it is back, calls are
//! answered again.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use loopback::{bounded, EchoServer, Fault, FaultProxy, LineClient, LineRequest};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, TimeoutPolicy};

use support::ms;

const SILENCE: Duration = Duration::from_secs(4);

/// What the callers saw in the silence: the time they waited in all, the longest call, and
/// the longest wait for readiness.
struct Waited {
    total: Duration,
    longest: Duration,
    ready: Duration,
}

async fn blackholed(callers: usize) -> Waited {
    let server = EchoServer::start().await;
    let proxy = FaultProxy::start(server.addr()).await;
    let addr: SocketAddr = proxy.addr();
    let key: fn(&LineRequest) -> SocketAddr = |req| req.addr;
    let layer = AdaptiveTimeoutLayer::builder(key)
        .policy(TimeoutPolicy::default().min_samples(20))
        .build()
        .unwrap();
    let fixed = layer.for_peer(addr).layer(LineClient::new());
    let fixed = Arc::new(Mutex::new(fixed));
    // Callers call back to back until `until`; each call's wait for readiness and for its
    // answer is kept, with whether it was answered.
    let run = |until: Instant| {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..callers {
            let fixed = fixed.clone();
            tasks.spawn(async move {
                let mut seen = Vec::new();
                while Instant::now() < until {
                    let start = Instant::now();
                    let call = {
                        let mut svc = fixed.lock().await;
                        let svc = svc.ready().await.expect("ready");
                        let ready = start.elapsed();
                        (ready, svc.call(LineRequest::new(addr, 2, "ping")))
                    };
                    let answered = call.1.await.is_ok();
                    seen.push((call.0, start.elapsed(), answered));
                    if !answered {
                        tokio::time::sleep(ms(1)).await;
                    }
                }
                seen
            });
        }
        async move {
            let mut seen = Vec::new();
            while let Some(caller) = tasks.join_next().await {
                seen.extend(caller.expect("caller"));
            }
            seen
        }
    };
    let warm = bounded(run(Instant::now() + ms(500))).await;
    assert!(warm.iter().all(|c| c.2), "the warm-up is answered");
    proxy.set(Fault::Blackhole);
    let silent = bounded(run(Instant::now() + SILENCE)).await;
    proxy.set(Fault::Pass);
    // Back: within 3 s a call is answered again.
    let back = Instant::now() + ms(3_000);
    bounded(async {
        loop {
            let answered = run(Instant::now() + ms(50)).await.iter().any(|c| c.2);
            assert!(Instant::now() < back, "answered again within 3 s");
            if answered {
                break;
            }
        }
    })
    .await;
    drop(server);
    Waited {
        total: silent.iter().map(|c| c.1).sum(),
        longest: silent.iter().map(|c| c.1).max().unwrap_or_default(),
        ready: silent.iter().map(|c| c.0).max().unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_sockets_a_fixed_peer_costs_its_callers_a_small_share_of_a_fixed_timeout() {
    for callers in [1, 8] {
        let waited = blackholed(callers).await;
        eprintln!(
            "{callers} callers: waited {:?} in all, longest {:?}, ready after {:?} at most",
            waited.total, waited.longest, waited.ready
        );
        // A fixed 1 s timeout holds every caller for the whole silence. Here the callers
        // wait out the calls in flight when it began, then one probe at a time: the first
        // a long one (`cold_start`), the next ones short. A lone caller is every probe.
        let fixed = SILENCE * callers as u32;
        let share = if callers == 1 { 2 } else { 4 };
        assert!(
            waited.total < fixed / share,
            "{callers} callers waited {:?} of the {fixed:?} a fixed timeout would",
            waited.total
        );
        // The longest a call waits is a probe's, at most `cold_start` (1 s), plus the
        // call in flight when the silence began.
        assert!(
            waited.longest < ms(1_500),
            "{callers} callers: {:?}",
            waited.longest
        );
        // Readiness is the line client's, whatever the peer's health.
        assert!(
            waited.ready < ms(200),
            "{callers} callers: ready after {:?}",
            waited.ready
        );
    }
}
