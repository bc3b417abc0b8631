//! Integration tests: how a peer's deadline is learned: quantiles, estimates for quiet peers, latency classes, policies at build time and at runtime.
//!
//! One test binary per area, so the suite links the crate a few times, not once per file.

#[path = "../support/mod.rs"]
pub mod support;

mod deadline_learning;
mod deadline_tcp;
mod hung_calls;
mod latency_classes;
mod memory_budget;
mod policy_runtime;
mod policy_serde;
mod policy_validation;
mod quiet_peers;
mod real_networks;
mod sampling;
mod slowdowns;
mod stall_samples;
mod stragglers;
