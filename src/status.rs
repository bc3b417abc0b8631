//! Status codes for interrupted calls: gRPC's (feature `tonic`) and HTTP's (feature
//! `http`), so a caller (or a proxy's client) learns what happened from the code alone.
//!
//! | reason | gRPC | HTTP |
//! |---|---|---|
//! | the call's deadline ran out, the caller's budget was spent, a body went idle ([`is_timeout`](Interrupted::is_timeout)) | `DEADLINE_EXCEEDED` | 504 Gateway Timeout |
//! | the peer is silent, or any other refusal ([`is_silence`](Interrupted::is_silence), [`is_refusal`](Interrupted::is_refusal)) | `UNAVAILABLE` | 503 Service Unavailable |
//! | interrupted by hand, the layer shutting down, a hedged copy that lost ([`is_cancel`](Interrupted::is_cancel)) | `CANCELLED` | 503 Service Unavailable |
//!
//! The message is the error's `Display`: what happened, with no source paths.
//!
//! A tonic client reports any error of the service under it as `Unknown` unless the error
//! is a `tonic::Status`: map the layer's errors with [`grpc_error`] so the caller sees the
//! code (the `Status`'s source is still the [`Interrupted`], for
//! [`Interrupted::find`]):
//!
//! ```
//! # #[cfg(all(feature = "tonic", feature = "http"))]
//! # fn stack<S>(channel: S) -> Result<(), tower::BoxError>
//! # where S: tower::Service<http::Request<tonic::body::Body>> {
//! use tower::ServiceBuilder;
//! use tower_adaptive_timeout::{status, AdaptiveTimeoutLayer};
//!
//! let layer = AdaptiveTimeoutLayer::http().build()?;
//! let svc = ServiceBuilder::new()
//!     .map_err(status::grpc_error)
//!     .layer(layer)
//!     .service(channel);
//! # let _ = svc; Ok(()) }
//! ```

use crate::error::{BoxError, Interrupted};

/// The gRPC status code for `interrupted`.
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub fn grpc_code(interrupted: &Interrupted) -> tonic::Code {
    match kind(interrupted) {
        Kind::Cancel => tonic::Code::Cancelled,
        Kind::Timeout => tonic::Code::DeadlineExceeded,
        Kind::Unavailable => tonic::Code::Unavailable,
    }
}

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
impl From<Interrupted> for tonic::Status {
    /// The status with [`grpc_code`], the error's `Display` as its message and the error
    /// as its source.
    fn from(interrupted: Interrupted) -> tonic::Status {
        let mut status = tonic::Status::new(grpc_code(&interrupted), interrupted.to_string());
        status.set_source(std::sync::Arc::new(interrupted));
        status
    }
}

/// For `map_err` over the layer under a tonic client: an error with an [`Interrupted`] in
/// its source chain (see [`Interrupted::find`]) becomes the `tonic::Status` for it (which tonic hands the caller as
/// it is); any other error is returned untouched.
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub fn grpc_error(err: BoxError) -> BoxError {
    match Interrupted::find(&*err) {
        Some(interrupted) => Box::new(tonic::Status::from(interrupted.clone())),
        None => err,
    }
}

/// The HTTP status a proxy answers with for `interrupted`: 504 for a timeout, 503 for the
/// rest.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub fn http_status(interrupted: &Interrupted) -> http::StatusCode {
    match kind(interrupted) {
        Kind::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
        Kind::Unavailable | Kind::Cancel => http::StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// For a proxy, after tower-http's `Timeout::with_status_code`: an error with an
/// [`Interrupted`] in its source chain (see [`Interrupted::find`]) becomes a response with [`http_status`] and an
/// empty body; any other error is returned untouched. Use it with
/// `ServiceBuilder::map_result(|r| r.or_else(status::http_response))`.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub fn http_response<B: Default>(err: BoxError) -> Result<http::Response<B>, BoxError> {
    let Some(interrupted) = Interrupted::find(&*err) else {
        return Err(err);
    };
    let mut response = http::Response::new(B::default());
    *response.status_mut() = http_status(interrupted);
    Ok(response)
}

/// The three answers a caller may act on.
enum Kind {
    /// Somebody stopped the call on purpose.
    Cancel,
    /// A deadline ran out.
    Timeout,
    /// The peer cannot be reached now: try another, or later.
    Unavailable,
}

fn kind(interrupted: &Interrupted) -> Kind {
    if interrupted.is_cancel() {
        Kind::Cancel
    } else if interrupted.is_timeout() {
        Kind::Timeout
    } else {
        Kind::Unavailable
    }
}
