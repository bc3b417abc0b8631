//! The health state machine, driven by hand: events in, verdicts and transitions out.

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn two_independent_misses_make_a_peer_silent() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = Health::new(t0, 7);
    let t = h
        .on_deadline(t0 + ms(100), t0 + ms(1), false, &policy)
        .unwrap();
    assert_eq!((t.from, t.to), (PeerState::Healthy, PeerState::Suspect));
    let t = h
        .on_deadline(t0 + ms(110), t0 + ms(2), false, &policy)
        .unwrap();
    assert_eq!(t.to, PeerState::Silent);
    let probe_at = h.next_probe_at();
    assert!(probe_at >= t0 + ms(110) + policy.probe_backoff);
    assert!(probe_at <= t0 + ms(110) + policy.probe_backoff * 5 / 4);
}

#[test]
fn a_miss_overtaken_by_an_answer_is_the_tail() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = Health::new(t0, 7);
    assert!(h.on_response(t0 + ms(50), &policy).is_none());
    // Started before the answer at 50ms: not independent.
    assert!(h
        .on_deadline(t0 + ms(100), t0 + ms(10), false, &policy)
        .is_none());
    assert_eq!(h.state(), PeerState::Healthy);
}

#[test]
fn probes_go_one_at_a_time_and_back_off() {
    let policy = TimeoutPolicy::default()
        .probe_backoff(ms(100))
        .probe_backoff_max(ms(300));
    let t0 = Instant::now();
    let mut h = Health::new(t0, 7);
    h.on_deadline(t0, t0, false, &policy);
    h.on_deadline(t0, t0, false, &policy);
    assert_eq!(h.state(), PeerState::Silent);
    assert_eq!(h.admit(t0 + ms(50), &policy).0, Verdict::FailFast);
    let at = h.next_probe_at();
    assert!(matches!(h.admit(at, &policy).0, Verdict::Probe(_)));
    assert_eq!(h.admit(at, &policy).0, Verdict::FailFast);
    h.on_deadline(at + ms(10), at, true, &policy);
    assert_eq!(h.state(), PeerState::Silent);
    let wait = h.next_probe_at() - (at + ms(10));
    assert!(wait >= ms(200) && wait <= ms(250), "{wait:?}");
    let at = h.next_probe_at();
    assert!(matches!(h.admit(at, &policy).0, Verdict::Probe(_)));
    h.on_deadline(at, at, true, &policy);
    let wait = h.next_probe_at() - at;
    assert!(wait >= ms(300) && wait <= ms(375), "capped: {wait:?}");
    let at = h.next_probe_at();
    h.admit(at, &policy);
    let t = h.on_response(at + ms(1), &policy).unwrap();
    assert_eq!((t.from, t.to), (PeerState::Probing, PeerState::Healthy));
}

#[test]
fn an_abandoned_probe_frees_the_slot_but_keeps_the_backoff() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = Health::new(t0, 7);
    h.on_deadline(t0, t0, false, &policy);
    h.on_deadline(t0, t0, false, &policy);
    let at = h.next_probe_at();
    assert!(matches!(h.admit(at, &policy).0, Verdict::Probe(_)));
    h.on_abandon(true, at + ms(1));
    assert_eq!(h.state(), PeerState::Silent);
    assert_eq!(h.admit(at + ms(2), &policy).0, Verdict::FailFast);
    let next = h.next_probe_at();
    assert!(next >= at + ms(1) + policy.probe_backoff, "{:?}", next - at);
    assert!(matches!(h.admit(next, &policy).0, Verdict::Probe(_)));
}

/// Silent at `t0`, having answered with a 25ms deadline before.
fn silent(policy: &TimeoutPolicy, t0: Instant) -> Health {
    let mut h = Health::new(t0, 7);
    h.note_deadline(ms(25));
    h.on_deadline(t0, t0, false, policy);
    h.on_deadline(t0, t0, false, policy);
    assert_eq!(h.state(), PeerState::Silent);
    h
}

#[test]
fn probes_alternate_a_long_deadline_that_doubles_with_short_ones() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = silent(&policy, t0);
    let mut deadlines = Vec::new();
    let mut now = t0;
    for _ in 0..400 {
        now = h.next_probe_at();
        let Verdict::Probe(d) = h.admit(now, &policy).0 else {
            panic!("no probe at {now:?}")
        };
        deadlines.push(d.as_millis());
        now += d;
        h.on_deadline(now, now - d, true, &policy);
    }
    // The first is long (cold start), then short ones at the quantile the deadline from
    // before the silence came from ((25 - 5) / 2 ms), until long_probe_spacing times the
    // long one has passed; the next long one would double, but stays at cold start while
    // the silence is under 100 s.
    assert_eq!(deadlines[0], 1000);
    assert_eq!(deadlines[1], 10);
    let second_long = deadlines.iter().skip(1).position(|d| *d > 10).unwrap() + 1;
    assert_eq!(deadlines[second_long], 1000);
    assert!(deadlines[1..second_long].iter().all(|d| *d == 10));
    assert!(now >= t0, "{now:?}");
}

#[test]
fn no_probe_waits_longer_than_cold_start_or_a_hundredth_of_the_silence() {
    // The default: none longer than `cold_start` in the first 100 s; and a `cold_start`
    // short enough that a hundredth of the silence outgrows it after 20 s.
    for cold_start in [ms(1_000), ms(200)] {
        let policy = TimeoutPolicy::default().cold_start(cold_start);
        let t0 = Instant::now();
        let mut h = silent(&policy, t0);
        // Busy callers: a probe as soon as one is due, every one running out.
        let mut now = t0;
        let mut longest = Duration::ZERO;
        while now < t0 + Duration::from_secs(99) {
            now = h.next_probe_at();
            let Verdict::Probe(d) = h.admit(now, &policy).0 else {
                panic!("no probe at {:?}", now - t0)
            };
            let silence = now - t0;
            assert!(
                d <= cold_start.max(silence / 100),
                "{d:?} after {silence:?}"
            );
            longest = longest.max(d);
            now += d;
            h.on_deadline(now, now - d, true, &policy);
        }
        match cold_start == ms(1_000) {
            true => assert_eq!(longest, cold_start),
            false => assert!(longest > cold_start, "{longest:?}"),
        }
    }
}

#[test]
fn long_probes_stay_at_the_first_until_the_silence_is_a_hundred_times_longer() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = silent(&policy, t0);
    // A quiet peer: a call every 10 s, each one a probe.
    let mut longest = Vec::new();
    for minute in 1..=70u64 {
        let mut now = t0 + Duration::from_secs(60 * (minute - 1));
        let mut top = Duration::ZERO;
        while now < t0 + Duration::from_secs(60 * minute) {
            now = now.max(h.next_probe_at());
            let Verdict::Probe(d) = h.admit(now, &policy).0 else {
                panic!("no probe at {:?}", now - t0)
            };
            top = top.max(d);
            now += d;
            h.on_deadline(now, now - d, true, &policy);
            now += Duration::from_secs(10);
        }
        longest.push(top);
    }
    // Cold start (1 s) for the first 100 s, then at most a 100th of the silence:
    // `max` after 50 minutes.
    assert_eq!(longest[0], ms(1_000));
    for (minute, d) in (1..).zip(&longest) {
        let cap = Duration::from_secs(60 * minute) / LONG_PROBE_PATIENCE;
        assert!(*d <= cap.max(ms(1_000)), "minute {minute}: {longest:?}");
    }
    assert_eq!(longest[55..].iter().max(), Some(&policy.max));
}

#[test]
fn a_failed_probe_makes_the_next_one_long() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = silent(&policy, t0);
    let at = h.next_probe_at();
    assert_eq!(h.admit(at, &policy).0, Verdict::Probe(ms(1000)));
    h.on_deadline(at + ms(1000), at, true, &policy);
    let at = h.next_probe_at();
    // Short: the p99.9 the 25 ms deadline came from, (25 - 5) / 2.
    assert_eq!(h.admit(at, &policy).0, Verdict::Probe(ms(10)));
    h.on_probe_end(at + ms(1), ProbeEnd::Failed, &policy);
    // Long at once, at cold start while the silence is under 100 s.
    let at = h.next_probe_at();
    assert_eq!(h.admit(at, &policy).0, Verdict::Probe(ms(1000)));
}

#[test]
fn a_probe_cut_by_its_caller_frees_the_slot() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = silent(&policy, t0);
    let at = h.next_probe_at();
    assert!(matches!(h.admit(at, &policy).0, Verdict::Probe(_)));
    let t = h
        .on_probe_end(at + ms(5), ProbeEnd::CallerCut, &policy)
        .unwrap();
    assert_eq!((t.from, t.to), (PeerState::Probing, PeerState::Silent));
    assert!(matches!(
        h.admit(h.next_probe_at(), &policy).0,
        Verdict::Probe(_)
    ));
}

#[test]
fn fail_fast_off_probes_one_call_and_shortens_the_rest() {
    let policy = TimeoutPolicy::default().fail_fast(false);
    let t0 = Instant::now();
    let mut h = silent(&policy, t0);
    assert_eq!(h.admit(t0, &policy).0, Verdict::Shortened);
    let at = h.next_probe_at();
    assert!(matches!(h.admit(at, &policy).0, Verdict::Probe(_)));
    assert_eq!(h.admit(at, &policy).0, Verdict::Shortened);
    let t = h.on_response(at + ms(20), &policy).unwrap();
    assert_eq!(t.to, PeerState::Healthy);
}

#[test]
fn turning_detection_off_releases_a_silent_peer() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = silent(&policy, t0);
    let off = policy.clone().silent_after_misses(0);
    let t = h.release_if_detection_off(&off).unwrap();
    assert_eq!(t.to, PeerState::Healthy);
    let mut h = silent(&policy, t0);
    assert_eq!(h.admit(t0, &off).0, Verdict::Go);
    assert_eq!(h.state(), PeerState::Healthy);
}

#[test]
fn a_straggler_is_cut_after_a_deadline_without_answers_or_at_its_cap() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = Health::new(t0, 7);
    let d = ms(40);
    // No answer since the call started: cut at its deadline, as ever.
    assert_eq!(h.cut_at(t0, t0 + ms(1), d, &policy), Some(t0 + ms(41)));
    // The peer answered since: held a deadline past its last answer, each time it answers.
    h.on_response(t0 + ms(30), &policy);
    assert_eq!(h.cut_at(t0, t0 + ms(1), d, &policy), Some(t0 + ms(70)));
    h.on_response(t0 + ms(900), &policy);
    assert_eq!(h.cut_at(t0, t0 + ms(1), d, &policy), Some(t0 + ms(940)));
    h.on_response(t0 + ms(980), &policy);
    // Up to the cap: max(2 x 40 ms, cold_start) = 1 s after its start.
    assert_eq!(h.cut_at(t0, t0 + ms(1), d, &policy), Some(t0 + ms(1_001)));
    // A slow peer's cap is 2 deadlines, within `max`.
    h.on_response(t0 + ms(3_500), &policy);
    assert_eq!(h.cut_at(t0, t0, ms(2_000), &policy), Some(t0 + ms(4_000)));
    let short = policy.clone().max(ms(1_000));
    assert_eq!(h.cut_at(t0, t0, ms(700), &short), Some(t0 + ms(1_000)));
    let longest = policy.clone().max(crate::MAX_DEADLINE);
    let day = crate::MAX_DEADLINE;
    assert_eq!(h.cut_at(t0, t0, day, &longest), Some(t0 + day));
}

#[test]
fn min_silence_holds_every_call_until_the_peer_said_nothing_that_long() {
    let policy = TimeoutPolicy::default().min_silence(ms(350));
    let t0 = Instant::now();
    let mut h = Health::new(t0, 7);
    assert_eq!(
        h.cut_at(t0, t0 + ms(1), ms(40), &policy),
        Some(t0 + ms(351))
    );
    h.on_response(t0 + ms(100), &policy);
    assert_eq!(
        h.cut_at(t0, t0 + ms(1), ms(40), &policy),
        Some(t0 + ms(450))
    );
    // A silent peer's calls are cut at once (its interrupt reached the others).
    h.on_deadline(t0 + ms(500), t0 + ms(101), false, &policy);
    h.on_deadline(t0 + ms(500), t0 + ms(102), false, &policy);
    assert_eq!(h.state(), PeerState::Silent);
    assert_eq!(h.cut_at(t0, t0 + ms(1), ms(40), &policy), None);
}

#[test]
fn a_short_probe_waits_the_quantile_its_deadline_came_from() {
    // 100 ms = p99.9 30 ms x 3 + 10 ms: a peer back as it was answers within 30 ms.
    let policy = TimeoutPolicy::default().factor(3.0).margin(ms(10));
    let t0 = Instant::now();
    let mut h = Health::new(t0, 7);
    h.note_deadline(ms(100));
    h.on_deadline(t0, t0, false, &policy);
    h.on_deadline(t0, t0, false, &policy);
    let at = h.next_probe_at();
    assert_eq!(
        h.admit(at, &policy).0,
        Verdict::Probe(ms(1000)),
        "long first"
    );
    h.on_deadline(at + ms(1000), at, true, &policy);
    let at = h.next_probe_at();
    assert_eq!(h.admit(at, &policy).0, Verdict::Probe(ms(30)));
}

/// A peer that answered at `t0`, then went quiet: two calls sent after that answer run out
/// their 40 ms deadlines and declare it silent; its probe is answered at `t0 + back`.
fn stalled(policy: &TimeoutPolicy, t0: Instant, back: Duration) -> Health {
    let mut h = Health::new(t0, 7);
    h.on_response(t0, policy);
    h.on_deadline(t0 + ms(41), t0 + ms(1), false, policy);
    h.on_deadline(t0 + ms(42), t0 + ms(2), false, policy);
    assert_eq!(h.state(), PeerState::Silent);
    let at = h.next_probe_at();
    assert!(matches!(h.admit(at, policy).0, Verdict::Probe(_)));
    assert!(at < t0 + back);
    let t = h.on_response(t0 + back, policy).expect("readmitted");
    assert_eq!(t.to, PeerState::Healthy);
    h
}

#[test]
fn a_stall_ended_by_a_probe_answer_raises_the_floor_and_the_next_stall_holds_its_calls() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = stalled(&policy, t0, ms(200));
    // 1.25 x the 200 ms the peer said nothing for.
    let t1 = t0 + ms(1_000);
    let (floor, held) = h.stalls(t1, &policy);
    assert!(floor > ms(245) && floor <= ms(250), "{floor:?}");
    assert_eq!(held, 0);
    // The next stall: the peer answers at `t1`, then nothing for 200 ms. A call sent
    // after that answer runs out its 40 ms deadline and is held, not cut at once.
    h.on_response(t1, &policy);
    let (started, asked) = (t1 + ms(1), t1 + ms(41));
    let cut = h.cut_at(asked, started, ms(40), &policy);
    let floor = h.stalls(asked, &policy).0;
    assert!(floor > ms(245), "{floor:?}");
    assert_eq!(
        cut,
        Some(started + floor),
        "held for the floor from its start"
    );
    // Nor does its run-out deadline (or a caller's) count as a miss within the floor.
    assert!(h
        .on_deadline(started + ms(40), started, false, &policy)
        .is_none());
    assert!(h
        .on_deadline(started + ms(41), started, false, &policy)
        .is_none());
    assert_eq!(h.state(), PeerState::Healthy);
    // Answered as the stall ends: the floor held it, and keeps up with the stall.
    assert!(h.on_late_answer(t1 + ms(200), started, ms(40), &policy));
    h.on_response(t1 + ms(200), &policy);
    let (after, held) = h.stalls(t1 + ms(200), &policy);
    assert_eq!(held, 1);
    assert!(after >= floor - ms(5) && after <= ms(250), "{after:?}");
    // Past the floor a quiet peer is cut, and its misses declare the silence.
    let t2 = t1 + ms(20_000);
    h.on_response(t2, &policy);
    let (started, asked) = (t2 + ms(1), t2 + ms(41));
    let (floor, _) = h.stalls(asked, &policy);
    assert!(floor > ms(40), "{floor:?}");
    let cut = h.cut_at(asked, started, ms(40), &policy);
    assert_eq!(cut, Some(started + floor));
    h.on_deadline(started + floor, started, false, &policy);
    h.on_deadline(started + floor + ms(1), started + ms(1), false, &policy);
    assert_eq!(h.state(), PeerState::Silent);
}

#[test]
fn a_silence_longer_than_cold_start_does_not_raise_the_floor() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = stalled(&policy, t0, ms(5_000));
    assert_eq!(h.stalls(t0 + ms(5_000), &policy), (Duration::ZERO, 0));
    let started = t0 + ms(5_001);
    h.on_response(started, &policy);
    let cut = h.cut_at(started + ms(40), started, ms(40), &policy);
    assert_eq!(cut, Some(started + ms(40)), "detection at the deadline");
    // A stall of up to `cold_start` does, and the floor stays within `cold_start`.
    let h = stalled(&policy, t0, ms(950));
    assert_eq!(h.stalls(t0 + ms(950), &policy).0, policy.cold_start);
}

#[test]
fn the_learned_floor_halves_every_five_minutes_without_a_stall() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let h = stalled(&policy, t0, ms(200));
    let back = t0 + ms(200);
    let floor = |after: u64| h.stalls(back + Duration::from_secs(after), &policy).0;
    assert_eq!(floor(0), ms(250));
    assert_eq!(floor(300), ms(125));
    assert_eq!(floor(600), Duration::from_micros(62_500));
    // Once below the deadline it holds nothing: detection at the deadline again.
    let started = back + ms(1_200_000);
    assert_eq!(
        h.cut_at(started + ms(40), started, ms(40), &policy),
        Some(started + ms(40))
    );
    assert!(floor(1_200) < ms(40));
}

#[test]
fn a_late_answer_with_answers_between_is_no_stall() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = Health::new(t0, 7);
    h.on_response(t0, &policy);
    // A straggler of 300 ms while the peer answered every 10 ms: the tail, not a stall.
    for k in 1..30 {
        h.on_response(t0 + ms(10 * k), &policy);
    }
    assert!(!h.on_late_answer(t0 + ms(300), t0, ms(40), &policy));
    assert_eq!(h.stalls(t0 + ms(300), &policy), (Duration::ZERO, 0));
}

#[test]
fn the_answers_that_follow_a_held_stall_are_the_stalls_too_not_the_peers_latency() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = stalled(&policy, t0, ms(200));
    // The next stall: answers until `t1`, then nothing for 200 ms; calls sent at `t1 + 1`
    // and `t1 + 50 ms` are held and answered as it ends, one after the other.
    let t1 = t0 + ms(1_000);
    h.on_response(t1, &policy);
    let end = t1 + ms(200);
    assert!(h.on_late_answer(end, t1 + ms(1), ms(40), &policy));
    h.on_response(end, &policy);
    assert!(h.on_late_answer(end + ms(5), t1 + ms(50), ms(40), &policy));
    h.on_response(end + ms(5), &policy);
    assert_eq!(h.stalls(end, &policy).1, 2);
    // A call that was also slow of itself (60 ms beyond the stall, over its 40 ms
    // deadline) waited the stall out too: its latency is no sample, but the learned floor
    // is not what held it.
    assert!(h.on_late_answer(end + ms(60), t1 + ms(100), ms(40), &policy));
    assert_eq!(h.stalls(end, &policy).1, 2);
    // Nor is one that `min_silence` held: its answer is no sample either (the deadline a
    // stall would inflate is what detects the next silence), but it is not counted.
    let floored = policy.clone().min_silence(ms(300));
    assert!(h.on_late_answer(end + ms(6), t1 + ms(50), ms(40), &floored));
    assert_eq!(h.stalls(end, &policy).1, 2);
}

#[test]
fn a_held_stall_is_marked_in_progress_and_every_answer_through_it_is_no_sample() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = stalled(&policy, t0, ms(200));
    assert_eq!(h.take_stall_change(), Some(StallMark::Ended(t0 + ms(200))));
    // The next stall: nothing answered since `t1`; a call sent then runs out its 40 ms
    // deadline within the floor: held, and the stall is in progress.
    let t1 = t0 + ms(1_000);
    h.on_response(t1, &policy);
    assert_eq!(h.on_deadline(t1 + ms(41), t1 + ms(1), false, &policy), None);
    assert_eq!(h.state(), PeerState::Healthy);
    assert_eq!(h.take_stall_change(), Some(StallMark::InProgress));
    // It ends with the first answer, whichever call it is: one sent 20 ms before.
    let end = t1 + ms(200);
    h.end_quiet(end, &policy);
    assert_eq!(h.take_stall_change(), Some(StallMark::Ended(end)));
    assert!(h.overlapped_stall(end, end - ms(20), ms(40)));
    // A call sent after the stall is the peer's latency again.
    assert!(!h.overlapped_stall(end + ms(30), end + ms(1), ms(40)));
    // The span was the stall: it raised the floor.
    assert!(h.stalls(end, &policy).0 >= ms(245));
}

/// A peer that answered in time at `t1` after a stall it learned a floor from slows down
/// for good: a call every 50 ms from `t1` takes 200 ms, past its 25 ms deadline, and each
/// runs it out and is held (`cut_at` is asked). Returns, for each answer in turn, whether
/// it was taken for one that waited out a stall (no sample).
fn slowdown(h: &mut Health, policy: &TimeoutPolicy, t1: Instant, calls: u64) -> Vec<bool> {
    let mut events: Vec<(Instant, Instant, bool)> = (0..calls)
        .flat_map(|k| {
            let started = t1 + ms(50 * k);
            [
                (started + ms(25), started, false),
                (started + ms(200), started, true),
            ]
        })
        .collect();
    events.sort_by_key(|&(at, started, answer)| (at, answer, started));
    let mut stalled = Vec::new();
    for (at, started, answer) in events {
        if answer {
            stalled.push(h.on_late_answer(at, started, ms(25), policy));
            h.on_response(at, policy);
        } else {
            h.overdue(started);
            assert!(h.cut_at(at, started, ms(25), policy) > Some(at), "held");
        }
    }
    stalled
}

#[test]
fn a_slowdown_after_a_stall_is_the_peers_latency_from_its_second_late_answer() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = stalled(&policy, t0, ms(300));
    let t1 = t0 + ms(3_000);
    h.on_response(t1, &policy);
    let floor = h.stalls(t1, &policy).0;
    assert!(floor > ms(300), "{floor:?}");
    let stalled = slowdown(&mut h, &policy, t1, 20);
    // The first answer ends a quiet span like a stall's; the next one ends another with a
    // call sent since overdue and nothing answered in time: a slowdown, not a stall. So
    // is every one after while calls are still sent (the last 200 ms of calls have none
    // sent after them to run out, and are taken for a stall's again).
    assert_eq!(stalled[..2], [true, false], "{stalled:?}");
    assert!(stalled[2..16].iter().all(|s| !s), "{stalled:?}");
    // Its gaps between answers raised no floor, and the floor held only the first.
    let end = t1 + ms(50 * 19 + 200);
    assert_eq!(h.stalls(end, &policy).1, 1);
    assert!(h.stalls(end, &policy).0 <= floor);
}

#[test]
fn stalls_in_a_row_with_answers_in_time_between_stay_out_of_the_history() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    let mut h = stalled(&policy, t0, ms(300));
    let mut t = t0 + ms(3_000);
    for _ in 0..3 {
        // Answers in time; then 300 ms of nothing: a call sent as it began runs out its
        // deadline and is held, and another sent after the previous stall too.
        h.on_response(t, &policy);
        let started = t + ms(1);
        h.overdue(started);
        assert!(h.cut_at(started + ms(25), started, ms(25), &policy) > Some(started + ms(25)));
        let end = t + ms(300);
        assert!(h.on_late_answer(end, started, ms(25), &policy), "a stall");
        h.on_response(end, &policy);
        t = end + ms(20);
    }
    assert_eq!(h.stalls(t, &policy).1, 3);
    // Without an answer in time between, a stall that follows one is a slowdown's gap.
    let started = t + ms(1);
    h.overdue(started);
    let end = t + ms(300);
    assert!(
        !h.on_late_answer(end, started, ms(25), &policy),
        "a slowdown"
    );
}

#[test]
fn a_stall_of_a_peer_whose_answers_take_longer_than_cold_start_raises_the_floor() {
    let policy = TimeoutPolicy::default();
    let t0 = Instant::now();
    // A peer with `deadline` answered at `t0`, then stalled; it is declared silent, and a
    // probe sent after that is answered at `back`. Its floor then.
    let floor = |deadline: u64, back: u64| {
        let mut h = Health::new(t0, 7);
        h.note_deadline(ms(deadline));
        h.on_response(t0, &policy);
        h.on_deadline(t0 + ms(41), t0 + ms(1), false, &policy);
        h.on_deadline(t0 + ms(42), t0 + ms(2), false, &policy);
        let at = h.next_probe_at();
        assert!(matches!(h.admit(at, &policy).0, Verdict::Probe(_)));
        h.on_response(t0 + ms(back), &policy);
        h.stalls(t0 + ms(back), &policy).0
    };
    // Answers take up to 1.5 s (a deadline of 3.02 s), and the probe sent 60 ms after its
    // last answer is one of them: quiet for 1.56 s, of which 1.5 s is the probe's own.
    assert_eq!(floor(3_020, 1_560), policy.cold_start);
    // Quiet for longer than `cold_start` beyond its 1.5 s: a silence, no floor.
    assert_eq!(floor(3_020, 2_600), Duration::ZERO);
    // A peer answering in 10 ms keeps the limit at about `cold_start`.
    assert_eq!(floor(25, 1_020), Duration::ZERO);
}
