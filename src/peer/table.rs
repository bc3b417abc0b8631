//! The bounded peer table, the policies in force, and admission: the one place a new call
//! learns whom it is for, whether it goes ahead, and with which deadline.
//!
//! Lookups take one shard's read lock (no global lock). A new peer is inserted with the
//! policy in force for it. The table holds at most `max_peers` peers: when full, idle peers
//! (no call for `idle_ttl`) are swept, then the idlest of a sample of peers with no call in
//! flight is evicted; if none qualifies the call goes untracked, with the default policy's
//! cold-start deadline.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use super::key::PeerKey;
use super::{CallPeer, Peer, Ticket};
use crate::class::LatencyHints;
use crate::classify::Classifier;
use crate::error::Reason;
use crate::export;
use crate::interrupt::{Fired, Interrupts};
use crate::policy::{DeadlineSource, TimeoutPolicy};
use crate::propagate::Propagation;

/// How many peers an eviction looks at to find the idlest.
const EVICTION_SAMPLE: usize = 32;

/// The default policy and the per-peer overrides.
pub(crate) struct Policies<K> {
    pub(crate) default: Arc<TimeoutPolicy>,
    pub(crate) overrides: HashMap<K, Arc<TimeoutPolicy>>,
}

impl<K: PeerKey> Policies<K> {
    /// The policy in force for `key`, and whether it is an override.
    pub(crate) fn for_key(&self, key: &K) -> (Arc<TimeoutPolicy>, bool) {
        match self.overrides.get(key) {
            Some(p) => (p.clone(), true),
            None => (self.default.clone(), false),
        }
    }
}

/// What the table decided for a new call: whom it is for, and whether it goes ahead.
pub(crate) enum Admission {
    /// The call goes ahead with its ticket.
    Admitted(CallPeer, Ticket),
    /// The call ends at once: its peer is silent, or the caller's deadline is spent.
    Refused(CallPeer, Fired),
}

/// The peer one service called last, still the table's while the table has removed no
/// peer since: repeated calls to one peer skip the lookup.
#[derive(Clone)]
pub(crate) struct LastPeer<K> {
    key: K,
    peer: Arc<Peer>,
    removals: u64,
}

/// All tracked peers, bounded.
pub(crate) struct PeerTable<K> {
    peers: DashMap<K, Arc<Peer>, foldhash::fast::RandomState>,
    len: AtomicUsize,
    /// Peers removed so far; a cached peer is still the table's while this is unchanged.
    removals: AtomicU64,
    max_peers: usize,
    idle_ttl: Duration,
    epoch: Instant,
    last_sweep: AtomicU64,
    untracked_deadline: AtomicU64,
    /// The default policy's `max`, which caps an untracked call's floor.
    untracked_max: AtomicU64,
    untracked: Arc<Interrupts>,
    interrupt_tokens: bool,
    propagation: Propagation,
    /// Seeds each peer's probe jitter from its key.
    jitter: foldhash::fast::FixedState,
    policies: RwLock<Policies<K>>,
    /// Calls that went untracked because the table was full.
    pub(crate) untracked_calls: AtomicU64,
    /// What inner errors say about their peers.
    classifier: Classifier,
    /// Latency classes each peer may hold.
    max_classes: usize,
}

impl<K> PeerTable<K> {
    /// Whether calls get cooperative interrupt tokens where their requests can carry them.
    pub(crate) fn interrupt_tokens(&self) -> bool {
        self.interrupt_tokens
    }

    /// Which headers carry the caller's deadline in and out.
    pub(crate) fn propagation(&self) -> &Propagation {
        &self.propagation
    }

    /// The interrupt fan-out of untracked calls.
    pub(crate) fn untracked_interrupts(&self) -> &Arc<Interrupts> {
        &self.untracked
    }

    /// Peers removed so far (swept or evicted).
    pub(crate) fn removals(&self) -> u64 {
        self.removals.load(Relaxed)
    }

    /// Tracked peers now.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Relaxed)
    }
}

impl<K: PeerKey> PeerTable<K> {
    pub(crate) fn new(
        policies: Policies<K>,
        max_peers: usize,
        idle_ttl: Duration,
        interrupt_tokens: bool,
        propagation: Propagation,
        jitter_seed: u64,
    ) -> Self {
        let untracked = nanos(policies.default.cold_start);
        let untracked_max = nanos(policies.default.max);
        PeerTable {
            peers: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            len: AtomicUsize::new(0),
            removals: AtomicU64::new(0),
            max_peers,
            idle_ttl,
            epoch: Instant::now(),
            last_sweep: AtomicU64::new(0),
            untracked_deadline: AtomicU64::new(untracked),
            untracked_max: AtomicU64::new(untracked_max),
            untracked: Arc::new(Interrupts::new()),
            interrupt_tokens,
            propagation,
            jitter: foldhash::fast::FixedState::with_seed(jitter_seed),
            policies: RwLock::new(policies),
            untracked_calls: AtomicU64::new(0),
            classifier: Classifier::default(),
            max_classes: 0,
        }
    }

    /// Classifies inner errors with `classifier` instead of the default.
    pub(crate) fn with_classifier(mut self, classifier: Classifier) -> Self {
        self.classifier = classifier;
        self
    }

    /// Lets each peer hold up to `max_classes` latency classes (none by default).
    pub(crate) fn with_max_classes(mut self, max_classes: usize) -> Self {
        self.max_classes = max_classes;
        self
    }

    /// Admits a new call to `key` (`None`: the request names no peer) starting at `now`:
    /// finds or inserts its peer (through `last`, the calling service's cache), asks the
    /// peer for a ticket (for the call's class, raised to its floor), and shortens the
    /// deadline to the caller's where that is shorter. A spent caller's deadline is
    /// refused here, fired where this is called.
    #[track_caller]
    pub(crate) fn admit(
        &self,
        key: Option<K>,
        now: Instant,
        caller_deadline: Option<Duration>,
        hints: LatencyHints<'_>,
        last: &mut Option<LastPeer<K>>,
    ) -> Admission {
        let peer = key.and_then(|key| self.cached_peer(key, now, last));
        if caller_deadline == Some(Duration::ZERO) {
            // The caller has stopped waiting: do not start work nobody awaits.
            let fired = Fired {
                reason: Reason::BudgetSpent,
                fired_at: Location::caller(),
            };
            return Admission::Refused(self.call_peer(peer), fired);
        }
        let mut ticket = match &peer {
            Some(p) => match p.admit(now, hints) {
                Ok(ticket) => ticket,
                Err(fired) => return Admission::Refused(self.call_peer(peer), fired),
            },
            None => {
                let max = Duration::from_nanos(self.untracked_max.load(Relaxed));
                Ticket::untracked(self.untracked_deadline(), self.untracked.generation())
                    .floored(hints.floor, max)
            }
        };
        if let Some(deadline) = caller_deadline.filter(|d| *d < ticket.deadline) {
            (ticket.deadline, ticket.source) = (deadline, DeadlineSource::Caller);
        }
        Admission::Admitted(self.call_peer(peer), ticket)
    }

    /// The peer for `key`: the one in `last` if it is the same and still the table's,
    /// else from the table (and then remembered in `last`).
    fn cached_peer(
        &self,
        key: K,
        now: Instant,
        last: &mut Option<LastPeer<K>>,
    ) -> Option<Arc<Peer>> {
        let removals = self.removals();
        if let Some(last) = last {
            if last.removals == removals && last.key == key {
                return Some(last.peer.clone());
            }
        }
        let peer = self.peer(&key, now)?;
        *last = Some(LastPeer {
            key,
            peer: peer.clone(),
            removals,
        });
        Some(peer)
    }

    /// Whom a call to `peer` is for: the peer, or (`None`) the untracked calls.
    fn call_peer(&self, peer: Option<Arc<Peer>>) -> CallPeer {
        match peer {
            Some(peer) => CallPeer::Tracked(peer),
            None => CallPeer::Untracked(self.untracked.clone()),
        }
    }

    /// The peer for `key`, inserting it if there is room. `None`: the call is untracked.
    pub(crate) fn peer(&self, key: &K, now: Instant) -> Option<Arc<Peer>> {
        if let Some(peer) = self.peers.get(key) {
            return Some(peer.clone());
        }
        self.insert(key, now)
    }

    /// The peer for `key` if it is tracked; never inserts.
    pub(crate) fn get(&self, key: &K) -> Option<Arc<Peer>> {
        self.peers.get(key).map(|p| p.clone())
    }

    /// The deadline for untracked calls.
    pub(crate) fn untracked_deadline(&self) -> Duration {
        Duration::from_nanos(self.untracked_deadline.load(Relaxed))
    }

    /// A copy of every tracked peer (the shard locks are held only while copying).
    pub(crate) fn all(&self) -> Vec<(K, Arc<Peer>)> {
        self.peers
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// Reads the policies.
    pub(crate) fn policies(&self) -> RwLockReadGuard<'_, Policies<K>> {
        self.policies.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the policies, then puts them in force on every tracked peer.
    pub(crate) fn update_policies(&self, change: impl FnOnce(&mut Policies<K>)) {
        let mut policies = self.write_policies();
        change(&mut policies);
        self.untracked_deadline
            .store(nanos(policies.default.cold_start), Relaxed);
        self.untracked_max
            .store(nanos(policies.default.max), Relaxed);
        let now = Instant::now();
        for entry in self.peers.iter() {
            let (policy, overridden) = policies.for_key(entry.key());
            entry.value().set_policy(policy, overridden, now);
        }
    }

    /// Removes peers idle for `idle_ttl` with no call in flight.
    pub(crate) fn sweep(&self, now: Instant) -> usize {
        let mut removed = 0;
        self.peers.retain(|_, p| {
            let keep = p.in_flight() > 0 || p.idle_for(now) < self.idle_ttl;
            removed += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(removed, Relaxed);
        self.removals.fetch_add(removed as u64, Relaxed);
        self.last_sweep.store(self.nanos(now), Relaxed);
        removed
    }

    fn insert(&self, key: &K, now: Instant) -> Option<Arc<Peer>> {
        let Some(slot) = self.reserve(now) else {
            self.untracked_calls.fetch_add(1, Relaxed);
            export::untracked_call();
            return None;
        };
        // Hold the policies' read lock across the insert, so a concurrent policy change
        // either sees this peer or is seen by it.
        let policies = self.policies();
        let mut inserted = false;
        let entry = self.peers.entry(key.clone()).or_insert_with(|| {
            let seed = self.jitter.hash_one(key);
            let classifier = self.classifier.clone();
            let peer = Peer::new(
                label(key),
                policies.for_key(key),
                self.epoch,
                now,
                seed,
                classifier,
                self.max_classes,
            );
            inserted = true;
            Arc::new(peer)
        });
        let peer = entry.value().clone();
        drop(entry);
        if inserted {
            slot.keep();
        }
        Some(peer)
    }

    /// Takes one of the `max_peers` slots, making room if the table is full. Counting the
    /// slot before inserting keeps concurrent inserts within the bound.
    fn reserve(&self, now: Instant) -> Option<Slot<'_>> {
        for _ in 0..8 {
            let len = self.len();
            if len >= self.max_peers {
                if !self.make_room(now) {
                    return None;
                }
                continue;
            }
            if self
                .len
                .compare_exchange_weak(len, len + 1, Relaxed, Relaxed)
                .is_ok()
            {
                return Some(Slot(Some(&self.len)));
            }
        }
        None
    }

    /// Frees at least one slot if it can: sweeps idle peers (at most every quarter
    /// `idle_ttl`), else evicts the idlest sampled peer with no call in flight.
    fn make_room(&self, now: Instant) -> bool {
        let since_sweep = self
            .nanos(now)
            .saturating_sub(self.last_sweep.load(Relaxed));
        if Duration::from_nanos(since_sweep) >= self.idle_ttl / 4 && self.sweep(now) > 0 {
            return true;
        }
        let idlest = self
            .peers
            .iter()
            .filter(|e| e.value().in_flight() == 0)
            .take(EVICTION_SAMPLE)
            .max_by_key(|e| e.value().idle_for(now))
            .map(|e| e.key().clone());
        let Some(key) = idlest else { return false };
        if self
            .peers
            .remove_if(&key, |_, p| p.in_flight() == 0)
            .is_some()
        {
            self.len.fetch_sub(1, Relaxed);
            self.removals.fetch_add(1, Relaxed);
        }
        self.len() < self.max_peers
    }

    fn write_policies(&self) -> RwLockWriteGuard<'_, Policies<K>> {
        self.policies
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn nanos(&self, t: Instant) -> u64 {
        nanos(t.saturating_duration_since(self.epoch))
    }
}

/// A table slot taken for an insert: given back unless kept, also if the insert panics
/// (say, in the key's `Debug`).
struct Slot<'a>(Option<&'a AtomicUsize>);

impl Slot<'_> {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(len) = self.0 {
            len.fetch_sub(1, Relaxed);
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A peer's display name: its key's `Debug` form, without the quotes of a string key.
fn label<K: PeerKey>(key: &K) -> Box<str> {
    let s = format!("{key:?}");
    match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) if s.len() >= 2 => inner.into(),
        _ => s.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize) -> PeerTable<u32> {
        let policies = Policies {
            default: Arc::new(TimeoutPolicy::default()),
            overrides: HashMap::new(),
        };
        PeerTable::new(
            policies,
            max,
            Duration::from_secs(60),
            false,
            Propagation::none(),
            1,
        )
    }

    #[test]
    fn string_keys_are_labelled_without_quotes() {
        assert_eq!(&*label(&String::from("10.0.0.7:9000")), "10.0.0.7:9000");
        assert_eq!(&*label(&7u32), "7");
    }

    #[tokio::test(start_paused = true)]
    async fn full_table_evicts_idle_peers_but_never_busy_ones() {
        let t = table(2);
        let now = Instant::now();
        let a = t.peer(&1, now).unwrap();
        let _call = a.admit(now, LatencyHints::new()); // peer 1 has a call in flight
        let _b = t.peer(&2, now).unwrap();
        // Peer 3 evicts peer 2 (idle), not peer 1 (busy).
        assert!(t.peer(&3, now).is_some());
        assert_eq!(t.len(), 2);
        assert!(t.get(&1).is_some());
        assert!(t.get(&2).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn full_table_of_busy_peers_refuses_to_track() {
        let t = table(1);
        let now = Instant::now();
        let _call = t.peer(&1, now).unwrap().admit(now, LatencyHints::new());
        assert!(t.peer(&2, now).is_none());
        assert_eq!(t.untracked_calls.load(Relaxed), 1);
        assert_eq!(t.len(), 1);
    }
}
