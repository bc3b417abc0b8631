//! The caller's deadline as a request carries it: a time from now, or a point in time.

use std::time::Duration;

use tokio::time::Instant;

/// The caller's deadline for one call: put it in an `http::Request`'s extensions. It can
/// only make the deadline shorter than the peer's adaptive one.
///
/// [`Deadline::At`] is a point in time, one budget for every attempt: under a retry layer
/// each attempt gets what is left of it, and an attempt that would start past it is refused
/// ([`Reason::BudgetSpent`](crate::Reason::BudgetSpent)) before it is sent.
/// [`Deadline::Within`] counts from when the layer sees the request, so each attempt
/// starts it anew. With [`Propagation`](crate::Propagation) on, what is left is what the
/// callee is told.
///
/// ```
/// use std::time::Duration;
/// use tokio::time::Instant;
/// use tower_adaptive_timeout::Deadline;
///
/// let mut req = http::Request::new(());
/// // 300ms for the call and every retry of it together.
/// req.extensions_mut().insert(Deadline::at(Instant::now() + Duration::from_millis(300)));
/// // 150ms per attempt.
/// let per_attempt = Deadline::within(Duration::from_millis(150));
/// # let _ = per_attempt;
/// ```
///
/// Before `Deadline::At` existed, `Deadline` was a struct holding a duration;
/// `Deadline(d)` still builds the same thing, [`Deadline::Within(d)`](Deadline::Within).
/// Code that read its field (`deadline.0`) reads
/// [`remaining`](Deadline::remaining) instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Deadline {
    /// This long from when the layer sees the request (each attempt starts it anew).
    Within(Duration),
    /// By this point in time (tokio's clock: a `std::time::Instant` converts with
    /// [`Deadline::at`]).
    At(Instant),
}

/// `Deadline(d)`, the form from before [`Deadline::At`]: [`Deadline::Within(d)`](Deadline::Within).
/// Hidden from the docs, where it would make every link to the enum ambiguous.
#[doc(hidden)]
#[allow(non_snake_case)]
pub fn Deadline(within: Duration) -> Deadline {
    Deadline::Within(within)
}

impl Deadline {
    /// A deadline at `at`: shared by every attempt of the call.
    pub fn at(at: impl Into<Instant>) -> Deadline {
        Deadline::At(at.into())
    }

    /// A deadline `within` from when the layer sees the request.
    pub fn within(within: Duration) -> Deadline {
        Deadline::Within(within)
    }

    /// How long is left at `now`: zero once a point in time has passed.
    pub fn remaining(&self, now: Instant) -> Duration {
        match *self {
            Deadline::Within(d) => d,
            Deadline::At(at) => at.saturating_duration_since(now),
        }
    }
}

impl From<Duration> for Deadline {
    fn from(within: Duration) -> Deadline {
        Deadline::Within(within)
    }
}

impl From<Instant> for Deadline {
    fn from(at: Instant) -> Deadline {
        Deadline::At(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_point_in_time_shrinks_and_a_duration_does_not() {
        let now = Instant::now();
        let at = Deadline::at(now + Duration::from_millis(300));
        let within = Deadline(Duration::from_millis(300));
        assert_eq!(within, Deadline::Within(Duration::from_millis(300)));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(at.remaining(Instant::now()), Duration::from_millis(100));
        assert_eq!(within.remaining(Instant::now()), Duration::from_millis(300));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(at.remaining(Instant::now()), Duration::ZERO);
        let std_at = Deadline::at(std::time::Instant::now());
        assert!(matches!(std_at, Deadline::At(_)));
    }
}
