//! The caller's deadline: how long the caller is still willing to wait, carried by the
//! request, read by the layer and passed on to the callee.
//!
//! A call's deadline is the shortest of its peer's adaptive deadline and the caller's
//! deadline: the request's [`Deadline`] extension, and the deadline headers it carries
//! (`grpc-timeout`, or a milliseconds header you name). With [`Propagation`] on, the deadline
//! the call ends up with is written back into those headers, so the callee knows when to
//! give up instead of working for an answer nobody waits for. A caller's deadline already
//! spent ends the call at once; a malformed header is ignored (with a debug event).
//!
//! The header codecs read and write the two common forms, without allocating and without
//! panicking on any input:
//!
//! * gRPC's [`GRPC_TIMEOUT`] header: [`parse_grpc_timeout`] and [`format_grpc_timeout`].
//! * A plain milliseconds header such as `x-request-timeout-ms: 250`: [`parse_millis`] and
//!   [`format_millis`].
//!
//! ```
//! use std::time::Duration;
//! use tower_adaptive_timeout::propagate::{format_grpc_timeout, parse_grpc_timeout, BadBudget};
//!
//! assert_eq!(parse_grpc_timeout(b"250m"), Ok(Duration::from_millis(250)));
//! assert_eq!(parse_grpc_timeout(b"1.5S"), Err(BadBudget::NotDigits));
//! assert_eq!(format_grpc_timeout(Duration::from_millis(1500)).as_str(), "1500m");
//! ```

mod codec;
mod deadline;
#[cfg(feature = "http")]
mod http;

pub use self::codec::{
    format_grpc_timeout, format_millis, parse_grpc_timeout, parse_millis, BadBudget, GrpcTimeout,
    GRPC_TIMEOUT,
};
pub use self::deadline::Deadline;
#[cfg(feature = "http")]
pub(crate) use self::http::{read, write};

/// Which headers carry the caller's deadline in and out of `http::Request`s.
///
/// Off by default. With it on, the deadline a request's headers carry shortens the call's
/// deadline, and the deadline the call gets is written back (overwriting the header) for
/// the callee. Under `with_bodies()` (feature `http`), where the call goes on in its body
/// and a callee (a gRPC server) applies the deadline to the whole call, what is written is
/// a deadline for the whole call: the caller's, shortened by the body's `BodyDeadline`;
/// nothing if neither is set. A deadline a header cannot hold (`Duration::MAX`; past
/// 99,999,999 hours for `grpc-timeout`, past 19 digits of milliseconds for the other) is
/// no limit, and that header is not written. An inner error within a millisecond
/// of a propagated call deadline (a header holds whole milliseconds, so the stack below
/// may enforce it up to a millisecond early: a client's own timer on `grpc-timeout`, say)
/// is taken for that deadline, and the call ends as a run-out deadline
/// (`DeadlineExceeded`). Without propagation every inner error is passed on as it is, and
/// is an answer.
#[derive(Clone, Debug, Default)]
pub struct Propagation {
    grpc_timeout: bool,
    #[cfg(feature = "http")]
    millis_header: Option<::http::HeaderName>,
}

impl Propagation {
    /// No propagation: headers are neither read nor written.
    pub fn none() -> Self {
        Propagation::default()
    }

    /// Reads and writes gRPC's `grpc-timeout` header.
    pub fn grpc() -> Self {
        Propagation {
            grpc_timeout: true,
            #[cfg(feature = "http")]
            millis_header: None,
        }
    }

    /// Also reads and writes a plain milliseconds header (e.g. `x-request-timeout-ms`).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn millis_header(mut self, name: ::http::HeaderName) -> Self {
        self.millis_header = Some(name);
        self
    }

    /// Whether any header is read or written.
    pub fn is_on(&self) -> bool {
        #[cfg(feature = "http")]
        if self.millis_header.is_some() {
            return true;
        }
        self.grpc_timeout
    }
}
