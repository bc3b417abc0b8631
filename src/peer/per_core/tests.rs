//! The stripes: batching, sampling, counting without the lock, retiring.

use super::*;
use crate::peer::window::Window;
use crate::policy::TimeoutPolicy;
use tokio::time::Instant;

/// [`Stripe::defer`] on this thread's stripe: what became of the answer, and the batch
/// taken with it.
fn defer(
    stripes: &Stripes,
    latency: Duration,
    class: Option<ClassIx>,
    now: u64,
    every: u32,
) -> (Deferral, Option<Batch>) {
    let mut taken = None;
    let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    let deferral = stripes.mine().defer(nanos, class, now, every, &mut taken);
    assert_eq!(taken.is_some(), deferral == Deferral::Taken);
    (deferral, taken)
}

#[test]
fn a_quiet_stripe_hands_each_answer_over_and_a_busy_one_batches() {
    let stripes = Stripes::new();
    let ms = DEFER_NANOS;
    let first = defer(&stripes, Duration::from_millis(3), Some(2), 10 * ms, 1);
    assert_eq!(first.0, Deferral::Alone { kept: Some(1) });
    for i in 1..BATCH as u64 {
        let t = 10 * ms + i;
        let held = defer(&stripes, Duration::from_nanos(i), None, t, 1);
        assert_eq!(held.0, Deferral::Held);
    }
    let full = defer(&stripes, Duration::from_secs(1), None, 10 * ms + 100, 1);
    let full = full.1.expect("a full batch is handed over");
    assert_eq!(full.answers().count(), BATCH);
    assert_eq!(full.latest, 10 * ms + 100);
    let held = defer(&stripes, Duration::ZERO, None, 10 * ms + 200, 1);
    assert_eq!(held.0, Deferral::Held);
    let deferred: Vec<_> = stripes.take_all(11 * ms).collect();
    assert_eq!(deferred.len(), 1);
    assert_eq!(
        deferred[0].answers().collect::<Vec<_>>(),
        [Sample::from((Duration::ZERO, None))]
    );
    assert_eq!(stripes.take_all(11 * ms).count(), 0);
    // A millisecond after the last hand-over, with nothing deferred: alone again.
    let later = defer(&stripes, Duration::ZERO, None, 12 * ms, 1);
    assert_eq!(later.0, Deferral::Alone { kept: Some(1) });
}

#[test]
fn a_window_keeps_every_answer_until_it_holds_twice_what_its_quantile_needs() {
    // p99.9 needs 64 / 0.001 = 64,000 samples.
    assert_eq!(sample_every(0, 0.999), 1);
    assert_eq!(sample_every(127_999, 0.999), 1);
    assert_eq!(sample_every(128_000, 0.999), 2);
    // `k * k <= 2 * answers / needed`: 4 from 8 times what is needed, 8 from 32.
    assert_eq!(sample_every(511_999, 0.999), 2);
    assert_eq!(sample_every(512_000, 0.999), 4);
    assert_eq!(sample_every(2_048_000, 0.999), 8);
    // Never fewer samples kept than needed: `answers / k >= needed`.
    for answers in (0..40).map(|i| 1u64 << i) {
        let k = u64::from(sample_every(answers, 0.999));
        assert!(k == 1 || answers / k >= 64_000, "{answers}: {k}");
    }
    assert_eq!(sample_every(u64::MAX, 0.999), MAX_SAMPLE_EVERY);
    assert_eq!(sample_every(u64::MAX, 0.5), MAX_SAMPLE_EVERY);
    // The largest answer needs every answer.
    assert_eq!(sample_every(u64::MAX, 1.0), 1);
}

#[test]
fn a_sampled_stripe_counts_every_answer_and_keeps_one_in_the_k_it_is_given() {
    let stripes = Stripes::new();
    let t = 10 * DEFER_NANOS;
    // Per class (none, a quiet one, a busy one): samples, and the answers they stand for.
    let (mut count, mut samples, mut stood_for) = (0, [0u64; 3], [0u64; 3]);
    let mut take = |batch: Batch| {
        count += batch.count();
        for Sample { class, answers, .. } in batch.answers() {
            let c = usize::from(class.unwrap_or(0));
            // The quiet class's answers stand for themselves; one drawn one in 8, for 8.
            assert_eq!(answers, if c == 1 { 1 } else { 8 }, "class {c}");
            samples[c] += 1;
            stood_for[c] += answers;
        }
    };
    let mut alone = (0, None);
    for i in 0..8_000 {
        // Class 1 is given k = 1 (a quiet class keeps every answer), class 2 and the
        // answers without a class k = 8.
        let (class, k) = match i % 8 {
            0 => (Some(1), 1),
            1 => (Some(2), 8),
            _ => (None, 8),
        };
        match defer(&stripes, Duration::from_micros(i), class, t, k) {
            (Deferral::Alone { kept }, _) => alone = (alone.0 + 1, kept),
            (_, Some(batch)) => take(batch),
            (_, None) => {}
        }
    }
    stripes.take_all(t).for_each(&mut take);
    // The first answer went alone (nothing deferred yet), kept: it is class 1's.
    assert_eq!(alone, (1, Some(1)));
    assert_eq!(count + 1, 8_000, "every answer is handed over");
    assert_eq!(samples[1] + 1, 1_000, "every answer given k = 1 is kept");
    // 1,000 answers of class 2, 6,000 without a class, one in 8 kept at random: 125 and
    // 750 expected.
    assert!((80..170).contains(&samples[2]), "{}", samples[2]);
    assert!((620..880).contains(&samples[0]), "{}", samples[0]);
    // Each stands for the 8 answers it was drawn from.
    assert_eq!(stood_for[2], 8 * samples[2]);
    assert_eq!(stood_for[0], 8 * samples[0]);
}

/// Seconds after a shift from 2 ms to 10 ms answers (25 a millisecond for 3 s, then 5)
/// until the window's median reads the new latency, with one answer in `k` recorded
/// (`k` following the window as a busy peer's stripes do: [`sample_every`]),
/// each standing for `k` answers if `weighted`, else for itself.
fn follows_after(sampled: bool, weighted: bool) -> f64 {
    let policy = TimeoutPolicy::default().min_samples(1).quantile(0.5);
    let t0 = Instant::now();
    let mut w = Window::new(&policy, t0);
    let (mut k, mut seen) = (1u64, 0u64);
    for i in 0..120_000u64 {
        let now = t0 + Duration::from_millis(i);
        w.advance(now);
        let (per_ms, latency) = if i < 3_000 {
            (25, Duration::from_millis(2))
        } else {
            (5, Duration::from_millis(10))
        };
        for _ in 0..per_ms {
            seen += 1;
            if seen % k == 0 {
                w.record_n(latency, if weighted { k } else { 1 }, now);
            }
        }
        if sampled && i % 10 == 0 {
            k = u64::from(sample_every(w.samples(), 0.5));
        }
        if i >= 3_000 && w.quantile(0.5) >= Duration::from_millis(9) {
            return (i - 3_000) as f64 / 1e3;
        }
    }
    panic!("never followed");
}

#[test]
fn a_sampled_window_follows_a_shift_as_fast_as_one_that_keeps_every_answer() {
    let every = follows_after(false, false);
    // The new answers outnumber the 75,000 old ones 15 s after the shift.
    assert!((14.0..16.0).contains(&every), "{every} s");
    // Samples kept at a rising `k` but counted once each: the older sub-windows, drawn
    // at a lower `k`, outweigh the newer ones, and the median lags.
    let unweighted = follows_after(true, false);
    assert!(unweighted > 1.5 * every, "{unweighted} s vs {every} s");
    // Each standing for the answers it was drawn from: as fast as keeping them all.
    let weighted = follows_after(true, true);
    assert!(weighted <= 1.1 * every, "{weighted} s vs {every} s");
}

#[test]
fn an_answer_sampled_out_is_counted_without_the_lock_until_a_hand_over_is_due() {
    let stripe = Stripe::new();
    let t = 10 * DEFER_NANOS;
    // Never handed over: even an answer sampled out takes the lock, and goes alone.
    assert!(!stripe.count_unkept(t));
    let mut taken = None;
    let alone = stripe.defer(5, None, t, 1, &mut taken);
    assert_eq!(alone, Deferral::Alone { kept: Some(1) });
    {
        // Counted while another holds the lock (taking it here would never return).
        let _held = stripe.deferred.lock().unwrap();
        assert!(stripe.count_unkept(t + 10));
        assert!(stripe.count_unkept(t + 7));
        // A millisecond after the hand-over: it must take the lock and hand over.
        assert!(!stripe.count_unkept(t + DEFER_NANOS));
    }
    let batch = stripe.take(t + 20).expect("the answers counted are taken");
    assert_eq!(batch.count(), 2);
    assert_eq!(batch.answers().len(), 0, "no latency kept");
    assert_eq!(batch.latest, t + 10);
    assert!(stripe.take(t + 30).is_none(), "taken once");
}

#[test]
fn answers_counted_on_one_stripe_from_two_threads_are_each_handed_over_once() {
    const EACH: u64 = 200_000;
    let stripe = Stripe::new();
    let handed = AtomicU64::new(0);
    let answer = |i: u64, taken: &mut Option<Batch>| {
        // Three in four sampled out; a millisecond is 4,000 answers.
        match stripe.defer(i, None, i * 250, 4, taken) {
            Deferral::Held => {}
            Deferral::Alone { .. } => _ = handed.fetch_add(1, Relaxed),
            Deferral::Taken => {
                let batch = taken.take().expect("taken with the answer");
                handed.fetch_add(batch.count(), Relaxed);
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| (0..EACH).for_each(|i| answer(i, &mut None)));
        }
        // And whoever takes the peer's lock takes the stripe's answers meanwhile.
        s.spawn(|| {
            for i in 0..2_000 {
                if let Some(batch) = stripe.take(i * 100_000) {
                    handed.fetch_add(batch.count(), Relaxed);
                }
            }
        });
    });
    if let Some(batch) = stripe.take(u64::MAX) {
        handed.fetch_add(batch.count(), Relaxed);
    }
    assert_eq!(handed.load(Relaxed), 2 * EACH);
}

#[test]
fn retiring_needs_every_stripe_idle_and_refuses_later_calls() {
    let stripes = Stripes {
        stripes: Striped::with_stripes(4, Stripe::new),
        retired: AtomicBool::new(false),
    };
    let mine = stripes.enter().expect("admitted");
    assert_eq!(stripes.in_flight(), 1);
    assert!(!stripes.retire(), "a call is in flight");
    assert!(!stripes.is_retired());
    stripes.leave(mine);
    assert!(stripes.retire());
    assert!(stripes.is_retired());
    assert_eq!(stripes.enter(), None);
    assert_eq!(stripes.in_flight(), 0);
}
