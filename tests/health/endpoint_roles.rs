//! The two roles of a layer placed per peer: a fixed peer (`for_peer`), whose readiness is
//! its inner service's and whose calls to a silent peer fail fast, and a balanced endpoint
//! (`for_endpoint`), held out while its peer is silent or refuses calls, within the
//! layer's ejection cap (re-applied when endpoints leave), probed by a caller's call after
//! ejections that double, or in the background (`probe_with`).

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio_test::task;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, Interrupted, PeerState, Reason, TimeoutPolicy};

use support::ms;

/// A simulated server that answers in 5 ms, or never while `hung`.
#[derive(Default)]
struct Server {
    hung: AtomicBool,
    /// Refuses calls at once while set.
    refusing: AtomicBool,
    /// Calls answered.
    answered: AtomicUsize,
}

/// A client of one simulated server.
type Client = BoxCloneSyncService<u64, (), std::io::Error>;

impl Server {
    fn client(self: &Arc<Self>) -> Client {
        let server = self.clone();
        Client::new(service_fn(move |_: u64| {
            let server = server.clone();
            async move {
                if server.refusing.load(SeqCst) {
                    return Err(std::io::ErrorKind::ConnectionRefused.into());
                }
                while server.hung.load(SeqCst) {
                    tokio::time::sleep(ms(1)).await;
                }
                tokio::time::sleep(ms(5)).await;
                server.answered.fetch_add(1, SeqCst);
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

#[tokio::test(start_paused = true)]
async fn a_balanced_endpoint_probes_in_the_background_and_rejoins_when_answered() {
    let layer = AdaptiveTimeoutLayer::builder((|_: &u64| 0) as Key)
        .policy(TimeoutPolicy::default().cold_start(ms(100)))
        .ejection_time(ms(400), ms(4000))
        .jitter_seed(7)
        .build()
        .unwrap();
    let handle = layer.handle();
    let servers: Vec<Arc<Server>> = (0..2).map(|_| Arc::default()).collect();
    let probes = Arc::new(AtomicUsize::new(0));
    let (client, sent) = (servers[0].client(), probes.clone());
    let mut endpoint = layer
        .for_endpoint(0)
        .probe_with(move || {
            sent.fetch_add(1, SeqCst);
            client.clone().oneshot(u64::MAX)
        })
        .layer(servers[0].client());
    let _other = layer.for_endpoint(1).layer(servers[1].client());
    silence(&endpoint, &servers[0]).await;

    // Held out; from a quarter of the base (100ms) on, probes go in the background, one
    // at a time, while the endpoint stays held out: no caller's call is a probe.
    let mut ready = task::spawn(());
    assert!(ready.enter(|cx, _| endpoint.poll_ready(cx)).is_pending());
    tokio::time::sleep(ms(99)).await;
    assert_eq!(probes.load(SeqCst), 0, "none before 100ms");
    for _ in 0..20 {
        tokio::time::sleep(ms(50)).await;
        assert!(ready.enter(|cx, _| endpoint.poll_ready(cx)).is_pending());
    }
    let sent = probes.load(SeqCst);
    assert!(sent >= 2, "{sent} probes in a second");
    // The peer comes back: a probe is answered within a probe's deadline and the spacing
    // (at most 100ms + 800ms here), which wakes the endpoint, ready.
    servers[0].hung.store(false, SeqCst);
    let back = tokio::time::Instant::now();
    let mut waiting = task::spawn(());
    while waiting.enter(|cx, _| endpoint.poll_ready(cx)).is_pending() {
        tokio::time::sleep(ms(10)).await;
        assert!(back.elapsed() < ms(1000), "readmitted within a second");
    }
    assert_eq!(handle.peer(&0).unwrap().state, PeerState::Healthy);
    assert_eq!(probes.load(SeqCst) - sent, 1, "one more probe, answered");
}

#[tokio::test(start_paused = true)]
async fn a_balanced_endpoint_is_held_out_after_two_refusals_in_a_row() {
    let layer = layer();
    let refusing = AtomicBool::new(true);
    let refusing = Arc::new(refusing);
    let flag = refusing.clone();
    let client = service_fn(move |_: u64| {
        let refused = flag.load(SeqCst);
        async move {
            match refused {
                true => Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
                false => Ok(()),
            }
        }
    });
    let mut endpoint = layer.for_endpoint(0).layer(client);
    let _other = layer
        .for_endpoint(1)
        .layer(Arc::new(Server::default()).client());
    let mut ready = task::spawn(());
    for _ in 0..2 {
        assert!(ready.enter(|cx, _| endpoint.poll_ready(cx)).is_ready());
        assert!(endpoint.call(1).await.is_err());
    }
    // Held out until its probe is due (the default base, 1s); then ready for one call.
    assert!(ready.enter(|cx, _| endpoint.poll_ready(cx)).is_pending());
    tokio::time::sleep(ms(999)).await;
    assert!(!ready.is_woken());
    tokio::time::sleep(ms(1)).await;
    assert!(ready.is_woken());
    assert!(ready.enter(|cx, _| endpoint.poll_ready(cx)).is_ready());
    // The probe is refused too: held out twice as long.
    assert!(endpoint.call(2).await.is_err());
    assert!(ready.enter(|cx, _| endpoint.poll_ready(cx)).is_pending());
    tokio::time::sleep(ms(1999)).await;
    assert!(ready.enter(|cx, _| endpoint.poll_ready(cx)).is_pending());
    tokio::time::sleep(ms(1)).await;
    assert!(ready.enter(|cx, _| endpoint.poll_ready(cx)).is_ready());
    // Answered: no longer held out, and no ejection left.
    refusing.store(false, SeqCst);
    endpoint.call(3).await.expect("answered");
    assert!(ready.enter(|cx, _| endpoint.poll_ready(cx)).is_ready());
    assert!(!endpoint.is_held_out());
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_re_added_for_a_silent_peer_is_held_out_and_rejoins() {
    let layer = layer();
    let handle = layer.handle();
    let servers: Vec<Arc<Server>> = (0..2).map(|_| Arc::default()).collect();
    let removed = layer.for_endpoint(0).layer(servers[0].client());
    let _other = layer.for_endpoint(1).layer(servers[1].client());
    silence(&removed, &servers[0]).await;
    drop(removed);

    // Discovery adds it again while its peer is still silent: held out at its first poll.
    let mut again = layer.for_endpoint(0).layer(servers[0].client());
    let mut ready = task::spawn(());
    assert!(ready.enter(|cx, _| again.poll_ready(cx)).is_pending());
    assert!(again.is_held_out());

    // Its peer is back; the probe, due after the first ejection (1s), is answered.
    servers[0].hung.store(false, SeqCst);
    tokio::time::sleep(ms(1000)).await;
    assert!(ready.is_woken());
    assert!(ready.enter(|cx, _| again.poll_ready(cx)).is_ready());
    again.call(7).await.expect("the probe is answered");
    assert_eq!(handle.peer(&0).unwrap().state, PeerState::Healthy);
    assert!(ready.enter(|cx, _| again.poll_ready(cx)).is_ready());
    assert!(!again.is_held_out());
}

/// Three balanced endpoints of one layer under p2c (default cap: one of three held out),
/// loads from `PendingRequests`; `probe_with` probes through the client, if `background`.
fn balanced(
    layer: &AdaptiveTimeoutLayer<usize, Key>,
    servers: &[Arc<Server>],
    background: bool,
) -> impl Service<u64, Response = (), Error = BoxError, Future: Send + 'static> {
    use tower::load::{CompleteOnResponse, PendingRequests};
    let endpoints = servers.iter().enumerate().map(|(i, server)| {
        let endpoint = layer.for_endpoint(i);
        let probe = server.client();
        let endpoint = match background {
            true => endpoint.probe_with(move || probe.clone().oneshot(u64::MAX)),
            false => endpoint,
        };
        let load = CompleteOnResponse::default();
        endpoint.layer(PendingRequests::new(server.client(), load))
    });
    let endpoints = tower::discover::ServiceList::new(endpoints.collect::<Vec<_>>());
    tower::balance::p2c::Balance::new(endpoints)
}

/// Sends `n` calls through `svc`, one every 10 ms, each in the background.
async fn spread<S>(svc: &mut S, n: usize)
where
    S: Service<u64, Response = (), Error = BoxError, Future: Send + 'static>,
{
    for _ in 0..n {
        let ready = tokio::time::timeout(ms(10_000), svc.ready()).await;
        let call = ready.expect("the balancer is ready").unwrap().call(0);
        tokio::spawn(tokio::time::timeout(ms(10_000), call));
        tokio::time::sleep(ms(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn endpoints_over_the_cap_rejoin_when_their_peers_return() {
    for (background, refusing) in [(false, false), (true, false), (false, true), (true, true)] {
        let layer = layer();
        let servers: Vec<Arc<Server>> = (0..3).map(|_| Arc::default()).collect();
        let mut svc = balanced(&layer, &servers, background);
        spread(&mut svc, 100).await;
        // All three peers silent (or refusing) for 3s: one endpoint is held out, two are
        // over the cap.
        let away = |on| match refusing {
            true => servers.iter().for_each(|s| s.refusing.store(on, SeqCst)),
            false => servers.iter().for_each(|s| s.hung.store(on, SeqCst)),
        };
        away(true);
        spread(&mut svc, 300).await;
        let handle = layer.handle();
        let out = |i| {
            let peer = handle.peer(&i).unwrap();
            peer.state != PeerState::Healthy || peer.consecutive_failures >= 2
        };
        assert!((0..3).all(out));
        // All back: within 10s every endpoint takes its share of the calls again.
        away(false);
        spread(&mut svc, 500).await;
        let before: Vec<usize> = servers.iter().map(|s| s.answered.load(SeqCst)).collect();
        spread(&mut svc, 500).await;
        let answered = servers.iter().zip(&before);
        let answered: Vec<usize> = answered.map(|(s, b)| s.answered.load(SeqCst) - b).collect();
        assert!(
            answered.iter().all(|&n| n > 100),
            "probe_with {background}, refusing {refusing}: answers per endpoint in the 5s after the first 5s back: \
             {answered:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_wakes_held_out_endpoints_and_refuses_their_calls() {
    for background in [false, true] {
        let layer = AdaptiveTimeoutLayer::builder((|_: &u64| 0) as Key)
            .policy(TimeoutPolicy::default().cold_start(ms(100)))
            .max_ejection_percent(100)
            .build()
            .unwrap();
        let server = Arc::new(Server::default());
        let probe = server.client();
        let endpoint = layer.for_endpoint(0);
        let endpoint = match background {
            true => endpoint.probe_with(move || probe.clone().oneshot(u64::MAX)),
            false => endpoint,
        };
        let mut endpoint = endpoint.layer(server.client());
        silence(&endpoint, &server).await;
        let mut ready = task::spawn(());
        assert!(ready.enter(|cx, _| endpoint.poll_ready(cx)).is_pending());
        // Half the first ejection: background probes went (and failed), none is due yet.
        tokio::time::sleep(ms(500)).await;
        assert!(ready.enter(|cx, _| endpoint.poll_ready(cx)).is_pending());

        // Shut down: woken at once, ready, and its call refused at once.
        layer.interrupt_handle().shutdown();
        tokio::task::yield_now().await;
        assert!(
            ready.is_woken(),
            "probe_with {background}: woken by shutdown"
        );
        assert!(ready.enter(|cx, _| endpoint.poll_ready(cx)).is_ready());
        assert!(!endpoint.is_held_out());
        let started = tokio::time::Instant::now();
        let err = endpoint.call(3).await.unwrap_err();
        let err = Interrupted::find(&*err).expect("an Interrupted");
        assert!(
            matches!(err.reason(), Reason::Shutdown) && !err.was_sent(),
            "{err}"
        );
        assert_eq!(started.elapsed(), ms(0), "refused at once");
    }
}

#[test]
fn an_ejection_time_over_a_day_is_refused() {
    let build = |base, max| {
        AdaptiveTimeoutLayer::builder((|_: &u64| 0) as Key)
            .ejection_time(base, max)
            .build()
    };
    let day = tower_adaptive_timeout::MAX_DEADLINE;
    let err = build(Duration::MAX, Duration::MAX).unwrap_err();
    assert_eq!(err.field(), "ejection_time", "{err}");
    assert!(build(day, day + ms(1)).is_err());
    assert!(build(day, day).is_ok());
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_over_the_cap_is_ready_and_its_load_brings_its_probe() {
    use tower::load::{CompleteOnResponse, Load, PendingRequests};
    use tower_adaptive_timeout::EndpointLoad;
    let layer = layer();
    let servers: Vec<Arc<Server>> = (0..2).map(|_| Arc::default()).collect();
    let mut endpoints: Vec<_> = (0..2)
        .map(|i| {
            let client = PendingRequests::new(servers[i].client(), CompleteOnResponse::default());
            layer.for_endpoint(i).layer(client)
        })
        .collect();
    for (i, server) in servers.iter().enumerate() {
        silence(&layer.for_peer(i).layer(server.client()), server).await;
    }
    // 50% of 2: the first is held out, the second is over the cap: ready, and avoided.
    let mut ready = task::spawn(());
    assert!(ready
        .enter(|cx, _| endpoints[0].poll_ready(cx))
        .is_pending());
    let over = &mut endpoints[1];
    assert!(ready.enter(|cx, _| over.poll_ready(cx)).is_ready());
    assert!(!over.is_held_out());
    assert!(matches!(over.load(), EndpointLoad::Silent));

    // Its probe comes due (the first ejection, 1s): its load gets it picked, though no
    // poll came since; the probe goes, is answered, and its load is the inner one again.
    tokio::time::sleep(ms(1000)).await;
    assert!(matches!(over.load(), EndpointLoad::ProbeDue));
    assert!(ready.enter(|cx, _| over.poll_ready(cx)).is_ready());
    servers[1].hung.store(false, SeqCst);
    over.call(1).await.expect("the probe is answered");
    assert!(
        matches!(over.load(), EndpointLoad::ProbeDue),
        "back: picked"
    );
    assert!(ready.enter(|cx, _| over.poll_ready(cx)).is_ready());
    assert!(matches!(over.load(), EndpointLoad::Load(_)));
}

#[tokio::test(start_paused = true)]
async fn a_fixed_peer_with_bodies_keys_path_only_requests_to_its_peer() {
    use tower_adaptive_timeout::HttpPeer;
    let layer = AdaptiveTimeoutLayer::http().build().unwrap();
    let handle = layer.handle();
    let peer: HttpPeer = "http://10.0.0.7:50051".parse().unwrap();
    let client = service_fn(|_: http::Request<String>| async {
        Ok::<_, BoxError>(http::Response::new(String::from("answer")))
    });
    let svc = layer.with_bodies().for_peer(peer.clone()).layer(client);
    // A path-only request, as a tonic client sends to its channel: the peer's call.
    let req = http::Request::builder()
        .uri("/pkg.Svc/Method")
        .body(String::new());
    let answer = svc.oneshot(req.unwrap()).await.expect("answered");
    drop(answer);
    assert_eq!(handle.untracked_calls(), 0);
    assert_eq!(handle.peer(&peer).expect("tracked").completed, 1);
}
