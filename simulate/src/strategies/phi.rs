//! Phi accrual per peer, from the inter-arrival times of answers, with Akka's defaults
//! (threshold 8, 1000 samples, minimum standard deviation 100 ms, first estimate 1 s) and
//! its logistic approximation of the normal CDF; when phi passes 8 every call in flight to
//! the peer (started before its last answer) is cut.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::skeleton::{PeerTimer, Started};
use crate::workload::PeerId;

/// Answer inter-arrival history of one peer, in seconds.
struct PhiPeer {
    last: Option<Instant>,
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
}

impl PhiPeer {
    fn new() -> Self {
        let mut p = PhiPeer {
            last: None,
            intervals: VecDeque::new(),
            sum: 0.0,
            sum_sq: 0.0,
        };
        // Akka's bootstrap: two intervals around the first estimate (1 s, sd 250 ms).
        p.push(Phi::FIRST_ESTIMATE * 0.75);
        p.push(Phi::FIRST_ESTIMATE * 1.25);
        p
    }

    fn push(&mut self, interval: f64) {
        if self.intervals.len() == Phi::SAMPLES {
            let old = self.intervals.pop_front().unwrap_or_default();
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.intervals.push_back(interval);
        self.sum += interval;
        self.sum_sq += interval * interval;
    }

    /// Silence after which phi passes the threshold: `mean + y x sd`.
    fn threshold(&self, y: f64) -> Duration {
        let n = self.intervals.len() as f64;
        let mean = self.sum / n;
        let sd = (self.sum_sq / n - mean * mean).max(0.0).sqrt();
        Duration::from_secs_f64(mean + y * sd.max(Phi::MIN_SD))
    }
}

/// Phi-accrual failure detector over the answers of each peer.
pub struct Phi {
    peers: Mutex<HashMap<PeerId, PhiPeer>>,
    /// Standard deviations past the mean at which phi reaches the threshold.
    y: f64,
}

impl Default for Phi {
    fn default() -> Self {
        Phi {
            peers: Mutex::default(),
            y: Phi::y_at(Phi::THRESHOLD),
        }
    }
}

impl Phi {
    const THRESHOLD: f64 = 8.0;
    const SAMPLES: usize = 1000;
    const MIN_SD: f64 = 0.1;
    const FIRST_ESTIMATE: f64 = 1.0;

    /// Akka's phi for `y` standard deviations past the mean.
    fn phi(y: f64) -> f64 {
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        -(e / (1.0 + e)).log10()
    }

    /// Solves `phi(y) = threshold` by bisection (phi grows with y).
    fn y_at(threshold: f64) -> f64 {
        let (mut lo, mut hi) = (0.0_f64, 20.0_f64);
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if Phi::phi(mid) < threshold {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }

    fn with<R>(&self, peer: PeerId, f: impl FnOnce(&mut PhiPeer) -> R) -> R {
        let mut peers = self.peers.lock().expect("not poisoned");
        f(peers.entry(peer).or_insert_with(PhiPeer::new))
    }
}

impl PeerTimer for Phi {
    fn cut_at(&self, peer: PeerId, call: &Started) -> Instant {
        let y = self.y;
        self.with(peer, |p| {
            p.last.map_or(call.at, |l| l.max(call.at)) + p.threshold(y)
        })
    }

    fn answered(&self, peer: PeerId, _: &Started, now: Instant) {
        self.with(peer, |p| {
            if let Some(last) = p.last {
                p.push((now - last).as_secs_f64());
            }
            p.last = Some(now);
        });
    }

    fn cut(&self, _: PeerId, _: &Started, _: Instant) {}

    fn deadline(&self, peer: PeerId, _: Instant) -> Duration {
        let y = self.y;
        self.with(peer, |p| p.threshold(y))
    }
}
