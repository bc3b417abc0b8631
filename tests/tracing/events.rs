//! What the layer tells `tracing`: a trace-level span per call (peer, deadline), a debug
//! event on every deadline expiry inside it, and an event on every state change with the
//! peer, the states and why.

use crate::support;

use std::time::Duration;

use tower::{service_fn, Layer, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, TimeoutPolicy};

use support::trace::capture;

#[tokio::test(start_paused = true)]
async fn expiries_and_state_changes_are_traced_inside_the_call_span() {
    let (out, _guard) = capture();

    let layer = AdaptiveTimeoutLayer::builder(|_: &u32| "db-7")
        .policy(TimeoutPolicy::default().cold_start(Duration::from_millis(40)))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: u32| async {
        std::future::pending::<()>().await;
        Ok::<_, std::convert::Infallible>(())
    }));
    for _ in 0..2 {
        assert!(svc.clone().oneshot(1).await.is_err());
    }

    let text = out.text();
    let expiry = text
        .lines()
        .find(|l| l.contains("deadline exceeded"))
        .unwrap_or_else(|| panic!("no expiry event in:\n{text}"));
    assert!(expiry.contains("DEBUG"), "{expiry}");
    assert!(
        expiry.contains("adaptive_timeout{peer=\"db-7\""),
        "{expiry}"
    );
    assert!(expiry.contains("deadline=40ms"), "{expiry}");
    let silent = text
        .lines()
        .find(|l| l.contains("to=\"silent\""))
        .unwrap_or_else(|| panic!("no transition to silent in:\n{text}"));
    assert!(silent.contains("WARN"), "{silent}");
    assert!(silent.contains("from=\"suspect\""), "{silent}");
    assert!(silent.contains("why="), "{silent}");
}
