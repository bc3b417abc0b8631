//! The per-peer interrupt broadcast: firing into calls in flight without a per-call channel.
//!
//! Each peer has an [`Interrupts`]: a generation counter and the wakers of its calls that
//! wait, striped per core ([`crate::stripe`]). A call notes the generation when it starts;
//! firing records why, bumps the generation and wakes every waiting call, which sees the
//! generation moved and ends with the recorded reason. A call whose deadline waits in a
//! thread's deadline queue is registered there ([`crate::timer::Watch`]): its slot names the
//! fan-out it watches, and a fire wakes it through the queues. Any other waiting call (a
//! response body, a call on a thread with no runtime) registers here, in the stripe of the
//! core that admitted it (an uncontended lock and a slot), and leaves when it ends. This
//! module knows nothing of peers: the peer fires it when it turns silent, and
//! [`InterruptHandle`](crate::InterruptHandle) fires it by hand.

use std::panic::Location;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use slab::Slab;

use crate::error::Reason;
use crate::stripe::Striped;
use crate::timer::{wake_watching, Watch};

/// Waiter slots a stripe keeps once it has none in use.
const SHRINK_ABOVE: usize = 1024;

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
    /// Fires so far, wrapping: a call would miss a fire only if exactly 2^32 more came
    /// while it was in flight.
    generation: AtomicU32,
    /// The wakers of the calls waiting, per stripe (`None`: taken by a fire; the call's
    /// next poll puts its waker back).
    waiting: Striped<Mutex<Slab<Option<Waker>>>>,
    last: Mutex<Option<Fired>>,
}

/// The waiter slot of a call that has not registered.
pub(crate) const NOT_WAITING: u32 = u32::MAX;

impl Interrupts {
    pub(crate) fn new() -> Self {
        Interrupts {
            generation: AtomicU32::new(0),
            waiting: Striped::new(|| Mutex::new(Slab::new())),
            last: Mutex::new(None),
        }
    }

    /// The current generation; a call notes it when it starts.
    pub(crate) fn generation(&self) -> u32 {
        self.generation.load(SeqCst)
    }

    /// What a call's queued deadline watches to be woken by this fan-out's fires: its
    /// address, which no other fan-out has while this one is alive (and a call keeps its
    /// peer, and so its fan-out, alive while it waits).
    pub(crate) fn watch(&self) -> Watch {
        std::ptr::from_ref(self) as Watch
    }

    /// Ends every call that started before now with `fired`: the reason and the generation
    /// are published before any call is woken, so a call that registered before it checked
    /// misses no fire (ARCHITECTURE.md, invariant 3).
    pub(crate) fn fire(&self, fired: Fired) {
        self.fire_unqueued(fired);
        let watch = self.watch();
        wake_watching(|w| w == watch);
    }

    /// [`fire`](Self::fire), but waking only the calls registered here, not those that
    /// watch it from a deadline queue: for a fire into many fan-outs at once, followed by
    /// one [`wake_watching`] for them all.
    pub(crate) fn fire_unqueued(&self, fired: Fired) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(fired);
        // Bump before waking: a call that registers after its stripe was woken sees the
        // new generation; one that registered before is woken.
        self.generation.fetch_add(1, SeqCst);
        // Taken under the stripe's lock and woken outside it: a waker that polls its task at
        // once finds the lock free, and no waker's code (clone, wake, drop, any of which may
        // fire again) runs under it.
        let mut wakers = Vec::new();
        for stripe in self.waiting.iter() {
            wakers.extend(
                lock(stripe)
                    .iter_mut()
                    .filter_map(|(_, waker)| waker.take()),
            );
            wakers.drain(..).for_each(Waker::wake);
        }
    }

    /// Registers `waker` to be woken by the next [`fire`](Self::fire) in `stripe`, or
    /// updates the registration `slot` holds ([`NOT_WAITING`]: none yet). Register, then
    /// check [`fired_since`](Self::fired_since): no interrupt can fall between the two.
    /// The registration stays until [`leave`](Self::leave). The waker is cloned, and the
    /// one it replaces dropped, outside the stripe's lock.
    pub(crate) fn wait(&self, stripe: u32, slot: &mut u32, waker: &Waker) {
        let waiting = self.waiting.get(stripe as usize);
        if *slot != NOT_WAITING {
            let current = lock(waiting)
                .get(*slot as usize)
                .is_some_and(|w| w.as_ref().is_some_and(|w| w.will_wake(waker)));
            if !current {
                let clone = Some(waker.clone());
                let replaced = lock(waiting)
                    .get_mut(*slot as usize)
                    .map(|w| std::mem::replace(w, clone));
                drop(replaced);
            }
            return;
        }
        let clone = waker.clone();
        let mut waiting = lock(waiting);
        let entry = waiting.vacant_entry();
        // More waiters than `u32` counts cannot be: each is a call's future in memory.
        if let Ok(key) = u32::try_from(entry.key()) {
            entry.insert(Some(clone));
            *slot = key;
        }
    }

    /// Ends the registration `slot` holds in `stripe`, if any.
    pub(crate) fn leave(&self, stripe: u32, slot: &mut u32) {
        if *slot == NOT_WAITING {
            return;
        }
        let left = {
            let mut waiting = lock(self.waiting.get(stripe as usize));
            let left = waiting.try_remove(*slot as usize);
            if waiting.is_empty() && waiting.capacity() > SHRINK_ABOVE {
                // A burst of waiters is over: give its memory back.
                *waiting = Slab::new();
            }
            left
        };
        *slot = NOT_WAITING;
        drop(left); // Its waker, outside the lock.
    }

    /// The interrupt fired since `generation`, if any.
    pub(crate) fn fired_since(&self, generation: u32) -> Option<Fired> {
        if self.generation() == generation {
            return None;
        }
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A stripe of waiters, locked. No waker's code runs under this lock (clone, wake or drop),
/// so nothing under it panics half-way or fires again into a lock it holds.
fn lock(waiting: &Mutex<Slab<Option<Waker>>>) -> MutexGuard<'_, Slab<Option<Waker>>> {
    waiting.lock().unwrap_or_else(PoisonError::into_inner)
}
