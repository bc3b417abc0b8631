//! What an admitted call starts with: its deadline and why, and what its outcome feeds.

use std::time::Duration;

use tokio::time::Instant;

use super::class_lanes::ClassIx;
use crate::explain::DeadlineSource;

/// What an admitted call starts with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    pub(crate) deadline: Duration,
    pub(crate) source: DeadlineSource,
    /// The interrupt generation when the call started.
    pub(crate) generation: u32,
    /// The call's latency class, if it has one of the peer's.
    pub(crate) class: Option<ClassIx>,
    /// When the call started: what its deadline, its latency and its misses count from
    /// (whether it is its peer's probe is its `InFlight`'s to say).
    pub(crate) started: Instant,
    /// The same instant in nanoseconds since its peer's epoch (0 for an untracked call,
    /// whose latency nothing records): an answer's latency is the difference of two such
    /// counts, with one `Instant` subtraction per call instead of two.
    pub(crate) started_ns: u64,
}

impl Ticket {
    /// The ticket of a call starting at `started` whose peer is not tracked.
    pub(crate) fn untracked(started: Instant, deadline: Duration, generation: u32) -> Ticket {
        Ticket {
            deadline,
            source: DeadlineSource::Untracked,
            generation,
            class: None,
            started,
            started_ns: 0,
        }
    }

    /// The same ticket raised to the call's `floor` (at most `max`) where that is
    /// longer. A silent peer's cut deadline stays cut: the floor is what a call needs
    /// from a peer that answers. A floor only raises (ARCHITECTURE.md, invariant 6).
    #[inline]
    pub(crate) fn floored(mut self, floor: Option<Duration>, max: Duration) -> Ticket {
        let floor = floor.map_or(Duration::ZERO, |f| f.min(max));
        if floor > self.deadline && self.source != DeadlineSource::SilentPeer {
            (self.deadline, self.source) = (floor, DeadlineSource::Floor);
        }
        self
    }
}
