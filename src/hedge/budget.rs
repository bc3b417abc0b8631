//! The budget on extra calls: a token bucket, as gRPC's retry throttling and Finagle's
//! retry budget. Every request through the hedging service adds `max_extra_load` of a
//! token, up to `burst` tokens; every copy sent takes a whole one. Over any run of `n`
//! requests at most `max_extra_load × n + burst` copies go out, whatever the traffic's
//! shape, and a burst of slow answers cannot double the load.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Millionths of a token: the bucket's unit.
const MICROS: u64 = 1_000_000;

/// A token bucket shared by every clone of a hedging service.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Millionths of a token held now; starts empty, so copies wait for requests to earn
    /// them.
    balance: AtomicU64,
    /// Millionths each request adds (at least 1).
    deposit: u64,
    /// Most millionths the bucket holds.
    cap: u64,
}

impl Budget {
    /// A bucket earning `ratio` of a token per request (`0 < ratio <= 1`), holding at most
    /// `burst` tokens (`burst >= 1`): both validated by the caller.
    pub(crate) fn new(ratio: f64, burst: u32) -> Self {
        Budget {
            balance: AtomicU64::new(0),
            deposit: ((ratio * MICROS as f64) as u64).clamp(1, MICROS),
            cap: u64::from(burst) * MICROS,
        }
    }

    /// A request went through: it earns its share of a copy.
    pub(crate) fn deposit(&self) {
        let _ = self.balance.fetch_update(Relaxed, Relaxed, |b| {
            (b < self.cap).then(|| (b + self.deposit).min(self.cap))
        });
    }

    /// Takes a token for a copy; `false` if the budget is spent.
    pub(crate) fn withdraw(&self) -> bool {
        (self.balance)
            .fetch_update(Relaxed, Relaxed, |b| b.checked_sub(MICROS))
            .is_ok()
    }

    /// Gives back a token taken for a copy that did not go out.
    pub(crate) fn refund(&self) {
        let _ = self
            .balance
            .fetch_update(Relaxed, Relaxed, |b| Some((b + MICROS).min(self.cap)));
    }
}

#[cfg(test)]
mod tests {
    use super::Budget;

    #[test]
    fn copies_never_pass_the_ratio_plus_the_burst() {
        let budget = Budget::new(0.05, 3);
        let mut sent = 0;
        for _ in 0..10_000 {
            budget.deposit();
            if budget.withdraw() {
                sent += 1;
            }
        }
        assert_eq!(sent, 500);
        // Saved up: at most the burst.
        for _ in 0..10_000 {
            budget.deposit();
        }
        let burst = std::iter::from_fn(|| budget.withdraw().then_some(())).count();
        assert_eq!(burst, 3);
    }

    #[test]
    fn a_refund_is_capped_too() {
        let budget = Budget::new(1.0, 1);
        budget.deposit();
        budget.refund();
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
    }
}
