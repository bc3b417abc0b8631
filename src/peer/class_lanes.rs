//! A peer's latency classes: a latency history and a deadline per (peer, class), under the
//! peer's one health state (see [`class`](crate::class) for where classes come from).
//!
//! Admission finds a call's class without a lock: each class holds a slot of two atomics,
//! its id and its published deadline word (0 until the class has a sample: calls of the
//! class get the longer of `cold_start` and the peer's deadline until it has learned; the
//! word's top bit, [`AT_LEAST_PEER`], keeps them at least at the peer's deadline until the
//! class has seen its quantile: [`class_deadline`]).
//! Slots are claimed in order under the peer's lock by the first call of a new class, at
//! most `max_classes`; once all are taken, calls of further classes go with the peer's own
//! history without taking the lock. Every call's outcome feeds the peer's own history too:
//! it is the peer's whole picture, and what calls beyond the bound are given.
//!
//! The histories behind the lock ([`ClassLanes`]) are plain state: their functions mark
//! the classes whose deadline word changed in a [`ClassBits`], and the peer copies those
//! words into the slots ([`ClassSlots::publish`]) before it lets its lock go.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::lane::Lane;
use super::published::{pack, unpack, AT_LEAST_PEER};
use crate::class::{ClassOf, ClassSnapshot};
use crate::explain::{DeadlineExplanation, DeadlineSource};
use crate::label::label;
use crate::policy::TimeoutPolicy;

/// A class's place among its peer's slots.
pub(crate) type ClassIx = u8;

/// A latency sample for a peer's histories: its latency, its call's class, and how many
/// answers it stands for (a busy peer's stripes draw one answer in `k`, which stands for
/// `k`: `per_core::sample_every`, `k` the smaller of the peer's and its class's; any
/// other stands for itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) latency: Duration,
    pub(crate) class: Option<ClassIx>,
    pub(crate) answers: u64,
}

/// A latency and its class: one answer, standing for itself.
impl From<(Duration, Option<ClassIx>)> for Sample {
    fn from((latency, class): (Duration, Option<ClassIx>)) -> Sample {
        Sample {
            latency,
            class,
            answers: 1,
        }
    }
}

/// The lock-free part of a peer's classes.
pub(crate) struct ClassSlots {
    slots: Box<[Slot]>,
    /// Every slot is taken: a new class goes with the peer's own history at once.
    full: AtomicBool,
}

#[derive(Default)]
struct Slot {
    /// The class's id; 0 while the slot is free.
    id: AtomicU64,
    /// The class's packed deadline word; 0 while the class has no sample.
    deadline: AtomicU64,
    /// When a hedged call of the class sends its copy, in nanoseconds; 0 until the class
    /// has learned (or while hedging is off).
    hedge: AtomicU64,
    /// The base-2 logarithm of one answer in how many of the class the stripes keep the
    /// latency of (0: every answer, as until the class is busy).
    sample_every: AtomicU8,
}

/// Which classes' deadline words changed: a bit per slot (at most `ClassIx::MAX` slots).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClassBits([u64; 4]);

impl ClassBits {
    /// Marks class `i`.
    fn set(&mut self, i: usize) {
        if let Some(word) = self.0.get_mut(i / 64) {
            *word |= 1 << (i % 64);
        }
    }

    /// The marked classes, in order.
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits.checked_sub(1)?;
                Some(w * 64 + bit)
            })
        })
    }
}

/// One class's history, behind the peer's lock.
pub(crate) struct ClassLane {
    label: Arc<str>,
    lane: Lane,
    /// Whether the class has had a sample (its deadline is its own).
    sampled: bool,
    /// The deadline word its slot publishes: 0 until the class has a sample.
    word: u64,
}

impl ClassLane {
    /// Whether `deadline` from `source`, given to a call of this class, was the class's
    /// own (one its history published), not its peer's.
    fn set(&self, (deadline, source): (Duration, DeadlineSource)) -> bool {
        self.lane.explained.gave(deadline, source)
    }
}

/// The classes' histories, in the order of their slots: the peer's lock guards them.
#[derive(Default)]
pub(crate) struct ClassLanes(Vec<ClassLane>);

/// What a policy says to a class's history: the policy, and whether it is a per-peer one.
pub(crate) type Rules<'a> = (&'a Arc<TimeoutPolicy>, bool);

impl ClassSlots {
    /// Room for `max` classes (none: classes off).
    pub(crate) fn new(max: usize) -> Self {
        ClassSlots {
            slots: (0..max.min(usize::from(ClassIx::MAX)))
                .map(|_| Slot::default())
                .collect(),
            full: AtomicBool::new(max == 0),
        }
    }

    /// The slot holding class `id`, if any: a scan of at most `max_classes` atomics.
    pub(crate) fn find(&self, id: u64) -> Option<ClassIx> {
        for (i, slot) in self.slots.iter().enumerate() {
            match slot.id.load(Ordering::Acquire) {
                0 => return None,
                found if found == id => return ClassIx::try_from(i).ok(),
                _ => {}
            }
        }
        None
    }

    /// Whether every slot is taken.
    pub(crate) fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Whether a class not seen yet would get a slot: one is still free (a scan of at most
    /// `max_classes` atomics, for a hedged call's class only).
    pub(crate) fn has_room(&self) -> bool {
        !self.is_full() && self.slots.iter().any(|s| s.id.load(Ordering::Acquire) == 0)
    }

    /// Under the peer's lock: the slot of class `id`, claimed for it if no other call
    /// claimed one since [`ClassSlots::find`], after `add` gave it a history in `lanes`.
    /// `None` once every slot is taken.
    pub(crate) fn claim(
        &self,
        id: u64,
        lanes: &mut ClassLanes,
        add: impl FnOnce(&mut ClassLanes) -> Option<ClassIx>,
    ) -> Option<ClassIx> {
        if let Some(i) = self.find(id) {
            return Some(i);
        }
        let Some(slot) = self.slots.get(lanes.0.len()) else {
            self.full.store(true, Ordering::Relaxed);
            return None;
        };
        let ix = add(lanes);
        slot.id.store(id, Ordering::Release);
        ix
    }

    /// Copies the deadline words of the classes `changed` marks into their slots (under
    /// the peer's lock, the one writer: ARCHITECTURE.md, invariant 5).
    pub(crate) fn publish(&self, lanes: &ClassLanes, changed: &ClassBits) {
        for i in changed.iter() {
            if let (Some(c), Some(slot)) = (lanes.0.get(i), self.slots.get(i)) {
                slot.deadline.store(c.word, Ordering::Relaxed);
            }
        }
    }

    /// Publishes the hedge delay of the classes `changed` marks: quantile `q` of each
    /// class's own window, once its deadline is learned from `policy.min_samples` answers
    /// (under the peer's lock, beside the deadline words: invariant 5).
    pub(crate) fn publish_hedges(
        &self,
        lanes: &ClassLanes,
        changed: &ClassBits,
        q: f64,
        policy: &TimeoutPolicy,
    ) {
        for i in changed.iter() {
            if let (Some(c), Some(slot)) = (lanes.0.get(i), self.slots.get(i)) {
                let window = &c.lane.window;
                let learned = c.lane.source.is_learned() && window.samples() >= policy.min_samples;
                let after = learned.then(|| window.quantile(q).min(policy.max));
                let nanos = after.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                slot.hedge.store(nanos, Ordering::Relaxed);
            }
        }
    }

    /// Publishes how busy each class `changed` marks is: one answer in `every(lane)` (a
    /// power of two) of it is kept (under the peer's lock, beside the deadline words).
    pub(crate) fn publish_sample_every(
        &self,
        lanes: &ClassLanes,
        changed: &ClassBits,
        every: impl Fn(&Lane) -> u32,
    ) {
        for i in changed.iter() {
            if let (Some(c), Some(slot)) = (lanes.0.get(i), self.slots.get(i)) {
                let log2 = every(&c.lane).max(1).trailing_zeros();
                let log2 = u8::try_from(log2).unwrap_or(u8::MAX);
                slot.sample_every.store(log2, Ordering::Relaxed);
            }
        }
    }

    /// One answer in how many of `class` its peer's stripes may keep (1: every one): its
    /// window holds more than its quantile needs. One atomic load.
    pub(crate) fn sample_every(&self, class: ClassIx) -> u32 {
        let log2 = self
            .slots
            .get(usize::from(class))
            .map_or(0, |slot| slot.sample_every.load(Ordering::Relaxed));
        1u32.checked_shl(log2.into()).unwrap_or(1)
    }

    /// The hedge delay of `class` (`None`: not learned). One atomic load.
    pub(crate) fn hedge_after(&self, class: ClassIx) -> Option<Duration> {
        let slot = self.slots.get(usize::from(class))?;
        Some(Duration::from_nanos(slot.hedge.load(Ordering::Relaxed))).filter(|d| !d.is_zero())
    }

    /// The deadline word of `class`'s slot (0: none, or no sample yet). One atomic load.
    #[inline]
    pub(crate) fn word(&self, class: Option<ClassIx>) -> Option<u64> {
        let slot = self.slots.get(usize::from(class?))?;
        Some(slot.deadline.load(Ordering::Relaxed))
    }
}

/// The deadline a new call of a class whose slot holds `word` gets, its peer's being
/// `peer`: the longer of the class's own and its peer's until the class has seen its
/// quantile ([`TimeoutPolicy::answers_to_see`] answers in its window: 1,000 for p99.9),
/// then its class's own. Before its second answer a class is at least as slow as an
/// unknown peer (`cold_start`), and may well be slower than its peer's usual calls (the
/// rare slow route). Until it has seen its quantile, its answers cannot have seen the
/// rare delays of the link it shares with every other route to its peer (a
/// retransmission, a pause), which the peer's own history, fed by every route, has.
pub(crate) fn class_deadline(
    word: u64,
    peer: (Duration, DeadlineSource),
    cold_start: Duration,
) -> (Duration, DeadlineSource) {
    let own = match word {
        0 => (cold_start, DeadlineSource::ColdStart),
        word => unpack(word),
    };
    let at_least_peer = word == 0 || word & AT_LEAST_PEER != 0;
    if (at_least_peer || own.1 == DeadlineSource::ColdStart) && peer.0 > own.0 {
        peer
    } else {
        own
    }
}

impl ClassLanes {
    /// A history for a new class, in the next slot, its deadline computed (and
    /// remembered, for explanations) at once.
    pub(crate) fn add(
        &mut self,
        class: ClassOf<'_>,
        now: Instant,
        rules: Rules<'_>,
    ) -> Option<ClassIx> {
        let i = self.0.len();
        self.0.push(ClassLane {
            label: label(&class.name()),
            lane: Lane::new(rules.0, now),
            sampled: false,
            word: 0,
        });
        let ix = ClassIx::try_from(i).ok();
        // Not sampled yet: no word changes.
        self.recompute(now, ix, rules, &mut ClassBits::default());
        ix
    }

    /// Records `samples` (latencies, their calls' classes, the answers each stands for),
    /// answered by `now`, into `own` (the peer's history) and their classes', recomputing
    /// the classes' deadlines that are due (marked in `changed`). Returns whether the
    /// peer's own is due.
    pub(crate) fn record(
        &mut self,
        own: &mut Lane,
        now: Instant,
        samples: impl Iterator<Item = impl Into<Sample>>,
        rules: Rules<'_>,
        changed: &mut ClassBits,
    ) -> bool {
        let mut due = ClassBits::default();
        let own_due = own.record(
            now,
            samples.map(|sample| {
                let Sample {
                    latency,
                    class,
                    answers,
                } = sample.into();
                let i = class.map_or(usize::MAX, usize::from);
                if let Some(c) = self.0.get_mut(i) {
                    // The first sample makes the class's deadline its own at once.
                    let first = !std::mem::replace(&mut c.sampled, true);
                    let sample = std::iter::once((latency, answers));
                    if c.lane.record(now, sample, rules.0) || first {
                        due.set(i);
                    }
                }
                (latency, answers)
            }),
            rules.0,
        );
        for i in due.iter() {
            self.recompute(now, ClassIx::try_from(i).ok(), rules, changed);
        }
        own_due
    }

    /// Recomputes the deadline of `class`; once the class has a sample its word changes
    /// (marked in `changed`).
    pub(crate) fn recompute(
        &mut self,
        now: Instant,
        class: Option<ClassIx>,
        (policy, overridden): Rules<'_>,
        changed: &mut ClassBits,
    ) {
        let Some(i) = class.map(usize::from) else {
            return;
        };
        let Some(c) = self.0.get_mut(i) else { return };
        // Recomputed (and remembered, for explanations) from the class's first call on;
        // published to its calls once it has a sample.
        let (deadline, source) = c.lane.recompute(now, policy, overridden);
        if c.sampled {
            let seen = c.lane.samples() >= policy.answers_to_see();
            c.word = pack(deadline, source) | if seen { 0 } else { AT_LEAST_PEER };
            changed.set(i);
        }
    }

    /// Rotates the windows whose time has come, recomputing them. Returns when the next
    /// of them rotates (`None`: no class).
    pub(crate) fn rotate(
        &mut self,
        now: Instant,
        rules: Rules<'_>,
        changed: &mut ClassBits,
    ) -> Option<Instant> {
        for i in 0..self.0.len() {
            if self.0[i].lane.window.advance(now) {
                self.recompute(now, ClassIx::try_from(i).ok(), rules, changed);
            }
        }
        self.0.iter().map(|c| c.lane.window.rotates_at()).min()
    }

    /// Puts a policy in force on every history (`reset`: the window's shape changed) and
    /// recomputes them.
    pub(crate) fn reshape(
        &mut self,
        now: Instant,
        reset: bool,
        rules: Rules<'_>,
        changed: &mut ClassBits,
    ) {
        for i in 0..self.0.len() {
            if reset {
                self.0[i].lane = Lane::new(rules.0, now);
            }
            self.recompute(now, ClassIx::try_from(i).ok(), rules, changed);
        }
    }

    /// Why a call of `class` that started at `started` had its `deadline`: the numbers of
    /// the publication it came from, in its class's history when that set the deadline
    /// (naming the class), else in `own`, the peer's.
    pub(crate) fn explain(
        &self,
        own: &Lane,
        class: Option<ClassIx>,
        started: Instant,
        (deadline, source): (Duration, DeadlineSource),
    ) -> DeadlineExplanation {
        let class = class.and_then(|i| self.0.get(usize::from(i)));
        let class = class.filter(|c| c.set((deadline, source)));
        let lane = class.map_or(own, |c| &c.lane);
        let mut why = lane.explained.explain(started, deadline, source);
        why.class = class.map(|c| c.label.to_string());
        why
    }

    /// The history a call of `class` learns in first: its class's once sampled, else
    /// `own`, the peer's.
    pub(crate) fn lane_of<'a>(&'a self, own: &'a Lane, class: Option<ClassIx>) -> &'a Lane {
        match class.and_then(|i| self.0.get(usize::from(i))) {
            Some(c) if c.sampled => &c.lane,
            _ => own,
        }
    }

    /// The history of `class`, if it has one (sampled or not).
    pub(crate) fn class_lane_mut(&mut self, class: Option<ClassIx>) -> Option<&mut Lane> {
        Some(&mut self.0.get_mut(usize::from(class?))?.lane)
    }

    /// [`Self::lane_of`], to change.
    pub(crate) fn lane_of_mut<'a>(
        &'a mut self,
        own: &'a mut Lane,
        class: Option<ClassIx>,
    ) -> &'a mut Lane {
        match class.and_then(|i| self.0.get_mut(usize::from(i))) {
            Some(c) if c.sampled => &mut c.lane,
            _ => own,
        }
    }

    /// How long a call of `class` normally takes: what its class's history says once
    /// sampled, else what `own`, the peer's, says; the longer of the two while the class
    /// has not seen its quantile, as its deadline is (a caller's deadline shorter than
    /// this proves nothing when it runs out).
    pub(crate) fn normal_latency(
        &self,
        own: &Lane,
        class: Option<ClassIx>,
        policy: &TimeoutPolicy,
    ) -> Duration {
        let peer = || own.normal_latency(policy);
        match class.and_then(|i| self.0.get(usize::from(i))) {
            Some(c) if c.sampled && c.word & AT_LEAST_PEER == 0 => c.lane.normal_latency(policy),
            Some(c) if c.sampled => c.lane.normal_latency(policy).max(peer()),
            _ => peer(),
        }
    }

    /// What each class knows, for a snapshot: `own` is the peer's history, `peer` its
    /// published deadline.
    pub(crate) fn views(
        &mut self,
        own: &Lane,
        now: Instant,
        policy: &TimeoutPolicy,
        peer: (Duration, DeadlineSource),
    ) -> Vec<ClassSnapshot> {
        let reach = policy.max_history;
        let mut views = Vec::with_capacity(self.0.len());
        for c in &mut self.0 {
            let given = class_deadline(c.word, peer, policy.cold_start);
            let (deadline, source) = given;
            let (quantiles, max, samples) = c.lane.window.quantiles([0.5, 0.99], reach, now);
            let own_deadline = c.set(given);
            let lane = if own_deadline { &c.lane } else { own };
            let mut explanation = lane.explained.explain(now, deadline, source);
            explanation.class = own_deadline.then(|| c.label.to_string());
            views.push(ClassSnapshot {
                class: c.label.to_string(),
                samples,
                p50: quantiles[0],
                p99: quantiles[1],
                max,
                deadline,
                explanation,
                window_bytes: c.lane.window.heap_bytes(),
            });
        }
        views
    }

    /// Forgets every class's answers and histograms (a peer the table let go).
    pub(crate) fn forget(&mut self) {
        self.0
            .iter_mut()
            .for_each(|class| class.lane.window.clear());
    }

    /// Heap bytes of every class's history.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.0.iter().map(|c| c.lane.window.heap_bytes()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_word_changes_with_a_sample_of_its_own_and_reaches_its_slot() {
        let t0 = Instant::now();
        let policy = Arc::new(TimeoutPolicy::default());
        let rules = (&policy, false);
        let (slots, mut lanes) = (ClassSlots::new(2), ClassLanes::default());
        let mut own = Lane::new(&policy, t0);
        let ix = slots.claim(9, &mut lanes, |l| l.add(ClassOf::Named("slow"), t0, rules));
        assert_eq!((ix, slots.find(9), lanes.0[0].word), (Some(0), Some(0), 0));
        // A sample of no class changes no class's word.
        let mut changed = ClassBits::default();
        let sample = (Duration::from_millis(5), None);
        lanes.record(&mut own, t0, std::iter::once(sample), rules, &mut changed);
        assert_eq!(changed, ClassBits::default());
        // The class's first sample makes its deadline its own.
        let sample = (Duration::from_millis(5), ix);
        lanes.record(&mut own, t0, std::iter::once(sample), rules, &mut changed);
        assert_eq!(changed.iter().collect::<Vec<_>>(), [0]);
        assert_ne!(lanes.0[0].word, 0);
        assert_eq!(slots.word(ix), Some(0), "published only when applied");
        slots.publish(&lanes, &changed);
        assert_eq!(slots.word(ix), Some(lanes.0[0].word));
    }

    #[test]
    fn a_class_is_at_least_its_peer_until_it_has_seen_its_quantile() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let policy = Arc::new(TimeoutPolicy::default());
        assert_eq!(policy.answers_to_see(), 1_000);
        let rules = (&policy, false);
        let mut lanes = ClassLanes::default();
        let mut own = Lane::new(&policy, t0);
        let ix = lanes.add(ClassOf::Named("fast"), t0, rules);
        let given = |lanes: &ClassLanes, peer: (Duration, DeadlineSource)| {
            class_deadline(lanes.0[0].word, peer, policy.cold_start)
        };
        let (fast, slow) = (
            (ms(20), DeadlineSource::Quantile),
            (ms(450), DeadlineSource::Quantile),
        );
        let mut at = t0;
        let mut answer = |lanes: &mut ClassLanes, n: usize| {
            for _ in 0..n {
                at += ms(1);
                let sample = std::iter::once((ms(1), ix));
                lanes.record(&mut own, at, sample, rules, &mut ClassBits::default());
            }
        };
        answer(&mut lanes, 999);
        let (learned, _) = unpack(lanes.0[0].word);
        assert_eq!(learned, policy.min, "its own deadline is learned");
        assert_eq!(given(&lanes, slow), slow, "999 answers: its peer's, longer");
        assert_eq!(given(&lanes, fast), fast, "999 answers: its peer's, longer");
        // Recomputed within `recompute_every` answers of its 1,000th: its own, shorter.
        answer(&mut lanes, 256);
        assert_eq!(
            given(&lanes, slow),
            (policy.min, DeadlineSource::ClampedMin)
        );
        assert_eq!(lanes.0[0].word & AT_LEAST_PEER, 0);
        // A class's own deadline is explained by its class only when it was the one given.
        let explained = |d| lanes.0[0].set(d);
        assert!(explained((policy.min, DeadlineSource::ClampedMin)));
        assert!(!explained(slow));
    }

    #[test]
    fn class_bits_list_every_marked_class_once_in_order() {
        let mut bits = ClassBits::default();
        for i in [0, 3, 63, 64, 200, 255] {
            bits.set(i);
        }
        bits.set(3);
        assert_eq!(bits.iter().collect::<Vec<_>>(), [0, 3, 63, 64, 200, 255]);
        assert_eq!(ClassBits::default().iter().count(), 0);
    }
}
