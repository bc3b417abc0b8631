//! Loopback kit for the examples and tests of `tower-adaptive-timeout`: real servers and
//! clients on 127.0.0.1, and a proxy that puts network faults between them.
//!
//! * [`Loopback`]: the accept loop every server here runs on; dropping it stops the server.
//! * [`http_server`]: a hyper HTTP/1 server with a latency per server and per path, and the
//!   hyper-util client that talks to it.
//! * [`grpc`]: a hand-written gRPC `Pinger` service (prost messages, tonic client and server
//!   glue, no protoc).
//! * [`page`]: a text page over HTTP (a Prometheus scrape endpoint) and its `GET`.
//! * [`EchoServer`], [`LineClient`] and [`FaultProxy`]: a line protocol with a chosen latency
//!   per call, a tower client for it, and latency, silence, resets, half-open connections or
//!   trickling bytes between the two.
//!
//! Nothing here depends on `tower-adaptive-timeout`, so that crate can dev-depend on this
//! one without a cycle; what needs its types stays with the tests or examples.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod echo;
mod fault_proxy;
pub mod grpc;
pub mod http_server;
mod line_client;
pub mod page;
mod server;

use std::future::Future;
use std::time::Duration;

pub use echo::{EchoServer, MALFORMED_REPLY};
pub use fault_proxy::{Fault, FaultProxy};
pub use line_client::{LineClient, LineRequest};
pub use server::Loopback;

/// Runs `fut`, panicking if it takes longer than 20 seconds: nothing waits unbounded.
pub async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("finished within 20 seconds")
}
