//! The strategy simulator: timeout strategies, as tower layers over the same simulated
//! peers, compared on heavy-tailed, shifting and silent peers.
//!
//! Deterministic by construction: tokio's paused clock (time only moves when every task
//! waits), a single-threaded runtime, a seeded random stream per caller, and
//! `tower-adaptive-timeout`'s layer with its probe jitter seeded from the same seed, so the
//! same seed gives the same calls and the same tables, byte for byte.
//!
//! The binary (`cargo run --release -p simulate`) prints the report EVALUATION.md holds;
//! `tests/invariants.rs` checks what must hold of every run.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod driver;
pub mod hedging;
pub mod per_stall;
pub mod report;
pub mod skeleton;
pub mod strategies;
pub mod sweep;
pub mod workload;

use std::time::Duration;

use report::{Report, Row, Table};
use strategies::Kind;
use workload::PeerPlan;

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ending {
    /// The peer answered.
    Answered,
    /// The strategy cut it: deadline, timeout or failure detector.
    Deadline,
    /// Cut in flight because the peer was declared silent.
    Silent,
    /// Refused at once because the peer was declared silent.
    Refused,
    /// Still running after [`driver::HUNG_AFTER`]; abandoned by the simulation.
    Hung,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of every random stream.
    pub seed: u64,
    /// Simulated length of each run.
    pub duration: Duration,
    /// Concurrent callers per peer.
    pub callers: usize,
    /// Mean think time between a caller's calls (exponential).
    pub think: Duration,
    /// Workloads to run (indices into [`workload::workloads`]).
    pub workloads: Vec<usize>,
    /// Strategies to compare.
    pub kinds: Vec<Kind>,
}

impl SimConfig {
    /// The full comparison: every workload and strategy, 16 callers per peer, 120 s runs.
    pub fn full(seed: u64) -> Self {
        SimConfig {
            seed,
            duration: Duration::from_secs(120),
            callers: 16,
            think: Duration::from_millis(20),
            workloads: (0..workload::workloads().len()).collect(),
            kinds: Kind::ALL.to_vec(),
        }
    }

    /// A short version: 30 s runs, 8 callers per peer, slower pace.
    pub fn quick(seed: u64) -> Self {
        SimConfig {
            duration: Duration::from_secs(30),
            callers: 8,
            think: Duration::from_millis(50),
            ..SimConfig::full(seed)
        }
    }
}

/// Runs every configured strategy over every configured workload. Must run on a
/// current-thread runtime with the clock paused.
pub async fn simulate(cfg: &SimConfig) -> Report {
    let all = workload::workloads();
    let mut tables = Vec::new();
    for &w in &cfg.workloads {
        let workload = all[w].clone();
        let run_cfg = SimConfig {
            duration: cfg.duration * workload.length,
            ..cfg.clone()
        };
        let plans = PeerPlan::all(&workload, run_cfg.duration);
        let mut rows = Vec::new();
        for &kind in &cfg.kinds {
            let strategy = strategies::build(kind, cfg.seed);
            let run = driver::run(&plans, &strategy, &run_cfg, w as u64).await;
            rows.push(Row::new(kind, &plans, &run));
        }
        tables.push(Table { workload, rows });
    }
    Report {
        config: cfg.clone(),
        tables,
    }
}
