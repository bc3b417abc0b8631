//! `tower-adaptive-timeout`'s layer, its probe jitter seeded from the simulation's seed
//! (`Builder::jitter_seed`) so runs are reproducible.

use std::sync::Arc;

use tower::ServiceBuilder;
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, PeerSnapshot, TimeoutPolicy};

use super::{ending_of, SimService, Strategy};
use crate::workload::{peers_service, PeerId, Req};

/// The layer under `policy`, keyed by `Req::peer` with `Req::class` as the latency class
/// (at most `max_classes` per peer), its probe jitter seeded with `seed`.
pub fn build(policy: TimeoutPolicy, seed: u64, max_classes: usize) -> Strategy {
    let (cold, min_silence) = (policy.cold_start, policy.min_silence);
    let layer = AdaptiveTimeoutLayer::builder((|r: &Req| r.peer) as fn(&Req) -> PeerId)
        .latency_class(|r: &Req| r.class)
        .policy(policy)
        .max_classes(max_classes)
        .jitter_seed(seed)
        .build()
        .expect("a valid policy");
    let handle = layer.handle();
    let view = handle.clone();
    Strategy {
        service: SimService::new(
            ServiceBuilder::new()
                .map_err(ending_of)
                .layer(layer)
                .service(peers_service()),
        ),
        deadline: Arc::new(move |peer| handle.deadline(&peer).map_or(cold, |(d, _)| d)),
        quiet: Arc::new(move |peer| {
            let quiet = |s: PeerSnapshot| s.deadline.max(s.learned_silence_floor);
            view.peer(&peer).map_or(cold, quiet).max(min_silence)
        }),
    }
}
