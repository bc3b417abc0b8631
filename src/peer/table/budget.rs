//! The memory budget of a layer's histories ([`TimeoutPolicy::memory_budget`]): the table
//! keeps the account every history charges (see [`crate::policy::Ledger`]), puts the default
//! policy's budget in force, and makes room when a charge was refused, by letting the
//! idlest peers with nothing in flight go, as a full table does ([`super::room`]).
//!
//! A refused charge leaves a want on the account; the next admission sees it (one load of a
//! word written only when a history starts or stops holding memory) and makes room then,
//! outside any peer's lock: at most [`RECLAIM_EVICTIONS`] peers, each the idlest of an
//! eviction's sample of the rotation. No global lock is taken per call.

use std::sync::Arc;

use tokio::time::Instant;

use super::{PeerTable, Policies};
use crate::peer::key::PeerKey;
use crate::peer::Peer;
use crate::policy::{Account, TimeoutPolicy};

/// Most peers let go to make room for one admission that finds the budget short.
pub(super) const RECLAIM_EVICTIONS: usize = 8;

impl<K: PeerKey> Policies<K> {
    /// The same policies, their histories charged to `account`, whose budget becomes the
    /// default policy's.
    pub(super) fn accounted(self, account: &Arc<Account>) -> Policies<K> {
        account.set_limit(self.default.memory_budget);
        Policies {
            default: Arc::new(self.default.accounted(account)),
            overrides: (self.overrides.into_iter())
                .map(|(k, p)| (k, Arc::new(p.accounted(account))))
                .collect(),
        }
    }
}

impl<K: PeerKey> PeerTable<K> {
    /// `policy`, charged to this layer's account, ready to be put in force.
    pub(super) fn accounted(&self, policy: &TimeoutPolicy) -> Arc<TimeoutPolicy> {
        Arc::new(policy.accounted(&self.account))
    }

    /// Heap bytes the layer's histories hold now, and its budget.
    pub(crate) fn memory(&self) -> (usize, usize) {
        (self.account.used(), self.account.limit())
    }

    /// Makes room if a history was refused some: lets the idlest peers with nothing in
    /// flight go until what it wanted fits, at most [`RECLAIM_EVICTIONS`] of them, but
    /// never `calling`, the peer of the admission that makes room: a peer busy enough to
    /// want more histories than the budget holds keeps the ones it has, and is never let go
    /// by its own calls. One load when nothing was refused.
    #[inline]
    pub(super) fn reclaim(&self, now: Instant, calling: Option<&K>) {
        if self.account.short() {
            self.reclaim_for(now, calling);
        }
    }

    /// [`reclaim`](Self::reclaim) once a history was refused: out of the admission's line.
    #[cold]
    #[inline(never)]
    fn reclaim_for(&self, now: Instant, calling: Option<&K>) {
        let Some(wanted) = self.account.take_wanted() else {
            return;
        };
        for _ in 0..RECLAIM_EVICTIONS {
            if self.account.fits(wanted) {
                return;
            }
            let Some((key, peer)) = self.idlest_in_rotation(now) else {
                return;
            };
            if calling == Some(&*key) {
                self.line_up(key, peer);
                return;
            }
            self.evict(key, peer);
        }
    }
}

impl<K: PeerKey> PeerTable<K> {
    /// After a smaller budget was put in force: lets the idlest peers with nothing in flight
    /// go until the histories fit it, at once (O(peers), on a policy change only). Peers
    /// with calls in flight stay; the admissions after them make the rest of the room.
    pub(super) fn shrink_to_budget(&self, now: Instant) {
        for _ in 0..self.len() {
            if self.account.used() <= self.account.limit() {
                return;
            }
            let Some((key, peer)) = self.idlest_in_rotation(now) else {
                return;
            };
            self.evict(key, peer);
        }
    }
}

impl Peer {
    /// Gives back the memory of a peer the table let go: its histories forget their
    /// answers and histograms at once, whoever still holds the peer (a service's last
    /// peer, a snapshot under way). A retired peer admits no call (invariant 1), so nothing
    /// records into it again.
    pub(super) fn forget(&self) {
        let mut locked = self.lock_alone();
        locked.lane.window.clear();
        locked.classes.forget();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::peer::table::tests::table;

    #[tokio::test(start_paused = true)]
    async fn a_peer_let_go_gives_its_memory_back_while_a_service_still_holds_it() {
        let t = table(1);
        let held = t.peer(&1, Instant::now()).unwrap();
        (held.lock_alone().lane.window).record(Duration::from_millis(5), Instant::now());
        assert_eq!(t.memory().0, TimeoutPolicy::default().history_bytes());
        tokio::time::advance(Duration::from_secs(1)).await;
        // Peer 2 takes the only slot: idle peer 1 goes, though `held` keeps it alive.
        assert!(t.peer(&2, Instant::now()).is_some());
        assert!(t.get(&1).is_none());
        assert_eq!(t.memory().0, 0);
        drop(held);
    }
}
