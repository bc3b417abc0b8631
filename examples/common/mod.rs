//! Loopback pieces shared by the examples and the end-to-end tests: a hyper HTTP/1 server
//! with per-path latency, a hand-written gRPC `Pinger` service (prost messages, tonic client
//! and server glue, no protoc), and a per-peer snapshot table.
//!
//! The tests include this module with `#[path = "../examples/common/mod.rs"] mod common;`.
//! Each user needs only part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod grpc;
pub mod http_server;
pub mod table;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tower_adaptive_timeout::{HasPeer, HttpPeer, TimeoutPolicy};

/// A policy for loopback peers: deadline = clamp(p99 x 2 + 200ms, 10ms, 30s), `cold_start`
/// until a peer has `min_samples`. The wide margin keeps a loaded machine's scheduling
/// delays from counting as misses.
pub fn loopback_policy(cold_start: Duration, min_samples: u64) -> TimeoutPolicy {
    TimeoutPolicy::default()
        .quantile(0.99)
        .margin(Duration::from_millis(200))
        .cold_start(cold_start)
        .min_samples(min_samples)
        .recompute_every(5)
}

/// Runs `fut`, panicking if it takes longer than 20 seconds: nothing waits unbounded.
pub async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("finished within 20 seconds")
}

/// A server task on an ephemeral 127.0.0.1 port. Dropping it stops the listener and every
/// connection it accepted.
#[derive(Debug)]
pub struct Loopback {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Loopback {
    /// Binds 127.0.0.1:0 and runs `serve` on each accepted connection.
    pub async fn start<F, Fut>(serve: F) -> std::io::Result<Loopback>
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // Connections live in the set, so aborting this task closes them too.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            connections.spawn(serve(stream));
                        }
                        Err(_) => return,
                    },
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        Ok(Loopback { addr, task })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn uri(&self, path: &str) -> http::Uri {
        format!("http://{}{path}", self.addr)
            .parse()
            .expect("a loopback address and a path form a URI")
    }

    /// The key `AdaptiveTimeoutLayer::http()` gives calls to this server.
    pub fn peer(&self) -> HttpPeer {
        let req = http::Request::get(self.uri("/"))
            .body(())
            .expect("a valid request");
        req.peer().expect("the URI names a host")
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.task.abort();
    }
}
