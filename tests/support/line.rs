//! The layer over the loopback line protocol (`LineClient`), keyed by the address a call
//! goes to: an `EchoServer`, or a `FaultProxy` in front of one.

use std::net::SocketAddr;

use loopback::{LineClient, LineRequest};
use tower_adaptive_timeout::{AdaptiveTimeout, AdaptiveTimeoutLayer, Builder};

/// The key of a line call: the server (or proxy) it goes to.
pub type ByAddr = fn(&LineRequest) -> SocketAddr;

/// The layer over a line client.
pub type LineSvc = AdaptiveTimeout<LineClient, SocketAddr, ByAddr>;

/// A layer builder keyed by [`LineRequest::addr`].
pub fn by_addr() -> Builder<SocketAddr, ByAddr> {
    AdaptiveTimeoutLayer::builder((|r: &LineRequest| r.addr) as ByAddr)
}
