//! Stragglers: a call whose deadline ran out while its peer still answers other calls is
//! held, up to a cap, instead of cut (the rule is [`Health::cut_at`](super::health::Health::cut_at)).
//! A lost packet or a slow route delays one call; a silent peer answers nothing at all,
//! for longer than its floor on silence (a stalled one answers again within it).

use tokio::time::Instant;

use super::{Peer, Ticket};
use crate::explain::DeadlineSource;

/// Whether a call of `ticket` (a probe if `probe`) may be held past its deadline: only a
/// deadline of the peer's own is; a probe's, a silent peer's cut one and the caller's own
/// end the call at once.
pub(super) fn holdable(ticket: &Ticket, probe: bool) -> bool {
    let own = !matches!(
        ticket.source,
        DeadlineSource::Caller | DeadlineSource::SilentPeer | DeadlineSource::Untracked
    );
    own && !probe
}

impl Peer {
    /// When a call of `ticket` (a probe if `probe`), whose deadline has run out, is cut:
    /// `None` for at once ([`holdable`]). Taken under the peer's lock, so answers deferred
    /// in a stripe count (ARCHITECTURE.md, invariant 9).
    pub(crate) fn cut_at(&self, ticket: &Ticket, probe: bool) -> Option<Instant> {
        if !holdable(ticket, probe) {
            return None;
        }
        let mut guard = self.lock();
        let locked = &mut *guard;
        let now = Instant::now();
        locked.health.overdue(ticket.started);
        (locked.health).cut_at(now, ticket.started, ticket.deadline, &locked.policy)
    }

    /// When a body that sent nothing since `since`, past its `idle` deadline (the peer's
    /// own rule's), is cut: `None` for at once. Held like a head: while the peer has said
    /// nothing to anyone for less than its floor on silence, it may be stalled.
    #[cfg(feature = "http")]
    pub(crate) fn body_cut_at(&self, since: Instant, idle: std::time::Duration) -> Option<Instant> {
        let now = Instant::now();
        let mut locked = self.lock();
        let policy = std::sync::Arc::clone(&locked.policy);
        let at = (locked.health).body_cut_at(now, since, idle, &policy);
        // Publishes the quiet span now in progress, if this began it.
        let _ = self.apply(&mut locked, now, super::locked::Effects::default());
        at
    }
}
