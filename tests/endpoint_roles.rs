//! The two roles of a layer placed per peer: a fixed peer (`for_peer`), whose readiness is
//! its inner service's and whose calls to a silent peer fail fast, and a balanced endpoint
//! (`for_endpoint`), held out while its peer is silent, within the layer's ejection cap,
//! which is re-applied when endpoints leave.

pub mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use tokio_test::task;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, Interrupted, PeerState, TimeoutPolicy};

use support::ms;

/// A simulated server that answers in 5 ms, or never while `hung`.
#[derive(Default)]
struct Server {
    hung: AtomicBool,
}

/// A client of one simulated server.
type Client = BoxCloneSyncService<u64, (), Infallible>;

impl Server {
    fn client(self: &Arc<Self>) -> Client {
        let server = self.clone();
        Client::new(service_fn(move |_: u64| {
            let server = server.clone();
            async move {
                while server.hung.load(SeqCst) {
                    tokio::time::sleep(ms(1)).await;
                }
                tokio::time::sleep(ms(5)).await;
                Ok(())
            }
        }))
    }
}

/// How the layer keys calls (the peer of every service here is fixed, so it is not asked).
type Key = fn(&u64) -> usize;

fn layer() -> AdaptiveTimeoutLayer<usize, Key> {
    AdaptiveTimeoutLayer::builder((|_: &u64| 0) as Key)
        .policy(TimeoutPolicy::default().cold_start(ms(100)))
        .jitter_seed(7)
        .build()
        .unwrap()
}

/// Hangs `server` and runs two calls through `svc` out of their deadlines at once: two
/// misses, so the peer is silent.
async fn silence<S>(svc: &S, server: &Server)
where
    S: Service<u64, Error = BoxError> + Clone,
{
    server.hung.store(true, SeqCst);
    let (a, b) = tokio::join!(svc.clone().oneshot(1), svc.clone().oneshot(2));
    assert!(a.is_err() && b.is_err());
}

#[tokio::test(start_paused = true)]
async fn the_last_endpoint_is_let_go_when_the_cap_shrinks() {
    let layer = layer();
    let handle = layer.handle();
    let servers: Vec<Arc<Server>> = (0..2).map(|_| Arc::default()).collect();
    let mut held = layer.for_endpoint(0).layer(servers[0].client());
    let other = layer.for_endpoint(1).layer(servers[1].client());
    silence(&held, &servers[0]).await;
    assert_eq!(handle.peer(&0).unwrap().state, PeerState::Silent);

    // 50% of 2 endpoints: the silent one is held out.
    let mut ready = task::spawn(());
    assert!(ready.enter(|cx, _| held.poll_ready(cx)).is_pending());
    assert!(held.is_held_out());

    // The other leaves: 50% of 1 is 0, so the last endpoint is let go at once, before its
    // probe is due, and its waiting task is woken for it.
    drop(other);
    tokio::task::yield_now().await;
    assert!(ready.is_woken(), "woken when the cap shrank");
    assert!(ready.enter(|cx, _| held.poll_ready(cx)).is_ready());
    assert!(!held.is_held_out());
}

#[tokio::test(start_paused = true)]
async fn a_fixed_peer_is_ready_and_fails_fast_while_its_peer_is_silent() {
    let layer = layer();
    let handle = layer.handle();
    let server = Arc::new(Server::default());
    let mut fixed = layer.for_peer(0).layer(server.client());
    assert_eq!(*fixed.peer(), 0);
    silence(&fixed, &server).await;
    assert_eq!(handle.peer(&0).unwrap().state, PeerState::Silent);

    // Ready at once, though no probe is due: readiness is the inner service's.
    let mut ready = task::spawn(());
    assert!(ready.enter(|cx, _| fixed.poll_ready(cx)).is_ready());
    let started = tokio::time::Instant::now();
    let err = fixed.call(3).await.unwrap_err();
    let err = Interrupted::find(&*err).expect("an Interrupted");
    assert!(err.is_silence() && !err.was_sent(), "{err}");
    assert_eq!(started.elapsed(), ms(0), "failed fast");

    // When the probe is due, the next call goes, and its answer brings the peer back.
    server.hung.store(false, SeqCst);
    tokio::time::sleep(handle.peer(&0).unwrap().next_probe_in).await;
    assert!(ready.enter(|cx, _| fixed.poll_ready(cx)).is_ready());
    fixed.call(4).await.expect("the probe is answered");
    assert_eq!(handle.peer(&0).unwrap().state, PeerState::Healthy);
}
