//! A tiny gRPC service, `ping.Pinger`, written by hand: the prost messages, the client and
//! the server glue that `tonic-build` would otherwise generate from
//!
//! ```text
//! syntax = "proto3";
//! package ping;
//! service Pinger {
//!   rpc Ping(PingRequest) returns (PingReply);
//!   rpc Stream(StreamRequest) returns (stream PingReply);
//! }
//! message PingRequest { uint64 delay_ms = 1; string payload = 2; }
//! message PingReply { string payload = 1; string grpc_timeout = 2; }
//! message StreamRequest { uint64 count = 1; uint64 every_ms = 2; optional uint64 stall_after = 3; }
//! ```
//!
//! `Ping` answers after the request's `delay_ms` and reports the `grpc-timeout` header the
//! request arrived with, so a caller can see the deadline it propagated. `Stream` sends
//! `count` replies, one every `every_ms`; with `stall_after`, it goes silent after that
//! many and never ends the stream (a hung server stream). The server speaks HTTP/2 with
//! hyper directly (tonic's own server brings a router these tests do not need).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use hyper::body::{Body, Incoming};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::client::GrpcService;
use tonic::{GrpcMethod, IntoRequest, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;
use tower::BoxError;

use crate::Loopback;

/// The service's name, as in the path of its methods.
pub const SERVICE: &str = "ping.Pinger";
/// The path of `Ping`.
pub const PING_PATH: &str = "/ping.Pinger/Ping";
/// The path of `Stream`.
pub const STREAM_PATH: &str = "/ping.Pinger/Stream";
/// The metadata key of a call's deadline in the gRPC protocol.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The request: answer after `delay_ms`, echoing `payload`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PingRequest {
    /// How long the server waits before it answers.
    #[prost(uint64, tag = "1")]
    pub delay_ms: u64,
    /// Echoed back.
    #[prost(string, tag = "2")]
    pub payload: String,
}

/// The answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PingReply {
    /// The request's payload.
    #[prost(string, tag = "1")]
    pub payload: String,
    /// The `grpc-timeout` header the server received (empty if none).
    #[prost(string, tag = "2")]
    pub grpc_timeout: String,
}

/// The request of a server stream: `count` replies, one every `every_ms`, going silent
/// after `stall_after` of them if set.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamRequest {
    /// How many replies the stream carries.
    #[prost(uint64, tag = "1")]
    pub count: u64,
    /// The wait before each reply.
    #[prost(uint64, tag = "2")]
    pub every_ms: u64,
    /// After this many replies the server sends nothing more and keeps the stream open
    /// until the caller goes away.
    #[prost(uint64, optional, tag = "3")]
    pub stall_after: Option<u64>,
}

impl StreamRequest {
    /// A stream of `count` replies, one every `every`, that ends after the last.
    pub fn steady(count: u64, every: Duration) -> Self {
        StreamRequest {
            count,
            every_ms: millis(every),
            stall_after: None,
        }
    }

    /// This stream, silent and never ending after `replies` replies.
    pub fn stalling_after(self, replies: u64) -> Self {
        StreamRequest {
            stall_after: Some(replies),
            ..self
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl PingRequest {
    /// A ping the server answers after `delay`.
    pub fn after(delay: Duration, payload: &str) -> Self {
        PingRequest {
            delay_ms: millis(delay),
            payload: payload.to_owned(),
        }
    }
}

/// The client, over any `GrpcService` (a tonic `Channel`, or one under the layer).
#[derive(Clone, Debug)]
pub struct PingerClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> PingerClient<T>
where
    T: GrpcService<tonic::body::Body>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<BoxError> + Send,
{
    /// Requests carry only a path (`/ping.Pinger/Ping`); a `Channel` adds its endpoint's
    /// scheme and authority further down.
    pub fn new(inner: T) -> Self {
        PingerClient {
            inner: tonic::client::Grpc::new(inner),
        }
    }

    /// Requests carry `origin`'s scheme and authority, so services between this client and
    /// the `Channel` can see which peer they go to.
    pub fn with_origin(inner: T, origin: http::Uri) -> Self {
        PingerClient {
            inner: tonic::client::Grpc::with_origin(inner, origin),
        }
    }

    /// Calls `Ping`.
    pub async fn ping(
        &mut self,
        request: impl IntoRequest<PingRequest>,
    ) -> Result<Response<PingReply>, Status> {
        let request = self.ready(request, "Ping").await?;
        let path = PathAndQuery::from_static(PING_PATH);
        self.inner.unary(request, path, ProstCodec::default()).await
    }

    /// Calls `Stream`: the response's head, its replies to be read with
    /// [`Streaming::message`].
    pub async fn stream(
        &mut self,
        request: impl IntoRequest<StreamRequest>,
    ) -> Result<Response<Streaming<PingReply>>, Status> {
        let request = self.ready(request, "Stream").await?;
        let path = PathAndQuery::from_static(STREAM_PATH);
        let codec = ProstCodec::default();
        self.inner.server_streaming(request, path, codec).await
    }

    /// Waits until the service is ready, and names `method` in the request.
    async fn ready<M>(
        &mut self,
        request: impl IntoRequest<M>,
        method: &'static str,
    ) -> Result<Request<M>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("service was not ready: {}", e.into())))?;
        let mut request = request.into_request();
        request
            .extensions_mut()
            .insert(GrpcMethod::new(SERVICE, method));
        Ok(request)
    }

    /// Calls `Ping` with a request the server answers after `delay`; returns the reply.
    pub async fn ping_after(&mut self, delay: Duration) -> Result<PingReply, Status> {
        let reply = self.ping(PingRequest::after(delay, "ping")).await?;
        Ok(reply.into_inner())
    }
}

/// Starts the `Pinger` server on 127.0.0.1. With `log`, it prints the `grpc-timeout` header
/// of each call it receives.
pub async fn start_server(log: bool) -> std::io::Result<Loopback> {
    Loopback::start(move |stream| async move {
        let service = hyper::service::service_fn(move |req| route(req, log));
        // A connection ends when the client goes away; nothing to report.
        let _ = http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await
}

async fn route(
    req: http::Request<Incoming>,
    log: bool,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    // A codec per method: their message types differ.
    Ok(match req.uri().path() {
        PING_PATH => {
            let handler = tower::service_fn(move |req| ping(req, log));
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            grpc.unary(handler, req).await
        }
        STREAM_PATH => {
            let handler = tower::service_fn(stream);
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            grpc.server_streaming(handler, req).await
        }
        path => Status::unimplemented(path.to_owned()).into_http(),
    })
}

async fn ping(req: Request<PingRequest>, log: bool) -> Result<Response<PingReply>, Status> {
    let grpc_timeout = req
        .metadata()
        .get(GRPC_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let ping = req.into_inner();
    if log {
        println!(
            "  server: Ping {:<8} delay {:>5}ms  grpc-timeout: {}",
            ping.payload,
            ping.delay_ms,
            if grpc_timeout.is_empty() {
                "(none)"
            } else {
                &grpc_timeout
            }
        );
    }
    tokio::time::sleep(Duration::from_millis(ping.delay_ms)).await;
    Ok(Response::new(PingReply {
        payload: ping.payload,
        grpc_timeout,
    }))
}

/// The replies of a server stream, as the server sends them.
type Replies = ReceiverStream<Result<PingReply, Status>>;

/// Starts sending the stream's replies from a task of their own; the stream ends after
/// the last, or stays open and silent after `stall_after` of them until the caller goes
/// away.
async fn stream(req: Request<StreamRequest>) -> Result<Response<Replies>, Status> {
    let StreamRequest {
        count,
        every_ms,
        stall_after,
    } = req.into_inner();
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for n in 0..stall_after.map_or(count, |s| s.min(count)) {
            tokio::time::sleep(Duration::from_millis(every_ms)).await;
            let reply = PingReply {
                payload: n.to_string(),
                grpc_timeout: String::new(),
            };
            if tx.send(Ok(reply)).await.is_err() {
                return; // The caller went away.
            }
        }
        if stall_after.is_some() {
            tx.closed().await;
        }
    });
    Ok(Response::new(ReceiverStream::new(rx)))
}
