//! Loopback kit for the examples, tests and simulator of `tower-adaptive-timeout`: real
//! servers and clients on 127.0.0.1, a proxy that puts network faults between them, and a
//! seeded random number generator.
//!
//! * [`Loopback`]: the accept loop every server here runs on; dropping it stops the server,
//!   and a server stopped with [`Loopback::stop`] can be started again on its port.
//! * [`http_server`]: a hyper HTTP/1 server with a latency per server and per path, and the
//!   hyper-util client that talks to it.
//! * [`grpc`]: a hand-written gRPC `Pinger` service, unary and server-streaming (prost
//!   messages, tonic client and server glue, no protoc).
//! * [`page`]: a text page over HTTP (a Prometheus scrape endpoint) and its `GET`.
//! * [`EchoServer`], [`LineClient`] and [`FaultProxy`]: a line protocol with a chosen latency
//!   per call, a tower client for it, and latency, silence, resets, half-open connections or
//!   trickling bytes between the two.
//! * [`Rng`]: a seeded random number generator and the distributions drawn from it, for
//!   tests and the simulator that must give the same run every time. It is all the crate
//!   is without its default `net` feature.
//!
//! Nothing here depends on `tower-adaptive-timeout`, so that crate can dev-depend on this
//! one without a cycle; what needs its types stays with the tests or examples.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "net")]
mod echo;
#[cfg(feature = "net")]
mod fault_proxy;
#[cfg(feature = "net")]
pub mod grpc;
#[cfg(feature = "net")]
pub mod http_server;
#[cfg(feature = "net")]
mod line_client;
#[cfg(feature = "net")]
pub mod page;
mod rng;
#[cfg(feature = "net")]
mod server;

#[cfg(feature = "net")]
pub use echo::{EchoServer, MALFORMED_REPLY};
#[cfg(feature = "net")]
pub use fault_proxy::{Fault, FaultProxy};
#[cfg(feature = "net")]
pub use line_client::{LineClient, LineRequest};
pub use rng::Rng;
#[cfg(feature = "net")]
pub use server::Loopback;

/// Runs `fut`, panicking if it takes longer than 20 seconds: nothing waits unbounded.
#[cfg(feature = "net")]
pub async fn bounded<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(20), fut)
        .await
        .expect("finished within 20 seconds")
}
