//! A loopback HTTP/1 server (hyper) with a latency per server and per path, and the
//! hyper-util client that talks to it.
//!
//! * `/hang` never answers.
//! * `/sleep/MS` answers after `MS` milliseconds.
//! * `/stream/N/MS` answers at once with a body of `N` frames of [`FRAME_BYTES`] bytes,
//!   one every `MS` milliseconds (a slow download, or a stream of events); with `N` 0 the
//!   body never ends.
//! * Any other path answers after the server's own latency.
//!
//! Every answer echoes the [`TIMEOUT_HEADER`] the request arrived with in [`SEEN_HEADER`], so
//! a caller can see the budget its deadline propagated to the server.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
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
    start_at(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), latency).await
}

/// [`start`] on `addr`: a server stopped with [`Loopback::stop`], started again on its port.
pub async fn start_at(addr: std::net::SocketAddr, latency: Duration) -> std::io::Result<Loopback> {
    Loopback::start_at(addr, move |stream| async move {
        let service = hyper::service::service_fn(move |req| answer(req, latency));
        // A connection ends when the client goes away; nothing to report.
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await
}

/// The size of each frame of a `/stream/..` body.
pub const FRAME_BYTES: usize = 64;

/// What the server answers with: a whole body, or frames over time.
pub type Reply = Either<Full<Bytes>, Frames>;

async fn answer(req: Request<Incoming>, latency: Duration) -> Result<Response<Reply>, Infallible> {
    let path = req.uri().path();
    if let Some(frames) = path.strip_prefix("/stream/").and_then(Frames::parse) {
        return Ok(Response::new(Either::Right(frames)));
    }
    if path == "/hang" {
        std::future::pending::<()>().await;
    }
    let delay = path
        .strip_prefix("/sleep/")
        .and_then(|ms| ms.parse().ok())
        .map_or(latency, Duration::from_millis);
    tokio::time::sleep(delay).await;
    let mut response = Response::new(Either::Left(Full::from("ok")));
    if let Some(budget) = req.headers().get(TIMEOUT_HEADER) {
        response.headers_mut().insert(SEEN_HEADER, budget.clone());
    }
    Ok(response)
}

/// A body of frames sent one every `every`: `left` more of them (forever when it started at
/// zero).
#[derive(Debug)]
pub struct Frames {
    left: Option<u32>,
    every: Duration,
    next: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Frames {
    /// `N/MS` from a `/stream/N/MS` path.
    fn parse(spec: &str) -> Option<Self> {
        let (n, ms) = spec.split_once('/')?;
        let every = Duration::from_millis(ms.parse().ok()?);
        let n: u32 = n.parse().ok()?;
        Some(Frames {
            left: (n > 0).then_some(n),
            every,
            next: Box::pin(tokio::time::sleep(every)),
        })
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == Some(0) {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(self.next.as_mut().poll(cx));
        let at = tokio::time::Instant::now() + self.every;
        self.next.as_mut().reset(at);
        if let Some(left) = &mut self.left {
            *left -= 1;
        }
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &[b'x'; FRAME_BYTES],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == Some(0)
    }
}
