//! How the error reads: durations, reasons, the whole message.

use super::*;

#[test]
fn human_durations_read_naturally() {
    let h = |d| Human(d).to_string();
    assert_eq!(h(Duration::from_millis(1200)), "1.2s");
    assert_eq!(h(Duration::from_millis(250)), "250ms");
    assert_eq!(h(Duration::from_micros(40)), "40us");
    assert_eq!(h(Duration::from_micros(12_345)), "12.3ms");
}

#[test]
fn display_reads_like_a_log_line() {
    let here = Location::caller();
    let err = Interrupted::new(
        Reason::PeerSilent {
            since: Duration::from_millis(900),
            outstanding: 4,
        },
        &"10.0.0.7:9000".into(),
        Duration::from_millis(1200),
        here,
        here,
    );
    let text = err.to_string();
    assert_eq!(
        text,
        "call to 10.0.0.7:9000 interrupted after 1.2s: peer silent since 900ms, \
         4 calls outstanding"
    );
    let long = format!("{err:#}");
    assert!(
        long.starts_with(&format!("{text} (fired at src/error/tests.rs:")),
        "{long}"
    );
    assert!(
        long.contains(", recognized at src/error/tests.rs:"),
        "{long}"
    );
    let refused = err.refused().to_string();
    assert!(refused.starts_with("call to 10.0.0.7:9000 refused: peer silent"));
}

#[test]
fn predicates_sort_the_reasons() {
    let here = Location::caller();
    let of = |reason| Interrupted::new(reason, &"p".into(), Duration::ZERO, here, here);
    let spent = of(Reason::BudgetSpent).refused();
    assert!(spent.is_timeout() && spent.is_refusal() && !spent.was_sent());
    let silent = of(Reason::PeerSilent {
        since: Duration::ZERO,
        outstanding: 0,
    });
    assert!(silent.is_silence() && silent.was_sent() && !silent.is_timeout());
    assert!(of(Reason::Shutdown).is_cancel());
    assert!(of(Reason::Manual("x".into())).is_cancel());
    // A hedge's losing copy lost to an answer: a cancel, nothing to try again.
    let loser = of(Reason::Hedged);
    assert!(loser.is_cancel() && !loser.is_unanswered() && !loser.is_timeout());
    assert!(silent.is_unanswered() && !spent.is_unanswered());
}

#[test]
fn find_walks_the_source_chain() {
    #[derive(Debug)]
    struct Wrapper(Interrupted);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }
    let here = Location::caller();
    let inner = Interrupted::new(Reason::Shutdown, &"p".into(), Duration::ZERO, here, here);
    let boxed: Box<dyn Error + Send + Sync> = Box::new(Wrapper(inner));
    assert_eq!(Interrupted::find(&*boxed).unwrap().peer(), "p");
    let other: Box<dyn Error + Send + Sync> = "plain".into();
    assert!(Interrupted::find(&*other).is_none());
}

#[test]
fn find_looks_down_to_max_source_depth() {
    /// Links down to an end whose source is an `Interrupted`.
    #[derive(Debug)]
    enum Chain {
        Link(Box<Chain>),
        End(Interrupted),
    }
    impl fmt::Display for Chain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("link")
        }
    }
    impl Error for Chain {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            match self {
                Chain::Link(next) => Some(&**next),
                Chain::End(interrupted) => Some(interrupted),
            }
        }
    }
    let here = Location::caller();
    let chain = |depth| {
        let end = Interrupted::new(Reason::Shutdown, &"p".into(), Duration::ZERO, here, here);
        (0..depth).fold(Chain::End(end), |c, _| Chain::Link(Box::new(c)))
    };
    assert_eq!(MAX_SOURCE_DEPTH, 64, "the figure the docs give");
    // `n` links, the end, then the `Interrupted`: the `n + 2`-th error of the chain.
    assert!(Interrupted::find(&chain(MAX_SOURCE_DEPTH - 2)).is_some());
    assert!(Interrupted::find(&chain(MAX_SOURCE_DEPTH - 1)).is_none());
    assert_eq!(sources(&chain(1_000)).count(), MAX_SOURCE_DEPTH);
}

/// An error that wraps another, saying `what`.
#[derive(Debug)]
struct Wrap(&'static str, BoxError);
impl fmt::Display for Wrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
impl Error for Wrap {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.1)
    }
}

#[tokio::test(start_paused = true)]
async fn the_stacks_own_timeouts_are_told_from_other_errors() {
    let of = |e: BoxError| is_stack_timeout(&*Box::new(Wrap("transport error", e)));
    let elapsed = tokio::time::timeout(Duration::ZERO, std::future::pending::<()>());
    assert!(of(Box::new(elapsed.await.unwrap_err())));
    let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "connection lost");
    assert!(of(Box::new(io)));
    for message in [
        "Timeout expired",
        "request timed out",
        "DEADLINE HAS ELAPSED",
    ] {
        assert!(of(message.into()), "{message}");
    }
    #[cfg(feature = "tonic")]
    assert!(of(Box::new(tonic::TimeoutExpired(()))));
    let io = std::io::Error::other("request timed out, said the peer");
    for other in [
        "the peer's own error reply".into(),
        "timeout expired below".into(),
        "timeout".into(),
        BoxError::from(io),
    ] {
        assert!(!of(other));
    }
}
