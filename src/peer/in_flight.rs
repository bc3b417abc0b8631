//! An admitted call's place in its peer's in-flight count, whom it is for ([`CallPeer`]), and
//! the reference to its peer it holds.

use std::ops::Deref;
use std::sync::{Arc, LazyLock};
use std::task::Waker;
#[cfg(feature = "http")]
use std::time::Duration;

use crossbeam_utils::CachePadded;
use tokio::time::Instant;

use super::Peer;
#[cfg(feature = "http")]
use crate::classify::Outcome;
use crate::interrupt::{Interrupts, NOT_WAITING};

/// How an untracked call's peer is named in errors.
static UNTRACKED: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("<untracked peer>"));

/// Whom a call is for: where its interrupts come from, and whose history its outcome feeds.
pub(crate) enum CallPeer {
    /// A peer in the table.
    Tracked(PeerRef),
    /// No peer (no key, or the table was full): only layer-wide interrupts reach the call,
    /// and its outcome is recorded nowhere.
    Untracked(Arc<Interrupts>),
}

impl CallPeer {
    /// The interrupts that reach the call.
    pub(crate) fn interrupts(&self) -> &Interrupts {
        match self {
            CallPeer::Tracked(p) => p.interrupts(),
            CallPeer::Untracked(i) => i,
        }
    }

    /// The peer's name in errors and traces.
    pub(crate) fn label(&self) -> &Arc<str> {
        match self {
            CallPeer::Tracked(p) => p.label(),
            CallPeer::Untracked(_) => &UNTRACKED,
        }
    }
}

/// A reference to a tracked peer that calls clone. A service that keeps calling one peer
/// holds a *lease*: a reference of its own, on its own cache line, so the calls of
/// services on different cores do not all write the peer's one reference count.
#[derive(Clone)]
pub(crate) enum PeerRef {
    /// The peer's own reference.
    Shared(Arc<Peer>),
    /// A service's lease on it.
    Leased(Arc<CachePadded<Arc<Peer>>>),
}

impl PeerRef {
    /// A lease on the same peer.
    pub(crate) fn leased(&self) -> PeerRef {
        match self {
            PeerRef::Shared(peer) => PeerRef::Leased(Arc::new(CachePadded::new(peer.clone()))),
            PeerRef::Leased(_) => self.clone(),
        }
    }

    /// Whether this is a lease.
    pub(crate) fn is_leased(&self) -> bool {
        matches!(self, PeerRef::Leased(_))
    }
}

impl Deref for PeerRef {
    type Target = Peer;

    fn deref(&self) -> &Peer {
        match self {
            PeerRef::Shared(peer) => peer,
            PeerRef::Leased(lease) => lease,
        }
    }
}

/// An admitted call's place among its peer's calls in flight, held from the moment the
/// peer counted it (on the stripe it names). The call's outcome is recorded through
/// [`InFlight::end`]; dropped without one (its caller went away, or a panic came between
/// admission and the call's future) the call ends as abandoned, unless its head was
/// answered: then its body ended (or was dropped) and it is counted as answered. Either
/// way the count, a probe slot and the call's interrupt registration come back when the
/// hold is dropped.
pub(crate) struct InFlight {
    peer: CallPeer,
    /// The call's stripe: where it is counted in flight (if `counted`), and where it
    /// waits for its peer's interrupts. Stripes number at most `MAX_STRIPES` (32).
    stripe: u8,
    /// Its registration in that stripe of its peer's interrupts, made when it first waits
    /// ([`NOT_WAITING`]: none).
    slot: u32,
    /// Whether the call is counted in its peer's in-flight count.
    counted: bool,
    /// Whether the call is its peer's probe (the one place this is kept): its outcome
    /// is judged as a probe's, and abandoned it frees the probe slot.
    probe: bool,
    /// Whether its outcome was recorded (or it never was in flight).
    ended: bool,
    /// Whether the layer wrote the call's deadline into its request for the callee. Kept
    /// here, beside the other flags, so a call stays within 128 bytes and futures move it
    /// without a `memcpy` call.
    propagated: bool,
    /// Whether the call yielded once since its deadline fired (`crate::future`), a flag kept
    /// here for the same reason.
    yielded: bool,
    /// How its head was answered, once it was, and after how many seconds (an `f32`, for
    /// the same reason: the latency histogram of the `metrics` feature takes seconds).
    #[cfg(feature = "http")]
    head: Option<Outcome>,
    #[cfg(feature = "http")]
    head_secs: f32,
}

impl InFlight {
    /// A call `peer` has just counted in flight on `stripe`.
    pub(super) fn tracked(peer: PeerRef, stripe: usize) -> Self {
        InFlight {
            peer: CallPeer::Tracked(peer),
            // Stripes number at most `MAX_STRIPES`.
            stripe: stripe as u8,
            slot: NOT_WAITING,
            counted: true,
            probe: false,
            ended: false,
            propagated: false,
            yielded: false,
            #[cfg(feature = "http")]
            head: None,
            #[cfg(feature = "http")]
            head_secs: 0.0,
        }
    }

    /// An untracked call: nothing to give back.
    pub(crate) fn untracked(interrupts: Arc<Interrupts>) -> Self {
        InFlight {
            peer: CallPeer::Untracked(interrupts),
            stripe: crate::stripe::current() as u8,
            slot: NOT_WAITING,
            counted: false,
            probe: false,
            ended: false,
            propagated: false,
            yielded: false,
            #[cfg(feature = "http")]
            head: None,
            #[cfg(feature = "http")]
            head_secs: 0.0,
        }
    }

    /// Makes the call its peer's probe.
    pub(super) fn make_probe(&mut self) {
        self.probe = true;
    }

    /// Whether the call is its peer's probe (until its head is answered).
    #[inline]
    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }

    /// The peer refused the call at admission: it never was in flight, so it leaves its
    /// stripe uncounted and is no abandoned call.
    pub(super) fn refuse(mut self) {
        if let CallPeer::Tracked(p) = &self.peer {
            p.stripes.leave(self.stripe as usize);
        }
        (self.ended, self.counted) = (true, false);
    }

    /// Notes that the layer wrote the call's deadline into its request for the callee.
    pub(crate) fn set_propagated(&mut self) {
        self.propagated = true;
    }

    /// Whether the layer wrote the call's deadline into its request for the callee.
    pub(crate) fn propagated(&self) -> bool {
        self.propagated
    }

    /// Whether the call is to yield now, its deadline having fired: true once, until
    /// [`rearm_yield`](Self::rearm_yield).
    pub(crate) fn yield_once(&mut self) -> bool {
        !std::mem::replace(&mut self.yielded, true)
    }

    /// The call's deadline was armed again (a held straggler): it yields once more when
    /// that one fires.
    pub(crate) fn rearm_yield(&mut self) {
        self.yielded = false;
    }

    /// Whom the call is for.
    pub(crate) fn peer(&self) -> &CallPeer {
        &self.peer
    }

    /// Registers `waker` to be woken by the next fire into the call's peer (once; later
    /// calls update the waker). The registration ends with it.
    pub(crate) fn wait(&mut self, waker: &Waker) {
        self.peer
            .interrupts()
            .wait(u32::from(self.stripe), &mut self.slot, waker);
    }

    /// Whether the call is registered with its peer's interrupts.
    #[cfg(test)]
    pub(crate) fn is_waiting(&self) -> bool {
        self.slot != NOT_WAITING
    }

    /// The call's head was answered with `outcome` after `latency`: its body's end or
    /// drop counts the call as answered, and is no abandoned probe.
    #[cfg(feature = "http")]
    pub(crate) fn head_answered(&mut self, outcome: Outcome, latency: Duration) {
        self.probe = false;
        self.head = Some(outcome);
        self.head_secs = latency.as_secs_f32();
    }

    /// Counts the call as answered if its head was; otherwise it was abandoned.
    fn abandoned(&self, p: &Peer) {
        #[cfg(feature = "http")]
        if let Some(outcome) = self.head {
            let latency = Duration::try_from_secs_f32(self.head_secs).unwrap_or(Duration::MAX);
            return p.on_body_answered(outcome, latency);
        }
        p.on_abandon(Instant::now(), self.probe, None);
    }

    /// Gives the call up to its outcome: the peer to record it on (`None`: untracked, it is
    /// recorded nowhere). Dropping it records nothing after this.
    #[inline]
    pub(crate) fn end(&mut self) -> Option<&Peer> {
        self.ended = true;
        match &self.peer {
            CallPeer::Tracked(p) => Some(p),
            CallPeer::Untracked(_) => None,
        }
    }
}

/// Every call's outcome is recorded exactly once (ARCHITECTURE.md, invariant 4): an
/// `InFlight` dropped without one records an abandon, and gives the count back.
impl Drop for InFlight {
    fn drop(&mut self) {
        // Checked here too, so a call that never waited (answered at its first poll) makes
        // no call at all for its registration.
        if self.slot != NOT_WAITING {
            (self.peer.interrupts()).leave(u32::from(self.stripe), &mut self.slot);
        }
        if let CallPeer::Tracked(p) = &self.peer {
            if !self.ended {
                self.abandoned(p);
            }
            if self.counted {
                p.leave(self.stripe as usize);
            }
        }
    }
}
