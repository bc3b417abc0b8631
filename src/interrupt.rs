//! The per-peer interrupt broadcast: firing into calls in flight without a per-call channel.
//!
//! Each peer has an [`Interrupts`]: a generation counter and a `Notify`. A call notes the
//! generation when it starts; firing records why, bumps the generation and wakes every
//! waiting call, which sees the generation moved and ends with the recorded reason. This
//! module knows nothing of peers: the peer fires it when it turns silent, and
//! [`InterruptHandle`](crate::InterruptHandle) fires it by hand.

use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::error::Reason;

/// An interrupt that was fired: why, and by whom.
#[derive(Clone, Debug)]
pub(crate) struct Fired {
    pub(crate) reason: Reason,
    pub(crate) fired_at: &'static Location<'static>,
}

/// Where an interrupt that reached a call came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Fired into the call's peer: its silence, by hand through the handle, or shutdown.
    Peer,
    /// Fired into the call's token from outside the layer: by its caller, through the
    /// caller's token.
    Caller,
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
