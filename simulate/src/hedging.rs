//! Hedged calls on a heavy-tail workload: this layer unhedged, hedged at its defaults (and
//! at other quantiles), and `tower::hedge` over the same layer at about the same extra load.
//!
//! The workload (after "The Tail at Scale"): four peers whose answers are lognormal
//! (medians 2, 4, 8 and 16 ms, sigma 0.4), 3% of them delayed further by a Pareto draw
//! (at least 100 ms, alpha 1.5, at most 2 s): a GC pause, a retransmission, a cold cache.
//! Each call to a peer, a copy included, draws its own latency. Closed-loop callers, on
//! tokio's paused clock, seeded: the same seed gives the same table.
//!
//! `cargo run --release -p simulate -- --hedging` prints the table EVALUATION.md holds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use loopback::Rng;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutLayer, Hedging, TimeoutPolicy, DEFAULT_HEDGE_QUANTILE,
};

/// Median latency of each peer, in milliseconds.
const MEDIANS: [f64; 4] = [2.0, 4.0, 8.0, 16.0];
/// Spread of the usual answers.
const SIGMA: f64 = 0.4;
/// Share of answers in the slow mode.
const SLOW: f64 = 0.03;
/// The slow mode's extra delay: Pareto, at least this many milliseconds...
const SLOW_MIN: f64 = 100.0;
/// ... with this tail index ...
const SLOW_ALPHA: f64 = 1.5;
/// ... and at most this many.
const SLOW_MAX: f64 = 2_000.0;

/// A request to one simulated peer.
#[derive(Clone, Copy, Debug)]
pub struct HReq {
    /// Which peer.
    pub peer: u16,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct HedgeConfig {
    /// Seed of every random stream.
    pub seed: u64,
    /// Simulated length of each run.
    pub duration: Duration,
    /// Concurrent callers per peer.
    pub callers: u64,
    /// Mean think time between a caller's calls (exponential).
    pub think: Duration,
}

impl HedgeConfig {
    /// 120 s runs, 8 callers per peer, 20 ms think time (about 1,300 requests a second).
    pub fn full(seed: u64) -> Self {
        HedgeConfig {
            seed,
            duration: Duration::from_secs(120),
            callers: 8,
            think: Duration::from_millis(20),
        }
    }

    /// 30 s runs.
    pub fn quick(seed: u64) -> Self {
        HedgeConfig {
            duration: Duration::from_secs(30),
            ..HedgeConfig::full(seed)
        }
    }
}

/// Which stack.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HedgeKind {
    /// This layer at its defaults, no hedging.
    Unhedged,
    /// This layer hedged at `quantile`, its budget at its default.
    Layer {
        /// The hedge quantile.
        quantile: f64,
    },
    /// `tower::hedge` (one histogram for the service, 10 s period, 100 data points) at
    /// `percentile`, over this layer unhedged, shared by the callers through a
    /// `tower::buffer`.
    Tower {
        /// tower's latency percentile.
        percentile: f32,
    },
}

impl HedgeKind {
    /// Name in the table.
    pub fn name(self) -> String {
        match self {
            HedgeKind::Unhedged => "this layer, unhedged".into(),
            HedgeKind::Layer { quantile } if quantile == DEFAULT_HEDGE_QUANTILE => {
                format!("this layer, hedged at defaults (p{})", percent(quantile))
            }
            HedgeKind::Layer { quantile } => {
                format!("this layer, hedged at p{}", percent(quantile))
            }
            HedgeKind::Tower { percentile } => {
                format!("tower::hedge at p{}", percent(f64::from(percentile)))
            }
        }
    }
}

/// A quantile as a percentile, to a tenth.
fn percent(q: f64) -> f64 {
    (q * 1000.0).round() / 10.0
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct HedgeRow {
    /// The stack.
    pub kind: HedgeKind,
    /// Requests made.
    pub requests: usize,
    /// Calls the peers saw, over requests, less one: the extra load.
    pub extra: f64,
    /// Requests that ended in an error (a deadline, mostly).
    pub errors: usize,
    /// Latency quantiles of every request, from its start to its result: p50, p99, p99.9.
    pub latency: [Duration; 3],
}

/// A peer's latency for one call.
fn draw(rng: &mut Rng, peer: u16) -> Duration {
    let mut ms = rng.lognormal(MEDIANS[usize::from(peer)], SIGMA);
    if rng.open_unit() < SLOW {
        ms += rng.pareto(SLOW_MIN, SLOW_ALPHA).min(SLOW_MAX);
    }
    Duration::from_secs_f64(ms / 1e3)
}

/// The simulated peers: each call draws its latency from its peer's own stream. Counts the
/// calls they see.
fn peers(seed: u64, calls: Arc<Mutex<u64>>) -> BoxCloneSyncService<HReq, (), BoxError> {
    let rngs: Arc<Vec<Mutex<Rng>>> = Arc::new(
        (0..MEDIANS.len() as u64)
            .map(|p| Mutex::new(Rng::new(seed, 0xfeed_0000 + p)))
            .collect(),
    );
    BoxCloneSyncService::new(tower::service_fn(move |req: HReq| {
        *calls.lock().unwrap() += 1;
        let latency = draw(&mut rngs[usize::from(req.peer)].lock().unwrap(), req.peer);
        async move {
            tokio::time::sleep(latency).await;
            Ok::<_, BoxError>(())
        }
    }))
}

/// Copies every request: for `tower::hedge`.
#[derive(Clone, Copy, Debug)]
struct Always;

impl tower::hedge::Policy<HReq> for Always {
    fn clone_request(&self, req: &HReq) -> Option<HReq> {
        Some(*req)
    }
    fn can_retry(&self, _req: &HReq) -> bool {
        true
    }
}

/// The stack of `kind` over fresh peers.
fn stack(
    kind: HedgeKind,
    seed: u64,
    calls: Arc<Mutex<u64>>,
) -> BoxCloneSyncService<HReq, (), BoxError> {
    let layer = AdaptiveTimeoutLayer::builder((|r: &HReq| r.peer) as fn(&HReq) -> u16)
        .policy(TimeoutPolicy::default())
        .jitter_seed(seed)
        .build()
        .expect("a valid policy");
    let inner = peers(seed, calls);
    match kind {
        HedgeKind::Unhedged => BoxCloneSyncService::new(layer.layer(inner)),
        HedgeKind::Layer { quantile } => {
            let copy = (|r: &HReq| Some(*r)) as fn(&HReq) -> Option<HReq>;
            let hedged = layer
                .hedged(Hedging::new(copy).quantile(quantile))
                .expect("valid hedging");
            BoxCloneSyncService::new(hedged.layer(inner))
        }
        // `tower::hedge::Hedge` is not `Clone`: the callers share it through a buffer (a
        // task hop, which costs no simulated time).
        HedgeKind::Tower { percentile } => {
            let hedge = tower::hedge::Hedge::new(
                layer.layer(inner),
                Always,
                100,
                percentile,
                Duration::from_secs(10),
            );
            BoxCloneSyncService::new(tower::buffer::Buffer::new(hedge, 1024))
        }
    }
}

/// Runs one stack over the workload.
pub async fn run(kind: HedgeKind, cfg: &HedgeConfig) -> HedgeRow {
    let calls = Arc::new(Mutex::new(0));
    let svc = stack(kind, cfg.seed, calls.clone());
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for peer in 0..MEDIANS.len() as u16 {
        for caller in 0..cfg.callers {
            let mut svc = svc.clone();
            let mut rng = Rng::new(cfg.seed, (u64::from(peer) << 20) | caller);
            let (think, end) = (cfg.think.as_secs_f64(), cfg.duration);
            set.spawn(async move {
                let mut ended = Vec::new();
                while Instant::now() - t0 < end {
                    let start = Instant::now();
                    let ok = async { svc.ready().await?.call(HReq { peer }).await }
                        .await
                        .is_ok();
                    ended.push((start.elapsed(), ok));
                    let pause = rng.exponential(think);
                    tokio::time::sleep(Duration::from_secs_f64(pause)).await;
                }
                ended
            });
        }
    }
    let ended: Vec<(Duration, bool)> = set.join_all().await.into_iter().flatten().collect();
    let mut latencies: Vec<Duration> = ended.iter().map(|e| e.0).collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let requests = ended.len();
    let seen = *calls.lock().unwrap();
    HedgeRow {
        kind,
        requests,
        extra: seen as f64 / requests as f64 - 1.0,
        errors: ended.iter().filter(|e| !e.1).count(),
        latency: [at(0.5), at(0.99), at(0.999)],
    }
}

/// The comparison: unhedged, this layer at its default quantile and at p90, p95, p97 and
/// p99, and `tower::hedge` at percentiles around the default's extra load. Must run on a
/// current-thread runtime with the clock paused.
pub async fn compare(cfg: &HedgeConfig) -> Vec<HedgeRow> {
    let mut rows = Vec::new();
    for kind in [
        HedgeKind::Unhedged,
        HedgeKind::Layer {
            quantile: DEFAULT_HEDGE_QUANTILE,
        },
        HedgeKind::Layer { quantile: 0.9 },
        HedgeKind::Layer { quantile: 0.95 },
        HedgeKind::Layer { quantile: 0.97 },
        HedgeKind::Layer { quantile: 0.99 },
        HedgeKind::Tower { percentile: 0.97 },
        HedgeKind::Tower { percentile: 0.98 },
        HedgeKind::Tower { percentile: 0.99 },
    ] {
        rows.push(run(kind, cfg).await);
    }
    rows
}

/// The rows as a markdown table.
pub fn markdown(cfg: &HedgeConfig, rows: &[HedgeRow]) -> String {
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
    let mut out = format!(
        "Heavy tail, hedged: 4 peers (lognormal medians 2/4/8/16 ms, s=0.4; 3% slowed by \
         Pareto >= 100 ms a=1.5, <= 2 s), {} callers per peer, {} ms think time, {} s, seed {}\n\n",
        cfg.callers,
        cfg.think.as_millis(),
        cfg.duration.as_secs(),
        cfg.seed
    );
    out += "| stack | requests | extra calls | errors | p50 ms | p99 ms | p99.9 ms |\n";
    out += "|---|---|---|---|---|---|---|\n";
    for r in rows {
        out += &format!(
            "| {} | {} | {:.2}% | {} | {} | {} | {} |\n",
            r.kind.name(),
            r.requests,
            r.extra * 100.0,
            r.errors,
            ms(r.latency[0]),
            ms(r.latency[1]),
            ms(r.latency[2]),
        );
    }
    out
}
