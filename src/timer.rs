//! Call deadlines without a tokio timer per call: one deadline queue per thread, served by
//! one tokio timer.
//!
//! A tokio `Sleep` per call costs a registration in tokio's timer wheel at its first poll
//! and a cancellation when the call ends, each under the wheel's lock. Here a call joins
//! its thread's queue instead: a slot in a [`Slab`] (its waker and whether its deadline
//! passed) and a `(deadline, slot, generation)` item in a min-[`BinaryHeap`]. One
//! uncontended lock per operation; no allocation per call once the slab and the heap have
//! grown to the calls in flight.
//!
//! A call that ends leaves its slot at once; its heap item stays behind (lazy deletion) and
//! is recognized as stale by its generation. Stale items on top are popped as calls leave,
//! so the top is always a live deadline, and the heap is compacted when stale items outnumber
//! live ones. A heap rather than a hashed wheel: deadlines are `now + d` with similar `d`,
//! so a push lands near the bottom and rarely sifts, and the driver needs only the earliest.
//!
//! Each queue is served by a driver task on the runtime the queue belongs to: it sleeps (on
//! one tokio timer) until the earliest live deadline, marks every call due as expired, wakes
//! it and re-arms. A registration earlier than the armed instant wakes the driver. The
//! queue is shared (`Arc`), so a call that migrates to another worker, or is dropped on
//! another thread, still reaches its entry. Deadlines are tokio `Instant`s and the driver's
//! timer is a tokio timer, so the paused clock (`start_paused`, auto-advance,
//! `tokio::time::advance`) keeps working.
//!
//! A thread's queue belongs to one runtime (by [`Id`]): a thread that enters another
//! runtime, or whose driver was dropped with its runtime, gets a new queue and driver at its
//! next registration; the old queue lives on while calls still hold it, and its driver
//! stops once it is gone. With no runtime on the thread, a call falls back to its own
//! `Sleep`. Response bodies keep a `Sleep` of their own: they re-arm it per frame.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use slab::Slab;
use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};

#[cfg(test)]
mod tests;

/// Stale heap items tolerated beyond the live ones before the heap is compacted.
const STALE_SLACK: usize = 32;

/// A call's deadline: unarmed until the call first waits, then an entry in its thread's
/// queue (or, with no runtime on the thread, a `Sleep` of its own, boxed: it is rare, and a
/// small future is cheaper to move).
pub(crate) enum Deadline {
    /// Not armed yet: the call has not waited.
    Unarmed,
    /// In a thread's deadline queue.
    Queued(Entry),
    /// A tokio timer of its own.
    Own(Pin<Box<Sleep>>),
}

impl Deadline {
    /// Ready once `at` has passed; arms at the first call, keeps the task's waker current
    /// at later ones.
    pub(crate) fn poll_at(&mut self, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Deadline::Unarmed => match register(at, cx.waker()) {
                // Not due before the driver has seen it.
                Some(entry) => {
                    *self = Deadline::Queued(entry);
                    Poll::Pending
                }
                None => {
                    let mut sleep = Box::pin(tokio::time::sleep_until(at));
                    let polled = sleep.as_mut().poll(cx);
                    *self = Deadline::Own(sleep);
                    polled
                }
            },
            Deadline::Queued(entry) if entry.expired(cx.waker()) => Poll::Ready(()),
            Deadline::Queued(_) => Poll::Pending,
            Deadline::Own(sleep) => sleep.as_mut().poll(cx),
        }
    }

    /// Whether the deadline is armed.
    #[cfg(test)]
    pub(crate) fn is_armed(&self) -> bool {
        !matches!(self, Deadline::Unarmed)
    }
}

/// One call's place in a deadline queue; leaves it when dropped.
pub(crate) struct Entry {
    queue: Arc<Queue>,
    /// Its slot: the entry's until it drops, so no generation is needed here.
    key: usize,
}

impl Entry {
    /// Whether the deadline has passed (as the driver saw it); if not, `waker` is the one
    /// woken when it does.
    fn expired(&self, waker: &Waker) -> bool {
        let mut state = self.queue.lock();
        let Some(slot) = state.slots.get_mut(self.key) else {
            return true; // Not reached: the slot is the entry's until it drops.
        };
        if slot.expired {
            return true;
        }
        match &mut slot.waker {
            Some(w) if w.will_wake(waker) => {}
            w => *w = Some(waker.clone()),
        }
        false
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let slot = {
            let mut state = self.queue.lock();
            let slot = state.slots.try_remove(self.key);
            state.pop_stale();
            slot
        };
        drop(slot); // Its waker, outside the lock.
    }
}

/// Joins the current thread's queue with deadline `at`; `None` with no runtime on the
/// thread (or one shutting down), where the call needs a timer of its own.
fn register(at: Instant, waker: &Waker) -> Option<Entry> {
    let handle = Handle::try_current().ok()?;
    let queue = thread_queue(&handle)?;
    let (key, driver) = {
        let mut state = queue.lock();
        let generation = state.next_generation;
        state.next_generation += 1;
        let key = state.slots.insert(Slot {
            generation,
            waker: Some(waker.clone()),
            expired: false,
        });
        state.heap.push(Reverse(Due {
            at,
            key,
            generation,
        }));
        if state.heap.len() > 2 * state.slots.len() + STALE_SLACK {
            state.compact();
        }
        let driver = match state.armed {
            Some(armed) if armed <= at => None,
            _ => {
                state.armed = Some(at);
                state.driver.take()
            }
        };
        (key, driver)
    };
    if let Some(driver) = driver {
        driver.wake();
    }
    Some(Entry { queue, key })
}

thread_local! {
    /// The thread's deadline queue, for the runtime it was made in.
    static QUEUE: std::cell::RefCell<Option<Arc<Queue>>> = const { std::cell::RefCell::new(None) };
}

/// The thread's queue for `handle`'s runtime, made (and its driver started) if the thread
/// has none for it, or its driver is gone.
fn thread_queue(handle: &Handle) -> Option<Arc<Queue>> {
    let id = handle.id();
    QUEUE
        .try_with(|queue| {
            let mut queue = queue.borrow_mut();
            match &*queue {
                Some(q) if q.runtime == id && q.driving.load(Ordering::Acquire) => Some(q.clone()),
                _ => {
                    let q = Queue::start(handle)?;
                    *queue = Some(q.clone());
                    Some(q)
                }
            }
        })
        .ok()
        .flatten()
}

/// A thread's deadline queue.
pub(crate) struct Queue {
    state: Mutex<State>,
    /// The runtime its driver runs on, whose clock its deadlines are read against.
    runtime: Id,
    /// Cleared when its driver is dropped (with its runtime).
    driving: AtomicBool,
}

/// What the lock guards.
struct State {
    slots: Slab<Slot>,
    /// Earliest first; items whose slot is gone (or reused) are stale.
    heap: BinaryHeap<Reverse<Due>>,
    next_generation: u64,
    /// The instant the driver is armed for: `None` while it waits with no deadline.
    armed: Option<Instant>,
    /// The driver's waker while it waits.
    driver: Option<Waker>,
}

/// A call in the queue.
struct Slot {
    generation: u64,
    waker: Option<Waker>,
    /// Set by the driver once the deadline passed.
    expired: bool,
}

/// A deadline in the heap.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    key: usize,
    generation: u64,
}

impl Queue {
    /// A queue for `handle`'s runtime, with its driver spawned; `None` if the runtime drops
    /// the driver at once (it is shutting down).
    fn start(handle: &Handle) -> Option<Arc<Queue>> {
        let queue = Arc::new(Queue {
            state: Mutex::new(State {
                slots: Slab::new(),
                heap: BinaryHeap::new(),
                next_generation: 0,
                armed: None,
                driver: None,
            }),
            runtime: handle.id(),
            driving: AtomicBool::new(true),
        });
        // Made here, not in the driver: a runtime without timers panics in the call's
        // poll, as a call's own `Sleep` would.
        let sleep = tokio::time::sleep_until(Instant::now());
        drop(handle.spawn(drive(Arc::downgrade(&queue), sleep)));
        queue.driving.load(Ordering::Acquire).then_some(queue)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks every call due at `now` as expired and moves its waker into `wake`; records
    /// `driver` as the driver's waker and returns the instant to sleep until, if any.
    fn fire(&self, now: Instant, driver: &Waker, wake: &mut Vec<Waker>) -> Option<Instant> {
        let mut state = self.lock();
        while let Some(Reverse(due)) = state.heap.peek() {
            if due.at > now {
                break;
            }
            let (key, generation) = (due.key, due.generation);
            state.heap.pop();
            match state.slots.get_mut(key) {
                Some(slot) if slot.generation == generation => {
                    slot.expired = true;
                    wake.extend(slot.waker.take());
                }
                _ => {}
            }
        }
        state.pop_stale();
        let next = state.heap.peek().map(|Reverse(due)| due.at);
        state.armed = next;
        match &mut state.driver {
            Some(w) if w.will_wake(driver) => {}
            w => *w = Some(driver.clone()),
        }
        next
    }

    /// How many calls are in the queue.
    #[cfg(test)]
    fn live(&self) -> usize {
        self.lock().slots.len()
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Its driver stops at its next poll.
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(driver) = state.driver.take() {
            driver.wake();
        }
    }
}

impl State {
    /// Whether a heap item is still a call's deadline.
    fn is_live(slots: &Slab<Slot>, due: &Due) -> bool {
        slots
            .get(due.key)
            .is_some_and(|s| s.generation == due.generation)
    }

    /// Pops stale items off the top, so the top is a live deadline.
    fn pop_stale(&mut self) {
        while let Some(Reverse(due)) = self.heap.peek() {
            if Self::is_live(&self.slots, due) {
                break;
            }
            self.heap.pop();
        }
    }

    /// Drops every stale item.
    fn compact(&mut self) {
        let slots = &self.slots;
        self.heap.retain(|Reverse(due)| Self::is_live(slots, due));
    }
}

/// The driver: sleeps until the queue's earliest deadline, expires every call due, re-arms.
/// It stops when the queue is gone; dropped with its runtime, it marks the queue undriven,
/// so the thread's next registration starts another.
async fn drive(queue: Weak<Queue>, sleep: Sleep) {
    let _stopped = Stopped(queue.clone());
    let mut sleep = pin!(Some(sleep));
    let mut wake = Vec::new();
    poll_fn(|cx| loop {
        let Some(q) = queue.upgrade() else {
            return Poll::Ready(());
        };
        let next = q.fire(Instant::now(), cx.waker(), &mut wake);
        drop(q);
        wake.drain(..).for_each(Waker::wake);
        let Some(next) = next else {
            // Idle: no timer held, so a paused clock is not pulled forward.
            sleep.set(None);
            return Poll::Pending;
        };
        match sleep.as_mut().as_pin_mut() {
            Some(s) if s.deadline() == next => {}
            Some(s) => s.reset(next),
            None => sleep.set(Some(tokio::time::sleep_until(next))),
        }
        if let Some(s) = sleep.as_mut().as_pin_mut() {
            if s.poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    })
    .await;
}

/// Marks the queue undriven when its driver is dropped.
struct Stopped(Weak<Queue>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(queue) = self.0.upgrade() {
            queue.driving.store(false, Ordering::Release);
        }
    }
}
