//! Reading and steering a layer at runtime: policies, deadlines, snapshots.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::PeerSnapshot;
use crate::peer::key::PeerKey;
use crate::peer::table::PeerTable;
use crate::policy::{DeadlineSource, PolicyError, TimeoutPolicy};

/// A cheap, cloneable handle on a layer's shared state. Changes apply to calls that start
/// after them; calls in flight keep the deadline they started with.
pub struct AdaptiveTimeoutHandle<K> {
    table: Arc<PeerTable<K>>,
}

impl<K: PeerKey> AdaptiveTimeoutHandle<K> {
    pub(crate) fn new(table: Arc<PeerTable<K>>) -> Self {
        AdaptiveTimeoutHandle { table }
    }

    /// The policy for peers without an override.
    pub fn default_policy(&self) -> TimeoutPolicy {
        (*self.table.policies().default).clone()
    }

    /// Replaces the default policy. Peers keep their latency history unless the window's
    /// shape (`window`, `sub_windows`, `significant_figures`, `min`, `max`) changed.
    pub fn set_default_policy(&self, policy: TimeoutPolicy) -> Result<(), PolicyError> {
        policy.validate()?;
        self.table.update_policies(|p| p.default = Arc::new(policy));
        Ok(())
    }

    /// Gives `peer` its own policy (whether or not it is tracked yet).
    pub fn set_peer_policy(&self, peer: K, policy: TimeoutPolicy) -> Result<(), PolicyError> {
        policy.validate().map_err(|e| e.for_peer(&peer))?;
        self.table.update_policies(|p| {
            p.overrides.insert(peer, Arc::new(policy));
        });
        Ok(())
    }

    /// Puts `peer` back under the default policy. Returns whether it had an override.
    pub fn remove_peer_policy(&self, peer: &K) -> bool {
        let mut had = false;
        self.table
            .update_policies(|p| had = p.overrides.remove(peer).is_some());
        had
    }

    /// The deadline a new call to `peer` would get, and why; `None` if it is not tracked.
    pub fn deadline(&self, peer: &K) -> Option<(Duration, DeadlineSource)> {
        self.table.get(peer).map(|p| p.deadline())
    }

    /// A snapshot of one peer, if it is tracked.
    pub fn peer(&self, peer: &K) -> Option<PeerSnapshot> {
        let peer = self.table.get(peer)?;
        Some(PeerSnapshot::read(&peer, Instant::now()))
    }

    /// A snapshot of every tracked peer, sorted by peer. Each peer is read under its own
    /// lock in turn; no lock is held across peers.
    pub fn snapshot(&self) -> Vec<PeerSnapshot> {
        let now = Instant::now();
        let mut all: Vec<_> = self
            .table
            .all()
            .iter()
            .map(|(_, p)| PeerSnapshot::read(p, now))
            .collect();
        all.sort_by(|a, b| a.peer.cmp(&b.peer));
        all
    }

    /// Peers tracked now.
    pub fn peer_count(&self) -> usize {
        self.table.len()
    }

    /// Calls that went untracked because the table was full.
    pub fn untracked_calls(&self) -> u64 {
        self.table
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Forgets peers idle for longer than `idle_ttl` with no call in flight; returns how
    /// many. (This also happens by itself when the table is full.)
    pub fn sweep_idle(&self) -> usize {
        self.table.sweep(Instant::now())
    }
}

impl<K> Clone for AdaptiveTimeoutHandle<K> {
    fn clone(&self) -> Self {
        AdaptiveTimeoutHandle {
            table: self.table.clone(),
        }
    }
}

impl<K> std::fmt::Debug for AdaptiveTimeoutHandle<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveTimeoutHandle")
            .field("peers", &self.table.len())
            .finish_non_exhaustive()
    }
}
