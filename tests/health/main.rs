//! Integration tests: silence and recovery: detection, probes, health events, faults over real sockets, balanced endpoints.
//!
//! One test binary per area, so the suite links the crate a few times, not once per file.

#[path = "../support/mod.rs"]
pub mod support;

mod balance_endpoints;
mod balance_refusals;
mod balance_targets;
mod endpoint_roles;
mod faults_tcp;
mod fixed_peer_sockets;
mod health_events;
mod recovery;
mod recovery_tcp;
mod silence_detection;
mod slow_return;
