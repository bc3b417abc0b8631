//! RFC 6298 retransmission timeout per peer: `SRTT + max(G, 4 x RTTVAR)`, alpha 1/8, beta
//! 1/4, at least 1 s, at most 60 s; a call that runs out the current RTO doubles it (the
//! RFC's back-off) until the next answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::skeleton::{PeerTimer, Started};
use crate::workload::PeerId;

/// RFC 6298 estimator state of one peer, in seconds.
#[derive(Clone, Copy)]
struct RtoPeer {
    srtt: f64,
    rttvar: f64,
    rto: f64,
    sampled: bool,
}

/// RFC 6298 retransmission timeout, per peer.
#[derive(Default)]
pub struct Rto {
    peers: Mutex<HashMap<PeerId, RtoPeer>>,
}

impl Rto {
    const MIN: f64 = 1.0;
    const MAX: f64 = 60.0;
    const GRANULARITY: f64 = 0.001;

    fn with<R>(&self, peer: PeerId, f: impl FnOnce(&mut RtoPeer) -> R) -> R {
        let mut peers = self.peers.lock().expect("not poisoned");
        f(peers.entry(peer).or_insert(RtoPeer {
            srtt: 0.0,
            rttvar: 0.0,
            rto: Self::MIN,
            sampled: false,
        }))
    }
}

impl PeerTimer for Rto {
    fn answered(&self, peer: PeerId, t: &Started, now: Instant) {
        let r = (now - t.at).as_secs_f64();
        self.with(peer, |p| {
            if p.sampled {
                p.rttvar = 0.75 * p.rttvar + 0.25 * (p.srtt - r).abs();
                p.srtt = 0.875 * p.srtt + 0.125 * r;
            } else {
                (p.srtt, p.rttvar, p.sampled) = (r, r / 2.0, true);
            }
            p.rto = (p.srtt + (4.0 * p.rttvar).max(Self::GRANULARITY)).clamp(Self::MIN, Self::MAX);
        });
    }

    fn cut(&self, peer: PeerId, t: &Started, _: Instant) {
        // Back off once per expiry of the current RTO, not once per concurrent call.
        self.with(peer, |p| {
            if t.deadline.as_secs_f64() >= p.rto {
                p.rto = (p.rto * 2.0).min(Self::MAX);
            }
        });
    }

    fn deadline(&self, peer: PeerId, _: Instant) -> Duration {
        Duration::from_secs_f64(self.with(peer, |p| p.rto))
    }
}
