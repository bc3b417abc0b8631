//! Making room in a full table: the idle sweep, and eviction of the idlest peer among the
//! next few in rotation, with a back-off when they are all busy.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{nanos, PeerTable, RotationEntry};
use crate::peer::key::PeerKey;
use crate::peer::Peer;

/// How many peers an eviction looks at to find the idlest.
const EVICTION_SAMPLE: usize = 32;
/// How long a table found full of busy peers is not looked at again: calls to new peers
/// meanwhile go untracked at once.
const BUSY_BACKOFF: Duration = Duration::from_millis(1);

impl<K: PeerKey> PeerTable<K> {
    /// Removes peers idle for `idle_ttl` with no call in flight.
    pub(crate) fn sweep(&self, now: Instant) -> usize {
        let mut gone = Vec::new();
        self.peers.retain(|_, p| {
            let keep = p.idle_for(now) < self.idle_ttl || !p.retire();
            if !keep {
                gone.push(p.clone());
            }
            keep
        });
        let removed = gone.len();
        // Outside the shard's lock: each takes its peer's.
        gone.iter().for_each(|p| p.forget());
        self.len.fetch_sub(removed, Relaxed);
        self.last_sweep.store(self.nanos(now), Relaxed);
        if removed > 0 {
            self.rotation().retain(|(_, p)| !p.is_retired());
        }
        removed
    }

    /// Takes one of the `max_peers` slots, making room if the table is full. Counting the
    /// slot before inserting keeps concurrent inserts within the bound.
    pub(super) fn reserve(&self, now: Instant) -> Option<Slot<'_>> {
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
    /// `idle_ttl`), else evicts the idlest of the next [`EVICTION_SAMPLE`] peers in rotation
    /// with no call in flight. If those are all busy, the table is taken to be full of busy
    /// peers and not looked at again for [`BUSY_BACKOFF`].
    fn make_room(&self, now: Instant) -> bool {
        let at = self.nanos(now);
        let since_sweep = at.saturating_sub(self.last_sweep.load(Relaxed));
        if Duration::from_nanos(since_sweep) >= self.idle_ttl / 4 && self.sweep(now) > 0 {
            return true;
        }
        if at < self.busy_until.load(Relaxed) {
            return false;
        }
        let Some((key, peer)) = self.idlest_in_rotation(now) else {
            let until = at.saturating_add(nanos(BUSY_BACKOFF));
            self.busy_until.store(until, Relaxed);
            return false;
        };
        self.evict(key, peer);
        self.len() < self.max_peers
    }

    /// Lets `peer` go if it still has no call in flight, giving its histories' memory back
    /// at once; else puts it back in line.
    pub(super) fn evict(&self, key: Arc<K>, peer: Arc<Peer>) {
        // Invariant 1: only a peer that `retire` accepted, with no call in flight, goes.
        let retired = |_: &Arc<K>, p: &Arc<Peer>| Arc::ptr_eq(p, &peer) && p.retire();
        if self.peers.remove_if(&key, retired).is_some() {
            self.len.fetch_sub(1, Relaxed);
            peer.forget();
        } else if !peer.is_retired() {
            // A call came in since it was sampled: back in line.
            self.rotation().push_back((key, peer));
        }
    }

    /// Takes the idlest peer with no call in flight out of the next [`EVICTION_SAMPLE`] in
    /// rotation. The others go to the back of the line; peers already let go are dropped.
    pub(super) fn idlest_in_rotation(&self, now: Instant) -> Option<RotationEntry<K>> {
        let mut rotation = self.rotation();
        let mut idlest: Option<(Duration, RotationEntry<K>)> = None;
        for _ in 0..EVICTION_SAMPLE.min(rotation.len()) {
            let Some(entry) = rotation.pop_front() else {
                break;
            };
            if entry.1.is_retired() {
                continue;
            }
            // Idler first: the in-flight count (a read of every stripe) only for a peer
            // that would be the idlest.
            let idle = entry.1.idle_for(now);
            let idler =
                idlest.as_ref().is_none_or(|(most, _)| idle > *most) && entry.1.in_flight() == 0;
            let back = if idler {
                idlest.replace((idle, entry)).map(|(_, e)| e)
            } else {
                Some(entry)
            };
            rotation.extend(back);
        }
        idlest.map(|(_, entry)| entry)
    }

    /// Puts a peer at the back of the rotation (just inserted, or passed over).
    pub(super) fn line_up(&self, key: Arc<K>, peer: Arc<Peer>) {
        self.rotation().push_back((key, peer));
    }

    fn rotation(&self) -> MutexGuard<'_, VecDeque<RotationEntry<K>>> {
        self.rotation.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A table slot taken for an insert: given back unless kept, also if the insert panics
/// (say, in the key's `Debug`).
pub(super) struct Slot<'a>(Option<&'a AtomicUsize>);

impl Slot<'_> {
    pub(super) fn keep(mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::class::LatencyHints;
    use crate::peer::table::tests::table;
    use crate::peer::PeerRef;

    /// The peer for `key`, inserted if new, as a call holds it.
    fn shared(t: &PeerTable<u32>, key: u32) -> PeerRef {
        PeerRef::Shared(t.peer(&key, Instant::now()).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn full_table_evicts_idle_peers_but_never_busy_ones() {
        let t = table(2);
        let now = Instant::now();
        // Peer 1 has a call in flight.
        let _call = Peer::admit(&shared(&t, 1), now, 0, LatencyHints::new());
        let _b = t.peer(&2, now).unwrap();
        // Peer 3 evicts peer 2 (idle), not peer 1 (busy).
        assert!(t.peer(&3, now).is_some());
        assert_eq!(t.len(), 2);
        assert!(t.get(&1).is_some());
        assert!(t.get(&2).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_table_of_busy_peers_is_sampled_once_per_backoff() {
        let t = table(64);
        let now = Instant::now();
        let _calls: Vec<_> = (0..64)
            .map(|k| Peer::admit(&shared(&t, k), now, 0, LatencyHints::new()))
            .collect();
        let front = || t.rotation().front().map(|(k, _)| **k);
        assert_eq!(front(), Some(0));
        assert!(t.peer(&100, now).is_none());
        assert_eq!(front(), Some(32), "one sample went to the back of the line");
        for k in 101..1000 {
            assert!(t.peer(&k, now).is_none());
        }
        assert_eq!(front(), Some(32), "not looked at again within the back-off");
        assert!(t.peer(&1000, now + BUSY_BACKOFF).is_none());
        assert_eq!(front(), Some(0), "the next sample");
        assert_eq!(t.untracked_calls.load(Relaxed), 901);
    }

    #[tokio::test(start_paused = true)]
    async fn full_table_of_busy_peers_refuses_to_track() {
        let t = table(1);
        let now = Instant::now();
        let _call = Peer::admit(&shared(&t, 1), now, 0, LatencyHints::new());
        assert!(t.peer(&2, now).is_none());
        assert_eq!(t.untracked_calls.load(Relaxed), 1);
        assert_eq!(t.len(), 1);
    }
}
