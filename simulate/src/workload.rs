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
    /// The silence comes back: this many silences in all, each this fraction of the run
    /// after the one before (repeated partitions).
    pub repeat: Option<(u16, f64)>,
    /// A lossy link: this share of calls loses a packet and waits one retransmission
    /// timeout ([`RTO`]); the same share of those loses the retransmission too and waits
    /// three ([`RTO`] and its doubling).
    pub loss: Option<f64>,
    /// The host's CPU stalls every [`STALL_EVERY`] for 100-300 ms: work in progress waits
    /// out the part of the stall it overlaps.
    pub stalls: bool,
    /// Callers start at once, all together (a peer busy from its first call), instead of
    /// after a think time.
    pub eager: bool,
    /// A quiet peer: one caller making this many calls a minute (exponential gaps), in
    /// place of the run's closed-loop callers.
    pub pace: Option<f64>,
    /// Identical peers of this name (separate keys, one line in the report).
    pub replicas: u16,
    /// A second, rare route on the same peer: its name, latency, and one call in how many.
    pub slow_route: Option<SlowRoute>,
}

/// A rare route of a peer, slower than its usual calls.
#[derive(Clone, Copy, Debug)]
pub struct SlowRoute {
    /// Its name in the report (and its latency class).
    pub name: &'static str,
    /// Its latency.
    pub tail: Tail,
    /// One call in this many takes it.
    pub one_in: u64,
}

/// A TCP retransmission timeout: Linux's `tcp_rto_min`, the least a lost packet costs.
pub const RTO: Duration = Duration::from_millis(200);

/// How often a stalling host's CPU stalls.
pub const STALL_EVERY: Duration = Duration::from_secs(30);

/// The name of a peer's usual route, when it has a slow one (and its latency class).
pub const MAIN_ROUTE: &str = "/items/:id";

/// A named set of peers.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Short name.
    pub name: &'static str,
    /// What it exercises.
    pub about: &'static str,
    /// Its peers.
    pub peers: Vec<PeerSpec>,
    /// Its runs last this many times the configured duration.
    pub length: u32,
}

const fn peer(name: &'static str, tail: Tail) -> PeerSpec {
    PeerSpec {
        name,
        tail,
        shift: None,
        silence: None,
        repeat: None,
        loss: None,
        stalls: false,
        eager: false,
        pace: None,
        replicas: 1,
        slow_route: None,
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

/// The quiet workload's peers: each healthy shape at 1, 6 and 30 calls a minute, 20
/// replicas each (so a rate of 0.1% is a count of calls), and one quiet peer that goes
/// silent.
fn quiet(healthy: &[PeerSpec]) -> Vec<PeerSpec> {
    const NAMES: [[&str; 3]; 5] = [
        ["ln-fast@1", "ln-fast@6", "ln-fast@30"],
        ["ln-wide@1", "ln-wide@6", "ln-wide@30"],
        ["pareto-mild@1", "pareto-mild@6", "pareto-mild@30"],
        ["pareto-heavy@1", "pareto-heavy@6", "pareto-heavy@30"],
        ["ln-slow@1", "ln-slow@6", "ln-slow@30"],
    ];
    let mut quiet = Vec::new();
    for (names, shape) in NAMES.iter().zip(healthy) {
        for (name, pace) in names.iter().zip([1.0, 6.0, 30.0]) {
            quiet.push(PeerSpec {
                pace: Some(pace),
                replicas: 20,
                ..peer(name, shape.tail)
            });
        }
    }
    quiet.push(PeerSpec {
        pace: Some(6.0),
        silence: Some((0.5, 0.75)),
        ..peer("silent-quiet@6", LN_SILENT)
    });
    quiet
}

/// The workloads, in report order.
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
    let quiet = quiet(&healthy);
    let mixed = vec![PeerSpec {
        slow_route: Some(SlowRoute {
            name: "/report",
            tail: lognormal(500.0, 0.3),
            one_in: 2_000,
        }),
        ..peer("one-host", LN_FAST)
    }];
    let lossy = |name, about, loss: f64, names: [&'static str; 3]| {
        let shapes = [LN_FAST, LN_SILENT, PARETO_MILD];
        let peers = (names.into_iter().zip(shapes))
            .map(|(name, tail)| PeerSpec {
                loss: Some(loss),
                eager: true,
                ..peer(name, tail)
            })
            .collect();
        Workload {
            name,
            about,
            peers,
            length: 1,
        }
    };
    let busy_start = [healthy.clone(), vec![peer("ln-silent-shape", LN_SILENT)]]
        .concat()
        .into_iter()
        .map(|p| PeerSpec { eager: true, ..p })
        .collect();
    let stalling = vec![
        PeerSpec {
            stalls: true,
            ..peer("stall-fast", LN_FAST)
        },
        PeerSpec {
            stalls: true,
            ..peer("stall-20ms", LN_SILENT)
        },
        peer("ln-fast", LN_FAST),
    ];
    let partitions = vec![
        PeerSpec {
            silence: Some((0.10, 0.10 + 5.0 / 120.0)),
            repeat: Some((4, 10.0 / 120.0)),
            ..peer("partitioned", lognormal(12.0, 0.2))
        },
        peer("ln-fast", LN_FAST),
    ];
    vec![
        Workload {
            name: "heavy-tail",
            about: "healthy peers with lognormal and Pareto latency tails",
            peers: healthy,
            length: 1,
        },
        Workload {
            name: "shift",
            about: "one peer's latency grows 5x halfway through the run",
            peers: shift,
            length: 1,
        },
        Workload {
            name: "silent",
            about: "three peers go silent mid-run with calls in flight, then come back",
            peers: silent,
            length: 1,
        },
        Workload {
            name: "quiet",
            about: "quiet peers: every healthy shape at 1, 6 and 30 calls a minute (20 peers \
                    each), one quiet peer goes silent; 30x the run's length",
            peers: quiet,
            length: 30,
        },
        Workload {
            name: "mixed-route",
            about: "one host, a fast route and a rare slow one (1 call in 2,000) under one \
                    key; 3x the run's length",
            peers: mixed,
            length: 3,
        },
        lossy(
            "lossy-2%",
            "a lossy link: 2% of calls wait a 200 ms retransmission, 0.04% two (600 ms); \
             callers start together",
            0.02,
            ["ln-fast 2%", "20ms 2%", "pareto-mild 2%"],
        ),
        lossy(
            "lossy-5%",
            "a lossy link: 5% of calls wait a 200 ms retransmission, 0.25% two (600 ms); \
             callers start together",
            0.05,
            ["ln-fast 5%", "20ms 5%", "pareto-mild 5%"],
        ),
        Workload {
            name: "busy-start",
            about: "every healthy shape busy from its first call: all callers start together",
            peers: busy_start,
            length: 1,
        },
        Workload {
            name: "cpu-stall",
            about: "two peers on a host whose CPU stalls for 100-300 ms every 30 s, one \
                    neighbour on another",
            peers: stalling,
            length: 1,
        },
        Workload {
            name: "partitions",
            about: "one peer partitioned four times for 5 s, 10 s apart: calls in flight \
                    never end",
            peers: partitions,
            length: 1,
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
    /// When the peer is silent, in order.
    pub silences: Vec<(Duration, Duration)>,
}

/// The `k`-th stall of a stalling host (from `k` = 1): when it starts and how long it lasts
/// (100-300 ms, the same in every run).
pub fn stall(k: u64) -> (Duration, Duration) {
    let length = 100.0 + 200.0 * Rng::new(k, 0x57a1).open_unit();
    (
        STALL_EVERY * k as u32,
        Duration::from_secs_f64(length / 1e3),
    )
}

/// How much longer a call that starts at `start` and needs `work` takes on a stalling host:
/// the part of a stall that falls within its life.
fn stalled(start: Duration, work: Duration) -> Duration {
    let k = (start.as_nanos() / STALL_EVERY.as_nanos()) as u64;
    let mut extra = Duration::ZERO;
    for k in [k, k + 1].into_iter().filter(|k| *k > 0) {
        let (from, length) = stall(k);
        let until = from + length;
        if start < until && start + work + extra > from {
            extra += until - start.max(from);
        }
    }
    extra
}

impl PeerPlan {
    /// Lays `spec` out over a run of `duration`.
    pub fn new(spec: &PeerSpec, duration: Duration) -> Self {
        PeerPlan {
            spec: spec.clone(),
            shift: spec.shift.map(|(at, f)| (duration.mul_f64(at), f)),
            silences: spec.silence.map_or(Vec::new(), |(a, b)| {
                let (times, every) = spec.repeat.unwrap_or((1, 0.0));
                (0..times)
                    .map(|i| {
                        let shift = every * f64::from(i);
                        (duration.mul_f64(a + shift), duration.mul_f64(b + shift))
                    })
                    .collect()
            }),
        }
    }

    /// Every peer of `workload` (each of its replicas), laid out over a run of `duration`.
    pub fn all(workload: &Workload, duration: Duration) -> Vec<PeerPlan> {
        workload
            .peers
            .iter()
            .flat_map(|p| std::iter::repeat_n(p, usize::from(p.replicas.max(1))))
            .map(|p| PeerPlan::new(p, duration))
            .collect()
    }

    /// Draws a call starting at `start`: its route (0: the usual one, 1: the slow one),
    /// its would-be latency, and when it is answered (`None` if the peer is silent at
    /// some point of its life). A peer without a slow route draws no route, so its
    /// stream is the same as before routes existed.
    pub fn draw(&self, start: Duration, rng: &mut Rng) -> (u8, Duration, Option<Duration>) {
        let (route, tail) = match self.spec.slow_route {
            Some(slow) if rng.below(slow.one_in) == 0 => (1, slow.tail),
            _ => (0, self.spec.tail),
        };
        let mut latency = tail.sample(rng);
        if let Some((at, factor)) = self.shift {
            if start >= at {
                latency = latency.mul_f64(factor);
            }
        }
        if let Some(p) = self.spec.loss {
            let u = rng.open_unit();
            if u < p * p {
                latency += RTO * 3;
            } else if u < p {
                latency += RTO;
            }
        }
        if self.spec.stalls {
            latency += stalled(start, latency);
        }
        let lost =
            (self.silences.iter()).any(|&(from, until)| start < until && start + latency >= from);
        (route, latency, (!lost).then_some(latency))
    }

    /// The name of `route` of this peer: the peer's name, with the route's when it has a
    /// slow one.
    pub fn route_name(&self, route: u8) -> String {
        match (self.spec.slow_route, route) {
            (None, _) => self.spec.name.to_string(),
            (Some(_), 0) => format!("{} {MAIN_ROUTE}", self.spec.name),
            (Some(slow), _) => format!("{} {}", self.spec.name, slow.name),
        }
    }

    /// The latency class of `route`: the route's name when the peer has a slow one.
    pub fn class(&self, route: u8) -> Option<&'static str> {
        let slow = self.spec.slow_route?;
        Some(if route == 0 { MAIN_ROUTE } else { slow.name })
    }
}

/// A call: which peer, which latency class, and after how long the peer answers it
/// (`None`: never).
#[derive(Clone, Copy, Debug)]
pub struct Req {
    /// The peer.
    pub peer: PeerId,
    /// The call's route, as a latency class (`None`: the peer has one route).
    pub class: Option<&'static str>,
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
