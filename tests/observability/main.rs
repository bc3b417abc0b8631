//! Integration tests: what the layer reports: the `metrics` facade.
//!
//! One test binary per area, so the suite links the crate a few times, not once per file.

#[path = "../support/mod.rs"]
pub mod support;

mod metrics_labels;
mod metrics_scrape;
