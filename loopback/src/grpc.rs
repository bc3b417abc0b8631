//! A tiny gRPC service, `ping.Pinger/Ping`, written by hand: the prost messages, the
//! client and the server glue that `tonic-build` would otherwise generate from
//!
//! ```text
//! syntax = "proto3";
//! package ping;
//! service Pinger { rpc Ping(PingRequest) returns (PingReply); }
//! message PingRequest { uint64 delay_ms = 1; string payload = 2; }
//! message PingReply { string payload = 1; string grpc_timeout = 2; }
//! ```
//!
//! The server answers after the request's `delay_ms` and reports the `grpc-timeout` header
//! the request arrived with, so a caller can see the deadline it propagated. It serves
//! HTTP/2 with hyper directly (tonic's own server brings a router this example does not
//! need).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use hyper::body::{Body, Incoming};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::client::GrpcService;
use tonic::{GrpcMethod, IntoRequest, Request, Response, Status};
use tonic_prost::ProstCodec;
use tower::BoxError;

use crate::Loopback;

/// The service's name, as in the path of its methods.
pub const SERVICE: &str = "ping.Pinger";
/// The path of `Ping`.
pub const PING_PATH: &str = "/ping.Pinger/Ping";
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

impl PingRequest {
    /// A ping the server answers after `delay`.
    pub fn after(delay: Duration, payload: &str) -> Self {
        PingRequest {
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
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
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("service was not ready: {}", e.into())))?;
        let mut request = request.into_request();
        request
            .extensions_mut()
            .insert(GrpcMethod::new(SERVICE, "Ping"));
        let path = PathAndQuery::from_static(PING_PATH);
        self.inner.unary(request, path, ProstCodec::default()).await
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
    if req.uri().path() != PING_PATH {
        return Ok(Status::unimplemented(req.uri().path().to_owned()).into_http());
    }
    let handler = tower::service_fn(move |req| ping(req, log));
    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
    Ok(grpc.unary(handler, req).await)
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
