//! Health events: every change of a peer's state, for whoever wants to react to it (a
//! discovery layer removing and re-adding endpoints, an alert), without polling snapshots.
//!
//! Subscribe with [`AdaptiveTimeoutHandle::health_events`](crate::AdaptiveTimeoutHandle::health_events):
//! a `tokio::sync::broadcast` receiver of [`HealthEvent`]s. Sending never waits: a
//! subscriber that falls more than [`HEALTH_EVENTS_CAPACITY`] events behind loses the
//! oldest (its next `recv` says how many, as `RecvError::Lagged`), and calls never slow
//! down for it. Until the first subscription nothing is built or sent.
//!
//! Each peer also wakes what waits on its state: a balanced endpoint held out of its
//! balancer (see [`Endpoint`](crate::Endpoint)).

use std::sync::{Arc, OnceLock};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

use crate::peer::health::{PeerState, Transition};
use crate::peer::key::PeerKey;

/// Events a subscriber may fall behind by before it loses the oldest.
pub const HEALTH_EVENTS_CAPACITY: usize = 256;

/// A peer changed state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthEvent<K> {
    /// The peer, by its key.
    pub peer: K,
    /// The state it left.
    pub from: PeerState,
    /// The state it entered.
    pub to: PeerState,
    /// Why, in a few words (`"probe answered"`, `"independent misses reached
    /// silent_after_misses"`, ...).
    pub why: &'static str,
    /// When (tokio's clock).
    pub at: Instant,
}

/// What reports one peer's state changes: it wakes the peer's waiters, and sends a
/// [`HealthEvent`] once anyone subscribed.
#[derive(Default)]
pub(crate) struct StateChanges {
    changed: Arc<Notify>,
    report: OnceLock<Report>,
}

/// Sends one peer's transitions as typed events.
type Report = Box<dyn Fn(&Transition) + Send + Sync>;

impl StateChanges {
    /// Sends this peer's transitions through `report` from now on.
    pub(crate) fn report_to(&self, report: Report) {
        let _ = self.report.set(report);
    }

    /// A registration woken by the peer's next change of state.
    pub(crate) fn notified(&self) -> OwnedNotified {
        self.changed.clone().notified_owned()
    }

    /// Something its waiters may wait on changed, though not the state: wake them.
    pub(crate) fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// The peer changed state: wake its waiters and report it.
    pub(crate) fn changed(&self, transition: &Transition) {
        self.changed.notify_waiters();
        if let Some(report) = self.report.get() {
            report(transition);
        }
    }
}

/// A layer's health event channel, made at the first subscription.
pub(crate) struct Events<K> {
    sender: Arc<OnceLock<broadcast::Sender<HealthEvent<K>>>>,
}

impl<K> Default for Events<K> {
    fn default() -> Self {
        Events {
            sender: Arc::default(),
        }
    }
}

impl<K: PeerKey> Events<K> {
    /// A new receiver of every event from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<HealthEvent<K>> {
        self.sender
            .get_or_init(|| broadcast::channel(HEALTH_EVENTS_CAPACITY).0)
            .subscribe()
    }

    /// What reports `peer`'s transitions (the table's own copy of its key, holding no
    /// request's buffers): nothing is built while nobody listens.
    pub(crate) fn report(&self, peer: Arc<K>) -> Report {
        let sender = self.sender.clone();
        Box::new(move |t: &Transition| {
            let Some(sender) = sender.get().filter(|s| s.receiver_count() > 0) else {
                return;
            };
            let event = HealthEvent {
                peer: K::clone(&peer),
                from: t.from,
                to: t.to,
                why: t.why,
                at: Instant::now(),
            };
            // Never waits: a lagging receiver loses the oldest events instead.
            let _ = sender.send(event);
        })
    }
}
