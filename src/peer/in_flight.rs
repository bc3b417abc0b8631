//! An admitted call's hold on its peer's in-flight count, and why a peer did not admit a
//! call.

use std::sync::Arc;

use tokio::time::Instant;

use super::{CallPeer, Peer};
use crate::interrupt::{Fired, Interrupts};

/// Why a peer did not admit a call.
pub(crate) enum NotAdmitted {
    /// The peer is silent: the call fails fast.
    FailFast(Fired),
    /// The table let the peer go since the caller found it: look the peer up again.
    Retired,
}

/// An admitted call's place among its peer's calls in flight, held from the moment the
/// peer counted it. The call's outcome is recorded through [`InFlight::end`]; dropped
/// without one (its caller went away, or a panic came between admission and the call's
/// future) the call ends as abandoned, so the count and a probe slot always come back.
pub(crate) struct InFlight {
    peer: CallPeer,
    pub(super) probe: bool,
    pub(super) ended: bool,
}

impl InFlight {
    /// A call `peer` has just counted in flight.
    pub(super) fn tracked(peer: Arc<Peer>) -> Self {
        InFlight {
            peer: CallPeer::Tracked(peer),
            probe: false,
            ended: false,
        }
    }

    /// An untracked call: nothing to give back.
    pub(crate) fn untracked(interrupts: Arc<Interrupts>) -> Self {
        InFlight {
            peer: CallPeer::Untracked(interrupts),
            probe: false,
            ended: false,
        }
    }

    /// Whom the call is for.
    pub(crate) fn peer(&self) -> &CallPeer {
        &self.peer
    }

    /// The call's probe was answered (its head came): a later abandon (its body dropped)
    /// is no abandoned probe.
    #[cfg(feature = "http")]
    pub(crate) fn probe_answered(&mut self) {
        self.probe = false;
    }

    /// Gives the call up to its outcome: the peer to record it on (`None`: untracked, it is
    /// recorded nowhere). Dropping the hold records nothing after this.
    pub(crate) fn end(&mut self) -> Option<&Peer> {
        self.ended = true;
        match &self.peer {
            CallPeer::Tracked(p) => Some(p),
            CallPeer::Untracked(_) => None,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let (false, CallPeer::Tracked(p)) = (self.ended, &self.peer) {
            p.on_abandon(Instant::now(), self.probe, None);
        }
    }
}
