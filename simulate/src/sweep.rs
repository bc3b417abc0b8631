//! The probe-cadence sweep (`--sweep-probes`): this layer on the silent workload under
//! different probe settings, for what each costs in time wasted in flight to silent peers
//! and what it buys in return lag and calls lost after a peer comes back. EVALUATION.md's
//! recovery table is its output.
//!
//! Every run is the main report's silent workload with the same random streams, so the
//! defaults' row matches the report's `this layer (defaults)` row.

use std::fmt::Write as _;
use std::time::Duration;

use tower_adaptive_timeout::{TimeoutPolicy, DEFAULT_MAX_CLASSES};

use crate::report::{human, Row, Spread};
use crate::strategies::{layer, Kind};
use crate::workload::{workloads, PeerPlan};
use crate::{driver, SimConfig};

/// The seeds the sweep runs by default.
pub const SEEDS: [u64; 2] = [20_240_601, 7];

/// One probe cadence: the policy settings that say when probes go and with what deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cadence {
    /// [`TimeoutPolicy::long_probe_spacing`].
    pub spacing: u32,
    /// [`TimeoutPolicy::probe_backoff`].
    pub backoff: Duration,
    /// [`TimeoutPolicy::probe_backoff_max`].
    pub backoff_max: Duration,
    /// [`TimeoutPolicy::fail_fast`].
    pub fail_fast: bool,
}

impl Cadence {
    /// Fail-fast probing with the long-probe `spacing` and a backoff from `backoff_ms` to
    /// `max_ms`.
    pub const fn new(spacing: u32, backoff_ms: u64, max_ms: u64) -> Self {
        Cadence {
            spacing,
            backoff: Duration::from_millis(backoff_ms),
            backoff_max: Duration::from_millis(max_ms),
            fail_fast: true,
        }
    }

    /// The default policy with this cadence.
    pub fn policy(self) -> TimeoutPolicy {
        TimeoutPolicy::default()
            .long_probe_spacing(self.spacing)
            .probe_backoff(self.backoff)
            .probe_backoff_max(self.backoff_max)
            .fail_fast(self.fail_fast)
    }

    /// Whether this is the default policy's cadence.
    pub fn is_default(self) -> bool {
        self.policy() == TimeoutPolicy::default()
    }

    /// The row's first two cells: the spacing and the backoff.
    fn cells(self) -> [String; 2] {
        let backoff = format!("{} / {}", human(self.backoff), human(self.backoff_max));
        let spacing = if self.fail_fast {
            self.spacing.to_string()
        } else {
            format!("{} (`fail_fast` off)", self.spacing)
        };
        [spacing, backoff]
    }
}

/// The cadences swept: long-probe spacing 1 (every probe long), 3, 8 and 16, backoffs from
/// back-to-back probes (1 ms) to 0.5-2 s apart, and the defaults with `fail_fast` off.
pub const CADENCES: [Cadence; 17] = [
    Cadence::new(1, 10, 100),
    Cadence::new(3, 500, 2_000),
    Cadence::new(3, 100, 500),
    Cadence::new(3, 50, 250),
    Cadence::new(3, 25, 100),
    Cadence::new(8, 50, 250),
    Cadence::new(8, 50, 100),
    Cadence::new(8, 25, 250),
    Cadence::new(8, 25, 100),
    Cadence::new(8, 10, 200),
    Cadence::new(8, 10, 100),
    Cadence::new(8, 10, 50),
    Cadence::new(8, 1, 1),
    Cadence::new(16, 50, 250),
    Cadence::new(16, 25, 100),
    Cadence::new(16, 10, 100),
    Cadence {
        fail_fast: false,
        ..Cadence::new(8, 10, 100)
    },
];

/// One cadence's figures, one row per seed.
#[derive(Clone, Debug)]
pub struct Point {
    /// The cadence.
    pub cadence: Cadence,
    /// The silent workload's figures under it, one per seed.
    pub rows: Vec<Row>,
}

/// The sweep's results, and how it was run.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// The run settings (its seed is replaced by each of `seeds`).
    pub config: SimConfig,
    /// The seeds, in the order of each point's rows.
    pub seeds: Vec<u64>,
    /// One point per cadence.
    pub points: Vec<Point>,
}

/// Runs the layer under each of `cadences` on the silent workload, once per seed in
/// `seeds`, with `config`'s run length and callers. Must run on a current-thread runtime
/// with the clock paused.
pub async fn sweep(config: &SimConfig, seeds: &[u64], cadences: &[Cadence]) -> Sweep {
    let all = workloads();
    let w = all
        .iter()
        .position(|w| w.name == "silent")
        .expect("the silent workload");
    let plans = PeerPlan::all(&all[w], config.duration);
    let mut points = Vec::new();
    for &cadence in cadences {
        let mut rows = Vec::new();
        for &seed in seeds {
            let cfg = SimConfig {
                seed,
                ..config.clone()
            };
            let strategy = layer::build(cadence.policy(), seed, DEFAULT_MAX_CLASSES);
            let run = driver::run(&plans, &strategy, &cfg, w as u64).await;
            rows.push(Row::new(Kind::Layer, &plans, &run));
        }
        points.push(Point { cadence, rows });
    }
    Sweep {
        config: config.clone(),
        seeds: seeds.to_vec(),
        points,
    }
}

impl Sweep {
    /// The table as Markdown, the defaults' row in bold; each cell holds one figure per
    /// seed. The same settings always give the same text.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        let mut out = format!(
            "probe cadence on the silent workload; seeds {} (each cell: one figure per \
             seed, in that order); {} simulated per run; {} callers per peer, think time \
             exp(mean {}); paused clock\n\n",
            seeds.join(" / "),
            human(c.duration),
            c.callers,
            human(c.think)
        );
        out.push_str(
            "| long-probe spacing | backoff min / max | wasted in flight | lost after return \
             | return lag: median | return lag: max | false interrupts | max cut / deadline |\n",
        );
        out.push_str(&format!("|{}\n", "---|".repeat(8)));
        for point in &self.points {
            let per_seed = |f: &dyn Fn(&Row) -> String| -> String {
                let v: Vec<String> = point.rows.iter().map(f).collect();
                v.join(" / ")
            };
            let lag = |pick: fn(Spread) -> Option<Duration>| {
                move |r: &Row| {
                    r.return_lag()
                        .map_or("-".into(), |m| pick(m).map_or("none".into(), human))
                }
            };
            let mut cells = point.cadence.cells().to_vec();
            cells.extend([
                per_seed(&|r| format!("{:.1}s", r.wasted.as_secs_f64())),
                per_seed(&|r| r.lost_after_return.to_string()),
                per_seed(&lag(|(median, _)| median)),
                per_seed(&lag(|(_, max)| max)),
                per_seed(&|r| format!("{:.3}%", r.false_interrupt_pct())),
                per_seed(&|r| {
                    r.max_cut_in_deadlines()
                        .map_or("-".into(), |x| format!("{x:.2}"))
                }),
            ]);
            if point.cadence.is_default() {
                cells = cells.into_iter().map(|c| format!("**{c}**")).collect();
            }
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out
    }
}
