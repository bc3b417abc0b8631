//! The strategies compared, each a tower layer over the same simulated peers.
//!
//! * fixed 1 s and 30 s: `tower::timeout::TimeoutLayer`.
//! * RFC 6298 RTO per peer: `SRTT + max(G, 4 x RTTVAR)`, alpha 1/8, beta 1/4, at least 1 s,
//!   at most 60 s; a call that runs out the current RTO doubles it (the RFC's back-off)
//!   until the next answer.
//! * The `adaptive-timeout` crate: its `SyncLatencyTracker` and
//!   `AdaptiveTimeout::select_timeout_sync` at their defaults, i.e.
//!   `clamp(2 x p99.99, 250 ms, 60 s)`, first attempt of every call (the simulation does
//!   not retry).
//! * Phi accrual: per peer, from the inter-arrival times of answers, with Akka's defaults
//!   (threshold 8, 1000 samples, minimum standard deviation 100 ms, first estimate 1 s) and
//!   its logistic approximation of the normal CDF; when phi passes 8 every call in flight
//!   to the peer (started before its last answer) is cut.
//! * This crate's layer, with its default policy, its probe jitter seeded from the
//!   simulation's seed (`Builder::jitter_seed`) so runs are reproducible; and once more
//!   with one setting changed (labelled as such): `fail_fast` off, so calls to a silent
//!   peer go out with the shortest deadline instead of being refused.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adaptive_timeout::{AdaptiveTimeout as CrateTimeout, SyncLatencyTracker};
use tokio::time::Instant;
use tower::timeout::TimeoutLayer;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, Interrupted, Reason, TimeoutPolicy};

use crate::sim::skeleton::{PeerDeadlineLayer, PeerTimer, Started};
use crate::sim::workload::{peers_service, PeerId, Req};
use crate::sim::Ending;

/// Every strategy, boxed to one type.
pub type SimService = BoxCloneSyncService<Req, (), Ending>;

/// The deadline a new call to a peer would get now.
pub type DeadlineFn = Arc<dyn Fn(PeerId) -> Duration + Send + Sync>;

/// Which strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `tower::timeout` at 1 s.
    Fixed1s,
    /// `tower::timeout` at 30 s.
    Fixed30s,
    /// RFC 6298 retransmission timeout per peer.
    Rfc6298,
    /// The `adaptive-timeout` crate's formula.
    AdaptiveTimeoutCrate,
    /// Phi-accrual failure detector.
    PhiAccrual,
    /// This crate's layer at its defaults.
    Layer,
    /// This crate's layer with `fail_fast` off: no refusals and no probes; calls to a
    /// silent peer get the policy's `min` deadline, and any answer readmits the peer.
    LayerNoFailFast,
}

impl Kind {
    /// Every strategy, in report order.
    pub const ALL: [Kind; 7] = [
        Kind::Fixed1s,
        Kind::Fixed30s,
        Kind::Rfc6298,
        Kind::AdaptiveTimeoutCrate,
        Kind::PhiAccrual,
        Kind::Layer,
        Kind::LayerNoFailFast,
    ];

    /// Name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fixed1s => "fixed 1s",
            Kind::Fixed30s => "fixed 30s",
            Kind::Rfc6298 => "RFC 6298 RTO",
            Kind::AdaptiveTimeoutCrate => "adaptive-timeout 2xp99.99",
            Kind::PhiAccrual => "phi accrual > 8",
            Kind::Layer => "this layer (defaults)",
            Kind::LayerNoFailFast => "this layer (TUNED: fail_fast off)",
        }
    }
}

/// A strategy ready to run: the service and a view of its per-peer deadlines.
pub struct Strategy {
    /// The layered service.
    pub service: SimService,
    /// The deadline a new call would get now.
    pub deadline: DeadlineFn,
}

/// Builds a fresh strategy (no history) over fresh simulated peers; `seed` drives whatever
/// randomness the strategy has of its own (this layer's probe jitter).
pub fn build(kind: Kind, seed: u64) -> Strategy {
    let fixed = |d: Duration| Strategy {
        service: SimService::new(
            ServiceBuilder::new()
                .map_err(ending_of)
                .layer(TimeoutLayer::new(d))
                .service(peers_service()),
        ),
        deadline: Arc::new(move |_| d),
    };
    match kind {
        Kind::Fixed1s => fixed(Duration::from_secs(1)),
        Kind::Fixed30s => fixed(Duration::from_secs(30)),
        Kind::Rfc6298 => skeleton(Rto::default()),
        Kind::AdaptiveTimeoutCrate => skeleton(CrateFormula::default()),
        Kind::PhiAccrual => skeleton(Phi::default()),
        Kind::Layer => layer(TimeoutPolicy::default(), seed),
        Kind::LayerNoFailFast => layer(TimeoutPolicy::default().fail_fast(false), seed),
    }
}

fn skeleton<T: PeerTimer>(timer: T) -> Strategy {
    let timer = Arc::new(timer);
    let view = timer.clone();
    Strategy {
        service: SimService::new(
            ServiceBuilder::new()
                .layer(PeerDeadlineLayer::new(timer))
                .service(peers_service()),
        ),
        deadline: Arc::new(move |peer| view.deadline(peer, Instant::now())),
    }
}

fn layer(policy: TimeoutPolicy, seed: u64) -> Strategy {
    let cold = policy.cold_start;
    let layer = AdaptiveTimeoutLayer::builder((|r: &Req| r.peer) as fn(&Req) -> PeerId)
        .policy(policy)
        .jitter_seed(seed)
        .build()
        .expect("a valid policy");
    let handle = layer.handle();
    Strategy {
        service: SimService::new(
            ServiceBuilder::new()
                .map_err(ending_of)
                .layer(layer)
                .service(peers_service()),
        ),
        deadline: Arc::new(move |peer| handle.deadline(&peer).map_or(cold, |(d, _)| d)),
    }
}

/// How a layer's error ended the call.
fn ending_of(err: BoxError) -> Ending {
    match Interrupted::find(&*err) {
        Some(i) => match i.reason() {
            Reason::PeerSilent { .. } if i.elapsed().is_zero() => Ending::Refused,
            Reason::PeerSilent { .. } => Ending::Silent,
            _ => Ending::Deadline,
        },
        // `tower::timeout::error::Elapsed`: the inner service cannot fail.
        None => Ending::Deadline,
    }
}

/// `tokio`'s paused clock as the `adaptive-timeout` crate's clock.
#[derive(Clone, Copy, Debug)]
pub struct SimInstant(Instant);

impl adaptive_timeout::Instant for SimInstant {
    fn duration_since(&self, earlier: Self) -> Duration {
        self.0.saturating_duration_since(earlier.0)
    }

    fn add_duration(&self, duration: Duration) -> Self {
        SimInstant(self.0 + duration)
    }
}

/// RFC 6298 estimator state of one peer, in seconds.
#[derive(Clone, Copy)]
struct RtoPeer {
    srtt: f64,
    rttvar: f64,
    rto: f64,
    sampled: bool,
}

/// RFC 6298 retransmission timeout, per peer.
#[derive(Default)]
pub struct Rto {
    peers: Mutex<HashMap<PeerId, RtoPeer>>,
}

impl Rto {
    const MIN: f64 = 1.0;
    const MAX: f64 = 60.0;
    const GRANULARITY: f64 = 0.001;

    fn with<R>(&self, peer: PeerId, f: impl FnOnce(&mut RtoPeer) -> R) -> R {
        let mut peers = self.peers.lock().expect("not poisoned");
        f(peers.entry(peer).or_insert(RtoPeer {
            srtt: 0.0,
            rttvar: 0.0,
            rto: Self::MIN,
            sampled: false,
        }))
    }
}

impl PeerTimer for Rto {
    fn answered(&self, peer: PeerId, t: &Started, now: Instant) {
        let r = (now - t.at).as_secs_f64();
        self.with(peer, |p| {
            if p.sampled {
                p.rttvar = 0.75 * p.rttvar + 0.25 * (p.srtt - r).abs();
                p.srtt = 0.875 * p.srtt + 0.125 * r;
            } else {
                (p.srtt, p.rttvar, p.sampled) = (r, r / 2.0, true);
            }
            p.rto = (p.srtt + (4.0 * p.rttvar).max(Self::GRANULARITY)).clamp(Self::MIN, Self::MAX);
        });
    }

    fn cut(&self, peer: PeerId, t: &Started, _: Instant) {
        // Back off once per expiry of the current RTO, not once per concurrent call.
        self.with(peer, |p| {
            if t.deadline.as_secs_f64() >= p.rto {
                p.rto = (p.rto * 2.0).min(Self::MAX);
            }
        });
    }

    fn deadline(&self, peer: PeerId, _: Instant) -> Duration {
        Duration::from_secs_f64(self.with(peer, |p| p.rto))
    }
}

/// The `adaptive-timeout` crate's tracker and timeout selection, at their defaults.
#[derive(Default)]
pub struct CrateFormula {
    tracker: SyncLatencyTracker<PeerId, SimInstant>,
    timeout: CrateTimeout,
}

impl PeerTimer for CrateFormula {
    fn answered(&self, peer: PeerId, t: &Started, now: Instant) {
        self.tracker
            .record_latency(&peer, now - t.at, SimInstant(now));
    }

    fn cut(&self, _: PeerId, _: &Started, _: Instant) {
        // The crate learns only from observed latencies; its back-off is per retry.
    }

    fn deadline(&self, peer: PeerId, now: Instant) -> Duration {
        self.timeout
            .select_timeout_sync(&self.tracker, [&peer], 1, SimInstant(now))
    }
}

/// Answer inter-arrival history of one peer, in seconds.
struct PhiPeer {
    last: Option<Instant>,
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
}

impl PhiPeer {
    fn new() -> Self {
        let mut p = PhiPeer {
            last: None,
            intervals: VecDeque::new(),
            sum: 0.0,
            sum_sq: 0.0,
        };
        // Akka's bootstrap: two intervals around the first estimate (1 s, sd 250 ms).
        p.push(Phi::FIRST_ESTIMATE * 0.75);
        p.push(Phi::FIRST_ESTIMATE * 1.25);
        p
    }

    fn push(&mut self, interval: f64) {
        if self.intervals.len() == Phi::SAMPLES {
            let old = self.intervals.pop_front().unwrap_or_default();
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.intervals.push_back(interval);
        self.sum += interval;
        self.sum_sq += interval * interval;
    }

    /// Silence after which phi passes the threshold: `mean + y x sd`.
    fn threshold(&self, y: f64) -> Duration {
        let n = self.intervals.len() as f64;
        let mean = self.sum / n;
        let sd = (self.sum_sq / n - mean * mean).max(0.0).sqrt();
        Duration::from_secs_f64(mean + y * sd.max(Phi::MIN_SD))
    }
}

/// Phi-accrual failure detector over the answers of each peer.
pub struct Phi {
    peers: Mutex<HashMap<PeerId, PhiPeer>>,
    /// Standard deviations past the mean at which phi reaches the threshold.
    y: f64,
}

impl Default for Phi {
    fn default() -> Self {
        Phi {
            peers: Mutex::default(),
            y: Phi::y_at(Phi::THRESHOLD),
        }
    }
}

impl Phi {
    const THRESHOLD: f64 = 8.0;
    const SAMPLES: usize = 1000;
    const MIN_SD: f64 = 0.1;
    const FIRST_ESTIMATE: f64 = 1.0;

    /// Akka's phi for `y` standard deviations past the mean.
    fn phi(y: f64) -> f64 {
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        -(e / (1.0 + e)).log10()
    }

    /// Solves `phi(y) = threshold` by bisection (phi grows with y).
    fn y_at(threshold: f64) -> f64 {
        let (mut lo, mut hi) = (0.0_f64, 20.0_f64);
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if Phi::phi(mid) < threshold {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }

    fn with<R>(&self, peer: PeerId, f: impl FnOnce(&mut PhiPeer) -> R) -> R {
        let mut peers = self.peers.lock().expect("not poisoned");
        f(peers.entry(peer).or_insert_with(PhiPeer::new))
    }
}

impl PeerTimer for Phi {
    fn cut_at(&self, peer: PeerId, call: &Started) -> Instant {
        let y = self.y;
        self.with(peer, |p| {
            p.last.map_or(call.at, |l| l.max(call.at)) + p.threshold(y)
        })
    }

    fn answered(&self, peer: PeerId, _: &Started, now: Instant) {
        self.with(peer, |p| {
            if let Some(last) = p.last {
                p.push((now - last).as_secs_f64());
            }
            p.last = Some(now);
        });
    }

    fn cut(&self, _: PeerId, _: &Started, _: Instant) {}

    fn deadline(&self, peer: PeerId, _: Instant) -> Duration {
        let y = self.y;
        self.with(peer, |p| p.threshold(y))
    }
}
