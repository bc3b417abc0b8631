//! Integration tests: a call through the layer: its future, interrupts and tokens, keys and the peer table, deadline propagation and budgets, status codes, hostile input.
//!
//! One test binary per area, so the suite links the crate a few times, not once per file.

#[path = "../support/mod.rs"]
pub mod support;

mod classify_responses;
mod future_polls;
mod hedge;
#[cfg(feature = "http")]
mod hedge_http;
mod hostile_input;
mod interrupt_manual;
mod interrupt_tokens;
mod local_stall;
mod peer_keys;
mod propagate_budgets;
mod propagate_codecs;
mod reentrant_wakers;
mod reliability;
mod retry_budgets;
mod status_codes;
mod table_admission;
