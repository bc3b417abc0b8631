//! A loopback HTTP/1 server (hyper) with a latency per server and per path, and the
//! hyper-util client that talks to it.
//!
//! * `/hang` never answers.
//! * `/sleep/MS` answers after `MS` milliseconds.
//! * Any other path answers after the server's own latency.
//!
//! Every answer echoes the [`TIMEOUT_HEADER`] the request arrived with in [`SEEN_HEADER`], so
//! a caller can see the budget its deadline propagated to the server.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::Loopback;

/// The milliseconds budget header the layer propagates in these examples and tests.
pub const TIMEOUT_HEADER: HeaderName = HeaderName::from_static("x-request-timeout-ms");
/// The header in which the server echoes the [`TIMEOUT_HEADER`] it received.
pub const SEEN_HEADER: HeaderName = HeaderName::from_static("x-seen-timeout-ms");

/// The hyper-util client the layer wraps.
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Empty<Bytes>>;

/// A pooled HTTP/1 client.
pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// A `GET` of `uri` with an empty body.
pub fn get(uri: http::Uri) -> Request<Empty<Bytes>> {
    Request::get(uri)
        .body(Empty::new())
        .expect("a GET with a parsed URI is a valid request")
}

/// Starts a server on 127.0.0.1 that answers after `latency` (see the module docs for the
/// paths that answer otherwise).
pub async fn start(latency: Duration) -> std::io::Result<Loopback> {
    Loopback::start(move |stream| async move {
        let service = hyper::service::service_fn(move |req| answer(req, latency));
        // A connection ends when the client goes away; nothing to report.
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await
}

async fn answer(
    req: Request<Incoming>,
    latency: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if path == "/hang" {
        std::future::pending::<()>().await;
    }
    let delay = path
        .strip_prefix("/sleep/")
        .and_then(|ms| ms.parse().ok())
        .map_or(latency, Duration::from_millis);
    tokio::time::sleep(delay).await;
    let mut response = Response::new(Full::from("ok"));
    if let Some(budget) = req.headers().get(TIMEOUT_HEADER) {
        response.headers_mut().insert(SEEN_HEADER, budget.clone());
    }
    Ok(response)
}
