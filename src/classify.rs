//! Outcome classification: what a call's outcome says about its peer.
//!
//! An answer is a latency sample and a heartbeat. Not every outcome is one: a connection
//! refused in 1 ms says nothing about how long a real answer takes, a dead process that
//! refuses every connection is not a healthy peer, and a burst of 503s sent in a
//! millisecond by an overloaded server would teach the window that the peer is fast just
//! when it is not. Each outcome is an [`Outcome`]: a sample (and heartbeat), an answer only
//! (a heartbeat), or a failure to reach the peer (neither).
//!
//! # Errors
//!
//! The layer asks an error classifier about each inner error (on the error path only). The
//! default, [`default_classifier`], takes an error for a transport [`Outcome::Failure`]
//! when its `source()` chain holds a connection-level [`std::io::Error`] (refused, reset,
//! aborted, not connected, broken pipe, address not available) or a message that names a
//! connect, DNS or TLS failure or a connection closed mid-call (hyper-util's
//! `client error (Connect)` and `tcp connect error`, hyper's `connection closed before
//! message completed`, tonic's `transport error`, `dns error`); any other error is
//! [`Outcome::AnswerOnly`]: the peer answered, with an application error or a status it
//! chose, so it is alive, but how fast it fails is not how fast it works. Replace it with
//! [`Builder::classify_errors`](crate::Builder::classify_errors).
//!
//! # Responses
//!
//! Successful responses are classified by a [`ClassifyResponse`] chosen through
//! [`Builder::classify_responses`](crate::Builder::classify_responses), a type parameter
//! of the layer and its services. The default, [`AllSamples`], takes every response for a
//! sample: the layer cannot know what an error response looks like for any response type,
//! and a unit type whose answer is a constant compiles to nothing, so users who do not
//! classify responses pay nothing per call and keep naming
//! [`ResponseFuture<F>`](crate::ResponseFuture) as before. For `http` services,
//! [`HttpStatus`] takes a 5xx or 429 status, or a non-zero `grpc-status` header (a gRPC
//! error sent without a body), for an answer only. A closure `Fn(&Response) -> Outcome`
//! is a classifier too.
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, BoxError, ServiceExt, Layer};
//! use tower_adaptive_timeout::{AdaptiveTimeoutLayer, Outcome};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! struct Reply { overloaded: bool }
//! let layer = AdaptiveTimeoutLayer::builder(|_: &()| "db:5432")
//!     .classify_responses(|r: &Reply| {
//!         if r.overloaded { Outcome::AnswerOnly } else { Outcome::Sample }
//!     })
//!     .build()?;
//! let handle = layer.handle();
//! let svc = layer.layer(service_fn(|()| async { Ok::<_, BoxError>(Reply { overloaded: true }) }));
//! svc.oneshot(()).await?;
//! let peer = handle.peer(&"db:5432").unwrap();
//! assert_eq!((peer.completed, peer.samples), (1, 0));
//! # Ok(()) }
//! ```

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
const TRANSPORT_MESSAGES: [&str; 7] = [
    "client error (connect)",
    "tcp connect error",
    "error trying to connect",
    "connection closed before message completed",
    "transport error",
    "dns error",
    "tls handshake",
];

/// The default classification of an inner error: [`Outcome::Failure`] for a transport
/// error in its `source()` chain (looked at down to 64 errors deep, so a chain that loops
/// back into itself ends), else [`Outcome::AnswerOnly`].
pub fn default_classifier(err: &(dyn Error + 'static)) -> Outcome {
    let transport = |e: &(dyn Error + 'static)| {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if TRANSPORT_KINDS.contains(&io.kind()) {
                return true;
            }
        }
        let message = e.to_string().to_ascii_lowercase();
        TRANSPORT_MESSAGES.iter().any(|m| message.contains(m))
    };
    if crate::error::sources(err).any(transport) {
        return Outcome::Failure;
    }
    Outcome::AnswerOnly
}

/// Decides what a successful response of type `T` says about its peer (see the
/// [module docs](self)). Chosen with
/// [`Builder::classify_responses`](crate::Builder::classify_responses); each call's future
/// holds a clone, so keep it small (a unit type or a function pointer).
pub trait ClassifyResponse<T> {
    /// The outcome `response` is.
    fn classify(&self, response: &T) -> Outcome;
}

/// Every response is a latency sample: the default, which costs nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllSamples;

impl<T> ClassifyResponse<T> for AllSamples {
    #[inline(always)]
    fn classify(&self, _: &T) -> Outcome {
        Outcome::Sample
    }
}

impl<T, F: Fn(&T) -> Outcome> ClassifyResponse<T> for F {
    fn classify(&self, response: &T) -> Outcome {
        self(response)
    }
}

/// `http` responses by status: a 5xx or a 429 (the peer is failing or shedding load), or
/// a non-zero `grpc-status` header (a gRPC error sent with the head, "trailers-only"), is
/// an [`Outcome::AnswerOnly`]; anything else a sample. Such answers come back faster
/// than real work, so as samples they pull the deadline down just when the peer
/// struggles. A gRPC status sent in trailers comes after the head and is not seen here.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpStatus;

#[cfg(feature = "http")]
impl<B> ClassifyResponse<http::Response<B>> for HttpStatus {
    fn classify(&self, response: &http::Response<B>) -> Outcome {
        let status = response.status();
        let grpc_error = response
            .headers()
            .get("grpc-status")
            .is_some_and(|s| s.as_bytes() != b"0");
        if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS || grpc_error {
            Outcome::AnswerOnly
        } else {
            Outcome::Sample
        }
    }
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
        let closed: Box<dyn Error + Send + Sync> =
            "connection closed before message completed".into();
        assert_eq!(default_classifier(&*closed), Outcome::Failure);
    }

    #[test]
    fn other_errors_are_answers() {
        let app: Box<dyn Error + Send + Sync> = "status 503: overloaded".into();
        assert_eq!(default_classifier(&*app), Outcome::AnswerOnly);
        let other = Wrapped(std::io::Error::other("bad frame"));
        assert_eq!(default_classifier(&other), Outcome::AnswerOnly);
    }

    #[cfg(feature = "http")]
    #[test]
    fn http_status_takes_server_errors_and_grpc_errors_for_answers_only() {
        let response = |status: u16, grpc: Option<&'static str>| {
            let mut r = http::Response::builder().status(status);
            if let Some(g) = grpc {
                r = r.header("grpc-status", g);
            }
            HttpStatus.classify(&r.body(()).unwrap())
        };
        for status in [500, 502, 503, 504, 429] {
            assert_eq!(response(status, None), Outcome::AnswerOnly, "{status}");
        }
        for status in [200, 204, 301, 400, 404] {
            assert_eq!(response(status, None), Outcome::Sample, "{status}");
        }
        assert_eq!(response(200, Some("14")), Outcome::AnswerOnly);
        assert_eq!(response(200, Some("0")), Outcome::Sample);
        assert_eq!(AllSamples.classify(&response), Outcome::Sample);
    }
}
