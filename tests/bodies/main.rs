//! Integration tests: response bodies watched past their head, and the layer end to end under hyper and tonic clients.
//!
//! One test binary per area, so the suite links the crate a few times, not once per file.

#[path = "../support/mod.rs"]
pub mod support;

mod e2e_hyper;
mod e2e_tonic;
mod idle;
mod partitions;
mod polls;
mod reliability;
mod tcp;
mod tonic;
