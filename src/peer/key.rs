//! Which peer a request goes to.
//!
//! The layer asks a [`KeyFn`] for each request's peer key. Any closure
//! `Fn(&Req) -> K` is one; [`ByPeer`] uses the request's own [`HasPeer`] impl, which
//! `http::Request` has (keyed by scheme and authority, falling back to the `Host` header).

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use crate::class::{ClassOf, LatencyHints};
use crate::propagate::Propagation;
use crate::token::Interrupt;

/// What a peer key must be: hashable, comparable, cheap to clone, printable.
///
/// The table keeps a clone of a new peer's key for as long as it tracks the peer, so a key
/// should own what it holds: one that shares a request's buffers keeps them alive.
/// [`HttpPeer`] keys are copied out of their request's URI when their peer is first tracked.
/// A peer is named by its key's `Debug` form, bounded (see [`MAX_LABEL_BYTES`](crate::MAX_LABEL_BYTES)).
pub trait PeerKey: Hash + Eq + Clone + Debug + Send + Sync + 'static {}
impl<K: Hash + Eq + Clone + Debug + Send + Sync + 'static> PeerKey for K {}

/// The key the table keeps for a new peer: a clone, except that an [`HttpPeer`] is copied
/// out of the request's URI buffer (and loses any userinfo), so a tracked peer does not
/// keep its first request's URI alive. The per-request key keeps sharing the buffer, so
/// keying a request does not allocate.
pub(crate) fn detached<K: PeerKey>(key: &K) -> K {
    #[allow(unused_mut)]
    let mut kept = key.clone();
    #[cfg(feature = "http")]
    if let Some(peer) = (&mut kept as &mut dyn std::any::Any).downcast_mut::<HttpPeer>() {
        *peer = peer.detached();
    }
    kept
}

/// Maps a request to the key of the peer it goes to.
///
/// Returning `None` leaves the call untracked: it still gets a deadline (the default
/// policy's `cold_start`), but no history.
pub trait KeyFn<Req> {
    /// The peer key type.
    type Key: PeerKey;
    /// The peer `req` goes to.
    fn peer_key(&self, req: &Req) -> Option<Self::Key>;

    /// Whether `req` goes to `peer` (the peer this service called last), where telling is
    /// cheaper than building `req`'s key: the layer asks first and builds the key only on
    /// `false`. `true` must mean [`peer_key`](Self::peer_key) would give a key equal to
    /// `peer`. Default: `false`.
    ///
    /// ```
    /// use tower_adaptive_timeout::KeyFn;
    ///
    /// struct Req {
    ///     host: String,
    /// }
    ///
    /// /// Keys a request by its host: building the key copies the host, telling compares it.
    /// struct ByHost;
    ///
    /// impl KeyFn<Req> for ByHost {
    ///     type Key = String;
    ///     fn peer_key(&self, req: &Req) -> Option<String> {
    ///         Some(req.host.clone())
    ///     }
    ///     fn goes_to(&self, req: &Req, peer: &String) -> bool {
    ///         req.host == *peer
    ///     }
    /// }
    ///
    /// let req = Req { host: "db".into() };
    /// let last = ByHost.peer_key(&req).unwrap();
    /// assert!(ByHost.goes_to(&req, &last));
    /// assert!(!ByHost.goes_to(&Req { host: "cache".into() }, &last));
    /// ```
    fn goes_to(&self, req: &Req, peer: &Self::Key) -> bool {
        let _ = (req, peer);
        false
    }

    /// The call's own cooperative [`Interrupt`] token, put in the request if it can carry
    /// one, which the layer fires when it ends the call. If the request already carries
    /// its caller's token, the call's token should be a [`child`](Interrupt::child) of it
    /// put in its place: the caller's interrupt still reaches the call, and the layer's
    /// reaches no other call sharing the caller's token. A call whose token has already
    /// fired is refused before it reaches the inner service. Default: none.
    fn interrupt_token(&self, req: &mut Req) -> Option<Interrupt> {
        let _ = req;
        None
    }

    /// The caller's deadline the request carries (the shortest of a
    /// [`Deadline`](crate::Deadline) extension and propagated deadline headers). Default:
    /// none.
    fn caller_deadline(&self, req: &Req, propagation: &Propagation) -> Option<Duration> {
        let _ = (req, propagation);
        None
    }

    /// Writes the call's deadline into the request for the callee. Default: nothing.
    fn write_deadline(&self, req: &mut Req, deadline: Duration, propagation: &Propagation) {
        let _ = (req, deadline, propagation);
    }

    /// Whether [`caller_deadline`](Self::caller_deadline) and
    /// [`write_deadline`](Self::write_deadline) honour a [`Propagation`]: `build()` refuses
    /// one that the key function would ignore. Default: `false` (a closure sees only the
    /// key); a key function that implements either of them says `true`.
    fn propagates(&self) -> bool {
        false
    }

    /// The request's latency class and floor (see [`class`](crate::class)). Default: none.
    fn latency_hints<'r>(&self, req: &'r Req) -> LatencyHints<'r> {
        let _ = req;
        LatencyHints::new()
    }
}

impl<Req, K: PeerKey, F: Fn(&Req) -> K> KeyFn<Req> for F {
    type Key = K;
    fn peer_key(&self, req: &Req) -> Option<K> {
        Some(self(req))
    }
}

/// A request type that knows which peer it goes to.
pub trait HasPeer {
    /// The peer key type.
    type Key: PeerKey;
    /// The peer this request goes to, if it names one.
    fn peer(&self) -> Option<Self::Key>;

    /// Whether this request goes to `peer`, told without building its key (see
    /// [`KeyFn::goes_to`]). Default: `false`.
    fn goes_to(&self, peer: &Self::Key) -> bool {
        let _ = peer;
        false
    }

    /// The call's own [`Interrupt`] token, put in the request if it can carry one: a
    /// [`child`](Interrupt::child) of the caller's token in its place if it carries one,
    /// else a new one (see [`KeyFn::interrupt_token`]). Default: none.
    fn interrupt_token(&mut self) -> Option<Interrupt> {
        None
    }

    /// The caller's deadline the request carries. Default: none.
    fn caller_deadline(&self, propagation: &Propagation) -> Option<Duration> {
        let _ = propagation;
        None
    }

    /// Writes the call's deadline into the request. Default: nothing.
    fn write_deadline(&mut self, deadline: Duration, propagation: &Propagation) {
        let _ = (deadline, propagation);
    }

    /// The request's latency class and floor (see [`class`](crate::class)). Default: none.
    fn latency_hints(&self) -> LatencyHints<'_> {
        LatencyHints::new()
    }
}

/// The [`KeyFn`] that asks the request itself, through [`HasPeer`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ByPeer;

impl<Req: HasPeer> KeyFn<Req> for ByPeer {
    type Key = Req::Key;
    fn peer_key(&self, req: &Req) -> Option<Req::Key> {
        req.peer()
    }

    fn goes_to(&self, req: &Req, peer: &Req::Key) -> bool {
        req.goes_to(peer)
    }

    fn interrupt_token(&self, req: &mut Req) -> Option<Interrupt> {
        req.interrupt_token()
    }

    fn caller_deadline(&self, req: &Req, propagation: &Propagation) -> Option<Duration> {
        req.caller_deadline(propagation)
    }

    fn write_deadline(&self, req: &mut Req, deadline: Duration, propagation: &Propagation) {
        req.write_deadline(deadline, propagation);
    }

    /// The request's own [`HasPeer`] impl decides.
    fn propagates(&self) -> bool {
        true
    }

    fn latency_hints<'r>(&self, req: &'r Req) -> LatencyHints<'r> {
        req.latency_hints()
    }
}

/// A [`KeyFn`] that keys requests with `F` and names their latency class with `C` (a
/// class of `None` leaves the call in its peer's own history): made by
/// [`Builder::latency_class`](crate::Builder::latency_class). Everything else is `F`'s.
#[derive(Clone, Copy, Debug)]
pub struct Classed<F, C> {
    key_fn: F,
    classify: C,
}

impl<F, C> Classed<F, C> {
    pub(crate) fn new(key_fn: F, classify: C) -> Self {
        Classed { key_fn, classify }
    }
}

impl<Req, F, C> KeyFn<Req> for Classed<F, C>
where
    F: KeyFn<Req>,
    C: Fn(&Req) -> Option<&str>,
{
    type Key = F::Key;

    fn peer_key(&self, req: &Req) -> Option<F::Key> {
        self.key_fn.peer_key(req)
    }

    fn goes_to(&self, req: &Req, peer: &F::Key) -> bool {
        self.key_fn.goes_to(req, peer)
    }

    fn interrupt_token(&self, req: &mut Req) -> Option<Interrupt> {
        self.key_fn.interrupt_token(req)
    }

    fn caller_deadline(&self, req: &Req, propagation: &Propagation) -> Option<Duration> {
        self.key_fn.caller_deadline(req, propagation)
    }

    fn write_deadline(&self, req: &mut Req, deadline: Duration, propagation: &Propagation) {
        self.key_fn.write_deadline(req, deadline, propagation);
    }

    fn propagates(&self) -> bool {
        self.key_fn.propagates()
    }

    fn latency_hints<'r>(&self, req: &'r Req) -> LatencyHints<'r> {
        let hints = self.key_fn.latency_hints(req);
        match (self.classify)(req) {
            Some(name) => hints.class(ClassOf::Named(name)),
            None => hints,
        }
    }
}

#[cfg(feature = "http")]
pub use self::http_peer::{HttpKeyFn, HttpPeer, InvalidPeer};

#[cfg(feature = "http")]
mod http_peer;
