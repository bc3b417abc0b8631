//! Simulated peers that can be silenced, behind the layer, on tokio's paused clock.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeout, AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, InterruptHandle, PeerState,
    TimeoutPolicy,
};

use super::ms;

/// The simulated peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum P {
    /// A peer the tests silence.
    A,
    /// Another peer.
    B,
    /// A healthy peer with a slow tail.
    Tail,
    /// A peer no call goes to.
    Nobody,
}

/// A call to `peer`, answered after `delay` unless the peer is silent.
#[derive(Clone, Copy, Debug)]
pub struct Req {
    /// The peer called.
    pub peer: P,
    /// How long the peer takes to answer.
    pub delay: Duration,
}

/// Simulated peers: a silent one never answers the calls it receives (like a blackhole),
/// and every call that reaches a peer is logged with its arrival time.
#[derive(Default)]
pub struct Peers {
    silent: Mutex<HashSet<P>>,
    arrivals: Mutex<Vec<(P, Instant)>>,
}

impl Peers {
    /// Silences `peer` (`on`) or lets it answer again.
    pub fn silence(&self, peer: P, on: bool) {
        let mut silent = self.silent.lock().unwrap();
        if on {
            silent.insert(peer);
        } else {
            silent.remove(&peer);
        }
    }

    /// When each call to `peer` arrived.
    pub fn arrivals(&self, peer: P) -> Vec<Instant> {
        let log = self.arrivals.lock().unwrap();
        log.iter()
            .filter(|(p, _)| *p == peer)
            .map(|(_, t)| *t)
            .collect()
    }

    /// Logs the call's arrival when it is made (not when first polled), then answers.
    fn receive(self: &Arc<Self>, req: Req) -> impl Future<Output = Result<P, Infallible>> {
        self.arrivals
            .lock()
            .unwrap()
            .push((req.peer, Instant::now()));
        self.clone().answer(req)
    }

    async fn answer(self: Arc<Self>, req: Req) -> Result<P, Infallible> {
        let silent = self.silent.lock().unwrap().contains(&req.peer);
        if silent {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(req.delay).await;
        Ok(req.peer)
    }
}

/// The layer over the simulated peers.
pub type SimSvc = AdaptiveTimeout<
    // An inner error type without a trait object keeps spawned calls `Send`-provable.
    BoxCloneSyncService<Req, P, Infallible>,
    P,
    fn(&Req) -> P,
>;

/// What a call started in the background reports: its result and when it ended.
pub type Ended = (Result<P, BoxError>, Instant);

/// The layer over the simulated peers, with its handles.
pub struct Rig {
    /// The layer over the peers.
    pub svc: SimSvc,
    /// The layer's handle.
    pub handle: AdaptiveTimeoutHandle<P>,
    /// The layer's interrupt handle.
    pub interrupts: InterruptHandle<P>,
    /// The peers.
    pub peers: Arc<Peers>,
}

/// A rig under `policy` with room for every peer.
pub fn rig(policy: TimeoutPolicy) -> Rig {
    rig_with(policy, 10_000)
}

/// A rig under `policy` that tracks at most `max_peers` peers.
pub fn rig_with(policy: TimeoutPolicy, max_peers: usize) -> Rig {
    let peers = Arc::new(Peers::default());
    let p = peers.clone();
    let inner = BoxCloneSyncService::new(service_fn(move |r| p.receive(r)));
    let layer = AdaptiveTimeoutLayer::builder((|r: &Req| r.peer) as fn(&Req) -> P)
        .policy(policy)
        .max_peers(max_peers)
        .build()
        .unwrap();
    Rig {
        handle: layer.handle(),
        interrupts: layer.interrupt_handle(),
        svc: layer.layer(inner),
        peers,
    }
}

impl Rig {
    /// One call to `peer`, answered after `delay` unless the peer is silent.
    pub async fn call(&self, peer: P, delay: Duration) -> Result<P, BoxError> {
        self.svc.clone().oneshot(Req { peer, delay }).await
    }

    /// Sequential calls answered after `delay`, to give `peer` a history.
    pub async fn warm(&self, peer: P, delay: Duration, n: usize) {
        for _ in 0..n {
            self.call(peer, delay).await.expect("healthy peer answers");
        }
    }

    /// Starts a call in the background; it reports its result and when it ended.
    pub fn spawn(&self, set: &mut JoinSet<Ended>, peer: P) {
        self.spawn_delay(set, peer, ms(10));
    }

    /// [`Rig::spawn`], for a call the peer answers after `delay`.
    pub fn spawn_delay(&self, set: &mut JoinSet<Ended>, peer: P, delay: Duration) {
        let svc = self.svc.clone();
        set.spawn(async move { (svc.oneshot(Req { peer, delay }).await, Instant::now()) });
    }

    /// The state of `peer`.
    pub fn state(&self, peer: P) -> PeerState {
        self.handle.peer(&peer).expect("tracked").state
    }
}
