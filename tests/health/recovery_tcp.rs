//! Recovery over real sockets on 127.0.0.1: a hyper-util client under the layer at its
//! defaults, with concurrent callers, against three loopback HTTP servers; one is stopped
//! (its port refuses connections) and started again on the same port.
//!
//! The refused connections are transport failures: no latency samples, no proof of health,
//! so the peer's window is left as its answers made it and the first calls after the
//! restart get the deadline the peer had before. Timing is real, so the bounds asserted
//! are generous; the measured figures are printed (`--nocapture`).
#![cfg(feature = "http")]

use crate::support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopback::http_server::{self, get};
use tokio::task::JoinSet;
use tower::{ServiceBuilder, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, PeerState};

use support::e2e::LoopbackPeer;

/// The servers' latencies; the slowest is the one stopped.
const DELAYS_MS: [u64; 3] = [5, 20, 50];
const STOPPED: usize = 2;
/// Concurrent callers, each calling the servers in turn.
const CALLERS: usize = 16;
/// How long the stopped server refuses connections.
const STOP: Duration = Duration::from_secs(3);

/// One call: to which server, when it started and ended, and whether it succeeded.
struct Record {
    server: usize,
    start: Instant,
    end: Instant,
    ok: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_after_refusing_connections_is_let_back_in_at_once() {
    let mut servers = Vec::new();
    for ms in DELAYS_MS {
        servers.push(http_server::start(Duration::from_millis(ms)).await.unwrap());
    }
    let uris: Vec<_> = servers.iter().map(|s| s.uri("/")).collect();
    let stopped_peer = servers[STOPPED].peer();
    let layer = AdaptiveTimeoutLayer::http().build().unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(http_server::client());

    let running = Arc::new(AtomicBool::new(true));
    let mut callers = JoinSet::new();
    for caller in 0..CALLERS {
        let (svc, uris, running) = (svc.clone(), uris.clone(), running.clone());
        callers.spawn(async move {
            let mut records = Vec::new();
            let mut server = caller % uris.len();
            while running.load(Ordering::Relaxed) {
                let start = Instant::now();
                let result = svc.clone().oneshot(get(uris[server].clone())).await;
                let ok = result.is_ok_and(|r| r.status().is_success());
                records.push(Record {
                    server,
                    start,
                    end: Instant::now(),
                    ok,
                });
                server = (server + 1) % uris.len();
            }
            records
        });
    }

    // Warm up, then stop the slowest server: its port refuses connections. (The calls in
    // flight to it end as its connections close: read once they have.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let addr = servers.remove(STOPPED).stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = handle.peer(&stopped_peer).unwrap();
    tokio::time::sleep(STOP - Duration::from_millis(100)).await;
    let during = handle.peer(&stopped_peer).unwrap();
    let _restarted = http_server::start_at(addr, Duration::from_millis(DELAYS_MS[STOPPED]))
        .await
        .unwrap();
    let restart = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.store(false, Ordering::Relaxed);
    let records: Vec<Record> = loopback::bounded(callers.join_all())
        .await
        .into_iter()
        .flatten()
        .collect();

    let after: Vec<&Record> = records
        .iter()
        .filter(|r| r.server == STOPPED && r.start >= restart)
        .collect();
    let failed_after = after.iter().filter(|r| !r.ok).count();
    let first_success = after.iter().filter(|r| r.ok).map(|r| r.end - restart).min();
    let refused = during.failures - before.failures;
    eprintln!(
        "{CALLERS} callers, servers at {DELAYS_MS:?} ms, the {}ms one stopped for {STOP:?}: \
         {refused} calls refused; after the restart: first success {first_success:?}, \
         {failed_after} of {} calls failed; deadline {:?} before, {:?} during the stop",
        DELAYS_MS[STOPPED],
        after.len(),
        before.deadline,
        during.deadline,
    );

    // Refused connections were counted as failures, not answers, and taught the window
    // nothing: no new samples, the state left as it was.
    assert!(refused > 0, "{during:#?}");
    assert!(during.samples <= before.samples, "{before:#?} {during:#?}");
    assert!(
        matches!(during.state, PeerState::Healthy | PeerState::Suspect),
        "{during:#?}"
    );
    assert!(
        during.last_response_age >= Duration::from_secs(2),
        "{during:#?}"
    );
    // Let back in at once.
    let first = first_success.expect("the restarted server answered");
    assert!(first < Duration::from_secs(2), "first success {first:?}");
    assert!(
        failed_after <= 10,
        "{failed_after} calls failed after the restart"
    );
}
