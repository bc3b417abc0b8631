//! Broken invariants: loud in debug builds, a safe fallback in release.
//!
//! A branch the code's invariants rule out (ARCHITECTURE.md lists them) still returns a
//! value in release builds, since no request may make the layer panic. In debug builds,
//! where the test suite runs, reaching one panics, so a broken invariant is found, not
//! hidden behind its fallback.

/// `fallback`, after panicking in debug builds: `what` names the invariant that broke.
#[track_caller]
pub(crate) fn broken<T>(what: &str, fallback: T) -> T {
    if cfg!(debug_assertions) {
        panic!("broken invariant: {what}");
    }
    fallback
}

#[cfg(test)]
mod tests {
    #[test]
    #[should_panic(expected = "broken invariant: a slot is its own")]
    fn a_broken_invariant_panics_in_debug_builds() {
        super::broken("a slot is its own", ());
    }
}
