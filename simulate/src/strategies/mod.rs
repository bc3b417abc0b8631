//! The strategies compared, each a tower layer over the same simulated peers, one file
//! each: fixed timeouts ([`fixed`]), RFC 6298 RTO ([`rto`]), the `adaptive-timeout`
//! crate's formula ([`adaptive_timeout_crate`]), phi accrual ([`phi`]) and
//! `tower-adaptive-timeout`'s layer ([`layer`]), at its defaults and with one setting
//! changed (labelled as such): `fail_fast` off, so calls to a silent peer go out with the
//! shortest deadline instead of being refused; `max_classes` 0, one history per peer;
//! `min_samples` 1000, a busy peer's quantile read from 1,000 answers; `min_silence` 350 ms,
//! calls cut as a silence only after 350 ms without an answer. The per-peer rules (RTO, the
//! crate's formula, phi) run on the shared [`skeleton`](crate::skeleton).

pub mod adaptive_timeout_crate;
pub mod fixed;
pub mod layer;
pub mod phi;
pub mod rto;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder};
use tower_adaptive_timeout::{Interrupted, Reason, TimeoutPolicy, DEFAULT_MAX_CLASSES};

use crate::skeleton::{PeerDeadlineLayer, PeerTimer};
use crate::workload::{peers_service, PeerId, Req};
use crate::Ending;

/// Every strategy, boxed to one type.
pub type SimService = BoxCloneSyncService<Req, (), Ending>;

/// The deadline a new call to a peer would get now.
pub type DeadlineFn = Arc<dyn Fn(PeerId) -> Duration + Send + Sync>;

/// Which strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `tower::timeout` at 1 s.
    Fixed1s,
    /// `tower::timeout` at 30 s.
    Fixed30s,
    /// RFC 6298 retransmission timeout per peer.
    Rfc6298,
    /// The `adaptive-timeout` crate's formula.
    AdaptiveTimeoutCrate,
    /// Phi-accrual failure detector.
    PhiAccrual,
    /// This crate's layer at its defaults.
    Layer,
    /// This crate's layer with `fail_fast` off: no refusals and no probes; calls to a
    /// silent peer get the policy's `min` deadline, and any answer readmits the peer.
    LayerNoFailFast,
    /// This crate's layer with latency classes off (`max_classes(0)`): one history per
    /// peer, as before classes existed.
    LayerNoClasses,
    /// This crate's layer with `min_samples(1000)`: a busy peer keeps `cold_start` until
    /// its window holds 1,000 answers, enough to observe a p99.9.
    LayerMinSamples1000,
    /// This crate's layer with `min_silence(350 ms)`: calls are cut as a silence only once
    /// the peer has answered nothing for 350 ms, longer than a CPU stall.
    LayerMinSilence350,
}

impl Kind {
    /// Every strategy, in report order.
    pub const ALL: [Kind; 10] = [
        Kind::Fixed1s,
        Kind::Fixed30s,
        Kind::Rfc6298,
        Kind::AdaptiveTimeoutCrate,
        Kind::PhiAccrual,
        Kind::Layer,
        Kind::LayerNoFailFast,
        Kind::LayerNoClasses,
        Kind::LayerMinSamples1000,
        Kind::LayerMinSilence350,
    ];

    /// Name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fixed1s => "fixed 1s",
            Kind::Fixed30s => "fixed 30s",
            Kind::Rfc6298 => "RFC 6298 RTO",
            Kind::AdaptiveTimeoutCrate => "adaptive-timeout 2xp99.99",
            Kind::PhiAccrual => "phi accrual > 8",
            Kind::Layer => "this layer (defaults)",
            Kind::LayerNoFailFast => "this layer (TUNED: fail_fast off)",
            Kind::LayerNoClasses => "this layer (TUNED: max_classes 0)",
            Kind::LayerMinSamples1000 => "this layer (TUNED: min_samples 1000)",
            Kind::LayerMinSilence350 => "this layer (TUNED: min_silence 350ms)",
        }
    }
}

/// A strategy ready to run: the service and a view of its per-peer deadlines.
pub struct Strategy {
    /// The layered service.
    pub service: SimService,
    /// The deadline a new call would get now.
    pub deadline: DeadlineFn,
    /// How long a peer may answer nothing now, with calls outstanding, before they are
    /// cut as a silence: its deadline, or for this layer the longer of it and the peer's
    /// floor on silence (`min_silence`, or the floor it learned from its stalls).
    pub quiet: DeadlineFn,
}

/// Builds a fresh strategy (no history) over fresh simulated peers; `seed` drives whatever
/// randomness the strategy has of its own (this layer's probe jitter).
pub fn build(kind: Kind, seed: u64) -> Strategy {
    match kind {
        Kind::Fixed1s => fixed::build(Duration::from_secs(1)),
        Kind::Fixed30s => fixed::build(Duration::from_secs(30)),
        Kind::Rfc6298 => skeleton(rto::Rto::default()),
        Kind::AdaptiveTimeoutCrate => skeleton(adaptive_timeout_crate::CrateFormula::default()),
        Kind::PhiAccrual => skeleton(phi::Phi::default()),
        Kind::Layer => layer::build(TimeoutPolicy::default(), seed, DEFAULT_MAX_CLASSES),
        Kind::LayerNoFailFast => layer::build(
            TimeoutPolicy::default().fail_fast(false),
            seed,
            DEFAULT_MAX_CLASSES,
        ),
        Kind::LayerNoClasses => layer::build(TimeoutPolicy::default(), seed, 0),
        Kind::LayerMinSamples1000 => layer::build(
            TimeoutPolicy::default().min_samples(1_000),
            seed,
            DEFAULT_MAX_CLASSES,
        ),
        Kind::LayerMinSilence350 => layer::build(
            TimeoutPolicy::default().min_silence(Duration::from_millis(350)),
            seed,
            DEFAULT_MAX_CLASSES,
        ),
    }
}

/// A per-peer rule on the shared skeleton.
fn skeleton<T: PeerTimer>(timer: T) -> Strategy {
    let timer = Arc::new(timer);
    let view = timer.clone();
    let deadline: DeadlineFn = Arc::new(move |peer| view.deadline(peer, Instant::now()));
    Strategy {
        service: SimService::new(
            ServiceBuilder::new()
                .layer(PeerDeadlineLayer::new(timer))
                .service(peers_service()),
        ),
        quiet: deadline.clone(),
        deadline,
    }
}

/// How a layer's error ended the call.
fn ending_of(err: BoxError) -> Ending {
    match Interrupted::find(&*err) {
        Some(i) => match i.reason() {
            Reason::PeerSilent { .. } if i.elapsed().is_zero() => Ending::Refused,
            Reason::PeerSilent { .. } => Ending::Silent,
            _ => Ending::Deadline,
        },
        // `tower::timeout::error::Elapsed`: the inner service cannot fail.
        None => Ending::Deadline,
    }
}
