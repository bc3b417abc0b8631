//! Network faults over real loopback TCP: `LineClient -> FaultProxy -> EchoServer`, the
//! layer keyed by the proxy's address, in real time.
//!
//! * Blackhole and half-open: every call in flight ends `Interrupted` (peer silent or
//!   deadline exceeded) within two deadlines and some slack, new calls fail fast without
//!   reaching the proxy, and once the fault clears a probe brings the peer back to Healthy.
//!   A second peer behind its own proxy carries on untouched meanwhile.
//! * Reset: the inner service's I/O error passes through as it is, not as `Interrupted`.
//! * Delay: added latency below the deadline raises the deadline, with no call lost.
//!
//! Real clocks are noisy, so the assertions are structural with generous bounds: outcomes
//! and states, and upper bounds padded by hundreds of milliseconds.

use crate::support;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use loopback::{EchoServer, Fault, FaultProxy, LineClient, LineRequest};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tower::{BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, DeadlineSource, Interrupted, PeerState, Reason, TimeoutPolicy,
};

use support::line::{by_addr, LineSvc as Svc};
use support::{interrupted, ms};

/// Slack on top of any real-time bound.
const SLACK: Duration = Duration::from_millis(500);

/// Small deadlines so faults are found fast, with `min` well above loopback latency.
fn policy() -> TimeoutPolicy {
    TimeoutPolicy::default()
        .min(ms(100))
        .cold_start(ms(400))
        .min_samples(10)
        .recompute_every(5)
        .probe_backoff(ms(1000))
        .probe_backoff_max(ms(2000))
}

/// One echo server behind two proxies (two peers), and the layer over a line client.
struct Rig {
    svc: Svc,
    handle: AdaptiveTimeoutHandle<SocketAddr>,
    a: FaultProxy,
    b: FaultProxy,
    _server: EchoServer,
}

async fn rig() -> Rig {
    let server = EchoServer::start().await;
    let (a, b) = (
        FaultProxy::start(server.addr()).await,
        FaultProxy::start(server.addr()).await,
    );
    let layer = by_addr().policy(policy()).build().unwrap();
    Rig {
        handle: layer.handle(),
        svc: layer.layer(LineClient::new()),
        a,
        b,
        _server: server,
    }
}

impl Rig {
    /// One call, bounded so a test can never hang on it.
    async fn call(&self, addr: SocketAddr, delay_ms: u64) -> Result<String, BoxError> {
        let call = self
            .svc
            .clone()
            .oneshot(LineRequest::new(addr, delay_ms, "x"));
        timeout(ms(10_000), call).await.expect("a call resolves")
    }

    /// Sequential answered calls, enough to leave cold start.
    async fn warm(&self, addr: SocketAddr) {
        for _ in 0..policy().min_samples + 5 {
            assert_eq!(self.call(addr, 0).await.unwrap(), "x");
        }
        let (deadline, source) = self.handle.deadline(&addr).unwrap();
        assert_ne!(source, DeadlineSource::ColdStart, "{deadline:?}");
    }

    fn state(&self, addr: SocketAddr) -> PeerState {
        self.handle.peer(&addr).expect("tracked").state
    }

    /// Calls `addr` every 50ms until it answers and is Healthy again; returns how long.
    async fn recover(&self, addr: SocketAddr) -> Duration {
        let start = Instant::now();
        let bound = policy().probe_backoff_max * 5 / 4 * 2 + SLACK * 4;
        loop {
            if self.call(addr, 0).await.is_ok() && self.state(addr) == PeerState::Healthy {
                return start.elapsed();
            }
            assert!(start.elapsed() < bound, "not recovered within {bound:?}");
            tokio::time::sleep(ms(50)).await;
        }
    }
}

/// Puts peer A under `fault` with five calls in flight while peer B keeps being called,
/// and checks the calls to A end within two deadlines, A fails fast, B is untouched, and A
/// recovers once the fault clears.
async fn silence_and_recover(fault: Fault) {
    let rig = rig().await;
    let (a, b) = (rig.a.addr(), rig.b.addr());
    rig.warm(a).await;
    rig.warm(b).await;
    let (deadline, _) = rig.handle.deadline(&a).unwrap();
    rig.a.set(fault);
    let silenced = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..5 {
        let svc = rig.svc.clone();
        set.spawn(async move {
            let r = svc.oneshot(LineRequest::new(a, 0, "x")).await;
            (r, Instant::now())
        });
    }
    // Peer B keeps answering throughout.
    let b_calls = async {
        for _ in 0..10 {
            assert_eq!(rig.call(b, 0).await.unwrap(), "x");
        }
    };
    let (results, ()) = tokio::join!(
        async {
            timeout(ms(10_000), set.join_all())
                .await
                .expect("calls end")
        },
        b_calls
    );
    let bound = deadline * 2 + SLACK;
    let mut silent = 0;
    for (r, ended) in &results {
        let err = interrupted(r);
        match err.reason() {
            Reason::PeerSilent { .. } => silent += 1,
            Reason::DeadlineExceeded { .. } => {}
            other => panic!("{fault:?}: unexpected reason {other:?}"),
        }
        let took = *ended - silenced;
        assert!(
            took <= bound,
            "{fault:?}: a call took {took:?} (bound {bound:?})"
        );
    }
    assert!(silent >= 3, "{fault:?}: {silent} of 5 ended as peer silent");
    let snap = rig.handle.peer(&a).unwrap();
    assert_eq!(snap.state, PeerState::Silent, "{fault:?}");
    assert_eq!(snap.in_flight, 0);

    // New calls fail at once, without reaching the proxy.
    let before = rig.a.connections();
    let started = Instant::now();
    let err = rig.call(a, 0).await;
    assert!(matches!(
        interrupted(&err).reason(),
        Reason::PeerSilent { .. }
    ));
    assert_eq!(interrupted(&err).elapsed(), Duration::ZERO);
    assert!(started.elapsed() < SLACK);
    assert_eq!(
        rig.a.connections(),
        before,
        "a failed-fast call made a connection"
    );

    let b_snap = rig.handle.peer(&b).unwrap();
    assert_eq!(b_snap.state, PeerState::Healthy);
    assert_eq!((b_snap.silent_interrupts, b_snap.fail_fast), (0, 0));
    assert_eq!(b_snap.deadline_exceeded, 0);

    rig.a.set(Fault::Pass);
    let took = rig.recover(a).await;
    eprintln!("{fault:?}: recovered {took:?} after the fault cleared");
    assert_eq!(rig.call(a, 0).await.unwrap(), "x");
    assert_eq!(rig.handle.peer(&a).unwrap().in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_peer_is_cut_off_fails_fast_and_recovers_through_a_probe() {
    silence_and_recover(Fault::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_peer_behaves_like_a_silent_one() {
    silence_and_recover(Fault::HalfOpen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_pass_through_as_io_errors_not_interrupts() {
    let rig = rig().await;
    let a = rig.a.addr();
    rig.warm(a).await;
    let before = rig.handle.peer(&a).unwrap();
    rig.a.set(Fault::Reset);
    for _ in 0..5 {
        let err = rig.call(a, 0).await.expect_err("reset");
        assert!(Interrupted::find(&*err).is_none(), "{err}");
        let io = err
            .downcast_ref::<io::Error>()
            .expect("the inner io::Error");
        assert!(
            matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::BrokenPipe
            ),
            "{io:?}"
        );
    }
    let after = rig.handle.peer(&a).unwrap();
    // A reset is a transport failure (an end of stream, an answer): never a miss.
    assert_eq!(
        after.completed + after.failures,
        before.completed + before.failures + 5
    );
    assert_eq!(after.deadline_exceeded, before.deadline_exceeded);
    assert_ne!(after.state, PeerState::Silent);
    rig.a.set(Fault::Pass);
    assert_eq!(rig.call(a, 0).await.unwrap(), "x");
    assert_eq!(after.in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_latency_raises_the_deadline() {
    let rig = rig().await;
    let a = rig.a.addr();
    rig.warm(a).await;
    let (before, source) = rig.handle.deadline(&a).unwrap();
    assert_eq!((before, source), (ms(100), DeadlineSource::ClampedMin));
    // 30ms each way: a round trip of 60ms or more, within the 100ms deadline but enough
    // to lift `p99.9 x 2 + 5ms` above it.
    rig.a.set(Fault::Delay(ms(30)));
    for _ in 0..30 {
        assert_eq!(rig.call(a, 0).await.unwrap(), "x");
    }
    let snap = rig.handle.peer(&a).unwrap();
    assert!(snap.p999 >= ms(60), "{snap:?}");
    assert_eq!(snap.deadline_source(), DeadlineSource::Quantile);
    assert!(snap.deadline > before, "{before:?} -> {:?}", snap.deadline);
    assert_eq!(snap.deadline_exceeded, 0);
}
