//! The peer one service called last, and how a call names its peer to the table: repeated
//! calls to one peer skip the table's lookup, and may skip building their key.

use super::PeerTable;
use crate::peer::key::PeerKey;
use crate::peer::PeerRef;
use tokio::time::Instant;

/// Calls in a row to one peer after which a service leases it (one allocation, then no
/// shared reference count written per call); a service that moves between peers more
/// often than this never does.
const LEASE_AFTER: u32 = 64;

/// The peer one service called last: repeated calls to one peer skip the lookup. Once
/// the table lets the peer go, admission says so and the call looks it up again. A clone
/// of the service shares its lease, if it has one.
#[derive(Clone)]
pub(crate) struct LastPeer<K> {
    key: K,
    peer: PeerRef,
    /// Calls to the peer in a row; at [`LEASE_AFTER`] the service takes a lease on it.
    calls: u32,
}

impl<K> LastPeer<K> {
    /// The peer's key.
    pub(crate) fn key(&self) -> &K {
        &self.key
    }

    /// The peer's key, the rest let go.
    pub(crate) fn into_key(self) -> K {
        self.key
    }

    /// One more call to the peer: the lease is taken once they are many in a row.
    fn called(&mut self) -> &PeerRef {
        if self.calls < LEASE_AFTER {
            self.calls += 1;
        } else if !self.peer.is_leased() {
            self.peer = self.peer.leased();
        }
        &self.peer
    }
}

/// Which peer a call goes to, as its service read the request.
pub(crate) enum Keyed<K> {
    /// The service's [`LastPeer`], told without building the request's key
    /// ([`KeyFn::goes_to`](crate::KeyFn::goes_to)).
    Last,
    /// The request's key; `None`: it names no peer.
    Key(Option<K>),
}

impl<K> Keyed<K> {
    /// The key, if the call has one: its own, or `last`'s.
    pub(crate) fn key<'a>(&'a self, last: &'a Option<LastPeer<K>>) -> Option<&'a K> {
        match self {
            Keyed::Last => last.as_ref().map(LastPeer::key),
            Keyed::Key(key) => key.as_ref(),
        }
    }

    /// This, leaving a call with no key behind.
    pub(crate) fn take(&mut self) -> Keyed<K> {
        std::mem::replace(self, Keyed::Key(None))
    }
}

impl<K: PeerKey> PeerTable<K> {
    /// The peer `key` names: the one in `last` if it is the same, else from the table (and
    /// then remembered in `last`); `None` for no key, or a table with no room. Borrowed
    /// from `last`: a call clones it once, into its hold.
    #[inline]
    pub(super) fn cached_peer<'a>(
        &self,
        key: Keyed<K>,
        now: Instant,
        last: &'a mut Option<LastPeer<K>>,
    ) -> Option<&'a PeerRef> {
        let key = match key {
            Keyed::Last => return last.as_mut().map(LastPeer::called),
            Keyed::Key(key) => key?,
        };
        if last.as_ref().is_some_and(|last| last.key == key) {
            return last.as_mut().map(LastPeer::called);
        }
        let peer = PeerRef::Shared(self.peer(&key, now)?);
        let last = last.insert(LastPeer {
            key,
            peer,
            calls: 0,
        });
        Some(&last.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::table::tests::table;

    #[tokio::test(start_paused = true)]
    async fn a_service_leases_the_peer_it_keeps_calling_and_drops_the_lease_when_it_moves_on() {
        let t = table(4);
        let now = Instant::now();
        let mut last = None;
        let key = |k| Keyed::Key(Some(k));
        for call in 0..=LEASE_AFTER {
            let peer = t.cached_peer(key(1), now, &mut last).unwrap();
            assert!(!peer.is_leased(), "call {call}");
        }
        assert!(t.cached_peer(key(1), now, &mut last).unwrap().is_leased());
        // A clone of the service shares the lease; another peer starts over.
        let mut clone = last.clone();
        assert!(t.cached_peer(key(1), now, &mut clone).unwrap().is_leased());
        assert!(!t.cached_peer(key(2), now, &mut last).unwrap().is_leased());
        let lease_gone = last.as_ref().is_some_and(|l| l.key == 2);
        assert!(lease_gone, "the cache moved to peer 2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_told_it_goes_to_the_last_peer_gets_it_and_counts_toward_its_lease() {
        let t = table(4);
        let now = Instant::now();
        let mut last = None;
        // Nothing called yet: no peer.
        assert!(t.cached_peer(Keyed::Last, now, &mut last).is_none());
        let first = t
            .cached_peer(Keyed::Key(Some(7)), now, &mut last)
            .unwrap()
            .clone();
        for _ in 0..LEASE_AFTER {
            let peer = t.cached_peer(Keyed::Last, now, &mut last).unwrap();
            assert!(std::ptr::eq::<crate::peer::Peer>(&**peer, &*first));
            assert!(!peer.is_leased());
        }
        assert!(t
            .cached_peer(Keyed::Last, now, &mut last)
            .unwrap()
            .is_leased());
        assert_eq!(last.as_ref().map(|l| *l.key()), Some(7));
        assert_eq!(t.len(), 1, "looked up once");
    }
}
