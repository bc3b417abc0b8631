//! The workloads: simulated peers, their latency, when they go silent, and the inner
//! service every strategy wraps.
//!
//! Every call's fate is decided when it starts, from the caller's own random stream: its
//! would-be latency, and whether the peer will ever answer it. A peer that is silent over
//! `[from, until)` answers no call whose life overlaps that span (a blackhole: requests
//! and replies are lost, nothing is refused); calls that start after `until` are answered
//! normally. Knowing the would-be latency is what lets the report tell a false interrupt
//! from a justified one.

use std::convert::Infallible;
use std::time::Duration;

use loopback::Rng;

/// Index of a peer within its workload.
pub type PeerId = u16;

/// A peer's latency distribution.
#[derive(Clone, Copy, Debug)]
pub enum Tail {
    /// Lognormal.
    LogNormal {
        /// Median, in milliseconds.
        median: f64,
        /// Shape.
        sigma: f64,
    },
    /// Pareto.
    Pareto {
        /// The smallest value, in milliseconds.
        min: f64,
        /// Tail index (smaller is heavier).
        alpha: f64,
    },
}

impl Tail {
    /// One would-be latency.
    pub fn sample(self, rng: &mut Rng) -> Duration {
        let ms = match self {
            Tail::LogNormal { median, sigma } => rng.lognormal(median, sigma),
            Tail::Pareto { min, alpha } => rng.pareto(min, alpha),
        };
        // Bounded so a freak draw cannot overflow a Duration; 10 minutes is far past
        // every strategy's longest deadline.
        Duration::from_secs_f64((ms / 1e3).min(600.0))
    }

    /// A short description for the report.
    pub fn describe(self) -> String {
        match self {
            Tail::LogNormal { median, sigma } => format!("lognormal median {median}ms s={sigma}"),
            Tail::Pareto { min, alpha } => format!("Pareto min {min}ms a={alpha}"),
        }
    }
}

/// One simulated peer. Times are fractions of the run's duration, so a short run keeps the
/// same shape.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    /// Name in the report.
    pub name: &'static str,
    /// Latency while healthy.
    pub tail: Tail,
    /// From this fraction of the run on, latency is multiplied by the factor.
    pub shift: Option<(f64, f64)>,
    /// Silent over this span (fractions of the run).
    pub silence: Option<(f64, f64)>,
}

/// A named set of peers.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Short name.
    pub name: &'static str,
    /// What it exercises.
    pub about: &'static str,
    /// Its peers.
    pub peers: Vec<PeerSpec>,
}

const fn peer(name: &'static str, tail: Tail) -> PeerSpec {
    PeerSpec {
        name,
        tail,
        shift: None,
        silence: None,
    }
}

const fn lognormal(median: f64, sigma: f64) -> Tail {
    Tail::LogNormal { median, sigma }
}

const fn pareto(min: f64, alpha: f64) -> Tail {
    Tail::Pareto { min, alpha }
}

const LN_FAST: Tail = lognormal(10.0, 0.5);
const LN_WIDE: Tail = lognormal(30.0, 1.0);
const PARETO_MILD: Tail = pareto(5.0, 3.0);
const PARETO_HEAVY: Tail = pareto(10.0, 1.5);
const LN_SLOW: Tail = lognormal(300.0, 0.5);
const LN_SILENT: Tail = lognormal(20.0, 0.6);

/// The three workloads, in report order.
pub fn workloads() -> Vec<Workload> {
    let healthy = vec![
        peer("ln-fast", LN_FAST),
        peer("ln-wide", LN_WIDE),
        peer("pareto-mild", PARETO_MILD),
        peer("pareto-heavy", PARETO_HEAVY),
        // Slow but healthy: its tail reaches past 1 s, where fixed and floored deadlines sit.
        peer("ln-slow", LN_SLOW),
    ];
    let mut shift = vec![healthy[0].clone(), healthy[1].clone(), healthy[2].clone()];
    shift.push(PeerSpec {
        shift: Some((0.5, 5.0)),
        ..peer("shift-5x", LN_SILENT)
    });
    let mut silent = healthy.clone();
    for (name, from, until) in [
        ("silent-long", 0.30, 0.60),
        ("silent-short", 0.50, 0.55),
        ("silent-late", 0.70, 0.90),
    ] {
        silent.push(PeerSpec {
            silence: Some((from, until)),
            ..peer(name, LN_SILENT)
        });
    }
    vec![
        Workload {
            name: "heavy-tail",
            about: "healthy peers with lognormal and Pareto latency tails",
            peers: healthy,
        },
        Workload {
            name: "shift",
            about: "one peer's latency grows 5x halfway through the run",
            peers: shift,
        },
        Workload {
            name: "silent",
            about: "three peers go silent mid-run with calls in flight, then come back",
            peers: silent,
        },
    ]
}

/// A peer of a workload, with its times made absolute for one run (offsets from the start).
#[derive(Clone, Debug)]
pub struct PeerPlan {
    /// The spec it came from.
    pub spec: PeerSpec,
    /// When latency shifts, and by how much.
    pub shift: Option<(Duration, f64)>,
    /// When the peer is silent.
    pub silence: Option<(Duration, Duration)>,
}

impl PeerPlan {
    /// Lays `spec` out over a run of `duration`.
    pub fn new(spec: &PeerSpec, duration: Duration) -> Self {
        PeerPlan {
            spec: spec.clone(),
            shift: spec.shift.map(|(at, f)| (duration.mul_f64(at), f)),
            silence: spec
                .silence
                .map(|(a, b)| (duration.mul_f64(a), duration.mul_f64(b))),
        }
    }

    /// Every peer of `workload`, laid out over a run of `duration`.
    pub fn all(workload: &Workload, duration: Duration) -> Vec<PeerPlan> {
        workload
            .peers
            .iter()
            .map(|p| PeerPlan::new(p, duration))
            .collect()
    }

    /// Draws a call starting at `start`: its would-be latency, and when it is answered
    /// (`None` if the peer is silent at some point of its life).
    pub fn draw(&self, start: Duration, rng: &mut Rng) -> (Duration, Option<Duration>) {
        let mut latency = self.spec.tail.sample(rng);
        if let Some((at, factor)) = self.shift {
            if start >= at {
                latency = latency.mul_f64(factor);
            }
        }
        let lost = self
            .silence
            .is_some_and(|(from, until)| start < until && start + latency >= from);
        (latency, (!lost).then_some(latency))
    }
}

/// A call: which peer, and after how long the peer answers it (`None`: never).
#[derive(Clone, Copy, Debug)]
pub struct Req {
    /// The peer.
    pub peer: PeerId,
    /// When the answer comes, from the call's start.
    pub answer_in: Option<Duration>,
}

/// The simulated peers as a service. The error type is concrete (not a boxed error) so
/// calls through the layers can be spawned.
pub fn peers_service() -> tower::util::BoxCloneSyncService<Req, (), Infallible> {
    tower::util::BoxCloneSyncService::new(tower::service_fn(|req: Req| async move {
        match req.answer_in {
            Some(latency) => tokio::time::sleep(latency).await,
            None => std::future::pending::<()>().await,
        }
        Ok::<(), Infallible>(())
    }))
}
