//! A fixed timeout: `tower::timeout::TimeoutLayer`.

use std::sync::Arc;
use std::time::Duration;

use tower::timeout::TimeoutLayer;
use tower::ServiceBuilder;

use super::{ending_of, SimService, Strategy};
use crate::workload::peers_service;

/// Every call gets `timeout`.
pub fn build(timeout: Duration) -> Strategy {
    Strategy {
        service: SimService::new(
            ServiceBuilder::new()
                .map_err(ending_of)
                .layer(TimeoutLayer::new(timeout))
                .service(peers_service()),
        ),
        deadline: Arc::new(move |_| timeout),
        quiet: Arc::new(move |_| timeout),
    }
}
