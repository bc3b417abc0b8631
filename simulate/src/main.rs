//! The strategy simulator: fixed timeouts, RFC 6298 RTO, the `adaptive-timeout` crate's
//! formula, a phi-accrual detector and `tower-adaptive-timeout`'s layer, on heavy-tailed,
//! shifting and silent peers, on tokio's paused clock.
//!
//! ```text
//! cargo run --release -p simulate                 # full run
//! cargo run --release -p simulate -- --quick      # short run (or SIMULATE_QUICK=1)
//! cargo run --release -p simulate -- --seed 7
//! cargo run --release -p simulate -- --sweep-probes   # probe cadences, seeds 20240601 and 7
//! cargo run --release -p simulate -- --hedging   # hedged calls on a heavy tail, vs tower::hedge
//! ```
//!
//! The same seed gives the same tables, byte for byte.

use std::process::ExitCode;

use simulate::sweep::{sweep, CADENCES, SEEDS};
use simulate::{simulate, SimConfig};

/// Seed used when none is given.
const DEFAULT_SEED: u64 = 20_240_601;

fn usage() -> ExitCode {
    eprintln!(
        "usage: simulate [--quick] [--seed N] [--sweep-probes | --hedging]   \
         (SIMULATE_QUICK=1 also selects --quick)"
    );
    ExitCode::FAILURE
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> ExitCode {
    let mut quick = std::env::var_os("SIMULATE_QUICK").is_some_and(|v| v != "0");
    let mut seed = None;
    let mut sweep_probes = false;
    let mut hedging = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--sweep-probes" => sweep_probes = true,
            "--hedging" => hedging = true,
            "--seed" => match args.next().and_then(|s| s.parse().ok()) {
                Some(s) => seed = Some(s),
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    let first = seed.unwrap_or(DEFAULT_SEED);
    let cfg = if quick {
        SimConfig::quick(first)
    } else {
        SimConfig::full(first)
    };
    let wall = std::time::Instant::now();
    if hedging {
        let cfg = match quick {
            true => simulate::hedging::HedgeConfig::quick(first),
            false => simulate::hedging::HedgeConfig::full(first),
        };
        let rows = simulate::hedging::compare(&cfg).await;
        print!("{}", simulate::hedging::markdown(&cfg, &rows));
    } else if sweep_probes {
        let seeds = seed.map_or(SEEDS.to_vec(), |s| vec![s]);
        print!("{}", sweep(&cfg, &seeds, &CADENCES).await.markdown());
    } else {
        print!("{}", simulate(&cfg).await.markdown());
    }
    eprintln!(
        "simulated in {:.1}s of wall time",
        wall.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
