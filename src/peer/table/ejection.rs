//! Which of a layer's balanced endpoints are held out, so a cause they all share cannot
//! empty a balancer (after Envoy's `max_ejection_percent`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::peer::key::PeerKey;

/// The default share of a layer's endpoints that may be held out at once, in percent.
pub const DEFAULT_MAX_EJECTION_PERCENT: u8 = 50;

/// The default first ejection of a balanced endpoint.
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(1);

/// The default longest ejection of a balanced endpoint.
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(4);

/// How long a balanced endpoint's ejections last: the first, and the longest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EjectionTimes {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
}

/// The balanced endpoints made from one layer, and which of them are held out.
pub(crate) struct EndpointSet<K> {
    max_percent: AtomicU8,
    /// [`EjectionTimes`], in nanoseconds.
    base_ns: AtomicU64,
    max_ns: AtomicU64,
    members: Mutex<HashMap<K, Member>>,
    /// Wakes the held-out endpoints when the cap has shrunk below how many are held out,
    /// or the layer was shut down.
    shrunk: Arc<Notify>,
}

/// One endpoint of a set: its services (an endpoint and its clones) and how many of
/// them hold it out.
#[derive(Default)]
struct Member {
    services: usize,
    holding: usize,
}

impl<K> Default for EndpointSet<K> {
    fn default() -> Self {
        EndpointSet {
            max_percent: AtomicU8::new(DEFAULT_MAX_EJECTION_PERCENT),
            base_ns: AtomicU64::new(nanos(DEFAULT_BASE_EJECTION_TIME)),
            max_ns: AtomicU64::new(nanos(DEFAULT_MAX_EJECTION_TIME)),
            members: Mutex::new(HashMap::new()),
            shrunk: Arc::new(Notify::new()),
        }
    }
}

impl<K> EndpointSet<K> {
    /// At most `percent` of the endpoints may be held out at once.
    pub(crate) fn set_max_percent(&self, percent: u8) {
        self.max_percent.store(percent.min(100), Relaxed);
    }

    /// Ejections last `times.base`, doubling per failed probe up to `times.max`.
    pub(crate) fn set_times(&self, times: EjectionTimes) {
        self.base_ns.store(nanos(times.base), Relaxed);
        self.max_ns.store(nanos(times.max), Relaxed);
    }

    /// How long ejections last.
    pub(crate) fn times(&self) -> EjectionTimes {
        let duration = |ns: u64| match ns {
            u64::MAX => Duration::MAX,
            ns => Duration::from_nanos(ns),
        };
        EjectionTimes {
            base: duration(self.base_ns.load(Relaxed)),
            max: duration(self.max_ns.load(Relaxed)),
        }
    }

    /// A registration woken when endpoints left and the cap no longer covers every
    /// endpoint held out (each held-out endpoint then asks [`EndpointSet::keep`]), or by
    /// [`EndpointSet::wake_held_out`].
    pub(crate) fn shrunk(&self) -> OwnedNotified {
        self.shrunk.clone().notified_owned()
    }

    /// Wakes every held-out endpoint, to look at its state again (the layer was shut down).
    pub(crate) fn wake_held_out(&self) {
        self.shrunk.notify_waiters();
    }

    /// How many of `members` may be held out at once.
    fn cap(&self, members: &HashMap<K, Member>) -> usize {
        members.len() * usize::from(self.max_percent.load(Relaxed)) / 100
    }

    fn members(&self) -> std::sync::MutexGuard<'_, HashMap<K, Member>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: PeerKey> EndpointSet<K> {
    pub(crate) fn join(&self, key: &K) {
        self.members().entry(key.clone()).or_default().services += 1;
    }

    pub(crate) fn leave(&self, key: &K, holding: bool) {
        let mut members = self.members();
        let Some(member) = members.get_mut(key) else {
            return;
        };
        member.services = member.services.saturating_sub(1);
        member.holding = member.holding.saturating_sub(usize::from(holding));
        if member.services == 0 {
            members.remove(key);
            if held(&members) > self.cap(&members) {
                self.shrunk.notify_waiters();
            }
        }
    }

    /// Counts `key` as held out, unless that would hold out more than the cap.
    pub(crate) fn hold(&self, key: &K) -> bool {
        let mut members = self.members();
        let (held, cap) = (held(&members), self.cap(&members));
        match members.get_mut(key) {
            Some(member) if member.holding > 0 || held < cap => {
                member.holding += 1;
                true
            }
            _ => false,
        }
    }

    /// Whether `key`, held out, may stay so: if more endpoints are held out than the cap
    /// allows now (some left the set), it is released and `false` returned.
    pub(crate) fn keep(&self, key: &K) -> bool {
        let mut members = self.members();
        if held(&members) <= self.cap(&members) {
            return true;
        }
        if let Some(member) = members.get_mut(key) {
            member.holding = member.holding.saturating_sub(1);
        }
        false
    }

    pub(crate) fn release(&self, key: &K) {
        if let Some(member) = self.members().get_mut(key) {
            member.holding = member.holding.saturating_sub(1);
        }
    }
}

/// How many of `members` are held out.
fn held<K>(members: &HashMap<K, Member>) -> usize {
    members.values().filter(|m| m.holding > 0).count()
}

/// `d` in nanoseconds; `u64::MAX` for anything longer (`Duration::MAX`, no limit).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
