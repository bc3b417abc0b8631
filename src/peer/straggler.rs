//! Stragglers: a call whose deadline ran out while its peer still answers other calls is
//! held, up to a cap, instead of cut (the rule is [`Health::cut_at`](super::health::Health::cut_at)).
//! A lost packet or a slow route delays one call; a silent peer answers nothing at all.

use tokio::time::Instant;

use super::{Peer, Ticket};
use crate::explain::DeadlineSource;

impl Peer {
    /// When a call of `ticket` (a probe if `probe`), whose deadline has run out, is cut:
    /// `None` for at once. Only a deadline of the peer's own is held: a probe's, a
    /// silent peer's cut one and the caller's own end the call at once. Taken under the
    /// peer's lock, so answers deferred in a stripe count (ARCHITECTURE.md, invariant 9).
    pub(crate) fn cut_at(&self, ticket: &Ticket, probe: bool) -> Option<Instant> {
        let own = !matches!(
            ticket.source,
            DeadlineSource::Caller | DeadlineSource::SilentPeer | DeadlineSource::Untracked
        );
        if probe || !own {
            return None;
        }
        let locked = self.lock();
        locked
            .health
            .cut_at(ticket.started, ticket.deadline, &locked.policy)
    }
}
