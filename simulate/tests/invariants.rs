//! Invariants of the strategy simulator, on a short run: the layer cuts every call in
//! flight to a silent peer within two of the peer's deadlines, no call outlives the layer's
//! longest deadline, the same seed gives the same tables, byte for byte, and the probe
//! sweep's default cadence is the report's row of the layer.

use std::time::Duration;

use simulate::strategies::Kind;
use simulate::sweep::{sweep, CADENCES};
use simulate::{simulate, SimConfig};
use tower_adaptive_timeout::TimeoutPolicy;

/// A run short enough for a debug build: 20 simulated seconds, 8 callers per peer.
fn short(seed: u64, workloads: Vec<usize>, kinds: Vec<Kind>) -> SimConfig {
    SimConfig {
        duration: Duration::from_secs(20),
        workloads,
        kinds,
        ..SimConfig::quick(seed)
    }
}

/// Index of the workload with silent peers.
const SILENT: usize = 2;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_layer_cuts_every_call_in_flight_to_a_silent_peer_within_two_deadlines() {
    for seed in [1, 2] {
        let report = simulate(&short(seed, vec![SILENT], vec![Kind::Layer])).await;
        let row = report.row("silent", Kind::Layer).expect("a row");
        assert_eq!(row.hung, 0, "every call ended");
        assert_eq!(row.episodes.len(), 3);
        for e in &row.episodes {
            assert!(e.in_flight > 0, "calls were in flight: {e:?}");
            let deadline = e.deadline.expect("the layer reports its deadline");
            let cut = e.cut.expect("the calls ended");
            assert!(
                cut <= deadline * 2,
                "seed {seed}: {} cut {cut:?} after its silence began, deadline {deadline:?}",
                e.peer
            );
        }
        assert_eq!(row.stalled, 0, "no call stalled past 10 s");
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn no_call_outlives_the_layers_longest_deadline() {
    let max = TimeoutPolicy::default().max;
    let report = simulate(&short(3, vec![0, 1, SILENT], vec![Kind::Layer])).await;
    for table in &report.tables {
        let row = &table.rows[0];
        assert!(
            row.longest <= max,
            "{}: a call lasted {:?}",
            table.workload.name,
            row.longest
        );
        assert_eq!(row.hung, 0);
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_same_seed_gives_the_same_tables_byte_for_byte() {
    // Every strategy, the layer's probe timing included (its jitter is seeded from the
    // simulation's seed): the whole report, per-silence lines and all, must match.
    let cfg = short(42, vec![SILENT], Kind::ALL.to_vec());
    let first = simulate(&cfg).await.markdown();
    let second = simulate(&cfg).await.markdown();
    assert_eq!(first, second);
    assert!(first.contains("| this layer (defaults) |"), "{first}");
    assert!(first.contains("Per silence:"), "{first}");
    let other = simulate(&SimConfig { seed: 43, ..cfg }).await.markdown();
    let row = |table: &str, name: &str| {
        let prefix = format!("| {name} |");
        let row = table.lines().find(|l| l.starts_with(&prefix));
        row.map(str::to_owned)
    };
    for name in ["fixed 1s", "this layer (defaults)"] {
        assert_ne!(row(&first, name), row(&other, name), "the seed matters");
    }
}

/// Indices of the quiet and mixed-route workloads.
const QUIET: usize = 3;
const MIXED: usize = 4;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn classes_keep_the_rare_slow_route_uncut() {
    let kinds = vec![Kind::Layer, Kind::LayerNoClasses];
    let report = simulate(&short(5, vec![MIXED], kinds)).await;
    let route = |kind| {
        let row = report.row("mixed-route", kind).expect("a row");
        let slow = row.per_peer.iter().find(|p| p.0.ends_with("/report"));
        slow.map(|&(_, calls, cut)| (calls, cut))
            .expect("the slow route")
    };
    let (calls, cut) = route(Kind::Layer);
    assert!(calls > 0, "the run has slow calls");
    assert_eq!(cut, 0, "classes: none of {calls} cut");
    // One history: the slow route's calls run out the fast route's deadline, but the
    // peer answers the others meanwhile, so they are stragglers, held up to `cold_start`.
    assert_eq!(
        route(Kind::LayerNoClasses),
        (calls, 0),
        "one history: held as stragglers"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_quiet_peer_learns_a_deadline_below_cold_start_and_is_cut_when_silent() {
    let report = simulate(&short(6, vec![QUIET], vec![Kind::Layer])).await;
    let row = report.row("quiet", Kind::Layer).expect("a row");
    assert_eq!(row.hung, 0);
    let [silence] = &row.episodes[..] else {
        panic!("one silent peer: {:?}", row.episodes)
    };
    let cold = TimeoutPolicy::default().cold_start;
    assert!(silence.deadline.expect("reported") < cold, "{silence:?}");
    assert!(
        silence.longest_wait.is_some(),
        "calls were cut: {silence:?}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_sweeps_default_cadence_gives_the_reports_row_of_the_layer() {
    let defaults: Vec<_> = CADENCES.into_iter().filter(|c| c.is_default()).collect();
    assert_eq!(defaults.len(), 1, "the defaults are swept once");
    let cfg = short(5, vec![SILENT], vec![Kind::Layer]);
    let report = simulate(&cfg).await;
    let row = report.row("silent", Kind::Layer).expect("a row");
    let swept = sweep(&cfg, &[cfg.seed], &defaults).await;
    let point = &swept.points[0].rows[0];
    assert_eq!(
        (point.calls, point.wasted, point.lost_after_return),
        (row.calls, row.wasted, row.lost_after_return)
    );
    assert_eq!(point.return_lag(), row.return_lag());
    assert!(swept.markdown().contains("| **8** | **10ms / 100ms** |"));
}
