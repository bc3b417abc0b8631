//! What a peer's silence tells its calls: the reason they end with, and how the call whose
//! own miss declared it is counted (as the calls the silence interrupts are, since it is
//! told the same).

use std::panic::Location;
use std::sync::atomic::Ordering::Relaxed;

use tokio::time::Instant;

use super::locked::Locked;
use super::Peer;
use crate::error::Reason;
use crate::interrupt::Fired;

impl Peer {
    /// Counts a call whose deadline ran out (a head's, or a body's) as what its caller is
    /// told: a timeout, or, when its miss declared the peer silent (`silenced`), a silent
    /// interrupt, as the calls that silence interrupts are.
    pub(super) fn count_miss(&self, locked: &mut Locked, silenced: Option<&Fired>) {
        let Some(fired) = silenced else {
            return self.metrics.timed_out();
        };
        // The miss counted a timeout (`Locked::on_deadline`); the call ends with the
        // silence instead.
        locked.deadline_exceeded = locked.deadline_exceeded.saturating_sub(1);
        self.counters.silent_interrupts.fetch_add(1, Relaxed);
        self.metrics.interrupted(&fired.reason);
    }

    /// Why calls to this silent peer end: how long it has been quiet, how many calls
    /// are in flight (as silence is declared: every call it interrupts, and the one whose
    /// miss declared it, not yet ended), and where silence was declared.
    pub(super) fn silent_reason(
        &self,
        locked: &Locked,
        now: Instant,
        declared: Option<&Fired>,
    ) -> Fired {
        let reason = Reason::PeerSilent {
            since: now.saturating_duration_since(locked.health.last_response()),
            outstanding: self.in_flight(),
        };
        let fired_at = declared.map_or(Location::caller(), |f| f.fired_at);
        Fired { reason, fired_at }
    }
}
