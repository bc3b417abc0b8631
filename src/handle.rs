//! The handles on a layer's shared peer table: [`AdaptiveTimeoutHandle`] reads and steers
//! it (snapshots, deadlines, policies), [`InterruptHandle`] fires interrupts into calls in
//! flight. Both are cheap to clone.

use std::borrow::Cow;
use std::collections::HashSet;
use std::panic::Location;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Reason;
use crate::explain::DeadlineSource;
use crate::interrupt::Fired;
use crate::peer::key::PeerKey;
use crate::peer::table::PeerTable;
use crate::policy::{PolicyError, TimeoutPolicy};
use crate::snapshot::PeerSnapshot;

/// For each handle: a constructor on a table, `Clone` (another handle on the same table)
/// and `Debug` (the peer count), none of which needs `K: Clone` or `K: Debug`.
macro_rules! on_the_table {
    ($($handle:ident),*) => {$(
        impl<K> $handle<K> {
            pub(crate) fn new(table: Arc<PeerTable<K>>) -> Self {
                $handle { table }
            }
        }

        impl<K> Clone for $handle<K> {
            fn clone(&self) -> Self {
                $handle::new(self.table.clone())
            }
        }

        impl<K> std::fmt::Debug for $handle<K> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($handle))
                    .field("peers", &self.table.len())
                    .finish_non_exhaustive()
            }
        }
    )*};
}

on_the_table!(AdaptiveTimeoutHandle, InterruptHandle);

/// A cheap, cloneable handle on a layer's shared state. Changes apply to calls that start
/// after them; calls in flight keep the deadline they started with.
pub struct AdaptiveTimeoutHandle<K> {
    table: Arc<PeerTable<K>>,
}

impl<K: PeerKey> AdaptiveTimeoutHandle<K> {
    /// The policy for peers without an override.
    pub fn default_policy(&self) -> TimeoutPolicy {
        (*self.table.policies().default).clone()
    }

    /// Replaces the default policy. Peers keep their latency history unless the window's
    /// shape (`window`, `sub_windows`, `significant_figures`, `min`, `max`, or the number
    /// of answers kept, `min_samples` up to 1,024) changed. Put in force at once on every
    /// tracked peer without an override (a call never checks for a change), so it takes
    /// time in proportion to those peers.
    pub fn set_default_policy(&self, policy: TimeoutPolicy) -> Result<(), PolicyError> {
        policy.validate()?;
        self.table.set_default(policy);
        Ok(())
    }

    /// Gives `peer` its own policy (whether or not it is tracked yet). Touches that peer
    /// only: the same cost at any number of peers.
    pub fn set_peer_policy(&self, peer: K, policy: TimeoutPolicy) -> Result<(), PolicyError> {
        policy.validate().map_err(|e| e.for_peer(&peer))?;
        self.table.set_override(peer, policy);
        Ok(())
    }

    /// Puts `peer` back under the default policy. Returns whether it had an override.
    pub fn remove_peer_policy(&self, peer: &K) -> bool {
        self.table.remove_override(peer)
    }

    /// The deadline a new call to `peer` would get, and why (before a caller's own deadline
    /// shortens it); `None` if it is not tracked.
    pub fn deadline(&self, peer: &K) -> Option<(Duration, DeadlineSource)> {
        let now = Instant::now();
        self.table.get(peer).map(|p| p.next_deadline(now))
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

    /// Every change of a tracked peer's state from now on, as [`HealthEvent`]s (typed
    /// key, from, to, why, when): to remove a silent endpoint from discovery and re-add it
    /// when it answers again. A subscriber that falls behind loses the oldest events; calls
    /// never wait for it (see [`events`](crate::events)).
    ///
    /// [`HealthEvent`]: crate::HealthEvent
    pub fn health_events(&self) -> tokio::sync::broadcast::Receiver<crate::HealthEvent<K>> {
        self.table.events.subscribe()
    }

    /// Peers tracked now.
    pub fn peer_count(&self) -> usize {
        self.table.len()
    }

    /// Heap bytes the layer's latency histories hold now (counting each busy history's
    /// histograms at their most), and the budget they are held within: the default
    /// policy's [`memory_budget`](TimeoutPolicy::memory_budget).
    ///
    /// ```
    /// use tower_adaptive_timeout::{AdaptiveTimeoutLayer, TimeoutPolicy, DEFAULT_MEMORY_BUDGET};
    ///
    /// let layer = AdaptiveTimeoutLayer::builder(|peer: &u32| *peer).build().unwrap();
    /// let handle = layer.handle();
    /// assert_eq!(handle.memory(), (0, DEFAULT_MEMORY_BUDGET));
    /// // A new default policy brings its budget into force at once.
    /// let smaller = TimeoutPolicy::default().memory_budget(64 << 20);
    /// handle.set_default_policy(smaller).unwrap();
    /// assert_eq!(handle.memory(), (0, 64 << 20));
    /// ```
    pub fn memory(&self) -> (usize, usize) {
        self.table.memory()
    }

    /// Calls that went untracked: their request named no peer (an `http::Request` with a
    /// path-only URI and no `Host`, as a tonic client built with `new(channel)` sends), or
    /// the table was full. They get the default policy's `cold_start` and teach nothing.
    pub fn untracked_calls(&self) -> u64 {
        self.table.untracked_calls.load(Relaxed)
    }

    /// Forgets peers idle for longer than `idle_ttl` with no call in flight; returns how
    /// many. (This also happens by itself when the table is full.)
    pub fn sweep_idle(&self) -> usize {
        self.table.sweep(Instant::now())
    }
}

/// Fires interrupts into calls in flight, by hand. Cheap to clone.
///
/// The firing methods are `#[track_caller]`: the [`Interrupted`](crate::Interrupted) each
/// call ends with names the line that fired it.
pub struct InterruptHandle<K> {
    table: Arc<PeerTable<K>>,
}

impl<K: PeerKey> InterruptHandle<K> {
    /// Ends every call in flight to `peer` with [`Reason::Manual`]. Returns whether the
    /// peer is tracked (an untracked peer has no calls to reach).
    #[track_caller]
    pub fn interrupt_peer(&self, peer: &K, reason: impl Into<Cow<'static, str>>) -> bool {
        let fired = Fired {
            reason: Reason::Manual(reason.into()),
            fired_at: Location::caller(),
        };
        match self.table.get(peer) {
            Some(p) => {
                p.interrupts().fire(fired);
                true
            }
            None => false,
        }
    }

    /// Ends every call in flight, to every peer and untracked, with [`Reason::Manual`].
    #[track_caller]
    pub fn interrupt_all(&self, reason: impl Into<Cow<'static, str>>) {
        self.fire_all(Fired {
            reason: Reason::Manual(reason.into()),
            fired_at: Location::caller(),
        });
    }

    /// Ends every call in flight with [`Reason::Shutdown`], and refuses every call after it
    /// the same way, at once, without reaching the inner service: a layer shut down stays
    /// shut down (every service and handle made from it). A tracked peer counts the calls
    /// it ended in [`PeerSnapshot::manual_interrupts`](crate::PeerSnapshot) and those it
    /// refused after in [`PeerSnapshot::refused`](crate::PeerSnapshot) (with the `metrics`
    /// feature, `interrupts_total{reason="shutdown"}` and `refused_total`). Balanced
    /// endpoints held out are woken, ready for their refusals.
    #[track_caller]
    pub fn shutdown(&self) {
        let fired = Fired {
            reason: Reason::Shutdown,
            fired_at: Location::caller(),
        };
        self.table.shut_down(fired.clone());
        self.fire_all(fired);
    }

    /// Fires into every peer and the untracked calls, then wakes their queued calls,
    /// looking through the deadline queues once rather than once per peer.
    fn fire_all(&self, fired: Fired) {
        let untracked = self.table.untracked_interrupts();
        let mut watched = HashSet::from([untracked.watch()]);
        for (_, peer) in self.table.all() {
            peer.interrupts().fire_unqueued(fired.clone());
            watched.insert(peer.interrupts().watch());
        }
        untracked.fire_unqueued(fired);
        crate::timer::wake_watching(|w| watched.contains(&w));
    }
}
