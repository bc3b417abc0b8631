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
//! is known stale by its generation. Stale items on top are popped as calls leave, so the
//! top is always a live deadline, and the heap is compacted when stale items outnumber live
//! ones. A heap rather than a hashed wheel: deadlines are `now + d` with similar `d`, so a
//! push lands near the bottom and rarely sifts, and only the earliest is ever needed.
//!
//! The queue's one `Sleep` is armed for its earliest deadline. It is polled with a waker of
//! the queue's own, so when tokio fires it, the calls due are marked expired and woken right
//! there, inside tokio's timer processing, as their own `Sleep`s would have been: no task
//! hop, and `tokio::time::advance` wakes them before it returns. That waker never polls the
//! timer (tokio also calls it while shutting down, when polling panics): a call registering
//! earlier than the armed instant re-arms at once, and after a fire that leaves calls in
//! the queue, a task spawned on the queue's runtime re-arms it and ends. Re-arming never
//! waits on a call's owner to poll it, so a call whose future is held without being polled
//! cannot keep the others past their deadlines; and no task outlives its fire.
//!
//! A queued call also waits there for its peer's interrupts: its slot names the interrupt
//! fan-out it watches ([`Watch`]), and a fire finds the calls that watch it through every
//! live queue ([`wake_watching`]), so a waiting call registers its waker once, not once for
//! its deadline and again for its interrupts. Fires are rare; a call never reads the list
//! of queues.
//!
//! The queue is shared (`Arc`), so a call that migrates to another worker, or is dropped on
//! another thread, still reaches its entry. Deadlines are tokio `Instant`s read against the
//! runtime's clock, and the timer is a tokio timer, so the paused clock (`start_paused`,
//! auto-advance, `tokio::time::advance`) keeps working. A thread's queue belongs to one
//! runtime (by [`Id`]): a thread that enters another runtime (or a new one, after its
//! previous runtime was dropped) gets a new queue at its next registration, and the old
//! one goes away with its last call. A runtime that is dropped fires its timers and drops
//! the re-arming task unrun: that marks its queues orphaned and wakes their calls, so a
//! call moved to another runtime (polled there) joins that runtime's queue for the same
//! deadline instead of waiting on a timer that will never fire. With no runtime on the
//! thread, a call falls back to a `Sleep` of its own. Response bodies keep a `Sleep` of
//! their own too: they re-arm it per frame.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Wake, Waker};

use slab::Slab;
use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};

use crate::invariant::broken;

#[cfg(test)]
mod tests;

/// Yields the task once, for a deadline that has just fired: pending (the task woken
/// again) the first time it is polled. The runtime polls its I/O driver, and runs what that
/// made ready, before it polls the task again; so an answer already in a socket buffer (its
/// connection's task not yet run, the caller's own thread blocked or starved past the
/// deadline while the answer came) is delivered first and wins, as it would under a fixed
/// timeout longer than the stall. Costs one scheduling round per deadline that fires.
pub(crate) fn yield_before_expiry(cx: &mut Context<'_>) -> Poll<()> {
    std::pin::pin!(tokio::task::yield_now()).poll(cx)
}

/// Whose interrupts a queued call also waits for: the address of its peer's fan-out
/// ([`crate::interrupt::Interrupts::watch`]), unique among the fan-outs alive while the call
/// holds its peer; [`NO_WATCH`]: none.
pub(crate) type Watch = usize;

/// The [`Watch`] of a deadline that waits for no interrupts.
pub(crate) const NO_WATCH: Watch = 0;

/// Stale heap items tolerated beyond the live ones before the heap is compacted.
const STALE_SLACK: usize = 32;

/// Calls woken per batch after a fire, outside the lock.
const WAKE_BATCH: usize = 32;

/// A call's deadline: unarmed until the call first waits, then an entry in its thread's
/// queue (or, with no runtime on the thread, a `Sleep` of its own, boxed: it is rare, and a
/// small future is cheaper to move).
pub(crate) enum CallTimer {
    /// Not armed yet: the call has not waited.
    Unarmed,
    /// In a thread's deadline queue.
    Queued(Entry),
    /// A tokio timer of its own.
    Own(Pin<Box<Sleep>>),
}

impl CallTimer {
    /// Ready once `at` has passed; arms at the first call, keeps the task's waker current
    /// at later ones.
    pub(crate) fn poll_at(&mut self, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_watching(at, NO_WATCH, cx)
    }

    /// [`poll_at`](Self::poll_at), the task also woken by a fire into `watch` while the
    /// deadline is queued ([`watches`](Self::watches)).
    pub(crate) fn poll_watching(
        &mut self,
        at: Instant,
        watch: Watch,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        match self {
            CallTimer::Unarmed => match register(at, watch, cx.waker()) {
                // Not due before the timer fires (a deadline already past fires it as the
                // registration arms it, and the call is woken).
                Some(entry) => {
                    *self = CallTimer::Queued(entry);
                    Poll::Pending
                }
                None => {
                    let mut sleep = Box::pin(tokio::time::sleep_until(at));
                    let polled = sleep.as_mut().poll(cx);
                    *self = CallTimer::Own(sleep);
                    polled
                }
            },
            CallTimer::Queued(entry) => match entry.poll(cx.waker()) {
                Waiting::Expired => Poll::Ready(()),
                Waiting::Pending => Poll::Pending,
                Waiting::Orphaned => {
                    // Its queue's runtime is gone: join the queue of the runtime polling
                    // the call now (or take a timer of its own), for the same instant.
                    *self = CallTimer::Unarmed;
                    self.poll_watching(at, watch, cx)
                }
            },
            CallTimer::Own(sleep) => sleep.as_mut().poll(cx),
        }
    }

    /// Whether the deadline is in a queue, where a fire into the [`Watch`] it was armed
    /// with finds it: otherwise the call must register for its interrupts elsewhere.
    pub(crate) fn watches(&self) -> bool {
        matches!(self, CallTimer::Queued(_))
    }

    /// Whether the deadline is armed.
    #[cfg(test)]
    pub(crate) fn is_armed(&self) -> bool {
        !matches!(self, CallTimer::Unarmed)
    }
}

/// One call's place in a deadline queue; leaves it when dropped.
pub(crate) struct Entry {
    queue: Arc<Queue>,
    /// Its slot: the entry's until it drops, so no generation is needed here.
    key: usize,
}

/// Where a queued deadline stands.
enum Waiting {
    /// It has passed (as the queue's timer saw it).
    Expired,
    /// It has not; the task is woken when it does.
    Pending,
    /// Its queue's runtime is gone: no timer of the queue will fire again.
    Orphaned,
}

impl Entry {
    /// Whether the deadline has passed (as the queue's timer saw it); if not, `waker` is the
    /// one woken when it does. Re-arms the timer if it is not armed.
    ///
    /// A waker is cloned and dropped outside the queue's lock, as everywhere in this module:
    /// either may run a user's code, which may fire an interrupt, and a fire locks every
    /// queue ([`wake_watching`]).
    fn poll(&self, waker: &Waker) -> Waiting {
        // Made outside the lock when the slot's waker is not this one; dropped (when the
        // state changed meanwhile) after the lock, being declared before it.
        let mut clone = None;
        loop {
            // `Some((the waker replaced, whether to re-arm))` once registered; `None`: a
            // clone is wanted first.
            let registered = {
                let mut state = self.queue.lock();
                if state.orphaned {
                    return Waiting::Orphaned;
                }
                let rearm = state.armed.is_none();
                let Some(slot) = state.slots.get_mut(self.key) else {
                    return broken(
                        "a deadline entry's slot is its own until it drops",
                        Waiting::Expired,
                    );
                };
                if slot.expired {
                    return Waiting::Expired;
                }
                if slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    Some((None, rearm))
                } else {
                    clone.take().map(|new| (slot.waker.replace(new), rearm))
                }
            };
            let Some((replaced, rearm)) = registered else {
                clone = Some(waker.clone());
                continue;
            };
            drop(replaced);
            // Only from the queue's runtime: a timer is polled where it can fire.
            if rearm && Handle::try_current().is_ok_and(|h| h.id() == self.queue.runtime) {
                self.queue.arm();
            }
            return Waiting::Pending;
        }
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

/// Joins the current thread's queue with deadline `at`, watching `watch`; `None` with no
/// runtime on the thread, where the call needs a timer of its own.
fn register(at: Instant, watch: Watch, waker: &Waker) -> Option<Entry> {
    let handle = Handle::try_current().ok()?;
    let queue = thread_queue(&handle)?;
    // Cloned before the lock: a clone may run a user's code (see `Entry::poll`).
    let waker = waker.clone();
    let (key, arm) = {
        let mut state = queue.lock();
        let generation = state.next_generation;
        state.next_generation += 1;
        let key = state.slots.insert(Slot {
            generation,
            watch,
            waker: Some(waker),
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
        let arm = state.armed.is_none_or(|armed| at < armed);
        if arm {
            state.armed = Some(at);
        }
        (key, arm)
    };
    let entry = Entry { queue, key };
    if arm {
        entry.queue.arm();
    }
    Some(entry)
}

thread_local! {
    /// The thread's deadline queue, for the runtime it was made in.
    static QUEUE: std::cell::RefCell<Option<Arc<Queue>>> =
        const { std::cell::RefCell::new(None) };
}

/// Every queue made and not yet gone, for a fire to find the calls that watch it: written
/// when a thread makes a queue, read by fires, never by a call.
static QUEUES: Mutex<Vec<Weak<Queue>>> = Mutex::new(Vec::new());

/// Wakes every queued call whose [`Watch`] is `watched`, outside the queues' locks. The
/// fire has published what it fired before this, so a call that joins a queue after this
/// looked at it finds the fire when it checks (ARCHITECTURE.md, invariant 3).
///
/// Each waker is taken from its slot, not cloned (a clone may run a user's code, and must
/// not under a lock): the call woken is polled again, and that poll registers it again
/// ([`Entry::poll`]) or ends it. A deadline that passes before that marks the slot expired
/// without a wake-up, which the call's poll then finds.
pub(crate) fn wake_watching(watched: impl Fn(Watch) -> bool) {
    let queues: Vec<Arc<Queue>> = {
        let queues = QUEUES.lock().unwrap_or_else(PoisonError::into_inner);
        queues.iter().filter_map(Weak::upgrade).collect()
    };
    let mut wakers = Vec::new();
    for queue in queues {
        wakers.extend(queue.lock().slots.iter_mut().filter_map(|(_, slot)| {
            let woken = slot.watch != NO_WATCH && watched(slot.watch);
            woken.then(|| slot.waker.take()).flatten()
        }));
        wakers.drain(..).for_each(Waker::wake);
    }
}

/// The thread's queue for `handle`'s runtime, made if the thread has none for it.
fn thread_queue(handle: &Handle) -> Option<Arc<Queue>> {
    let id = handle.id();
    QUEUE
        .try_with(|queue| {
            let mut queue = queue.borrow_mut();
            match &*queue {
                Some(q) if q.runtime == id => q.clone(),
                _ => queue.insert(Queue::new(handle)).clone(),
            }
        })
        .ok()
}

/// A thread's deadline queue.
pub(crate) struct Queue {
    state: Mutex<State>,
    /// The one tokio timer, armed for `State::armed`. Taken before `state` when both are
    /// held, never after: tokio may call `fire` (which takes `state`) while it is polled.
    timer: Mutex<Pin<Box<Sleep>>>,
    /// What the timer wakes: a [`Fire`] for this queue.
    fire: Waker,
    /// The runtime whose clock and timers the queue uses.
    runtime: Id,
    /// Its handle, to re-arm the timer from a task after a fire.
    handle: Handle,
}

/// What the lock guards.
struct State {
    slots: Slab<Slot>,
    /// Earliest first; items whose slot is gone (or reused) are stale.
    heap: BinaryHeap<Reverse<Due>>,
    next_generation: u64,
    /// The instant the timer is armed for; `None` once it fired (or before it was armed).
    armed: Option<Instant>,
    /// Set when the runtime dropped the task that was to re-arm the timer unrun: the
    /// runtime is gone, and its calls must wait elsewhere.
    orphaned: bool,
}

/// A call in the queue.
struct Slot {
    generation: u64,
    /// Whose interrupts it also waits for.
    watch: Watch,
    waker: Option<Waker>,
    /// Set once the deadline passed.
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
    /// A queue for `handle`'s runtime, the current one. Its timer is made here: a runtime
    /// without timers panics in the call's poll, as a call's own `Sleep` would.
    fn new(handle: &Handle) -> Arc<Queue> {
        let timer = Box::pin(tokio::time::sleep_until(Instant::now()));
        let queue = Arc::new_cyclic(|queue| Queue {
            state: Mutex::new(State {
                slots: Slab::new(),
                heap: BinaryHeap::new(),
                next_generation: 0,
                armed: None,
                orphaned: false,
            }),
            timer: Mutex::new(timer),
            fire: Waker::from(Arc::new(Fire(queue.clone()))),
            runtime: handle.id(),
            handle: handle.clone(),
        });
        let mut queues = QUEUES.lock().unwrap_or_else(PoisonError::into_inner);
        queues.retain(|q| q.strong_count() > 0);
        queues.push(Arc::downgrade(&queue));
        queue
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Arms the timer for the earliest deadline, expiring the calls already due (outside
    /// the timer's lock, so a waker that polls its task at once finds the lock free).
    fn arm(&self) {
        loop {
            let mut timer = self.timer.lock().unwrap_or_else(PoisonError::into_inner);
            let next = {
                let mut state = self.lock();
                state.pop_stale();
                let next = state.heap.peek().map(|Reverse(due)| due.at);
                state.armed = next;
                next
            };
            let Some(next) = next else {
                return; // Nothing to wait for: a fire still due finds nothing.
            };
            if timer.deadline() != next {
                timer.as_mut().reset(next);
            }
            if timer
                .as_mut()
                .poll(&mut Context::from_waker(&self.fire))
                .is_pending()
            {
                return;
            }
            drop(timer);
            self.expire(Instant::now());
        }
    }

    /// Marks every call due at `now` as expired and wakes it, in batches woken outside the
    /// lock.
    fn expire(&self, now: Instant) {
        loop {
            let mut batch: [Option<Waker>; WAKE_BATCH] = Default::default();
            let mut n = 0;
            {
                let mut state = self.lock();
                while n < WAKE_BATCH {
                    match state.pop_due(now) {
                        Some(waker) => {
                            batch[n] = waker;
                            n += 1;
                        }
                        None => break,
                    }
                }
            }
            batch
                .iter_mut()
                .flat_map(Option::take)
                .for_each(Waker::wake);
            if n < WAKE_BATCH {
                return;
            }
        }
    }

    /// How many calls are in the queue.
    #[cfg(test)]
    fn live(&self) -> usize {
        self.lock().slots.len()
    }
}

/// The timer's waker: expires the calls due, then has a task re-arm the timer if calls are
/// left.
struct Fire(Weak<Queue>);

impl Wake for Fire {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let Some(queue) = self.0.upgrade() else {
            return;
        };
        queue.expire(Instant::now());
        let left = {
            let mut state = queue.lock();
            state.armed = None;
            state.pop_stale();
            !state.heap.is_empty()
        };
        if left {
            // A runtime shutting down (which fires every timer) drops the task unrun: the
            // calls still in the queue are told, so that one moved to another runtime
            // waits there instead of forever.
            let handle = queue.handle.clone();
            let mut rearm = Rearm(Some(queue));
            drop(handle.spawn(async move {
                if let Some(queue) = rearm.0.take() {
                    queue.arm();
                }
            }));
        }
    }
}

/// The queue a re-arming task is to arm: dropped unrun (its runtime is gone), it marks the
/// queue orphaned and wakes every call in it.
struct Rearm(Option<Arc<Queue>>);

impl Drop for Rearm {
    fn drop(&mut self) {
        let Some(queue) = self.0.take() else {
            return;
        };
        let wakers: Vec<Waker> = {
            let mut state = queue.lock();
            state.orphaned = true;
            let slots = state.slots.iter_mut();
            slots.filter_map(|(_, slot)| slot.waker.take()).collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl State {
    /// Whether a heap item is still a call's deadline.
    fn is_live(slots: &Slab<Slot>, due: &Due) -> bool {
        slots
            .get(due.key)
            .is_some_and(|s| s.generation == due.generation)
    }

    /// Pops stale items off the top, so the top is a live deadline (ARCHITECTURE.md,
    /// invariant 2): the timer is armed for the top, and a re-arm is due only while the
    /// heap holds a call.
    fn pop_stale(&mut self) {
        while let Some(Reverse(due)) = self.heap.peek() {
            if Self::is_live(&self.slots, due) {
                break;
            }
            self.heap.pop();
        }
    }

    /// Pops the earliest deadline if it is due at `now`: `Some` with the waker of its call,
    /// now expired; `None` if none is due.
    fn pop_due(&mut self, now: Instant) -> Option<Option<Waker>> {
        self.pop_stale();
        let Reverse(due) = self.heap.peek().filter(|Reverse(due)| due.at <= now)?;
        let key = due.key;
        self.heap.pop();
        let slot = self.slots.get_mut(key)?;
        slot.expired = true;
        Some(slot.waker.take())
    }

    /// Drops every stale item.
    fn compact(&mut self) {
        let slots = &self.slots;
        self.heap.retain(|Reverse(due)| Self::is_live(slots, due));
    }
}
