//! Helpers shared by the integration tests; the loopback servers, clients and fault proxy
//! they run against are the `loopback` crate.
//!
//! A test declares this module `pub mod support;`: each test uses a subset, and the public
//! items of a public module are not dead code.

#[cfg(feature = "http")]
pub mod e2e;
