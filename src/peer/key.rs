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
mod http_peer {
    use std::fmt;
    use std::hash::{Hash, Hasher};
    use std::str::FromStr;

    use http::uri::{Authority, Scheme};
    use http::Uri;
    use http::{header::HOST, Request};

    use std::time::Duration;

    use super::{HasPeer, KeyFn, PeerKey};
    use crate::class::{self, LatencyHints};
    use crate::propagate::{self, Propagation};
    use crate::token::Interrupt;

    /// The peer of an HTTP request: scheme, host and port (`https://api.example.com:443`).
    ///
    /// Userinfo (`user:password@`) is no part of a peer: `http://admin:pw@db:5432/` and
    /// `http://db:5432/` are one peer, and a peer is never shown with its userinfo. Hosts
    /// compare without regard to ASCII case.
    ///
    /// Keying a request shares its URI's buffers (nothing is copied); the key a tracked peer
    /// keeps is copied out of them, so the peer does not keep the request's URI alive.
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    #[derive(Clone)]
    pub struct HttpPeer {
        scheme: Option<Scheme>,
        /// The URI's authority, perhaps with userinfo, which comparisons, hashes and
        /// printing skip.
        authority: Authority,
    }

    impl HttpPeer {
        /// The peer a request to `uri` goes to; `None` if the URI names no host.
        pub fn from_uri(uri: &Uri) -> Option<HttpPeer> {
            Some(HttpPeer {
                scheme: uri.scheme().cloned(),
                authority: uri.authority()?.clone(),
            })
        }

        /// The scheme, if the request's URI had one.
        pub fn scheme(&self) -> Option<&Scheme> {
            self.scheme.as_ref()
        }

        /// The host and port (`api.example.com:443`), never the userinfo.
        pub fn authority(&self) -> &str {
            let all = self.authority.as_str();
            // Userinfo ends at the authority's last `@`, as `Authority::host` reads it.
            all.rsplit_once('@').map_or(all, |(_, host_port)| host_port)
        }

        /// The same peer in buffers of its own, without userinfo.
        pub(crate) fn detached(&self) -> HttpPeer {
            let own = |s: &str| Authority::try_from(s).ok();
            let scheme = self.scheme.as_ref().map(|s| {
                // `http` and `https` are stored inline; others share the URI's buffer.
                Scheme::try_from(s.as_str()).unwrap_or_else(|_| s.clone())
            });
            HttpPeer {
                scheme,
                authority: own(self.authority()).unwrap_or_else(|| self.authority.clone()),
            }
        }
    }

    impl PartialEq for HttpPeer {
        fn eq(&self, other: &HttpPeer) -> bool {
            self.scheme == other.scheme && self.authority().eq_ignore_ascii_case(other.authority())
        }
    }

    impl Eq for HttpPeer {}

    impl Hash for HttpPeer {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.scheme.hash(state);
            let host_port = self.authority();
            state.write_usize(host_port.len());
            for b in host_port.bytes() {
                state.write_u8(b.to_ascii_lowercase());
            }
        }
    }

    /// Parses `http://host:port` (any URI with an authority) or `host:port`.
    impl FromStr for HttpPeer {
        type Err = InvalidPeer;

        fn from_str(s: &str) -> Result<HttpPeer, InvalidPeer> {
            let uri: Uri = s.parse().map_err(|_| InvalidPeer)?;
            HttpPeer::from_uri(&uri).ok_or(InvalidPeer)
        }
    }

    /// A string that names no HTTP peer.
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct InvalidPeer;

    impl fmt::Display for InvalidPeer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("not an HTTP peer: expected scheme://host:port or host:port")
        }
    }

    impl std::error::Error for InvalidPeer {}

    impl fmt::Display for HttpPeer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match &self.scheme {
                Some(s) => write!(f, "{s}://{}", self.authority()),
                None => f.write_str(self.authority()),
            }
        }
    }

    impl fmt::Debug for HttpPeer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt::Display::fmt(self, f)
        }
    }

    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    impl<B> HasPeer for Request<B> {
        type Key = HttpPeer;

        /// Scheme, host and port of the URI; for an origin-form URI (`/path`), the `Host`
        /// header. `None` when neither names a host. Userinfo in either is no part of it.
        fn peer(&self) -> Option<HttpPeer> {
            if let Some(peer) = HttpPeer::from_uri(self.uri()) {
                return Some(peer);
            }
            let host = self.headers().get(HOST)?;
            let authority = Authority::try_from(host.as_bytes()).ok()?;
            Some(HttpPeer {
                scheme: None,
                authority,
            })
        }

        /// The call's own token, in the request's extensions for work deeper in the chain:
        /// a child of the caller's token if the request carries one (it takes its place, so
        /// a caller can put its own there and keep a clone to fire), else a new one.
        fn interrupt_token(&mut self) -> Option<Interrupt> {
            let extensions = self.extensions_mut();
            let own = match extensions.get_mut::<Interrupt>() {
                Some(caller) => {
                    let own = caller.child();
                    *caller = own.clone();
                    own
                }
                None => {
                    let own = Interrupt::new();
                    extensions.insert(own.clone());
                    own
                }
            };
            Some(own)
        }

        /// The [`Deadline`](crate::Deadline) extension and, with propagation on, the
        /// deadline headers: whichever is shortest.
        fn caller_deadline(&self, propagation: &Propagation) -> Option<Duration> {
            propagate::read(self, propagation)
        }

        fn write_deadline(&mut self, deadline: Duration, propagation: &Propagation) {
            propagate::write(self, deadline, propagation);
        }

        /// The [`LatencyClass`](crate::LatencyClass) extension, else the path's template;
        /// the [`MinDeadline`](crate::MinDeadline) extension.
        fn latency_hints(&self) -> LatencyHints<'_> {
            class::http_hints(self)
        }
    }

    /// Keys `http::Request`s with your own function, keeping what
    /// [`ByPeer`](super::ByPeer) does for them besides the key: interrupt tokens,
    /// [`Deadline`](crate::Deadline) and propagation.
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    #[derive(Clone, Copy, Debug)]
    pub struct HttpKeyFn<F>(pub F);

    impl<B, K: PeerKey, F: Fn(&Request<B>) -> Option<K>> KeyFn<Request<B>> for HttpKeyFn<F> {
        type Key = K;

        fn peer_key(&self, req: &Request<B>) -> Option<K> {
            (self.0)(req)
        }

        fn interrupt_token(&self, req: &mut Request<B>) -> Option<Interrupt> {
            req.interrupt_token()
        }

        fn caller_deadline(&self, req: &Request<B>, propagation: &Propagation) -> Option<Duration> {
            req.caller_deadline(propagation)
        }

        fn write_deadline(
            &self,
            req: &mut Request<B>,
            deadline: Duration,
            propagation: &Propagation,
        ) {
            req.write_deadline(deadline, propagation);
        }

        fn propagates(&self) -> bool {
            true
        }

        fn latency_hints<'r>(&self, req: &'r Request<B>) -> LatencyHints<'r> {
            req.latency_hints()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn keys_by_scheme_and_authority() {
            let req = Request::get("http://10.0.0.7:9000/a?b").body(()).unwrap();
            let peer = req.peer().unwrap();
            assert_eq!(peer.to_string(), "http://10.0.0.7:9000");
            let other = Request::get("https://10.0.0.7:9000/").body(()).unwrap();
            assert_ne!(other.peer().unwrap(), peer);
        }

        #[test]
        fn parses_from_strings_like_requests_key_them() {
            let req = Request::get("http://10.0.0.7:9000/a").body(()).unwrap();
            let parsed: HttpPeer = "http://10.0.0.7:9000".parse().unwrap();
            assert_eq!(req.peer(), Some(parsed));
            assert_eq!(
                "svc.local:8080".parse::<HttpPeer>().unwrap().to_string(),
                "svc.local:8080"
            );
            assert_eq!("/no/host".parse::<HttpPeer>(), Err(InvalidPeer));
            assert_eq!("not a uri".parse::<HttpPeer>(), Err(InvalidPeer));
        }

        #[test]
        fn falls_back_to_the_host_header() {
            let req = Request::get("/x")
                .header("host", "svc.local:8080")
                .body(())
                .unwrap();
            assert_eq!(req.peer().unwrap().to_string(), "svc.local:8080");
            let none = Request::get("/x").body(()).unwrap();
            assert!(none.peer().is_none());
            let bad = Request::get("/x")
                .header("host", "bad host")
                .body(())
                .unwrap();
            assert!(bad.peer().is_none());
        }
    }
}
