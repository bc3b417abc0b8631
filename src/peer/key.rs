//! Which peer a request goes to.
//!
//! The layer asks a [`KeyFn`] for each request's peer key. Any closure
//! `Fn(&Req) -> K` is one; [`ByPeer`] uses the request's own [`HasPeer`] impl, which
//! `http::Request` has (keyed by scheme and authority, falling back to the `Host` header).

use std::fmt::Debug;
use std::hash::Hash;

use std::time::Duration;

use crate::class::LatencyHints;
use crate::propagate::Propagation;
use crate::token::Interrupt;

/// What a peer key must be: hashable, comparable, cheap to clone, printable.
pub trait PeerKey: Hash + Eq + Clone + Debug + Send + Sync + 'static {}
impl<K: Hash + Eq + Clone + Debug + Send + Sync + 'static> PeerKey for K {}

/// Maps a request to the key of the peer it goes to.
///
/// Returning `None` leaves the call untracked: it still gets a deadline (the default
/// policy's `cold_start`), but no history.
pub trait KeyFn<Req> {
    /// The peer key type.
    type Key: PeerKey;
    /// The peer `req` goes to.
    fn peer_key(&self, req: &Req) -> Option<Self::Key>;

    /// The request's cooperative [`Interrupt`] token, put there if the request can carry
    /// one. The layer fires it when it interrupts the call. Default: none.
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

    /// The request's [`Interrupt`] token, inserted if the request can carry one and has
    /// none yet. Default: none.
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

    fn latency_hints<'r>(&self, req: &'r Req) -> LatencyHints<'r> {
        req.latency_hints()
    }
}

#[cfg(feature = "http")]
pub use self::http_peer::{HttpKeyFn, HttpPeer, InvalidPeer};

#[cfg(feature = "http")]
mod http_peer {
    use std::fmt;

    use std::str::FromStr;

    use http::uri::{Authority, Scheme};
    use http::Uri;
    use http::{header::HOST, Request};

    use std::time::Duration;

    use super::{HasPeer, KeyFn, PeerKey};
    use crate::class::{self, LatencyHints};
    use crate::propagate::{self, Propagation};
    use crate::token::Interrupt;

    /// The peer of an HTTP request: scheme and authority (`https://api.example.com:443`).
    ///
    /// Cloning shares the URI's buffers, so keying a request does not copy its authority.
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    #[derive(Clone, PartialEq, Eq, Hash)]
    pub struct HttpPeer {
        scheme: Option<Scheme>,
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

        /// The host and port.
        pub fn authority(&self) -> &Authority {
            &self.authority
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
                Some(s) => write!(f, "{s}://{}", self.authority),
                None => write!(f, "{}", self.authority),
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

        /// Scheme and authority of the URI; for an origin-form URI (`/path`), the `Host`
        /// header. `None` when neither names a host.
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

        /// The token in the request's extensions; a new one is inserted if there is none,
        /// so a caller can put its own there first and keep a clone to fire.
        fn interrupt_token(&mut self) -> Option<Interrupt> {
            Some(
                self.extensions_mut()
                    .get_or_insert_with(Interrupt::new)
                    .clone(),
            )
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
