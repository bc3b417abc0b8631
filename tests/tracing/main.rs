//! Integration tests: what the layer tells `tracing`.
//!
//! `tracing` caches per callsite, across threads, whether any subscriber listens, so tests
//! that capture a thread's output run here, in a binary of their own, one at a time.

#[path = "../support/mod.rs"]
pub mod support;

mod events;
mod userinfo;
