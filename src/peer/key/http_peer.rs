//! The HTTP peer: `HasPeer` for `http::Request` (scheme, host and port, the `Host` header
//! when the URI has no authority), `HttpPeer`, and `HttpKeyFn`.

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

    fn write_deadline(&self, req: &mut Request<B>, deadline: Duration, propagation: &Propagation) {
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
