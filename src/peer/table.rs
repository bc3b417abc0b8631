//! The bounded peer table, the policies in force, and admission: the one place a new call
//! learns whom it is for, whether it goes ahead, and with which deadline.
//!
//! Lookups take one shard's read lock (no global lock). A new peer is inserted with the
//! policy in force for it. The table holds at most `max_peers` peers: when full, idle
//! peers (no call for `idle_ttl`) are swept, else the idlest with no call in flight among
//! the next few in rotation is evicted; if all of those are busy, the call goes untracked
//! (with the default policy's cold-start deadline) and the table is not looked at again
//! for a moment, so that a flood of new keys into a table of busy peers costs the same per
//! call at any table size.
//!
//! A peer leaves the table only once retired (see [`Peer::retire`]), which no call in
//! flight allows: an admitted call's peer is in the table, where `shutdown` and
//! `interrupt_all` reach it. After `shutdown`, every call is refused.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use super::key::{detached, PeerKey};
use super::{CallPeer, InFlight, Peer, PeerRef, PeerSettings, Ticket};
use crate::class::LatencyHints;
use crate::classify::Classifier;
use crate::error::Reason;
use crate::events::Events;
use crate::explain::DeadlineSource;
use crate::export::{self, Labels, PeerMetrics};
use crate::interrupt::{Fired, Interrupts};
use crate::label::label;
use crate::policy::{Account, TimeoutPolicy};
use crate::propagate::Propagation;

mod budget;
mod ejection;
mod last;
mod room;

pub(crate) use self::ejection::{EjectionTimes, EndpointSet};
pub use self::ejection::{
    DEFAULT_BASE_EJECTION_TIME, DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_MAX_EJECTION_TIME,
};
pub(crate) use self::last::{Keyed, LastPeer};

/// How many times a call looks its peer up again after finding it evicted, before it goes
/// untracked (a table far too small for its keys).
const ADMIT_TRIES: usize = 4;

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

/// Whether a new call goes ahead, and whom it is for: what `Peer::admit` decides from the
/// health machine's `Verdict` (then with the peer's deadline, before the caller's cuts it),
/// what `PeerTable::admit` gives the service. A refusal carries why; the service makes it
/// the call's error, which its future gives at the first poll.
pub(crate) enum Admission {
    /// The call goes ahead with its ticket, counted in flight by its `InFlight`.
    Admitted(InFlight, Ticket),
    /// The call ends at once: its peer is silent, the caller's deadline is spent, or the
    /// layer was shut down.
    Refused(CallPeer, Fired),
}

impl Admission {
    /// The same decision, an admitted call's deadline cut to `caller_deadline` where that
    /// is shorter (ARCHITECTURE.md, invariant 6).
    #[inline(always)]
    fn capped(self, caller_deadline: Option<Duration>) -> Admission {
        match self {
            Admission::Admitted(in_flight, ticket) => {
                Admission::Admitted(in_flight, capped(ticket, caller_deadline))
            }
            refused => refused,
        }
    }
}

/// A peer in the rotation, with its key.
type RotationEntry<K> = (Arc<K>, Arc<Peer>);

/// All tracked peers, bounded.
pub(crate) struct PeerTable<K> {
    peers: DashMap<Arc<K>, Arc<Peer>, foldhash::fast::RandomState>,
    /// Every tracked peer once, in the order evictions look at them (taken only to insert,
    /// evict or sweep a peer). A peer let go may linger until it comes up or a sweep.
    rotation: Mutex<VecDeque<RotationEntry<K>>>,
    len: AtomicUsize,
    max_peers: usize,
    idle_ttl: Duration,
    epoch: Instant,
    last_sweep: AtomicU64,
    /// Until when (nanoseconds since `epoch`) a table found full of busy peers is not
    /// looked at again.
    busy_until: AtomicU64,
    untracked_deadline: AtomicU64,
    /// The default policy's `max`, which caps an untracked call's floor.
    untracked_max: AtomicU64,
    untracked: Arc<Interrupts>,
    /// Set by `shutdown`: why every call from then on is refused.
    shutdown: OnceLock<Fired>,
    interrupt_tokens: bool,
    propagation: Propagation,
    /// Seeds each peer's probe jitter from its key.
    jitter: foldhash::fast::FixedState,
    /// The peer labels given metric series of their own, at most `max_peers`.
    labels: Labels,
    policies: RwLock<Policies<K>>,
    /// Held by each policy change throughout, so that changes put in force on peers in the
    /// order they were made.
    changing: Mutex<()>,
    /// Calls that went untracked: their request named no peer, or the table was full.
    pub(crate) untracked_calls: AtomicU64,
    /// What inner errors say about their peers.
    classifier: Classifier,
    /// Where peers' transitions are sent, once anyone subscribes.
    pub(crate) events: Events<K>,
    /// The balanced endpoints made from this table, and which are held out.
    pub(crate) endpoints: EndpointSet<K>,
    /// Latency classes each peer may hold.
    max_classes: usize,
    /// The quantile hedged calls to its peers send their copy at.
    pub(crate) hedge_quantile: super::HedgeQuantile,
    /// What the histories of every peer hold, against the default policy's memory budget.
    account: Arc<Account>,
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

    /// Refuses every call from now on with `fired`. Set before firing into the calls in
    /// flight: a call admitted concurrently either sees this or started at a generation
    /// the fire moves past (admission reads the generation first).
    pub(crate) fn shut_down(&self, fired: Fired) {
        let _ = self.shutdown.set(fired);
        // Held-out endpoints wake to be ready for their refusals.
        self.endpoints.wake_held_out();
    }

    /// Whether `shutdown` refuses every call from now on.
    pub(crate) fn is_shut_down(&self) -> bool {
        self.shutdown.get().is_some()
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
        let account = Account::new(policies.default.memory_budget);
        let policies = policies.accounted(&account);
        PeerTable {
            peers: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            rotation: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            max_peers,
            idle_ttl,
            epoch: Instant::now(),
            last_sweep: AtomicU64::new(0),
            busy_until: AtomicU64::new(0),
            untracked_deadline: AtomicU64::new(untracked),
            untracked_max: AtomicU64::new(untracked_max),
            untracked: Arc::new(Interrupts::new()),
            shutdown: OnceLock::new(),
            interrupt_tokens,
            propagation,
            jitter: foldhash::fast::FixedState::with_seed(jitter_seed),
            labels: Labels::new(max_peers),
            policies: RwLock::new(policies),
            changing: Mutex::new(()),
            untracked_calls: AtomicU64::new(0),
            classifier: Classifier::default(),
            events: Events::default(),
            endpoints: EndpointSet::default(),
            max_classes: 0,
            hedge_quantile: super::HedgeQuantile::default(),
            account,
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
    /// deadline to the caller's where that is shorter. Refused here, whatever the peer:
    /// every call once the layer is shut down, and a call whose caller's deadline is spent
    /// (fired where this is called).
    #[track_caller]
    #[inline(always)]
    pub(crate) fn admit(
        &self,
        mut key: Keyed<K>,
        now: Instant,
        caller_deadline: Option<Duration>,
        hints: LatencyHints<'_>,
        last: &mut Option<LastPeer<K>>,
    ) -> Admission {
        let here = Location::caller();
        // A history refused memory: room is made here, outside every peer's lock.
        self.reclaim(now, key.key(last));
        if let Keyed::Key(None) = key {
            // The request names no peer: the call teaches nothing, but it is counted.
            self.count_untracked();
        }
        for _ in 0..ADMIT_TRIES {
            let Some(peer) = self.cached_peer(key.take(), now, last) else {
                break;
            };
            match self.admit_tracked(peer, now, caller_deadline, hints, here) {
                Some(admission) => return admission,
                // The peer was let go since it was found: look it up again.
                None => key = Keyed::Key(last.take().map(LastPeer::into_key)),
            }
        }
        if let Keyed::Key(Some(_)) = key {
            self.count_untracked();
        }
        self.admit_untracked(now, caller_deadline, hints, here)
    }

    /// Admits a call to `peer`; `None` if the peer has left the table.
    #[inline(always)]
    fn admit_tracked(
        &self,
        peer: &PeerRef,
        now: Instant,
        caller_deadline: Option<Duration>,
        hints: LatencyHints<'_>,
        here: &'static Location<'static>,
    ) -> Option<Admission> {
        // Invariant 10: the generation is read before the shutdown flag, so a call admitted
        // during a shutdown is either refused or reached by its fire.
        let generation = peer.interrupts().generation();
        let refused = |fired| Some(Admission::Refused(CallPeer::Tracked(peer.clone()), fired));
        if let Some(fired) = self.refusal(caller_deadline, here) {
            // Any call to the peer is use, also one refused (an admitted one is noted as
            // it is admitted); and it is counted, so the peer's counts add up to its calls.
            peer.touch(peer.nanos(now));
            peer.refused();
            return refused(fired);
        }
        // `None`: the peer was let go since it was found.
        Peer::admit(peer, now, generation, hints).map(|a| a.capped(caller_deadline))
    }

    /// Admits a call starting at `now` that has no peer in the table, raised to its floor
    /// (at most the default policy's `max`).
    fn admit_untracked(
        &self,
        now: Instant,
        caller_deadline: Option<Duration>,
        hints: LatencyHints<'_>,
        here: &'static Location<'static>,
    ) -> Admission {
        let generation = self.untracked.generation();
        if let Some(fired) = self.refusal(caller_deadline, here) {
            return Admission::Refused(CallPeer::Untracked(self.untracked.clone()), fired);
        }
        let max = Duration::from_nanos(self.untracked_max.load(Relaxed));
        let ticket =
            Ticket::untracked(now, self.untracked_deadline(), generation).floored(hints.floor, max);
        let in_flight = InFlight::untracked(self.untracked.clone());
        Admission::Admitted(in_flight, capped(ticket, caller_deadline))
    }

    /// Why a call is refused whatever its peer: the layer was shut down, or the caller has
    /// stopped waiting (then fired `here`). Read after the call's interrupt generation.
    /// Always inlined: its `None`, every admitted call's answer, then costs two tests.
    #[inline(always)]
    fn refusal(
        &self,
        caller_deadline: Option<Duration>,
        here: &'static Location<'static>,
    ) -> Option<Fired> {
        if let Some(fired) = self.shutdown.get() {
            return Some(fired.clone());
        }
        // A spent caller's deadline: do not start work nobody awaits.
        (caller_deadline == Some(Duration::ZERO)).then_some(Fired {
            reason: Reason::BudgetSpent,
            fired_at: here,
        })
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
            .map(|e| (K::clone(e.key()), e.value().clone()))
            .collect()
    }

    /// Reads the policies.
    pub(crate) fn policies(&self) -> RwLockReadGuard<'_, Policies<K>> {
        self.policies.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `policy` the default, and puts it in force on every tracked peer without an
    /// override: O(peers), done at once so that a call never pays for a policy change.
    pub(crate) fn set_default(&self, policy: TimeoutPolicy) {
        let _changing = self.changing();
        let policy = self.accounted(&policy);
        self.account.set_limit(policy.memory_budget);
        self.write_policies().default = policy.clone();
        self.untracked_deadline
            .store(nanos(policy.cold_start), Relaxed);
        self.untracked_max.store(nanos(policy.max), Relaxed);
        // Outside the write lock, so inserts go on: one that read the old default is in
        // the table by now, and one that did not reads the new one.
        let policies = self.policies();
        let now = Instant::now();
        for entry in self.peers.iter() {
            if !policies.overrides.contains_key(&**entry.key()) {
                entry.value().set_policy(policy.clone(), false, now);
            }
        }
        drop(policies);
        self.shrink_to_budget(now);
    }

    /// Gives `key` its own policy, in force at once if the peer is tracked: O(1).
    pub(crate) fn set_override(&self, key: K, policy: TimeoutPolicy) {
        let _changing = self.changing();
        let policy = self.accounted(&policy);
        self.write_policies()
            .overrides
            .insert(key.clone(), policy.clone());
        // Looked up after the change: an insert that read the policies before it is in the
        // table by now (it holds the read lock until then).
        if let Some(peer) = self.get(&key) {
            peer.set_policy(policy, true, Instant::now());
        }
    }

    /// Puts `key` back under the default policy: O(1). Returns whether it had an override.
    pub(crate) fn remove_override(&self, key: &K) -> bool {
        let _changing = self.changing();
        let (had, default) = {
            let mut policies = self.write_policies();
            (
                policies.overrides.remove(key).is_some(),
                policies.default.clone(),
            )
        };
        if let Some(peer) = self.get(key).filter(|_| had) {
            peer.set_policy(default, false, Instant::now());
        }
        had
    }

    /// Counts a call that goes untracked because the table had no room for its peer.
    fn count_untracked(&self) {
        self.untracked_calls.fetch_add(1, Relaxed);
        export::untracked_call();
    }

    fn insert(&self, key: &K, now: Instant) -> Option<Arc<Peer>> {
        let Some(slot) = self.reserve(now) else {
            self.count_untracked();
            return None;
        };
        // Hold the policies' read lock across the insert, so a concurrent policy change
        // either sees this peer or is seen by it.
        let policies = self.policies();
        let mut inserted = false;
        let stored = Arc::new(detached(key));
        let entry = self.peers.entry(stored.clone()).or_insert_with(|| {
            let label = label(key);
            let (policy, overridden) = policies.for_key(key);
            let settings = PeerSettings {
                metrics: PeerMetrics::new(&label, &self.labels),
                label,
                policy,
                overridden,
                epoch: self.epoch,
                jitter_seed: self.jitter.hash_one(key),
                classifier: self.classifier.clone(),
                max_classes: self.max_classes,
                hedge_quantile: self.hedge_quantile.clone(),
            };
            let peer = Peer::new(settings, now);
            peer.state_changes().report_to(self.events.report(stored));
            inserted = true;
            Arc::new(peer)
        });
        let (stored, peer) = (entry.key().clone(), entry.value().clone());
        drop(entry);
        if inserted {
            self.line_up(stored, peer.clone());
            slot.keep();
        }
        Some(peer)
    }

    fn changing(&self) -> MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(PoisonError::into_inner)
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

/// `ticket`, its deadline shortened to the caller's where that is shorter: a caller can
/// only shorten its deadline (ARCHITECTURE.md, invariant 6).
#[inline]
fn capped(mut ticket: Ticket, caller_deadline: Option<Duration>) -> Ticket {
    if let Some(deadline) = caller_deadline.filter(|d| *d < ticket.deadline) {
        (ticket.deadline, ticket.source) = (deadline, DeadlineSource::Caller);
    }
    ticket
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A table of `max` peers keyed by `u32`, under the default policy.
    pub(crate) fn table(max: usize) -> PeerTable<u32> {
        table_under(TimeoutPolicy::default(), max)
    }

    /// A table of `max` peers keyed by `u32`, under `policy`.
    pub(crate) fn table_under(policy: TimeoutPolicy, max: usize) -> PeerTable<u32> {
        let policies = Policies {
            default: Arc::new(policy),
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

    /// A busy learned peer's answers are sampled: its window keeps one latency in `k`, each
    /// standing for `k` answers, so it stands for about every answer, all counted.
    #[tokio::test(start_paused = true)]
    async fn a_busy_peer_keeps_the_samples_its_quantile_needs_and_counts_every_answer() {
        use crate::classify::Outcome;
        // The median needs 64 / 0.5 = 128 samples; sampling starts at twice that.
        let policy = TimeoutPolicy::default().quantile(0.5).recompute_every(64);
        let t = table_under(policy, 4);
        let (now, mut last) = (Instant::now(), None);
        let answers = 20_000;
        for i in 0..answers {
            let hints = LatencyHints::default();
            let Admission::Admitted(mut held, ticket) =
                t.admit(Keyed::Key(Some(1)), now, None, hints, &mut last)
            else {
                panic!("a healthy peer admits every call");
            };
            let latency = Duration::from_micros(100 + i % 100);
            let peer = held.end().expect("a tracked call");
            peer.on_outcome(now + latency, &ticket, false, Outcome::Sample);
        }
        let peer = t.get(&1).expect("tracked");
        let every = peer.published.sample_every();
        assert!(every > 1, "sampled: one answer in {every} kept");
        let view = peer.view(now);
        assert_eq!(view.completed, answers, "every answer is counted");
        let off = view.samples.abs_diff(answers);
        assert!(off < answers / 10, "{} samples", view.samples);
        // The samples are the answers': within their range (100-199 us), to the window's
        // precision (every answer recorded, the window reads 191, 191, 255, 255 us).
        let (quantiles, deadline) = (view.quantiles, view.deadline);
        let within = |q: Duration| (100..256).contains(&q.as_micros());
        assert!(quantiles.into_iter().all(within), "{quantiles:?}");
        let learned = view.explanation.source.is_learned();
        assert!(learned, "{deadline:?} from {}", view.explanation.source);
    }
}
