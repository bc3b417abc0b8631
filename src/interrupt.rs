//! Firing interrupts into calls in flight, without a per-call channel.
//!
//! Each peer has an [`Interrupts`]: a generation counter and a `Notify`. A call notes the
//! generation when it starts; firing records why, bumps the generation and wakes every
//! waiting call, which sees the generation moved and ends with the recorded reason.
//! [`InterruptHandle`] fires them by hand, for one peer or all.

use std::borrow::Cow;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::error::Reason;
use crate::peer::key::PeerKey;
use crate::peer::table::PeerTable;

/// An interrupt that was fired: why, and by whom.
#[derive(Clone, Debug)]
pub(crate) struct Fired {
    pub(crate) reason: Reason,
    pub(crate) fired_at: &'static Location<'static>,
}

/// The fan-out point of one peer (or of all untracked calls).
pub(crate) struct Interrupts {
    generation: AtomicU64,
    notify: Arc<Notify>,
    last: Mutex<Option<Fired>>,
}

impl Interrupts {
    pub(crate) fn new() -> Self {
        Interrupts {
            generation: AtomicU64::new(0),
            notify: Arc::new(Notify::new()),
            last: Mutex::new(None),
        }
    }

    /// The current generation; a call notes it when it starts.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(SeqCst)
    }

    /// Ends every call that started before now with `fired`.
    pub(crate) fn fire(&self, fired: Fired) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(fired);
        // Bump before notifying: a call that registers after the notification sees the
        // new generation; one that registered before is woken.
        self.generation.fetch_add(1, SeqCst);
        self.notify.notify_waiters();
    }

    /// A future woken by the next [`fire`](Self::fire). Create it, then check
    /// [`fired_since`](Self::fired_since): no interrupt can fall between the two.
    pub(crate) fn notified(&self) -> OwnedNotified {
        self.notify.clone().notified_owned()
    }

    /// The interrupt fired since `generation`, if any.
    pub(crate) fn fired_since(&self, generation: u64) -> Option<Fired> {
        if self.generation() == generation {
            return None;
        }
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
    pub(crate) fn new(table: Arc<PeerTable<K>>) -> Self {
        InterruptHandle { table }
    }

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
        self.fire_all(Reason::Manual(reason.into()), Location::caller());
    }

    /// Ends every call in flight with [`Reason::Shutdown`].
    #[track_caller]
    pub fn shutdown(&self) {
        self.fire_all(Reason::Shutdown, Location::caller());
    }

    fn fire_all(&self, reason: Reason, fired_at: &'static Location<'static>) {
        let fired = Fired { reason, fired_at };
        for (_, peer) in self.table.all() {
            peer.interrupts().fire(fired.clone());
        }
        self.table.untracked_interrupts().fire(fired);
    }
}

impl<K> Clone for InterruptHandle<K> {
    fn clone(&self) -> Self {
        InterruptHandle {
            table: self.table.clone(),
        }
    }
}

impl<K> std::fmt::Debug for InterruptHandle<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterruptHandle").finish_non_exhaustive()
    }
}
