//! The per-peer table the examples print.

use std::time::Duration;

use tower_adaptive_timeout::PeerSnapshot;

/// Milliseconds with one decimal.
pub fn millis(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

/// Prints one row per peer: state, samples, p50, p99, deadline, its source and why.
pub fn print_snapshots(peers: &[PeerSnapshot]) {
    let width = peers.iter().map(|p| p.peer.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<width$}  {:<8} {:>7} {:>8} {:>8} {:>9}  {:<11} why",
        "peer", "state", "samples", "p50", "p99", "deadline", "source"
    );
    for p in peers {
        println!(
            "{:<width$}  {:<8} {:>7} {:>8} {:>8} {:>9}  {:<11} {}",
            p.peer,
            p.state.to_string(),
            p.samples,
            millis(p.p50),
            millis(p.p99),
            millis(p.deadline),
            p.deadline_source().to_string(),
            p.explanation
        );
    }
}
