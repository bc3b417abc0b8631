//! The header forms of the caller's deadline: gRPC's `grpc-timeout` and a plain
//! milliseconds value, parsed and formatted without allocating and without panicking.

use std::error::Error;
use std::fmt;
use std::time::Duration;

/// Name of the gRPC header carrying the caller's deadline (the time it has left).
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Most digits a `grpc-timeout` value may have (the gRPC over HTTP/2 spec's limit).
const GRPC_MAX_DIGITS: usize = 8;
/// Largest value 8 digits can hold.
const GRPC_MAX_VALUE: u64 = 99_999_999;
/// Most digits [`parse_millis`] accepts: 19 nines still fit in a `u64`.
const MILLIS_MAX_DIGITS: usize = 19;
/// Largest value [`parse_millis`] accepts: 19 nines.
const MILLIS_MAX_VALUE: u64 = 9_999_999_999_999_999_999;

/// Whether a `grpc-timeout` value can hold `d` (rounded down, as
/// [`format_grpc_timeout`] does): at most 99,999,999 whole hours. A longer deadline is
/// no limit for the header, which is then not written.
#[cfg(feature = "http")]
pub(crate) fn grpc_timeout_holds(d: Duration) -> bool {
    d.as_secs() / 3600 <= GRPC_MAX_VALUE
}

/// Whether a milliseconds value can hold `d` (rounded down, as [`format_millis`] does):
/// at most 19 nines of whole milliseconds. A longer deadline is no limit for the header,
/// which is then not written.
#[cfg(feature = "http")]
pub(crate) fn millis_hold(d: Duration) -> bool {
    d.as_millis() <= u128::from(MILLIS_MAX_VALUE)
}

/// Why a budget header value was refused.
///
/// A refused header should be treated as absent (or the request refused), never guessed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BadBudget {
    /// The value is empty.
    Empty,
    /// The value has more digits than the format allows (8 for gRPC, 19 for milliseconds).
    TooLong,
    /// Something other than an ASCII digit is where digits belong (a sign, a space, a dot,
    /// a non-ASCII byte).
    NotDigits,
    /// A gRPC value has a unit but no digits before it, such as `m`.
    MissingValue,
    /// A gRPC value ends in a digit: it has no unit, such as `10`.
    MissingUnit,
    /// A gRPC value ends in a byte that is none of `H`, `M`, `S`, `m`, `u`, `n`.
    UnknownUnit,
}

impl BadBudget {
    /// A short, stable name, for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            BadBudget::Empty => "empty",
            BadBudget::TooLong => "too_long",
            BadBudget::NotDigits => "not_digits",
            BadBudget::MissingValue => "missing_value",
            BadBudget::MissingUnit => "missing_unit",
            BadBudget::UnknownUnit => "unknown_unit",
        }
    }
}

impl fmt::Display for BadBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadBudget::Empty => "empty budget header",
            BadBudget::TooLong => "budget header has too many digits",
            BadBudget::NotDigits => "budget header has a non-digit where digits belong",
            BadBudget::MissingValue => "budget header has a unit but no digits",
            BadBudget::MissingUnit => "budget header has no unit",
            BadBudget::UnknownUnit => "budget header has an unknown unit",
        })
    }
}

impl Error for BadBudget {}

/// Reads `1..=max` ASCII digits as a number. `max` is at most 19, so it cannot overflow.
fn digits(value: &[u8], max: usize) -> Result<u64, BadBudget> {
    if value.len() > max {
        return Err(BadBudget::TooLong);
    }
    value.iter().try_fold(0u64, |acc, &b| match b {
        b'0'..=b'9' => Ok(acc * 10 + u64::from(b - b'0')),
        _ => Err(BadBudget::NotDigits),
    })
}

/// Parses a `grpc-timeout` header value: 1 to 8 ASCII digits and one unit, `H` (hours),
/// `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds) or `n`
/// (nanoseconds).
///
/// Anything else is refused: signs, spaces, decimals, trailing bytes, non-ASCII. Zero is
/// accepted (the caller's deadline is spent). The largest value, `99999999H`, fits in a
/// [`Duration`].
///
/// ```
/// use std::time::Duration;
/// use tower_adaptive_timeout::propagate::{parse_grpc_timeout, BadBudget};
///
/// assert_eq!(parse_grpc_timeout(b"3S"), Ok(Duration::from_secs(3)));
/// assert_eq!(parse_grpc_timeout(b"123456789m"), Err(BadBudget::TooLong));
/// ```
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Duration, BadBudget> {
    let Some((&unit, number)) = value.split_last() else {
        return Err(BadBudget::Empty);
    };
    let to_duration: fn(u64) -> Duration = match unit {
        b'H' => |n| Duration::from_secs(n * 3600),
        b'M' => |n| Duration::from_secs(n * 60),
        b'S' => Duration::from_secs,
        b'm' => Duration::from_millis,
        b'u' => Duration::from_micros,
        b'n' => Duration::from_nanos,
        b'0'..=b'9' => return Err(BadBudget::MissingUnit),
        _ => return Err(BadBudget::UnknownUnit),
    };
    if number.is_empty() {
        return Err(BadBudget::MissingValue);
    }
    // At most 99,999,999 hours: about 3.6e11 seconds, far from `u64` overflow.
    digits(number, GRPC_MAX_DIGITS).map(to_duration)
}

/// Parses a plain milliseconds header value such as `250`: 1 to 19 ASCII digits.
///
/// Signs, spaces, units and anything longer than 19 digits are refused, so the value
/// always fits.
///
/// ```
/// use std::time::Duration;
/// use tower_adaptive_timeout::propagate::{parse_millis, BadBudget};
///
/// assert_eq!(parse_millis(b"250"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_millis(b"+250"), Err(BadBudget::NotDigits));
/// ```
pub fn parse_millis(value: &[u8]) -> Result<Duration, BadBudget> {
    if value.is_empty() {
        return Err(BadBudget::Empty);
    }
    digits(value, MILLIS_MAX_DIGITS).map(Duration::from_millis)
}

/// Formats the caller's deadline as a `grpc-timeout` value: whole milliseconds from one
/// millisecond on, nanoseconds below it.
///
/// Values round **down**: the value is the time the caller still has, and a callee must
/// never believe it has more time than that. From a millisecond on the loss is under a
/// millisecond (under a second, a minute or an hour when the milliseconds, seconds or minutes
/// would need more than 8 digits: past 27.7 hours, 3.2 years and 190 years); below it the
/// value is exact, so a live budget never reads as zero. Deadlines beyond 99,999,999 hours
/// saturate to `99999999H`; the layer writes no `grpc-timeout` for them, since they mean no
/// limit (as `Duration::MAX` does).
///
/// ```
/// use std::time::Duration;
/// use tower_adaptive_timeout::propagate::format_grpc_timeout;
///
/// assert_eq!(format_grpc_timeout(Duration::from_micros(250_700)).as_str(), "250m");
/// assert_eq!(format_grpc_timeout(Duration::from_micros(400)).as_str(), "400000n");
/// ```
pub fn format_grpc_timeout(d: Duration) -> GrpcTimeout {
    if d < Duration::from_millis(1) {
        // Under 1,000,000 nanoseconds: at most 6 digits.
        return GrpcTimeout::new(u64::from(d.subsec_nanos()), b'n');
    }
    let secs = d.as_secs();
    let candidates = [
        (d.as_millis(), b'm'),
        (u128::from(secs), b'S'),
        (u128::from(secs / 60), b'M'),
    ];
    let (value, unit) = candidates
        .into_iter()
        .find_map(|(v, unit)| {
            let v = u64::try_from(v).ok().filter(|&v| v <= GRPC_MAX_VALUE)?;
            Some((v, unit))
        })
        .unwrap_or((GRPC_MAX_VALUE.min(secs / 3600), b'H'));
    GrpcTimeout::new(value, unit)
}

/// Formats the caller's deadline as a plain milliseconds value: whole milliseconds rounded
/// down, so the callee never believes it has more time than the caller; but a live budget
/// under a millisecond is `1`, since `0` reads as spent. Saturates at
/// `9999999999999999999` (19 nines), the largest value [`parse_millis`] reads, so every
/// value formatted parses back; the layer writes no milliseconds header for a deadline
/// past it, since that means no limit (as `Duration::MAX` does).
///
/// ```
/// use std::time::Duration;
/// use tower_adaptive_timeout::propagate::format_millis;
///
/// assert_eq!(format_millis(Duration::from_micros(250_700)), 250);
/// assert_eq!(format_millis(Duration::from_micros(400)), 1);
/// assert_eq!(format_millis(Duration::ZERO), 0);
/// assert_eq!(format_millis(Duration::MAX), 9_999_999_999_999_999_999);
/// ```
pub fn format_millis(d: Duration) -> u64 {
    let millis = u64::try_from(d.as_millis()).map_or(MILLIS_MAX_VALUE, |m| m.min(MILLIS_MAX_VALUE));
    if millis == 0 && !d.is_zero() {
        1
    } else {
        millis
    }
}

/// A formatted `grpc-timeout` value: up to 8 digits and a unit, held on the stack.
///
/// Made by [`format_grpc_timeout`]; read it with [`GrpcTimeout::as_str`],
/// [`GrpcTimeout::as_bytes`], `Display`, or (with the `http` feature) convert it into an
/// `http::HeaderValue`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcTimeout {
    buf: [u8; GRPC_MAX_DIGITS + 1],
    len: u8,
}

impl GrpcTimeout {
    /// `value` is at most [`GRPC_MAX_VALUE`]; `unit` is one of the six unit bytes.
    fn new(value: u64, unit: u8) -> Self {
        let mut buf = [b'0'; GRPC_MAX_DIGITS + 1];
        let mut width = 1;
        let mut rest = value / 10;
        while rest > 0 && width < GRPC_MAX_DIGITS {
            width += 1;
            rest /= 10;
        }
        let mut rest = value;
        for slot in buf[..width].iter_mut().rev() {
            // `rest % 10` is below 10, so the cast keeps every bit.
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        buf[width] = unit;
        GrpcTimeout {
            buf,
            // `width + 1` is at most 9.
            len: (width + 1) as u8,
        }
    }

    /// The value as text, such as `250m`.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and unit letters are ever written.
        std::str::from_utf8(self.as_bytes()).unwrap_or("0n")
    }

    /// The value as bytes, ready for a header.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl AsRef<str> for GrpcTimeout {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for GrpcTimeout {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Display for GrpcTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Debug for GrpcTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GrpcTimeout").field(&self.as_str()).finish()
    }
}

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl From<GrpcTimeout> for http::HeaderValue {
    fn from(t: GrpcTimeout) -> Self {
        // Digits and a unit letter are always a valid header value; should that ever fail,
        // `0n` (deadline spent) is the direction that never grants extra time.
        http::HeaderValue::from_bytes(t.as_bytes())
            .unwrap_or_else(|_| http::HeaderValue::from_static("0n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(s: &str) -> Result<Duration, BadBudget> {
        parse_grpc_timeout(s.as_bytes())
    }

    fn fmt(d: Duration) -> String {
        format_grpc_timeout(d).to_string()
    }

    #[test]
    fn parses_every_unit() {
        assert_eq!(grpc("2H"), Ok(Duration::from_secs(7200)));
        assert_eq!(grpc("3M"), Ok(Duration::from_secs(180)));
        assert_eq!(grpc("4S"), Ok(Duration::from_secs(4)));
        assert_eq!(grpc("5m"), Ok(Duration::from_millis(5)));
        assert_eq!(grpc("6u"), Ok(Duration::from_micros(6)));
        assert_eq!(grpc("7n"), Ok(Duration::from_nanos(7)));
    }

    #[test]
    fn accepts_zero_and_leading_zeros() {
        assert_eq!(grpc("0n"), Ok(Duration::ZERO));
        assert_eq!(grpc("00000250m"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn eight_digits_is_the_limit() {
        assert_eq!(grpc("99999999n"), Ok(Duration::from_nanos(99_999_999)));
        assert_eq!(
            grpc("99999999H"),
            Ok(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(grpc("999999999H"), Err(BadBudget::TooLong));
        assert_eq!(grpc("000000001m"), Err(BadBudget::TooLong));
    }

    #[test]
    fn refuses_malformed_values() {
        let cases = [
            ("", BadBudget::Empty),
            ("123456789m", BadBudget::TooLong),
            ("10", BadBudget::MissingUnit),
            ("m", BadBudget::MissingValue),
            ("10x", BadBudget::UnknownUnit),
            ("10s", BadBudget::UnknownUnit),
            ("10h", BadBudget::UnknownUnit),
            ("-1m", BadBudget::NotDigits),
            ("+1m", BadBudget::NotDigits),
            (" 1m", BadBudget::NotDigits),
            ("1 m", BadBudget::NotDigits),
            ("1m ", BadBudget::UnknownUnit),
            ("1mm", BadBudget::NotDigits),
            ("1m1", BadBudget::MissingUnit),
            ("1.5S", BadBudget::NotDigits),
            ("1µ", BadBudget::UnknownUnit),
            ("１m", BadBudget::NotDigits),
            ("٣S", BadBudget::NotDigits),
        ];
        for (input, want) in cases {
            assert_eq!(grpc(input), Err(want), "{input:?}");
        }
        assert_eq!(parse_grpc_timeout(b"1\xffm"), Err(BadBudget::NotDigits));
        assert_eq!(parse_grpc_timeout(b"1m\0"), Err(BadBudget::UnknownUnit));
    }

    #[test]
    fn millis_parse_and_refuse() {
        assert_eq!(parse_millis(b"0"), Ok(Duration::ZERO));
        assert_eq!(parse_millis(b"250"), Ok(Duration::from_millis(250)));
        assert_eq!(
            parse_millis(b"9999999999999999999"),
            Ok(Duration::from_millis(9_999_999_999_999_999_999))
        );
        let cases: [(&[u8], BadBudget); 8] = [
            (b"", BadBudget::Empty),
            (b"18446744073709551615", BadBudget::TooLong),
            (b"-1", BadBudget::NotDigits),
            (b"+1", BadBudget::NotDigits),
            (b" 1", BadBudget::NotDigits),
            (b"1 ", BadBudget::NotDigits),
            (b"250ms", BadBudget::NotDigits),
            (b"1.5", BadBudget::NotDigits),
        ];
        for (input, want) in cases {
            assert_eq!(parse_millis(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn formats_milliseconds_or_nanoseconds_below_one() {
        assert_eq!(fmt(Duration::ZERO), "0n");
        assert_eq!(fmt(Duration::from_nanos(1)), "1n");
        assert_eq!(fmt(Duration::from_nanos(999_999)), "999999n");
        assert_eq!(fmt(Duration::from_millis(1)), "1m");
        assert_eq!(fmt(Duration::from_millis(250)), "250m");
        assert_eq!(fmt(Duration::from_secs(3600)), "3600000m");
        assert_eq!(fmt(Duration::from_millis(99_999_999)), "99999999m");
        assert_eq!(fmt(Duration::from_millis(100_000_000)), "100000S");
        assert_eq!(fmt(Duration::from_secs(99_999_999)), "99999999S");
        assert_eq!(fmt(Duration::from_secs(100_000_000)), "1666666M");
        assert_eq!(fmt(Duration::from_secs(99_999_999 * 60)), "99999999M");
        assert_eq!(fmt(Duration::from_secs(100_000_000 * 60)), "1666666H");
    }

    #[test]
    fn formatting_rounds_down() {
        // Each fraction of the chosen unit is dropped, never rounded up.
        assert_eq!(fmt(Duration::from_micros(1_999)), "1m");
        assert_eq!(fmt(Duration::from_nanos(100_999_999)), "100m");
        assert_eq!(fmt(Duration::new(99_999, 999_999_999)), "99999999m");
        assert_eq!(fmt(Duration::new(100_000, 999_999_999)), "100000S");
        assert_eq!(fmt(Duration::from_secs(100_000_000 + 59)), "1666667M");
    }

    #[test]
    fn millis_round_down_but_a_live_budget_is_never_zero() {
        assert_eq!(format_millis(Duration::ZERO), 0);
        assert_eq!(format_millis(Duration::from_nanos(1)), 1);
        assert_eq!(format_millis(Duration::from_micros(1_999)), 1);
        assert_eq!(format_millis(Duration::from_millis(250)), 250);
        assert_eq!(format_millis(Duration::MAX), MILLIS_MAX_VALUE);
    }

    #[test]
    fn formatting_saturates_at_eight_digits_of_hours() {
        assert_eq!(fmt(Duration::from_secs(99_999_999 * 3600)), "99999999H");
        assert_eq!(fmt(Duration::from_secs(100_000_000 * 3600)), "99999999H");
        assert_eq!(fmt(Duration::MAX), "99999999H");
    }

    #[test]
    fn formatted_values_parse_back() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(250),
            Duration::from_secs(30),
            Duration::from_secs(86_400 * 365),
        ] {
            let t = format_grpc_timeout(d);
            let back = parse_grpc_timeout(t.as_bytes()).unwrap();
            assert!(back <= d, "{t}");
            assert_eq!(t.as_str().as_bytes(), t.as_bytes());
            assert_eq!(AsRef::<str>::as_ref(&t), t.as_str());
        }
    }

    #[test]
    fn display_and_debug() {
        let t = format_grpc_timeout(Duration::from_nanos(42));
        assert_eq!(format!("[{t:>5}]"), "[  42n]");
        assert_eq!(format!("{t:?}"), "GrpcTimeout(\"42n\")");
        assert_eq!(
            BadBudget::MissingUnit.to_string(),
            "budget header has no unit"
        );
        assert_eq!(BadBudget::TooLong.as_str(), "too_long");
    }

    #[cfg(feature = "http")]
    #[test]
    fn converts_to_a_header_value() {
        let value = http::HeaderValue::from(format_grpc_timeout(Duration::from_secs(1)));
        assert_eq!(value, "1000m");
        assert_eq!(http::HeaderName::from_static(GRPC_TIMEOUT), "grpc-timeout");
    }
}
