//! What a request says about its own latency: its *latency class* and its *floor*.
//!
//! One host often serves routes of very different speed: a 10ms lookup and a 500ms report.
//! Keyed by host, the report is one call in thousands and the host's p99.9 is the lookup's,
//! so every report would be cut. Latency classes keep a history (and a deadline) per
//! (peer, class) while silence and health stay per peer: a miss on any class counts
//! towards the peer's silence, an answer on any class is a heartbeat.
//!
//! * **Where a class comes from.** An `http::Request`'s [`LatencyClass`] extension, else its
//!   path, grouped by template: numeric, UUID and long hex segments become one
//!   placeholder, so `/users/42/orders` and `/users/7/orders` share `/users/:id/orders`.
//!   A gRPC call's path is its method (`/pkg.Service/Method`). Other requests: a closure
//!   ([`Builder::latency_class`](crate::Builder::latency_class)) or
//!   [`HasPeer::latency_hints`](crate::HasPeer::latency_hints).
//! * **Its name.** A class is named in snapshots, explanations and errors as a peer is:
//!   its name (or path template) with control and invisible formatting characters escaped,
//!   cut with `…` at [`MAX_LABEL_BYTES`](crate::MAX_LABEL_BYTES).
//! * **How many.** At most [`Builder::max_classes`](crate::Builder::max_classes) per peer
//!   (8 by default), the first ones seen, for the peer's life in the table; calls of further
//!   classes share the peer's own history (which every call feeds).
//! * **Which deadline.** A class learns like a new peer: until its second answer it gets
//!   the longer of `cold_start` and the peer's deadline (a class of its own may be slower
//!   than the peer's usual calls, never assumed faster), then its estimate, then its
//!   quantile. Until its window holds the answers its quantile needs to be seen,
//!   `1 / (1 - quantile)` (1,000 for p99.9), it never goes below the peer's deadline: its
//!   few answers cannot have seen the rare delays of the link every route to the peer
//!   shares (a retransmission, a pause), which the peer's history, fed by every route,
//!   has. A class may lengthen its calls' deadline from its first answer; it shortens it
//!   only once it has seen its quantile.
//! * **Memory.** A class holds its last `min_samples` answers (2,000 bytes at the default
//!   policy) and, once it is busy, a window like a peer's (46,592 bytes at most): a peer
//!   holds at most `1 + max_classes` of them, each within its policy's
//!   [`max_window_bytes`](crate::TimeoutPolicy::max_window_bytes).
//! * **Floor.** [`MinDeadline`] says "this call needs at least this long": the call's
//!   deadline is raised to it, up to the policy's `max`; a caller's deadline still shortens
//!   it ([`DeadlineSource::Floor`](crate::DeadlineSource::Floor)).

use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::explain::DeadlineExplanation;

/// A request's latency class: put it in an `http::Request`'s extensions for a known-slow
/// (or known-fast) operation. It takes the place of the class the path would give.
///
/// ```
/// use tower_adaptive_timeout::LatencyClass;
///
/// let mut req = http::Request::get("http://reports.local/q?year=2024").body(()).unwrap();
/// req.extensions_mut().insert(LatencyClass::new("yearly-report"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LatencyClass(pub Cow<'static, str>);

impl LatencyClass {
    /// A class named `name`.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        LatencyClass(name.into())
    }
}

/// The least deadline a call needs: put it in an `http::Request`'s extensions. The call's
/// deadline is raised to it (up to the policy's `max`); a caller's
/// [`Deadline`](crate::Deadline) still shortens it.
///
/// ```
/// use std::time::Duration;
/// use tower_adaptive_timeout::MinDeadline;
///
/// let mut req = http::Request::get("http://reports.local/yearly").body(()).unwrap();
/// req.extensions_mut().insert(MinDeadline(Duration::from_secs(2)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MinDeadline(pub Duration);

/// Which latency class a call belongs to, borrowed from its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClassOf<'a> {
    /// A name chosen by the caller, taken as it is.
    Named(&'a str),
    /// A URI path, grouped by template: numeric, UUID and hex (8 or more digits, at least
    /// one of them 0-9) segments become `:id`.
    Path(&'a str),
}

/// What a request says about its own latency: see the [module](self) docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencyHints<'a> {
    /// The call's latency class; `None`: the peer's own history.
    pub class: Option<ClassOf<'a>>,
    /// The least deadline the call needs.
    pub floor: Option<Duration>,
}

impl<'a> LatencyHints<'a> {
    /// No class, no floor.
    pub fn new() -> Self {
        LatencyHints::default()
    }

    /// The same, in latency class `class`.
    #[must_use]
    pub fn class(mut self, class: ClassOf<'a>) -> Self {
        self.class = Some(class);
        self
    }

    /// The same, needing at least `floor`.
    #[must_use]
    pub fn floor(mut self, floor: Duration) -> Self {
        self.floor = Some(floor);
        self
    }
}

/// An `http::Request`'s hints: its [`LatencyClass`] extension, else its path; its
/// [`MinDeadline`] extension.
#[cfg(feature = "http")]
pub(crate) fn http_hints<B>(req: &http::Request<B>) -> LatencyHints<'_> {
    let ext = req.extensions();
    let class = match ext.get::<LatencyClass>() {
        Some(named) => ClassOf::Named(&named.0),
        None => ClassOf::Path(req.uri().path()),
    };
    LatencyHints {
        class: Some(class),
        floor: ext.get::<MinDeadline>().map(|m| m.0),
    }
}

/// A point-in-time reading of one latency class of a peer
/// ([`PeerSnapshot::classes`](crate::PeerSnapshot::classes)).
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ClassSnapshot {
    /// The class: its name, or its path template, bounded and escaped as a peer's name
    /// is (see [`MAX_LABEL_BYTES`](crate::MAX_LABEL_BYTES)).
    pub class: String,
    /// Samples the quantiles below are read from.
    pub samples: u64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Highest latency kept.
    pub max: Duration,
    /// The deadline new calls of the class get: its own once it has a sample, else the
    /// peer's.
    pub deadline: Duration,
    /// Why the deadline has its value (`class` is set when it is the class's own).
    pub explanation: DeadlineExplanation,
    /// Heap bytes the class's history holds.
    pub window_bytes: usize,
}

/// The placeholder a variable path segment becomes.
const PLACEHOLDER: &str = ":id";

impl<'a> ClassOf<'a> {
    /// A nonzero id for the class: equal for requests of one class (one template). Costs
    /// a walk over the path, no allocation.
    pub(crate) fn id(&self) -> u64 {
        let mut h = foldhash::fast::FixedState::with_seed(0x6c61_6e65).build_hasher();
        match self {
            ClassOf::Named(name) => {
                h.write_u8(0);
                h.write(name.as_bytes());
            }
            ClassOf::Path(path) => {
                h.write_u8(1);
                for segment in segments(path) {
                    h.write(segment.as_bytes());
                    h.write_u8(b'/');
                }
            }
        }
        h.finish() | 1
    }

    /// The class's name, for its label: the name as a string key's, or the path
    /// template. Its label (in snapshots, explanations and errors) follows a peer's rules:
    /// control and invisible formatting characters escaped, cut with `…` at
    /// [`MAX_LABEL_BYTES`](crate::MAX_LABEL_BYTES), formatting stopped at the bound so a
    /// huge path costs no more than a short one.
    pub(crate) fn name(self) -> ClassName<'a> {
        ClassName(self)
    }
}

/// A class's name: its `Debug` form is what the class is called (see [`ClassOf::name`]).
pub(crate) struct ClassName<'a>(ClassOf<'a>);

impl fmt::Debug for ClassName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = match self.0 {
            ClassOf::Named(name) => return fmt::Debug::fmt(name, f),
            ClassOf::Path(path) => path,
        };
        let mut empty = true;
        for segment in segments(path) {
            f.write_str("/")?;
            f.write_str(segment)?;
            empty = false;
        }
        if empty {
            f.write_str("/")?;
        }
        Ok(())
    }
}

/// The segments of `path`, variable ones as [`PLACEHOLDER`].
fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| if variable(s) { PLACEHOLDER } else { s })
}

/// Whether a path segment is an id rather than a name: all digits, a UUID, or a run of 8
/// or more hex digits with at least one 0-9.
fn variable(segment: &str) -> bool {
    let b = segment.as_bytes();
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    let hex =
        b.len() >= 8 && b.iter().all(u8::is_ascii_hexdigit) && b.iter().any(u8::is_ascii_digit);
    uuid || hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_numbers_uuids_and_hex_share_a_template() {
        let label = |p| format!("{:?}", ClassOf::Path(p).name());
        assert_eq!(label("/users/42/orders"), "/users/:id/orders");
        assert_eq!(
            label("/v1/objects/3f2b8c1e-9a7d-4e21-b0c3-5d6e7f8a9b0c"),
            "/v1/objects/:id"
        );
        assert_eq!(label("/blobs/9f86d081884c7d65"), "/blobs/:id");
        assert_eq!(label("/reports/yearly"), "/reports/yearly");
        assert_eq!(
            label("/cafe/deadbeef"),
            "/cafe/deadbeef",
            "words stay words"
        );
        assert_eq!(label("/"), "/");
        assert_eq!(label(""), "/");
        let id = |p| ClassOf::Path(p).id();
        assert_eq!(id("/users/42/orders"), id("/users/7/orders/"));
        assert_ne!(id("/users/42/orders"), id("/users/42"));
        assert_ne!(id("/reports"), ClassOf::Named("/reports").id());
        assert_eq!(
            id("/pkg.Svc/Get"),
            id("/pkg.Svc/Get"),
            "gRPC methods are their own class"
        );
        assert_ne!(id("/pkg.Svc/Get"), id("/pkg.Svc/Put"));
    }

    #[test]
    fn any_path_is_labelled_without_panicking() {
        for p in ["//", "/\u{1F980}/1", "/a//b", "no-slash", "/%2F/0x1"] {
            assert!(
                format!("{:?}", ClassOf::Path(p).name()).starts_with('/'),
                "{p}"
            );
            assert_ne!(ClassOf::Path(p).id(), 0);
        }
    }
}
