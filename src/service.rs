//! The service: finds the call's peer, reads its deadline, and starts the clock.

use std::panic::Location;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_service::Service;

use crate::error::{Interrupted, Reason};
use crate::future::{Call, ResponseFuture};
use crate::peer::key::{KeyFn, PeerKey};
use crate::peer::table::PeerTable;
use crate::peer::{CallPeer, Peer, Ticket};
use crate::policy::DeadlineSource;
use crate::BoxError;

/// Gives every call the adaptive deadline of its peer. Made by
/// [`AdaptiveTimeoutLayer`](crate::AdaptiveTimeoutLayer); clones share the peer table.
///
/// A call refused at once (its peer is silent, or its budget was already spent) never
/// reaches the inner service: like any tower filter, it leaves the readiness it was given
/// to the next call.
pub struct AdaptiveTimeout<S, K, F> {
    inner: S,
    table: Arc<PeerTable<K>>,
    key_fn: F,
    /// The last peer this service called: repeated calls to one peer skip the table.
    last: Option<LastPeer<K>>,
}

/// A peer remembered by one service, valid while the table has removed nothing since.
#[derive(Clone)]
struct LastPeer<K> {
    key: K,
    peer: Arc<Peer>,
    removals: u64,
}

impl<S, K, F> AdaptiveTimeout<S, K, F> {
    pub(crate) fn new(inner: S, table: Arc<PeerTable<K>>, key_fn: F) -> Self {
        AdaptiveTimeout {
            inner,
            table,
            key_fn,
            last: None,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, K, F> Service<Req> for AdaptiveTimeout<S, K, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: PeerKey,
    F: KeyFn<Req, Key = K>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let start = Instant::now();
        let token = if self.table.interrupt_tokens() {
            self.key_fn.interrupt_token(&mut req)
        } else {
            None
        };
        let cap = self.key_fn.caller_deadline(&req, self.table.propagation());
        let peer = match self.key_fn.peer_key(&req) {
            Some(key) => self.peer(key, start),
            None => None,
        };
        let table = &*self.table;
        let (target, admission) = match peer {
            _ if cap == Some(Duration::ZERO) => {
                // The caller's budget is already spent: do not start work nobody awaits.
                let target = untracked_or(peer, table);
                let err = refuse(&target, Reason::BudgetSpent, Location::caller());
                return ResponseFuture::rejected(err, target, start, token);
            }
            Some(peer) => {
                let admission = peer.admit(start);
                (CallPeer::Tracked(peer), admission)
            }
            None => {
                let interrupts = table.untracked_interrupts().clone();
                let ticket = Ticket {
                    deadline: table.untracked_deadline(),
                    source: DeadlineSource::Untracked,
                    generation: interrupts.generation(),
                    probe: false,
                };
                (CallPeer::Untracked(interrupts), Ok(ticket))
            }
        };
        let mut ticket = match admission {
            Ok(ticket) => ticket,
            Err(fired) => {
                // Fail fast: the peer is silent and this call is not its probe.
                let err = refuse(&target, fired.reason, fired.fired_at);
                return ResponseFuture::rejected(err, target, start, token);
            }
        };
        if let Some(cap) = cap.filter(|cap| *cap < ticket.deadline) {
            (ticket.deadline, ticket.source) = (cap, DeadlineSource::Caller);
        }
        if table.propagation().is_on() {
            self.key_fn
                .write_deadline(&mut req, ticket.deadline, table.propagation());
        }
        let call = Call::new(target, start, ticket, token);
        ResponseFuture::new(self.inner.call(req), call)
    }
}

/// The target of a call refused before admission.
fn untracked_or<K>(peer: Option<Arc<Peer>>, table: &PeerTable<K>) -> CallPeer {
    match peer {
        Some(peer) => CallPeer::Tracked(peer),
        None => CallPeer::Untracked(table.untracked_interrupts().clone()),
    }
}

/// The error of a call refused at once, recognized in `call()`.
#[track_caller]
fn refuse(target: &CallPeer, reason: Reason, fired_at: &'static Location<'static>) -> Interrupted {
    let here = Location::caller();
    Interrupted::new(reason, target.label(), Duration::ZERO, fired_at, here)
}

impl<S, K: PeerKey, F> AdaptiveTimeout<S, K, F> {
    /// The peer for `key`: the one this service called last if it is the same and still
    /// the table's, else from the table.
    fn peer(&mut self, key: K, now: Instant) -> Option<Arc<Peer>> {
        let removals = self.table.removals();
        if let Some(last) = &self.last {
            if last.removals == removals && last.key == key {
                return Some(last.peer.clone());
            }
        }
        let peer = self.table.peer(&key, now)?;
        self.last = Some(LastPeer {
            key,
            peer: peer.clone(),
            removals,
        });
        Some(peer)
    }
}

impl<S: Clone, K: Clone, F: Clone> Clone for AdaptiveTimeout<S, K, F> {
    fn clone(&self) -> Self {
        AdaptiveTimeout {
            inner: self.inner.clone(),
            table: self.table.clone(),
            key_fn: self.key_fn.clone(),
            last: self.last.clone(),
        }
    }
}

impl<S: std::fmt::Debug, K, F> std::fmt::Debug for AdaptiveTimeout<S, K, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveTimeout")
            .field("inner", &self.inner)
            .field("peers", &self.table.len())
            .finish_non_exhaustive()
    }
}
