//! The strategy simulator: fixed timeouts, RFC 6298 RTO, the `adaptive-timeout` crate's
//! formula, a phi-accrual detector and `tower-adaptive-timeout`'s layer, on heavy-tailed,
//! shifting and silent peers, on tokio's paused clock.
//!
//! ```text
//! cargo run --release -p simulate                 # full run
//! cargo run --release -p simulate -- --quick      # short run (or SIMULATE_QUICK=1)
//! cargo run --release -p simulate -- --seed 7
//! ```
//!
//! The same seed gives the same tables, byte for byte.

use std::process::ExitCode;

use simulate::{simulate, SimConfig};

/// Seed used when none is given.
const DEFAULT_SEED: u64 = 20_240_601;

fn usage() -> ExitCode {
    eprintln!("usage: simulate [--quick] [--seed N]   (SIMULATE_QUICK=1 also selects --quick)");
    ExitCode::FAILURE
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> ExitCode {
    let mut quick = std::env::var_os("SIMULATE_QUICK").is_some_and(|v| v != "0");
    let mut seed = DEFAULT_SEED;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--seed" => match args.next().and_then(|s| s.parse().ok()) {
                Some(s) => seed = s,
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    let cfg = if quick {
        SimConfig::quick(seed)
    } else {
        SimConfig::full(seed)
    };
    let wall = std::time::Instant::now();
    let report = simulate(&cfg).await;
    print!("{}", report.markdown());
    eprintln!(
        "simulated in {:.1}s of wall time",
        wall.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
