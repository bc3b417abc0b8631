//! A call's own limits: a per-request [`Deadline`] and a budget propagated in headers.
//!
//! A call's deadline is the shortest of its peer's adaptive deadline, the request's
//! [`Deadline`] extension, and the budget its headers carry (`grpc-timeout`, or a
//! milliseconds header you name). With [`Propagation`] on, the deadline the call ends up
//! with is written back into those headers, so the callee knows when to give up. A budget
//! already spent ends the call at once; a malformed header is ignored (with a debug event).

use std::time::Duration;

/// Caps one call's deadline: put it in an `http::Request`'s extensions. It can only make
/// the deadline shorter than the peer's adaptive one.
///
/// ```
/// use std::time::Duration;
/// use tower_adaptive_timeout::Deadline;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(Deadline(Duration::from_millis(150)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Deadline(pub Duration);

/// Which headers carry a deadline budget in and out of `http::Request`s.
///
/// Off by default. With it on, the budget a request carries caps its deadline, and the
/// deadline the call gets is written back (overwriting the header) for the callee.
#[derive(Clone, Debug, Default)]
pub struct Propagation {
    grpc_timeout: bool,
    #[cfg(feature = "http")]
    millis_header: Option<http::HeaderName>,
}

impl Propagation {
    /// No propagation: headers are neither read nor written.
    pub fn none() -> Self {
        Propagation::default()
    }

    /// Reads and writes gRPC's `grpc-timeout` header.
    pub fn grpc() -> Self {
        Propagation {
            grpc_timeout: true,
            ..Propagation::default()
        }
    }

    /// Also reads and writes a plain milliseconds header (e.g. `x-request-timeout-ms`).
    #[cfg(feature = "http")]
    pub fn millis_header(mut self, name: http::HeaderName) -> Self {
        self.millis_header = Some(name);
        self
    }

    /// Whether any header is read or written.
    pub fn is_on(&self) -> bool {
        #[cfg(feature = "http")]
        if self.millis_header.is_some() {
            return true;
        }
        self.grpc_timeout
    }
}

#[cfg(feature = "http")]
pub(crate) use self::http_budget::{read, write};

#[cfg(feature = "http")]
mod http_budget {
    use std::time::Duration;

    use http::{HeaderMap, HeaderName, HeaderValue, Request};

    use super::{Deadline, Propagation};
    use crate::propagate::{format_grpc_timeout, parse_grpc_timeout, parse_millis, BadBudget};

    /// The shortest limit the request carries: its [`Deadline`] extension and, with
    /// propagation on, its budget headers. Malformed headers are ignored.
    pub(crate) fn read<B>(req: &Request<B>, propagation: &Propagation) -> Option<Duration> {
        let mut cap = req.extensions().get::<Deadline>().map(|d| d.0);
        let headers = req.headers();
        if propagation.grpc_timeout {
            let grpc = header(headers, crate::propagate::GRPC_TIMEOUT, parse_grpc_timeout);
            cap = min(cap, grpc);
        }
        if let Some(name) = &propagation.millis_header {
            cap = min(cap, header(headers, name.as_str(), parse_millis));
        }
        cap
    }

    /// Writes `deadline` into the headers propagation names.
    pub(crate) fn write<B>(req: &mut Request<B>, deadline: Duration, propagation: &Propagation) {
        let headers = req.headers_mut();
        if propagation.grpc_timeout {
            let value = HeaderValue::from(format_grpc_timeout(deadline));
            headers.insert(
                HeaderName::from_static(crate::propagate::GRPC_TIMEOUT),
                value,
            );
        }
        if let Some(name) = &propagation.millis_header {
            let millis = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
            headers.insert(name.clone(), HeaderValue::from(millis));
        }
    }

    fn header(
        headers: &HeaderMap,
        name: &str,
        parse: fn(&[u8]) -> Result<Duration, BadBudget>,
    ) -> Option<Duration> {
        let value = headers.get(name)?;
        match parse(value.as_bytes()) {
            Ok(d) => Some(d),
            Err(why) => {
                tracing::debug!(header = name, ?value, %why, "ignoring malformed budget header");
                None
            }
        }
    }

    fn min(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn ms(n: u64) -> Duration {
            Duration::from_millis(n)
        }

        #[test]
        fn the_shortest_limit_wins_and_bad_headers_are_ignored() {
            let name = HeaderName::from_static("x-request-timeout-ms");
            let prop = Propagation::grpc().millis_header(name.clone());
            let mut req = Request::get("http://a/")
                .header("grpc-timeout", "300m")
                .header(&name, "200")
                .body(())
                .unwrap();
            assert_eq!(read(&req, &prop), Some(ms(200)));
            req.extensions_mut().insert(Deadline(ms(100)));
            assert_eq!(read(&req, &prop), Some(ms(100)));
            assert_eq!(read(&req, &Propagation::none()), Some(ms(100)));
            let bad = Request::get("http://a/")
                .header("grpc-timeout", "99999999999S")
                .header(&name, "-5")
                .body(())
                .unwrap();
            assert_eq!(read(&bad, &prop), None);
        }

        #[test]
        fn the_deadline_is_written_back() {
            let name = HeaderName::from_static("x-request-timeout-ms");
            let prop = Propagation::grpc().millis_header(name.clone());
            let mut req = Request::get("http://a/")
                .header("grpc-timeout", "1H")
                .body(())
                .unwrap();
            write(&mut req, ms(250), &prop);
            assert_eq!(req.headers()["grpc-timeout"], "250000u");
            assert_eq!(req.headers()[&name], "250");
            let mut untouched = Request::new(());
            write(&mut untouched, ms(250), &Propagation::none());
            assert!(untouched.headers().is_empty());
        }
    }
}
