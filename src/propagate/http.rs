//! The caller's deadline on `http::Request`s: read from the [`Deadline`] extension and the
//! headers [`Propagation`] names, and written back into those headers.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request};

use super::codec::{
    format_grpc_timeout, format_millis, grpc_timeout_holds, millis_hold, parse_grpc_timeout,
    parse_millis, BadBudget,
};
use super::{Deadline, Propagation, GRPC_TIMEOUT};

/// The caller's deadline: the shortest of the request's [`Deadline`] extension and, with
/// propagation on, its deadline headers (every value of a repeated header). Malformed values
/// are ignored.
pub(crate) fn read<B>(req: &Request<B>, propagation: &Propagation) -> Option<Duration> {
    let now = tokio::time::Instant::now();
    let mut deadline = req.extensions().get::<Deadline>().map(|d| d.remaining(now));
    let headers = req.headers();
    if propagation.grpc_timeout {
        let grpc = header(headers, GRPC_TIMEOUT, parse_grpc_timeout);
        deadline = min(deadline, grpc);
    }
    if let Some(name) = &propagation.millis_header {
        deadline = min(deadline, header(headers, name.as_str(), parse_millis));
    }
    deadline
}

/// Writes `deadline` into the headers propagation names, but not into one that cannot hold
/// it: a deadline that long (`Duration::MAX`) is no limit, and its header is left out.
pub(crate) fn write<B>(req: &mut Request<B>, deadline: Duration, propagation: &Propagation) {
    let headers = req.headers_mut();
    if propagation.grpc_timeout && grpc_timeout_holds(deadline) {
        let value = HeaderValue::from(format_grpc_timeout(deadline));
        put(headers, HeaderName::from_static(GRPC_TIMEOUT), value);
    }
    if let Some(name) = propagation
        .millis_header
        .as_ref()
        .filter(|_| millis_hold(deadline))
    {
        put(
            headers,
            name.clone(),
            HeaderValue::from(format_millis(deadline)),
        );
    }
}

/// Sets header `name`, unless the map is at its size limit: then the callee is not told
/// the deadline (a debug event says so), and the call goes ahead.
fn put(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    if headers.try_insert(&name, value).is_err() {
        tracing::debug!(header = %name, "header map full: deadline not propagated");
    }
}

/// The smallest valid budget among every value of header `name`: a repeated header must not
/// let a malformed or a larger value hide a smaller one.
fn header(
    headers: &HeaderMap,
    name: &str,
    parse: fn(&[u8]) -> Result<Duration, BadBudget>,
) -> Option<Duration> {
    let valid = headers
        .get_all(name)
        .iter()
        .filter_map(|value| match parse(value.as_bytes()) {
            Ok(d) => Some(d),
            Err(why) => {
                tracing::debug!(header = name, ?value, %why, "ignoring malformed budget header");
                None
            }
        });
    valid.min()
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
        assert_eq!(req.headers()["grpc-timeout"], "250m");
        assert_eq!(req.headers()[&name], "250");
        let mut untouched = Request::new(());
        write(&mut untouched, ms(250), &Propagation::none());
        assert!(untouched.headers().is_empty());
    }
}
