//! A layer's account of the heap its latency histories hold, against its memory budget
//! ([`TimeoutPolicy::memory_budget`](super::TimeoutPolicy::memory_budget)).
//!
//! A history charges its last answers when it first keeps one and its histograms (all of
//! them, at their most: `histogram_bytes()`) when it becomes busy, and gives both back when
//! it frees or drops them; a charge that would pass the budget is refused and leaves the
//! bytes it wanted behind, for the table to make room by letting its idlest peers go. A
//! charge is an atomic add on a layer-wide word, made only as a history starts keeping
//! answers or fills its window: never per call.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// The account a policy's histories charge, shared by a layer's peers; a policy outside
/// any layer has none and charges nothing.
#[derive(Clone, Default)]
pub(crate) struct Ledger(Option<Arc<Account>>);

/// Bytes held against the budget, and what a refused charge wanted.
#[derive(Debug)]
pub(crate) struct Account {
    used: AtomicUsize,
    limit: AtomicUsize,
    /// One more than the largest charge refused since the table last made room (0: none
    /// refused; 1: the budget was lowered below what is held).
    wanted: AtomicUsize,
}

impl Account {
    /// An account of nothing held, allowing `limit` bytes.
    pub(crate) fn new(limit: usize) -> Arc<Account> {
        Arc::new(Account {
            used: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            wanted: AtomicUsize::new(0),
        })
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// The budget now.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    /// Makes `limit` the budget; if less than is held, room is wanted at once.
    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Relaxed);
        if self.used() > limit {
            self.wanted.fetch_max(1, Relaxed);
        }
    }

    /// Whether a charge was refused since room was last made: one load.
    #[inline]
    pub(crate) fn short(&self) -> bool {
        self.wanted.load(Relaxed) != 0
    }

    /// Takes the bytes refused charges wanted (`None`: none was refused), for one caller
    /// to make room.
    pub(crate) fn take_wanted(&self) -> Option<usize> {
        self.wanted.swap(0, Relaxed).checked_sub(1)
    }

    /// Whether `bytes` more fit within the budget.
    pub(crate) fn fits(&self, bytes: usize) -> bool {
        self.used().saturating_add(bytes) <= self.limit()
    }

    fn try_charge(&self, bytes: usize) -> bool {
        let limit = self.limit();
        let charged = self.used.fetch_update(Relaxed, Relaxed, |used| {
            used.checked_add(bytes).filter(|&after| after <= limit)
        });
        if charged.is_err() {
            self.wanted.fetch_max(bytes.saturating_add(1), Relaxed);
        }
        charged.is_ok()
    }
}

impl Ledger {
    /// A ledger charging `account`.
    pub(crate) fn new(account: Arc<Account>) -> Ledger {
        Ledger(Some(account))
    }

    /// Charges `bytes`; `false` (nothing charged, the want noted) if they would pass the
    /// budget. Always `true` without an account.
    pub(crate) fn try_charge(&self, bytes: usize) -> bool {
        self.0.as_ref().is_none_or(|a| a.try_charge(bytes))
    }

    /// Gives back `bytes` charged before.
    pub(crate) fn release(&self, bytes: usize) {
        if let Some(account) = &self.0 {
            account.used.fetch_sub(bytes, Relaxed);
        }
    }
}

/// Policies compare equal whatever layer accounts their histories.
impl PartialEq for Ledger {
    fn eq(&self, _: &Ledger) -> bool {
        true
    }
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(a) => write!(f, "{} of {} bytes", a.used(), a.limit()),
            None => f.write_str("none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_past_the_budget_is_refused_and_wanted() {
        let account = Account::new(100);
        let ledger = Ledger::new(account.clone());
        assert!(ledger.try_charge(60));
        assert!(!ledger.try_charge(60), "120 > 100");
        assert_eq!(account.used(), 60);
        assert!(account.short());
        assert_eq!(account.take_wanted(), Some(60));
        assert_eq!(account.take_wanted(), None);
        assert!(!account.short());
        ledger.release(60);
        assert!(ledger.try_charge(100));
        assert!(!ledger.try_charge(usize::MAX), "no overflow");
        assert!(
            Ledger::default().try_charge(usize::MAX),
            "no account, no bound"
        );
    }
}
