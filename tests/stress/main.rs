//! Integration tests: floods of keys and long soaks: counts return to zero, memory stays bounded.
//!
//! One test binary per area, so the suite links the crate a few times, not once per file.

#[path = "../support/mod.rs"]
pub mod support;

mod flood;
mod soak;
