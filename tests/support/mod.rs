//! Test-support kit for integration tests over real loopback TCP: a line-protocol
//! [`EchoServer`], a tower [`LineClient`] for it, and a [`FaultProxy`] that puts latency,
//! silence, resets, half-open connections or trickling bytes between the two.
//!
//! Use from a test file with `mod support; use support::*;`. Each test binary uses a subset,
//! hence the blanket `dead_code`/`unused_imports` allowance.
#![allow(dead_code, unused_imports)]

mod client;
mod echo;
mod fault_proxy;
mod server;

pub use client::{LineClient, LineRequest};
pub use echo::{EchoServer, MALFORMED_REPLY};
pub use fault_proxy::{Fault, FaultProxy};
