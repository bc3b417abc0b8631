//! An upper estimate of a high latency quantile from fewer samples than the quantile needs:
//! the deadline of a peer (or latency class) between its first answers and `min_samples`.
//!
//! Two upper bounds, and the larger wins (never below the slowest sample):
//!
//! * **Log-normal prediction bound.** Latencies are modelled as log-normal: the mean and
//!   spread of the log-latencies (the RFC 6298 idea of SRTT plus a multiple of RTTVAR,
//!   on a log scale), with the multiple taken from Student's t at `n - 1` degrees of
//!   freedom, so the bound widens when few samples pin the spread down (`t(0.999)` is 22.3
//!   at 3 samples, 4.3 at 10, 3.3 at 50, tending to the normal 3.09). The spread is at
//!   least [`MIN_LOG_SPREAD`], so a few identical answers do not promise identical ones.
//! * **Pareto prediction bound.** A heavy tail (Pareto) is far above any log-normal fit:
//!   the largest half of the samples, over the middle one, are read as a Pareto tail whose
//!   index is unknown. Weissman's estimator plugs Hill's estimate of that index into the
//!   extrapolation, and is too low about half the time; on ten answers of an alpha-1.5 tail
//!   that puts 0.3% of the next answers past twice it. The bound here is that tail's
//!   prediction bound instead: the excesses' logarithms are exponential with an unknown
//!   mean, so the chance that the next answer passes `pivot × e^(t × S)` (`S` the sum of
//!   the `m` log-excesses) is exactly `(k / n) × (1 + t)^-m`, and `t` is solved for. It is
//!   Student's t of the log-normal bound carried over to the tail, and it tends to
//!   Weissman's as the excesses grow in number.
//!
//! Both are upper bounds that say as much about how few the answers are as about the peer;
//! [`Estimate::plain`] is Weissman's plug-in estimate alone, what the answers say without
//! that allowance, for the caller to tell "few answers" from "a slow peer".
//!
//! EVALUATION.md measures the false-interrupt rate of this and of the simpler candidates.

/// The smallest spread of log-latencies assumed (about +-15%): with fewer than
/// `min_samples` answers, near-identical ones say little about the next.
pub(crate) const MIN_LOG_SPREAD: f64 = 0.15;

/// Closest to 1 the estimated quantile gets: `quantile = 1` (the slowest answer) cannot be
/// extrapolated from a sample, so it is estimated as one in a million.
const MAX_Q: f64 = 1.0 - 1e-6;

/// Fewest answers above the middle one before Weissman's plug-in estimate counts as what
/// the answers say ([`Estimate::plain`]): below that, Hill's index rests on one to three
/// log-ratios and a pair of close answers reads as a light tail, a distant pair as any.
const MIN_TAIL_ANSWERS: usize = 4;

/// Two readings of a high quantile from few samples, in the samples' unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Estimate {
    /// The upper bound: positive, possibly infinite (too wide to mean anything), never NaN.
    pub(crate) upper: f64,
    /// Weissman's plug-in estimate, without allowance for how few the answers are; zero
    /// until [`MIN_TAIL_ANSWERS`] answers lie above the middle one. Never above `upper`.
    pub(crate) plain: f64,
}

/// An upper estimate of the `q` quantile of the distribution `samples` (at least two,
/// in any unit, reordered in place) were drawn from; `None` for fewer than two. A `q`
/// below the median is estimated as the median.
pub(crate) fn upper_quantile(samples: &mut [u64], q: f64) -> Option<Estimate> {
    let n = samples.len();
    if n < 2 {
        return None;
    }
    let q = q.clamp(0.5, MAX_Q);
    let logs = samples.iter().map(|&v| (v.max(1) as f64).ln());
    let mean = logs.clone().sum::<f64>() / n as f64;
    let var = logs.map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let spread = var.sqrt().max(MIN_LOG_SPREAD);
    let nf = n as f64;
    let lognormal = (mean + t_quantile(q, nf - 1.0) * spread * (1.0 + 1.0 / nf).sqrt()).exp();
    let slowest = samples.iter().copied().max().unwrap_or(0) as f64;
    let (bound, plain) = pareto_tail(samples, q);
    let upper = lognormal.max(bound).max(slowest);
    Some(Estimate {
        upper,
        plain: plain.min(upper),
    })
}

/// The Pareto prediction bound on the `q` quantile from the largest half of `samples` (at
/// least two) over the `k`-th largest, and Weissman's plug-in estimate (zero with fewer
/// than [`MIN_TAIL_ANSWERS`] above it).
fn pareto_tail(samples: &mut [u64], q: f64) -> (f64, f64) {
    let n = samples.len();
    let k = (n / 2).max(2);
    samples.sort_unstable_by(|a, b| b.cmp(a));
    let pivot = samples[k - 1].max(1) as f64;
    let excess: f64 = samples[..k - 1]
        .iter()
        .map(|&v| (v.max(1) as f64 / pivot).ln())
        .sum();
    let m = (k - 1) as f64;
    // The next answer passes the pivot with chance k / n; the quantile's share of those.
    let beyond = k as f64 / (n as f64 * (1.0 - q));
    let bound = pivot * ((beyond.powf(1.0 / m) - 1.0) * excess).exp();
    let plain = if k > MIN_TAIL_ANSWERS {
        pivot * beyond.powf(excess / m)
    } else {
        0.0
    };
    (bound, plain)
}

/// The `p` quantile of Student's t with `df` degrees of freedom (`p` in `[0.5, 1)`,
/// `df >= 1`): exact for 1 and 2, Hill's algorithm 396 (1970) above.
pub(crate) fn t_quantile(p: f64, df: f64) -> f64 {
    use std::f64::consts::PI;
    if df < 1.5 {
        return (PI * (p - 0.5)).tan();
    }
    if df < 2.5 {
        let a = 2.0 * p - 1.0;
        return a * (2.0 / (1.0 - a * a)).sqrt();
    }
    let n = df;
    let two_sided = 2.0 * (1.0 - p);
    let a = 1.0 / (n - 0.5);
    let b = 48.0 / (a * a);
    let mut c = ((20_700.0 * a / b - 98.0) * a - 16.0) * a + 96.36;
    let d = ((94.5 / (b + c) - 3.0) / b + 1.0) * (a * PI / 2.0).sqrt() * n;
    let x = d * two_sided;
    let mut y = x.powf(2.0 / n);
    if y > 0.05 + a {
        let x = normal_quantile(two_sided * 0.5);
        y = x * x;
        if n < 5.0 {
            c += 0.3 * (n - 4.5) * (x + 0.6);
        }
        c += (((0.05 * d * x - 5.0) * x - 7.0) * x - 2.0) * x + b;
        y = (((((0.4 * y + 6.3) * y + 36.0) * y + 94.5) / c - y - 3.0) / b + 1.0) * x;
        y = a * y * y;
        y = if y > 0.002 {
            y.exp() - 1.0
        } else {
            0.5 * y * y + y
        };
    } else {
        y = ((1.0 / (((n + 6.0) / (n * y) - 0.089 * d - 0.822) * (n + 2.0) * 3.0)
            + 0.5 / (n + 4.0))
            * y
            - 1.0)
            * (n + 1.0)
            / (n + 2.0)
            + 1.0 / y;
    }
    (n * y).sqrt()
}

/// The `p` quantile of the standard normal, by Acklam's rational approximation (relative
/// error below 1.2e-9), for `p` in `(0, 1)`.
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    const LOW: f64 = 0.024_25;
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_tables() {
        // Student's t, one-sided 0.999 and 0.99, from the standard tables.
        let table = [
            (0.999, 1.0, 318.309),
            (0.999, 2.0, 22.327),
            (0.999, 3.0, 10.215),
            (0.999, 4.0, 7.173),
            (0.999, 9.0, 4.297),
            (0.999, 29.0, 3.396),
            (0.999, 49.0, 3.265),
            (0.99, 5.0, 3.365),
            (0.99, 20.0, 2.528),
            (0.9, 10.0, 1.372),
        ];
        for (p, df, want) in table {
            let got = t_quantile(p, df);
            assert!(
                (got - want).abs() / want < 2e-3,
                "t({p}, {df}) = {got}, want {want}"
            );
        }
        assert!((normal_quantile(0.999) - 3.090_232).abs() < 1e-5);
        assert!((normal_quantile(0.5)).abs() < 1e-9);
        assert!((normal_quantile(0.001) + 3.090_232).abs() < 1e-5);
    }

    #[test]
    fn identical_answers_converge_towards_their_value() {
        let at = |n: usize| upper_quantile(&mut vec![20_000; n], 0.999).unwrap().upper / 1e3;
        assert!(upper_quantile(&mut [20_000], 0.999).is_none());
        // 20ms answers: the bound falls as the count rises, never below the answers.
        let (three, ten, fifty) = (at(3), at(10), at(50));
        assert!(
            three > ten && ten > fifty && fifty > 20.0,
            "{three} {ten} {fifty}"
        );
        assert!(ten < 45.0 && fifty < 35.0, "{ten} {fifty}");
    }

    #[test]
    fn a_heavy_tail_keeps_the_estimate_high() {
        // Ten answers: nine at 10ms, one at 400ms. Both bounds see the slow one.
        let mut s = vec![10_000; 9];
        s.push(400_000);
        let light = upper_quantile(&mut [10_000; 10], 0.999).unwrap().upper;
        let heavy = upper_quantile(&mut s, 0.999).unwrap().upper;
        assert!(
            heavy >= 400_000.0 && heavy > 10.0 * light,
            "{heavy} vs {light}"
        );
    }

    #[test]
    fn few_answers_of_a_heavy_tail_rarely_end_past_twice_the_bound() {
        // 4,000 histories of ten answers from a Pareto tail (min 10ms, alpha 1.5): the mean
        // chance that the next answer outlives twice the bound (the default formula),
        // P(X > d) = (10ms / d)^1.5. Weissman's plug-in estimate alone gives 0.3%.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut uniform = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (mut bound, mut plain, histories) = (0.0, 0.0, 4_000);
        for _ in 0..histories {
            let mut s: Vec<u64> = (0..10)
                .map(|_| (10_000.0 * uniform().powf(-1.0 / 1.5)).min(4e9) as u64)
                .collect();
            let e = upper_quantile(&mut s, 0.999).unwrap();
            let past = |q: f64| (10_000.0 / (2.0 * q + 5_000.0)).min(1.0).powf(1.5);
            bound += past(e.upper);
            // Tail answers are 4 of 10: the plug-in estimate counts.
            assert!(e.plain > 0.0 && e.plain <= e.upper, "{e:?}");
            plain += past(e.plain);
        }
        let (bound, plain) = (bound / histories as f64, plain / histories as f64);
        assert!(bound < 0.000_6, "bound: {bound}");
        assert!(plain > 0.002, "plug-in: {plain}");
    }

    #[test]
    fn any_input_gives_a_positive_estimate() {
        for samples in [vec![0, 0], vec![u64::MAX, 0], vec![1, u64::MAX, 7]] {
            for q in [0.01, 0.5, 0.999, 1.0] {
                let e = upper_quantile(&mut samples.clone(), q).unwrap();
                // Possibly infinite, never NaN.
                assert!(e.upper > 0.0 && e.plain >= 0.0, "{samples:?} at {q}: {e:?}");
                assert!(e.plain <= e.upper, "{samples:?} at {q}: {e:?}");
            }
        }
    }
}
