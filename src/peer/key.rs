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
    /// A peer always has its port: a URI without one has its scheme's default (80 for
    /// `http` and `ws`, 443 for `https` and `wss`), so `https://api.test/v1`,
    /// `https://api.test:443/v1` and `"https://api.test:443".parse::<HttpPeer>()` are one
    /// peer, shown as `https://api.test:443`. Hosts compare without regard to ASCII case,
    /// and one trailing dot (`api.test.`) is the same host. Userinfo (`user:password@`) is
    /// no part of a peer: `http://admin:pw@db:5432/` and `http://db:5432/` are one peer,
    /// and a peer is never shown with its userinfo.
    ///
    /// A request without a scheme (origin-form, keyed by its `Host` header) has no default
    /// port: it is a peer of its own, `api.test` or `api.test:443` as the header says,
    /// never the same as `https://api.test:443`.
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
        /// Where the host is in `authority`, without its trailing dot.
        host_start: u32,
        host_end: u32,
        /// The written port, else the scheme's default; `None` with neither.
        port: Option<u16>,
    }

    /// The port a URI with `scheme` and no port of its own goes to.
    fn default_port(scheme: &Scheme) -> Option<u16> {
        let name = scheme.as_str();
        if name.eq_ignore_ascii_case("http") || name.eq_ignore_ascii_case("ws") {
            Some(80)
        } else if name.eq_ignore_ascii_case("https") || name.eq_ignore_ascii_case("wss") {
            Some(443)
        } else {
            None
        }
    }

    impl HttpPeer {
        /// The peer a request to `uri` goes to; `None` if the URI names no host, or a port
        /// that is no number from 0 to 65535.
        pub fn from_uri(uri: &Uri) -> Option<HttpPeer> {
            HttpPeer::new(uri.scheme().cloned(), uri.authority()?.clone())
        }

        /// Whether this peer was made from `scheme` and `authority` written exactly so:
        /// then a key made from them equals this one.
        fn is_written_as(&self, scheme: Option<&Scheme>, authority: &Authority) -> bool {
            self.authority.as_str() == authority.as_str() && self.scheme.as_ref() == scheme
        }

        /// Finds the host and the port in `authority` (a scan of its bytes, no copy). An
        /// authority is short: plain loops over its bytes, not `memchr`'s set-up per search.
        fn new(scheme: Option<Scheme>, authority: Authority) -> Option<HttpPeer> {
            let all = authority.as_str();
            let position = |s: &str, byte: u8| s.bytes().position(|b| b == byte);
            // Userinfo ends at the authority's last `@`, as `Authority::host` reads it.
            let start = all.bytes().rposition(|b| b == b'@').map_or(0, |at| at + 1);
            let host_port = &all[start..];
            let host_len = if host_port.starts_with('[') {
                position(host_port, b']').map_or(host_port.len(), |end| end + 1)
            } else {
                position(host_port, b':').unwrap_or(host_port.len())
            };
            let (host, rest) = host_port.split_at(host_len);
            let port = match rest.strip_prefix(':') {
                None if rest.is_empty() => None,
                None => return None,
                Some("") => None,
                Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => {
                    Some(digits.parse::<u16>().ok()?)
                }
                Some(_) => return None,
            };
            let host = host.strip_suffix('.').unwrap_or(host);
            if host.is_empty() {
                return None;
            }
            let port = port.or_else(|| scheme.as_ref().and_then(default_port));
            Some(HttpPeer {
                host_start: u32::try_from(start).ok()?,
                host_end: u32::try_from(start + host.len()).ok()?,
                scheme,
                authority,
                port,
            })
        }

        /// The scheme, if the request's URI had one.
        pub fn scheme(&self) -> Option<&Scheme> {
            self.scheme.as_ref()
        }

        /// The host and port as the URI wrote them (`api.example.com:443`, or
        /// `api.example.com` without a port), never the userinfo. Peers that are one may
        /// write it differently: [`host`](Self::host) and [`port`](Self::port) are what
        /// they share.
        pub fn authority(&self) -> &str {
            let all = self.authority.as_str();
            &all[self.host_start as usize..]
        }

        /// The host, without a trailing dot (`api.example.com`; `[::1]` for an IPv6
        /// address).
        pub fn host(&self) -> &str {
            &self.authority.as_str()[self.host_start as usize..self.host_end as usize]
        }

        /// The port: the URI's own, else its scheme's default (80 for `http` and `ws`,
        /// 443 for `https` and `wss`); `None` without either (a `Host` header without a
        /// port, an unknown scheme).
        pub fn port(&self) -> Option<u16> {
            self.port
        }

        /// The same peer in buffers of its own, without userinfo.
        pub(crate) fn detached(&self) -> HttpPeer {
            let scheme = self.scheme.as_ref().map(|s| {
                // `http` and `https` are stored inline; others share the URI's buffer.
                Scheme::try_from(s.as_str()).unwrap_or_else(|_| s.clone())
            });
            Authority::try_from(self.authority())
                .ok()
                .and_then(|own| HttpPeer::new(scheme, own))
                .unwrap_or_else(|| self.clone())
        }
    }

    impl PartialEq for HttpPeer {
        fn eq(&self, other: &HttpPeer) -> bool {
            self.port == other.port
                && self.scheme == other.scheme
                && self.host().eq_ignore_ascii_case(other.host())
        }
    }

    impl Eq for HttpPeer {}

    impl Hash for HttpPeer {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.scheme.hash(state);
            let host = self.host();
            state.write_usize(host.len());
            for b in host.bytes() {
                state.write_u8(b.to_ascii_lowercase());
            }
            self.port.hash(state);
        }
    }

    /// Parses `http://host:port` (any URI with an authority; without a port, the scheme's
    /// default) or `host:port` (as a `Host` header names a peer).
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

    /// `scheme://host:port`, the port the default one if the URI had none; `host:port`
    /// without a scheme (`host` without a port either).
    impl fmt::Display for HttpPeer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if let Some(scheme) = &self.scheme {
                write!(f, "{scheme}://")?;
            }
            f.write_str(self.host())?;
            match self.port {
                Some(port) => write!(f, ":{port}"),
                None => Ok(()),
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

        /// Scheme, host and port of the URI (the scheme's default port if it has none);
        /// for a URI without an authority (`/path`), the `Host` header, a peer of its own
        /// with no default port. `None` when neither names a host. Userinfo in either is no
        /// part of it.
        fn peer(&self) -> Option<HttpPeer> {
            if let Some(authority) = self.uri().authority() {
                return HttpPeer::new(self.uri().scheme().cloned(), authority.clone());
            }
            let host = self.headers().get(HOST)?;
            let authority = Authority::try_from(host.as_bytes()).ok()?;
            HttpPeer::new(None, authority)
        }

        /// The URI's scheme and authority written exactly as `peer`'s were: one comparison
        /// of bytes, no key built. A request keyed by its `Host` header is not told here.
        fn goes_to(&self, peer: &HttpPeer) -> bool {
            let uri = self.uri();
            uri.authority()
                .is_some_and(|a| peer.is_written_as(uri.scheme(), a))
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
