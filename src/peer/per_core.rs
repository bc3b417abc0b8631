//! What every call to a peer writes, striped per core ([`crate::stripe`]): the count of
//! calls in flight, and the answers of a healthy peer that cores contend for, batched
//! before they reach the window under the peer's lock.
//!
//! An answer goes straight to the window while the peer's lock is free, unless the peer's
//! deadline is learned and recomputed only every `recompute_every` answers (at least a
//! [`BATCH`]): no single answer moves it then, and the answer may wait in its core's
//! stripe. A core that finds the lock taken defers its answers too, for the next
//! [`CONTENDED_NANOS`]. A stripe's batch is handed over when it is full, when a millisecond
//! has passed since the stripe's last hand-over, with the core's next answer once it no
//! longer defers, or whenever anything takes the peer's lock (a miss, a probe, a rotation, a
//! snapshot), which first takes every stripe's batch. A peer still learning, or answering
//! a core less often than once a millisecond, thus records each answer at once; a busy one
//! takes its lock once per [`BATCH`] answers per core instead of once per answer, and
//! nothing that judges the peer (a miss, silence) reads it before its answers are in. A
//! stripe allocates its batch the first time it defers an answer.
//!
//! A peer busy enough that its window holds far more answers than its quantile needs
//! ([`sample_every`]) has its answers *sampled*: a stripe keeps the latency of one answer
//! in `k`, picked at random, and counts the others (with one atomic add, not the stripe's
//! lock, unless a hand-over is due). An answer of a latency class is sampled only as far
//! as its class is busy too (`k` the smaller of the two): a quiet class keeps every answer.
//! Every answer is still handed over (a heartbeat, and counted among the peer's answers);
//! the histograms get fewer records, each kept latency standing for the `k` answers it was
//! drawn from, so they still stand for every answer whatever `k` each was drawn at.

use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Mutex, PoisonError, TryLockError};
use std::time::Duration;

use super::class_lanes::{ClassIx, Sample};
use crate::stripe::Striped;

/// Answers a stripe defers before it hands them over.
pub(super) const BATCH: usize = 64;

/// How long a stripe defers answers at most while calls go on: the first answer after this
/// long hands the batch over.
const DEFER_NANOS: u64 = 1_000_000;

/// How long a core that found the peer's lock taken defers its answers.
pub(super) const CONTENDED_NANOS: u64 = 10_000_000;

/// The bit of a stripe's in-flight word that says the table has let the peer go (see
/// [`Stripes::retire`]); the other bits count calls in flight.
const RETIRED: usize = 1 << (usize::BITS - 1);

/// Bits of a batched answer that hold its latency in nanoseconds: 2^53 ns is over 100
/// days, past any `max` ([`MAX_DEADLINE`](crate::MAX_DEADLINE) is a day).
const LATENCY_BITS: u32 = 53;
const LATENCY_MASK: u64 = (1 << LATENCY_BITS) - 1;
/// The next 3 bits hold the base-2 logarithm of the answers it stands for (at most
/// [`MAX_SAMPLE_EVERY`], 2^6); the top 8, its class.
const WEIGHT_MASK: u64 = 0b111;
const CLASS_SHIFT: u32 = LATENCY_BITS + 3;
/// The class bits of an answer that has no class.
const NO_CLASS: u64 = 0xff;

/// Samples above the quantile a window must keep: a window holding `SAMPLES_ABOVE / (1 -
/// quantile)` samples or fewer keeps every answer's latency (a p99.9 window, 64,000).
/// The count above the quantile then varies by about 1/8 between windows: the quantile's
/// rank moves by that much, a latency a few percent off in a tail like a network's, well
/// inside the deadline's `factor`.
const SAMPLES_ABOVE: f64 = 64.0;

/// The most answers one sample stands for: a batch of [`BATCH`] samples spans at most
/// `BATCH * MAX_SAMPLE_EVERY` answers.
pub(super) const MAX_SAMPLE_EVERY: u32 = 64;
const _: () = assert!(MAX_SAMPLE_EVERY.trailing_zeros() as u64 <= WEIGHT_MASK);

/// One answer in how many (a power of two, at most [`MAX_SAMPLE_EVERY`]; 1: every one) a
/// busy peer's stripes keep the latency of, from the answers its window stands for now
/// (`answers`, each kept latency counting the answers it was drawn from) and its
/// `quantile`. With `needed` = `SAMPLES_ABOVE / (1 - quantile)` (a window holding that
/// many samples holds [`SAMPLES_ABOVE`] above the quantile): every answer until the window
/// stands for twice `needed`, then `k`, the largest power of two with `k * k <= 2 *
/// answers / needed`. The window then keeps `answers / k` samples, at least `k / 2` times
/// `needed` (about `sqrt(answers * needed / 2)`): never fewer than `needed`, and more as
/// the peer gets busier. The answers a window stands for do not depend on `k`, so `k`
/// follows the peer's pace alone. A quantile of 1 (the largest answer) needs every
/// answer.
pub(super) fn sample_every(answers: u64, quantile: f64) -> u32 {
    let needed = SAMPLES_ABOVE / (1.0 - quantile);
    // How many times over the window holds what is needed, doubled.
    let over = 2.0 * answers as f64 / needed;
    if over.is_nan() || over < 4.0 {
        return 1;
    }
    // `over` is finite and at least 4 here: the cast saturates, and the result fits.
    let k = (over.sqrt() as u64).min(u64::from(MAX_SAMPLE_EVERY));
    1 << (u64::BITS - 1 - k.leading_zeros())
}

/// A peer's stripes.
pub(super) struct Stripes {
    stripes: Striped<Stripe>,
    /// Set once every stripe is marked retired: what [`Stripes::is_retired`] reads.
    retired: AtomicBool,
}

/// One core's share of a peer.
pub(super) struct Stripe {
    /// Calls in flight counted here, and the [`RETIRED`] bit.
    in_flight: AtomicUsize,
    /// Until when this core defers its answers (nanoseconds since the epoch).
    contended_until: AtomicU64,
    /// Whether `deferred` has answers.
    deferring: AtomicBool,
    /// Answers sampled out (their latency not kept) counted without the lock since they
    /// were last folded into `deferred`: one read-modify-write each instead of the lock's
    /// two. Folded in under the lock, before anything else reads or takes the batch.
    unkept: AtomicU64,
    /// The latest of those answers' times (nanoseconds since the epoch), written before
    /// each is counted.
    unkept_at: AtomicU64,
    /// When the stripe last handed answers over ([`NEVER`]: never, and its first answer
    /// goes at once). Written under the lock; read without it by an answer sampled out,
    /// which takes the lock once a hand-over is due.
    handed_at: AtomicU64,
    /// Picks the answers sampled (xorshift64; never 0). Two threads sharing the stripe may
    /// draw the same number: a pick, not a count, so a lost update costs nothing.
    random: AtomicU64,
    deferred: Mutex<Deferred>,
}

/// [`Stripe::handed_at`] of a stripe that never handed answers over.
const NEVER: u64 = u64::MAX;

/// A stripe's answers not yet in the window.
#[derive(Default)]
struct Deferred {
    /// Allocated when the stripe first defers an answer (a stripe whose answers all go at
    /// once never does), and kept.
    batch: Option<Box<Batch>>,
}

/// What became of an answer a stripe was given ([`Stripe::defer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Deferral {
    /// It waits in the stripe.
    Held,
    /// Nothing was deferred, and it is time to hand over: the answer goes alone, its
    /// latency a sample standing for `kept` answers if it is kept.
    Alone {
        /// The answers its latency stands for, if it is kept.
        kept: Option<u32>,
    },
    /// The stripe's batch, this answer in it, was taken to be handed over.
    Taken,
}

/// Answers handed over together.
#[derive(Clone)]
pub(super) struct Batch {
    /// Samples in `answers`.
    len: usize,
    /// Answers, sampled or not (at least `len`).
    count: u64,
    answers: [u64; BATCH],
    /// The latest answer's time, in nanoseconds since the peer's epoch.
    pub(super) latest: u64,
}

impl Batch {
    /// How many answers the batch stands for: its samples and the answers only counted.
    pub(super) fn count(&self) -> u64 {
        self.count
    }

    /// The samples deferred: latency, class, and the answers each stands for.
    pub(super) fn answers(&self) -> impl ExactSizeIterator<Item = Sample> + '_ {
        self.answers[..self.len].iter().map(|&word| {
            let class = ClassIx::try_from(word >> CLASS_SHIFT)
                .ok()
                .filter(|&c| u64::from(c) != NO_CLASS);
            Sample {
                latency: Duration::from_nanos(word & LATENCY_MASK),
                class,
                answers: 1 << (word >> LATENCY_BITS & WEIGHT_MASK),
            }
        })
    }

    /// No answers.
    fn empty() -> Batch {
        Batch {
            len: 0,
            count: 0,
            answers: [0; BATCH],
            latest: 0,
        }
    }

    /// Adds an answer at `now`, its latency `sample` if it is kept; returns whether the
    /// batch's samples are full.
    fn push(&mut self, sample: Option<u64>, now: u64) -> bool {
        if let Some(answer) = sample {
            self.answers[self.len] = answer;
            self.len += 1;
        }
        self.count += 1;
        self.latest = self.latest.max(now);
        self.len == BATCH
    }
}

impl Stripes {
    pub(super) fn new() -> Self {
        Stripes {
            stripes: Striped::new(Stripe::new),
            retired: AtomicBool::new(false),
        }
    }

    /// This thread's stripe.
    #[inline]
    pub(super) fn mine(&self) -> &Stripe {
        self.stripes.mine().1
    }

    /// Counts a call in flight on this thread's stripe; `None` if the peer was retired
    /// (the call is not counted). The stripe is where the call must [`leave`](Self::leave).
    /// Counted before checked, on the word that defers the retired bit: a call is counted in
    /// flight before its peer can be retired (ARCHITECTURE.md, invariant 1).
    #[inline]
    pub(super) fn enter(&self) -> Option<usize> {
        let (i, stripe) = self.stripes.mine();
        if stripe.in_flight.fetch_add(1, Relaxed) & RETIRED != 0 {
            stripe.in_flight.fetch_sub(1, Relaxed);
            return None;
        }
        Some(i)
    }

    /// A call counted on `stripe` is no longer in flight.
    pub(super) fn leave(&self, stripe: usize) {
        self.stripes.get(stripe).in_flight.fetch_sub(1, Relaxed);
    }

    /// Calls in flight now (a sum over the stripes).
    pub(super) fn in_flight(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.in_flight.load(Relaxed) & !RETIRED)
            .sum()
    }

    /// Retires the peer if it has no call in flight on any stripe; from then on every
    /// [`enter`](Self::enter) is refused. Returns whether it was retired. A stripe found
    /// busy undoes the stripes already marked; a call refused in between looks the peer up
    /// again and finds it.
    pub(super) fn retire(&self) -> bool {
        for (n, stripe) in self.stripes.iter().enumerate() {
            if stripe
                .in_flight
                .compare_exchange(0, RETIRED, Relaxed, Relaxed)
                .is_err()
            {
                for undo in self.stripes.iter().take(n) {
                    undo.in_flight.fetch_and(!RETIRED, Relaxed);
                }
                return false;
            }
        }
        self.retired.store(true, Relaxed);
        true
    }

    /// Whether the peer was retired.
    pub(super) fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    /// Takes every stripe's answers (as of `now`), for whoever defers the peer's lock.
    pub(super) fn take_all(&self, now: u64) -> impl Iterator<Item = Batch> + '_ {
        self.stripes
            .iter()
            .filter_map(move |stripe| stripe.take(now))
    }
}

impl Stripe {
    fn new() -> Stripe {
        Stripe {
            in_flight: AtomicUsize::new(0),
            contended_until: AtomicU64::new(0),
            deferring: AtomicBool::new(false),
            unkept: AtomicU64::new(0),
            unkept_at: AtomicU64::new(0),
            handed_at: AtomicU64::new(NEVER),
            random: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            deferred: Mutex::new(Deferred::default()),
        }
    }

    /// Holds an answer of `latency_ns` nanoseconds (of `class`) that came at `now`
    /// (nanoseconds since the epoch) in this stripe (this thread's); its latency is kept
    /// only one time in `sample_every` (a power of two: see [`sample_every`]; for an answer
    /// of a class, its class's too), at random, and then stands for `sample_every`
    /// answers. Says what became of it: held (an answer sampled out, with no hand-over due,
    /// is only counted, without the lock); to be handed over alone, nothing being deferred
    /// (no batch is built for it: a peer answering a core less often than once a
    /// millisecond takes this way with every answer); or handed over with the stripe's
    /// batch, full or deferred long enough, which is moved to `taken`.
    pub(super) fn defer(
        &self,
        latency_ns: u64,
        class: Option<ClassIx>,
        now: u64,
        sample_every: u32,
        taken: &mut Option<Batch>,
    ) -> Deferral {
        let kept = if sample_every <= 1 {
            Some(1)
        } else {
            self.picks(sample_every).then_some(sample_every)
        };
        if kept.is_none() && self.count_unkept(now) {
            return Deferral::Held;
        }
        let mut deferred = match self.deferred.try_lock() {
            Ok(deferred) => deferred,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // Another thread writes this stripe: move to another for the next call.
                crate::stripe::move_thread();
                self.deferred.lock().unwrap_or_else(PoisonError::into_inner)
            }
        };
        self.fold_unkept(&mut deferred);
        let at = self.handed_at.load(Relaxed);
        let due = at == NEVER || now.saturating_sub(at) >= DEFER_NANOS;
        // Nothing deferred, and time to hand over: this answer goes alone, unheld.
        if due && deferred.batch.as_ref().is_none_or(|b| b.count == 0) {
            self.handed_at.store(now, Relaxed);
            return Deferral::Alone { kept };
        }
        let batch = deferred
            .batch
            .get_or_insert_with(|| Box::new(Batch::empty()));
        let class = class.map_or(NO_CLASS, u64::from);
        let nanos = latency_ns.min(LATENCY_MASK);
        let word = |k: u32| nanos | (u64::from(k.trailing_zeros()) & WEIGHT_MASK) << LATENCY_BITS;
        let full = batch.push(kept.map(|k| word(k) | class << CLASS_SHIFT), now);
        if full || due {
            self.deferring.store(false, Relaxed);
            *taken = self.take_batch(&mut deferred, now);
            Deferral::Taken
        } else {
            self.deferring.store(true, Relaxed);
            Deferral::Held
        }
    }

    /// Counts an answer sampled out at `now` without the lock, unless a hand-over is due
    /// (then the answer must take the lock and go with it): returns whether it was counted.
    #[inline]
    fn count_unkept(&self, now: u64) -> bool {
        let at = self.handed_at.load(Relaxed);
        if at == NEVER || now.saturating_sub(at) >= DEFER_NANOS {
            return false;
        }
        if self.unkept_at.load(Relaxed) < now {
            self.unkept_at.store(now, Relaxed);
        }
        // Release: whoever takes the count (Acquire) sees the time written before it.
        self.unkept.fetch_add(1, Release);
        true
    }

    /// Folds the answers counted without the lock into the batch (under the lock).
    fn fold_unkept(&self, deferred: &mut Deferred) {
        if self.unkept.load(Relaxed) == 0 {
            return;
        }
        let count = self.unkept.swap(0, Acquire);
        let at = self.unkept_at.load(Relaxed);
        let batch = deferred
            .batch
            .get_or_insert_with(|| Box::new(Batch::empty()));
        batch.count += count;
        batch.latest = batch.latest.max(at);
    }

    /// Whether to keep the next answer's latency: true one time in `every` (a power of
    /// two), at random, so no pattern in the answers' order biases the samples.
    fn picks(&self, every: u32) -> bool {
        let mut x = self.random.load(Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random.store(x, Relaxed);
        x & u64::from(every - 1) == 0
    }

    /// Whether this core defers its answers at `now`: it found the peer's lock taken
    /// lately.
    pub(super) fn defers(&self, now: u64) -> bool {
        now < self.contended_until.load(Relaxed)
    }

    /// This core found the peer's lock taken at `now`: it defers its answers for a while.
    pub(super) fn contended(&self, now: u64) {
        let until = now.saturating_add(CONTENDED_NANOS);
        self.contended_until.store(until, Relaxed);
    }

    /// Takes the answers this core still defers, if any (one that no longer defers hands
    /// them over with its next answer).
    pub(super) fn take_deferred(&self, now: u64) -> Option<Batch> {
        if self.deferring.load(Relaxed) || self.unkept.load(Relaxed) != 0 {
            self.take(now)
        } else {
            None
        }
    }

    /// Takes the stripe's deferred answers, if any.
    fn take(&self, now: u64) -> Option<Batch> {
        let mut deferred = self.deferred.lock().unwrap_or_else(PoisonError::into_inner);
        self.deferring.store(false, Relaxed);
        self.fold_unkept(&mut deferred);
        let any = deferred.batch.as_ref().is_some_and(|b| b.count > 0);
        if any {
            self.take_batch(&mut deferred, now)
        } else {
            None
        }
    }

    /// The answers deferred, handed over at `now`; the batch stays, empty.
    fn take_batch(&self, deferred: &mut Deferred, now: u64) -> Option<Batch> {
        self.handed_at.store(now, Relaxed);
        let batch = deferred.batch.as_mut()?;
        let taken = (**batch).clone();
        (batch.len, batch.count, batch.latest) = (0, 0, 0);
        Some(taken)
    }
}

#[cfg(test)]
mod tests;
