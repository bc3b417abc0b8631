//! Invalid configuration is refused, naming the field.
//!
//! Covers every policy check made by `build()` (quantile, factor, min, max, margin,
//! cold_start, min_samples, window, sub_windows, significant_figures, recompute_every,
//! probe_backoff, probe_backoff_max, long_probe_spacing), the layer settings `max_peers`
//! and `idle_ttl`, bad per-peer overrides, the boundary values that must still be
//! accepted, and runtime policy changes through the handle, which refuse bad policies and
//! leave the old one in force.

use crate::support;

use std::time::Duration;

use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutLayer, Builder, DeadlineSource, PolicyError, TimeoutPolicy, MAX_DEADLINE,
    MAX_LONG_PROBE_SPACING, MAX_SUB_WINDOWS, MAX_WINDOW,
};

use support::ms;

type Keyed = Builder<&'static str, fn(&&'static str) -> &'static str>;

fn layer() -> Keyed {
    AdaptiveTimeoutLayer::builder((|r: &&'static str| *r) as fn(&&'static str) -> &'static str)
}

/// The error `build()` refuses `builder` with.
fn refused(builder: Keyed) -> PolicyError {
    match builder.build() {
        Ok(_) => panic!("the configuration was accepted"),
        Err(e) => e,
    }
}

/// Asserts each policy is refused as the default policy, naming `field`, and that
/// [`TimeoutPolicy::validate`] agrees with `build()`.
fn assert_refused(field: &str, cases: impl IntoIterator<Item = TimeoutPolicy>) {
    for policy in cases {
        let err = refused(layer().policy(policy.clone()));
        assert_eq!(err.field(), field, "{policy:?}: {err}");
        assert_eq!(policy.validate(), Err(err.clone()));
        let text = err.to_string();
        assert!(
            text.contains(&format!("`{field}`")),
            "{text} does not name {field}"
        );
    }
}

fn base() -> TimeoutPolicy {
    TimeoutPolicy::default()
}

#[test]
fn quantile_must_be_in_zero_to_one() {
    assert_refused(
        "quantile",
        [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY].map(|q| base().quantile(q)),
    );
}

#[test]
fn factor_must_be_finite_and_at_least_one() {
    assert_refused(
        "factor",
        [f64::NAN, -2.0, 0.0, 0.5, f64::INFINITY].map(|f| base().factor(f)),
    );
}

#[test]
fn min_must_be_positive_and_not_above_max() {
    assert_refused(
        "min",
        [
            base().min(Duration::ZERO),
            base().min(ms(500)).max(ms(400)).cold_start(ms(450)),
        ],
    );
}

#[test]
fn max_is_at_most_a_day() {
    assert_refused(
        "max",
        [
            base().max(MAX_DEADLINE + Duration::from_nanos(1)),
            base().max(Duration::from_secs(25 * 3600)),
            base().max(Duration::MAX),
        ],
    );
}

#[test]
fn margin_must_not_exceed_max() {
    assert_refused("margin", [base().margin(Duration::from_secs(31))]);
}

#[test]
fn cold_start_must_lie_within_min_and_max() {
    assert_refused(
        "cold_start",
        [
            base().min(ms(100)).cold_start(ms(99)),
            base().max(ms(500)).cold_start(ms(501)),
            base().cold_start(Duration::ZERO),
        ],
    );
}

#[test]
fn counts_must_be_at_least_one() {
    assert_refused("min_samples", [base().min_samples(0)]);
    assert_refused("recompute_every", [base().recompute_every(0)]);
}

#[test]
fn window_and_sub_windows_must_make_sense() {
    assert_refused("window", [base().window(Duration::ZERO)]);
    assert_refused(
        "sub_windows",
        [
            base().sub_windows(0),
            base().sub_windows(MAX_SUB_WINDOWS + 1),
            base().sub_windows(u32::MAX),
            // 10ms / 64 is shorter than a millisecond.
            base().window(ms(10)).sub_windows(64),
            base().window(Duration::from_micros(1500)).sub_windows(2),
        ],
    );
}

#[test]
fn significant_figures_are_one_to_three() {
    assert_refused(
        "significant_figures",
        [0, 4, 5, u8::MAX].map(|s| base().significant_figures(s)),
    );
}

#[test]
fn probe_backoff_must_be_positive_and_ordered() {
    assert_refused(
        "probe_backoff",
        [
            base().probe_backoff(Duration::ZERO),
            base()
                .probe_backoff(MAX_DEADLINE + ms(1))
                .probe_backoff_max(MAX_DEADLINE + ms(1)),
        ],
    );
    assert_refused(
        "probe_backoff_max",
        [
            base().probe_backoff(ms(500)).probe_backoff_max(ms(499)),
            base().probe_backoff_max(MAX_DEADLINE + ms(1)),
        ],
    );
}

#[test]
fn long_probe_spacing_is_one_to_a_hundred() {
    assert_refused(
        "long_probe_spacing",
        [0, MAX_LONG_PROBE_SPACING + 1, u32::MAX].map(|n| base().long_probe_spacing(n)),
    );
}

#[test]
fn layer_settings_are_checked() {
    assert_eq!(refused(layer().max_peers(0)).field(), "max_peers");
    assert_eq!(
        refused(layer().idle_ttl(Duration::ZERO)).field(),
        "idle_ttl"
    );
}

#[test]
fn a_bad_peer_override_is_refused_naming_the_peer() {
    let err = refused(
        layer()
            .peer_policy("good", base().quantile(0.5))
            .peer_policy("10.0.0.9:80", base().factor(0.25)),
    );
    assert_eq!(err.field(), "factor");
    let text = err.to_string();
    assert!(
        text.contains("10.0.0.9:80"),
        "{text} does not name the peer"
    );
}

#[tokio::test(start_paused = true)]
async fn boundary_values_are_accepted_and_usable() {
    let edges = [
        base(),
        base().quantile(1.0).factor(1.0),
        base().quantile(f64::MIN_POSITIVE),
        base().min(ms(1)).max(ms(1)).cold_start(ms(1)).margin(ms(1)),
        base().max(MAX_DEADLINE).cold_start(MAX_DEADLINE),
        base().window(ms(64)).sub_windows(MAX_SUB_WINDOWS),
        base().window(ms(1)).sub_windows(1),
        base().significant_figures(1),
        base().significant_figures(3),
        base()
            .significant_figures(3)
            .min(ms(1))
            .max(ms(1))
            .cold_start(ms(1))
            .margin(ms(1)),
        base().min_samples(1).recompute_every(1),
        base().margin(Duration::ZERO),
        base().silent_after_misses(0).fail_fast(false),
        base().probe_backoff(ms(1)).probe_backoff_max(ms(1)),
        base().long_probe_spacing(1),
        base()
            .long_probe_spacing(MAX_LONG_PROBE_SPACING)
            .max(MAX_DEADLINE),
        base()
            .probe_backoff(MAX_DEADLINE)
            .probe_backoff_max(MAX_DEADLINE),
    ];
    for policy in edges {
        assert_eq!(policy.validate(), Ok(()), "{policy:?}");
        let built = layer()
            .policy(policy.clone())
            .peer_policy("p", policy.clone())
            .max_peers(1)
            .idle_ttl(Duration::from_nanos(1))
            .build()
            .unwrap_or_else(|e| panic!("{policy:?}: {e}"));
        // A peer under the policy can be tracked and recorded into.
        let handle = built.handle();
        let svc = built.layer(service_fn(|_: &'static str| async {
            Ok::<_, BoxError>(())
        }));
        svc.oneshot("p").await.unwrap();
        assert_eq!(handle.peer(&"p").expect("tracked").samples, 1, "{policy:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn runtime_changes_refuse_bad_policies_and_keep_the_old_ones() {
    let layer = layer()
        .policy(base().cold_start(ms(300)))
        .peer_policy("special", base().cold_start(ms(700)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: &'static str| async {
        Ok::<_, BoxError>(())
    }));
    for peer in ["plain", "special"] {
        svc.clone().oneshot(peer).await.unwrap();
    }
    let before = handle.snapshot();

    let err = handle
        .set_default_policy(base().quantile(1.5))
        .expect_err("bad default");
    assert_eq!(err.field(), "quantile");
    assert_eq!(handle.default_policy(), base().cold_start(ms(300)));

    let err = handle
        .set_peer_policy("special", base().window(Duration::ZERO))
        .expect_err("bad override");
    assert_eq!(err.field(), "window");
    assert!(err.to_string().contains("special"), "{err}");

    let err = handle
        .set_peer_policy("plain", base().min_samples(0))
        .expect_err("bad new override");
    assert_eq!(err.field(), "min_samples");

    assert_eq!(handle.snapshot(), before, "nothing changed");
    assert_eq!(
        handle.deadline(&"special"),
        Some((ms(700), DeadlineSource::ColdStart))
    );
    assert_eq!(
        handle.deadline(&"plain"),
        Some((ms(300), DeadlineSource::ColdStart))
    );
    assert!(
        !handle.remove_peer_policy(&"plain"),
        "a refused override is never installed"
    );
    assert!(handle.remove_peer_policy(&"special"));
}

#[test]
fn a_policy_whose_histograms_could_outgrow_the_per_peer_ceiling_is_refused() {
    // The largest policy otherwise valid: 65 histograms of 3 significant figures from 1us
    // to 24h, 7.45 MB per history (71 GB at 10,000 peers).
    let largest = base()
        .min(Duration::from_micros(1))
        .max(MAX_DEADLINE)
        .cold_start(MAX_DEADLINE)
        .window(MAX_WINDOW)
        .sub_windows(MAX_SUB_WINDOWS)
        .significant_figures(3);
    assert_refused(
        "sub_windows",
        [
            largest.clone(),
            base().significant_figures(3).sub_windows(MAX_SUB_WINDOWS),
        ],
    );
    let text = largest.validate().unwrap_err().to_string();
    // The ceiling counts each history's last answers too (2,000 bytes at min_samples 100).
    assert!(text.contains("and 2000 bytes of last answers"), "{text}");
    assert!(text.contains("7456720 bytes per history"), "{text}");
    assert_eq!(
        largest.max_window_bytes(),
        7_454_720 + largest.history_bytes()
    );
}
