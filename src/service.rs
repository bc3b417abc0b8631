//! The service: keys the request, admits it through the peer table, and hands the call to
//! its response future.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_service::Service;

use crate::call::{refusal, Call};
use crate::classify::{AllSamples, ClassifyResponse};
use crate::error::BoxError;
use crate::future::{Head, ResponseFuture};
use crate::peer::key::{KeyFn, PeerKey};
use crate::peer::table::{Admission, Keyed, LastPeer, PeerTable};
use crate::token::Interrupt;

/// Gives every call the adaptive deadline of its peer. Made by
/// [`AdaptiveTimeoutLayer`](crate::AdaptiveTimeoutLayer); clones share the peer table.
///
/// A call refused at once (its peer is silent, the caller's deadline was already spent,
/// its caller's token has fired, or the layer was shut down) never reaches the inner
/// service: like any tower filter, it leaves the readiness it was given to the next call.
/// `C` classifies responses ([`crate::classify`]).
pub struct AdaptiveTimeout<S, K, F, C = AllSamples> {
    inner: S,
    table: Arc<PeerTable<K>>,
    key_fn: F,
    classify: C,
    /// The last peer this service called: repeated calls to one peer skip the table.
    last: Option<LastPeer<K>>,
}

impl<S, K, F, C> AdaptiveTimeout<S, K, F, C> {
    pub(crate) fn new(inner: S, table: Arc<PeerTable<K>>, key_fn: F, classify: C) -> Self {
        AdaptiveTimeout {
            inner,
            table,
            key_fn,
            classify,
            last: None,
        }
    }

    /// How the service keys its calls.
    pub(crate) fn key_fn(&self) -> &F {
        &self.key_fn
    }

    /// Which headers carry a call's deadline to its callee.
    pub(crate) fn propagation(&self) -> &crate::Propagation
    where
        K: crate::PeerKey,
    {
        self.table.propagation()
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

impl<S, Req, K, F, C> Service<Req> for AdaptiveTimeout<S, K, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: PeerKey,
    F: KeyFn<Req, Key = K>,
    C: ClassifyResponse<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, Head<C>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.call_propagating(req, Propagated::Head)
    }
}

/// What a call tells its callee, with [`Propagation`](crate::Propagation) on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Propagated {
    /// The call's own deadline: the call ends at its head.
    Head,
    /// A deadline for the whole exchange, head and body, as a callee (a gRPC server)
    /// applies it: the caller's (its `Deadline`, its deadline headers), shortened by the
    /// body's `total`; nothing if neither is set. Never the head's adaptive deadline, which
    /// would end the body the layer itself lets run. The same deadline caps the head's, as
    /// a caller's deadline does (refused at once when it is spent).
    #[cfg(feature = "http")]
    Whole {
        /// The body's total deadline, from the call's start.
        total: Option<Duration>,
    },
}

impl<S, K, F, C> AdaptiveTimeout<S, K, F, C> {
    /// [`Service::call`], telling the callee the deadline `propagated` says.
    pub(crate) fn call_propagating<Req>(
        &mut self,
        mut req: Req,
        propagated: Propagated,
    ) -> ResponseFuture<S::Future, Head<C>>
    where
        S: Service<Req>,
        K: PeerKey,
        F: KeyFn<Req, Key = K>,
        C: Clone,
    {
        let start = Instant::now();
        let token = if self.table.interrupt_tokens() {
            self.key_fn.interrupt_token(&mut req)
        } else {
            None
        };
        let propagation = self.table.propagation();
        // A caller that has already given up (its token fired) has no budget left: the
        // call is refused, with the caller's reason, before it reaches the inner service.
        let gone = token.as_ref().and_then(Interrupt::fired_record);
        let caller_deadline = match gone {
            Some(_) => Some(Duration::ZERO),
            None => self.key_fn.caller_deadline(&req, propagation),
        };
        // A body's total deadline bounds its head too: it is the caller's deadline.
        let caller_deadline = match propagated {
            Propagated::Head => caller_deadline,
            #[cfg(feature = "http")]
            Propagated::Whole { total } => [caller_deadline, total].into_iter().flatten().min(),
        };
        let key = match &self.last {
            Some(last) if self.key_fn.goes_to(&req, last.key()) => Keyed::Last,
            _ => Keyed::Key(self.key_fn.peer_key(&req)),
        };
        let hints = self.key_fn.latency_hints(&req);
        let head = Head::new(self.classify.clone());
        match self
            .table
            .admit(key, start, caller_deadline, hints, &mut self.last)
        {
            Admission::Refused(peer, fired) => {
                let fired = gone.unwrap_or(fired);
                ResponseFuture::rejected(refusal(&peer, fired, token.as_ref()), head)
            }
            Admission::Admitted(held, ticket) => {
                // The guard first: a panic from here on (writing the deadline, in the inner
                // service's `call`) ends the call as abandoned.
                let mut call = Call::new(held, ticket, token);
                let told = match propagated {
                    Propagated::Head => Some(ticket.deadline),
                    #[cfg(feature = "http")]
                    Propagated::Whole { .. } => caller_deadline,
                };
                if let Some(deadline) = told.filter(|_| propagation.is_on()) {
                    self.key_fn.write_deadline(&mut req, deadline, propagation);
                    // The allowance for a deadline enforced up to a millisecond early below
                    // applies to the call's own deadline only.
                    if deadline == ticket.deadline {
                        call.set_propagated();
                    }
                }
                ResponseFuture::running(self.inner.call(req), call, head, caller_deadline)
            }
        }
    }
}

impl<S: Clone, K: Clone, F: Clone, C: Clone> Clone for AdaptiveTimeout<S, K, F, C> {
    fn clone(&self) -> Self {
        AdaptiveTimeout {
            inner: self.inner.clone(),
            table: self.table.clone(),
            key_fn: self.key_fn.clone(),
            classify: self.classify.clone(),
            last: self.last.clone(),
        }
    }
}

impl<S: std::fmt::Debug, K, F, C> std::fmt::Debug for AdaptiveTimeout<S, K, F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveTimeout")
            .field("inner", &self.inner)
            .field("peers", &self.table.len())
            .finish_non_exhaustive()
    }
}
