//! Quick start: three simulated peers with different latency profiles behind one layer.
//!
//! Each peer gets a deadline from its own recent latency. After a few hundred calls the
//! example prints what the layer knows about each peer and why its deadline has its value,
//! then sends one call to a peer that has stopped answering and prints the error it ends
//! with.
//!
//! It runs on tokio's paused clock, so the simulated latencies cost no real time:
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::time::Duration;

use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, Interrupted, PeerSnapshot, TimeoutPolicy};

/// A request to `peer`, which the simulated peer answers after `latency`.
struct Call {
    peer: &'static str,
    latency: Duration,
}

/// A peer's latency profile: usually between `low` and `high` milliseconds, and one call in
/// `tail_every` takes `tail` milliseconds.
struct Profile {
    peer: &'static str,
    low: f64,
    high: f64,
    tail_every: u64,
    tail: f64,
}

const PROFILES: [Profile; 3] = [
    Profile {
        peer: "cache:6379",
        low: 1.0,
        high: 4.0,
        tail_every: 100,
        tail: 12.0,
    },
    Profile {
        peer: "db:5432",
        low: 8.0,
        high: 20.0,
        tail_every: 50,
        tail: 45.0,
    },
    Profile {
        peer: "search:9200",
        low: 40.0,
        high: 90.0,
        tail_every: 25,
        tail: 180.0,
    },
];

const CALLS_PER_PEER: u64 = 300;

impl Profile {
    /// The latency of call number `i`: deterministic, spread over `[low, high)`.
    fn latency(&self, i: u64) -> Duration {
        let ms = if i % self.tail_every == self.tail_every - 1 {
            self.tail
        } else {
            self.low + (self.high - self.low) * spread(i)
        };
        Duration::from_secs_f64(ms / 1e3)
    }
}

/// A number in `[0, 1)` that jumps around as `i` counts up (a splitmix64 step).
fn spread(i: u64) -> f64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Milliseconds with one decimal, for the table.
fn millis(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

fn print_table(peers: &[PeerSnapshot]) {
    println!(
        "{:<12} {:>7} {:>5} {:>8} {:>8} {:>9}  {:<11} why",
        "peer", "samples", "cut", "p50", "p99", "deadline", "source"
    );
    for p in peers {
        println!(
            "{:<12} {:>7} {:>5} {:>8} {:>8} {:>9}  {:<11} {}",
            p.peer,
            p.samples,
            p.deadline_exceeded,
            millis(p.p50),
            millis(p.p99),
            millis(p.deadline),
            p.deadline_source(),
            p.explanation
        );
    }
    println!("(cut: calls that ran out their deadline, recorded as censored samples)");
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), BoxError> {
    // Deadline = clamp(p99.9 x 2 + 5ms, 10ms, 30s); 1s until a peer has 20 samples.
    // Recomputed every 50 samples (and whenever the 60s window rotates).
    let policy = TimeoutPolicy::default().recompute_every(50);
    let layer = AdaptiveTimeoutLayer::builder(|c: &Call| c.peer)
        .policy(policy.clone())
        // The cache is trusted to be fast: its deadline follows p99 with a 5ms floor.
        .peer_policy(
            "cache:6379",
            policy.quantile(0.99).min(Duration::from_millis(5)),
        )
        .build()?;
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|c: Call| async move {
            tokio::time::sleep(c.latency).await;
            Ok::<_, BoxError>(c.peer)
        }));

    for profile in &PROFILES {
        for i in 0..CALLS_PER_PEER {
            let call = Call {
                peer: profile.peer,
                latency: profile.latency(i),
            };
            // A tail call can run out a deadline learned from too few samples: it is
            // counted (and recorded as a censored sample), not fatal.
            match svc.clone().oneshot(call).await {
                Ok(_) => {}
                Err(e) if e.downcast_ref::<Interrupted>().is_some() => {}
                Err(e) => return Err(e),
            }
        }
    }
    println!("after {CALLS_PER_PEER} calls per peer:\n");
    print_table(&handle.snapshot());

    // The search peer stops answering: the call is cut at search's own deadline, not
    // after a fixed timeout or whenever TCP gives up.
    let hung = Call {
        peer: "search:9200",
        latency: Duration::from_secs(600),
    };
    let err = svc.oneshot(hung).await.expect_err("the peer never answers");
    let interrupted = err
        .downcast_ref::<Interrupted>()
        .ok_or("expected an Interrupted error")?;
    println!("\na call to a peer that stopped answering:\n{interrupted}");
    Ok(())
}
