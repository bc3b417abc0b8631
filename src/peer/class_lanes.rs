//! A peer's latency classes: a latency history and a deadline per (peer, class), under the
//! peer's one health state (see [`class`](crate::class) for where classes come from).
//!
//! Admission finds a call's class without a lock: each class holds a slot of two atomics,
//! its id and its published deadline word (0 until the class has a sample: calls of the
//! class get the longer of `cold_start` and the peer's deadline until it has learned). Slots are claimed in order under the peer's lock
//! by the first call of a new class, at most `max_classes`; once all are taken, calls of
//! further classes go with the peer's own history without taking the lock. Every call's
//! outcome feeds the peer's own history too: it is the peer's whole picture, and what
//! calls beyond the bound are given.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::lane::Lane;
use super::published::{pack, unpack};
use super::{Locked, Peer, Ticket};
use crate::class::{ClassOf, ClassSnapshot};
use crate::explain::{DeadlineExplanation, DeadlineSource};
use crate::label::label;

/// A class's place among its peer's slots.
pub(crate) type ClassIx = u8;

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
}

/// One class's history, behind the peer's lock.
pub(crate) struct ClassLane {
    label: Arc<str>,
    pub(super) lane: Lane,
    /// Whether the class has had a sample (its deadline is its own).
    sampled: bool,
}

impl ClassLane {
    /// Whether a deadline from `source` for a call of this class was the class's own.
    fn set(&self, source: DeadlineSource) -> bool {
        self.lane.source == source && (self.sampled || source == DeadlineSource::ColdStart)
    }
}

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
    fn find(&self, id: u64) -> Option<ClassIx> {
        for (i, slot) in self.slots.iter().enumerate() {
            match slot.id.load(Ordering::Acquire) {
                0 => return None,
                found if found == id => return ClassIx::try_from(i).ok(),
                _ => {}
            }
        }
        None
    }
}

impl Peer {
    /// The slot of `class`, claiming one for a class not seen before if any is free.
    /// Allocates (the class's label and history) only for a new class.
    pub(super) fn class_of(&self, now: Instant, class: Option<ClassOf<'_>>) -> Option<ClassIx> {
        let class = class?;
        let id = class.id();
        if let Some(i) = self.classes.find(id) {
            return Some(i);
        }
        if self.classes.full.load(Ordering::Relaxed) {
            return None;
        }
        let mut locked = self.lock();
        if let Some(i) = self.classes.find(id) {
            return Some(i);
        }
        let i = locked.classes.len();
        let Some(slot) = self.classes.slots.get(i) else {
            self.classes.full.store(true, Ordering::Relaxed);
            return None;
        };
        let lane = Lane::new(&locked.policy, now);
        locked.classes.push(ClassLane {
            label: label(&class.name()),
            lane,
            sampled: false,
        });
        let ix = ClassIx::try_from(i).ok();
        self.publish_class(&mut locked, now, ix);
        slot.id.store(id, Ordering::Release);
        ix
    }

    /// The deadline a new call of `class` gets: its class's own once it has learned
    /// from its answers; before that (no answer, or one) the longer of `cold_start` and
    /// the peer's deadline, since a class of its own may well be slower than the peer's
    /// usual calls (the rare slow route), and is at least as slow as an unknown peer.
    /// A few atomic loads.
    pub(super) fn class_deadline(&self, class: Option<ClassIx>) -> (Duration, DeadlineSource) {
        let peer = self.deadline();
        let Some(slot) = class.and_then(|i| self.classes.slots.get(usize::from(i))) else {
            return peer;
        };
        let own = match slot.deadline.load(Ordering::Relaxed) {
            0 => (self.published.cold_start(), DeadlineSource::ColdStart),
            word => unpack(word),
        };
        if own.1 == DeadlineSource::ColdStart && peer.0 > own.0 {
            peer
        } else {
            own
        }
    }

    /// Records `samples` (latencies, and their calls' classes), answered by `now`, into
    /// the peer's history and their classes', republishing the classes' deadlines that are
    /// due. Returns whether the peer's own is due.
    pub(super) fn record_lanes(
        &self,
        locked: &mut Locked,
        now: Instant,
        samples: impl Iterator<Item = (Duration, Option<ClassIx>)>,
    ) -> bool {
        // Which classes are due: a bit per slot (at most `ClassIx::MAX` slots).
        let mut due = [0u64; 4];
        let Locked {
            lane,
            classes,
            policy,
            ..
        } = locked;
        let own_due = lane.record(
            now,
            samples.map(|(latency, class)| {
                let i = class.map_or(usize::MAX, usize::from);
                if let Some(c) = classes.get_mut(i) {
                    // The first sample makes the class's deadline its own at once.
                    let first = !std::mem::replace(&mut c.sampled, true);
                    if c.lane.record(now, std::iter::once(latency), policy) || first {
                        due[i / 64] |= 1 << (i % 64);
                    }
                }
                latency
            }),
            policy,
        );
        for (word, mut bits) in due.into_iter().enumerate() {
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                self.publish_class(locked, now, ClassIx::try_from(word * 64 + bit).ok());
            }
        }
        own_due
    }

    /// Recomputes and publishes the deadline of `class`.
    pub(super) fn publish_class(&self, locked: &mut Locked, now: Instant, class: Option<ClassIx>) {
        let Some(i) = class.map(usize::from) else {
            return;
        };
        let (Some(c), Some(slot)) = (locked.classes.get_mut(i), self.classes.slots.get(i)) else {
            return;
        };
        // Recomputed (and remembered, for explanations) from the class's first call on;
        // published to its calls once it has a sample.
        let (deadline, source) = c.lane.recompute(now, &locked.policy, locked.overridden);
        if c.sampled {
            slot.deadline
                .store(pack(deadline, source), Ordering::Relaxed);
        }
    }

    /// Rotates the classes' windows whose time has come, republishing them. Returns when
    /// the next of them rotates (`None`: no class).
    pub(super) fn rotate_classes(&self, locked: &mut Locked, now: Instant) -> Option<Instant> {
        for i in 0..locked.classes.len() {
            if locked.classes[i].lane.window.advance(now) {
                self.publish_class(locked, now, ClassIx::try_from(i).ok());
            }
        }
        locked
            .classes
            .iter()
            .map(|c| c.lane.window.rotates_at())
            .min()
    }

    /// Puts `policy` in force on the classes' histories (`reset`: the window's shape
    /// changed) and republishes them.
    pub(super) fn reshape_classes(&self, locked: &mut Locked, now: Instant, reset: bool) {
        for i in 0..locked.classes.len() {
            if reset {
                locked.classes[i].lane = Lane::new(&locked.policy, now);
            }
            self.publish_class(locked, now, ClassIx::try_from(i).ok());
        }
    }

    /// Why the call of `ticket` that started at `started` had its deadline: the numbers
    /// of the publication it came from, in its class's history when that set the deadline
    /// (naming the class), else in the peer's.
    pub(super) fn explain(
        &self,
        locked: &Locked,
        started: Instant,
        ticket: &Ticket,
    ) -> DeadlineExplanation {
        let (deadline, source) = (ticket.deadline, ticket.source);
        let class = ticket
            .class
            .and_then(|i| locked.classes.get(usize::from(i)));
        let own = class.filter(|c| c.set(source));
        let lane = own.map_or(&locked.lane, |c| &c.lane);
        let mut why = lane.explained.explain(started, deadline, source);
        why.class = own.map(|c| c.label.to_string());
        why
    }

    /// The history that says how long a call of `class` normally takes.
    pub(super) fn lane_of<'a>(&self, locked: &'a Locked, class: Option<ClassIx>) -> &'a Lane {
        match class.and_then(|i| locked.classes.get(usize::from(i))) {
            Some(c) if c.sampled => &c.lane,
            _ => &locked.lane,
        }
    }

    /// What each class knows, for a snapshot.
    pub(super) fn class_views(&self, locked: &mut Locked, now: Instant) -> Vec<ClassSnapshot> {
        let reach = locked.policy.max_history;
        let mut views = Vec::with_capacity(locked.classes.len());
        for (i, c) in locked.classes.iter_mut().enumerate() {
            let (deadline, source) = self.class_deadline(ClassIx::try_from(i).ok());
            let (quantiles, max, samples) = c.lane.window.quantiles([0.5, 0.99], reach, now);
            let own = c.set(source);
            let lane = if own { &c.lane } else { &locked.lane };
            let mut explanation = lane.explained.explain(now, deadline, source);
            explanation.class = own.then(|| c.label.to_string());
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

    /// Heap bytes of every class's history.
    pub(super) fn class_bytes(locked: &Locked) -> usize {
        locked
            .classes
            .iter()
            .map(|c| c.lane.window.heap_bytes())
            .sum()
    }
}
