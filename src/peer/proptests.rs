//! Property tests of the latency window, the deadline formula and the health state machine.
//!
//! * Window: a sample recorded into the sub-window ending at `E` is counted at every time
//!   before `E + (sub_windows - 1) × sub_window` and gone from then on, so it lives between
//!   `window - sub_window` and `window`; the window always rotates within one sub-window.
//! * Deadline: always within `[min, max]`, cold start below `min_samples`, monotone
//!   non-decreasing in the quantile value.
//! * Health: arbitrary event sequences only ever take legal transitions; driven like the
//!   peer drives it, at most one probe is in flight at a time and only a silent peer is
//!   probed.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::health::{Health, PeerState, ProbeEnd, Transition, Verdict, LONG_PROBE_PATIENCE};
use super::window::Window;
use crate::explain::DeadlineSource;
use crate::policy::TimeoutPolicy;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A valid policy with a small window, so generated time steps cross many rotations.
fn window_policy(sub_windows: u32, sub_ms: u64) -> TimeoutPolicy {
    // `min_samples` 1: every sample goes into the histograms from the first.
    TimeoutPolicy::default()
        .min_samples(1)
        .sub_windows(sub_windows)
        .window(ms(sub_ms * u64::from(sub_windows)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn window_samples_expire_exactly_when_their_sub_window_is_recycled(
        sub_windows in 1u32..=8,
        sub_ms in 1u64..=50,
        // Each step: advance by this many microseconds, then maybe record.
        steps in prop::collection::vec((0u64..120_000, any::<bool>()), 1..120),
    ) {
        let policy = window_policy(sub_windows, sub_ms);
        policy.validate().unwrap();
        let sub = policy.sub_window();
        let lifetime_after_end = sub * (sub_windows - 1);
        let t0 = Instant::now();
        let mut w = Window::new(&policy, t0);
        // Each sample: when recorded, and when its sub-window ends.
        let mut live: Vec<(Instant, Instant)> = Vec::new();
        let mut now = t0;
        for (step_us, record) in steps {
            now += Duration::from_micros(step_us);
            w.advance(now);
            prop_assert!(w.rotates_at() > now, "rotates at or before now");
            prop_assert!(w.rotates_at() <= now + sub, "rotates more than a sub-window ahead");
            live.retain(|&(_, ends)| now < ends + lifetime_after_end);
            prop_assert_eq!(w.samples(), live.len() as u64);
            for &(at, _) in &live {
                let age = now - at;
                prop_assert!(age < policy.window, "a sample outlived the window: {:?}", age);
            }
            if record {
                live.push((now, w.rotates_at()));
                w.record(ms(3), now);
                prop_assert_eq!(w.samples(), live.len() as u64);
            }
        }
    }

    #[test]
    fn a_sample_lives_between_window_minus_one_sub_window_and_window(
        sub_windows in 1u32..=8,
        sub_ms in 1u64..=50,
        offset_us in 0u64..400_000,
    ) {
        let policy = window_policy(sub_windows, sub_ms);
        let t0 = Instant::now();
        let mut w = Window::new(&policy, t0);
        let at = t0 + Duration::from_micros(offset_us);
        w.advance(at);
        w.record(ms(1), at);
        let sub = policy.sub_window();
        // Still there just short of `window - sub_window` ...
        let young = at + policy.window - sub - Duration::from_nanos(1);
        if young > at {
            w.advance(young);
            prop_assert_eq!(w.samples(), 1);
        }
        // ... and gone at `window`.
        w.advance(at + policy.window);
        prop_assert_eq!(w.samples(), 0);
    }

    #[test]
    fn deadline_is_clamped_monotone_and_cold_below_min_samples(
        quantile in 0.01f64..=1.0,
        factor in 1.0f64..1e6,
        margin_us in 0u64..2_000_000,
        min_us in 1u64..1_000_000,
        span_us in 0u64..10_000_000,
        min_samples in 1u64..100,
        samples in 0u64..200,
        a_ns in 0u64..=u64::MAX / 2,
        b_ns in 0u64..=u64::MAX / 2,
    ) {
        let min = Duration::from_micros(min_us);
        let max = (min + Duration::from_micros(span_us)).max(Duration::from_micros(margin_us));
        let policy = TimeoutPolicy::default()
            .quantile(quantile)
            .factor(factor)
            .margin(Duration::from_micros(margin_us))
            .min(min)
            .max(max)
            .cold_start(min)
            .min_samples(min_samples);
        policy.validate().unwrap();
        let (lo, hi) = (Duration::from_nanos(a_ns.min(b_ns)), Duration::from_nanos(a_ns.max(b_ns)));
        let (d_lo, s_lo) = policy.deadline(samples, lo);
        let (d_hi, s_hi) = policy.deadline(samples, hi);
        for (d, s) in [(d_lo, s_lo), (d_hi, s_hi)] {
            prop_assert!(d >= min && d <= max, "{:?} outside [{:?}, {:?}]", d, min, max);
            if samples < min_samples {
                prop_assert_eq!((d, s), (policy.cold_start, DeadlineSource::ColdStart));
            } else {
                prop_assert_ne!(s, DeadlineSource::ColdStart);
            }
            match s {
                DeadlineSource::ClampedMin => prop_assert_eq!(d, min),
                DeadlineSource::ClampedMax => prop_assert_eq!(d, max),
                _ => {}
            }
        }
        prop_assert!(d_lo <= d_hi, "not monotone: q {:?} -> {:?}, q {:?} -> {:?}", lo, d_lo, hi, d_hi);
    }
}

/// An event for the health machine, with arbitrary (possibly unrealistic) arguments.
#[derive(Clone, Debug)]
enum Event {
    Admit,
    Response,
    Deadline { started_back_us: u64, probe: bool },
    Abandon { probe: bool },
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::Admit),
        Just(Event::Response),
        (0u64..50_000, any::<bool>()).prop_map(|(started_back_us, probe)| Event::Deadline {
            started_back_us,
            probe
        }),
        any::<bool>().prop_map(|probe| Event::Abandon { probe }),
    ]
}

fn health_policy(misses: u32, fail_fast: bool) -> TimeoutPolicy {
    TimeoutPolicy::default()
        .silent_after_misses(misses)
        .fail_fast(fail_fast)
        .probe_backoff(ms(5))
        .probe_backoff_max(ms(40))
}

/// Whether the state machine may go from `from` to `to`.
fn legal(t: Transition) -> bool {
    use PeerState::*;
    matches!(
        (t.from, t.to),
        (Healthy, Suspect)
            | (Healthy, Silent)
            | (Suspect, Healthy)
            | (Suspect, Silent)
            | (Silent, Probing)
            | (Silent, Healthy)
            | (Probing, Healthy)
            | (Probing, Silent)
    )
}

/// Checks a transition: legal, from the state the machine was in, to the one it is in now.
fn check(
    before: PeerState,
    t: Option<Transition>,
    h: &Health,
) -> Result<(), proptest::test_runner::TestCaseError> {
    match t {
        Some(t) => {
            prop_assert!(legal(t), "illegal transition {:?}", t);
            prop_assert_eq!(t.from, before);
            prop_assert_eq!(t.to, h.state());
        }
        None => prop_assert_eq!(h.state(), before, "state changed without a transition"),
    }
    Ok(())
}

/// One call in flight in the driven model.
#[derive(Clone, Copy, Debug)]
struct Call {
    started: Instant,
    probe: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_events_only_take_legal_transitions(
        misses in 0u32..4,
        fail_fast in any::<bool>(),
        events in prop::collection::vec((0u64..20_000, event()), 1..200),
    ) {
        let policy = health_policy(misses, fail_fast);
        let t0 = Instant::now();
        let mut h = Health::new(t0, 7);
        let mut now = t0;
        for (step_us, ev) in events {
            now += Duration::from_micros(step_us);
            let before = h.state();
            let t = match ev {
                Event::Admit => {
                    let (admit, t) = h.admit(now, &policy);
                    match admit {
                        Verdict::Probe(d) => {
                            prop_assert_eq!(before, PeerState::Silent);
                            prop_assert!(d >= policy.min && d <= policy.max);
                        }
                        Verdict::Shortened => prop_assert!(!before.is_open() && !fail_fast),
                        Verdict::FailFast => prop_assert!(!before.is_open() && fail_fast),
                        Verdict::Go => prop_assert!(before.is_open()),
                    }
                    t
                }
                Event::Response => h.on_response(now, &policy),
                Event::Deadline { started_back_us, probe } => {
                    let started = now.checked_sub(Duration::from_micros(started_back_us)).unwrap_or(t0);
                    h.on_deadline(now, started.max(t0), probe, &policy)
                }
                Event::Abandon { probe } => h.on_abandon(probe, now),
            };
            check(before, t, &h)?;
            if misses == 0 {
                prop_assert!(h.state().is_open(), "silence detection is off");
            }
        }
    }

    /// Drives the machine the way a peer does: only admitted calls end, each once, with its
    /// own start and probe flag; declaring silence interrupts every other call in flight.
    #[test]
    fn driven_like_a_peer_at_most_one_probe_is_in_flight(
        misses in 1u32..4,
        fail_fast in any::<bool>(),
        // Each step: time passes, then a new call (None) or the end of the call at an index.
        steps in prop::collection::vec((0u64..10_000, prop::option::of((any::<prop::sample::Index>(), 0u8..3))), 1..300),
    ) {
        let policy = health_policy(misses, fail_fast);
        let t0 = Instant::now();
        let mut h = Health::new(t0, 7);
        let mut now = t0;
        let mut calls: Vec<Call> = Vec::new();
        for (step_us, action) in steps {
            now += Duration::from_micros(step_us);
            let before = h.state();
            let t = match action {
                None => {
                    let (admit, t) = h.admit(now, &policy);
                    if !matches!(admit, Verdict::FailFast) {
                        calls.push(Call { started: now, probe: matches!(admit, Verdict::Probe(_)) });
                    }
                    t
                }
                Some((_, _)) if calls.is_empty() => continue,
                Some((i, how)) => {
                    let call = calls.swap_remove(i.index(calls.len()));
                    match how {
                        0 => h.on_response(now, &policy),
                        1 => h.on_deadline(now, call.started, call.probe, &policy),
                        _ => h.on_abandon(call.probe, now),
                    }
                }
            };
            check(before, t, &h)?;
            if t.is_some_and(|t| t.to == PeerState::Silent && t.from != PeerState::Probing) {
                // The peer fires its interrupts: every call still in flight is abandoned.
                for call in calls.drain(..) {
                    let before = h.state();
                    let t = h.on_abandon(call.probe, now);
                    check(before, t, &h)?;
                }
            }
            let probes = calls.iter().filter(|c| c.probe).count();
            prop_assert!(probes <= 1, "{} probes in flight", probes);
            if h.state() == PeerState::Probing {
                prop_assert_eq!(probes, 1, "probing with no probe in flight");
                if fail_fast {
                    prop_assert_eq!(calls.len(), 1, "only the probe is in flight while probing");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A silent peer that answers within `max` is readmitted by a probe, whatever its
    /// deadline was before the silence, within a bounded number of probes and time: the long
    /// probes' deadline doubles up to `max`, whatever their spacing. Probes cut short by
    /// their callers or failing at once in between do not stop it.
    #[test]
    fn a_peer_answering_within_max_is_always_readmitted(
        before_ms in 1u64..500,
        latency_ms in 1u64..=4_000,
        fail_fast in any::<bool>(),
        spacing in 1u32..=16,
        interruptions in prop::collection::vec(0u8..4, 0..8),
    ) {
        let policy = health_policy(2, fail_fast)
            .max(ms(4_000))
            .cold_start(ms(100))
            .long_probe_spacing(spacing);
        policy.validate().unwrap();
        let latency = ms(latency_ms);
        let t0 = Instant::now();
        let mut h = Health::new(t0, 7);
        h.note_deadline(ms(before_ms).clamp(policy.min, policy.max));
        h.on_deadline(t0, t0, false, &policy);
        h.on_deadline(t0, t0, false, &policy);
        prop_assert_eq!(h.state(), PeerState::Silent);
        let mut interruptions = interruptions.into_iter();
        let mut now = t0;
        for _ in 0..20_000 {
            now = now.max(h.next_probe_at());
            let (verdict, _) = h.admit(now, &policy);
            let Verdict::Probe(d) = verdict else {
                return Err(TestCaseError::fail(format!("no probe due at {:?}", now - t0)));
            };
            let t = match interruptions.next() {
                Some(0) => h.on_probe_end(now + ms(1), ProbeEnd::CallerCut, &policy),
                Some(1) => h.on_probe_end(now + ms(1), ProbeEnd::Failed, &policy),
                Some(2) => h.on_abandon(true, now + ms(1)),
                _ if d >= latency => {
                    h.on_response(now + latency, &policy);
                    prop_assert_eq!(h.state(), PeerState::Healthy);
                    // Long probes of 0.1 s doubling to 4 s, each followed by `spacing` times
                    // its deadline of short ones: under 6.4 s x (spacing + 1), once the
                    // silence is long enough for a probe at the peer's latency (past the
                    // first long probe, `LONG_PROBE_PATIENCE` times that latency).
                    let bound = ms(8_000) * (spacing + 1) + latency * LONG_PROBE_PATIENCE;
                    prop_assert!(now - t0 < bound, "{:?}", now - t0);
                    return Ok(());
                }
                _ => {
                    now += d;
                    h.on_deadline(now, now - d, true, &policy)
                }
            };
            prop_assert_eq!(t.map(|t| t.to), Some(PeerState::Silent));
            now += ms(1);
        }
        prop_assert!(false, "not readmitted after 20,000 probes");
    }
}

#[test]
fn an_overflowing_formula_is_reported_as_clamped_to_max() {
    let policy = TimeoutPolicy::default().factor(1e300).min_samples(1);
    policy.validate().unwrap();
    let (deadline, source) = policy.deadline(1, ms(10));
    assert_eq!(deadline, policy.max);
    assert_eq!(source, DeadlineSource::ClampedMax);
}
