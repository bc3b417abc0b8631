//! Outcome classification: what an inner service's error says about its peer.
//!
//! An answer is a latency sample and a heartbeat. An error is not always one: a connection
//! refused in 1 ms says nothing about how long a real answer takes, and a dead process
//! that refuses every connection is not a healthy peer. The layer asks a classifier about
//! each inner error (only errors: successful answers always count as samples, so calls that
//! succeed pay nothing for it).
//!
//! The default, [`default_classifier`], takes an error for a transport [`Outcome::Failure`]
//! when its `source()` chain holds a connection-level [`std::io::Error`] (refused, reset,
//! aborted, not connected, broken pipe, address not available) or a message that names a
//! connect, DNS or TLS failure (hyper-util's `client error (Connect)` and
//! `tcp connect error`, tonic's `transport error`, `dns error`); any other error is
//! [`Outcome::AnswerOnly`]: the peer answered, with an application error or a status it
//! chose, so it is alive, but how fast it fails is not how fast it works. Replace it with
//! [`Builder::classify_errors`](crate::Builder::classify_errors).

use std::error::Error;
use std::io::ErrorKind;
use std::sync::Arc;

/// What one outcome of a call says about its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The peer answered: a latency sample and a heartbeat.
    Sample,
    /// The peer answered, but not with a latency worth learning from (an application
    /// error, an overload status): a heartbeat only.
    AnswerOnly,
    /// The peer was not reached (connection refused or reset, DNS, TLS): neither a sample
    /// nor a heartbeat. Counted in [`PeerSnapshot::failures`](crate::PeerSnapshot::failures).
    Failure,
}

/// A shared error classifier: one per layer, called only on the error path.
#[derive(Clone)]
pub(crate) struct Classifier(Arc<ClassifyFn>);

/// The classifying function behind a [`Classifier`].
type ClassifyFn = dyn Fn(&(dyn Error + 'static)) -> Outcome + Send + Sync;

impl Classifier {
    pub(crate) fn new<C>(classify: C) -> Self
    where
        C: Fn(&(dyn Error + 'static)) -> Outcome + Send + Sync + 'static,
    {
        Classifier(Arc::new(classify))
    }

    pub(crate) fn classify(&self, err: &(dyn Error + 'static)) -> Outcome {
        (self.0)(err)
    }
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::new(default_classifier)
    }
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Classifier")
    }
}

/// io error kinds that mean the peer was not reached.
const TRANSPORT_KINDS: [ErrorKind; 6] = [
    ErrorKind::ConnectionRefused,
    ErrorKind::ConnectionReset,
    ErrorKind::ConnectionAborted,
    ErrorKind::NotConnected,
    ErrorKind::BrokenPipe,
    ErrorKind::AddrNotAvailable,
];

/// Messages (lower case) of transport errors in common clients, for errors whose chain
/// does not reach an [`std::io::Error`].
const TRANSPORT_MESSAGES: [&str; 6] = [
    "client error (connect)",
    "tcp connect error",
    "error trying to connect",
    "transport error",
    "dns error",
    "tls handshake",
];

/// The default classification of an inner error: [`Outcome::Failure`] for a transport
/// error anywhere in its `source()` chain, else [`Outcome::AnswerOnly`].
pub fn default_classifier(err: &(dyn Error + 'static)) -> Outcome {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if TRANSPORT_KINDS.contains(&io.kind()) {
                return Outcome::Failure;
            }
        }
        let message = e.to_string().to_ascii_lowercase();
        if TRANSPORT_MESSAGES.iter().any(|m| message.contains(m)) {
            return Outcome::Failure;
        }
        next = e.source();
    }
    Outcome::AnswerOnly
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("request failed")
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn transport_errors_in_the_chain_are_failures() {
        let refused = Wrapped(std::io::Error::from(ErrorKind::ConnectionRefused));
        assert_eq!(default_classifier(&refused), Outcome::Failure);
        let reset = std::io::Error::from(ErrorKind::ConnectionReset);
        assert_eq!(default_classifier(&reset), Outcome::Failure);
        let hyper: Box<dyn Error + Send + Sync> = "client error (Connect)".into();
        assert_eq!(default_classifier(&*hyper), Outcome::Failure);
    }

    #[test]
    fn other_errors_are_answers() {
        let app: Box<dyn Error + Send + Sync> = "status 503: overloaded".into();
        assert_eq!(default_classifier(&*app), Outcome::AnswerOnly);
        let other = Wrapped(std::io::Error::other("bad frame"));
        assert_eq!(default_classifier(&other), Outcome::AnswerOnly);
    }
}
